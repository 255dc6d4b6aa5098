"""Quality metrics for denoised frames against the noise-free expectation.

All image metrics are computed on valid pixels only (``mask`` False / ``valid`` True). I(q)
metrics integrate estimate and truth with the same pyFAI integrator and mask, so geometry and
binning cancel; every I(q) error is meant to be reported beside its bias (DESIGN.md §2).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bluesky_symdenoise.geometry import DetectorGeometry
from bluesky_symdenoise.integrate.azimuthal import AzimuthalIntegration

__all__ = [
    "psnr",
    "ssim",
    "mean_bias",
    "iq_relative_error",
    "ring_bias",
    "region_ratio",
    "region_snr",
    "dose_reduction_factor",
    "default_npt",
    "SECTOR_30",
]

#: A 30° sector centred on chi = 0 (pyFAI convention, degrees).
SECTOR_30 = (-15.0, 15.0)


def _valid(valid: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if valid is None:
        return np.ones(shape, dtype=bool)
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != shape:
        raise ValueError(f"valid map shape {valid.shape} does not match image {shape}")
    return valid


def psnr(estimate: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB over valid pixels.

    The data range is the maximum of ``truth`` over valid pixels; ``inf`` for a perfect
    estimate.
    """
    truth = np.asarray(truth, dtype=np.float64)
    valid = _valid(valid, truth.shape)
    est = np.asarray(estimate, dtype=np.float64)[valid]
    ref = truth[valid]
    mse = float(np.mean((est - ref) ** 2))
    peak = float(ref.max())
    if mse == 0.0:
        return float("inf")
    return 10.0 * np.log10(peak**2 / mse)


def ssim(estimate: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Structural similarity averaged over valid pixels (data range = max of truth).

    Masked pixels are set to the truth in both images before the SSIM map is computed, and
    the map is then averaged over valid pixels only.
    """
    from skimage.metrics import structural_similarity

    truth = np.asarray(truth, dtype=np.float64)
    valid = _valid(valid, truth.shape)
    est = np.where(valid, np.asarray(estimate, dtype=np.float64), truth)
    data_range = float(truth[valid].max() - min(truth[valid].min(), 0.0))
    _, smap = structural_similarity(est, truth, data_range=data_range, full=True)
    return float(smap[valid].mean())


def mean_bias(estimate: np.ndarray, truth: np.ndarray,
              valid: np.ndarray | None = None) -> float:
    """Relative total-intensity bias ``sum(est - truth) / sum(truth)`` over valid pixels."""
    truth = np.asarray(truth, dtype=np.float64)
    valid = _valid(valid, truth.shape)
    est = np.asarray(estimate, dtype=np.float64)
    return float((est[valid] - truth[valid]).sum() / truth[valid].sum())


def default_npt(geometry: DetectorGeometry) -> int:
    """About one q bin per pixel of radius out to the farthest detector corner."""
    rows, cols = geometry.shape
    r_c, c_c = geometry.center
    far = max(np.hypot(r - r_c, c - c_c) for r in (0, rows - 1) for c in (0, cols - 1))
    return max(int(np.ceil(far)), 16)


def _profiles(estimate, truth, geometry, mask, sector, npt):
    integ = AzimuthalIntegration(geometry, mask)
    npt = default_npt(geometry) if npt is None else int(npt)
    est = integ.integrate(estimate, npt=npt, sector=sector)
    ref = integ.integrate(truth, npt=npt, sector=sector)
    return ref.q_nm, est.intensity, ref.intensity


def iq_relative_error(estimate: np.ndarray, truth: np.ndarray, geometry: DetectorGeometry,
                      mask: np.ndarray | None = None,
                      sector: tuple[float, float] | None = None, *,
                      npt: int | None = None, threshold: float = 1e-3) -> float:
    """Relative RMS error of I(q): ``sqrt(mean(((I_est - I_true) / I_true)**2))``.

    Averaged over q bins where the truth's I(q) exceeds ``threshold`` times its maximum
    (empty or near-empty bins are skipped). For raw Poisson data on a full ring each term is
    ~ ``1 / (N_bin * mu)``, the optimum a denoiser can only beat by a smoothness prior.

    Parameters
    ----------
    estimate, truth
        Frames on the detector grid.
    geometry, mask
        Geometry and invalid-pixel mask (True = invalid).
    sector
        ``(chi_min_deg, chi_max_deg)``, e.g. :data:`SECTOR_30`; None for the full ring.
    npt
        Number of q bins (default :func:`default_npt`).
    threshold
        Bins with truth below this fraction of the truth maximum are ignored.
    """
    _, i_est, i_true = _profiles(estimate, truth, geometry, mask, sector, npt)
    keep = i_true > threshold * i_true.max()
    if not keep.any():
        return float("nan")
    rel = (i_est[keep] - i_true[keep]) / i_true[keep]
    return float(np.sqrt(np.mean(rel**2)))


def _peak_window(i_true: np.ndarray) -> tuple[int, int, int]:
    peak = int(np.argmax(i_true))
    half = 0.5 * i_true[peak]
    # Half-width at half maximum, from both sides, in bins (at least 1).
    left = peak
    while left > 0 and i_true[left] > half:
        left -= 1
    right = peak
    while right < len(i_true) - 1 and i_true[right] > half:
        right += 1
    hwhm = max(1, int(np.ceil(0.5 * (right - left))))
    lo = max(0, peak - 3 * hwhm)
    hi = min(len(i_true) - 1, peak + 3 * hwhm)
    return peak, lo, hi


def _peak_stats(q: np.ndarray, intensity: np.ndarray, lo: int, hi: int, *,
                background: bool = True):
    qw, iw = q[lo:hi + 1], intensity[lo:hi + 1]
    # Background line through the means of the outermost bins at each end (two bins when
    # the window is wide enough): one noisy edge bin would dominate the area otherwise.
    edge = 2 if len(qw) >= 10 else 1
    q_a, q_b = qw[:edge].mean(), qw[-edge:].mean()
    i_a, i_b = iw[:edge].mean(), iw[-edge:].mean()
    bg = i_a + (i_b - i_a) * (qw - q_a) / (q_b - q_a) if background else np.zeros_like(iw)
    net = iw - bg
    area = float(np.trapezoid(net, qw)) if hasattr(np, "trapezoid") else float(np.trapz(net, qw))
    height = float(net.max())
    pos_w = np.clip(net, 0.0, None)
    position = float((pos_w * qw).sum() / pos_w.sum()) if pos_w.sum() > 0 else float("nan")
    return area, height, position


def ring_bias(estimate: np.ndarray, truth: np.ndarray, geometry: DetectorGeometry,
              mask: np.ndarray | None = None, *, npt: int | None = None,
              sector: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """Bias of the strongest ring of the truth's I(q): area, height and position.

    The window is the truth peak ± 3 half-widths (HWHM in bins); a linear background through
    the window's ends (mean of the two outermost bins on each side) is subtracted from each
    profile separately.

    Returns
    -------
    area_bias : float
        ``area_est / area_true - 1``.
    height_bias : float
        ``height_est / height_true - 1`` (peak maximum above background).
    position_shift_nm : float
        Centroid of the background-subtracted peak, estimate minus truth, in nm^-1.
    """
    q, i_est, i_true = _profiles(estimate, truth, geometry, mask, sector, npt)
    _, lo, hi = _peak_window(i_true)
    if hi - lo < 2:
        raise ValueError("strongest ring is at the edge of the q range; cannot measure it")
    a_t, h_t, p_t = _peak_stats(q, i_true, lo, hi)
    a_e, h_e, p_e = _peak_stats(q, i_est, lo, hi)
    return a_e / a_t - 1.0, h_e / h_t - 1.0, p_e - p_t


def region_ratio(estimate: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float:
    """``sum(estimate[region]) / sum(truth[region])``: 1 means the feature is kept intact."""
    region = np.asarray(region, dtype=bool)
    return float(np.asarray(estimate, dtype=np.float64)[region].sum()
                 / np.asarray(truth, dtype=np.float64)[region].sum())


def region_snr(estimates: Sequence[np.ndarray], region: np.ndarray,
               background: np.ndarray | None = None) -> float:
    """SNR of a feature's integrated intensity across independent seeds.

    Parameters
    ----------
    estimates
        Estimates of the same scene from independent noise realisations (>= 2).
    region
        Pixels of the feature (e.g. a satellite).
    background
        Optional pixels of the local background; its mean per pixel is subtracted from
        the region before summing.

    Returns
    -------
    float
        ``mean(S) / std(S)`` over seeds of the (background-subtracted) region sum ``S``.
    """
    if len(estimates) < 2:
        raise ValueError("region_snr needs estimates from at least two seeds")
    region = np.asarray(region, dtype=bool)
    sums = []
    for est in estimates:
        est = np.asarray(est, dtype=np.float64)
        s = est[region].sum()
        if background is not None:
            s -= est[np.asarray(background, dtype=bool)].mean() * region.sum()
        sums.append(s)
    sums = np.asarray(sums)
    std = sums.std(ddof=1)
    return float(sums.mean() / std) if std > 0 else float("inf")


def dose_reduction_factor(curve_counts: Sequence[float], curve_errors: Sequence[float],
                          target_error: float, reference_counts: float = 1.0) -> float:
    """Exposure ratio at which raw data reach a denoiser's error.

    The raw error-versus-exposure curve is interpolated linearly in log-log (and extrapolated
    with the slope of its end segments, raw errors following a power law ~ counts^-1/2).

    Parameters
    ----------
    curve_counts
        Exposures of the raw curve (e.g. counts per pixel), increasing.
    curve_errors
        Raw error at each exposure (any error that decreases with exposure, e.g. RMSE).
    target_error
        Error the denoised data reached.
    reference_counts
        Exposure at which the denoised data reached ``target_error``.

    Returns
    -------
    float
        ``exposure_raw_needed / reference_counts``.
    """
    x = np.log(np.asarray(curve_counts, dtype=np.float64))
    y = np.log(np.asarray(curve_errors, dtype=np.float64))
    if x.size < 2 or x.size != y.size:
        raise ValueError("need at least two (counts, error) points of equal length")
    order = np.argsort(x)
    x, y = x[order], y[order]
    t = np.log(float(target_error))
    # errors decrease with exposure: search in the reversed (increasing) error curve
    if y[0] < y[-1]:
        raise ValueError("raw error must decrease with exposure")
    if t > y[0]:
        i = 0
    elif t < y[-1]:
        i = x.size - 2
    else:
        i = int(np.clip(np.searchsorted(-y, -t) - 1, 0, x.size - 2))
    slope = (y[i + 1] - y[i]) / (x[i + 1] - x[i])
    if slope == 0:
        return float("inf")
    x_t = x[i] + (t - y[i]) / slope
    return float(np.exp(x_t) / reference_counts)
