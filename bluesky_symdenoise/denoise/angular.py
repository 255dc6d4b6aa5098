"""Smooth patterns as short angular series, shell by shell (SAXS, fibre, textured rings).

An oriented SAXS or fibre pattern is, ring by ring, a few angular harmonics:
``I(r, χ) = I0(r) · (1 + Σ_m [c_m(r) cos mχ + s_m(r) sin mχ])``. Fitting that to the counts
pools every pixel of a shell (hundreds) where a local denoiser pools tens.

:func:`angular_model` fits it in two steps, both by Poisson likelihood (iteratively
reweighted least squares, the weights ``1 / λ``):

1. **Shells** of 1 px: the isotropic part, a level and a radial slope per shell.
2. **Bands** of :data:`BAND_PX` shells: the relative angular modulation, harmonics
   ``m = 1 .. M`` whose coefficients vary linearly with radius over the band; the order
   ``M`` (0 to :data:`MAX_ORDER`) is chosen per band by the Bayesian information criterion
   on the Poisson deviance, so the data decide how many harmonics they support.

The model is only an estimate where it fits. :func:`misfit` finds the pixels whose
neighbourhood departs from it beyond the Poisson noise (spots, streaks, one-sided features,
the beamstop's edge, sharp rings the radial slope cannot follow), and the engine decides per
band, on a held-out binomial split, how much of the model to mix into its own estimate
(:func:`held_out_band_weights`); it keeps its own estimate where the model misfits. The mix
is redistributed within each 1 px shell so that the shell's total is the engine's own: the
model changes how a ring's intensity is spread, never the ring's mean (the raw-consistency
holds of :mod:`.consistency` stay in force).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
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


def polar_maps(shape: tuple[int, int], center: tuple[float, float]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Radius (px) and azimuth (rad) of every pixel about ``center`` ``(row, col)``."""
    rows, cols = np.indices(shape, dtype=np.float64)
    dr, dc = rows - center[0], cols - center[1]
    return np.hypot(dr, dc), np.arctan2(dr, dc)


def _irls(counts: np.ndarray, design: np.ndarray, iterations: int = 6) -> np.ndarray:
    """Poisson fit of ``λ = design @ θ`` (identity link); the fitted ``λ`` (kept positive)."""
    floor = 1e-6 * max(float(counts.mean()), 1e-6)
    rate = np.full(len(counts), max(float(counts.mean()), floor))
    for _ in range(iterations):
        weighted = design / rate[:, None]
        normal = weighted.T @ design
        normal[np.diag_indices_from(normal)] += 1e-9 * max(float(np.trace(normal)), 1e-30)
        theta = np.linalg.solve(normal, weighted.T @ counts)
        rate = np.maximum(design @ theta, floor)
    return rate


def _shell_fits(counts: np.ndarray, good: np.ndarray, radius: np.ndarray, shell: np.ndarray,
                n_shells: int, iterations: int = 6) -> np.ndarray:
    """Per 1 px shell, a level and a radial slope fitted by Poisson likelihood (the
    iterations of :func:`_irls`, all shells at once); NaN in shells of fewer than 4 pixels."""
    index = shell[good]
    x = counts[good]
    across = radius[good] - (index + 0.5)
    n = max(n_shells, 1)
    pixels = np.bincount(index, minlength=n).astype(np.float64)
    mean = np.bincount(index, x, minlength=n) / np.maximum(pixels, 1.0)
    floor = 1e-6 * np.maximum(mean, 1e-6)
    rate = np.maximum(mean, floor)[index]
    for _ in range(iterations):
        w = 1.0 / rate
        s0, s1 = np.bincount(index, w, n), np.bincount(index, w * across, n)
        s2 = np.bincount(index, w * across * across, n)
        t0, t1 = np.bincount(index, w * x, n), np.bincount(index, w * across * x, n)
        det = s0 * s2 - s1 ** 2
        solvable = det > 1e-12 * np.maximum(s0 * s2, 1e-300)
        safe = np.where(solvable, det, 1.0)
        level = np.where(solvable, (s2 * t0 - s1 * t1) / safe, t0 / np.maximum(s0, 1e-300))
        slope = np.where(solvable, (s0 * t1 - s1 * t0) / safe, 0.0)
        rate = np.maximum(level[index] + slope[index] * across, floor[index])
    out = np.full(counts.shape, np.nan)
    out[good] = np.where(pixels[index] >= 4, rate, np.nan)
    return out


def _deviance(counts: np.ndarray, rate: np.ndarray) -> float:
    return float(2.0 * np.sum(xlogy(counts, counts / rate) - (counts - rate)))


def _harmonics(chi: np.ndarray, order: int) -> list[np.ndarray]:
    terms = []
    for m in range(1, order + 1):
        terms += [np.cos(m * chi), np.sin(m * chi)]
    return terms


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
        The fitted expectation (``NaN`` where a shell had too few pixels), and a summary:
        the order chosen per band.
    """
    counts = np.asarray(counts, np.float64)
    shell = np.floor(radius).astype(np.int64)
    n_shells = int(shell[good].max()) + 1 if good.any() else 0
    isotropic = _shell_fits(counts, good, radius, shell, n_shells)
    model = isotropic.copy()
    orders: list[int] = []
    for first in range(0, n_shells, BAND_PX):
        on = good & np.isfinite(isotropic) & (shell >= first) & (shell < first + BAND_PX)
        n = int(on.sum())
        if n < PIXELS_PER_PARAMETER * 5:
            orders.append(0)
            continue
        x, base = counts[on], np.maximum(isotropic[on], 1e-12)
        across = (radius[on] - (first + BAND_PX / 2)) / BAND_PX
        best_score, best_rate, best_order = _deviance(x, base), base, 0
        for order in range(1, MAX_ORDER + 1):
            columns = [base]
            for term in _harmonics(azimuth[on], order):
                columns += [base * term, base * term * across]
            if len(columns) * PIXELS_PER_PARAMETER > n:
                break
            rate = _irls(x, np.stack(columns, axis=1))
            score = _deviance(x, rate) + np.log(n) * (len(columns) - 1)
            if score < best_score:
                best_score, best_rate, best_order = score, rate, order
            elif order >= best_order + 2:  # two orders in a row not supported: stop
                break
        model[on] = best_rate
        orders.append(best_order)
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


#: Width (px) of the thin annuli whose totals :func:`mix_within_shells` keeps.
KEPT_ANNULUS_PX = 0.25


def mix_within_shells(estimate: np.ndarray, model: np.ndarray, weight: np.ndarray,
                      good: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """``w·model + (1 - w)·estimate``, rescaled annulus by annulus (:data:`KEPT_ANNULUS_PX`)
    to the estimate's own totals: the model moves intensity around a ring, never between
    radii, so the estimate's radial profile (held to the raw counts) and with it any
    integrator's full-ring I(q) stay as they were."""
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
