"""What a detector's frames are: photon counts, or integrated charge in ADU.

Photon-counting detectors (Pilatus, Eiger) give Poisson counts. Integrating detectors
(amorphous-silicon flat panels, CCD and CMOS cameras) give ADU: ``gain × photons + offset +
readout noise``, usually dark-subtracted, so negative values are ordinary data; a
scintillator's point spread also correlates the noise of neighbouring pixels.

The denoiser works in photon units. An integrating frame is converted to the *shifted
photon-equivalent* frame ``y = (x - offset) / gain + r²``, with ``r = read_noise / gain``:
its mean ``λ + r²`` equals its variance ``λ + r²``, so it behaves like Poisson counts to
second order (the shifted-Poisson approximation of Poisson-Gaussian noise), and everything
built for counts (Poisson loss, binomial thinning of its rounded values, the Anscombe
transform, which becomes the generalized Anscombe transform, the raw-count holds and the
total-count rule) applies to it. The denoised frame goes back to ADU by the inverse map.

The gain and readout noise come from the scan itself (:func:`calibrate`, a photon transfer
curve from the differences of consecutive frames) unless the user gives them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CORRELATION_LAGS_PX", "DetectorNoise", "NoiseCalibration", "calibrate",
           "detector_noise"]

#: Half-width (px) of the window of lags whose noise covariances are summed to measure the
#: gain when neighbouring pixels' noise is correlated (a point spread up to ~1.4 px σ).
CORRELATION_LAGS_PX = 4
#: Intensity groups of the photon transfer curve (quantiles of the scan's mean).
TRANSFER_GROUPS = 24
#: The noise counts as spatially correlated when the lag-1 correlation of the frame
#: differences exceeds this plus five of its standard errors (a point spread of 1 px under
#: a readout noise ten times the photon noise still gives ~0.005).
MIN_CORRELATION = 0.002
#: Tiles (px) whose scatter gives the error of the spread's measurement.
SPREAD_TILE_PX = 16
#: A spread measured less precisely than this (relative error of the gain) is flagged.
MAX_SPREAD_ERROR = 0.15
#: Frame pairs used at most by :func:`calibrate`.
MAX_PAIRS = 8
#: The point spread (Gaussian σ, px) the lag-1 correlation must be able to see for an
#: uncorrelated scan's gain to count as measured (a thin scintillator's; thicker ones spread
#: more and show more).
REFERENCE_SPREAD_PX = 0.5
#: A pixel whose scan mean exceeds its brightest neighbour's by this many of its noise's
#: standard deviations is left out of the calibration (a hot pixel: its own noise, not
#: shared by the point spread, and heavy-tailed next to the pixels around it).
HOT_Z = 8.0


class DetectorNoise(BaseModel):
    """The detector's noise model, as the user states it.

    Attributes
    ----------
    kind
        ``"counting"`` (photon counts, Poisson) or ``"integrating"`` (ADU: gain, offset,
        readout noise).
    gain
        ADU per photon (integrating); None: estimated from the scan.
    read_noise
        Readout noise, ADU rms (integrating); None: estimated from the scan.
    offset
        Dark level still in the frames, ADU (0: the frames are dark-subtracted).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["counting", "integrating"] = "counting"
    gain: float | None = Field(default=None, gt=0)
    read_noise: float | None = Field(default=None, ge=0)
    offset: float = 0.0

    @property
    def integrating(self) -> bool:
        return self.kind == "integrating"


def detector_noise(detector: str | DetectorNoise | dict | None = None, *,
                   gain: float | None = None, read_noise: float | None = None,
                   offset: float | None = None) -> DetectorNoise:
    """One :class:`DetectorNoise` from the ways a user may say it.

    ``detector`` is ``"counting"``, ``"integrating"``, a dict of the fields or a
    :class:`DetectorNoise`; ``gain``, ``read_noise`` and ``offset`` override its fields, and
    any of them given makes the detector integrating.
    """
    if isinstance(detector, DetectorNoise):
        fields = detector.model_dump()
    elif isinstance(detector, dict):
        fields = dict(detector)
    else:
        fields = {"kind": detector or "counting"}
    given = {k: v for k, v in (("gain", gain), ("read_noise", read_noise),
                               ("offset", offset)) if v is not None}
    if given:
        fields.update(given, kind="integrating")
    return DetectorNoise(**fields)


@dataclass(frozen=True)
class NoiseCalibration:
    """The noise model a scan is denoised with, and how it was found.

    Attributes
    ----------
    kind
        ``"counting"`` or ``"integrating"``.
    gain, gain_error
        ADU per photon and its standard error (0 when given).
    read_noise, read_noise_error
        Readout noise, ADU rms, and its standard error.
    offset
        Dark level subtracted before the conversion, ADU.
    correlation
        Lag-1 correlation of the noise of neighbouring pixels (mean of rows and columns), from
        frame differences; 0 when not measured.
    noise_factor
        Per-pixel photon-noise variance over the mean photon count: 1 for independent pixels,
        below 1 when a point spread shares each photon between neighbours (the sum of the
        squared spread kernel).
    correlated
        Whether the lag-1 correlation is significant (neighbouring pixels share noise): the
        engine then trains on neighbouring frames, not on thinned halves
        (:class:`~.targets.FramePairs`), and checks against a neighbouring frame.
    gain_lower_bound
        True where the gain is not a measurement: a point spread could not be measured (or
        could not have shown), so the gain is the per-pixel slope ``g·Σk²``, at most the
        true gain; or no photon noise showed under the readout noise at all, so it is the
        top of the slope's 2σ range. Pass ``gain=``.
    source
        How the values were found.
    """

    kind: str = "counting"
    gain: float = 1.0
    gain_error: float = 0.0
    read_noise: float = 0.0
    read_noise_error: float = 0.0
    offset: float = 0.0
    correlation: float = 0.0
    noise_factor: float = 1.0
    correlated: bool = False
    gain_lower_bound: bool = False
    source: str = "photon counting"

    @property
    def integrating(self) -> bool:
        return self.kind == "integrating"

    @property
    def shift(self) -> float:
        """``r² = (read_noise / gain)²``: what the photon-equivalent frame is shifted by."""
        return (self.read_noise / self.gain) ** 2 if self.integrating else 0.0

    def to_photons(self, frames: np.ndarray) -> np.ndarray:
        """Frames in the units the denoiser works in: the counts themselves, or the shifted
        photon-equivalent ``(x - offset) / gain + r²`` (float32; NaN stays NaN)."""
        if not self.integrating:
            return np.asarray(frames)
        data = np.asarray(frames, np.float64)
        return ((data - self.offset) / self.gain + self.shift).astype(np.float32)

    def to_detector(self, expected: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
        """Denoised photon-equivalent frames back in the detector's units; pixels outside
        ``keep`` (masked) stay as they are (0)."""
        if not self.integrating:
            return expected
        out = ((np.asarray(expected, np.float64) - self.shift) * self.gain
               + self.offset).astype(np.float32)
        if keep is not None:
            out = np.where(keep, out, np.asarray(expected, np.float32))
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe record for provenance."""
        return {key: (round(value, 6) if isinstance(value, float) else value)
                for key, value in asdict(self).items()}


def calibrate(frames: np.ndarray, good: np.ndarray, noise: DetectorNoise) -> NoiseCalibration:
    """Find a scan's gain and readout noise from its own frames (a photon transfer curve).

    Consecutive frames of a scan are independent copies of nearly the same expectation, so
    their difference ``d = x_t - x_{t+1}`` is pure noise: per pixel ``var(d) / 2 = g·μ + σ²``
    in ADU, for mean ``μ`` (ADU), gain ``g`` and readout noise ``σ``. The good pixels are
    grouped by the scan's mean level around them (:func:`_levels`: a variable whose noise
    is independent of their own) into :data:`TRANSFER_GROUPS` groups; each group gives
    ``(mean of the pair means, var(d) / 2)`` after setting aside samples beyond 6 σ of a
    first line (a pixel that changed between frames), and a straight line
    weighted by each point's variance gives ``g`` (slope) and ``σ²`` (intercept), with their
    standard errors. Pixels that cannot follow the curve (dead or saturated: one value in
    every frame; hot: an isolated outlier, :data:`HOT_Z`) are left out after a first line.

    A point spread shares each photon between neighbouring pixels: the per-pixel variance is
    then ``g·Σk²·μ + σ²``. Where the lag-1 correlation of ``d`` is significant
    (:data:`MIN_CORRELATION`), the gain is measured instead from the noise covariances
    summed over lags up to :data:`CORRELATION_LAGS_PX` (their sum is ``g·μ`` whatever the
    spread) over the mean level, and ``noise_factor = Σk²`` is recorded, with errors from
    the scatter between tiles; a gain less precise than :data:`MAX_SPREAD_ERROR` is flagged
    in the source. Where that sum cannot be measured at all, the gain stays the per-pixel
    slope, a lower bound, with an error as large as itself.

    Given values (``noise.gain``, ``noise.read_noise``) are used as they are.

    Parameters
    ----------
    frames
        ``(N, H, W)`` frames in ADU; at least two unless gain and readout noise are given.
    good
        Bool ``(H, W)``: pixels that hold data in every frame.
    noise
        The user's model; ``kind="counting"`` returns the counting calibration.

    Raises
    ------
    ValueError
        Fewer than two frames with something left to estimate, or too few good pixels.
    """
    if not noise.integrating:
        return NoiseCalibration()
    offset = float(noise.offset)
    if noise.gain is not None and noise.read_noise is not None:
        return NoiseCalibration(kind="integrating", gain=float(noise.gain),
                                read_noise=float(noise.read_noise), offset=offset,
                                source="given")
    data = np.asarray(frames, np.float64)
    if data.ndim == 2:
        data = data[None]
    if len(data) < 2:
        raise ValueError("estimating an integrating detector's gain and readout noise needs "
                         "at least two frames of the scan; pass gain= and read_noise= "
                         "(ADU per photon, ADU rms) for a single frame")
    good = np.asarray(good, bool) & np.all(np.isfinite(data), axis=0)
    if good.sum() < 1000:
        raise ValueError(f"only {int(good.sum())} good pixels: too few to estimate the "
                         "detector's gain and readout noise; pass gain= and read_noise=")
    data = np.where(good, data - offset, 0.0)
    pairs = min(len(data) - 1, MAX_PAIRS)
    diffs = data[1:pairs + 1] - data[:pairs]
    means = 0.5 * (data[1:pairs + 1] + data[:pairs])
    levels = _levels(data, good, pairs)
    groups = _groups(levels, good)
    # A first line, then samples beyond 6 σ of it set aside (a pixel that changed between
    # frames), then the line again.
    first = _line_fit(*_transfer_points(diffs, means, groups,
                                        np.broadcast_to(good, diffs.shape)))
    # Pixels that do not follow the curve are left out, and the first line fitted again:
    # dead or saturated ones (the same value in every frame) and hot ones (isolated
    # outliers, HOT_Z).
    outliers = _outliers(data, good, first[0], first[1])
    left_out = int(outliers.sum()) if (good & ~outliers).sum() >= 1000 else 0
    if left_out:
        good = good & ~outliers
        data = np.where(good, data, 0.0)
        diffs = data[1:pairs + 1] - data[:pairs]
        means = 0.5 * (data[1:pairs + 1] + data[:pairs])
        groups = _groups(_levels(data, good, pairs), good)
        first = _line_fit(*_transfer_points(diffs, means, groups,
                                            np.broadcast_to(good, diffs.shape)))
    own = np.maximum(data.mean(axis=0), 0.0)  # the pixel's own level sets its clip
    expected = 2.0 * np.maximum(first[0] * own + first[1], 1e-12)
    keep = np.broadcast_to(good, diffs.shape) & (diffs ** 2 <= 36.0 * expected)
    lag0 = _transfer_points(diffs, means, groups, keep)
    slope, intercept, slope_error, intercept_error = _line_fit(*lag0)
    correlation, correlation_error = _lag1_correlation(diffs, good)
    gain, gain_error, noise_factor = slope, slope_error, 1.0
    source = f"photon transfer over {pairs} frame pair(s), {len(lag0[0])} intensity groups"
    if left_out:
        source += f", {left_out} dead, saturated or hot pixel(s) left out"
    # A point spread shares photons between neighbours: the per-pixel slope is then g·Σk²,
    # and the noise covariances with the neighbours, pooled over the scan, give Σk².
    detectable = MIN_CORRELATION + 5.0 * correlation_error
    lower_bound = False
    if correlation <= detectable and gain > 0:
        # No correlation seen; but where the photon noise is a small share of the noise, a
        # scintillator's spread would not show either, and the per-pixel slope would be
        # g·Σk², not g. Then the gain is a lower bound, with an error as large as itself.
        level = float(np.mean(means[np.broadcast_to(good, means.shape)]))
        share = max(slope, 0.0) * level / max(max(slope, 0.0) * level + intercept, 1e-300)
        if share * _lag1_share(REFERENCE_SPREAD_PX) <= detectable:
            gain_error, lower_bound = max(gain_error, abs(gain)), True
            source += (f"; the photon noise is {100 * share:.1f} % of the noise variance: a "
                       f"point spread of {REFERENCE_SPREAD_PX} px would not show in the "
                       "correlations, so the gain is a lower bound (pass gain= for a flat "
                       "panel)")
    if correlation > detectable:
        spread = _spread_factor(diffs, means, keep, max(intercept, 0.0))
        if spread is None:
            # The per-pixel slope is g·Σk²: a lower bound, its error the gain itself.
            gain_error, lower_bound = gain, True
            source += (f"; correlated noise (lag-1 correlation {correlation:.3f}) but too "
                       "few pixels to measure the spread: the gain is the per-pixel slope, "
                       "a lower bound")
        else:
            noise_factor, _, gain, gain_error = spread
            source += (f"; correlated noise (lag-1 correlation {correlation:.3f}, per-pixel "
                       f"slope {slope:.3g}): gain from the noise covariances summed over "
                       f"±{CORRELATION_LAGS_PX} px over the mean level, photon share "
                       f"Σk² = {noise_factor:.3f}")
            if gain_error > MAX_SPREAD_ERROR * gain:
                source += (f" (imprecise: ±{100 * gain_error / gain:.0f} %, too few pixels; "
                           "pass gain= if known)")
    if noise.gain is not None:
        gain, gain_error, lower_bound = float(noise.gain), 0.0, False
        source += "; gain given"
    if not np.isfinite(gain) or gain <= 0:
        # No photon noise measurable under the readout noise. The noise is then the
        # readout's; a gain at the top of the slope's 2σ range keeps the photon term as
        # large as the data allow, and the frames are denoised with that model, flagged.
        ceiling = slope + 2.0 * slope_error
        if not (np.isfinite(ceiling) and ceiling > 0 and intercept > 0):
            raise ValueError("the photon transfer curve of this scan has no positive slope "
                             "(too little intensity variation or too few counts): pass gain= "
                             "and read_noise=")
        gain, gain_error, lower_bound = float(ceiling), float(ceiling), True
        source += (f"; no photon noise measurable under the readout noise (slope "
                   f"{slope:.3g} ± {slope_error:.3g}): the gain is set to the top of its 2σ "
                   f"range, {ceiling:.3g}, not measured (pass gain=)")
    read_variance = max(intercept, 0.0)
    read_noise = float(np.sqrt(read_variance))
    read_noise_error = (float(intercept_error / (2.0 * read_noise)) if read_noise > 0
                        else float(np.sqrt(max(intercept_error, 0.0))))
    if noise.read_noise is not None:
        read_noise, read_noise_error = float(noise.read_noise), 0.0
        source += "; readout noise given"
    return NoiseCalibration(kind="integrating", gain=float(gain),
                            gain_error=float(gain_error), read_noise=read_noise,
                            read_noise_error=read_noise_error, offset=offset,
                            correlation=float(correlation), noise_factor=float(noise_factor),
                            correlated=bool(correlation > detectable),
                            gain_lower_bound=lower_bound, source=source)


def _outliers(data: np.ndarray, good: np.ndarray, slope: float, intercept: float
              ) -> np.ndarray:
    """Good pixels that cannot be used: the same value in every frame (dead or saturated),
    or a scan mean above its 8 neighbours' brightest by :data:`HOT_Z` standard deviations
    of a pixel's mean (``(slope · level + intercept) / frames``, the first transfer line's,
    at the neighbours' level). A real one-pixel spot may go too; the curve does not need
    it."""
    from scipy import ndimage

    constant = good & np.all(data == data[:1], axis=0)
    mean = np.where(good, data.mean(axis=0), -np.inf)
    ring = np.ones((3, 3), bool)
    ring[1, 1] = False
    brightest = ndimage.maximum_filter(mean, footprint=ring, mode="constant", cval=-np.inf)
    level = np.where(np.isfinite(brightest), np.maximum(brightest, 0.0), 0.0)
    sigma = np.sqrt(np.maximum(max(slope, 0.0) * level + intercept, 1e-12) / len(data))
    finite = good & np.isfinite(brightest)
    hot = np.zeros_like(good)
    hot[finite] = mean[finite] - brightest[finite] > HOT_Z * sigma[finite]
    return constant | hot


def _levels(data: np.ndarray, good: np.ndarray, pairs: int) -> np.ndarray:
    """Per frame pair: each pixel's level from data whose noise is independent of the
    pixel's own: the scan's mean over a ring of pixels 3 px away (7 × 7 minus 5 × 5), so
    that neither the pair's noise, nor a noise common to every frame (one dark frame
    subtracted from all), nor a point spread of up to ~1 px ties it to the pixel."""
    from scipy import ndimage

    ring = np.ones((7, 7))
    ring[1:6, 1:6] = 0.0
    mean = np.where(good, data.mean(axis=0), 0.0)
    weight = ndimage.convolve(good.astype(np.float64), ring, mode="constant")
    summed = ndimage.convolve(mean, ring, mode="constant")
    level = np.divide(summed, weight, out=np.zeros_like(summed), where=weight > 0)
    return np.broadcast_to(level, (pairs, *level.shape))


def _groups(level: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Group label per pixel and pair (-1 off ``good``): quantiles of ``level``."""
    use = np.broadcast_to(good, level.shape)
    values = level[use]
    edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, TRANSFER_GROUPS + 1)[1:-1]))
    labels = np.full(level.shape, -1, np.int64)
    labels[use] = np.searchsorted(edges, values, side="right")
    return labels


def _shifted(image: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """``image`` moved so that pixel ``(r, c)`` holds ``image[r + dr, c + dc]`` (0 outside)."""
    out = np.zeros_like(image)
    h, w = image.shape[-2:]
    out[..., max(-dr, 0):h - max(dr, 0), max(-dc, 0):w - max(dc, 0)] = \
        image[..., max(dr, 0):h - max(-dr, 0), max(dc, 0):w - max(-dc, 0)]
    return out


def _transfer_points(diffs: np.ndarray, means: np.ndarray, groups: np.ndarray,
                     keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per intensity group: the mean ADU of the pairs, their noise variance (``var(d) / 2``,
    that variance's own variance and the number of samples; samples off ``keep`` are left
    out."""
    products = np.where(keep, diffs, 0.0) ** 2
    level, variance, spread, count = [], [], [], []
    labels = np.where(keep, np.broadcast_to(groups, diffs.shape), -1)
    for g in range(int(labels.max()) + 1):
        members = labels == g
        n = int(members.sum())
        if n < 50:
            continue
        p = products[members] / 2.0
        level.append(float(means[members].mean()))
        variance.append(float(p.mean()))
        spread.append(float(p.var() / n))
        count.append(n)
    return (np.asarray(level), np.asarray(variance), np.asarray(spread),
            np.asarray(count, np.float64))


def _line_fit(x: np.ndarray, y: np.ndarray, spread: np.ndarray, n: np.ndarray
              ) -> tuple[float, float, float, float]:
    """Straight line ``y = a·x + b`` through the groups' points: ``(a, b, σ_a, σ_b)``.

    Weighted by the model's own variance of each point (``∝ fit² / n``, iterated: weights
    from the measured variances would favour the points that came out low), with errors
    from the measured variances (``spread``, a sandwich estimate)."""
    if len(x) < 3:
        raise ValueError("too few intensity levels in the scan to fit a photon transfer "
                         "curve: pass gain= and read_noise=")
    design = np.stack([x, np.ones_like(x)], axis=1)
    fit = np.maximum(y, 1e-12)
    for _ in range(4):
        w = n / np.maximum(fit, 1e-12 * max(float(np.max(np.abs(y))), 1e-300)) ** 2
        bread = np.linalg.inv(design.T @ (design * w[:, None]))
        a, b = bread @ (design.T @ (w * y))
        fit = np.abs(a * x + b)
    meat = design.T @ (design * (w * w * spread)[:, None])
    covariance = bread @ meat @ bread
    return float(a), float(b), float(np.sqrt(covariance[0, 0])), float(np.sqrt(covariance[1, 1]))


def _spread_factor(diffs: np.ndarray, means: np.ndarray, keep: np.ndarray,
                   read_variance: float) -> tuple[float, float, float, float] | None:
    """Photon share ``Σk²`` and gain where a point spread correlates neighbouring pixels:
    ``(Σk², its error, gain, its error)``, or None when the photon noise is too small next
    to the readout noise to tell.

    Pooled over the samples whose window of :data:`CORRELATION_LAGS_PX` lies on kept
    samples: the frame-difference covariances ``C(l)`` summed over the lags are ``g·μ + σ²``
    whatever the spread (a photon's noise, spread by the kernel ``k``, adds up over the
    lags to what it was), so ``g = (Σ_l C(l) - σ²) / μ``, and ``Σk² = (C(0) - σ²) /
    (Σ_l C(l) - σ²)``."""
    from scipy import ndimage

    lags = CORRELATION_LAGS_PX
    d = np.where(keep, diffs, 0.0)
    kept = keep.astype(np.float64)
    window = np.ones((2 * lags + 1, 2 * lags + 1), bool)
    inside = keep & np.stack([ndimage.binary_erosion(k, window) for k in keep])
    if inside.sum() < 1000:
        return None
    shared = np.zeros_like(d)
    for dr in range(-lags, lags + 1):
        for dc in range(-lags, lags + 1):
            if dr or dc:
                shared += d * _shifted(d, dr, dc) * _shifted(kept, dr, dc)
    own = d[inside] ** 2 / 2.0 - read_variance
    total = own + shared[inside] / 2.0
    level = means[inside]
    own_mean, total_mean, level_mean = float(own.mean()), float(total.mean()), float(level.mean())
    if total_mean <= 0 or level_mean <= 0:
        return None
    factor = float(np.clip(own_mean / total_mean, 0.0, 1.0))
    gain = total_mean / level_mean
    # Errors from the scatter between tiles of SPREAD_TILE_PX (a difference enters the
    # products of all its neighbours, so single samples are not independent): the delta
    # method on the ratios of the tiles' means.
    pair, rows, cols = np.nonzero(inside)
    width = inside.shape[2] // SPREAD_TILE_PX + 1
    tile = (pair * (inside.shape[1] // SPREAD_TILE_PX + 1) + rows // SPREAD_TILE_PX) * width \
        + cols // SPREAD_TILE_PX
    _, tile = np.unique(tile, return_inverse=True)
    n_tiles = int(tile.max()) + 1
    if n_tiles < 4:
        return None
    per = np.bincount(tile).astype(np.float64)
    means_of = [np.bincount(tile, weights=v) / per for v in (own, total, level)]
    weights = per / per.sum()

    def ratio_error(top: int, bottom: int) -> float:
        a, b = means_of[top], means_of[bottom]
        a_mean, b_mean = float(weights @ a), float(weights @ b)
        residual = (a - a_mean * b / b_mean) / b_mean  # linearised ratio, per tile
        return float(np.sqrt(np.sum(weights ** 2 * residual ** 2) * n_tiles / (n_tiles - 1)))

    return factor, ratio_error(0, 1), float(gain), ratio_error(1, 2)


def _lag1_share(psf_sigma: float) -> float:
    """Lag-1 correlation of the photon noise alone behind a Gaussian point spread of
    ``psf_sigma`` px (its kernel's autocorrelation at one pixel over that at zero)."""
    from scipy import ndimage

    delta = np.zeros((15, 15))
    delta[7, 7] = 1.0
    kernel = ndimage.gaussian_filter(delta, psf_sigma, mode="constant")
    return float(np.sum(kernel[:, 1:] * kernel[:, :-1]) / np.sum(kernel ** 2))


def _lag1_correlation(diffs: np.ndarray, good: np.ndarray) -> tuple[float, float]:
    """Lag-1 correlation of the frame-difference noise (rows and columns averaged) and its
    standard error."""
    values, n = [], 0
    for dr, dc in ((0, 1), (1, 0)):
        both = good & _shifted(good.astype(np.float64), dr, dc).astype(bool)
        a = diffs[:, both]
        b = _shifted(diffs, dr, dc)[:, both]
        scale = np.sqrt(np.mean(a * a) * np.mean(b * b))
        if scale > 0:
            values.append(float(np.mean(a * b) / scale))
            n += a.size
    if not values:
        return 0.0, 1.0
    return float(np.mean(values)), float(1.0 / np.sqrt(max(n, 1)))
