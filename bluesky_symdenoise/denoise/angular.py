"""Smooth patterns as short angular series, shell by shell (SAXS, fibre, textured rings).

An oriented SAXS or fibre pattern is, ring by ring, a few angular harmonics:
``I(r, χ) = I0(r) · (1 + Σ_m [c_m(r) cos mχ + s_m(r) sin mχ])``. Fitting that to the counts
pools every pixel of a shell (hundreds) where a local denoiser pools tens.

:func:`angular_model` fits it band by band (:data:`BAND_PX` px of radius, from the innermost
shell with data), by Poisson
likelihood (Fisher scoring), in the form ``λ = exp(s(r)) · (1 + Σ harmonics)``:

1. **The isotropic part** ``s(r)``: a cubic spline in radius, knots every 1 or 2 px (the
   Bayesian information criterion chooses). On the log scale it follows the steep decay next
   to a beamstop (a Guinier region drops by several times per pixel), which a level and a
   linear slope per 1 px shell cannot.
2. **The relative angular modulation**: pairs of terms (order ``m``'s cosine and sine, and
   their linear change across the band, ``m = 1 .. M``) added by forward selection: the pair
   a score test ranks first is fitted and kept while the Bayesian information criterion on
   the Poisson deviance improves. A centrosymmetric pattern thus gets its even orders
   without paying for the odd ones. Before that, the orders the whole frame shows
   (:func:`scan_orders`: the bands' scores pooled) come into every band: at low counts an
   orientation of 10-25 % is within one band's noise, and a band without its order is the
   ring mean, which mixed in flattens the orientation.

Choosing the knots and terms costs several times fitting them. A scan's frames at one dose
support the same structure, so :class:`ScanAngularModel` chooses it on the first frame and
only refits the coefficients of the next ones (chosen afresh every :data:`REFRESH_FRAMES`
frames, and for a frame at another dose).

The model is only an estimate where it fits. :func:`misfit` finds the pixels whose
neighbourhood departs from it beyond the Poisson noise (spots, streaks, one-sided features,
the beamstop's edge, sharp rings the radial spline cannot follow), and the engine decides per
band, on a held-out binomial split, how much of the model to mix into its own estimate
(:func:`held_out_band_weights`); it keeps its own estimate where the model misfits. The mix
is rescaled within each 1 px shell (each half of one across a ring's crest, each quarter
across a narrow ring's) so that the shell's total is the engine's own: the model changes
how intensity is spread around a ring and across the shell's width, never a shell's mean
(the raw-consistency holds of :mod:`.consistency` stay in force at 1 px and coarser).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.interpolate import BSpline
from scipy.special import xlogy
from scipy.stats import chi2

__all__ = ["AngularBlend", "BAND_PX", "BandStructure", "MAX_ORDER", "ScanAngularModel",
           "order_p_value", "ridge_solve",
           "angular_model", "band_index", "band_origin", "held_out_band_weights", "misfit",
           "polar_maps"]

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
#: Fisher-scoring steps of a refit with a band's structure fixed, from its fitted
#: coefficients (another frame of the scan: close to them already).
REFIT_ITERATIONS = 4
_LOG_FLOOR = -30.0


def polar_maps(shape: tuple[int, int], center: tuple[float, float]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Radius (px) and azimuth (rad) of every pixel about ``center`` ``(row, col)``."""
    rows, cols = np.indices(shape, dtype=np.float64)
    dr, dc = rows - center[0], cols - center[1]
    return np.hypot(dr, dc), np.arctan2(dr, dc)


def band_origin(radius: np.ndarray, good: np.ndarray) -> int:
    """The first band's first shell: the innermost shell with data (the beamstop's edge),
    so that no band holds only the few pixels between a shell boundary and the beamstop
    (too few to fit: the brightest pixels of a SAXS pattern would go without the model)."""
    return int(np.floor(radius[good].min())) if good.any() else 0


def band_index(radius: np.ndarray, origin: int) -> np.ndarray:
    """Each pixel's band of :data:`BAND_PX` shells, counted from ``origin``."""
    return ((np.floor(radius).astype(np.int64) - origin) // BAND_PX).astype(np.int64)


@dataclass(frozen=True, eq=False)
class BandStructure:
    """What the information criterion chose for one band, to refit other frames with.

    Attributes
    ----------
    first
        The band's first shell (px from the centre).
    knot
        The radial spline's knot spacing (px).
    terms
        The angular terms kept, as ``(order, across)`` pairs in the order they came in
        (``across``: the pair's linear change across the band).
    theta
        The fitted coefficients (spline, then terms): a refit's start.
    total
        The counts of the band that fit saw (a refit's start is rescaled to its own).
    """

    first: int
    knot: float
    terms: tuple[tuple[int, bool], ...]
    theta: np.ndarray
    total: float


def _n_basis(knot: float) -> int:
    """Cubic B-splines on a band of :data:`BAND_PX` px with knots every ``knot`` px."""
    return int(np.ceil(BAND_PX / knot)) + 3


def _cubic_bspline(radius: np.ndarray, first: float, knot: float) -> np.ndarray:
    """Uniform cubic B-spline basis in ``radius`` over the band from ``first``
    (:func:`_n_basis` columns)."""
    n_basis = _n_basis(knot)
    knots = first + knot * (np.arange(n_basis + 4) - 3.0)
    return BSpline.design_matrix(radius, knots, 3).toarray()


def ridge_solve(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
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
        theta = theta + ridge_solve(weighted.T @ jacobian + penalty,
                                     weighted.T @ (x - rate) - penalty @ theta)
    return theta, _predict(spline, modulation, theta, floor)[1]


def _deviance(counts: np.ndarray, rate: np.ndarray) -> float:
    """Poisson deviance; an integrating detector's photon-equivalent values below 0 (its
    readout noise) count as 0 in the log term, so the deviance stays finite."""
    positive = np.maximum(counts, 0.0)
    return float(2.0 * np.sum(xlogy(positive, positive / rate) - (counts - rate)))


def _score(terms: np.ndarray, x: np.ndarray, rate: np.ndarray, base: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """The Poisson score's gradient and information of modulation ``terms`` at a fit
    (``rate``, isotropic part ``base``)."""
    gradient = terms.T @ ((x - rate) / rate * base)
    information = (terms * (base ** 2 / rate)[:, None]).T @ terms
    return gradient, information


def _term(key: tuple[int, bool], azimuth: np.ndarray, across: np.ndarray) -> np.ndarray:
    """The pair of angular terms ``key = (m, across)``: ``cos mχ`` and ``sin mχ``, times the
    position across the band if ``across``."""
    m, changes = key
    pair = np.stack([np.cos(m * azimuth), np.sin(m * azimuth)], axis=1)
    return pair * across[:, None] if changes else pair


def _across(radius: np.ndarray, first: int) -> np.ndarray:
    """Position across the band from ``first``, -1/2 .. 1/2."""
    return (radius - (first + BAND_PX / 2)) / BAND_PX


def _smoothing(x: np.ndarray, n_basis: int, n_terms: int) -> np.ndarray:
    """A weak second-difference penalty on the spline (relative to the counts' weight):
    radii without pixels (the beamstop, a gap) take their neighbours' course. Zero on the
    ``n_terms`` angular terms."""
    second = np.diff(np.eye(n_basis), 2, axis=0)
    penalty = np.zeros((n_basis + n_terms,) * 2)
    penalty[:n_basis, :n_basis] = (SMOOTHING * max(float(x.sum()), 1.0) / n_basis
                                   * second.T @ second)
    return penalty


@dataclass(eq=False)
class _BandFit:
    """One band's fit while its structure is chosen: the pixels' counts and the terms in."""

    x: np.ndarray
    azimuth: np.ndarray
    across: np.ndarray
    knot: float
    spline: np.ndarray
    theta: np.ndarray
    rate: np.ndarray
    terms: list[tuple[int, bool]]
    modulation: np.ndarray

    @property
    def room(self) -> bool:
        """Whether the band has pixels enough for a further pair of terms."""
        parameters = self.spline.shape[1] + self.modulation.shape[1] + 2
        return parameters * PIXELS_PER_PARAMETER <= len(self.x)

    def gradient_information(self, key: tuple[int, bool]) -> tuple[np.ndarray, np.ndarray]:
        """The Poisson score's gradient and information of the pair ``key`` at this fit."""
        base, _ = _predict(self.spline, self.modulation, self.theta, 0.0)
        return _score(_term(key, self.azimuth, self.across), self.x, self.rate, base)

    def with_pair(self, key: tuple[int, bool]) -> _BandFit:
        """The fit with the pair ``key`` added (Fisher scoring from this one)."""
        trial = np.hstack([self.modulation, _term(key, self.azimuth, self.across)])
        theta, rate = _scoring(self.x, self.spline, trial,
                               np.concatenate([self.theta, np.zeros(2)]),
                               _smoothing(self.x, self.spline.shape[1], trial.shape[1]),
                               NEXT_ITERATIONS)
        return dataclasses.replace(self, theta=theta, rate=rate, terms=[*self.terms, key],
                                   modulation=trial)

    @property
    def deviance(self) -> float:
        """The fit's Poisson deviance."""
        return _deviance(self.x, self.rate)


def _isotropic_fit(x: np.ndarray, radius: np.ndarray, azimuth: np.ndarray, first: int
                   ) -> _BandFit:
    """One band's isotropic part: the radial spline at the knot spacing the information
    criterion prefers, no angular term."""
    n = len(x)
    shell = np.floor(radius - first).astype(np.int64)
    pixels = np.bincount(shell, minlength=BAND_PX)
    shell_mean = np.bincount(shell, x, minlength=BAND_PX) / np.maximum(pixels, 1)
    start = np.log(np.maximum(shell_mean[shell], max(float(x.mean()), 1e-6) * 1e-2))
    fits = []
    for knot in RADIAL_KNOTS_PX:
        n_basis = _n_basis(knot)
        spline = _cubic_bspline(radius, first, knot)
        smooth = _smoothing(x, n_basis, 0)
        beta = np.linalg.lstsq(spline, start, rcond=None)[0]
        theta, rate = _scoring(x, spline, np.zeros((n, 0)), beta, smooth, FIRST_ITERATIONS)
        fits.append((_deviance(x, rate) + np.log(n) * n_basis, knot, spline, theta, rate))
    _, knot, spline, theta, rate = min(fits, key=lambda fit: fit[0])
    return _BandFit(x=x, azimuth=azimuth, across=_across(radius, first), knot=knot,
                    spline=spline, theta=theta, rate=rate, terms=[],
                    modulation=np.zeros((n, 0)))


@dataclass(frozen=True, eq=False)
class _BandStart:
    """A band's fit so far with only the per-pixel arrays its score tests need (its
    isotropic part and rate); :meth:`fit` makes the rest again. A frame's bands held at once
    with their spline bases would hold several times the frame (a 4 Mpx frame: gigabytes).
    """

    pixels: np.ndarray
    first: int
    knot: float
    theta: np.ndarray
    terms: tuple[tuple[int, bool], ...]
    base: np.ndarray
    rate: np.ndarray

    @classmethod
    def of(cls, fit: _BandFit, pixels: np.ndarray, first: int) -> _BandStart:
        """The part of ``fit`` kept, a band of the flat pixel indices ``pixels``."""
        base, _ = _predict(fit.spline, fit.modulation, fit.theta, 0.0)
        return cls(pixels=pixels, first=first, knot=fit.knot, theta=fit.theta,
                   terms=tuple(fit.terms), base=base, rate=fit.rate)

    @property
    def room(self) -> bool:
        """Whether the band has pixels enough for a further pair of terms."""
        parameters = _n_basis(self.knot) + 2 * len(self.terms) + 2
        return parameters * PIXELS_PER_PARAMETER <= len(self.pixels)

    def gradient_information(self, m: int, counts: np.ndarray, azimuth: np.ndarray
                             ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_BandFit.gradient_information` of order ``m``'s pair (frame arrays flat)."""
        x = counts[self.pixels]
        terms = _term((m, False), azimuth[self.pixels], np.zeros(len(x)))
        return _score(terms, x, self.rate, self.base)

    def fit(self, counts: np.ndarray, radius: np.ndarray, azimuth: np.ndarray) -> _BandFit:
        """The band's :class:`_BandFit` (``counts``, ``radius``, ``azimuth`` flat)."""
        x, r, a = counts[self.pixels], radius[self.pixels], azimuth[self.pixels]
        spline = _cubic_bspline(r, self.first, self.knot)
        across = _across(r, self.first)
        modulation = (np.hstack([_term(key, a, across) for key in self.terms])
                      if self.terms else np.zeros((len(x), 0)))
        return _BandFit(x=x, azimuth=a, across=across, knot=self.knot, spline=spline,
                        theta=self.theta, rate=self.rate, terms=list(self.terms),
                        modulation=modulation)


def _band_model(x: np.ndarray, radius: np.ndarray, azimuth: np.ndarray, first: int, *,
                start: _BandFit | None = None) -> tuple[np.ndarray, BandStructure]:
    """One band's fit: the radial spline, then the angular terms two by two (order ``m``'s
    cosine and sine, then their change across the band) while the Bayesian information
    criterion on the Poisson deviance supports them. ``start``: the band's fit so far
    (isotropic, or with the orders the whole frame shows, :func:`scan_orders`, already in,
    whether or not the band alone would support them); None: its isotropic fit."""
    fit = start if start is not None else _isotropic_fit(x, radius, azimuth, first)
    n = len(x)
    best_score = fit.deviance + np.log(n) * fit.modulation.shape[1]
    # Candidate pairs of terms: order m's cosine and sine, and (once those are in) their
    # change across the band. Forward selection: the candidate the score test ranks first
    # is fitted and kept while the information criterion improves.
    candidates = [(m, changes) for m in range(1, MAX_ORDER + 1) for changes in (False, True)]
    while fit.room:
        open_ = [key for key in candidates if key not in fit.terms
                 and (not key[1] or (key[0], False) in fit.terms)]
        if not open_:
            break
        ranks = []
        for key in open_:
            gradient, information = fit.gradient_information(key)
            ranks.append(float(gradient @ ridge_solve(information, gradient)))
        trial = fit.with_pair(open_[int(np.argmax(ranks))])
        score = trial.deviance + np.log(n) * trial.modulation.shape[1]
        if not score < best_score:  # no better (or not finite): stop
            break
        fit, best_score = trial, score
    structure = BandStructure(first=first, knot=fit.knot, terms=tuple(fit.terms),
                              theta=fit.theta, total=float(x.sum()))
    return fit.rate, structure


def order_p_value(gradient: np.ndarray, information: np.ndarray, own: float, bands: int
                  ) -> float:
    """The p-value of one harmonic order over a frame's ``bands``: the smaller of the
    coherent test (its cosine's and sine's scores summed over the bands, ``gradient`` and
    ``information``: one phase at all radii, χ² with 2 degrees of freedom) and of the bands'
    own tests summed (``own``: a phase that changes with radius, χ² with 2 per band)."""
    coherent = float(gradient @ ridge_solve(information, gradient))
    return min(float(chi2.sf(coherent, 2)), float(chi2.sf(own, 2 * bands)))


#: A harmonic order the whole frame shows at this p-value (its cosine and sine pooled over
#: the bands, given the orders already in) comes into every band (:func:`scan_orders`).
SCAN_ORDER_P = 1e-4


def scan_orders(starts: Sequence[_BandStart], counts: np.ndarray, radius: np.ndarray,
                azimuth: np.ndarray) -> tuple[tuple[int, ...], list[_BandStart]]:
    """The harmonic orders an oriented pattern shows over the whole frame, and the bands'
    fits with them in.

    A band of a few hundred counts cannot show a modulation of 10-25 % (an aligned SAXS
    sample's ``1 + a cos 2(χ - χ0)`` at 0.1 counts/pixel): its information criterion keeps
    no angular term, the model is the ring mean, and mixed in it flattens the pattern's
    anisotropy (``bench.bias --scene saxs``). Pooled over the bands the same modulation is
    plain. Forward selection over the frame: per order ``m`` not yet in, the score of its
    cosine and sine at each band's current fit is summed over the bands (gradients and
    information: one phase at all radii, as an orientation gives) and tested as χ² with 2
    degrees of freedom, and so is the sum of the bands' own scores (χ² with 2 per band: a
    phase that changes with radius); the order with the smallest p-value, if below
    :data:`SCAN_ORDER_P`, comes into every band with room for it (and a fit that does not
    lower the band's deviance, a term its pixels cannot determine, is not kept there), and
    the rest are tested again given it (the edges of a detector make orders correlated on
    an incomplete ring: a 2-fold modulation alone would otherwise score at orders 4 and 6).

    Parameters
    ----------
    starts
        Per band, its fit so far (from :func:`_isotropic_fit`).
    counts, radius, azimuth
        The frame's, flat.
    """
    starts = list(starts)
    orders: list[int] = []
    while len(orders) < MAX_ORDER:
        best, best_p = 0, SCAN_ORDER_P
        candidates = [m for m in range(1, MAX_ORDER + 1) if m not in orders]
        gradient = {m: np.zeros(2) for m in candidates}
        information = {m: np.zeros((2, 2)) for m in candidates}
        own = dict.fromkeys(candidates, 0.0)
        for start in starts:
            for m in candidates:
                g, i = start.gradient_information(m, counts, azimuth)
                gradient[m] += g
                information[m] += i
                own[m] += float(g @ ridge_solve(i, g))
        for m in candidates:
            p = order_p_value(gradient[m], information[m], own[m], len(starts))
            if p < best_p:
                best, best_p = m, p
        if not best:
            break
        orders.append(best)
        for index, start in enumerate(starts):
            if not start.room:
                continue
            fit = start.fit(counts, radius, azimuth)  # one band's arrays at a time
            trial = fit.with_pair((best, False))
            if trial.deviance < fit.deviance:
                starts[index] = _BandStart.of(trial, start.pixels, start.first)
    return tuple(orders), starts


def _refit_band(x: np.ndarray, radius: np.ndarray, azimuth: np.ndarray,
                structure: BandStructure) -> np.ndarray:
    """The band's model of another frame: the same spline and terms as ``structure``, only
    the coefficients refitted (from its own, the level rescaled to this frame's counts)."""
    spline = _cubic_bspline(radius, structure.first, structure.knot)
    n_basis = spline.shape[1]
    across = _across(radius, structure.first)
    modulation = (np.hstack([_term(key, azimuth, across) for key in structure.terms])
                  if structure.terms else np.zeros((len(x), 0)))
    theta = np.array(structure.theta, np.float64)
    # B-splines sum to one: a shift of every spline coefficient rescales the band.
    theta[:n_basis] += np.log(max(float(x.sum()), 1e-6) / max(structure.total, 1e-6))
    floor = 1e-6 * max(float(x.mean()), 1e-6)
    start = _deviance(x, _predict(spline, modulation, theta, floor)[1])
    _, rate = _scoring(x, spline, modulation, theta,
                       _smoothing(x, n_basis, modulation.shape[1]), REFIT_ITERATIONS)
    # Fisher scoring has no step control: a refit that went astray (a term the pixels
    # barely constrain, a rate pushed to its floor) ends worse than it started; then the
    # band is fitted afresh.
    if not _deviance(x, rate) <= start:
        rate, _ = _band_model(x, radius, azimuth, structure.first)
    return rate


def _order(structure: BandStructure | None) -> int:
    """The highest harmonic order a band's structure kept (0: isotropic or no fit)."""
    return max((m for m, _ in structure.terms), default=0) if structure else 0


def angular_model(counts: np.ndarray, good: np.ndarray, radius: np.ndarray,
                  azimuth: np.ndarray, *,
                  structure: Sequence[BandStructure | None] | None = None,
                  bands: Sequence[int] | None = None
                  ) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit the shell-by-shell angular series to ``counts``.

    Parameters
    ----------
    counts
        ``(H, W)`` counts (one frame, or frames summed: the estimate is in the same units).
    good
        Pixels that hold data.
    radius, azimuth
        :func:`polar_maps` about the beam centre.
    structure
        Per band, the structure another frame of the scan chose (``summary["structure"]``
        of an earlier call): only the coefficients are refitted, several times faster than
        choosing the knots and terms again. None: chosen here.
    bands
        Only these bands (index from :func:`band_origin`) are fitted; None: all.

    Returns
    -------
    (numpy.ndarray, dict)
        The fitted expectation (``NaN`` where a band had too few pixels or no counts, or
        was not asked for), and a summary: the order chosen per band, and the structure
        per band (None where not fitted).
    """
    counts = np.asarray(counts, np.float64)
    shell = np.floor(radius).astype(np.int64)
    n_shells = int(shell[good].max()) + 1 if good.any() else 0
    model = np.full(counts.shape, np.nan)
    chosen: list[BandStructure | None] = []
    n_basis = _n_basis(max(RADIAL_KNOTS_PX))
    origin = band_origin(radius, good)
    # Per band: its pixels (flat indices) and the structure given, or its isotropic fit.
    flat = [np.ravel(a) for a in (counts, radius, azimuth)]
    bands_in: list[tuple[np.ndarray, BandStructure | None] | None] = []
    starts: list[_BandStart] = []
    for index, first in enumerate(range(origin, n_shells, BAND_PX)):
        given = (structure[index] if structure is not None and index < len(structure)
                 else None)
        on = good & (shell >= first) & (shell < first + BAND_PX)
        x = counts[on]
        if ((bands is not None and index not in bands)
                or (structure is not None and given is None)
                or len(x) < PIXELS_PER_PARAMETER * n_basis or x.sum() <= 0):
            bands_in.append(None)
            continue
        pixels = np.flatnonzero(on)
        bands_in.append((pixels, given))
        if given is None:
            starts.append(_BandStart.of(_isotropic_fit(x, radius[on], azimuth[on], first),
                                        pixels, first))
    required, starts = scan_orders(starts, *flat) if starts else ((), [])
    started = iter(starts)
    for entry in bands_in:
        if entry is None:
            chosen.append(None)
            continue
        pixels, given = entry
        x, r, a = (v[pixels] for v in flat)
        if given is None:
            start = next(started)
            rate, given = _band_model(x, r, a, start.first, start=start.fit(*flat))
        else:
            rate = _refit_band(x, r, a, given)
        model.flat[pixels] = rate
        chosen.append(given)
    return model, {"band_px": BAND_PX, "origin_px": origin,
                   "orders": [_order(c) for c in chosen], "structure": chosen,
                   "scan_orders": list(required)}


#: A frame whose counts are within this factor of a structure's frame reuses it.
SAME_DOSE_FACTOR = 1.4
#: Frames served with one structure before its knots and terms are chosen afresh (a
#: pattern that changes during the scan: a texture appearing, a ring fading).
REFRESH_FRAMES = 16


class ScanAngularModel:
    """The angular model of a scan's frames, with each band's knots and terms chosen once.

    Choosing a band's structure (the knot spacing, the terms by forward selection) costs
    several times its refit. Frames of one scan at one dose support the same structure, so
    the first frame at a dose chooses it (:func:`angular_model`), and the next ones only
    refit the coefficients from it; every :data:`REFRESH_FRAMES` frames it is chosen afresh.
    A frame at another dose (a held-out half) gets its own: the information criterion keeps
    fewer terms at fewer counts.

    Parameters
    ----------
    bands
        Only these bands (index from :func:`band_origin`) are fitted: those the engine
        mixes in.
    """

    def __init__(self, bands: Sequence[int] | None = None) -> None:
        self.bands = None if bands is None else tuple(bands)
        #: Per dose: the counts of the frame that chose, the structure, frames served since.
        self._chosen: list[list[Any]] = []

    def fit(self, counts: np.ndarray, good: np.ndarray, radius: np.ndarray,
            azimuth: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """:func:`angular_model` of ``counts``, from the structure chosen at its dose."""
        total = float(np.sum(np.asarray(counts, np.float64)[good]))

        def same_dose(level: float) -> bool:
            return (level > 0 and total > 0
                    and abs(np.log(total / level)) < np.log(SAME_DOSE_FACTOR))

        for entry in self._chosen:
            level, structure, served = entry
            if same_dose(level) and served < REFRESH_FRAMES:
                entry[2] += 1
                return angular_model(counts, good, radius, azimuth, structure=structure,
                                     bands=self.bands)
        model, summary = angular_model(counts, good, radius, azimuth, bands=self.bands)
        self._chosen = [e for e in self._chosen if not same_dose(e[0])]
        self._chosen.append([total, summary["structure"], 1])
        return model, summary


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
        One weight in [0, 1] per band of :data:`BAND_PX` shells from ``origin``.
    orders
        The harmonic order the held-out fit chose per band (for the record).
    origin
        The first band's first shell (:func:`band_origin`).
    """

    weights: tuple[float, ...]
    orders: tuple[int, ...]
    origin: int = 0

    @property
    def unused(self) -> bool:
        """Whether the model gets no weight anywhere."""
        return not any(w > 0 for w in self.weights)

    def band_weight(self, radius: np.ndarray) -> np.ndarray:
        """Each pixel's weight from its band."""
        band = np.clip(band_index(radius, self.origin), 0, len(self.weights) - 1)
        return np.asarray(self.weights, np.float64)[band]

    def summary(self) -> dict[str, Any]:
        """JSON-safe description for provenance."""
        return {"band_px": BAND_PX, "origin_px": self.origin,
                "model_weights": [round(w, 3) for w in self.weights],
                "orders": list(self.orders)}


def held_out_band_weights(model: np.ndarray, other: np.ndarray, rest: np.ndarray,
                          good: np.ndarray, radius: np.ndarray, orders: list[int], *,
                          min_pixels: int = 50) -> AngularBlend:
    """Per band, the mix of the model and another estimate closest to a held-out half.

    ``model`` and ``other`` estimate one half of a binomial split, ``rest`` is the other
    half (independent of both), so the least-squares weight against it is the data's choice
    (as :func:`~.selection.held_out_blend`, with bands of radius instead of intensity).
    Pixels where the model is ``NaN`` do not count. The bands are :func:`angular_model`'s
    (from :func:`band_origin`)."""
    origin = band_origin(radius, good)
    band = band_index(radius, origin)
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
                        orders=tuple(orders[:n_bands]) + (0,) * max(0, n_bands - len(orders)),
                        origin=origin)


#: Width (px) of the shells whose totals :func:`mix_within_shells` keeps (their halves or
#: quarters where a ring's crest is, ``shell_parts``).
KEPT_ANNULUS_PX = 1.0
#: Fewest pixels a kept shell holds: sparser ones (a sliver of a shell outside the beamstop,
#: the detector's corners) share their total with the next shells out.
KEPT_MIN_PIXELS = 20


def _kept_groups(shell: np.ndarray, use: np.ndarray) -> np.ndarray:
    """Per shell index, the group whose total is kept: consecutive shells joined until a
    group has :data:`KEPT_MIN_PIXELS` used pixels (a short last group joins the one before)."""
    n = int(shell.max()) + 1 if shell.size else 0
    pixels = np.bincount(shell[use], minlength=n)
    group = np.zeros(n, np.int64)
    current, held = 0, 0
    for k in range(n):
        group[k] = current
        held += pixels[k]
        if held >= KEPT_MIN_PIXELS:
            current, held = current + 1, 0
    if 0 < held < KEPT_MIN_PIXELS and current > 0:
        group[group == current] = current - 1
    return group


#: The most parts a shell is split into (:func:`kept_shells`).
MAX_SHELL_PARTS = 4


def kept_shells(radius: np.ndarray, shell_parts: np.ndarray | None) -> np.ndarray:
    """Ordered shell index per pixel for :func:`mix_within_shells`: the pixel's
    :data:`KEPT_ANNULUS_PX` shell times :data:`MAX_SHELL_PARTS`, plus the part of that shell
    it lies in where ``shell_parts`` (int per shell: 1, 2 or 4) splits the shell into equal
    parts of its width."""
    whole = np.floor(radius / KEPT_ANNULUS_PX).astype(np.int64)
    if shell_parts is None or not np.any(np.asarray(shell_parts) > 1):
        return whole * MAX_SHELL_PARTS
    table = np.asarray(shell_parts, np.int64)
    parts = np.where(whole < table.size, table[np.clip(whole, 0, table.size - 1)], 1)
    part = np.minimum(np.floor((radius / KEPT_ANNULUS_PX - whole) * parts), parts - 1)
    return whole * MAX_SHELL_PARTS + part.astype(np.int64) * (MAX_SHELL_PARTS // parts)


def mix_within_shells(estimate: np.ndarray, model: np.ndarray, weight: np.ndarray,
                      good: np.ndarray, radius: np.ndarray, *,
                      shell_parts: np.ndarray | None = None) -> np.ndarray:
    """``w·model + (1 - w)·estimate``, rescaled shell by shell (:data:`KEPT_ANNULUS_PX`) to
    the estimate's own totals: the model moves intensity around a ring and across a shell's
    width, never between shells, so the estimate's radial profile at 1 px (held to the raw
    counts) and with it the full-ring I(q) in bins of a pixel or more stay as they were.
    Within a shell the model's radial course replaces the estimate's: next to a beamstop,
    where the intensity falls several times per pixel, the network's is the larger error
    (``bench/heldout.py``, SAXS). A shell with fewer than :data:`KEPT_MIN_PIXELS` pixels
    (a sliver outside the beamstop: kept alone, its total would be its one or two pixels'
    own values, and the model could change nothing there) shares its total with the next
    shells out.

    ``shell_parts`` (int per shell, index ``floor(radius / KEPT_ANNULUS_PX)``: 1, 2 or 4)
    splits shells into parts of their width that keep their own totals: across a ring's
    crest (:func:`~.consistency.ring_crest_bins`) the halves, where the model's spline
    (knots 1-2 px) would spread each shell's total across its width and widen a ring about
    a pixel wide (``bench.bias``, powder at 0.1 counts/pixel: fitted FWHM +1.1 % against
    raw with whole shells, +0.6 % with the shells across its crests split), and the
    quarters across the crest of a ring narrower than the spline's knots
    (:func:`~.consistency.narrow_crest_bins`: sharp rings at 0.1 counts/pixel, +0.7 % with
    halves, +0.2 % with quarters); not next to a beamstop, where the model's course is the
    better one (every shell split in halves, the SAXS frame lost 0.95 dB at 1 count/pixel,
    ``bench.heldout``).
    """
    estimate = np.asarray(estimate, np.float64)
    use = good & np.isfinite(model) & (weight > 0)
    mixed = np.where(use, weight * np.nan_to_num(model) + (1.0 - weight) * estimate, estimate)
    shell = kept_shells(radius, shell_parts)
    labels = np.where(use, _kept_groups(shell, use)[shell] + 1, 0)
    n = int(labels.max()) + 1
    before = np.bincount(labels.ravel(), weights=estimate.ravel(), minlength=n)
    after = np.bincount(labels.ravel(), weights=mixed.ravel(), minlength=n)
    scale = np.divide(before, after, out=np.ones(n), where=after > 0)
    scale[0] = 1.0
    return mixed * scale[labels]
