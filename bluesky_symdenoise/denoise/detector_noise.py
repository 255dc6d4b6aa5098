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

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from functools import cache
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CORRELATION_LAGS_PX", "DetectorNoise", "NoiseCalibration", "READOUT_DOMINATED",
           "calibrate", "detector_noise", "readout_dominance"]

#: Half-width (px) of the window of lags whose noise covariances are summed to measure the
#: gain when neighbouring pixels' noise is correlated (a point spread up to ~1.4 px σ).
CORRELATION_LAGS_PX = 4
#: Intensity groups of the photon transfer curve (quantiles of the scan's mean).
TRANSFER_GROUPS = 24
#: The noise counts as spatially correlated when the lag-1 correlation of the frame
#: differences exceeds this plus five of its standard errors (a point spread of 1 px under
#: a readout noise ten times the photon noise still gives ~0.005).
MIN_CORRELATION = 0.002
#: Lags (rows, columns) at which a point spread's covariances are compared with a Gaussian
#: spread's: the diagonals and two pixels along each axis.
SHAPE_LAGS = ((1, 1), (1, -1), (0, 2), (2, 0))
#: Tiles (px) whose scatter gives the error of the spread's measurement.
SPREAD_TILE_PX = 16
#: A gain or readout noise estimated less precisely than this (its standard error over
#: itself) is flagged "imprecise" in the source: a 10 % error is then within two of its
#: standard errors, so an estimate not flagged is within 10 % at that confidence.
MAX_CALIBRATION_ERROR = 0.05
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
#: A scan is readout-dominated when its readout variance, in photons², exceeds its typical
#: pixel's photon count by this factor (:func:`readout_dominance`). On the flat-panel twins
#: (``bench.flat_panel --counting-twins``, 11 lattice scans at 1 photon/pixel) the 4 above
#: it lost 12-50 % of a one-sided feature's own pixels' intensity against raw, even with
#: the spot rules such a scan gets (:meth:`.consistency.RawConsistency.for_scan`), where
#: the same photons counted lost 5-7 %; the 7 below it lost 3-10 %.
READOUT_DOMINATED = 1.0


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
        Whether neighbouring pixels share noise: the lag-1 correlation, or the
        neighbours' photon covariance against the level, is significant. The engine then
        trains on neighbouring frames, not on thinned halves
        (:class:`~.targets.FramePairs`), and checks against a neighbouring frame.
    gain_lower_bound
        True where the gain is not a measurement: a point spread could not be measured (or
        could not have shown), so the gain is the per-pixel slope ``g·Σk²``, at most the
        true gain; or no photon noise showed under the readout noise at all, so it is the
        top of the slope's 2σ range. Pass ``gain=``.
    readout_dominance
        The readout variance in photons² over the scan's median photon count per pixel
        (:func:`readout_dominance`); 0 for counting frames or before it is measured. Above
        :data:`READOUT_DOMINATED` the scan is flagged (``readout_dominated``).
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
    readout_dominance: float = 0.0
    source: str = "photon counting"

    @property
    def integrating(self) -> bool:
        return self.kind == "integrating"

    @property
    def readout_dominated(self) -> bool:
        """Whether the readout noise outweighs the photon noise of the typical pixel
        (:data:`READOUT_DOMINATED`)."""
        return self.readout_dominance > READOUT_DOMINATED

    @property
    def imprecise(self) -> tuple[str, ...]:
        """The estimates less precise than :data:`MAX_CALIBRATION_ERROR` (standard error over
        value): ``"gain"`` (not when it is only a lower bound, flagged as such) and
        ``"read_noise"``; given values have no error and are never in it."""
        if not self.integrating:
            return ()
        names = []
        if not self.gain_lower_bound and self.gain_error > MAX_CALIBRATION_ERROR * self.gain:
            names.append("gain")
        if self.read_noise > 0 and self.read_noise_error > MAX_CALIBRATION_ERROR * self.read_noise:
            names.append("read_noise")
        return tuple(names)

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
        record = {key: (round(value, 6) if isinstance(value, float) else value)
                  for key, value in asdict(self).items()}
        record["readout_dominated"] = self.readout_dominated
        record["imprecise"] = list(self.imprecise)
        return record


def readout_dominance(calibration: NoiseCalibration, photon_frames: np.ndarray,
                      good: np.ndarray) -> float:
    """How far the readout noise outweighs the photon noise of a scan's typical pixel.

    ``(read_noise / gain)²``, the readout variance in photons², over the median over the
    good pixels of the scan's mean photon count (the mean of ``photon_frames``, the shifted
    photon-equivalent frames :meth:`NoiseCalibration.to_photons` gives, less the shift).
    Below 1 a pixel's noise is mostly its photons'; above, mostly the readout's, and a
    faint feature is then harder to tell from the noise than on counting data at the same
    dose. A scan with no photons in its median pixel is as dominated as the finite number
    allows (1e6). 0 for counting frames.

    Parameters
    ----------
    calibration
        The scan's noise model.
    photon_frames
        ``(N, H, W)`` or ``(H, W)`` shifted photon-equivalent frames.
    good
        Bool ``(H, W)``: the pixels to take the median over.
    """
    if not calibration.integrating or calibration.shift <= 0:
        return 0.0
    frames = np.asarray(photon_frames)
    mean = frames.mean(axis=0) if frames.ndim == 3 else frames
    good = np.asarray(good, bool)
    if not good.any():
        return 0.0
    level = float(np.median(mean[good])) - calibration.shift
    if level <= calibration.shift * 1e-6:
        return 1e6
    return float(calibration.shift / level)


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
    then ``g·Σk²·μ + σ²``, and neighbouring pixels share photon noise. The spread is seen
    by the lag-1 correlation of ``d`` (:data:`MIN_CORRELATION`) or, more sensitively under
    a large readout noise, by the covariance of neighbouring differences against the level
    (:func:`_neighbour_covariance`; the readout noise is not shared, so it is photon noise
    alone). Then the photon noise's lag-1 correlation along rows and columns gives ``Σk²``
    for a Gaussian spread, and ``g`` = slope / ``Σk²`` (:func:`_gain_from_neighbours`), with
    ``noise_factor = Σk²`` recorded. The shape is checked at :data:`SHAPE_LAGS`: a spread
    wider than a Gaussian's takes the gain from the noise covariances summed over lags up
    to :data:`CORRELATION_LAGS_PX` (their sum is ``g·μ`` whatever the spread) instead, with
    errors from the scatter between tiles. Where a spread could not have been
    seen, or the sum cannot be measured, the gain is the per-pixel slope, a lower bound,
    with an error as large as itself. A gain or readout noise estimated less precisely than
    :data:`MAX_CALIBRATION_ERROR` is flagged "imprecise" in the source (a small crop or few
    frames; pass the value if it is known).

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
    # A float32 copy (zeroed off the good pixels below; half the memory of float64, and
    # exact for ADU up to 2^24); each frame pair's statistics are taken in float64.
    data = np.array(frames, np.float32)
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
    data -= np.float32(offset)
    data[:, ~good] = 0.0
    pairs = min(len(data) - 1, MAX_PAIRS)
    groups = _groups(_levels(data, good), good)
    # A first line, then samples beyond 6 σ of it set aside (a pixel that changed between
    # frames), then the line again.
    first = _line_fit(*_transfer_points(data, pairs, good, groups))
    # Pixels that do not follow the curve are left out, and the first line fitted again:
    # dead or saturated ones (the same value in every frame) and hot ones (isolated
    # outliers, HOT_Z).
    outliers = _outliers(data, good, first[0], first[1])
    left_out = int(outliers.sum()) if (good & ~outliers).sum() >= 1000 else 0
    if left_out:
        good = good & ~outliers
        data[:, outliers] = 0.0
        groups = _groups(_levels(data, good), good)
        first = _line_fit(*_transfer_points(data, pairs, good, groups))
    own = np.maximum(data.mean(axis=0), 0.0)  # the pixel's own level sets its clip
    expected = 2.0 * np.maximum(first[0] * own + first[1], 1e-12)
    del own
    lag0 = _transfer_points(data, pairs, good, groups, expected)
    slope, intercept, slope_error, intercept_error = _line_fit(*lag0)
    correlation, correlation_error = _lag1_correlation(data, pairs, good)
    covariance, covariance_error = _neighbour_covariance(data, pairs, good, expected, groups,
                                                         slope, intercept)
    # Both axes pooled (inf error: too few intensity groups to tell, so nothing seen).
    shared, shared_error = _pooled(covariance, covariance_error)
    gain, gain_error, noise_factor = slope, slope_error, 1.0
    source = f"photon transfer over {pairs} frame pair(s), {len(lag0[0])} intensity groups"
    if left_out:
        source += f", {left_out} dead, saturated or hot pixel(s) left out"
    # A point spread shares photons between neighbours: the per-pixel slope is then g·Σk²,
    # and neighbouring pixels share photon noise. Either test sees it: the correlation of
    # the differences, or their photon covariance against the level (more sensitive under
    # a large readout noise, which it leaves out).
    detectable = MIN_CORRELATION + 5.0 * correlation_error
    correlated = correlation > detectable or shared > 5.0 * shared_error
    lower_bound = False
    if not correlated and gain > 0:
        # No correlation seen; but where the photon noise is a small share of the noise, a
        # scintillator's spread would not show either, and the per-pixel slope would be
        # g·Σk², not g. Then the gain is a lower bound, with an error as large as itself.
        level = _mean_level(data, pairs, good)
        share = max(slope, 0.0) * level / max(max(slope, 0.0) * level + intercept, 1e-300)
        reference = _lag1_share(REFERENCE_SPREAD_PX)
        if (share * reference <= detectable
                and max(slope, 0.0) * reference <= 5.0 * shared_error):
            gain_error, lower_bound = max(gain_error, abs(gain)), True
            source += (f"; the photon noise is {100 * share:.1f} % of the noise variance: a "
                       f"point spread of {REFERENCE_SPREAD_PX} px would not show in the "
                       "correlations, so the gain is a lower bound (pass gain= for a flat "
                       "panel)")
    if correlated and slope > 0 and not np.all(np.isfinite(covariance_error)):
        # Too few intensity groups to measure the spread: the per-pixel slope, g·Σk², is
        # a lower bound, with an error as large as itself.
        gain_error, lower_bound = max(gain_error, gain), True
        source += (f"; correlated noise (lag-1 correlation {correlation:.3f}) but too few "
                   "intensity groups to measure the spread: the gain is the per-pixel slope, "
                   "a lower bound")
    elif correlated and slope > 0:
        gain, gain_error, noise_factor, rho = _gain_from_neighbours(
            slope, slope_error, covariance, covariance_error)
        source += (f"; correlated noise (lag-1 correlation {correlation:.3f}; of the photon "
                   f"noise {rho:.3f}, per-pixel slope {slope:.3g}): gain = slope / Σk², "
                   f"Σk² = {noise_factor:.3f} for a Gaussian spread of that correlation")
        # The Gaussian shape is checked at the diagonals and two pixels out. A spread with
        # a wider tail (more covariance there than a Gaussian's) would make that gain too
        # low: then the covariances summed over ±4 px, which assume no shape, give it.
        further, further_error = _neighbour_covariance(data, pairs, good, expected, groups,
                                                       slope, intercept, lags=SHAPE_LAGS,
                                                       summed=True)
        excess, excess_error = _wider_than_gaussian(slope, covariance, covariance_error,
                                                    further[0], further_error[0])
        if excess > 3.0 * excess_error:
            summed = _spread_factor(data, pairs, good, expected, max(intercept, 0.0))
            source += (f"; the spread is wider than a Gaussian's (covariance at the "
                       f"diagonals and 2 px {excess / excess_error:.1f} σ above it)")
            if summed is None:
                gain_error, lower_bound = max(gain_error, gain), True
                source += ", and too few pixels to sum it: the gain is a lower bound"
            else:
                noise_factor, _, gain, gain_error = summed
                source += (f": gain from the noise covariances summed over "
                           f"±{CORRELATION_LAGS_PX} px over the mean level, "
                           f"Σk² = {noise_factor:.3f}")
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
    found = NoiseCalibration(kind="integrating", gain=float(gain),
                             gain_error=float(gain_error), read_noise=read_noise,
                             read_noise_error=read_noise_error, offset=offset,
                             correlation=float(correlation), noise_factor=float(noise_factor),
                             correlated=bool(correlated),
                             gain_lower_bound=lower_bound, source=source)
    return replace(found, source=source + _imprecision(found))


def _imprecision(found: NoiseCalibration) -> str:
    """The source's words for :attr:`NoiseCalibration.imprecise` (empty when it is)."""
    imprecise = []
    if "gain" in found.imprecise:
        imprecise.append(f"gain ±{100 * found.gain_error / found.gain:.0f} %")
    if "read_noise" in found.imprecise:
        imprecise.append(
            f"readout noise ±{100 * found.read_noise_error / found.read_noise:.0f} %")
    if not imprecise:
        return ""
    return (f"; imprecise: {', '.join(imprecise)} (too few pixels, frames or photons to "
            "measure it to 10 %; pass gain= / read_noise= if known)")


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


def _levels(data: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Each pixel's level from data whose noise is independent of the pixel's own: the
    scan's mean over a ring of pixels 3 px away (7 × 7 minus 5 × 5), so that neither a
    frame pair's noise, nor a noise common to every frame (one dark frame subtracted from
    all), nor a point spread of up to ~1 px ties it to the pixel."""
    from scipy import ndimage

    ring = np.ones((7, 7))
    ring[1:6, 1:6] = 0.0
    mean = np.where(good, data.mean(axis=0), 0.0)
    weight = ndimage.convolve(good.astype(np.float64), ring, mode="constant")
    summed = ndimage.convolve(mean, ring, mode="constant")
    return np.divide(summed, weight, out=np.zeros_like(summed), where=weight > 0)


def _groups(level: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Group label per pixel (``-1`` off ``good``): quantiles of ``level``."""
    values = level[good]
    edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, TRANSFER_GROUPS + 1)[1:-1]))
    labels = np.full(level.shape, -1, np.int16)
    labels[good] = np.searchsorted(edges, values, side="right")
    return labels


def _shifted(image: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """``image`` moved so that pixel ``(r, c)`` holds ``image[r + dr, c + dc]`` (0 outside)."""
    out = np.zeros_like(image)
    h, w = image.shape[-2:]
    out[..., max(-dr, 0):h - max(dr, 0), max(-dc, 0):w - max(dc, 0)] = \
        image[..., max(dr, 0):h - max(-dr, 0), max(dc, 0):w - max(-dc, 0)]
    return out


def _frame_pairs(data: np.ndarray, pairs: int, good: np.ndarray,
                 expected: np.ndarray | None = None
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per consecutive frame pair, one at a time (a 4 Mpx scan holds few frame-sized
    arrays): its difference, its mean and the samples kept (``good``, and within 6 σ of
    the first transfer line, ``d² ≤ 36 · expected``, where ``expected`` is given)."""
    for p in range(pairs):
        d = np.subtract(data[p + 1], data[p], dtype=np.float64)
        m = np.add(data[p + 1], data[p], dtype=np.float64)
        m *= 0.5
        yield d, m, (good if expected is None else good & (d * d <= 36.0 * expected))


def _mean_level(data: np.ndarray, pairs: int, good: np.ndarray) -> float:
    """Mean ADU level of the pairs' means over the good pixels."""
    return float(np.mean([m[good].mean() for _, m, _ in _frame_pairs(data, pairs, good)]))


def _transfer_points(data: np.ndarray, pairs: int, good: np.ndarray, groups: np.ndarray,
                     expected: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per intensity group: the mean ADU of the pairs, their noise variance (``var(d) / 2``),
    that variance's own variance and the number of samples, over the samples each pair
    keeps (:func:`_frame_pairs`)."""
    sums = _GroupSums()
    for d, m, keep in _frame_pairs(data, pairs, good, expected):
        sums.add(d * d / 2.0, m, np.where(keep, groups, -1))
    return sums.points()


class _GroupSums:
    """Sums per group label (``-1``: left out), added one frame pair at a time: the count,
    the sums of ``values`` and of their squares, and the sum of ``level``."""

    def __init__(self) -> None:
        self.sums = np.zeros((4, TRANSFER_GROUPS + 1))

    def add(self, values: np.ndarray, level: np.ndarray, labels: np.ndarray) -> None:
        bins = np.where(labels < 0, TRANSFER_GROUPS, labels).ravel()
        size = TRANSFER_GROUPS + 1
        values = values.ravel()
        self.sums[0] += np.bincount(bins, minlength=size)
        self.sums[1] += np.bincount(bins, weights=values, minlength=size)
        self.sums[2] += np.bincount(bins, weights=values * values, minlength=size)
        self.sums[3] += np.bincount(bins, weights=level.ravel(), minlength=size)

    def points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per group of at least 50 samples: the mean ``level``, the mean of ``values``,
        that mean's variance (``var / n``) and ``n``."""
        n, first, second, level = self.sums[:, :TRANSFER_GROUPS]
        use = n >= 50
        n, first, second, level = n[use], first[use], second[use], level[use]
        mean = first / n
        variance = np.maximum(second / n - mean * mean, 0.0)
        return level / n, mean, variance / n, n


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


def _spread_factor(data: np.ndarray, pairs: int, good: np.ndarray, expected: np.ndarray,
                   read_variance: float) -> tuple[float, float, float, float] | None:
    """Photon share ``Σk²`` and gain where a point spread correlates neighbouring pixels:
    ``(Σk², its error, gain, its error)``, or None when the photon noise is too small next
    to the readout noise to tell.

    Pooled over the samples whose window of :data:`CORRELATION_LAGS_PX` lies on kept
    samples (:func:`_frame_pairs`): the frame-difference covariances ``C(l)`` summed over
    the lags are ``g·μ + σ²`` whatever the spread (a photon's noise, spread by the kernel
    ``k``, adds up over the lags to what it was), so ``g = (Σ_l C(l) - σ²) / μ``, and
    ``Σk² = (C(0) - σ²) / (Σ_l C(l) - σ²)``."""
    from scipy import ndimage

    lags = CORRELATION_LAGS_PX
    window = np.ones((2 * lags + 1, 2 * lags + 1), bool)
    h, w = good.shape
    rows_of, width = h // SPREAD_TILE_PX + 1, w // SPREAD_TILE_PX + 1
    tile_of = ((np.arange(h) // SPREAD_TILE_PX)[:, None] * width
               + (np.arange(w) // SPREAD_TILE_PX)[None, :])
    # Per tile of SPREAD_TILE_PX (a frame pair's tiles apart from another's): samples and
    # the sums of own, total and level.
    size = pairs * rows_of * width
    per_tile = np.zeros((4, size))
    for p, (d, m, keep) in enumerate(_frame_pairs(data, pairs, good, expected)):
        d[~keep] = 0.0
        inside = keep & ndimage.binary_erosion(keep, window)
        shared = np.zeros_like(d)
        for dr in range(-lags, lags + 1):
            for dc in range(-lags, lags + 1):
                if dr or dc:
                    product = _shifted(d, dr, dc)  # in place: few frame-sized arrays
                    product *= d
                    product[~_shifted(keep, dr, dc)] = 0.0
                    shared += product
        own = d[inside] ** 2 / 2.0 - read_variance
        total = own + shared[inside] / 2.0
        tile = tile_of[inside] + p * rows_of * width
        per_tile[0] += np.bincount(tile, minlength=size)
        for k, v in enumerate((own, total, m[inside]), start=1):
            per_tile[k] += np.bincount(tile, weights=v, minlength=size)
    per_tile = per_tile[:, per_tile[0] > 0]
    per, count = per_tile[0], float(per_tile[0].sum())
    if count < 1000:
        return None
    own_mean, total_mean, level_mean = (float(per_tile[k].sum()) / count for k in (1, 2, 3))
    if total_mean <= 0 or level_mean <= 0:
        return None
    factor = float(np.clip(own_mean / total_mean, 0.0, 1.0))
    gain = total_mean / level_mean
    # Errors from the scatter between tiles (a difference enters the products of all its
    # neighbours, so single samples are not independent): the delta method on the ratios
    # of the tiles' means.
    n_tiles = len(per)
    if n_tiles < 4:
        return None
    means_of = per_tile[1:] / per
    weights = per / count

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


def _lag1_correlation(data: np.ndarray, pairs: int, good: np.ndarray
                      ) -> tuple[float, float]:
    """Lag-1 correlation of the frame-difference noise (rows and columns averaged) and its
    standard error."""
    values, n = [], 0
    for dr, dc in ((0, 1), (1, 0)):
        both = good & _shifted(good, dr, dc)
        products = np.zeros(3)  # Σ a·a, Σ b·b, Σ a·b
        for d, _, _ in _frame_pairs(data, pairs, good):
            a, b = d[both], _shifted(d, dr, dc)[both]
            products += (np.dot(a, a), np.dot(b, b), np.dot(a, b))
        samples = pairs * int(both.sum())
        scale = np.sqrt(products[0] * products[1]) / max(samples, 1)
        if samples and scale > 0:
            values.append(float(products[2] / samples / scale))
            n += samples
    if not values:
        return 0.0, 1.0
    return float(np.mean(values)), float(1.0 / np.sqrt(max(n, 1)))


def _neighbour_covariance(data: np.ndarray, pairs: int, good: np.ndarray,
                          expected: np.ndarray, groups: np.ndarray, slope: float,
                          intercept: float,
                          lags: tuple[tuple[int, int], ...] = ((0, 1), (1, 0)),
                          summed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Photon noise covariance of pixels ``lag`` apart per ADU of mean level: ``(a, σ_a)``,
    one value per lag (by default one pixel along rows and one along columns), or one for
    the sum over ``lags`` when ``summed``.

    Per intensity group, the mean of ``d_i · d_{i+lag} / 2`` over kept pairs of pixels
    (:func:`_frame_pairs`) is their noise covariance; the readout noise is not shared
    between pixels, so it is ``a · μ`` for the photon noise alone, and a line through the
    origin against the groups' mean levels gives ``a`` (= ``g · A(lag)``, the spread
    kernel's autocorrelation there). Weighted by the model's variance of each point,
    ``(slope · μ + σ²)² / n``; the error is a sandwich estimate from the measured variances
    (summed per pixel first when ``summed``, so that the lags' shared noise counts)."""
    sums = [_GroupSums() for _ in range(1 if summed else len(lags))]
    for d, m, keep in _frame_pairs(data, pairs, good, expected):
        d[~keep] = 0.0
        # Per lag (or their sum, accumulated) the products, the pair's level and where
        # both samples are kept (built in place: a 4 Mpx scan holds few frame-sized arrays).
        terms: list[np.ndarray] = []
        for k, (dr, dc) in enumerate(lags):
            product = _shifted(d, dr, dc)
            product *= d
            product /= 2.0
            # The pair's level: the mean over the box from one pixel to the other, where
            # the photons they share land (its ends alone would miss a spot between them).
            box = [(r, c) for r in range(min(dr, 0), max(dr, 0) + 1)
                   for c in range(min(dc, 0), max(dc, 0) + 1)]
            between = np.zeros_like(m)
            for r, c in box:
                between += _shifted(m, r, c)
            between /= len(box)
            both = keep & _shifted(keep, dr, dc)
            if not summed:
                sums[k].add(product, between, np.where(both, groups, -1))
            elif terms:
                terms[0] += product
                terms[1] += between
                terms[2] &= both
            else:
                terms = [product, between, both]
            del product, between, both  # before the next lag's are made
        if summed:
            terms[1] /= len(lags)
            sums[0].add(terms[0], terms[1], np.where(terms[2], groups, -1))
    slopes, errors = [], []
    for into in sums:
        x, y, v, n = into.points()
        if len(x) < 3:
            slopes.append(0.0)
            errors.append(np.inf)
            continue
        w = n / np.maximum(max(slope, 0.0) * np.abs(x) + max(intercept, 0.0), 1e-12) ** 2
        norm = float(np.sum(w * x * x))
        slopes.append(float(np.sum(w * x * y)) / norm)
        errors.append(float(np.sqrt(np.sum(w * w * x * x * v))) / norm)
    return np.asarray(slopes), np.asarray(errors)


@cache
def _spread_table(family: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Over Gaussian point spreads of σ from 0 to 4 px, along one axis: the lag-1
    correlation ``ρ`` of the photon noise, ``T = 1 / Σ_i k_i²`` of the kernel (the sum of
    its noise correlations over all lags) and the lag-2 correlation. ``family``: ``"grid"``
    (the Gaussian sampled on the pixel grid, as :func:`_lag1_share`) or ``"pixel"``
    (integrated over each pixel)."""
    from scipy import ndimage, special

    x = np.arange(-20, 21, dtype=np.float64)
    rho, total, rho2 = [0.0], [1.0], [0.0]
    for sigma in np.linspace(0.01, 4.0, 400):
        if family == "grid":
            kernel = ndimage.gaussian_filter1d((x == 0).astype(np.float64), sigma,
                                               mode="constant")
        else:
            scale = np.sqrt(2.0) * sigma
            kernel = 0.5 * (special.erf((x + 0.5) / scale) - special.erf((x - 0.5) / scale))
        kernel /= kernel.sum()
        zero = float(np.sum(kernel ** 2))
        rho.append(float(np.sum(kernel[1:] * kernel[:-1])) / zero)
        total.append(1.0 / zero)
        rho2.append(float(np.sum(kernel[2:] * kernel[:-2])) / zero)
    order = np.argsort(rho)
    return np.asarray(rho)[order], np.asarray(total)[order], np.asarray(rho2)[order]


def _spread_total(rho: float, family: str = "grid") -> float:
    """``T = 1 / Σ k²`` of a one-dimensional Gaussian spread whose lag-1 correlation is
    ``rho`` (:func:`_spread_table`)."""
    r, t, _ = _spread_table(family)
    return float(np.interp(np.clip(rho, 0.0, r[-1]), r, t))


def _spread_lag2(rho: float) -> float:
    """Lag-2 correlation of a one-dimensional Gaussian spread whose lag-1 correlation is
    ``rho``."""
    r, _, r2 = _spread_table("grid")
    return float(np.interp(np.clip(rho, 0.0, r[-1]), r, r2))


def _pooled(covariance: np.ndarray, covariance_error: np.ndarray) -> tuple[float, float]:
    """The two axes' covariances pooled by their inverse variances: ``(value, error)``;
    ``(0, inf)`` where neither was measured."""
    w = 1.0 / np.maximum(np.asarray(covariance_error, np.float64), 1e-300) ** 2
    total = float(np.sum(w))
    if total <= 0:
        return 0.0, float("inf")
    return float(np.sum(w * np.asarray(covariance, np.float64))) / total, 1.0 / np.sqrt(total)


def _per_axis(covariance: np.ndarray, covariance_error: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """The neighbouring covariances of the two axes, pooled where they agree within 3 σ
    (an isotropic spread), as they are otherwise."""
    a, e = np.asarray(covariance, np.float64), np.asarray(covariance_error, np.float64)
    if abs(a[0] - a[1]) <= 3.0 * float(np.hypot(e[0], e[1])):
        pooled, error = _pooled(a, e)
        return np.array([pooled, pooled]), np.full(2, error)
    return a, e


def _axis_error(of: Callable[[float, float], float], a: np.ndarray, e: np.ndarray,
                step: float) -> float:
    """Standard error of ``of(a_x, a_y)`` from the axes' errors ``e`` (central differences
    of ``step``); pooled axes (equal values, :func:`_per_axis`) carry one error for both."""
    if a[0] == a[1]:
        slope = (of(a[0] + step, a[1] + step) - of(a[0] - step, a[1] - step)) / (2 * step)
        return abs(slope) * float(e[0])
    d_x = (of(a[0] + step, a[1]) - of(a[0] - step, a[1])) / (2 * step)
    d_y = (of(a[0], a[1] + step) - of(a[0], a[1] - step)) / (2 * step)
    return float(np.hypot(d_x * e[0], d_y * e[1]))


def _wider_than_gaussian(slope: float, covariance: np.ndarray, covariance_error: np.ndarray,
                         further: float, further_error: float) -> tuple[float, float]:
    """How far the covariance summed over :data:`SHAPE_LAGS` (``further``, per ADU of level
    summed over those lags) exceeds a Gaussian spread's with the measured lag-1
    correlations: ``(excess, its error)``. A spread with a wider tail than a Gaussian's (as
    a scintillator's often has) shows as a positive excess."""
    a, e = _per_axis(covariance, covariance_error)

    def predicted(ax: float, ay: float) -> float:
        rho_x, rho_y = ax / slope, ay / slope  # along rows (lag (0, 1)) and columns
        return slope * (2.0 * rho_x * rho_y + _spread_lag2(rho_x) + _spread_lag2(rho_y))

    # The prediction's own error, from those of the lag-1 covariances, counts too.
    prediction_error = _axis_error(predicted, a, e, 1e-3 * max(abs(slope), 1e-12))
    return (float(further) - predicted(a[0], a[1]),
            float(np.hypot(further_error, prediction_error)))


def _gain_from_neighbours(slope: float, slope_error: float, covariance: np.ndarray,
                          covariance_error: np.ndarray) -> tuple[float, float, float, float]:
    """Gain and photon share ``Σk²`` of a point spread from the per-pixel slope
    ``g·Σk²`` and the neighbouring covariances ``a = g·A(1)`` along each axis:
    ``(gain, its error, Σk², ρ)`` with ``ρ = a / slope`` the photon noise's lag-1
    correlation (the mean of the two axes).

    For a separable spread kernel, ``Σk² = 1 / (T_x · T_y)`` where ``T`` of each axis
    follows from its ``ρ`` (:func:`_spread_total`, a Gaussian kernel); the axes are pooled
    where they agree within 3 σ. The error propagates those of the slope and of ``a``, and
    adds the difference between a kernel sampled on the pixel grid and one integrated over
    the pixels (the shape's own uncertainty, about 1 %)."""
    a, e = _per_axis(covariance, covariance_error)

    def gain_of(s: float, ax: float, ay: float, family: str = "grid") -> float:
        return s * _spread_total(ax / s, family) * _spread_total(ay / s, family)

    gain = gain_of(slope, a[0], a[1])
    step = 1e-4 * max(abs(slope), 1e-12)
    d_slope = (gain_of(slope + step, a[0], a[1]) - gain_of(slope - step, a[0], a[1])) / (2 * step)
    from_a = _axis_error(lambda ax, ay: gain_of(slope, ax, ay), a, e, step)
    shape = 0.5 * abs(gain_of(slope, a[0], a[1], "pixel") - gain)
    gain_error = float(np.sqrt((d_slope * slope_error) ** 2 + from_a ** 2 + shape ** 2))
    return float(gain), gain_error, float(slope / gain), float(np.mean(a) / slope)
