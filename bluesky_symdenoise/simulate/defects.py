"""Detector imperfections: module gaps, beamstop shadow, hot and dead pixels.

Module gaps come from real pyFAI detector definitions, so a synthetic frame has the gaps a
beamline user sees. The beamstop arm deliberately breaks the 180° symmetry of the *mask*:
the pixels diametrically opposite the arm are valid, as on a real detector.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DetectorDefects",
    "beamstop_mask",
    "default_gap_offset",
    "detector_mask",
    "make_defects",
    "pyfai_detector_mask",
]


@functools.lru_cache(maxsize=8)
def _full_detector_mask(detector: str) -> np.ndarray:
    from pyFAI.detectors import detector_factory

    det = detector_factory(detector)
    mask = det.calc_mask()
    if mask is None:  # a monolithic sensor: no gaps
        mask = np.zeros(det.shape, dtype=bool)
    mask = np.asarray(mask).astype(bool)
    mask.setflags(write=False)
    return mask


def pyfai_detector_mask(detector: str = "Pilatus1M") -> np.ndarray:
    """The full gap mask of a pyFAI detector (read-only, True on gaps).

    Parameters
    ----------
    detector
        Any name accepted by ``pyFAI.detectors.detector_factory``.
    """
    return _full_detector_mask(detector)


def _gap_starts(line_is_gap: np.ndarray) -> np.ndarray:
    """Indices where a run of gap rows (or columns) begins."""
    gap = line_is_gap.astype(np.int8)
    return np.flatnonzero(np.diff(np.concatenate([[0], gap])) == 1)


def default_gap_offset(shape: tuple[int, int], detector: str = "Pilatus1M",
                       *, fraction: tuple[float, float] = (0.3, 0.7)) -> tuple[int, int]:
    """A crop offset that puts the detector's first gaps inside a crop of ``shape``.

    The first horizontal gap lands at ``fraction[0]`` of the crop height and the first
    vertical gap at ``fraction[1]`` of its width, i.e. off the middle, where the beam centre
    of the synthetic scenes sits. Directions without gaps get offset 0.
    """
    full = _full_detector_mask(detector)
    offset = []
    for axis, (size, frac) in enumerate(zip(shape, fraction, strict=True)):
        line_is_gap = np.asarray(full.all(axis=1 - axis))
        starts = _gap_starts(line_is_gap)
        if starts.size == 0:
            offset.append(0)
            continue
        offset.append(max(int(starts[0]) - int(frac * size), 0))
    return int(offset[0]), int(offset[1])


def detector_mask(shape: tuple[int, int], *, detector: str = "Pilatus1M",
                  offset: tuple[int, int] | None = None,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """Module-gap mask of a real detector, cropped to ``shape``.

    Parameters
    ----------
    shape
        ``(rows, cols)`` of the crop.
    detector
        pyFAI detector name (``"Pilatus1M"``, ``"Eiger1M"``, ...).
    offset
        ``(row, col)`` of the crop's first pixel on the full detector. ``None`` picks
        :func:`default_gap_offset` (a crop that contains a horizontal and a vertical gap),
        or, when ``rng`` is given, a random offset near it.
    rng
        Used only when ``offset`` is None, to jitter the default offset by up to a quarter
        of the crop (the gaps stay inside the crop).

    Returns
    -------
    numpy.ndarray
        bool ``(rows, cols)``, True on gap pixels. A crop reaching past the detector's edge
        wraps around, i.e. the detector is tiled periodically.
    """
    shape = (int(shape[0]), int(shape[1]))
    full = _full_detector_mask(detector)
    if offset is None:
        offset = default_gap_offset(shape, detector)
        if rng is not None:
            jitter = [int(rng.integers(-s // 8, s // 8 + 1)) for s in shape]
            offset = (max(offset[0] + jitter[0], 0), max(offset[1] + jitter[1], 0))
    rows = (int(offset[0]) + np.arange(shape[0])) % full.shape[0]
    cols = (int(offset[1]) + np.arange(shape[1])) % full.shape[1]
    return full[np.ix_(rows, cols)].copy()


def beamstop_mask(shape: tuple[int, int], center: tuple[float, float], *,
                  radius: float = 8.0, arm_angle_deg: float = 60.0,
                  arm_width: float = 4.0) -> np.ndarray:
    """Shadow of a round beamstop and its holding arm.

    Parameters
    ----------
    shape
        ``(rows, cols)``.
    center
        Beam centre ``(row, col)`` in pixels (pixel centres at integers).
    radius
        Beamstop radius in pixels.
    arm_angle_deg
        Direction of the arm, in degrees from the +col axis towards +row (the pyFAI χ
        convention for an untilted detector). The arm runs from the centre to the edge.
    arm_width
        Full width of the arm in pixels; ``0`` gives no arm.

    Returns
    -------
    numpy.ndarray
        bool ``(rows, cols)``, True in the shadow.
    """
    rows, cols = np.indices(shape, dtype=np.float64)
    drow, dcol = rows - center[0], cols - center[1]
    shadow = np.hypot(drow, dcol) <= radius
    if arm_width > 0:
        angle = np.deg2rad(arm_angle_deg)
        along = drow * np.sin(angle) + dcol * np.cos(angle)
        across = -drow * np.cos(angle) + dcol * np.sin(angle)
        shadow |= (along >= 0) & (np.abs(across) <= arm_width / 2)
    return shadow


@dataclass(frozen=True)
class DetectorDefects:
    """Pixels that do not report the scene.

    Attributes
    ----------
    hot
        bool ``(rows, cols)``: pixels that count ``Poisson(hot_rate)`` whatever the scene.
    dead
        bool ``(rows, cols)``: pixels that always read 0.
    hot_rate
        Expected counts per frame on a hot pixel (absolute, independent of the exposure
        level of the scene).
    """

    hot: np.ndarray
    dead: np.ndarray
    hot_rate: float

    @property
    def bad(self) -> np.ndarray:
        """Hot or dead: pixels a denoiser must ignore."""
        return self.hot | self.dead

    def as_metadata(self) -> dict[str, float | int]:
        """JSON-safe summary."""
        return {"n_hot": int(self.hot.sum()), "n_dead": int(self.dead.sum()),
                "hot_rate": float(self.hot_rate)}


def make_defects(shape: tuple[int, int], *, hot_fraction: float = 2e-4,
                 dead_fraction: float = 5e-4, hot_rate: float | None = None,
                 rng: np.random.Generator) -> DetectorDefects:
    """Scatter hot and dead pixels at random.

    Parameters
    ----------
    shape
        ``(rows, cols)``.
    hot_fraction, dead_fraction
        Fraction of pixels that are hot / dead; at least one of each when the fraction is
        positive. Hot and dead pixels do not overlap.
    hot_rate
        Counts per frame on hot pixels; None draws it log-uniformly in [50, 500].
    rng
        Random generator.
    """
    n_pixels = int(shape[0]) * int(shape[1])
    n_hot = max(int(round(hot_fraction * n_pixels)), 1) if hot_fraction > 0 else 0
    n_dead = max(int(round(dead_fraction * n_pixels)), 1) if dead_fraction > 0 else 0
    picked = rng.choice(n_pixels, size=n_hot + n_dead, replace=False)
    hot = np.zeros(n_pixels, dtype=bool)
    dead = np.zeros(n_pixels, dtype=bool)
    hot[picked[:n_hot]] = True
    dead[picked[n_hot:]] = True
    if hot_rate is None:
        hot_rate = float(np.exp(rng.uniform(np.log(50.0), np.log(500.0))))
    return DetectorDefects(hot=hot.reshape(shape), dead=dead.reshape(shape),
                           hot_rate=float(hot_rate))
