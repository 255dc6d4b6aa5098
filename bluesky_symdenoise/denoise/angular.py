"""Smooth patterns as short angular series, shell by shell (SAXS, fibre, textured rings).

An oriented SAXS or fibre pattern is, ring by ring, a few angular harmonics:
``I(r, χ) = I0(r) · (1 + Σ_m [c_m(r) cos mχ + s_m(r) sin mχ])``. Fitting that to the counts
pools every pixel of a shell (hundreds) where a local denoiser pools tens.

:func:`angular_model` fits it band by band (:data:`BAND_PX` px of radius), by Poisson
likelihood (Fisher scoring), in the form ``λ = exp(s(r)) · (1 + Σ harmonics)``:

1. **The isotropic part** ``s(r)``: a cubic spline in radius, knots every 1 or 2 px (the
   Bayesian information criterion chooses). On the log scale it follows the steep decay next
   to a beamstop (a Guinier region drops by several times per pixel), which a level and a
   linear slope per 1 px shell cannot.
2. **The relative angular modulation**: pairs of terms (order ``m``'s cosine and sine, and
   their linear change across the band, ``m = 1 .. M``) added by forward selection: the pair
   a score test ranks first is fitted and kept while the Bayesian information criterion on
   the Poisson deviance improves. A centrosymmetric pattern thus gets its even orders
   without paying for the odd ones.

The model is only an estimate where it fits. :func:`misfit` finds the pixels whose
neighbourhood departs from it beyond the Poisson noise (spots, streaks, one-sided features,
the beamstop's edge, sharp rings the radial spline cannot follow), and the engine decides per
band, on a held-out binomial split, how much of the model to mix into its own estimate
(:func:`held_out_band_weights`); it keeps its own estimate where the model misfits. The mix
is rescaled within each 1 px shell so that the shell's total is the engine's own: the model
changes how intensity is spread around a ring and across the shell's width, never a shell's
mean (the raw-consistency holds of :mod:`.consistency` stay in force at 1 px and coarser).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.interpolate import BSpline
from scipy.special import xlogy

__all__ = ["AngularBlend", "BAND_PX", "MAX_ORDER", "angular_model", "held_out_band_weights",
           "misfit", "polar_maps"]

#: Radial width of the bands sharing one angular series, in pixels.
BAND_PX = 8
#: Highest angular harmonic tried per band.
MAX_ORDER = 6
#: Fewest parameters' worth of pixels a band needs per fitted parameter.
PIXELS_PER_PARAMETER = 10
#: Window (px) and Poisson z of :func:`misfit`.
MISFIT_WINDOW_PX = 5
MISFIT_Z = 4.0
#: Band weights within this of 0 or 1 are taken as 0 or 1.
SNAP = 0.05
#: Knot spacings (px) tried for the cubic spline in radius that carries a band's isotropic
#: part (the information criterion chooses per band).
RADIAL_KNOTS_PX = (1.0, 2.0)
#: Weight of the spline's second-difference penalty, per count of the band and basis
#: function: small, it only carries the spline across radii without pixels.
SMOOTHING = 1e-4
#: Fisher-scoring steps of the first fit of a band (from its shell means) and of each fit
#: with a further pair of terms (from the fit before it).
FIRST_ITERATIONS = 10
NEXT_ITERATIONS = 6
_LOG_FLOOR = -30.0


def polar_maps(shape: tuple[int, int], center: tuple[float, float]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Radius (px) and azimuth (rad) of every pixel about ``center`` ``(row, col)``."""
    rows, cols = np.indices(shape, dtype=np.float64)
    dr, dc = rows - center[0], cols - center[1]
    return np.hypot(dr, dc), np.arctan2(dr, dc)


def _n_basis(knot: float) -> int:
    """Cubic B-splines on a band of :data:`BAND_PX` px with knots every ``knot`` px."""
    return int(np.ceil(BAND_PX / knot)) + 3


def _cubic_bspline(radius: np.ndarray, first: float, knot: float) -> np.ndarray:
    """Uniform cubic B-spline basis in ``radius`` over the band from ``first``
    (:func:`_n_basis` columns)."""
    n_basis = _n_basis(knot)
    knots = first + knot * (np.arange(n_basis + 4) - 3.0)
    return BSpline.design_matrix(radius, knots, 3).toarray()


def _ridge_solve(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """``matrix⁻¹ · vector`` with a vanishing ridge: terms the pixels cannot tell apart (a
    band seen on a short arc only) stay determined instead of making the solve fail."""
    matrix = matrix.copy()
    matrix[np.diag_indices_from(matrix)] += 1e-9 * max(float(np.trace(matrix)), 1e-30)
    return np.linalg.lstsq(matrix, vector, rcond=None)[0]


def _predict(spline: np.ndarray, modulation: np.ndarray, theta: np.ndarray, floor: float
             ) -> tuple[np.ndarray, np.ndarray]:
    """The isotropic part ``exp(spline @ β)`` and the rate ``λ`` (at least ``floor``)."""
    n_basis = spline.shape[1]
    base = np.exp(np.clip(spline @ theta[:n_basis], _LOG_FLOOR, 30.0))
    return base, np.maximum(base * (1.0 + modulation @ theta[n_basis:]), floor)


def _scoring(x: np.ndarray, spline: np.ndarray, modulation: np.ndarray, theta: np.ndarray,
             penalty: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Poisson fit of ``λ = exp(spline @ β) · (1 + modulation @ γ)`` by Fisher scoring
    from ``θ = (β, γ)``, with the quadratic ``penalty`` on ``θ``; returns ``θ`` and ``λ``."""
    floor = 1e-6 * max(float(x.mean()), 1e-6)
    for _ in range(iterations):
        base, rate = _predict(spline, modulation, theta, floor)
        jacobian = np.hstack([spline * rate[:, None], modulation * base[:, None]])
        weighted = jacobian / rate[:, None]
        theta = theta + _ridge_solve(weighted.T @ jacobian + penalty,
                                     weighted.T @ (x - rate) - penalty @ theta)
    return theta, _predict(spline, modulation, theta, floor)[1]


def _deviance(counts: np.ndarray, rate: np.ndarray) -> float:
    """Poisson deviance; an integrating detector's photon-equivalent values below 0 (its
    readout noise) count as 0 in the log term, so the deviance stays finite."""
    positive = np.maximum(counts, 0.0)
    return float(2.0 * np.sum(xlogy(positive, positive / rate) - (counts - rate)))


def _score_test(terms: np.ndarray, x: np.ndarray, rate: np.ndarray, base: np.ndarray
                ) -> float:
    """Score statistic of adding modulation ``terms`` to a fit (``rate``, isotropic part
    ``base``): about the deviance the terms would remove, without fitting them."""
    gradient = terms.T @ ((x - rate) / rate * base)
    information = (terms * (base ** 2 / rate)[:, None]).T @ terms
    return float(gradient @ _ridge_solve(information, gradient))


def _band_model(x: np.ndarray, radius: np.ndarray, azimuth: np.ndarray, first: int
                ) -> tuple[np.ndarray, int]:
    """One band's fit: the radial spline, then the angular terms two by two (order ``m``'s
    cosine and sine, then their change across the band) while the Bayesian information
    criterion on the Poisson deviance supports them."""
    n = len(x)
    shell = np.floor(radius - first).astype(np.int64)
    pixels = np.bincount(shell, minlength=BAND_PX)
    shell_mean = np.bincount(shell, x, minlength=BAND_PX) / np.maximum(pixels, 1)
    start = np.log(np.maximum(shell_mean[shell], max(float(x.mean()), 1e-6) * 1e-2))
    # The isotropic part: the knot spacing the information criterion prefers.
    fits = []
    for knot in RADIAL_KNOTS_PX:
        n_basis = _n_basis(knot)
        spline = _cubic_bspline(radius, first, knot)
        # A weak second-difference penalty on the spline (relative to the counts'
        # weight): radii without pixels (the beamstop, a gap) take their neighbours' course.
        second = np.diff(np.eye(n_basis), 2, axis=0)
        smooth = SMOOTHING * max(float(x.sum()), 1.0) / n_basis * second.T @ second
        beta = np.linalg.lstsq(spline, start, rcond=None)[0]
        theta, rate = _scoring(x, spline, np.zeros((n, 0)), beta, smooth, FIRST_ITERATIONS)
        fits.append((_deviance(x, rate) + np.log(n) * n_basis, n_basis, spline, smooth,
                     theta, rate))
    _, n_basis, spline, smooth, theta, best_rate = min(fits, key=lambda fit: fit[0])
    best_score, best_order = _deviance(x, best_rate), 0
    across = (radius - (first + BAND_PX / 2)) / BAND_PX
    # Candidate pairs of terms: order m's cosine and sine, and (once those are in) their
    # change across the band. Forward selection: the candidate the score test ranks first
    # is fitted and kept while the information criterion improves.
    candidates: dict[tuple[int, bool], np.ndarray] = {}
    for m in range(1, MAX_ORDER + 1):
        cos, sin = np.cos(m * azimuth), np.sin(m * azimuth)
        candidates[(m, False)] = np.stack([cos, sin], axis=1)
        candidates[(m, True)] = np.stack([cos * across, sin * across], axis=1)
    chosen: list[tuple[int, bool]] = []
    modulation = np.zeros((n, 0))
    while (n_basis + modulation.shape[1] + 2) * PIXELS_PER_PARAMETER <= n:
        base, _ = _predict(spline, modulation, theta, 0.0)
        open_ = [key for key in candidates if key not in chosen
                 and (not key[1] or (key[0], False) in chosen)]
        if not open_:
            break
        ranks = [_score_test(candidates[key], x, best_rate, base) for key in open_]
        key = open_[int(np.argmax(ranks))]
        trial = np.hstack([modulation, candidates[key]])
        penalty = np.zeros((n_basis + trial.shape[1],) * 2)
        penalty[:n_basis, :n_basis] = smooth
        fitted, rate = _scoring(x, spline, trial, np.concatenate([theta, np.zeros(2)]),
                                penalty, NEXT_ITERATIONS)
        score = _deviance(x, rate) + np.log(n) * trial.shape[1]
        if not score < best_score:  # no better (or not finite): stop
            break
        chosen.append(key)
        modulation, theta, best_rate, best_score = trial, fitted, rate, score
        best_order = max(best_order, key[0])
    return best_rate, best_order


def angular_model(counts: np.ndarray, good: np.ndarray, radius: np.ndarray,
                  azimuth: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit the shell-by-shell angular series to ``counts``.

    Parameters
    ----------
    counts
        ``(H, W)`` counts (one frame, or frames summed: the estimate is in the same units).
    good
        Pixels that hold data.
    radius, azimuth
        :func:`polar_maps` about the beam centre.

    Returns
    -------
    (numpy.ndarray, dict)
        The fitted expectation (``NaN`` where a band had too few pixels or no counts), and
        a summary: the order chosen per band.
    """
    counts = np.asarray(counts, np.float64)
    shell = np.floor(radius).astype(np.int64)
    n_shells = int(shell[good].max()) + 1 if good.any() else 0
    model = np.full(counts.shape, np.nan)
    orders: list[int] = []
    n_basis = _n_basis(max(RADIAL_KNOTS_PX))
    for first in range(0, n_shells, BAND_PX):
        on = good & (shell >= first) & (shell < first + BAND_PX)
        x = counts[on]
        if len(x) < PIXELS_PER_PARAMETER * n_basis or x.sum() <= 0:
            orders.append(0)
            continue
        rate, order = _band_model(x, radius[on], azimuth[on], first)
        model[on] = rate
        orders.append(order)
    return model, {"band_px": BAND_PX, "orders": orders}


def misfit(counts: np.ndarray, model: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Pixels whose :data:`MISFIT_WINDOW_PX` neighbourhood departs from ``model`` by more
    than :data:`MISFIT_Z` Poisson standard deviations (either way), grown by the window."""
    use = good & np.isfinite(model)
    x = np.where(use, counts, 0.0)
    rate = np.where(use, model, 0.0)
    size = MISFIT_WINDOW_PX
    observed = ndimage.uniform_filter(x, size, mode="constant") * size * size
    expected = ndimage.uniform_filter(rate, size, mode="constant") * size * size
    z = (observed - expected) / np.sqrt(np.maximum(expected, 1.0))
    bad = use & (np.abs(z) > MISFIT_Z)
    return ndimage.binary_dilation(bad, np.ones((size, size), bool)) | ~use


@dataclass(frozen=True)
class AngularBlend:
    """Weight of the angular model per radial band (the engine's estimate gets the rest).

    Attributes
    ----------
    weights
        One weight in [0, 1] per band of :data:`BAND_PX` shells from the centre.
    orders
        The harmonic order the held-out fit chose per band (for the record).
    """

    weights: tuple[float, ...]
    orders: tuple[int, ...]

    @property
    def unused(self) -> bool:
        """Whether the model gets no weight anywhere."""
        return not any(w > 0 for w in self.weights)

    def band_weight(self, radius: np.ndarray) -> np.ndarray:
        """Each pixel's weight from its band."""
        band = np.minimum((np.floor(radius) // BAND_PX).astype(np.int64),
                          len(self.weights) - 1)
        return np.asarray(self.weights, np.float64)[np.maximum(band, 0)]

    def summary(self) -> dict[str, Any]:
        """JSON-safe description for provenance."""
        return {"band_px": BAND_PX, "model_weights": [round(w, 3) for w in self.weights],
                "orders": list(self.orders)}


def held_out_band_weights(model: np.ndarray, other: np.ndarray, rest: np.ndarray,
                          good: np.ndarray, radius: np.ndarray, orders: list[int], *,
                          min_pixels: int = 50) -> AngularBlend:
    """Per band, the mix of the model and another estimate closest to a held-out half.

    ``model`` and ``other`` estimate one half of a binomial split, ``rest`` is the other
    half (independent of both), so the least-squares weight against it is the data's choice
    (as :func:`~.selection.held_out_blend`, with bands of radius instead of intensity).
    Pixels where the model is ``NaN`` do not count."""
    band = (np.floor(radius) // BAND_PX).astype(np.int64)
    n_bands = int(band[good].max()) + 1 if good.any() else 0
    weights = []
    for b in range(n_bands):
        on = good & (band == b) & np.isfinite(model)
        diff = (model - other)[on]
        spread = float(np.sum(diff ** 2))
        if on.sum() < min_pixels or spread <= 0:
            weights.append(0.0)
            continue
        w = float(np.clip(np.sum((rest[on] - other[on]) * diff) / spread, 0.0, 1.0))
        weights.append(0.0 if w <= SNAP else 1.0 if w >= 1.0 - SNAP else w)
    return AngularBlend(weights=tuple(weights),
                        orders=tuple(orders[:n_bands]) + (0,) * max(0, n_bands - len(orders)))


#: Width (px) of the shells whose totals :func:`mix_within_shells` keeps.
KEPT_ANNULUS_PX = 1.0


def mix_within_shells(estimate: np.ndarray, model: np.ndarray, weight: np.ndarray,
                      good: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """``w·model + (1 - w)·estimate``, rescaled shell by shell (:data:`KEPT_ANNULUS_PX`) to
    the estimate's own totals: the model moves intensity around a ring and across a shell's
    width, never between shells, so the estimate's radial profile at 1 px (held to the raw
    counts) and with it the full-ring I(q) in bins of a pixel or more stay as they were.
    Within a shell the model's radial course replaces the estimate's: next to a beamstop,
    where the intensity falls several times per pixel, the network's is the larger error
    (``bench/heldout.py``, SAXS)."""
    estimate = np.asarray(estimate, np.float64)
    use = good & np.isfinite(model) & (weight > 0)
    mixed = np.where(use, weight * np.nan_to_num(model) + (1.0 - weight) * estimate, estimate)
    shell = np.floor(radius / KEPT_ANNULUS_PX).astype(np.int64)
    labels = np.where(use, shell + 1, 0)
    n = int(labels.max()) + 1
    before = np.bincount(labels.ravel(), weights=estimate.ravel(), minlength=n)
    after = np.bincount(labels.ravel(), weights=mixed.ravel(), minlength=n)
    scale = np.divide(before, after, out=np.ones(n), where=after > 0)
    scale[0] = 1.0
    return mixed * scale[labels]
