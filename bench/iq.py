"""I(q) of denoised frames against the raw frames' I(q): never worse, and unbiased?

Azimuthal integration of a raw frame is already the Poisson-limited estimate of a ring's
I(q) (DESIGN.md §2); a denoised frame is only worth integrating if its I(q) is no worse, on
every scene, count level, binning and sector, and if the strongest peak keeps its position,
area, height and width. For each scene and count level, ``--seeds`` fresh scans of
``--frames`` frames are simulated; the middle frame of each is scored against the noise-free
truth, for

* ``raw``: the frame itself (its sigmas Poisson at ours' denoised rate, as published);
* ``ours``: ``ScanDenoiser(budget_s=--budget).run(frames, mask=..., center=...)``
  (``method="auto"``, what ``denoise(...)`` returns); its I(q) sigma and fall-back to raw
  from the engine's held-out check (``ScanDenoiser.iq_check``, ``integrate/heldout.py``) on
  the scan's frames, as the live plugin publishes them;
* ``classical``: 180° average + Anscombe + BM3D (``classical_denoise``), the best classical
  method of the package, with the same held-out check (``held_out_iq``) on its own output;
* a control, the mean of the scan's raw frames (:data:`FRAMES_MEAN`, its sigma Poisson at
  the denoised rate over the number of frames): unbiased where the scene holds still and
  less noisy than one frame, it shows what less noise alone does to the fitted peak (a fit
  of one noisy frame is not unbiased), the reference for a denoised frame's peak.

Columns (means over seeds; the ratio is the estimate's error over raw's, per scan, then
averaged):

* I(q) relative RMS error (:func:`bench.metrics.iq_relative_error`) on the full ring and on a
  30° sector, q axis, one bin per pixel of radius (:func:`bench.metrics.default_npt`);
* worst binning: over every binning in ``--npt-factors`` × the default, the ``q_nm^-1`` and
  ``2th_deg`` axes, full ring and sector, the largest ratio to raw averaged over the seeds
  (the binning's expected ratio), and the largest single ratio of any seed (its last bins
  in a detector corner hold a few pixels, so a single scan's ratio there is noisy);
* the strongest peak of the truth's full-ring I(q), against the truth: area, height,
  integral breadth (area / height) as relative biases, position shift as a fraction of
  the truth's integral breadth (:func:`peak_bias`), then ours − raw on the same frames,
  mean ± standard error over the scans (SAXS has no peak: the rise by the beamstop is
  scored as the window the edge cuts, without a background line);
* the same peak fitted as a Gaussian on a linear background, as a scientist measures it:
  its height and FWHM against the truth's fit, then ours − raw (:func:`fitted_peak_bias`;
  a noisy profile's highest bin is lifted by its noise, a fit is not);
* 1σ coverage: fraction of bins whose error is within the reported sigma (0.68 for an
  honest Gaussian sigma), full ring, the 30° sector and the mean over the 11 rotations of
  that sector (:data:`ROTATED_30`, each with its own check), with the published sigmas (raw: Poisson
  at the denoised rate; denoised: the held-out check's, raw's where it fell
  back) and, for the denoised, the previous rule (Poisson at the denoised rate), and the RMS
  of error over sigma (1 for a sigma honest in the mean square); below the table, the
  cells whose coverage is within 0.60-0.76, and, side by side on the same denoised
  halves, how far each sector's coverage is from 0.68 with the sector's squared bias
  shrunk towards the full ring's (as published) and on its own (``ring_prior=False``);
* fall-back: fraction of scored bins where the check put raw's I(q) in place of the
  denoised one (full / 30°), and the published I(q)'s error over raw's after it;
* PSNR of the frame (dB), for reference.

With ``--scene-seed S`` every scan of a cell is the same scene (drawn with seed S) under
fresh photons (the noise seeds as above, S's own among them where it is one of them): a
single scan's ratio then shows whether it is that scene's expected ratio or its noise.

    python -m bench.iq --scenes sharp_textured --counts 1 0.25 --seeds 2 --budget 30
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy import optimize

from bluesky_symdenoise.denoise.engine import ScanDenoiser
from bluesky_symdenoise.integrate.azimuthal import AzimuthalIntegration
from bluesky_symdenoise.integrate.heldout import IqCheck, held_out_iq

from . import metrics
from .quality import BenchScan, make_scan, run_method

SCENES = ("sharp_textured", "textured", "powder", "insitu_drift", "saxs", "lattice")
COUNTS = (0.1, 0.25, 1.0, 10.0)
#: The control: the mean of the scan's raw frames (unbiased where the scene holds still,
#: with the noise of several frames), paired with the one raw frame like every method: it
#: shows what less noise alone does to a fitted peak (a fit is not linear in the counts),
#: with no denoiser in it (``bench.bias`` and ``bench.iq_ablation`` carry the same row).
FRAMES_MEAN = "raw, mean of the scan's frames"
METHODS = ("raw", "ours", "classical", FRAMES_MEAN)
UNITS = ("q_nm^-1", "2th_deg")
#: Bins whose truth is below this fraction of the truth's maximum are not scored.
THRESHOLD = 1e-3
#: The published 30° sector and its rotations by multiples of 30° that pyFAI integrates
#: whole (the one across ±180° it does not): 11 sectors, each with its own held-out check.
#: One sector's coverage on a few scans scatters by about ±0.1 (its sigma's bias term is as
#: noisy as raw, see integrate/heldout.py); over the 11 it says whether the sigma is
#: calibrated, the published one's whether it is in this sector.
ROTATED_30 = tuple((lo + 30.0 * k, hi + 30.0 * k) for lo, hi in [metrics.SECTOR_30]
                   for k in range(-5, 6))


@dataclasses.dataclass
class Estimate:
    """One method's frame and the per-pixel variance its I(q) sigma propagates (None: the
    pyFAI Poisson model of raw counts)."""

    frame: np.ndarray
    variance: np.ndarray | None
    #: Held-out checks (full ring, then each of :data:`ROTATED_30`, the published sector
    #: among them) at the default binning, or None (raw).
    checks: list[IqCheck] | None = None
    #: The same checks with each sector on its own squared bias (``ring_prior=False``).
    checks_alone: list[IqCheck] | None = None


#: The strongest peak's columns (:func:`peak_bias`).
PEAK_KEYS = ("area", "height", "breadth", "position")


def peak_bias(q: np.ndarray, i_est: np.ndarray, i_true: np.ndarray) -> dict[str, float]:
    """The strongest peak of ``i_true`` in ``i_est``: relative biases of area, height and
    integral breadth (area / height), and the position shift in units of the truth's
    integral breadth. Window and background as :func:`bench.metrics.ring_bias`.

    A profile whose maximum is at its first or last bins has no peak there but a curve's
    rise (SAXS by the beamstop): the window the edge cuts is scored without a background
    line, its integrated intensity, maximum and centroid. A line through the cut window's
    ends measured the rise's curvature, a difference of large numbers (raw's own "area
    bias" was -170 % on SAXS at 0.1 counts/pixel), not a peak.
    """
    _, lo, hi = metrics._peak_window(i_true)
    background = lo > 0 and hi < len(i_true) - 1
    a_t, h_t, p_t = metrics._peak_stats(q, i_true, lo, hi, background=background)
    a_e, h_e, p_e = metrics._peak_stats(q, i_est, lo, hi, background=background)
    if not (abs(a_t) > 1e-12 and h_t > 1e-12 and hi - lo >= 2):
        return dict.fromkeys(PEAK_KEYS, math.nan)
    breadth_t = a_t / h_t
    breadth_e = a_e / h_e if h_e > 0 else math.nan
    return {"area": a_e / a_t - 1.0, "height": h_e / h_t - 1.0,
            "breadth": breadth_e / breadth_t - 1.0, "position": (p_e - p_t) / breadth_t}


#: The strongest peak fitted as a Gaussian on a linear background (:func:`fitted_peak_bias`).
FIT_KEYS = ("fit_height", "fit_fwhm")


def _gaussian_on_line(q: np.ndarray, amplitude: float, centre: float, sigma: float,
                      level: float, slope: float) -> np.ndarray:
    return amplitude * np.exp(-0.5 * ((q - centre) / sigma) ** 2) + level + slope * (q - centre)


def _fit_peak(q: np.ndarray, intensity: np.ndarray, start: np.ndarray) -> np.ndarray | None:
    """Least-squares parameters of :func:`_gaussian_on_line`, or None where the fit fails."""
    try:
        with np.errstate(all="ignore"):
            params, _ = optimize.curve_fit(_gaussian_on_line, q, intensity, p0=start,
                                           maxfev=5000)
    except (RuntimeError, ValueError, optimize.OptimizeWarning):
        return None
    params[2] = abs(params[2])
    if not (np.all(np.isfinite(params)) and params[0] > 0 and params[2] > 0):
        return None
    return params


def fitted_peak_bias(q: np.ndarray, i_est: np.ndarray, i_true: np.ndarray
                     ) -> dict[str, float]:
    """The strongest peak of ``i_true`` fitted in ``i_est`` as a scientist measures it: a
    Gaussian on a linear background, least squares over the window of :func:`peak_bias`;
    the relative biases of its height and FWHM against the same fit of the truth.

    The maximum above a line (:func:`peak_bias`) reads a noisy profile's highest bin, which
    the noise lifts: raw's own "height bias" at low counts is that lift, and a paired
    difference with it then measures raw's noise. A fit over the window's bins is not lifted
    so. NaN where the window is cut by the profile's ends (no peak: the SAXS rise) or a fit
    fails."""
    peak, lo, hi = metrics._peak_window(i_true)
    if lo == 0 or hi >= len(i_true) - 1 or hi - lo < 5:
        return dict.fromkeys(FIT_KEYS, math.nan)
    qw = np.asarray(q[lo:hi + 1], np.float64)
    true_w = np.asarray(i_true[lo:hi + 1], np.float64)
    half = 0.5 * (true_w.max() + true_w.min())
    width = max(float(np.ptp(qw[true_w >= half])), float(np.median(np.diff(qw))))
    start = np.array([true_w.max() - true_w.min(), q[peak], width / 2.3548, true_w.min(), 0.0])
    truth = _fit_peak(qw, true_w, start)
    if truth is None:
        return dict.fromkeys(FIT_KEYS, math.nan)
    est = _fit_peak(qw, np.asarray(i_est[lo:hi + 1], np.float64), truth.copy())
    if est is None:
        return dict.fromkeys(FIT_KEYS, math.nan)
    return {"fit_height": est[0] / truth[0] - 1.0, "fit_fwhm": est[2] / truth[2] - 1.0}


def profile_scores(integ: AzimuthalIntegration, estimate: Estimate, truth: np.ndarray, *,
                   npt: int, sector=None, unit: str = "q_nm^-1", raw: np.ndarray | None = None,
                   check: IqCheck | None = None) -> dict[str, float]:
    """I(q) error, peak biases and 1σ coverage of one estimate for one binning; with the
    held-out ``check`` of that binning (and the ``raw`` frame), the published I(q) and
    sigma too (raw's where the check fell back)."""
    ref = integ.integrate(truth, npt=npt, sector=sector, unit=unit)
    if estimate.variance is None:
        est = integ.integrate(estimate.frame, npt=npt, sector=sector, unit=unit,
                              error_model="poisson")
    else:
        est = integ.integrate(estimate.frame, npt=npt, sector=sector, unit=unit,
                              variance=estimate.variance)
    keep = ref.intensity > THRESHOLD * ref.intensity.max()
    diff = est.intensity[keep] - ref.intensity[keep]
    scores = {"err": float(np.sqrt(np.mean((diff / ref.intensity[keep]) ** 2))),
              "coverage": float(np.mean(np.abs(diff) <= est.sigma[keep])),
              "z_rms": _z_rms(diff, est.sigma[keep]),
              "coverage_rate": math.nan, "fallback": math.nan, "err_published": math.nan}
    if check is not None and raw is not None:
        # Raw's I(q) where the check falls back, its sigma at the method's rate (as
        # published, stream/scan.py).
        raw_iq = integ.integrate(raw, npt=npt, sector=sector, unit=unit,
                                 variance=estimate.variance)
        published, sigma = check.apply(raw_iq, est)
        error = published[keep] - ref.intensity[keep]
        # The bins that weigh most in the relative error, with truth, raw and estimate.
        largest = np.argsort(-np.abs(diff / ref.intensity[keep]))[:2]
        scores.update(
            coverage_rate=scores["coverage"],
            coverage=float(np.mean(np.abs(error) <= sigma[keep])),
            z_rms=_z_rms(error, sigma[keep]),
            fallback=float(np.mean(check.fallback[keep])),
            err_published=float(np.sqrt(np.mean((error / ref.intensity[keep]) ** 2))),
            largest=[(float(ref.q_nm[keep][k]), float(ref.intensity[keep][k]),
                      float(raw_iq.intensity[keep][k]), float(est.intensity[keep][k]))
                     for k in largest])
    scores.update(peak_bias(ref.q_nm, est.intensity, ref.intensity))
    scores.update(fitted_peak_bias(ref.q_nm, est.intensity, ref.intensity))
    return scores


def _z_rms(error: np.ndarray, sigma: np.ndarray) -> float:
    """Root mean square of error over sigma (1 for a sigma honest in the mean square; the
    1σ coverage can still differ from 0.68 when the errors are not Gaussian)."""
    ok = sigma > 0
    return float(np.sqrt(np.mean((error[ok] / sigma[ok]) ** 2))) if ok.any() else math.nan


def estimates(scan: BenchScan, budget: float) -> tuple[dict[str, Estimate], str, float]:
    """Raw, ours and the classical estimate of the scan's middle frame, the latter two with
    their held-out I(q) checks (full ring and 30° sector, default binning)."""
    raw = scan.frames[scan.index].astype(np.float64)
    start = time.perf_counter()
    denoiser = ScanDenoiser(budget_s=budget)
    result = denoiser.run(scan.frames, mask=scan.mask, center=scan.geometry.center,
                          bad_pixels="mask")
    seconds = time.perf_counter() - start
    integ = AzimuthalIntegration(scan.geometry, ~scan.scored)
    npt0 = metrics.default_npt(scan.geometry)
    sectors = (None, *ROTATED_30)
    ours_checks = denoiser.iq_check(result.analysis, method=result.method, integration=integ,
                                    npt=npt0, sectors=sectors)
    # Side by side: each sector's sigma from its own squared bias alone (no ring prior).
    ours_alone = denoiser.iq_check(result.analysis, method=result.method, integration=integ,
                                   npt=npt0, sectors=sectors, ring_prior=False)
    ours = result.denoised[scan.index].astype(np.float64)
    classical, _ = run_method("sym180+bm3d", scan, budget)

    def by_classical(half: np.ndarray, _: int, __: int) -> np.ndarray:
        return run_method("sym180+bm3d", dataclasses.replace(
            scan, frames=np.stack([half] * len(scan.frames))), budget)[0]

    classical_checks = held_out_iq(by_classical, list(scan.frames.astype(np.float64)), integ,
                                   npt=npt0, sectors=sectors)
    # Raw's sigma as published: Poisson at the denoised rate (stream/scan.py); the frames'
    # mean's, that over the number of frames.
    return ({"raw": Estimate(raw, np.maximum(ours, 0.0)),
             "ours": Estimate(ours, np.maximum(ours, 0.0), ours_checks, ours_alone),
             "classical": Estimate(classical, np.maximum(classical, 0.0), classical_checks),
             FRAMES_MEAN: Estimate(scan.frames.astype(np.float64).mean(axis=0),
                                   np.maximum(ours, 0.0) / len(scan.frames))},
            result.method, seconds)


def score_scan(scan: BenchScan, found: dict[str, Estimate], npt_factors) -> dict[str, dict]:
    """All columns for every method on one scan (``found``: method -> estimate)."""
    invalid = ~scan.scored
    integ = AzimuthalIntegration(scan.geometry, invalid)
    npt0 = metrics.default_npt(scan.geometry)
    rows: dict[str, dict] = {}
    raw = found["raw"].frame
    for name, estimate in found.items():
        checks = estimate.checks or [None] * (1 + len(ROTATED_30))
        full = profile_scores(integ, estimate, scan.truth, npt=npt0, raw=raw, check=checks[0])
        rotated = [profile_scores(integ, estimate, scan.truth, npt=npt0, sector=sec, raw=raw,
                                  check=check)
                   for sec, check in zip(ROTATED_30, checks[1:], strict=True)]
        sector = rotated[ROTATED_30.index(metrics.SECTOR_30)]
        sector["coverage_11"] = _mean([r["coverage"] for r in rotated])
        sector["z_rms_11"] = _mean([r["z_rms"] for r in rotated])
        sector["coverage_each"] = [r["coverage"] for r in rotated]
        if estimate.checks_alone is not None:
            sector["coverage_each_alone"] = [
                profile_scores(integ, estimate, scan.truth, npt=npt0, sector=sec, raw=raw,
                               check=check)["coverage"]
                for sec, check in zip(ROTATED_30, estimate.checks_alone[1:], strict=True)]
        errors = {}
        for factor in npt_factors:
            for unit in UNITS:
                for sec in (None, metrics.SECTOR_30):
                    key = (factor, unit, sec is not None)
                    errors[key] = profile_scores(
                        integ, estimate, scan.truth, npt=max(16, round(factor * npt0)),
                        sector=sec, unit=unit)["err"]
        rows[name] = {"full": full, "sector": sector, "errors": errors,
                      "psnr": metrics.psnr(estimate.frame, scan.truth, scan.scored)}
    for row in rows.values():
        raw_errors = rows["raw"]["errors"]
        ratios = {key: row["errors"][key] / raw_errors[key] for key in raw_errors}
        worst = max(ratios, key=ratios.get)
        row["ratios"] = ratios
        row["worst_ratio"] = ratios[worst]
        row["worst_where"] = _binning(worst)
    return rows


def _binning(key: tuple) -> str:
    """``(npt factor, unit, sector?)`` as the table writes it."""
    return f"{key[0]:g}x npt, {key[1].split('_')[0]}, {'sector' if key[2] else 'full'}"


def worst_mean_ratio(rows: list[dict]) -> tuple[float, str]:
    """The binning whose error over raw's, averaged over the seeds, is largest: (that mean,
    where): each binning's expected ratio, where the single-scan worst picks the noisiest
    of a scan's binnings (the last bins, in a detector corner, hold a few pixels)."""
    keys = rows[0]["ratios"]
    means = {key: _mean([r["ratios"][key] for r in rows]) for key in keys}
    worst = max(means, key=means.get)
    return means[worst], _binning(worst)


def _mean(values) -> float:
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else math.nan


def _mean_pm(values) -> str:
    """Mean ± its standard error over the scans (NaN left out), as a signed percentage:
    a paired difference of a few scans' peaks is as noisy as the peaks themselves."""
    values = np.asarray([v for v in values if not math.isnan(v)], np.float64)
    if values.size == 0:
        return "—"
    if values.size < 2:
        return f"{values[0]:+.1%}"
    error = values.std(ddof=1) / math.sqrt(values.size)
    return f"{values.mean():+.1%} ± {error:.1%}"


def _paired(rows: list[dict], others: list[dict], keys: tuple[str, ...]) -> str:
    """Each column of ``keys``: its mean difference from ``others`` on the same scans ± the
    standard error (:func:`_mean_pm`), joined by ' / '."""
    return " / ".join(_mean_pm([r[k] - o[k] for r, o in zip(rows, others, strict=True)])
                      for k in keys)


def _full(rows: list[dict]) -> list[dict]:
    """The full-ring columns of each scan's row."""
    return [r["full"] for r in rows]


def format_cell(kind: str, counts: float, per_seed: list[dict[str, dict]],
                methods: tuple[str, ...]) -> list[str]:
    """Markdown rows of one scene and count level (means over the seeds)."""
    lines = []
    for name in methods:
        rows = [seed_rows[name] for seed_rows in per_seed]
        raws = [seed_rows["raw"] for seed_rows in per_seed]

        def m(get, rows=rows):
            return _mean([get(r) for r in rows])

        pairs = list(zip(rows, raws, strict=True))
        ratio_full = _mean([r["full"]["err"] / q["full"]["err"] for r, q in pairs])
        ratio_sec = _mean([r["sector"]["err"] / q["sector"]["err"] for r, q in pairs])
        worst = max(rows, key=lambda r: r["worst_ratio"])
        worst_mean, worst_mean_where = worst_mean_ratio(rows)
        peak = " / ".join(f"{m(lambda r, k=k: r['full'][k]):+.1%}"
                          for k in PEAK_KEYS)
        paired = "—" if name == "raw" else _paired(_full(rows), _full(raws), PEAK_KEYS)
        fitted = " / ".join(f"{m(lambda r, k=k: r['full'][k]):+.1%}" for k in FIT_KEYS)
        if name != "raw":
            fitted += "; " + _paired(_full(rows), _full(raws), FIT_KEYS)
        if name == "ours" and all(FRAMES_MEAN in seed_rows for seed_rows in per_seed):
            # Against the control on the same scans: whether ours differs from what less
            # noise alone does, with its own standard error.
            controls = [seed_rows[FRAMES_MEAN] for seed_rows in per_seed]
            fitted += "; minus the control " + _paired(_full(rows), _full(controls), FIT_KEYS)

        def fmt(value, spec):
            return "—" if math.isnan(value) else format(value, spec)

        published = " / ".join(
            fmt(_mean([r[w]["err_published"] / q[w]["err"] for r, q in pairs]), ".2f")
            for w in ("full", "sector"))
        lines.append(
            f"| {kind} | {counts:g} | {name} | {m(lambda r: r['full']['err']):.2%} | "
            f"{ratio_full:.2f} | {m(lambda r: r['sector']['err']):.2%} | {ratio_sec:.2f} | "
            f"{worst_mean:.2f} ({worst_mean_where}) | "
            f"{worst['worst_ratio']:.2f} ({worst['worst_where']}"
            f"{'; seed ' + str(worst['seed']) if 'seed' in worst else ''}) | {peak} | {paired} | "
            f"{fitted} | "
            f"{m(lambda r: r['full']['coverage']):.2f} / "
            f"{m(lambda r: r['sector']['coverage']):.2f} / "
            f"{m(lambda r: r['sector']['coverage_11']):.2f} | "
            f"{m(lambda r: r['full']['z_rms']):.2f} / "
            f"{m(lambda r: r['sector']['z_rms']):.2f} / "
            f"{m(lambda r: r['sector']['z_rms_11']):.2f} | "
            f"{fmt(m(lambda r: r['full']['coverage_rate']), '.2f')} / "
            f"{fmt(m(lambda r: r['sector']['coverage_rate']), '.2f')} | "
            f"{fmt(m(lambda r: r['full']['fallback']), '.2f')} / "
            f"{fmt(m(lambda r: r['sector']['fallback']), '.2f')} | {published} | "
            f"{m(lambda r: r['psnr']):.2f} |")
    return lines


HEADER = ("| scene | c/px | method | I(q) err full | / raw | I(q) err 30° | / raw | "
          "worst binning / raw, mean over seeds (where) | worst / raw, any scan (where) | "
          "peak area / height / breadth / position vs truth | "
          "same, minus raw (paired, ± s.e.) | "
          "fitted peak height / FWHM vs truth; minus raw (paired); ours: minus the control "
          "(paired) | "
          "1σ coverage full / 30° / 11 × 30° | "
          "RMS of error / σ full / 30° / 11 × 30° | "
          "before: Poisson at the "
          "denoised rate | fall-back full / 30° | published / raw full / 30° | PSNR dB |")


def criteria(cells: list[tuple[float, list[dict[str, dict]]]]) -> list[str]:
    """Issue [8]'s done criteria counted over the table's cells (means over seeds)."""
    def mean(per_seed, get):
        return _mean([get(rows) for rows in per_seed])

    def ratio(per_seed, where):
        return mean(per_seed, lambda r: r["ours"][where]["err"] / r["raw"][where]["err"])

    n = len(cells)
    low = [(c, p) for c, p in cells if c <= 1.0]
    ours = [[r["ours"] for r in p] for _, p in cells]
    lines = [f"Over {n} cells: ours' full-ring error <= raw's in "
             f"{sum(ratio(p, 'full') <= 1.0 for _, p in cells)}; sector error <= 0.75 x raw's "
             f"in {sum(ratio(p, 'sector') <= 0.75 for _, p in low)} of {len(low)} at <= 1 c/px; "
             f"every binning's error <= raw's (mean over the seeds) in "
             f"{sum(worst_mean_ratio(rows)[0] <= 1.0 for rows in ours)}, on every scan in "
             f"{sum(max(r['worst_ratio'] for r in rows) <= 1.0 for rows in ours)}; "
             "1σ coverage within 0.60-0.76 (full, 30°, 11 × 30°):"]
    where = (("full", "coverage"), ("sector", "coverage"), ("sector", "coverage_11"))
    for name in METHODS:
        inside = [sum(0.60 <= mean(p, lambda r, w=w, c=c, k=name: r[k][w][c]) <= 0.76
                      for _, p in cells) for w, c in where]
        pooled = [mean([r for _, p in cells for r in p],
                       lambda r, w=w, c=c, k=name: r[k][w][c]) for w, c in where]
        lines.append(f"- {name}: {inside[0]}, {inside[1]} and {inside[2]} of {n}; mean "
                     + " and ".join(f"{v:.2f}" for v in pooled))
    # Each sector of each scan on its own: how far its coverage is from 0.68, with the
    # sector's squared bias shrunk towards the full ring's and on its own.
    for key, label in (("coverage_each", "with the ring prior"),
                       ("coverage_each_alone", "each sector on its own squared bias")):
        per_sector = [c for _, p in cells for r in p for c in r["ours"]["sector"].get(key, [])]
        if per_sector:
            values = np.array(per_sector)
            calibrated = sum(
                0.60 <= mean(p, lambda r, k=key: float(np.mean(r["ours"]["sector"][k]))) <= 0.76
                for _, p in cells)
            lines.append(
                f"- ours, {label}: over {len(values)} sectors × scans, mean |coverage − "
                f"0.68| {np.mean(np.abs(values - 0.68)):.3f}, in 0.60-0.76 "
                f"{np.mean((values >= 0.60) & (values <= 0.76)):.2f} of them; coverage over "
                f"the 11 sectors within 0.60-0.76 in {calibrated} of {n} cells")
    return lines


def _denoised_runs_shape() -> None:
    """The ablation ``--denoised-runs-shape``: every bin of a run of sparse ring bins keeps
    the denoised frame's shape (factor 1 against the run's level), the rule before the
    scan's summed counts shared the run's level (``consistency._shape_in_runs``)."""
    import importlib

    consistency = importlib.import_module("bluesky_symdenoise.denoise.consistency")
    consistency._shape_in_runs = (  # type: ignore[attr-defined]
        lambda group, grown, *_: np.ones(group[grown].shape, np.float64))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", nargs="+", default=list(SCENES))
    parser.add_argument("--counts", nargs="+", type=float, default=list(COUNTS))
    parser.add_argument("--seeds", type=int, default=1, help="scans per scene and count")
    parser.add_argument("--seed", type=int, default=1, help="first seed")
    parser.add_argument("--scene-seed", type=int, default=None,
                        help="one scene (drawn with this seed) for every scan, each under "
                             "fresh noise (the per-scan seeds)")
    parser.add_argument("--budget", type=float, default=30.0,
                        help="seconds of the whole denoise call per scan")
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--npt-factors", nargs="+", type=float, default=[0.5, 1.0, 2.0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=Path("bench/results/iq.md"))
    parser.add_argument("--denoised-runs-shape", action="store_true",
                        help="ablation: spread a run of sparse ring bins' raw level in the "
                             "denoised shape alone, as before the scan's counts shaped it")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.denoised_runs_shape:
        _denoised_runs_shape()
    command = (f"python -m bench.iq --scenes {' '.join(args.scenes)} --counts "
               f"{' '.join(f'{c:g}' for c in args.counts)} --seeds {args.seeds} --seed "
               f"{args.seed} --budget {args.budget:g} --frames {args.frames} --size "
               f"{args.size} --npt-factors {' '.join(f'{f:g}' for f in args.npt_factors)}"
               + (f" --scene-seed {args.scene_seed}" if args.scene_seed is not None else "")
               + (" --denoised-runs-shape" if args.denoised_runs_shape else ""))
    lines = [f"`{command}`", "", HEADER, "|---" * 18 + "|"]
    print("\n".join(lines), flush=True)
    notes: list[str] = []
    cells: list[tuple[float, list[dict[str, dict]]]] = []
    for i, kind in enumerate(args.scenes):
        for j, counts in enumerate(args.counts):
            per_seed = []
            for k in range(args.seeds):
                seed = args.seed + 1000 * k + 100 * i + j
                scene_seed = seed if args.scene_seed is None else args.scene_seed
                scan = make_scan(kind, counts, size=args.size, n_frames=args.frames,
                                 seed=scene_seed, noise_seed=seed)
                found, method, seconds = estimates(scan, args.budget)
                scored = score_scan(scan, found, args.npt_factors)
                for row in scored.values():
                    row["seed"] = seed
                per_seed.append(scored)
                largest = "; ".join(
                    f"q {q:.2f}: truth {t:.3f}, raw {r:.3f}, ours {o:.3f}"
                    for q, t, r, o in per_seed[-1]["ours"]["full"]["largest"])
                notes.append(f"{kind} {counts:g} seed {seed}: ours ran {method} in "
                             f"{seconds:.0f} s; its largest full-ring errors: {largest}")
            cells.append((counts, per_seed))
            rows = format_cell(kind, counts, per_seed, METHODS)
            print("\n".join(rows), flush=True)
            lines += rows
    summary = criteria(cells)
    print("\n".join(["", *summary]), flush=True)
    lines += ["", *summary]
    lines += ["", "Coverage: raw's sigma is Poisson at ours' denoised rate, as published; the "
              "denoised sigma is the held-out check's (integrate/heldout.py), raw's where it "
              "fell back; 'before' is the old rule (Poisson at the denoised rate). "
              "Fall-back: fraction of scored bins where the check published raw's I(q); "
              "'published / raw': the published I(q)'s error over raw's after it. RMS of "
              "error / σ: 1 for a sigma honest in the mean square (coverage then exceeds "
              "0.68 where the errors have heavier tails than a Gaussian's).",
              "", "Peak columns: area, height and integral breadth as relative biases, "
              "position as a shift in units of the truth's integral breadth; the strongest "
              "peak of the truth's full-ring I(q) (q axis, default binning); where its maximum "
              "is at the first bins (SAXS: the rise by the beamstop, no peak) the window the "
              "edge cuts, without a background line. 'Minus raw': mean over the scans of ours "
              "minus raw on the same frame ± its standard error. Fitted peak: a Gaussian on a "
              "linear background fitted by least squares over the same window, its height "
              "and FWHM against the truth's fit (no peak at the profile's ends: —); on ours' "
              "row also ours minus the control (the mean of the scan's raw frames) on the "
              "same scans ± its standard error. '/ raw' is the "
              "error over raw's on the same frame, averaged over seeds; 'worst binning, mean "
              "over seeds' is, over the binnings (npt factors × q, 2θ × full, 30°), the "
              "largest of each binning's ratio averaged over the seeds; 'worst, any scan' "
              "the largest single ratio of any binning and seed.", "", *(f"- {n}" for n in notes)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(f"- {n}" for n in notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
