"""The held-out I(q) check's false-alarm rate and detection, on bench scenes.

Two denoisers of known quality are checked (``integrate/heldout.py``, the rule the live
plugin and ``ScanDenoiser.iq_check`` use), on ``--frames`` frames per scan as at warm-up:

* ``as good as raw``: an independent Poisson draw of the half frame's expectation, the
  worst denoiser that must not fall back (its I(q) error equals raw's): the fraction of
  bins that fall back is the false-alarm rate;
* ``blurred``: the half frame smoothed by a Gaussian of ``--blur`` pixels, which broadens
  every ring: the fraction of the strongest peak's bins (truth's peak ± 2 bins) that fall
  back is the detection, with the error of the published I(q) (raw's where it fell back)
  over raw's, and the blurred I(q)'s over raw's.

    python -m bench.iq_guard --scenes powder textured saxs --counts 0.25 1 10 --seeds 4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from bluesky_symdenoise.integrate.azimuthal import AzimuthalIntegration
from bluesky_symdenoise.integrate.heldout import held_out_iq

from . import metrics
from .quality import make_scan

THRESHOLD = 1e-3


def _err(estimate, truth, keep):
    return float(np.sqrt(np.mean(((estimate[keep] - truth[keep]) / truth[keep]) ** 2)))


def one_scan(kind: str, counts: float, seed: int, frames: int, blur: float) -> dict:
    scan = make_scan(kind, counts, size=128, n_frames=frames, seed=seed)
    good = scan.scored
    integ = AzimuthalIntegration(scan.geometry, ~good)
    npt = metrics.default_npt(scan.geometry)
    rng = np.random.default_rng(seed)
    raw_frames = [np.where(good, f, 0).astype(np.float64) for f in scan.frames]
    weight = gaussian_filter(good.astype(np.float64), blur)

    def as_good_as_raw(half, _, __):
        return np.where(good, rng.poisson(0.5 * scan.truth), 0.0)

    def blurred(half, _, __):
        return np.where(good, gaussian_filter(half, blur) / np.maximum(weight, 1e-6), 0.0)

    sectors = (None, metrics.SECTOR_30)
    out = {}
    null = held_out_iq(as_good_as_raw, raw_frames, integ, npt=npt, sectors=sectors)
    bad = held_out_iq(blurred, raw_frames, integ, npt=npt, sectors=sectors)
    frame = raw_frames[scan.index]
    served = blurred(frame, scan.index, 0)
    for which, sector in zip(("full", "sector"), sectors, strict=True):
        i = 0 if sector is None else 1
        ref = integ.integrate(scan.truth, npt=npt, sector=sector).intensity
        keep = ref > THRESHOLD * ref.max()
        peak = int(np.argmax(np.where(keep, ref, 0)))
        near = np.zeros(len(ref), bool)
        near[max(peak - 2, 0):peak + 3] = True
        near &= keep
        raw = integ.integrate(frame, npt=npt, sector=sector, error_model="poisson")
        den = integ.integrate(served, npt=npt, sector=sector, variance=served)
        published, _ = bad[i].apply(raw, den)
        out[which] = {
            "false_alarm": float(null[i].fallback[keep].mean()),
            "detected_peak": float(bad[i].fallback[near].mean()),
            "fallback_blurred": float(bad[i].fallback[keep].mean()),
            "blurred_over_raw": _err(den.intensity, ref, keep) / _err(raw.intensity, ref,
                                                                      keep),
            "published_over_raw": _err(published, ref, keep) / _err(raw.intensity, ref,
                                                                    keep)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", nargs="+", default=["powder", "textured", "saxs"])
    parser.add_argument("--counts", nargs="+", type=float, default=[0.25, 1.0, 10.0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--frames", type=int, default=4, help="frames split per scan")
    parser.add_argument("--blur", type=float, default=2.0, help="pixels")
    parser.add_argument("--out", type=Path, default=Path("bench/results/iq_guard.md"))
    args = parser.parse_args(argv)
    command = (f"python -m bench.iq_guard --scenes {' '.join(args.scenes)} --counts "
               f"{' '.join(f'{c:g}' for c in args.counts)} --seeds {args.seeds} --seed "
               f"{args.seed} --frames {args.frames} --blur {args.blur:g}")
    lines = [f"`{command}`", "",
             "| scene | c/px | false alarm full / 30° | blurred: peak detected full / 30° | "
             "blurred: bins fallen back | blurred I(q) err / raw | published / raw |",
             "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    totals = []
    for i, kind in enumerate(args.scenes):
        for j, counts in enumerate(args.counts):
            runs = [one_scan(kind, counts, args.seed + 1000 * k + 100 * i + j, args.frames,
                             args.blur) for k in range(args.seeds)]
            totals += runs

            def m(key, which, runs=runs):
                return float(np.mean([r[which][key] for r in runs]))

            row = (f"| {kind} | {counts:g} | "
                   + " | ".join(f"{m(k, 'full'):.3f} / {m(k, 'sector'):.3f}" for k in
                                ("false_alarm", "detected_peak", "fallback_blurred",
                                 "blurred_over_raw", "published_over_raw")) + " |")
            print(row, flush=True)
            lines.append(row)
    mean = {w: {k: float(np.mean([r[w][k] for r in totals])) for k in totals[0][w]}
            for w in ("full", "sector")}
    tail = (f"All {len(totals)} scans: false alarm {mean['full']['false_alarm']:.4f} (full) / "
            f"{mean['sector']['false_alarm']:.4f} (30°) of bins; strongest peak of the blurred "
            f"I(q) fallen back on {mean['full']['detected_peak']:.2f} / "
            f"{mean['sector']['detected_peak']:.2f} of its bins.")
    print("\n" + tail)
    lines += ["", tail]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
