"""Physics bias at low counts: does the denoiser change a ring or a feature without partner?

One frame at 0.1-0.25 counts/pixel gives a noisy ring area or spot intensity, so bias is the
mean over many frames of fresh scans (new seeds, beam centres, calibrants' ring sets,
lattices), with its standard error over the scans' means (:func:`scan_mean_and_error`),
for ours (``denoise_scan``, ``method="auto"``), the classical baselines run side by side
(Anscombe+BM3D, 180° average + Anscombe+BM3D) and the raw frames (unbiased: their spread
shows the measurement's own floor), and, as a control, the mean of the scan's raw frames
(unbiased, with less noise: paired with one raw frame it shows what less noise alone does
to the peak measures). Against the noise-free truth:

* scenes with rings, and the lattice (its strongest full-ring peak: its spots at one q):
  area, height, integral breadth (area / height) and position of the strongest ring
  above a linear background in the full-ring pyFAI I(q) at the default binning
  (:func:`bench.iq.peak_bias`; position in units of the truth's integral breadth),
  and its height and FWHM fitted as a Gaussian on a linear background
  (:func:`bench.iq.fitted_peak_bias`: a noisy profile's highest bin is lifted by its noise,
  a fit is not);
* scenes with a feature that has no 180° partner (``lattice_one_sided``): the fraction of its
  integrated intensity kept (:func:`bench.metrics.region_ratio`; 1 is intact);
* oriented patterns (``saxs``: aligned particles, ``1 + a cos 2(χ - χ0)``): the fraction of
  the pattern's anisotropy kept (:func:`anisotropy_kept`; 1 is intact, 0 flattened to the
  ring mean), what an orientation (order parameter) is measured from.

    python -m bench.bias --scene powder --counts 0.1 --scans 8 --frames 6 --budget 60
    python -m bench.bias --scene sharp_textured --counts 0.25 --scans 8 --frames 6 --budget 60
    python -m bench.bias --scene lattice_one_sided --counts 0.25 --scans 4 --budget 120
    python -m bench.bias --scene lattice --counts 0.1 --scans 8 --size 128 --no-classical
    python -m bench.bias --scene saxs --counts 0.1 --scans 12 --size 128 --budget 15 --no-classical
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from bluesky_symdenoise import denoise_scan
from bluesky_symdenoise.integrate.azimuthal import AzimuthalIntegration

from . import metrics
from .iq import FIT_KEYS, FRAMES_MEAN, PEAK_KEYS, THRESHOLD, fitted_peak_bias, peak_bias
from .quality import (
    BenchScan,
    add_config_arguments,
    add_scan_arguments,
    config_options,
    first_seed,
    make_scan,
    run_method,
)

BASELINES = ("bm3d", "sym180+bm3d")
#: Scenes whose frames share one truth (in situ scenes change from frame to frame).
STATIC_KINDS = ("powder", "textured", "sharp_textured", "lattice", "lattice_one_sided",
                "saxs")
#: Scenes with powder rings.
RING_KINDS = ("powder", "textured", "sharp_textured")
#: Scenes whose strongest full-ring peak is scored (a lattice's: its spots at one q).
PEAK_KINDS = (*RING_KINDS, "lattice")
#: Scenes whose anisotropy is scored (:func:`anisotropy_kept`).
ORIENTED_KINDS = ("saxs",)
#: The 30° sectors :func:`anisotropy_kept` sums (none across ±180°, which pyFAI does not
#: integrate whole).
SECTORS_30 = tuple((-180.0 + 30.0 * k, -150.0 + 30.0 * k) for k in range(12))


def anisotropy_kept(integ: AzimuthalIntegration, estimate: np.ndarray, truth: np.ndarray, *,
                    npt: int, order: int = 2) -> float:
    """The fraction of the truth's anisotropy of ``order`` an estimate keeps.

    Each 30° sector's I(q) (:data:`SECTORS_30`) is summed over the bins where the truth's
    is above :data:`bench.iq.THRESHOLD` of its maximum, over the full ring's I(q) summed
    over the same bins (so a sector that reaches other q than the next is no anisotropy,
    and neither is a scale); the ``order`` harmonic of that ratio over χ, projected on the
    truth's (a linear measure of the amplitude along the truth's phase), over the truth's
    amplitude: 1 keeps it, 0 flattens it to the ring mean, above 1 exaggerates it. NaN
    when the truth is isotropic at that order (amplitude below 1 %)."""
    chi = np.deg2rad([0.5 * (lo + hi) for lo, hi in SECTORS_30])
    basis = np.stack([np.cos(order * chi), np.sin(order * chi)])
    keeps = []
    for sector in SECTORS_30:
        ref = integ.integrate(truth, npt=npt, sector=sector).intensity
        keeps.append(ref > THRESHOLD * ref.max())

    def harmonic(image: np.ndarray) -> np.ndarray:
        ring = integ.integrate(image, npt=npt).intensity
        ratios = [np.sum(integ.integrate(image, npt=npt, sector=sector).intensity[keep])
                  / np.sum(ring[keep]) - 1.0
                  for sector, keep in zip(SECTORS_30, keeps, strict=True)]
        return 2.0 * basis @ np.asarray(ratios) / len(ratios)

    reference = harmonic(truth)
    amplitude = float(np.hypot(*reference))
    if amplitude < 0.01:
        return float("nan")
    return float(harmonic(estimate) @ reference / amplitude ** 2)


def _frame_scan(scan: BenchScan, index: int) -> BenchScan:
    """The same scan with frame ``index`` moved to the middle (the frame baselines denoise)."""
    frames = np.roll(scan.frames, scan.index - index, axis=0)
    return dataclasses.replace(scan, frames=frames)


def scan_mean_and_error(values: np.ndarray, scans: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error of per-frame biases ``(scans * frames, columns)``, frames
    of one scan in a row: one mean per scan first (its frames share its truth and its
    fine-tuned network, so they are not independent), then over the scans."""
    per_scan = np.asarray(values, np.float64).reshape(scans, -1, np.shape(values)[-1])
    with np.errstate(all="ignore"):  # a fit that failed is NaN and left out
        per_scan = np.nanmean(per_scan, axis=1)
        counted = np.sum(np.isfinite(per_scan), axis=0)
        return (np.nanmean(per_scan, axis=0),
                np.nanstd(per_scan, axis=0, ddof=1) / np.sqrt(counted))


def scored_columns(scene: str) -> list[str]:
    """The biases scored on ``scene``, in the order of the table's columns."""
    peak = "ring" if scene in RING_KINDS else "full-ring peak"
    return (([f"{peak} area bias", f"{peak} height bias", f"{peak} breadth bias",
              f"{peak} position shift / breadth", "fitted height bias", "fitted FWHM bias"]
             if scene in PEAK_KINDS else [])
            + (["one-sided kept − 1"] if scene == "lattice_one_sided" else [])
            + (["anisotropy kept − 1"] if scene in ORIENTED_KINDS else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scene", default="powder", choices=STATIC_KINDS)
    parser.add_argument("--counts", type=float, default=0.1)
    parser.add_argument("--scans", type=int, default=4)
    add_config_arguments(parser)
    parser.add_argument("--no-classical", action="store_true",
                        help="leave the classical baselines out (an ablation of ours, "
                             "paired with raw: half the run's time)")
    add_scan_arguments(parser, budget=60.0)
    args = parser.parse_args(argv)
    baselines = () if args.no_classical else BASELINES
    seed0 = first_seed(args)
    options, flags = config_options(args)
    flags += " --no-classical" if args.no_classical else ""
    print(f"# python -m bench.bias --scene {args.scene} --counts {args.counts:g} "
          f"--scans {args.scans} --frames {args.frames} --size {args.size} "
          f"--budget {args.budget:g} --seed {seed0}{flags}", flush=True)
    bias: dict[str, list[tuple[float, ...]]] = {"ours": [], "raw": []}
    bias.update({name: [] for name in baselines})
    bias[FRAMES_MEAN] = []
    peaked = args.scene in PEAK_KINDS
    feature_scene = args.scene == "lattice_one_sided"
    oriented = args.scene in ORIENTED_KINDS
    columns = scored_columns(args.scene)
    for k in range(args.scans):
        scan = make_scan(args.scene, args.counts, size=args.size, n_frames=args.frames,
                         seed=seed0 + k)
        result = denoise_scan(scan.frames, mask=scan.mask, center=scan.geometry.center,
                              budget_s=args.budget, bad_pixels="mask", **options)
        print(f"scan {k}: method {result.method}", flush=True)
        invalid = ~scan.scored
        feature = scan.regions["one_sided_feature"] if feature_scene else None
        integ = AzimuthalIntegration(scan.geometry, invalid)
        npt = metrics.default_npt(scan.geometry)
        i_true = integ.integrate(scan.truth, npt=npt)
        frames_mean = scan.frames.mean(0)
        for index in range(args.frames):
            # The static scenes here share one truth for all frames.
            estimates = {"ours": result.denoised[index],
                         "raw": scan.frames[index].astype(np.float64),
                         FRAMES_MEAN: frames_mean}
            for name in baselines:
                estimates[name], _ = run_method(name, _frame_scan(scan, index), args.budget)
            for name, estimate in estimates.items():
                values: list[float] = []
                if peaked:
                    i_est = integ.integrate(estimate, npt=npt).intensity
                    peak = peak_bias(i_true.q_nm, i_est, i_true.intensity)
                    fitted = fitted_peak_bias(i_true.q_nm, i_est, i_true.intensity)
                    values += [peak[key] for key in PEAK_KEYS]
                    values += [fitted[key] for key in FIT_KEYS]
                if feature is not None:
                    values.append(metrics.region_ratio(estimate, scan.truth, feature) - 1.0)
                if oriented:
                    values.append(anisotropy_kept(integ, estimate, scan.truth, npt=npt) - 1.0)
                bias[name].append(tuple(values))
    n = len(bias["raw"])
    print(f"\n{args.scene} at {args.counts:g} counts/px, {n} frames from {args.scans} fresh "
          "scans: bias, mean ± standard error (over the scans' means: the frames of one "
          "scan share its truth and its fine-tuned network, so they are not independent)\n")
    print("| estimate | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    rows = dict(bias)
    # Paired on the same frames: what the denoiser itself adds to the raw frame's bias (the
    # height metric is not linear in the counts, so noisy raw I(q) has a bias of its own).
    raw = np.asarray(bias["raw"])
    for name in ("ours", *baselines, FRAMES_MEAN):
        rows[f"{name} − raw, same frames"] = list(np.asarray(bias[name]) - raw)
    for name, values in rows.items():
        mean, sem = scan_mean_and_error(np.asarray(values), args.scans)
        print(f"| {name} | " + " | ".join(f"{m:+.1%} ± {e:.1%}" for m, e
                                         in zip(mean, sem, strict=True)) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
