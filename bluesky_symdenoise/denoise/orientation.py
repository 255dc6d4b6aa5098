"""Keep an oriented pattern's anisotropy: the denoised frame's angular harmonics held to the
raw counts', pooled over radius.

An aligned SAXS sample or a fibre gives ``I(q, χ) = I0(q) · (1 + a cos 2(χ - χ0))``; its
orientation (the order parameter, the ratio of sectors) is what such a user measures. A
denoiser whose neighbourhood of a few pixels spans a wide angle at the small radii where a
SAXS pattern's counts are flattens it: at 0.1 counts/pixel the network kept about three
quarters of it, and the ring holds of :mod:`.consistency` (whole rings, arcs of textured
rings, spots) do not see a modulation spread over the whole ring (``bench.bias --scene
saxs``, its ``anisotropy_kept``). The raw counts estimate it without bias, but one band of
radius holds too few counts at low doses: held band by band, the frame would get back as
much modulation noise as the bias removed. So the hold pools over radius:

1. **Orders**, once per scan on its summed counts (:meth:`OrientationHold.for_scan`): per
   band of :data:`~.angular.BAND_PX` px, the score of each harmonic order's cosine and sine
   at the 1 px shells' means; forward selection over the frame as the angular model's
   (:func:`~.angular.scan_orders`): an order comes in if its scores summed over the bands
   (one phase at all radii) or the bands' own scores (a phase that changes with radius)
   reach :data:`ORDER_P`, given the orders already in. An isotropic pattern gets none, and
   its frames are left exactly as they were. Spots held to the raw counts
   (:meth:`~.consistency.RawConsistency.spots`) take no part and are never changed.
2. **Differences**, per frame: per band, the relative harmonics of the raw frame less the
   denoised frame's, by least squares given each 1 px shell's mean (weighted by the
   denoised shell means, the Poisson variance): linear in the raw counts, so unbiased.
   The scan's other frames' raw harmonics are pooled in, nearest first on each side, while
   each agrees with those pooled so far (a χ² test at :data:`POOL_P`; a side stops at its
   first frame that differs: an orientation that changes, a sample aligning under shear,
   is the frame's own), up to :data:`POOL_FRAMES` of them. A static orientation is thus
   held to the counts of many frames: with only the frame and its neighbours, the hold
   put back their harmonics' noise, costing PSNR where the denoiser had not flattened.
3. **A course in radius**: the differences fitted over the bands by generalized least
   squares as a constant, a line or a parabola in radius, as a gain on the denoised
   frame's own harmonics (constant or linear in radius: a denoiser that flattens by a
   factor leaves differences in proportion to the pattern's anisotropy, which may change
   with radius), or band by band; Akaike's criterion (the smallest expected error)
   chooses. Only bands whose pixels tell the terms apart take part (:data:`MIN_SPREAD`:
   a detector's corner seen on a short arc has ill-determined harmonics), in the order
   test too.
4. **Shrunk by its evidence**: each order's fitted parameters are scaled by the
   positive-part empirical-Bayes factor ``max(0, 1 - k / W)`` (``k`` parameters, ``W``
   their Wald χ² against zero, :func:`_shrinkage`). A difference far beyond its noise (a
   denoiser that flattened the pattern) is held almost whole; one within its noise (a
   denoiser that had not flattened: the differences are the raw counts' noise, and the
   orders were chosen on those same counts) is mostly left out. Held whole, such noise
   cost the bench's SAXS scan at 1 count/pixel 4.3 dB (``bench.heldout --seed 470395
   --scenes saxs --counts 1 --steps 200``).
5. **The hold**: the denoised frame times ``1 + Σ Δ(r) · (term - its shell mean)``, each
   shell (or part of one, as the angular model's mix keeps them) keeping its total, in
   :data:`PASSES` passes (the product of the frame's own modulation and the correction's
   leaves a small remainder after one).

The full-ring I(q) is unchanged (shell totals); the sector I(q) and the anisotropy carry
the raw counts' expectation where the difference is clear, with the noise of a fit pooled
over radius, and stay nearer the denoised frame's where it is not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import chi2

from .angular import (
    BAND_PX,
    MAX_ORDER,
    band_origin,
    kept_shells,
    order_p_value,
    polar_maps,
)
from .angular import ridge_solve as _solve

__all__ = ["ORDER_P", "OrientationHold", "PASSES", "POOL_FRAMES", "POOL_P", "RawHarmonics"]

#: Level of the test that brings a harmonic order into the hold (per order and step, as
#: :data:`~.angular.SCAN_ORDER_P`).
ORDER_P = 1e-4
#: Another frame's raw harmonics are pooled in unless they differ from those pooled so far
#: at this level.
POOL_P = 1e-3
#: Most other frames whose raw harmonics a frame's hold pools.
POOL_FRAMES = 16
#: Passes of the hold.
PASSES = 2
#: Polynomial degrees in radius tried for the differences' course (besides band by band).
COURSE_DEGREES = (0, 1, 2)
#: Fewest used pixels per fitted term a band needs to take part.
PIXELS_PER_TERM = 10
#: A band takes part only if each term's spread over its pixels (the smallest eigenvalue of
#: their centred Gram matrix per pixel; a whole ring: 1/2) is at least this.
MIN_SPREAD = 0.1
#: The terms of the orders held are kept per pixel (float32) up to this size (a 4 Mpx
#: frame with one order: 32 MB); above it, made again in each pass.
TERMS_CACHED_BYTES = 64 << 20
#: The hold's factor is kept at least this (a pixel is never zeroed or made negative).
MIN_FACTOR = 0.1


def _columns(orders: Sequence[int]) -> list[tuple[int, int]]:
    """The terms of ``orders``: ``(m, 0)`` cosine, ``(m, 1)`` sine."""
    return [(m, part) for m in orders for part in (0, 1)]


def _term(column: tuple[int, int], azimuth: np.ndarray) -> np.ndarray:
    """The term ``column`` at each azimuth."""
    m, part = column
    return np.sin(m * azimuth) if part else np.cos(m * azimuth)


def _shell_grams(azimuth: np.ndarray, shell: np.ndarray, n_shells: int,
                 orders: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per 1 px shell, the mean of each term and the centred Gram matrix
    ``Σ (a - ā)(a - ā)ᵀ`` of the terms of ``orders`` over the shell's pixels. Products of
    harmonics are harmonics of the sum and difference orders, so the shells' sums of
    ``cos kχ`` and ``sin kχ`` (k up to twice the highest order) give every entry: a
    handful of passes over the pixels, never a pixels-by-terms array."""
    top = 2 * max(orders)
    n = np.bincount(shell, minlength=n_shells).astype(np.float64)
    cos = np.stack([np.bincount(shell, np.cos(k * azimuth), minlength=n_shells)
                    for k in range(top + 1)], axis=1)
    sin = np.stack([np.bincount(shell, np.sin(k * azimuth), minlength=n_shells)
                    for k in range(top + 1)], axis=1)

    def product(a: tuple[int, int], b: tuple[int, int]) -> np.ndarray:
        (m, p), (k, q) = a, b
        plus, minus = m + k, abs(m - k)
        sign = 1.0 if m >= k else -1.0  # sin((m - k)χ) = sign · sin(|m - k| χ)
        if not p and not q:
            return 0.5 * (cos[:, minus] + cos[:, plus])
        if p and q:
            return 0.5 * (cos[:, minus] - cos[:, plus])
        if p:  # sin mχ cos kχ
            return 0.5 * (sin[:, plus] + sign * sin[:, minus])
        return 0.5 * (sin[:, plus] - sign * sin[:, minus])  # cos mχ sin kχ

    columns = _columns(orders)
    sums = np.stack([cos[:, m] if not part else sin[:, m] for m, part in columns], axis=1)
    means = sums / np.maximum(n, 1.0)[:, None]
    gram = np.stack([np.stack([product(a, b) for b in columns], axis=1) for a in columns],
                    axis=1)
    gram -= n[:, None, None] * means[:, :, None] * means[:, None, :]
    return means, gram


@dataclass(frozen=True, eq=False)
class RawHarmonics:
    """One raw frame's harmonics on a hold's bands: what :meth:`OrientationHold.apply`
    pools from the scan's other frames (made once per frame by
    :meth:`OrientationHold.harmonics`).

    Attributes
    ----------
    scores
        Per band and term, ``Σ (term - its shell mean) · counts``: ``(bands, terms)``.
    total
        The frame's counts on the hold's pixels (its dose).
    """

    scores: np.ndarray
    total: float


@dataclass(frozen=True, eq=False)
class OrientationHold:
    """The harmonic orders a scan's raw counts show, and how its frames are held to them.

    Build it once per scan with :meth:`for_scan`, then :meth:`apply` it to every frame.

    Attributes
    ----------
    orders
        The harmonic orders held (in the order they came in).
    p_values
        Each order's p-value when it came in.
    pixels
        Flat indices of the pixels the hold measures and scales (good, not a held spot).
    azimuth, shell
        Per pixel of ``pixels``: its azimuth (rad) and 1 px shell (``floor(radius)``).
    band_of_shell, band_radius
        Per shell, its band of :data:`~.angular.BAND_PX` shells (from
        :func:`~.angular.band_origin`); per band, its middle radius.
    kept
        Per pixel of ``pixels``: the shell, or part of one, whose total is kept.
    means, gram
        Per shell, the mean of each term of ``orders`` and their centred Gram matrix.
    terms
        Each term of ``orders`` at each pixel of ``pixels`` (float32), made once where
        they take at most :data:`TERMS_CACHED_BYTES`; None: made as needed.
    """

    orders: tuple[int, ...]
    p_values: tuple[float, ...]
    pixels: np.ndarray
    azimuth: np.ndarray
    shell: np.ndarray
    band_of_shell: np.ndarray
    band_radius: np.ndarray
    kept: np.ndarray
    means: np.ndarray
    gram: np.ndarray
    terms: np.ndarray | None = None

    @classmethod
    def for_scan(cls, scan_sum: np.ndarray, good: np.ndarray, center: tuple[float, float],
                 *, spots: np.ndarray | None = None,
                 shell_parts: np.ndarray | None = None,
                 polar: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> OrientationHold | None:
        """The hold of a scan, or None where its summed counts show no order.

        Parameters
        ----------
        scan_sum
            Sum of the scan's frames (bad pixels 0).
        good
            Pixels that hold data.
        center
            Beam centre ``(row, col)``.
        spots
            Pixels held to the raw counts otherwise (left out and left alone).
        shell_parts
            Per 1 px shell, into how many parts of its width the totals are kept
            (:func:`~.angular.kept_shells`); None: whole shells.
        polar
            :func:`~.angular.polar_maps` about ``center``, where already made.
        """
        radius, azimuth = polar if polar is not None else polar_maps(good.shape, center)
        use = good if spots is None else good & ~spots
        pixels = np.flatnonzero(use)
        if pixels.size == 0:
            return None
        r = radius.ravel()[pixels]
        chi = azimuth.ravel()[pixels].astype(np.float32)
        shell = np.floor(r).astype(np.int32)
        n_shells = int(shell.max()) + 1
        origin = band_origin(radius, good)
        band_of_shell = np.maximum(np.arange(n_shells) - origin, 0) // BAND_PX
        n_bands = int(band_of_shell.max()) + 1
        band_radius = origin + BAND_PX * (np.arange(n_bands) + 0.5)
        kept = kept_shells(r, shell_parts).astype(np.int32)
        x = np.asarray(scan_sum, np.float64).ravel()[pixels]
        index = pixels.astype(np.int32 if pixels.max() < 2 ** 31 else np.int64)
        hold = cls(orders=(), p_values=(), pixels=index, azimuth=chi,
                   shell=shell, band_of_shell=band_of_shell, band_radius=band_radius,
                   kept=kept, means=np.zeros((n_shells, 0)), gram=np.zeros((n_shells, 0, 0)))
        orders, p_values = hold._select_orders(x)
        if not orders:
            return None
        means, gram = _shell_grams(chi, shell, n_shells, orders)
        columns = _columns(orders)
        terms = (np.stack([_term(c, chi) for c in columns])
                 if 4 * len(columns) * chi.size <= TERMS_CACHED_BYTES else None)
        return cls(orders=orders, p_values=p_values, pixels=hold.pixels, azimuth=chi,
                   shell=shell, band_of_shell=band_of_shell, band_radius=band_radius,
                   kept=kept, means=means, gram=gram, terms=terms)

    # -- the scan's orders ----------------------------------------------------------------
    def _select_orders(self, x: np.ndarray) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """Forward selection of the orders the summed counts ``x`` show (module doc, 1)."""
        every = tuple(range(1, MAX_ORDER + 1))
        means, gram = _shell_grams(self.azimuth, self.shell, len(self.band_of_shell), every)
        level = self._shell_means(x)
        score = self._band_scores([x], means, every)[0]
        information = self._band_information(level, gram)
        pixels, counts, geometry = self._band_geometry(level, gram)
        orders: list[int] = []
        p_values: list[float] = []
        while len(orders) < MAX_ORDER:
            inside = [i for m in orders for i in (2 * m - 2, 2 * m - 1)]
            best, best_p = 0, ORDER_P
            for m in every:
                if m in orders:
                    continue
                new = [2 * m - 2, 2 * m - 1]
                # The bands whose pixels tell these terms apart (small radii, where a
                # shell holds a few dozen pixels, and arcs cannot for the high orders).
                terms = inside + new
                bands = _usable(pixels, counts, geometry[:, terms][:, :, terms])
                if bands.size == 0:
                    continue
                g, i = _given(score[bands], information[bands], new, inside)
                own = sum(float(gb @ _solve(ib, gb)) for gb, ib in zip(g, i, strict=True))
                p = order_p_value(g.sum(0), i.sum(0), own, len(g))
                if p < best_p:
                    best, best_p = m, p
            if not best:
                break
            orders.append(best)
            p_values.append(best_p)
        return tuple(orders), tuple(p_values)

    def _band_geometry(self, level: np.ndarray, gram: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per band: its pixels, its counts (``level``: the shells' means) and the centred
        Gram matrix of the terms of ``gram`` per pixel."""
        n_bands = len(self.band_radius)
        pixels = np.bincount(self.band_of_shell[self.shell], minlength=n_bands)
        counts = np.bincount(self.band_of_shell, level * np.bincount(
            self.shell, minlength=len(level)), minlength=n_bands)
        geometry = np.zeros((n_bands, *gram.shape[1:]))
        np.add.at(geometry, self.band_of_shell, gram)
        return pixels, counts, geometry / np.maximum(pixels, 1)[:, None, None]

    def _bands_with_data(self, level: np.ndarray, gram: np.ndarray) -> np.ndarray:
        """Bands with pixels enough for the terms of ``gram``, counts, and an arc that
        tells the terms apart (a detector's corner, seen on a short arc, does not: its
        relative harmonics are ill-determined, and a course fitted through them would put
        large factors on its pixels)."""
        return _usable(*self._band_geometry(level, gram))

    def _term(self, j: int, column: tuple[int, int], orders: Sequence[int]) -> np.ndarray:
        """Term ``j`` (``column``) of ``orders`` at the pixels: the cached one if made."""
        if self.terms is not None and tuple(orders) == self.orders:
            return self.terms[j]
        return _term(column, self.azimuth)

    def _shell_means(self, values: np.ndarray) -> np.ndarray:
        n = np.bincount(self.shell, minlength=len(self.band_of_shell))
        return np.bincount(self.shell, values, minlength=len(n)) / np.maximum(n, 1)

    def _band_scores(self, values: Sequence[np.ndarray], means: np.ndarray,
                     orders: Sequence[int]) -> np.ndarray:
        """Per array of ``values`` and band, ``Σ (a - ā) · values`` of each term:
        ``(arrays, bands, terms)`` (each term made once for all the arrays)."""
        n_shells, n_bands = len(self.band_of_shell), len(self.band_radius)
        totals = [np.bincount(self.shell, v, minlength=n_shells) for v in values]
        out = np.empty((len(values), n_bands, 2 * len(orders)))
        for j, column in enumerate(_columns(orders)):
            term = self._term(j, column, orders)
            for k, (v, total) in enumerate(zip(values, totals, strict=True)):
                by_shell = (np.bincount(self.shell, term * v, minlength=n_shells)
                            - means[:, j] * total)
                out[k, :, j] = np.bincount(self.band_of_shell, by_shell, minlength=n_bands)
        return out

    def _band_information(self, level: np.ndarray, gram: np.ndarray) -> np.ndarray:
        """Per band, ``Σ_shells level · gram``: the terms' Poisson information."""
        weighted = level[:, None, None] * gram
        out = np.zeros((len(self.band_radius), *gram.shape[1:]))
        np.add.at(out, self.band_of_shell, weighted)
        return out

    # -- a frame ----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """JSON-safe description for provenance."""
        return {"orders": list(self.orders),
                "p_values": [float(f"{p:.3g}") for p in self.p_values],
                "band_px": BAND_PX, "pixels": int(self.pixels.size)}

    def harmonics(self, frame: np.ndarray) -> RawHarmonics | None:
        """``frame``'s raw harmonics on the hold's bands, to pool into other frames' holds;
        None where it has no counts or non-finite values on the pixels held."""
        values = np.asarray(frame).ravel()[self.pixels].astype(np.float64)
        total = float(values.sum())
        if not (total > 0 and np.all(np.isfinite(values))):
            return None
        return RawHarmonics(self._band_scores([values], self.means, self.orders)[0], total)

    def apply(self, raw: np.ndarray, denoised: np.ndarray,
              earlier: Sequence[RawHarmonics | None] = (),
              later: Sequence[RawHarmonics | None] = (), *,
              own: RawHarmonics | None = None) -> np.ndarray:
        """``denoised`` with its relative harmonics of :attr:`orders` held to ``raw``'s
        (pooled with the other frames' raw harmonics where they agree), over a smooth course
        in radius, each kept shell's total unchanged; float32.

        Parameters
        ----------
        raw
            The frame's raw counts.
        denoised
            Its denoised counts.
        earlier, later
            The :meth:`harmonics` of the scan's frames before and after it, nearest first
            (None: a frame without counts, passed over); pooled in while they agree
            (module doc, 2).
        own
            ``raw``'s :meth:`harmonics`, where already made; None: made here.

        Raises
        ------
        FloatingPointError
            Non-finite values on the pixels held (``raw`` or ``denoised``), or from the fit:
            nothing is changed then (the engine serves the frame without the hold and
            records why).
        """
        out = np.array(denoised, np.float32, copy=True)
        d = out.ravel()[self.pixels].astype(np.float64)
        if own is None:  # (a frame given with its harmonics had finite counts)
            x = np.asarray(raw).ravel()[self.pixels].astype(np.float64)
            if not np.all(np.isfinite(x)):
                raise FloatingPointError(
                    "anisotropy hold: non-finite values on the pixels held")
            # The raw counts' scores do not change from pass to pass: made once (a 4 Mpx
            # frame's pixels are 32 MB each in float64), and so is the pool.
            own = RawHarmonics(self._band_scores([x], self.means, self.orders)[0],
                               float(x.sum()))
            del x
        if not np.all(np.isfinite(d)):
            raise FloatingPointError("anisotropy hold: non-finite values on the pixels held")
        if d.sum() <= 0:
            return out
        state = self._band_state(d)  # made once: the pool's test and the first pass
        pooled, n_pooled = self._pooled(own, state, earlier, later)
        for step in range(PASSES):
            d = self._held(d, pooled, n_pooled, state if step == 0 else None)
        if not np.all(np.isfinite(d)):  # the engine serves the frame without the hold
            raise FloatingPointError("anisotropy hold: the fit gave non-finite values")
        out.ravel()[self.pixels] = d
        return out

    def _band_state(self, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The bands of the denoised frame ``d`` that take part, and their terms' Poisson
        information (from its shell means)."""
        level = self._shell_means(d)
        bands = self._bands_with_data(level, self.gram)
        return bands, self._band_information(level, self.gram)[bands]

    def _pooled(self, own: RawHarmonics, state: tuple[np.ndarray, np.ndarray],
                earlier: Sequence[RawHarmonics | None], later: Sequence[RawHarmonics | None]
                ) -> tuple[np.ndarray, int]:
        """The mean of the raw harmonics pooled for a frame (its own, then the other
        frames', each at the frame's dose, nearest first, the two sides in turn, a side
        closed at its first frame that differs from those pooled so far) and how many
        frames it holds. ``state``: the denoised frame's :meth:`_band_state`, whose
        information gives the Poisson variance."""
        bands, information = state
        if own.total <= 0 or not (earlier or later) or bands.size == 0:
            return own.scores, 1
        n_terms = 2 * len(self.orders)
        inverse = np.stack([_solve(i, np.eye(n_terms)) for i in information])
        degrees = n_terms * len(bands)
        pooled_sum, n = own.scores.copy(), 1
        sides = [[h for h in earlier if h is not None and h.total > 0],
                 [h for h in later if h is not None and h.total > 0]]
        place = [0, 0]
        while n <= POOL_FRAMES and any(place[k] < len(sides[k]) for k in (0, 1)):
            for k in (0, 1):
                if place[k] >= len(sides[k]) or n > POOL_FRAMES:
                    continue
                other = sides[k][place[k]]
                scores = other.scores * (own.total / other.total)  # at the frame's dose
                change = scores[bands] - pooled_sum[bands] / n  # variance: (1 + 1/n) frames'
                statistic = float(np.einsum("bk,bkl,bl->", change, inverse, change)
                                  / (1.0 + 1.0 / n))
                if chi2.sf(statistic, degrees) > POOL_P:
                    pooled_sum += scores
                    n += 1
                    place[k] += 1
                else:
                    place[k] = len(sides[k])  # this side changed: no further frame of it
        return pooled_sum / n, n

    def _held(self, d: np.ndarray, raw_scores: np.ndarray, n_frames: int,
              state: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """One pass of the hold (module doc, 2-5): ``raw_scores``, the mean of the raw
        harmonics pooled over ``n_frames`` frames (:meth:`_pooled`); ``state``: ``d``'s
        :meth:`_band_state`, where already made."""
        bands, information = state if state is not None else self._band_state(d)
        if bands.size == 0:
            return d
        base = self._band_scores([d], self.means, self.orders)[0, bands]
        served = np.stack([_solve(i, g) for g, i in zip(base, information, strict=True)])
        # Each frame pooled adds its counts: the differences' information grows with them.
        score = n_frames * (raw_scores[bands] - base)
        information = information * n_frames
        course = self._course(score, information, bands, served)
        table = course[np.minimum(self.band_of_shell, len(course) - 1)]  # per shell
        factor = np.ones_like(d)
        for j, column in enumerate(_columns(self.orders)):  # in place: frame-sized arrays
            term = self._term(j, column, self.orders).astype(np.float64)
            term -= self.means[self.shell, j]
            term *= table[self.shell, j]
            factor += term
            del term
        np.maximum(factor, MIN_FACTOR, out=factor)
        scaled = d * factor
        del factor
        n_kept = int(self.kept.max()) + 1
        before = np.bincount(self.kept, d, minlength=n_kept)
        after = np.bincount(self.kept, scaled, minlength=n_kept)
        scale = np.divide(before, after, out=np.ones(n_kept), where=after > 0)
        scaled *= scale[self.kept]
        return scaled

    def _course(self, score: np.ndarray, information: np.ndarray, bands: np.ndarray,
                served: np.ndarray) -> np.ndarray:
        """Per band (all of them), the differences' course in radius that Akaike's
        criterion prefers, each order's shrunk by its evidence (module doc, 3-4):
        ``(n_bands, terms)``. ``served``: per band of
        ``bands``, the denoised frame's own relative harmonics (a denoiser that flattens a
        pattern by a factor leaves differences in proportion to them: the candidates
        include a gain on them, constant or linear in radius, besides a course of their
        own)."""
        n_terms = score.shape[1]
        own = np.stack([_solve(i, g) for g, i in zip(score, information, strict=True)])
        best_criterion, best = 2.0 * n_terms * len(bands), None  # band by band: no misfit
        radius = self.band_radius[bands]
        lo, hi = radius.min(), radius.max()
        t = (radius - lo) / max(hi - lo, 1.0)
        eye = np.eye(n_terms)
        term_order = np.arange(n_terms) // 2
        designs = []  # each: (bands, terms, parameters), and each parameter's order
        for degree in COURSE_DEGREES:  # a course of their own
            powers = t[:, None] ** np.arange(degree + 1)
            designs.append((np.stack([np.kron(p, eye) for p in powers]),
                            np.tile(term_order, degree + 1)))
        slots = [[2 * k, 2 * k + 1] for k in range(len(self.orders))]
        for degree in (0, 1):  # a gain, per order, on the frame's own harmonics
            columns = []
            for pair in slots:
                for j in range(degree + 1):
                    column = np.zeros_like(served)
                    column[:, pair] = served[:, pair] * (t ** j)[:, None]
                    columns.append(column)
            designs.append((np.stack(columns, axis=2),
                            np.repeat(np.arange(len(self.orders)), degree + 1)))
        for design, parameter_order in designs:
            if design.shape[2] >= n_terms * len(bands):
                continue
            normal = np.einsum("bki,bkl,blj->ij", design, information, design)
            right = np.einsum("bki,bk->i", design, score)
            parameters = _solve(normal, right)
            residual = own - np.einsum("bki,i->bk", design, parameters)
            misfit = float(np.einsum("bk,bkl,bl->", residual, information, residual))
            criterion = misfit + 2.0 * design.shape[2]
            if criterion < best_criterion:
                best_criterion = criterion
                best = (design, parameter_order, parameters,
                        _solve(normal, np.eye(len(parameters))))
        course = np.zeros((len(self.band_radius), n_terms))
        if best is None:  # band by band: each band's terms, their covariance its own
            covariance = np.stack([_solve(i, eye) for i in information])
            for pair in slots:
                values = own[:, pair]
                wald = sum(float(v @ _solve(c[np.ix_(pair, pair)], v))
                           for v, c in zip(values, covariance, strict=True))
                course[bands[:, None], pair] = values * _shrinkage(wald, values.size)
            return course
        design, parameter_order, parameters, covariance = best
        for k in range(len(self.orders)):
            mine = np.flatnonzero(parameter_order == k)
            values = parameters[mine]
            wald = float(values @ _solve(covariance[np.ix_(mine, mine)], values))
            parameters[mine] = values * _shrinkage(wald, mine.size)
        course[bands] = np.einsum("bki,i->bk", design, parameters)
        return course


def _shrinkage(wald: float, n_parameters: int) -> float:
    """The factor an order's fitted differences are shrunk by (module doc, 4): the
    positive-part empirical-Bayes factor ``max(0, 1 - k / W)`` of ``k`` parameters whose
    Wald statistic (their χ² against zero) is ``W``."""
    return max(0.0, 1.0 - n_parameters / wald) if wald > 0 else 0.0


def _usable(pixels: np.ndarray, counts: np.ndarray, geometry: np.ndarray) -> np.ndarray:
    """The bands with pixels enough for the terms of ``geometry`` (per band, their Gram
    matrix per pixel), counts, and a spread of each term of at least :data:`MIN_SPREAD`
    (the smallest eigenvalue)."""
    spread = (np.linalg.eigvalsh(geometry)[:, 0] if geometry.shape[1]
              else np.zeros(len(geometry)))
    return np.flatnonzero((pixels >= PIXELS_PER_TERM * geometry.shape[1]) & (counts > 0)
                          & (spread >= MIN_SPREAD))


def _given(score: np.ndarray, information: np.ndarray, new: list[int], inside: list[int]
           ) -> tuple[np.ndarray, np.ndarray]:
    """Per band, the score and information of the terms ``new`` given the terms ``inside``
    fitted (the efficient score: what ``new`` explains that ``inside`` does not)."""
    g = score[:, new]
    i = information[:, new][:, :, new]
    if not inside:
        return g, i
    g_out, i_out = [], []
    for s, info in zip(score, information, strict=True):
        cross = info[np.ix_(new, inside)]
        solve = _solve(info[np.ix_(inside, inside)], np.column_stack(
            [s[inside], info[np.ix_(inside, new)]]))
        g_out.append(s[new] - cross @ solve[:, 0])
        i_out.append(info[np.ix_(new, new)] - cross @ solve[:, 1:])
    return np.array(g_out), np.array(i_out)
