"""Quality benchmark: our denoisers against classical and zero-shot baselines, side by side.

Every number comes from one run of this script on freshly simulated scans (seeded; pass
``--seed`` to draw new centres, lattices and noise). For each scene and count level a scan of
``--frames`` frames is simulated; every method denoises it and is scored on the middle frame
against the noise-free expectation, on valid pixels (not masked, not a hot or dead pixel).
Baselines get the same hot/dead-pixel detection as ours, added to their mask.

    python -m bench.quality                       # every cell (about 40 min, 2 cores)
    python -m bench.quality --counts 1 --scenes powder --budget 20   # one quick cell

Methods: raw; ``sym180`` 180° average; ``gauss`` Gaussian σ=1; ``nlm`` Anscombe+NLM; ``bm3d``
Anscombe+BM3D; ``sym180+bm3d`` 180° average + Anscombe+BM3D; ``iq-smooth`` Savitzky-Golay
smoothing of raw I(q) (I(q) columns only); ``zs-n2n`` zero-shot Noise2Noise (Mansour &
Heckel 2023) with the same time budget; ours: ``symmetry``, ``thinning``, ``noise2sr``
(see docs/methods.md).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from scipy.signal import savgol_filter

from bluesky_symdenoise.denoise.classical import (
    bm3d_poisson,
    classical_denoise,
    gaussian_smooth,
    nlm_poisson,
    symmetry_average,
)
from bluesky_symdenoise.denoise.engine import ScanDenoiser
from bluesky_symdenoise.denoise.preprocess import find_defects, find_ring_defects
from bluesky_symdenoise.denoise.symmetry import symmetry_validity
from bluesky_symdenoise.denoise.zero_shot import zs_noise2noise
from bluesky_symdenoise.simulate import scenes

from . import metrics

SCENE_KINDS = ("powder", "textured", "saxs", "fibre", "lattice", "lattice_one_sided",
               "insitu_drift")
COUNTS = (0.1, 0.3, 1.0, 3.0, 10.0, 100.0)
BASELINES = ("raw", "sym180", "gauss", "nlm", "bm3d", "sym180+bm3d", "iq-smooth", "zs-n2n")
OURS = ("symmetry", "thinning", "noise2sr")
SECTOR = metrics.SECTOR_30


@dataclass
class BenchScan:
    """A simulated scan and the truth to score its middle frame against."""

    name: str
    frames: np.ndarray
    truth: np.ndarray
    mask: np.ndarray
    geometry: object
    regions: dict = field(default_factory=dict)
    defects: np.ndarray | None = None

    @property
    def baseline_mask(self) -> np.ndarray:
        """What a careful user masks before a classical denoiser: gaps, beamstop and the
        hot/dead pixels the same detection as ours finds (against their neighbours, then
        against their own ring)."""
        frames = self.frames.astype(np.float64)
        bad = self.mask | find_defects(frames, self.mask)
        total = np.where(bad, 0.0, frames.sum(axis=0))
        return bad | find_ring_defects(total, ~bad, self.geometry.center)

    @property
    def scored(self) -> np.ndarray:
        """Pixels scored: not masked and not a (true) hot or dead pixel."""
        return ~self.mask & ~self.defects

    @property
    def index(self) -> int:
        return len(self.frames) // 2


def add_scan_arguments(parser: argparse.ArgumentParser, *, budget: float) -> None:
    """The options every held-out bench shares: frames per scan, size, budget, seed."""
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--budget", type=float, default=budget)
    parser.add_argument("--seed", type=int, default=None)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """A bench's ``--set KEY=VALUE``: :class:`DenoiseConfig` options for ours."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a DenoiseConfig option for ours (repeatable), e.g. "
                             "hold_orientation=false: an ablation of the whole engine")


def config_options(args: argparse.Namespace) -> tuple[dict[str, object], str]:
    """``--set``'s options for ours, and the flags that give them (for the bench's header
    line, so that it can be rerun as printed)."""
    return (dict(config_option(item) for item in args.set),
            "".join(f" --set {item}" for item in args.set))


def config_option(item: str) -> tuple[str, object]:
    """``KEY=VALUE`` of a bench's ``--set``: a :class:`DenoiseConfig` option for ours, the
    value as JSON where it parses (``false``, ``2.5``), else as a string."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise SystemExit(f"--set takes KEY=VALUE, not {item!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def first_seed(args: argparse.Namespace) -> int:
    """``--seed``, or a fresh one from the clock (printed by the bench, so reruns match)."""
    return args.seed if args.seed is not None else int(time.time()) % 1_000_000


def make_scan(kind: str, counts: float, *, size: int, n_frames: int, seed: int,
              noise_seed: int | None = None) -> BenchScan:
    """Simulate ``n_frames`` exposures of a scene (drifting rings for ``insitu_drift``).

    ``seed`` draws the scene and, unless ``noise_seed`` is given, the photons too: the same
    scene under other noise is ``make_scan(..., seed=s, noise_seed=n)``, and ``noise_seed=s``
    is the scan ``seed=s`` itself."""
    rng = np.random.default_rng(seed if noise_seed is None else noise_seed)
    if kind == "insitu_drift":
        series = scenes.insitu_series("powder", n_frames=n_frames, change="ring_drift",
                                      shape=(size, size), seed=seed)
        frames = series.expose(counts, rng)
        mid = n_frames // 2
        return BenchScan(kind, frames, series.scaled(counts)[mid], series.mask,
                         series.geometry, series.regions[mid], series.defects.bad)
    scene = scenes.make_scene(kind, shape=(size, size), seed=seed)
    frames = np.stack([scene.expose(counts, rng) for _ in range(n_frames)])
    return BenchScan(kind, frames, scene.scaled(counts), scene.mask, scene.geometry,
                     scene.regions, scene.defects.bad)


def run_method(method: str, scan: BenchScan, budget: float) -> tuple[np.ndarray | None, float]:
    """Denoise the scan's middle frame with ``method``; returns (estimate, seconds)."""
    frame = scan.frames[scan.index].astype(np.float64)
    mask, center = scan.baseline_mask, scan.geometry.center
    start = time.perf_counter()
    if method == "raw":
        out = frame
    elif method == "sym180":
        validity = symmetry_validity(scan.frames.sum(0), center, mask).valid
        out, _ = symmetry_average(frame, center, mask, valid=validity)
    elif method == "gauss":
        out = gaussian_smooth(frame, mask, sigma=1.0)
    elif method == "nlm":
        out = nlm_poisson(frame, mask)
    elif method == "bm3d":
        out = bm3d_poisson(frame, mask)
    elif method == "sym180+bm3d":
        validity = symmetry_validity(scan.frames.sum(0), center, mask).valid
        out = classical_denoise(frame, mask=mask, center=center, validity=validity,
                                engine="bm3d")
    elif method == "iq-smooth":
        out = None
    elif method == "zs-n2n":
        out = zs_noise2noise(frame, mask=mask, budget_s=budget, steps=100_000)
    else:
        result = ScanDenoiser(method=method, budget_s=budget).run(
            scan.frames, mask=scan.mask, center=center, bad_pixels="mask")
        out = result.denoised[scan.index]
    return (None if out is None else np.asarray(out, np.float64)), time.perf_counter() - start


def _profile_scores(q, i_est, i_true) -> dict[str, float]:
    keep = i_true > 1e-3 * i_true.max()
    rel = (i_est[keep] - i_true[keep]) / i_true[keep]
    _, lo, hi = metrics._peak_window(i_true)
    a_t, h_t, _ = metrics._peak_stats(q, i_true, lo, hi)
    a_e, h_e, _ = metrics._peak_stats(q, i_est, lo, hi)
    scores = {"iq_err": float(np.sqrt(np.mean(rel**2))), "ring_area": math.nan,
              "ring_height": math.nan}
    if abs(a_t) > 1e-12 and abs(h_t) > 1e-12:  # no ring (e.g. SAXS): no ring columns
        scores["ring_area"], scores["ring_height"] = a_e / a_t - 1.0, h_e / h_t - 1.0
    return scores


def _spot_snr(estimate: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float:
    """Mean true spot intensity over the RMS error of the estimated spot intensities."""
    labels, n = ndimage.label(region)
    if n < 2:
        return math.nan
    index = np.arange(1, n + 1)
    est = ndimage.sum_labels(estimate, labels, index)
    true = ndimage.sum_labels(truth, labels, index)
    err = np.sqrt(np.mean((est - true) ** 2))
    return float(true.mean() / err) if err > 0 else math.inf


def score(estimate: np.ndarray | None, scan: BenchScan, method: str) -> dict[str, float]:
    """All metric columns for one estimate (I(q)-only for ``iq-smooth``)."""
    valid = scan.scored
    truth, geometry, mask = scan.truth, scan.geometry, ~scan.scored
    row: dict[str, float] = {}
    npt = metrics.default_npt(geometry)
    from bluesky_symdenoise.integrate.azimuthal import AzimuthalIntegration

    integ = AzimuthalIntegration(geometry, mask)
    ref_full = integ.integrate(truth, npt=npt)
    ref_sector = integ.integrate(truth, npt=npt, sector=SECTOR)
    if estimate is None:  # 1-D smoothing of the raw frame's I(q)
        raw = scan.frames[scan.index].astype(np.float64)
        profiles = []
        for ref, sector in ((ref_full, None), (ref_sector, SECTOR)):
            raw_iq = integ.integrate(raw, npt=npt, sector=sector).intensity
            profiles.append((ref, savgol_filter(raw_iq, 7, 2)))
    else:
        row["psnr"] = metrics.psnr(estimate, truth, valid)
        row["ssim"] = metrics.ssim(estimate, truth, valid)
        row["bias"] = metrics.mean_bias(estimate, truth, valid)
        profiles = [(ref_full, integ.integrate(estimate, npt=npt).intensity),
                    (ref_sector, integ.integrate(estimate, npt=npt, sector=SECTOR).intensity)]
    full = _profile_scores(profiles[0][0].q_nm, profiles[0][1], profiles[0][0].intensity)
    sector = _profile_scores(profiles[1][0].q_nm, profiles[1][1], profiles[1][0].intensity)
    row["iq_err"] = full["iq_err"]
    row["iq_err_30"] = sector["iq_err"]
    row["ring_area"] = full["ring_area"]
    row["ring_height"] = full["ring_height"]
    if estimate is not None:
        for region, key in (("satellites", "sat"), ("one_sided_feature", "one_sided")):
            if region in scan.regions and scan.regions[region].any():
                row[f"{key}_ratio"] = metrics.region_ratio(estimate, truth, scan.regions[region])
                if key == "sat":
                    row["sat_snr"] = _spot_snr(estimate, truth, scan.regions[region])
    return row


COLUMNS = (("psnr", "PSNR dB", "{:.2f}"), ("ssim", "SSIM", "{:.3f}"),
           ("bias", "bias %", "{:+.2%}"), ("iq_err", "I(q) err", "{:.3f}"),
           ("iq_err_30", "I(q) err 30°", "{:.3f}"), ("ring_area", "ring area", "{:+.1%}"),
           ("ring_height", "ring height", "{:+.1%}"), ("sat_ratio", "sat ratio", "{:.3f}"),
           ("sat_snr", "sat SNR", "{:.1f}"), ("one_sided_ratio", "one-sided", "{:.3f}"),
           ("seconds", "time s", "{:.1f}"))


def _fmt(row: dict, key: str, pattern: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return pattern.format(value).replace("%", "") if key == "bias" else pattern.format(value)


def markdown_table(rows: list[dict]) -> str:
    head = "| scene | counts/px | method | " + " | ".join(c[1] for c in COLUMNS) + " |"
    sep = "|" + "---|" * (3 + len(COLUMNS))
    lines = [head, sep]
    for row in rows:
        cells = [row["scene"], f"{row['counts']:g}", row["method"]]
        cells += [_fmt(row, key, pattern) for key, _, pattern in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(rows: list[dict], methods: list[str], counts: list[float]) -> str:
    """Mean PSNR over scenes, methods x count levels, plus gain of the best of ours."""
    lines = ["| method | " + " | ".join(f"{c:g} c/px" for c in counts) + " |",
             "|---|" + "---|" * len(counts)]
    for method in methods:
        cells = []
        for c in counts:
            values = [r["psnr"] for r in rows if r["method"] == method and r["counts"] == c
                      and "psnr" in r]
            cells.append(f"{np.mean(values):.2f}" if values else "—")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _save(path: Path, args: argparse.Namespace, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                "rows": rows}, indent=1, default=float))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Denoiser quality benchmark")
    parser.add_argument("--scenes", nargs="+", default=list(SCENE_KINDS))
    parser.add_argument("--counts", nargs="+", type=float, default=list(COUNTS))
    parser.add_argument("--methods", nargs="+", default=list(BASELINES + OURS))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--budget", type=float, default=30.0,
                        help="seconds per scan for the network methods (ours and zs-n2n)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)

    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows: list[dict] = []
    print(f"# python -m bench.quality {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, size {args.size}², {args.frames} frames/scan, "
          f"budget {args.budget:g} s, seed {args.seed}", flush=True)
    for s_index, kind in enumerate(args.scenes):
        for c_index, counts in enumerate(args.counts):
            seed = args.seed + 1000 * s_index + c_index
            scan = make_scan(kind, counts, size=args.size, n_frames=args.frames, seed=seed)
            for method in args.methods:
                estimate, seconds = run_method(method, scan, args.budget)
                row = {"scene": kind, "counts": counts, "method": method,
                       "seconds": seconds, "seed": seed}
                row.update(score(estimate, scan, method))
                rows.append(row)
                _save(args.out / "quality-latest.json", args, rows)
                print(f"{kind:18s} {counts:6g} {method:12s} "
                      f"psnr {row.get('psnr', math.nan):6.2f}  {seconds:6.1f} s", flush=True)
    print()
    print(markdown_table(rows))
    print()
    print("Mean PSNR (dB) over scenes:")
    print(summary_table(rows, list(args.methods), list(args.counts)))
    path = args.out / f"quality-{time.strftime('%Y%m%d-%H%M%S')}.json"
    _save(path, args, rows)
    print(f"\nrows saved to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
