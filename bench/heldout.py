"""Held-out check: ``denoise(frames, mask=..., center=..., budget_s=B)`` on scans drawn fresh.

Each run draws new seeds (new beam centres, lattices, arm angles, defects) unless ``--seed``
is given, so the numbers are not tuned to one fixed set. Every scan has module gaps, a
beamstop with its arm, a generic beam centre and unmasked hot and dead pixels. For every scan
it prints, for ours (``denoise_scan``, ``method="auto"``) and the best classical baseline run
side by side (180° average + Anscombe+BM3D, Anscombe+BM3D; they get our hot/dead-pixel map):

* PSNR gain over the raw frame, on valid pixels (the middle frame of the scan is scored);
* total counts kept (denoised / raw, all frames);
* the strongest ring's area and height in I(q) against the truth (ring scenes), with the raw
  frame's for reference: raw is unbiased, so its deviation is the noise of one frame;
* the one-sided feature kept (``sum(estimate) / sum(truth)`` over it);
* the **dose-reduction factor**: the exposure multiple a raw frame needs to reach the same
  error, from raw frames simulated at 1-1024x the exposure of the same scene: for the image
  (RMSE, i.e. PSNR) and for the weak (1 %) satellites' integrated intensities (lattices).
  The scan's neighbouring frames are information the denoiser used, so the factor per unit of
  *scan* dose is the factor divided by the number of frames (printed too).

    python -m bench.heldout --counts 1 0.25 --budget 120

With ``--steps N`` ours fine-tunes for exactly N steps (seeded) instead of for the budget's
wall time: two commits then train the same network, and their rows differ only by what
the engine does with it (under a budget a cell moves by tenths of a dB from run to run with
the machine's speed). The budget still caps the training.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from scipy import ndimage

from bluesky_symdenoise import denoise_scan

from . import metrics, quality
from .quality import add_scan_arguments, first_seed, make_scan, run_method

KINDS = ("powder", "textured", "saxs", "fibre", "lattice", "lattice_one_sided", "insitu_drift")
RING_KINDS = ("powder", "textured", "insitu_drift")
EXPOSURE_MULTIPLES = tuple(2.0 ** k for k in range(11))


def _rmse(estimate: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> float:
    return float(np.sqrt(np.mean((estimate[valid] - truth[valid]) ** 2)))


def _satellite_error(estimate: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float:
    """RMS error of the satellites' integrated intensities over their mean intensity."""
    labels, n = ndimage.label(region)
    index = np.arange(1, n + 1)
    est = ndimage.sum_labels(estimate, labels, index)
    true = ndimage.sum_labels(truth, labels, index)
    return float(np.sqrt(np.mean((est - true) ** 2)) / true.mean())


def _raw_curves(kind: str, counts: float, args: argparse.Namespace, seed: int, scan
                ) -> tuple[list[float], list[float]]:
    """Raw errors at exposure multiples of the same scene (in units of the base exposure)."""
    rmse, sat = [], []
    satellites = scan.regions.get("satellites")
    for k in EXPOSURE_MULTIPLES:
        longer = make_scan(kind, counts * k, size=args.size, n_frames=args.frames,
                           seed=seed)
        frame = longer.frames[longer.index].astype(np.float64) / k
        rmse.append(_rmse(frame, scan.truth, scan.scored))
        if satellites is not None and satellites.any():
            sat.append(_satellite_error(frame, scan.truth, satellites))
    return rmse, sat


def _dose(curve: list[float], error: float) -> float:
    if not curve:
        return math.nan
    return metrics.dose_reduction_factor(EXPOSURE_MULTIPLES, curve, error, 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", nargs="+", default=list(KINDS))
    parser.add_argument("--counts", nargs="+", type=float, default=[1.0])
    add_scan_arguments(parser, budget=120.0)
    parser.add_argument("--steps", type=int, default=None,
                        help="fine-tune ours for this many steps (seeded), not for the budget")
    quality.add_config_arguments(parser)
    args = parser.parse_args(argv)
    seed0 = first_seed(args)
    options, flags = quality.config_options(args)
    steps = (f" --steps {args.steps}" if args.steps else "") + flags
    print(f"# python -m bench.heldout --seed {seed0} --budget {args.budget:g} --frames "
          f"{args.frames} --counts {' '.join(f'{c:g}' for c in args.counts)} --scenes "
          f"{' '.join(args.scenes)}{steps}")
    fixed = {"max_steps": args.steps, "seed": 0} if args.steps else {}
    print("| scene | c/px | ours | gain dB | best classical | gain dB | ours − classical dB "
          "| total counts | ring area / height, ours | classical | raw | one-sided kept, ours / "
          "classical | dose factor PSNR, ours / classical | dose factor satellites, ours / "
          "classical | seconds |")
    print("|---" * 16 + "|")
    for i, kind in enumerate(args.scenes):
        for j, counts in enumerate(args.counts):
            seed = seed0 + 100 * i + j
            scan = make_scan(kind, counts, size=args.size, n_frames=args.frames, seed=seed)
            valid = scan.scored
            raw_frame = scan.frames[scan.index].astype(float)
            raw = metrics.psnr(raw_frame, scan.truth, valid)
            start = time.perf_counter()
            if fixed:
                torch.manual_seed(0)
            result = denoise_scan(scan.frames, mask=scan.mask, center=scan.geometry.center,
                                  budget_s=args.budget, bad_pixels="mask", **fixed, **options)
            seconds = time.perf_counter() - start
            ours = result.denoised[scan.index].astype(np.float64)
            best_name, best, best_est = "", -np.inf, None
            for name in ("bm3d", "sym180+bm3d"):
                estimate, _ = run_method(name, scan, args.budget)
                value = metrics.psnr(estimate, scan.truth, valid)
                if value > best:
                    best_name, best, best_est = name, value, estimate
            ours_psnr = metrics.psnr(ours, scan.truth, valid)
            total = result.denoised[:, valid].sum() / scan.frames[:, valid].sum()

            ring = ring_c = ring_r = "—"
            if kind in RING_KINDS:
                texts = []
                for estimate in (ours, best_est, raw_frame):
                    a, h, _ = metrics.ring_bias(estimate, scan.truth, scan.geometry, ~valid)
                    texts.append(f"{a:+.1%} / {h:+.1%}")
                ring, ring_c, ring_r = texts
            region = scan.regions.get("one_sided_feature")
            kept = "—"
            if region is not None and region.any():
                kept = (f"{metrics.region_ratio(ours, scan.truth, region):.3f} / "
                        f"{metrics.region_ratio(best_est, scan.truth, region):.3f}")

            rmse_curve, sat_curve = _raw_curves(kind, counts, args, seed, scan)
            dose = _dose(rmse_curve, _rmse(ours, scan.truth, valid))
            dose_c = _dose(rmse_curve, _rmse(best_est, scan.truth, valid))
            dose_text = f"{dose:.0f}x / {dose_c:.0f}x"
            sat_text = "—"
            if sat_curve:
                sats = scan.regions["satellites"]
                d_s = _dose(sat_curve, _satellite_error(ours, scan.truth, sats))
                d_sc = _dose(sat_curve, _satellite_error(best_est, scan.truth, sats))
                sat_text = f"{d_s:.0f}x / {d_sc:.0f}x"
            print(f"| {kind} | {counts:g} | {result.method} | {ours_psnr - raw:+.2f} | "
                  f"{best_name} | {best - raw:+.2f} | {ours_psnr - best:+.2f} | {total:.4f} | "
                  f"{ring} | {ring_c} | {ring_r} | {kept} | {dose_text} | {sat_text} | "
                  f"{seconds:.0f} |",
                  flush=True)
    print(f"\nDose factors are per frame; the scan had {args.frames} frames, so per unit of "
          f"scan dose divide by {args.frames}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
