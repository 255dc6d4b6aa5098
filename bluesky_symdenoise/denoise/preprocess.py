"""Checking a scan's frames, and finding the bad pixels nobody masked.

Rules (documented in ``docs/faults.md``, "Bad input"):

* frames must be ``(H, W)`` or ``(N, H, W)`` real numbers; anything else raises
  :class:`InputError`.
* NaN, inf and negative values raise :class:`InputError` unless ``bad_pixels="mask"``, which
  adds those pixels to the mask of that scan. Pixels already masked may hold anything.
* Saturated pixels (equal to the integer dtype's maximum: 65535 in uint16, 2**32-1 in
  uint32, where an Eiger marks counter overflow and its own gaps and bad pixels) are masked
  and counted, per frame.
* Signed integer frames (a Pilatus writes int32) mark gaps with -1 and bad pixels with -2:
  those markers are not counts, so they are masked and counted, never refused as negative
  values (an integrating detector's frames excepted: there they are data).
* Hot pixels (isolated, far above all eight neighbours) and dead pixels (zero through a
  scan whose neighbourhood has many counts) are found automatically; once the beam centre is
  known, so are isolated hot pixels far above their own ring where that ring is otherwise
  isotropic (:func:`find_ring_defects`: a defect on a steep SAXS curve, whose neighbours are
  bright themselves). The result at them is the denoiser's estimate from their
  neighbourhood.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage

from .channels import ARC_SECTORS
from .symmetry import _offsets, ring_profile

__all__ = ["ARC_RATIO", "InputError", "PreparedScan", "UnusablePixels", "find_defects",
           "find_ring_defects", "over_own_arc", "prepare_frames", "sharp_ring_pixels",
           "unusable_pixels"]


#: Per-frame counts a scan's note lists before it abbreviates.
_PER_FRAME_SHOWN = 16


class InputError(ValueError):
    """The frames, mask or geometry given to the denoiser cannot be used as they are."""


@dataclass
class PreparedScan:
    """Frames as float32 counts with every kind of bad pixel accounted for.

    Attributes
    ----------
    frames
        ``(N, H, W)`` float32, bad pixels set to 0.
    user_mask
        Pixels the caller masked (gaps, beamstop): output there is 0.
    bad
        Every pixel excluded from training and statistics (user mask, non-finite or
        negative when repaired, saturated, hot, dead).
    defects
        Hot and dead pixels found here (output there is the denoiser's estimate).
    single_frame
        The caller passed one ``(H, W)`` frame.
    integer_counts
        The data are whole numbers (photon counting): binomial thinning is exact.
    shifted_poisson
        The frames are an integrating detector's shifted photon-equivalent frames
        (:mod:`~bluesky_symdenoise.denoise.detector_noise`): Poisson-like to second order,
        so thinning their rounded values and the held-out checks apply approximately.
    notes
        What was repaired, for provenance.
    """

    frames: np.ndarray
    user_mask: np.ndarray
    bad: np.ndarray
    defects: np.ndarray
    single_frame: bool
    integer_counts: bool
    notes: list[str] = field(default_factory=list)
    shifted_poisson: bool = False

    @property
    def countlike(self) -> bool:
        """Thinning and the held-out binomial checks apply (whole counts, or the
        shifted photon-equivalent frames of an integrating detector)."""
        return self.integer_counts or self.shifted_poisson

    @property
    def good(self) -> np.ndarray:
        return ~self.bad

    def restore(self, pixels: np.ndarray, frames: np.ndarray, how: str) -> str:
        """Take back defects found by :func:`prepare_frames` (``pixels``, bool ``(H, W)``,
        among :attr:`defects`) as data: their values from ``frames``, the frames
        :func:`prepare_frames` was given. Returns the note ("" when none)."""
        pixels = np.asarray(pixels, bool) & self.defects
        if not pixels.any():
            return ""
        values = np.asarray(frames)
        values = values[None] if values.ndim == 2 else values
        self.frames[:, pixels] = values[:, pixels].astype(np.float32)
        self.defects = self.defects & ~pixels
        self.bad = self.bad & ~pixels
        note = f"took {int(pixels.sum())} pixels back from the hot ones: {how}"
        self.notes.append(note)
        return note

    def add_defects(self, found: np.ndarray, how: str) -> str:
        """Exclude more hot or dead pixels (``found``, bool ``(H, W)``) found ``how``, as
        :func:`prepare_frames` excludes its own: zeroed in the frames and noted. Returns
        the note ("" when none was new)."""
        found = np.asarray(found, bool) & ~self.bad
        if not found.any():
            return ""
        note = f"found {int(found.sum())} unmasked hot pixels {how}"
        self.notes.append(note)
        self.defects = self.defects | found
        self.bad = self.bad | found
        self.frames[:, found] = 0.0
        return note


def prepare_frames(frames: np.ndarray, mask: np.ndarray | None = None, *,
                   bad_pixels: Literal["raise", "mask"] = "raise",
                   detect_defects: bool = True,
                   integrating: bool = False) -> PreparedScan:
    """Validate raw frames and build the scan's bad-pixel map.

    Parameters
    ----------
    frames
        ``(H, W)`` or ``(N, H, W)`` raw counts.
    mask
        Bool ``(H, W)``, True on bad pixels (gaps, beamstop, known defects).
    bad_pixels
        What to do with NaN, inf or negative unmasked values: ``"raise"`` or ``"mask"``.
    detect_defects
        Look for unmasked hot and dead pixels.
    integrating
        The frames are an integrating detector's shifted photon-equivalent frames: negative
        values are ordinary data (readout noise after dark subtraction), never masked for
        their sign.
    """
    array = np.asarray(frames)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number)
                                      or array.dtype == bool):
        raise InputError(f"frames must be numeric counts, got dtype {array.dtype}")
    if np.iscomplexobj(array):
        raise InputError("frames must be real counts, got complex values")
    if array.ndim not in (2, 3):
        raise InputError(f"frames must be (H, W) or (N, H, W), got shape {array.shape}")
    single = array.ndim == 2
    if single:
        array = array[None]
    n, height, width = array.shape
    if n == 0 or height < 16 or width < 16:
        raise InputError(f"frames of shape {array.shape} are too small (need N>=1, H, W>=16)")
    notes: list[str] = []
    if mask is None:
        user_mask = np.zeros((height, width), bool)
    else:
        user_mask = np.asarray(mask)
        if user_mask.shape != (height, width):
            raise InputError(f"mask shape {user_mask.shape} does not match frames "
                             f"{(height, width)}; mask is (H, W) with True on bad pixels")
        user_mask = user_mask.astype(bool)
    bad = user_mask.copy()
    data = array.astype(np.float32)
    unusable = unusable_pixels(array, data, bad)
    if unusable.saturated.any():
        notes.append(f"masked {int(unusable.saturated.sum())} saturated pixels (at the "
                     f"{array.dtype} maximum {np.iinfo(array.dtype).max})"
                     + _per_frame(unusable.saturated_per_frame))
        bad |= unusable.saturated
    negative = unusable.negative
    if unusable.markers.any() and not integrating:
        notes.append(f"masked {int(unusable.markers.sum())} pixels holding the detector's "
                     f"gap/bad-pixel markers (-1, -2 in {array.dtype} frames)"
                     + _per_frame(unusable.markers_per_frame))
        bad |= unusable.markers
        negative = negative & ~unusable.markers
    for name, where in (("NaN or inf", unusable.nonfinite), ("negative", negative)):
        if name == "negative" and integrating:
            continue
        if where.any():
            if bad_pixels != "mask":
                raise InputError(
                    f"{int(where.sum())} unmasked pixels hold {name} values (first at "
                    f"{tuple(int(i) for i in np.argwhere(where)[0])}); mask them or pass "
                    "bad_pixels='mask'" + (
                        "; if these are an integrating detector's dark-subtracted ADU (flat "
                        "panel, CCD, CMOS), pass detector='integrating'"
                        if name == "negative" else ""))
            notes.append(f"masked {int(where.sum())} pixels with {name} values")
            bad |= where
    data[:, bad] = 0.0
    if not np.all(np.isfinite(data)):  # only masked pixels can still be non-finite
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    # Frame by frame (bad pixels are 0 by now): a frame's transients, not the scan's.
    integer_counts = all(bool(np.all(np.abs(frame - np.rint(frame)) < 1e-3))
                         for frame in data)
    if integrating:
        notes.append("integrating detector: shifted photon-equivalent frames, thinning uses "
                     "their rounded values")
    elif not integer_counts:
        notes.append("non-integer counts (integrating detector): thinning uses rounded counts")

    defects = np.zeros((height, width), bool)
    if detect_defects:
        defects = find_defects(data, bad)
        if defects.any():
            notes.append(f"found {int(defects.sum())} unmasked hot/dead pixels")
            bad |= defects
            data[:, defects] = 0.0
    return PreparedScan(frames=data, user_mask=user_mask, bad=bad, defects=defects,
                        single_frame=single, integer_counts=integer_counts, notes=notes,
                        shifted_poisson=integrating)


@dataclass(frozen=True)
class UnusablePixels:
    """Unmasked pixels that cannot be read as counts in some frame of a stack.

    Attributes
    ----------
    saturated
        At the integer dtype's maximum in some frame (a counter there has lost counts, or
        an Eiger marks a gap or bad pixel).
    nonfinite
        NaN or inf.
    negative
        Below zero (the markers included).
    markers
        Part of ``negative``: -1 or -2 in signed integer frames, a Pilatus's gap and
        bad-pixel markers.
    saturated_per_frame, markers_per_frame
        ``(N,)`` how many of those pixels each frame holds.
    """

    saturated: np.ndarray
    nonfinite: np.ndarray
    negative: np.ndarray
    markers: np.ndarray
    saturated_per_frame: np.ndarray
    markers_per_frame: np.ndarray


def unusable_pixels(raw: np.ndarray, counts: np.ndarray, bad: np.ndarray) -> UnusablePixels:
    """The pixels outside ``bad`` that cannot hold counts in any frame: the one rule of the
    scan (:func:`prepare_frames`) and of each live frame.

    Parameters
    ----------
    raw
        ``(N, H, W)`` frames as the detector gave them (saturation needs their dtype).
    counts
        The same frames as float32.
    bad
        ``(H, W)`` pixels already excluded.

    Notes
    -----
    Integer frames at their dtype's maximum are *saturated*: uint16 65535 and uint32
    2**32-1 are what an Eiger writes for counter overflow and for its gaps and bad pixels.
    Signed integer frames holding -1 or -2 hold a Pilatus's gap and bad-pixel *markers*
    (pyFAI's Dectris ``dummy`` -2 ± 1.5 covers them); they are also ``negative``. pyFAI's
    detector definitions carry no saturation level, so none other is assumed.
    """
    n_frames = raw.shape[0]
    saturated = np.zeros(bad.shape, bool)
    markers = np.zeros(bad.shape, bool)
    saturated_per_frame = np.zeros(n_frames, np.int64)
    markers_per_frame = np.zeros(n_frames, np.int64)
    usable = ~bad
    if np.issubdtype(raw.dtype, np.integer):
        hit = (raw == np.iinfo(raw.dtype).max) & usable
        saturated = np.any(hit, axis=0)
        if saturated.any():
            saturated_per_frame = hit.sum(axis=(1, 2))
        if np.issubdtype(raw.dtype, np.signedinteger):
            marked = ((raw == -1) | (raw == -2)) & usable
            markers = np.any(marked, axis=0)
            if markers.any():
                markers_per_frame = marked.sum(axis=(1, 2))
    finite = np.isfinite(counts)
    nonfinite = np.any(~finite, axis=0) & usable & ~saturated
    negative = np.any((counts < 0) & finite, axis=0) & usable & ~saturated
    return UnusablePixels(saturated=saturated, nonfinite=nonfinite, negative=negative,
                          markers=markers & ~saturated,
                          saturated_per_frame=saturated_per_frame,
                          markers_per_frame=markers_per_frame)


def _per_frame(counts: np.ndarray) -> str:
    """``" (per frame: 3, 0, 1)"`` for a scan of several frames; ``""`` for one."""
    if len(counts) <= 1:
        return ""
    shown = ", ".join(str(int(c)) for c in counts[:_PER_FRAME_SHOWN])
    more = f", ... ({len(counts)} frames)" if len(counts) > _PER_FRAME_SHOWN else ""
    return f" (per frame: {shown}{more})"


def find_defects(frames: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Hot and dead pixels of a scan that the mask does not cover.

    A pixel is *hot* when its scan sum exceeds five times the third largest of its eight
    neighbours by a margin no Poisson fluctuation reaches, so clusters of up to three hot
    pixels are found too; Bragg spots span more pixels than that and are not hot. Only
    neighbours that hold data count: a pixel on the edge of the beamstop or a gap with fewer
    than three of them is compared with the largest (a corner of a pixelated circle next to
    the direct beam is not hot), and one with none is not tested. A pixel is *dead* when it
    reads zero through the scan while each of its nearest neighbours that hold data (at least
    two of the four) has 15 counts or more (a chance below e^-15).
    """
    total = np.asarray(frames).sum(axis=0, dtype=np.float64)  # no float64 copy of the scan
    total[bad] = 0.0
    footprint = np.ones((3, 3), bool)
    footprint[1, 1] = False
    neighbour_third = ndimage.rank_filter(total, rank=-3, footprint=footprint, mode="constant")
    neighbour_max = ndimage.maximum_filter(total, footprint=footprint, mode="constant")
    n_good = ndimage.convolve((~bad).astype(np.int8), footprint.astype(np.int8),
                              mode="constant")  # at most 8
    reference = np.where(n_good >= 3, neighbour_third, neighbour_max)
    n_frames = frames.shape[0]
    hot = (n_good > 0) & (total > 5.0 * reference + 20.0 * np.sqrt(n_frames) + 5.0)
    # Hot pixels are left out of the neighbourhood of the dead-pixel test: a hot cluster
    # would otherwise make the empty pixels around it look dead. The test asks the least of
    # the four nearest neighbours that hold data (not their mean), so that the empty pixel
    # of a steep curve (a SAXS curve by the beamstop) is not taken for a dead one.
    usable = ~bad & ~hot
    padded = np.pad(np.where(usable, total, np.inf), 1, constant_values=np.inf)
    h, w = total.shape
    cross = np.stack([padded[0:h, 1:w + 1], padded[2:h + 2, 1:w + 1],
                      padded[1:h + 1, 0:w], padded[1:h + 1, 2:w + 2]])
    n_cross = np.isfinite(cross).sum(axis=0)
    least = np.where(n_cross > 0, np.min(cross, axis=0), 0.0)
    dead = (total == 0) & (n_cross >= 2) & (least >= 15.0)
    return (hot | dead) & ~bad


#: A hot pixel of :func:`find_defects` no brighter than this many times the median of its own
#: arc (:func:`over_own_arc`) is a sharp ring's pixel, not a defect: on rings about 1 px wide
#: the neighbours are off the ring, so the neighbour test alone takes ring pixels for hot
#: (``python -m bench.defects``: false defects at most 1.8 times their arc's median, true hot
#: pixels at least 6 times; the threshold sits near their geometric middle).
ARC_RATIO = 3.0
#: Radial bins (px) of the arcs; their sectors are the textured rings' (22.5°,
#: :data:`~.channels.ARC_SECTORS`).
ARC_BIN_PX = 0.5


def over_own_arc(total: np.ndarray, good: np.ndarray, center: tuple[float, float],
                 pixels: np.ndarray) -> np.ndarray:
    """Each of ``pixels``' scan sum over the median of its own arc: the ``good`` pixels of
    its :data:`ARC_BIN_PX` radial bin and its 22.5° sector (:data:`ARC_SECTORS`), ``pixels``
    themselves left out. The median, not the mean: a Bragg spot in the arc raises its mean,
    not the level of the ring most of its pixels lie on.

    Parameters
    ----------
    total
        ``(H, W)`` the scan's summed counts.
    good
        ``(H, W)`` pixels that hold data.
    center
        Beam centre ``(row, col)``.
    pixels
        Bool ``(H, W)``: the pixels asked about (few: only the rings they lie on are read).

    Returns
    -------
    numpy.ndarray
        float64, one value per pixel of ``pixels`` (``np.nonzero`` order); ``inf`` where the
        arc holds no other pixel with data, or its median is not above 0.
    """
    pixels = np.asarray(pixels, bool)
    total = np.asarray(total, np.float64)
    rows, cols = np.nonzero(pixels)
    if not len(rows):
        return np.zeros(0)
    dr, dc = _offsets(pixels.shape, center)
    radial = np.floor(np.hypot(dr, dc) / ARC_BIN_PX).astype(np.int32)
    # Only the radial bins of the pixels asked about are read.
    on_rings = np.isin(radial, np.unique(radial[rows, cols])) & np.asarray(good, bool) & ~pixels
    ring_rows, ring_cols = np.nonzero(on_rings)
    if not len(ring_rows):
        return np.full(len(rows), np.inf)

    def arc_key(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        angle = np.arctan2(dr[r, 0], dc[0, c])
        sector = np.floor((angle + np.pi) / (2 * np.pi) * ARC_SECTORS).astype(np.int64)
        return radial[r, c].astype(np.int64) * ARC_SECTORS + sector % ARC_SECTORS

    keys = arc_key(ring_rows, ring_cols)
    values = total[ring_rows, ring_cols]
    order = np.lexsort((values, keys))  # by arc, then by value within it
    keys, values = keys[order], values[order]
    arcs = np.unique(keys)
    start = np.searchsorted(keys, arcs, side="left")
    size = np.searchsorted(keys, arcs, side="right") - start
    median = 0.5 * (values[start + (size - 1) // 2] + values[start + size // 2])
    asked = arc_key(rows, cols)
    slot = np.minimum(np.searchsorted(arcs, asked), len(arcs) - 1)
    level = np.where(arcs[slot] == asked, median[slot], 0.0)
    return np.divide(total[rows, cols], level, out=np.full(len(rows), np.inf),
                     where=level > 0)


def sharp_ring_pixels(prepared: PreparedScan, frames: np.ndarray,
                      center: tuple[float, float]) -> np.ndarray:
    """Hot pixels :func:`prepare_frames` found (:func:`find_defects`) that are pixels of a
    sharp ring: no brighter than :data:`ARC_RATIO` times the median of their own arc
    (:func:`over_own_arc`). A ring about 1 px wide leaves a pixel's neighbours off the
    ring, so the neighbour test alone takes its brightest pixels for hot.

    Parameters
    ----------
    prepared
        The scan as :func:`prepare_frames` made it.
    frames
        The frames it was given (the pixels' own values).
    center
        Beam centre ``(row, col)``.

    Returns
    -------
    numpy.ndarray
        Bool ``(H, W)``, within ``prepared.defects`` (dead pixels, empty through the scan,
        are never among them).
    """
    found = np.zeros(prepared.defects.shape, bool)
    hot = prepared.defects.copy()
    if not hot.any():
        return found
    values = np.asarray(frames)
    values = values[None] if values.ndim == 2 else values
    total = prepared.frames.sum(axis=0, dtype=np.float64)
    total[hot] = values[:, hot].sum(axis=0, dtype=np.float64)
    hot &= total > 0
    found[np.nonzero(hot)] = over_own_arc(total, prepared.good, center, hot) <= ARC_RATIO
    return found


def find_ring_defects(total: np.ndarray, good: np.ndarray, center: tuple[float, float], *,
                      z_threshold: float = 8.0, tolerance: float = 0.15,
                      isolation: float = 0.05, min_ring_pixels: float = 12.0) -> np.ndarray:
    """Hot pixels that stand out from their own ring, where :func:`find_defects` cannot see
    them: on a steep radial profile (a SAXS curve by the beamstop) a pixel's brightest
    neighbours are themselves bright, so a pixel at several times its expectation there is
    not five times its third-brightest neighbour.

    A pixel is hot here when all of these hold:

    * its scan sum exceeds the mean of its ring (0.5 px radial bins, read back bilinearly,
      the pixel itself and the other candidates left out) by ``z_threshold`` standard
      deviations of Poisson counts plus ``tolerance`` of the level (the resampling of a
      steep profile), and is more than twice that level;
    * it is isolated: the third largest excess over their own ring among its eight
      neighbours is below ``isolation`` of its excess and within 3 standard deviations, so
      a spot (whose neighbours share its light) and a cluster of more than three pixels are
      never taken;
    * its ring is otherwise isotropic: no other pixel within 1 px of its radius stands 5
      standard deviations off its ring (outside the 3 x 3 neighbourhoods of the
      candidates); textured rings, lattices and one-sided features are left alone.

    Parameters
    ----------
    total
        ``(H, W)`` the scan's summed counts (bad pixels any value).
    good
        ``(H, W)`` pixels that hold data.
    center
        Beam centre ``(row, col)``.

    Returns
    -------
    numpy.ndarray
        Bool ``(H, W)``: the hot pixels found (all ``good``).
    """
    total = np.asarray(total, np.float64)
    good = np.asarray(good, bool)
    profile = ring_profile(total.shape, center, 1, 0.5)
    candidates = np.zeros(total.shape, bool)
    for _ in range(2):  # the second pass leaves the first pass's candidates out of the level
        level, support = profile.mean(total, good & ~candidates)
        level = np.maximum(level, 0.0)
        usable = good & (support >= min_ring_pixels)
        sd = np.sqrt(level + (tolerance * level) ** 2 + 1.0)
        excess = total - level
        z = np.where(usable, excess / sd, 0.0)
        candidates = usable & (z > z_threshold) & (total > 2.0 * level)
        if not candidates.any():
            return candidates
    footprint = np.ones((3, 3), bool)
    footprint[1, 1] = False
    floor = -1e30  # pixels without data never make a neighbour look bright
    third_excess = ndimage.rank_filter(np.where(usable, excess, floor), rank=-3,
                                       footprint=footprint, mode="constant", cval=floor)
    third_z = ndimage.rank_filter(np.where(usable, z, floor), rank=-3, footprint=footprint,
                                  mode="constant", cval=floor)
    candidates &= (third_excess < isolation * excess) & (third_z < 3.0)
    if not candidates.any():
        return candidates
    # The ring's other outliers, counted per 1 px of radius.
    radius = np.floor(np.hypot(*_offsets(total.shape, center))).astype(np.int64)
    near_candidate = ndimage.binary_dilation(candidates, structure=np.ones((3, 3), bool))
    others = usable & (np.abs(z) > 5.0) & ~near_candidate
    per_radius = np.bincount(radius[others], minlength=int(radius.max()) + 3)
    padded = np.concatenate([[0], per_radius, [0]])
    around = padded[:-2] + padded[1:-1] + padded[2:]  # radius r-1, r, r+1
    return candidates & (around[radius] == 0)
