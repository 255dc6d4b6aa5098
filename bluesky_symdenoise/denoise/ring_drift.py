"""Did a neighbouring frame's rings move? The whole-profile drift test of frame pooling.

:func:`~bluesky_symdenoise.denoise.consistency.pooled_ring_means` pools a frame's ring means
with its neighbouring frames' wherever a local test (a few bins at a time) sees no change.
That test has little power where a bin rests on few pixels or counts (the detector's
corners, low doses), so a ring that drifts by a fraction of its width per frame (thermal
expansion, a lattice under strain) passes it there, and the pooled mean smears the ring:
the frame's I(q) comes out broader, and at coarse binnings worse than raw's
(``bench/iq.py``, scene ``insitu_drift``).

A drift moves every ring of the pattern together, so it is measured on the whole profile:
the neighbour's full-ring profile against the frame's, fitted by weighted least squares as

    near(r) - own(r) ≈ a·m(r) - ε·r·m'(r),       m = (own + near) / 2,

an intensity change ``a`` and a radial scale ``ε`` (the neighbour's rings lie at radius
``r·(1 + ε)``; a lattice expanding by ε). The weights are the Poisson variances of the
bin means, and the stated error of ε is scaled by the fit's reduced χ² where that exceeds
1 (correlated or non-Poisson noise, a model that does not fit). Where ε is significant
(:data:`DRIFT_Z`), :func:`moved_bins` marks, at any binning, the bins where the neighbour's
profile is predicted to differ from the frame's by more than :data:`DRIFT_BIAS_SIGMAS` of
the frame's own bin noise: those bins do not take that neighbour, nor do the outermost bins
whose neighbour's content came from beyond the frame's last radius (a ring just outside
the detector's corner drifting in, which the frame's profile cannot predict). Elsewhere
(between rings, where the profile is flat) the neighbour is still pooled. A drift below
:data:`DRIFT_Z` is smaller than the whole profile can see, so per bin it is far below the
noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .symmetry import RingProfile

__all__ = ["DRIFT_BIAS_SIGMAS", "DRIFT_Z", "RadialDrift", "moved_bins", "radial_drift",
           "radial_drifts"]

#: Significance (in stated errors) of the radial scale above which a neighbour has moved.
DRIFT_Z = 5.0
#: A moved neighbour is pooled only at bins where the change predicted from its scale is
#: at most this many standard deviations of the frame's own bin mean (the pooled mean's
#: bias then stays well below the noise it removes).
DRIFT_BIAS_SIGMAS = 0.5


@dataclass(frozen=True)
class RadialDrift:
    """A neighbour's rings against a frame's: they lie at radius ``r·(1 + scale)``."""

    scale: float
    error: float

    @property
    def significant(self) -> bool:
        """Whether the rings moved by more than the whole profile's noise allows."""
        return bool(np.isfinite(self.error) and abs(self.scale) > DRIFT_Z * self.error)


def radial_drift(profile: RingProfile, good: np.ndarray, raw: np.ndarray,
                 neighbour: np.ndarray) -> RadialDrift:
    """The radial scale of ``neighbour``'s rings against ``raw``'s, with its error.

    Parameters
    ----------
    profile
        Whole-ring profile (one sector), e.g. 1 px bins.
    good
        Pixels the means are taken over.
    raw, neighbour
        Two frames of the scan at the same dose (counts or photon-equivalent).

    Returns
    -------
    RadialDrift
        ``scale`` and its ``error`` (``inf`` when the profile has no structure to measure it).
    """
    return radial_drifts(profile, good, raw, [neighbour])[0]


def radial_drifts(profile: RingProfile, good: np.ndarray, raw: np.ndarray,
                  neighbours: Sequence[np.ndarray]) -> list[RadialDrift]:
    """:func:`radial_drift` of each neighbour, the frame's profile taken once."""
    own, weight = profile.bin_means(raw, good)
    return [_fit_drift(own, profile.bin_means(near, good)[0], weight, profile.bin_width)
            for near in neighbours]


def _fit_drift(own: np.ndarray, near: np.ndarray, weight: np.ndarray,
               bin_width: float) -> RadialDrift:
    """The weighted least-squares fit of the module docstring on one pair of profiles."""
    mean = 0.5 * (own + near)
    radius = np.arange(mean.size) * bin_width
    slope = radius * np.gradient(mean, bin_width)
    var = (own + near) / np.maximum(weight, 1e-12)
    use = (weight >= 1.0) & (var > 0)
    if use.sum() < 4:
        return RadialDrift(0.0, float("inf"))
    w = 1.0 / var[use]
    basis = np.stack([mean[use], -slope[use]])  # columns of the design: a, ε
    normal = (basis * w) @ basis.T
    try:
        cov = np.linalg.inv(normal)
    except np.linalg.LinAlgError:
        return RadialDrift(0.0, float("inf"))
    diff = (near - own)[use]
    coef = cov @ ((basis * w) @ diff)
    dof = max(int(use.sum()) - 2, 1)
    chi2_red = float(np.sum(w * (diff - coef @ basis) ** 2)) / dof
    error = float(np.sqrt(max(cov[1, 1], 0.0) * max(chi2_red, 1.0)))
    if not np.isfinite(error) or error == 0.0:
        return RadialDrift(0.0, float("inf"))
    return RadialDrift(float(coef[1]), error)


def moved_bins(drift: RadialDrift, profile: RingProfile, expected: np.ndarray,
               weight: np.ndarray) -> np.ndarray:
    """Bins of ``profile`` (any width, sectors or not) whose neighbour has moved too far to
    be pooled: the change ``m(r / (1 + ε)) - m(r)`` of the frame's expected profile ``m``,
    predicted from the drift, exceeds :data:`DRIFT_BIAS_SIGMAS` of the frame's Poisson
    noise on the bin. None of them when the drift is not significant.

    Parameters
    ----------
    drift
        The neighbour's drift (:func:`radial_drift`).
    profile
        The binning of ``expected`` and ``weight`` (bins ordered radius-major, as
        :class:`~bluesky_symdenoise.denoise.symmetry.RingProfile` orders them).
    expected
        Per bin, the frame's expected mean: its denoised frame's, where there is one (it
        carries the shape of the rings without the noise that would mark flat bins moved).
    weight
        Per bin, about how many pixels its mean rests on.
    """
    if not drift.significant:
        return np.zeros(expected.shape, bool)
    sectors = profile.sectors
    mean = np.asarray(expected, np.float64).reshape(-1, sectors)
    radius = np.arange(mean.shape[0]) * profile.bin_width
    moved_to = radius / (1.0 + drift.scale)
    change = np.stack([np.interp(moved_to, radius, mean[:, k]) for k in range(sectors)],
                      axis=1) - mean
    noise = np.maximum(mean, 0.0) / np.maximum(weight.reshape(mean.shape), 1e-12)
    moved = change ** 2 > DRIFT_BIAS_SIGMAS ** 2 * noise
    # Where the rings came in from beyond the outermost radius with pixels (the detector's
    # corner), the neighbour holds what lay outside this frame's profile: the prediction
    # (flat beyond the last bin) cannot say what moved there, so those bins have moved.
    filled = weight.reshape(mean.shape) > 0
    for k in range(sectors):
        if filled[:, k].any():
            last = radius[np.flatnonzero(filled[:, k])[-1]]
            moved[:, k] |= filled[:, k] & (moved_to > last)
    return moved.reshape(-1)
