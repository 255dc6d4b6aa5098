"""Symmetry of a diffraction pattern: partner maps, centre refinement, local validity.

Pixels related by a symmetry of the pattern (180° rotation about the beam centre, a mirror,
the azimuthal equivalence of a powder ring) have the same expected counts but independent
Poisson noise, so each is a free noisy copy of the other. The partner of a pixel rarely
falls on a pixel centre (generic beam centre), so partner values are resampled bilinearly and
the variance factor of that resampling is returned with them.

Symmetry can be broken by the sample (a one-sided satellite), by absorption or by a tilted
detector. :func:`symmetry_validity` tests it locally, so the denoiser only uses partners
where the data agree with them.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, optimize

__all__ = [
    "VIOLATION_BITS",
    "BinReader",
    "BinScatter",
    "PartnerMap",
    "PartnerSample",
    "RingEquivalence",
    "RingProfile",
    "SymmetryReport",
    "isotropy_validity",
    "mirror",
    "refine_center",
    "rotate180",
    "ring_profile",
    "rotation180",
    "symmetry_chi2",
    "symmetry_validity",
]

#: Bits of the symmetry violation map (:func:`~bluesky_symdenoise.denoise.engine.
#: violation_map`, the live ``symmetry`` stream), and what each means.
VIOLATION_BITS = {1: "180° symmetry rejected (partners not used there)",
                  2: "azimuthal isotropy rejected (ring and arc means not used there)",
                  4: "spot held to its raw intensity (with a 180° partner, its pair's)"}


@dataclass(frozen=True)
class PartnerSample:
    """Values of the symmetry partners of every pixel.

    Attributes
    ----------
    values
        Partner value at each pixel (bilinear resample), 0 where not ``valid``.
    valid
        True where the partner lies on the detector and all pixels it is resampled from are
        unmasked.
    weight_sq
        Sum of squared interpolation weights: the partner's noise variance is
        ``weight_sq`` times that of one pixel (1 on a pixel centre, down to 0.25 between).
    """

    values: np.ndarray
    valid: np.ndarray
    weight_sq: np.ndarray


@dataclass(frozen=True)
class PartnerMap:
    """An affine symmetry ``p' = A @ (p - c) + c`` of the detector plane, in pixels.

    Use :func:`rotation180` or :func:`mirror` to build one.
    """

    shape: tuple[int, int]
    center: tuple[float, float]
    matrix: tuple[tuple[float, float], tuple[float, float]]
    name: str = "partner"

    def map_points(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Partner coordinates of the points ``(rows, cols)``."""
        (a, b), (c, d) = self.matrix
        dr = np.asarray(rows, dtype=np.float64) - self.center[0]
        dc = np.asarray(cols, dtype=np.float64) - self.center[1]
        return a * dr + b * dc + self.center[0], c * dr + d * dc + self.center[1]

    def coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """Partner coordinates of every pixel centre, two ``shape`` float arrays."""
        rows, cols = np.indices(self.shape, dtype=np.float64)
        return self.map_points(rows, cols)

    def sample(self, image: np.ndarray, mask: np.ndarray | None = None) -> PartnerSample:
        """Resample ``image`` at every pixel's partner.

        Parameters
        ----------
        image
            ``shape`` array (counts).
        mask
            Optional bool array, True on bad pixels; a partner touching one is invalid.
        """
        image = np.asarray(image, dtype=np.float64)
        if image.shape != self.shape:
            raise ValueError(f"image shape {image.shape} != partner map shape {self.shape}")
        return _bilinear(image, mask, self)

    def sample_at(self, image: np.ndarray, mask: np.ndarray | None, points: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`sample` at the flat pixel indices ``points`` only: ``(values, valid)``,
        the same bilinear partners without a whole-frame plan (for a window of a large
        frame)."""
        height, width = self.shape
        points = np.asarray(points)
        rows, cols = np.divmod(points, width)
        pr, pc = self.map_points(rows, cols)
        r0, c0 = np.floor(pr).astype(np.int64), np.floor(pc).astype(np.int64)
        fr, fc = pr - r0, pc - c0
        eps = 1e-9
        snap_r, snap_c = fr > 1 - eps, fc > 1 - eps
        r0, c0 = np.where(snap_r, r0 + 1, r0), np.where(snap_c, c0 + 1, c0)
        fr = np.where(snap_r | (fr < eps), 0.0, fr)
        fc = np.where(snap_c | (fc < eps), 0.0, fc)
        flat_image = np.asarray(image).ravel()
        good = None if mask is None else ~np.asarray(mask, bool).ravel()
        values = np.zeros(points.shape)
        valid = np.ones(points.shape, bool)
        for dr, dc, weight in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc),
                               (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
            rr, cc = r0 + dr, c0 + dc
            inside = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
            flat = np.clip(rr, 0, height - 1) * width + np.clip(cc, 0, width - 1)
            used = weight > 0
            ok = inside if good is None else inside & good[flat]
            valid &= ~used | ok
            values += np.where(used & ok, weight * flat_image[flat], 0.0)
        values[~valid] = 0.0
        return values, valid

    def apply(self, image: np.ndarray, mask: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """Shorthand for :meth:`sample` returning ``(values, valid)``."""
        sample = self.sample(image, mask)
        return sample.values, sample.valid


def _rows_cols(shape: tuple[int, int]) -> tuple[int, int]:
    """``shape`` as a tuple of two ints (a list or a NumPy shape in; hashable out)."""
    rows, cols = shape  # ValueError unless a frame shape
    return int(rows), int(cols)


def rotation180(shape: tuple[int, int], center: tuple[float, float]) -> PartnerMap:
    """The 2-fold rotation about the beam centre: ``(r, c) -> (2 r0 - r, 2 c0 - c)``."""
    return PartnerMap(_rows_cols(shape), (float(center[0]), float(center[1])),
                      ((-1.0, 0.0), (0.0, -1.0)), name="rotation180")


def mirror(shape: tuple[int, int], center: tuple[float, float], angle_deg: float) -> PartnerMap:
    """Reflection across the line through the centre at ``angle_deg`` from the column axis.

    ``angle_deg=0`` reflects across the horizontal line ``row = r0``: ``(r, c) -> (2 r0 - r, c)``;
    ``angle_deg=90`` across the vertical line ``col = c0``.
    """
    theta = np.deg2rad(angle_deg)
    # Line direction in (row, col) space: (sin θ, cos θ). Reflection: 2 u u^T - I.
    ur, uc = np.sin(theta), np.cos(theta)
    matrix = ((2 * ur * ur - 1.0, 2 * ur * uc), (2 * ur * uc, 2 * uc * uc - 1.0))
    return PartnerMap(_rows_cols(shape), (float(center[0]), float(center[1])), matrix,
                      name=f"mirror{angle_deg:g}")


def rotate180(image: np.ndarray, center: tuple[float, float],
              mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Partner image under 180° rotation about ``center`` and its validity.

    Returns ``(partner, partner_valid)``; see :class:`PartnerSample`.
    """
    return rotation180(np.shape(image), center).apply(image, mask)


@functools.lru_cache(maxsize=4)
def _interpolation_plan(shape: tuple[int, int], center: tuple[float, float],
                        matrix: tuple[tuple[float, float], tuple[float, float]]
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each pixel's partner as its upper-left source pixel ``(r0, c0)`` (int32) and the
    fractions ``(fr, fc)`` (float32) of the bilinear taps: 12-16 bytes a pixel, so a few
    cached plans of a 4 Mpx detector stay small (the taps are expanded per call)."""
    pm = PartnerMap(shape, center, matrix)
    rows, cols = pm.coordinates()
    r0 = np.floor(rows)
    c0 = np.floor(cols)
    fr = rows - r0
    fc = cols - c0
    del rows, cols
    # Snap near-integer coordinates so half-integer centres give exact pixel partners.
    eps = 1e-9
    snap_r, snap_c = fr > 1 - eps, fc > 1 - eps
    r0 = np.where(snap_r, r0 + 1, r0).astype(np.int32)
    c0 = np.where(snap_c, c0 + 1, c0).astype(np.int32)
    fr = np.where(snap_r | (fr < eps), 0.0, fr).astype(np.float32)
    fc = np.where(snap_c | (fc < eps), 0.0, fc).astype(np.float32)
    return r0, c0, fr, fc


def _bilinear(image: np.ndarray, mask: np.ndarray | None, pm: PartnerMap) -> PartnerSample:
    r0, c0, fr32, fc32 = _interpolation_plan(pm.shape, pm.center, pm.matrix)
    height, width = pm.shape
    fr, fc = fr32.astype(np.float64), fc32.astype(np.float64)
    flat_image = image.ravel()
    good = None if mask is None else ~np.asarray(mask, bool).ravel()
    values = np.zeros(image.shape, np.float64)
    valid = np.ones(image.shape, bool)
    weight_sq = np.zeros(image.shape, np.float64)
    for dr, dc, weight in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc),
                           (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        rr, cc = r0 + dr, c0 + dc
        inside = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
        flat = (np.clip(rr, 0, height - 1).astype(np.int64) * width
                + np.clip(cc, 0, width - 1))
        used = weight > 0
        ok = inside if good is None else inside & good[flat]
        valid &= ~used | ok
        values += np.where(used & ok, weight * flat_image[flat], 0.0)
        weight_sq += np.where(used, weight * weight, 0.0)
    values[~valid] = 0.0
    return PartnerSample(values=values, valid=valid, weight_sq=weight_sq)


@dataclass(frozen=True)
class RingEquivalence:
    """Azimuthal (powder-ring) equivalence: every pixel of a radial bin shares its mean.

    Parameters
    ----------
    shape, center
        Detector shape and beam centre ``(row, col)``.
    bin_width
        Radial bin width in pixels.
    """

    shape: tuple[int, int]
    center: tuple[float, float]
    bin_width: float = 1.0
    labels: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rows, cols = np.indices(self.shape, dtype=np.float64)
        radius = np.hypot(rows - self.center[0], cols - self.center[1])
        object.__setattr__(self, "labels", np.floor(radius / self.bin_width).astype(np.int64))

    def partner_mean(self, image: np.ndarray, mask: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Mean of the *other* valid pixels of each pixel's ring and how many there are.

        The pixel itself is excluded, so the mean is independent of its noise.
        """
        image = np.asarray(image, np.float64)
        good = np.ones(self.shape, bool) if mask is None else ~np.asarray(mask, bool)
        n_bins = int(self.labels.max()) + 1
        sums = np.bincount(self.labels[good], image[good], minlength=n_bins)
        counts = np.bincount(self.labels[good], minlength=n_bins).astype(np.float64)
        own = np.where(good, image, 0.0)
        others = counts[self.labels] - good
        mean = np.where(others > 0, (sums[self.labels] - own) / np.maximum(others, 1), 0.0)
        return mean, others


@dataclass(frozen=True)
class RingProfile:
    """Azimuthal mean at each pixel's radius, over the whole ring or over sectors of it.

    Each pixel's value is shared between the radial bins (and azimuthal sectors) around it in
    proportion to its distance to them, and the mean is read back the same way (bilinear in
    radius and azimuth), so a sharp ring keeps its shape for a generic beam centre and the
    sector mean follows slow azimuthal changes (texture, polarisation).

    Parameters
    ----------
    shape, center
        Detector shape and beam centre ``(row, col)``.
    bin_width
        Radial bin width in pixels.
    sectors
        Number of azimuthal sectors (1: the whole ring).
    """

    shape: tuple[int, int]
    center: tuple[float, float]
    bin_width: float = 0.5
    sectors: int = 1
    #: Per tap (2 radial x, with sectors, 2 azimuthal): each pixel's flat bin (int32) and
    #: weight (float32); kept for detectors up to :data:`TAPS_KEPT_UP_TO` pixels, recomputed
    #: from the scan's shared polar map (:func:`_polar_map`) per use above it, so that a
    #: 4 Mpx detector's many profiles cost no memory of their own.
    _kept: tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]] | None = field(
        init=False, repr=False, compare=False)
    _n_bins: int = field(init=False, repr=False, compare=False)
    _scatter: dict = field(init=False, repr=False, compare=False)
    _lock: threading.Lock = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        radius, _ = _polar_map(self.shape, self.center, self.sectors > 1)
        n_r = int(np.floor(radius.max() / self.bin_width)) + 2
        object.__setattr__(self, "_n_bins", n_r * self.sectors)
        object.__setattr__(self, "_kept", None)
        if radius.size <= TAPS_KEPT_UP_TO:
            object.__setattr__(self, "_kept", self._taps(None))
        object.__setattr__(self, "_scatter", {})
        object.__setattr__(self, "_lock", threading.Lock())

    def _taps(self, index: np.ndarray | None
              ) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """Bins and weights of each tap, for every pixel or the flat ``index`` (an int
        array or a flat bool mask)."""
        if self._kept is not None:
            bins, weights = self._kept
            if index is None:
                return bins, weights
            return tuple(b[index] for b in bins), tuple(w[index] for w in weights)
        s = self.sectors
        radius_map, phi_map = _polar_map(self.shape, self.center, s > 1)
        # float32 and int32 throughout: on a detector whose taps are not kept, these
        # transients are what a profile costs per use.
        radius = (radius_map if index is None else radius_map[index]) / np.float32(
            self.bin_width)
        r_lo = np.floor(radius).astype(np.int32)
        r_f = radius - r_lo
        del radius
        radial = ((r_lo, 1.0 - r_f), (r_lo + 1, r_f))
        azimuthal: tuple[tuple[np.ndarray, np.ndarray], ...]
        if s > 1 and phi_map is not None:
            phi = (phi_map if index is None else phi_map[index]) * np.float32(s) - 0.5
            p_lo = np.floor(phi).astype(np.int32)
            p_f = phi - p_lo
            p_lo %= s
            azimuthal = ((p_lo, 1.0 - p_f), ((p_lo + 1) % s, p_f))
        else:
            azimuthal = ((np.zeros(1, np.int32), np.ones(1, np.float32)),)
        tap_bins: list[np.ndarray] = []
        tap_weights: list[np.ndarray] = []
        for r_idx, r_w in radial:
            for p_idx, p_w in azimuthal:
                tap_bins.append((r_idx * s + p_idx).astype(np.int32))
                tap_weights.append((r_w * p_w).astype(np.float32))
        return tuple(tap_bins), tuple(tap_weights)

    @property
    def nbytes(self) -> int:
        """Memory the profile holds of its own (its kept taps; not the shared polar map)."""
        if self._kept is None:
            return 0
        return sum(a.nbytes for a in (*self._kept[0], *self._kept[1]))

    def _scatter_for(self, good: np.ndarray) -> tuple[BinScatter, np.ndarray]:
        """The binning restricted to ``good`` pixels and its weights (cached for the last
        few masks: a scan uses one)."""
        key = hash(good.tobytes())
        with self._lock:  # the live trainer and server threads share cached profiles
            cached = self._scatter.get(key)
            if cached is None or not np.array_equal(cached[0], good):
                scatter = BinScatter.over(self, good)
                if len(self._scatter) >= 2:
                    self._scatter.pop(next(iter(self._scatter)))
                cached = (good.copy(), scatter, scatter.weights)
                self._scatter[key] = cached
        return cached[1], cached[2]

    def mean(self, image: np.ndarray, good: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean read back at every pixel, and about how many good pixels lie behind it."""
        profile, weights = self.bin_means(image, good)
        return self.read_back(profile), self.read_back(weights)

    def support(self, good: np.ndarray) -> np.ndarray:
        """About how many ``good`` pixels lie behind the profile read back at each pixel."""
        return self.read_back(self._scatter_for(np.asarray(good, bool))[1])

    def bin_means(self, image: np.ndarray, good: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The profile itself: each bin's mean over ``good`` pixels, and its weight (about
        how many pixels it rests on)."""
        good = np.asarray(good, bool)
        scatter, weights = self._scatter_for(good)
        sums = scatter @ np.asarray(image, np.float64)[good]
        return sums / np.maximum(weights, 1e-12), weights.copy()

    def binning(self, good: np.ndarray) -> tuple[BinScatter, np.ndarray]:
        """The binning over ``good`` pixels: ``(scatter, weights)``, where ``scatter @
        image[good]`` are the bins' weighted sums and ``weights`` their weights
        (:meth:`bin_means` divides the one by the other)."""
        return self._scatter_for(np.asarray(good, bool))

    def read_back(self, profile: np.ndarray) -> np.ndarray:
        """A profile (one value per bin, as :meth:`bin_means`) read back at every pixel."""
        return self.reader(None) @ np.asarray(profile, np.float64)

    def reader(self, index: np.ndarray | None) -> BinReader:
        """How the pixels of the flat ``index`` read a profile back: ``reader(index) @
        profile`` equals ``read_back(profile).ravel()[index]``, without the other pixels
        (``None``: every pixel, read back as an ``(H, W)`` image)."""
        if index is None:
            return BinReader(self, None, self._kept)
        index = np.asarray(index)
        return BinReader(self, index, self._taps(index) if self._kept is not None else None)


#: Rows per band of the local tests on a large detector (each band with its halo).
BAND_ROWS = 256


def row_bands(rows: int, halo: int, band_rows: int = BAND_ROWS
              ) -> Iterator[tuple[slice, slice, slice]]:
    """Bands of ``band_rows`` rows of a frame of ``rows`` rows, for work whose reach is at
    most ``halo`` rows: per band, its rows, the rows to read (the band and its halo), and
    where the band lies in what is read. Exact, and the transients are a band's.

    Examples
    --------
    >>> [(own.start, own.stop, read.start, read.stop) for own, read, _ in row_bands(5, 1, 2)]
    [(0, 2, 0, 3), (2, 4, 1, 5), (4, 5, 3, 5)]
    """
    for start in range(0, rows, band_rows):
        stop = min(start + band_rows, rows)
        lo, hi = max(start - halo, 0), min(stop + halo, rows)
        yield slice(start, stop), slice(lo, hi), slice(start - lo, stop - lo)

#: Per tap of a profile: each pixel's flat bin (int32), then its weight (float32).
Taps = tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]

#: Detectors up to this many pixels keep each ring profile's taps (16-32 bytes a pixel per
#: profile, several profiles a scan); larger ones recompute them per use from one shared
#: polar map, trading some time per frame for a bounded footprint.
TAPS_KEPT_UP_TO = 1 << 21
#: Above it, taps are made for this many pixels at a time (their transients: about 40
#: bytes a pixel of a chunk, not of the detector).
TAP_CHUNK = 1 << 19


def _polar_map(shape: tuple[int, int], center: tuple[float, float], with_azimuth: bool
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """Flat radius (px) and azimuth (fraction of a turn from -180°) of every pixel about
    ``center``, float32 (4 bytes a pixel each, exact to 1e-3 px at 4000 px); the azimuth
    only if asked."""
    return (_radius_map(shape, center),
            _azimuth_map(shape, center) if with_azimuth else None)


def _offsets(shape: tuple[int, int], center: tuple[float, float]
             ) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets from ``center`` as broadcastable float64 vectors."""
    return (np.arange(shape[0], dtype=np.float64)[:, None] - center[0],
            np.arange(shape[1], dtype=np.float64)[None, :] - center[1])


@functools.lru_cache(maxsize=2)
def _radius_map(shape: tuple[int, int], center: tuple[float, float]) -> np.ndarray:
    dr, dc = _offsets(shape, center)
    return np.hypot(dr, dc).astype(np.float32).ravel()


@functools.lru_cache(maxsize=2)
def _azimuth_map(shape: tuple[int, int], center: tuple[float, float]) -> np.ndarray:
    dr, dc = _offsets(shape, center)
    return ((np.arctan2(dr, dc) + np.pi) / (2 * np.pi)).astype(np.float32).ravel()


@dataclass(frozen=True)
class BinScatter:
    """``scatter @ values``: weighted sums per bin of values given on a set of pixels (a
    sparse matrix's product, with per-pixel taps)."""

    profile: RingProfile
    pixels: np.ndarray
    taps: tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]] | None

    @classmethod
    def over(cls, profile: RingProfile, good: np.ndarray) -> BinScatter:
        """The binning of ``profile`` over the ``good`` pixels (a bool image)."""
        pixels = np.asarray(good, bool).ravel()
        kept = profile._taps(pixels) if profile._kept is not None else None
        return cls(profile, pixels, kept)

    @property
    def weights(self) -> np.ndarray:
        """Each bin's total weight (about how many of the pixels it rests on)."""
        return self @ None

    def __matmul__(self, values: np.ndarray | None) -> np.ndarray:
        n_bins = self.profile._n_bins
        total = np.zeros(n_bins)
        chunks: Iterable[tuple[Taps, np.ndarray | None]]
        if self.taps is not None:
            chunks = [(self.taps, values)]
        else:  # taps made chunk by chunk: their transients stay bounded
            chunks = self._chunks(values)
        for (bins_of_taps, weights_of_taps), part in chunks:
            for bins, weights in zip(bins_of_taps, weights_of_taps, strict=True):
                tap = weights if part is None else weights * np.asarray(part, np.float64)
                total += np.bincount(bins, tap, minlength=n_bins)
        return total

    def _chunks(self, values: np.ndarray | None) -> Iterator[tuple[Taps, np.ndarray | None]]:
        """Per run of :data:`TAP_CHUNK` detector pixels: the taps of its pixels in the set,
        and their values."""
        done = 0
        for start in range(0, self.pixels.size, TAP_CHUNK):
            index = np.flatnonzero(self.pixels[start:start + TAP_CHUNK]) + start
            if index.size == 0:
                continue
            part = None if values is None else values[done:done + index.size]
            done += index.size
            yield self.profile._taps(index), part


@dataclass(frozen=True)
class BinReader:
    """``reader @ profile``: a profile read back at a set of pixels (bilinear taps)."""

    profile: RingProfile
    index: np.ndarray | None
    taps: tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]] | None

    def __matmul__(self, profile: np.ndarray) -> np.ndarray:
        values = np.asarray(profile, np.float64)
        size = (self.index.size if self.index is not None
                else self.profile.shape[0] * self.profile.shape[1])
        out = np.zeros(size)
        if self.taps is not None:
            self._read(self.taps, values, out)
        else:  # taps made chunk by chunk: their transients stay bounded
            for start in range(0, size, TAP_CHUNK):
                stop = min(start + TAP_CHUNK, size)
                index = (np.arange(start, stop) if self.index is None
                         else self.index[start:stop])
                self._read(self.profile._taps(index), values, out[start:stop])
        return out.reshape(self.profile.shape if self.index is None else self.index.shape)

    @staticmethod
    def _read(taps: Taps, values: np.ndarray, out: np.ndarray) -> None:
        for bins, weights in zip(*taps, strict=True):
            out += weights * values[bins]


@functools.lru_cache(maxsize=16)
def ring_profile(shape: tuple[int, int], center: tuple[float, float],
                 sectors: int = 1, bin_width: float = 0.5) -> RingProfile:
    """Cached :class:`RingProfile` for a detector shape, beam centre, sector count and radial
    bin width (px)."""
    return RingProfile(_rows_cols(shape), (float(center[0]), float(center[1])),
                       bin_width=float(bin_width), sectors=sectors)


def symmetry_chi2(image: np.ndarray, center: tuple[float, float],
                  mask: np.ndarray | None = None, *, smooth_sigma: float = 1.0) -> float:
    """Mean χ² of an image against its 180° partner about ``center``.

    ``mean((s - rot s)^2 / (s + rot s))`` over valid pairs of the smoothed image ``s``; it is
    smallest at the true beam centre. Used by :func:`refine_center`.
    """
    image = np.asarray(image, np.float64)
    good = np.ones(image.shape, bool) if mask is None else ~np.asarray(mask, bool)
    smoothed = _masked_smooth(image, good, smooth_sigma)
    sample = rotation180(image.shape, center).sample(smoothed, ~good)
    use = sample.valid & good
    if use.sum() < 100:
        return np.inf
    diff = smoothed[use] - sample.values[use]
    total = smoothed[use] + sample.values[use] + 1e-6
    return float(np.mean(diff * diff / total))


def refine_center(image: np.ndarray, center: tuple[float, float],
                  mask: np.ndarray | None = None, *, search_px: float = 3.0,
                  smooth_sigma: float = 1.0) -> tuple[float, float]:
    """Refine the beam centre by minimising :func:`symmetry_chi2`.

    A grid search over ``±search_px`` in 0.5-px steps, then Nelder-Mead from the best point.

    Parameters
    ----------
    image
        A frame, or better the sum of a scan's frames (more counts, sharper minimum).
    center
        Starting ``(row, col)``, e.g. from the PONI file.
    mask
        Bad pixels (True).

    Returns
    -------
    tuple of float
        The refined ``(row, col)``.
    """
    image = np.asarray(image, np.float64)
    if image.ndim == 3:
        image = image.sum(axis=0)
    good = np.ones(image.shape, bool) if mask is None else ~np.asarray(mask, bool)
    smoothed = _masked_smooth(image, good, smooth_sigma)

    points = _refinement_points(good)
    if points is None:
        def cost(point: np.ndarray) -> float:
            return symmetry_chi2(smoothed, (point[0], point[1]), ~good, smooth_sigma=0.0)
    else:
        def cost(point: np.ndarray) -> float:
            return _chi2_at_points(smoothed, good, (point[0], point[1]), points)

    steps = np.arange(-search_px, search_px + 1e-9, 0.5)
    grid = [(center[0] + dr, center[1] + dc) for dr in steps for dc in steps]
    best = min(grid, key=lambda p: cost(np.asarray(p)))
    result = optimize.minimize(cost, np.asarray(best), method="Nelder-Mead",
                               options={"xatol": 0.005, "fatol": 1e-9,
                                        "initial_simplex": np.asarray(best)
                                        + np.array([[0, 0], [0.3, 0], [0, 0.3]])})
    return float(result.x[0]), float(result.x[1])


#: Above this many good pixels the centre is refined on an even subsample of them: the χ²
#: is a mean over pairs, so a quarter-million pairs fix it as well as all of a 4 Mpx frame
#: (which took minutes and a partner plan per trial centre).
_REFINE_MAX_POINTS = 1 << 18


def _refinement_points(good: np.ndarray) -> np.ndarray | None:
    """Flat indices of an even subsample of the good pixels, or None to use them all."""
    flat = np.flatnonzero(good)
    if flat.size <= _REFINE_MAX_POINTS:
        return None
    step = -(-flat.size // _REFINE_MAX_POINTS)
    return flat[::step]


def _chi2_at_points(smoothed: np.ndarray, good: np.ndarray, center: tuple[float, float],
                    points: np.ndarray) -> float:
    """:func:`symmetry_chi2` of an already smoothed image on the pixels ``points`` only
    (flat indices): the same bilinear partners, without a whole-frame plan."""
    values, valid = rotation180(smoothed.shape, center).sample_at(smoothed, ~good, points)
    if valid.sum() < 100:
        return np.inf
    own = smoothed.ravel()[points[valid]]
    diff = own - values[valid]
    return float(np.mean(diff * diff / (own + values[valid] + 1e-6)))


def _masked_smooth(image: np.ndarray, good: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return np.where(good, image, 0.0)
    num = ndimage.gaussian_filter(np.where(good, image, 0.0), sigma, mode="constant")
    den = ndimage.gaussian_filter(good.astype(np.float64), sigma, mode="constant")
    return np.where(good, num / np.maximum(den, 1e-6), 0.0)


@dataclass(frozen=True)
class SymmetryReport:
    """Where a pattern agrees with its 180° partner.

    Attributes
    ----------
    valid
        Bool map: True where the partner exists and the local test finds no violation.
    violation
        Bool map: True where the local test rejected symmetry (a feature with no partner).
    z_max
        Largest |z| of the multi-scale local test at each pixel.
    fraction_paired
        Fraction of unmasked pixels with a partner on the detector.
    fraction_violated
        Fraction of paired pixels where symmetry was rejected.
    chi2_per_pair
        Global χ²/pair of the frame against its partner (≈ 1 + interpolation smoothing when
        symmetric).
    """

    valid: np.ndarray
    violation: np.ndarray
    z_max: np.ndarray
    fraction_paired: float
    fraction_violated: float
    chi2_per_pair: float

    def summary(self) -> dict[str, float]:
        """JSON-safe numbers for provenance."""
        return {"fraction_paired": round(self.fraction_paired, 4),
                "fraction_violated": round(self.fraction_violated, 5),
                "chi2_per_pair": round(self.chi2_per_pair, 4),
                "z_max": round(float(self.z_max.max()) if self.z_max.size else 0.0, 2)}


def symmetry_validity(image: np.ndarray, center: tuple[float, float],
                      mask: np.ndarray | None = None, *, windows: tuple[int, ...] = (3, 5, 9, 17),
                      z_threshold: float = 5.0,
                      interpolation_error: float = 0.15) -> SymmetryReport:
    """Local test of 180° symmetry, giving a validity map.

    For each window size ``w`` the signed sum of ``y - rot(y)`` over a ``w × w`` window is
    divided by its expected Poisson standard deviation; a pixel is a violation if any scale
    exceeds ``z_threshold``. A feature with no symmetric partner gives a large positive sum on
    its side and a large negative one at its partner position, so both are excluded.

    Parameters
    ----------
    image
        A frame, or the sum of a scan's frames (a static or symmetrically drifting sample).
    center
        Beam centre ``(row, col)``.
    mask
        Bad pixels (True).
    windows
        Odd window sizes of the test in pixels.
    z_threshold
        Rejection level in standard deviations (5 keeps false alarms below ~1 pixel/frame).
    interpolation_error
        Relative error allowed for the resampled partner of a generic centre (added to the
        Poisson variance), so that high-count sums of sharp rings are not flagged.
    """
    image = _lean_float(image)
    if image.ndim == 3:
        image = image.sum(axis=0)
    good = np.ones(image.shape, bool) if mask is None else ~np.asarray(mask, bool)
    sample = rotation180(image.shape, center).sample(image, ~good)
    paired = sample.valid & good
    values = sample.values.astype(image.dtype, copy=False)
    diff = np.where(paired, image - values, image.dtype.type(0))
    # Expected variance of y - rot(y): Poisson, mean level times (1 + interpolation factor),
    # plus the bilinear resampling error of a generic centre on sharp features (a few % of
    # the level), which dominates when many frames are summed and would flag sharp rings.
    level = np.where(paired, 0.5 * (image + values), image.dtype.type(0))
    del values
    variance = level * (1.0 + sample.weight_sq) + (interpolation_error * level) ** 2
    return _windowed_test(diff, variance, paired, good, windows, z_threshold)


def _windowed_test(diff: np.ndarray, variance: np.ndarray, paired: np.ndarray,
                   good: np.ndarray, windows: tuple[int, ...],
                   z_threshold: float) -> SymmetryReport:
    """The multi-scale test shared by the 180° and the isotropy tests: for each window, the
    signed sum of ``diff`` over it in units of its expected standard deviation; a pixel is a
    violation where any window covering it exceeds ``z_threshold``."""
    # A large detector's maps in float32 (half the transient memory; z is compared with a
    # threshold of about 5, far above float32's rounding), tested in bands of rows whose
    # halo covers the filters' reach (exact; the transients are a band's, not the frame's);
    # smaller ones as they always were.
    lean = diff.size > TAPS_KEPT_UP_TO
    if lean:
        diff, variance = diff.astype(np.float32), variance.astype(np.float32)
        z_max = np.zeros(diff.shape, np.float32)
        reach = max(windows)  # uniform filter's half window + maximum filter's
        for own, read, kept in row_bands(diff.shape[0], reach, BAND_ROWS):
            z_max[own] = _window_z_max(diff[read], variance[read], windows)[kept]
    else:
        z_max = _window_z_max(diff, variance, windows)
    violation = paired & (z_max > z_threshold)
    valid = paired & ~violation
    n_good = max(int(good.sum()), 1)
    n_paired = max(int(paired.sum()), 1)
    chi2 = float(np.sum(np.square(diff, dtype=np.float64)) / max(
        float(np.sum(variance, dtype=np.float64)), 1e-9))
    z_max[~paired] = 0.0
    return SymmetryReport(valid=valid, violation=violation, z_max=z_max,
                          fraction_paired=float(paired.sum() / n_good),
                          fraction_violated=float(violation.sum() / n_paired),
                          chi2_per_pair=chi2)


def _lean_float(image: np.ndarray) -> np.ndarray:
    """An image as float64, or float32 on a large detector (half the memory; a scan's
    summed counts are exact in float32 up to 2^24)."""
    image = np.asarray(image)
    large = image.size > TAPS_KEPT_UP_TO * (image.shape[0] if image.ndim == 3 else 1)
    return image.astype(np.float32 if large else np.float64, copy=False)


def _window_z_max(diff: np.ndarray, variance: np.ndarray, windows: tuple[int, ...]
                  ) -> np.ndarray:
    """Largest |z| over the windows covering each pixel (:func:`_windowed_test`)."""
    z_max = np.zeros(diff.shape, diff.dtype)
    for window in windows:
        d_sum = ndimage.uniform_filter(diff, window, mode="constant")
        d_sum *= window * window
        v_sum = ndimage.uniform_filter(variance, window, mode="constant")
        v_sum *= window * window
        z = np.abs(d_sum) / np.sqrt(np.maximum(v_sum, 0.0) + 1.0)
        del d_sum, v_sum
        # A window's verdict applies to every pixel it covers.
        z = ndimage.maximum_filter(z, window, mode="constant")
        np.maximum(z_max, z, out=z_max)
        del z
    return z_max


def isotropy_validity(image: np.ndarray, center: tuple[float, float],
                      mask: np.ndarray | None = None, *,
                      windows: tuple[int, ...] = (3, 5, 9, 17, 33),
                      z_threshold: float = 5.0, interpolation_error: float = 0.15,
                      sectors: int = 1, min_ring_pixels: float = 12.0,
                      bin_width: float = 0.5) -> SymmetryReport:
    """Local test of azimuthal symmetry (a powder ring) against the ring mean.

    The same multi-scale test as :func:`symmetry_validity`, with the ring mean at each pixel's
    radius as the partner: texture, single-crystal spots, diffuse streaks and a tilted
    detector's elliptical rings are flagged where the data can tell, and the ring mean is not
    used there.

    Parameters
    ----------
    image
        A frame or a scan's sum.
    center
        Beam centre ``(row, col)``.
    mask
        Bad pixels (True).
    windows, z_threshold, interpolation_error
        As in :func:`symmetry_validity`.
    sectors
        Azimuthal sectors of the mean (1: whole rings; more: local arcs, see
        :class:`RingProfile`).
    min_ring_pixels
        Where fewer good pixels lie behind the mean (near the beam centre) it is never used.
    bin_width
        Radial bin width of the mean (px).

    Returns
    -------
    SymmetryReport
        ``fraction_paired`` here is the fraction of good pixels on a usable ring.
    """
    image = _lean_float(image)
    if image.ndim == 3:
        image = image.sum(axis=0)
    good = np.ones(image.shape, bool) if mask is None else ~np.asarray(mask, bool)
    ring_mean, n_pixels = ring_profile(image.shape, center, sectors, bin_width).mean(image,
                                                                                  good)
    paired = good & (n_pixels >= min_ring_pixels)
    del n_pixels
    ring_mean = ring_mean.astype(image.dtype, copy=False)
    diff = np.where(paired, image - ring_mean, image.dtype.type(0))
    variance = np.where(paired, ring_mean + (interpolation_error * ring_mean) ** 2, 0.0)
    return _windowed_test(diff, variance, paired, good, windows, z_threshold)
