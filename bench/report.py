"""Render markdown tables from rows saved by ``python -m bench.quality``.

    python -m bench.report bench/results/quality-*.json

Rows of later files replace rows of earlier ones for the same (scene, counts, method), so a
rerun of one method (e.g. ``--methods noise2sr``) updates just those rows.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from .quality import COLUMNS, _fmt

SHORT = ("psnr", "ssim", "bias", "iq_err", "iq_err_30", "ring_area", "ring_height",
         "sat_ratio", "one_sided_ratio", "seconds")


def load(paths: list[Path]) -> list[dict]:
    rows: dict[tuple, dict] = {}
    for path in paths:
        for row in json.loads(Path(path).read_text())["rows"]:
            rows[(row["scene"], row["counts"], row["method"])] = row
    return list(rows.values())


def method_table(rows: list[dict], counts: float) -> str:
    """Every method at one count level, scenes as row groups."""
    columns = [c for c in COLUMNS if c[0] in SHORT]
    lines = ["| scene | method | " + " | ".join(c[1] for c in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for row in rows:
        if row["counts"] != counts:
            continue
        if row["scene"] == "saxs":  # no ring: rows saved before quality.py knew it
            row = {k: v for k, v in row.items() if not k.startswith("ring_")}
        cells = [row["scene"], row["method"]] + [_fmt(row, k, p) for k, _, p in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def psnr_table(rows: list[dict], methods: list[str]) -> str:
    """PSNR of ``methods`` per scene and count level, with ours minus the best classical."""
    counts = sorted({r["counts"] for r in rows})
    scenes = list(dict.fromkeys(r["scene"] for r in rows))
    index = {(r["scene"], r["counts"], r["method"]): r for r in rows}
    lines = ["| scene | method | " + " | ".join(f"{c:g}" for c in counts) + " |",
             "|---|---|" + "---|" * len(counts)]
    for scene in scenes:
        for method in methods + ["ours − best classical"]:
            cells = []
            for c in counts:
                if method == "ours − best classical":
                    ours = index.get((scene, c, "symmetry"), {}).get("psnr")
                    best = max((index.get((scene, c, m), {}).get("psnr", -math.inf)
                                for m in ("bm3d", "sym180+bm3d")), default=-math.inf)
                    cells.append(f"{ours - best:+.2f}" if ours is not None
                                 and math.isfinite(best) else "—")
                else:
                    value = index.get((scene, c, method), {}).get("psnr")
                    cells.append(f"{value:.2f}" if value is not None else "—")
            lines.append(f"| {scene} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--counts", type=float, default=1.0,
                        help="count level of the all-methods table")
    parser.add_argument("--methods", nargs="+",
                        default=["raw", "sym180", "bm3d", "sym180+bm3d", "symmetry"])
    args = parser.parse_args(argv)
    rows = load(args.files)
    print(f"All methods at {args.counts:g} counts/pixel:\n")
    print(method_table(rows, args.counts))
    print("\nPSNR (dB) by count level:\n")
    print(psnr_table(rows, args.methods))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
