"""Detector geometry: beam centre, pixel size, distance, wavelength, and the pyFAI view of it.

The beam centre is given as ``(row, col)`` in array-index coordinates, where the centre of
pixel ``[i, j]`` sits at ``(i, j)``. pyFAI places that same pixel centre at
``((i + 0.5) * pixel1, (j + 0.5) * pixel2)`` metres, so for an untilted detector
``poni1 = (row + 0.5) * pixel1``.

A geometry may name a detector of pyFAI's registry (``Pilatus1M``, ``Eiger2_4M``, ...):
:meth:`DetectorGeometry.from_detector` takes its shape and pixel size from pyFAI, and
:func:`detector_mask` gives its module gaps and bad pixels (True where pyFAI masks).
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DetectorGeometry", "GeometryError", "detector_mask", "registry_detector_name",
           "with_detector_mask"]


class GeometryError(ValueError):
    """The geometry given cannot be used (missing keys, centre off the detector, ...)."""


@dataclass(frozen=True)
class DetectorGeometry:
    """Where the beam hits a flat 2-D detector, and what a pixel sees.

    Parameters
    ----------
    shape
        Detector shape ``(rows, cols)``.
    center
        Beam centre ``(row, col)`` in pixels (pixel centres at integers). May lie off the
        detector only if ``allow_off_detector`` was used to build it.
    pixel_size
        Pixel edge in metres (square pixels).
    distance
        Sample-detector distance in metres.
    wavelength
        X-ray wavelength in metres.
    rot1, rot2
        pyFAI detector tilts in radians (kept for integration; symmetry maps ignore them).
    detector_name
        The pyFAI registry name of the detector (``"Pilatus1M"``, ``"Eiger2_4M"``), or None
        for a generic detector: its module gaps are then known (:func:`detector_mask`).
    """

    shape: tuple[int, int]
    center: tuple[float, float]
    pixel_size: float = 75e-6
    distance: float = 0.2
    wavelength: float = 1.0e-10
    rot1: float = 0.0
    rot2: float = 0.0
    detector_name: str | None = None

    def __post_init__(self) -> None:
        if len(self.shape) != 2 or min(self.shape) < 2:
            raise GeometryError(f"detector shape must be (rows, cols), got {self.shape!r}")
        row, col = (float(c) for c in self.center)
        if not (np.isfinite(row) and np.isfinite(col)):
            raise GeometryError(f"beam centre must be finite, got {self.center!r}")
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))
        object.__setattr__(self, "center", (row, col))
        for name in ("pixel_size", "distance", "wavelength"):
            if not getattr(self, name) > 0:
                raise GeometryError(f"{name} must be positive, got {getattr(self, name)!r}")

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_center(cls, shape: tuple[int, int], center: tuple[float, float],
                    **kwargs: Any) -> DetectorGeometry:
        """Build from a beam centre ``(row, col)``; raise if it is off the detector."""
        geometry = cls(shape=shape, center=center, **kwargs)  # __post_init__ normalises
        geometry.check_center_on_detector()
        return geometry

    @classmethod
    def from_detector(cls, name: str, *, center: tuple[float, float] | None = None,
                      distance: float = 0.2, wavelength: float = 1.0e-10,
                      **kwargs: Any) -> DetectorGeometry:
        """A detector of pyFAI's registry by name: its shape and pixel size from pyFAI.

        Parameters
        ----------
        name
            A pyFAI detector name (``"Pilatus1M"``, ``"Eiger2_4M"``, ``"pilatus 1m"``: case
            and the spaces pyFAI allows do not matter).
        center
            Beam centre ``(row, col)`` in pixels; None: the middle of the detector. It must
            lie on the detector.
        distance, wavelength
            Sample-detector distance and X-ray wavelength in metres.
        **kwargs
            Other fields (``rot1``, ``rot2``).

        Returns
        -------
        DetectorGeometry
            With :attr:`detector_name` the registry's class name (``"Pilatus1M"``).

        Raises
        ------
        GeometryError
            An unknown name (the message lists the registry's closest names), a detector
            without a fixed shape, or non-square pixels.
        """
        canonical = registry_detector_name(name)
        detector = _registry_class(canonical)()
        if detector.shape is None:
            raise GeometryError(f"pyFAI detector {canonical!r} has no fixed shape: use "
                                "DetectorGeometry.from_center(shape, center, pixel_size=...)")
        pixel1, pixel2 = float(detector.pixel1), float(detector.pixel2)
        if not np.isclose(pixel1, pixel2, rtol=1e-6):
            raise GeometryError(f"pyFAI detector {canonical!r} has non-square pixels "
                                f"({pixel1:g} x {pixel2:g} m): not supported")
        shape = (int(detector.shape[0]), int(detector.shape[1]))
        if center is None:
            center = ((shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0)
        return cls.from_center(shape, center, pixel_size=pixel1, distance=distance,
                               wavelength=wavelength, detector_name=canonical, **kwargs)

    @classmethod
    def from_poni(cls, poni: str | Path | dict[str, Any],
                  shape: tuple[int, int] | None = None) -> DetectorGeometry:
        """Read a pyFAI PONI file (path) or PONI dictionary.

        Parameters
        ----------
        poni
            Path of a ``.poni`` file, or a dict with pyFAI keys (``dist``, ``poni1``,
            ``poni2``, ``wavelength``, ``rot1``, ``rot2``, ``pixel1`` or ``detector``).
        shape
            Detector shape; taken from the PONI's detector when omitted.

        A PONI whose detector is one of pyFAI's registry (``Detector: Pilatus1M``) gives a
        geometry that keeps its name (:attr:`detector_name`).
        """
        from pyFAI.io.ponifile import PoniFile

        try:
            if isinstance(poni, dict):
                config = dict(poni)
                if "pixel1" in config and "detector" not in config:
                    config.setdefault("detector", "Detector")
                    config.setdefault(
                        "detector_config",
                        {"pixel1": config.pop("pixel1"),
                         "pixel2": config.pop("pixel2", None) or config.get("pixel1")},
                    )
                    if config["detector_config"]["pixel2"] is None:
                        config["detector_config"]["pixel2"] = config["detector_config"]["pixel1"]
                pf = PoniFile(config)
            else:
                path = Path(poni)
                if not path.exists():
                    raise GeometryError(f"PONI file not found: {path}")
                pf = PoniFile(str(path))
        except GeometryError:
            raise
        except Exception as exc:  # pyFAI raises several types for bad input
            raise GeometryError(f"cannot read PONI {poni!r}: {exc}") from exc
        detector = pf.detector
        pixel1 = float(detector.pixel1)
        if shape is None:
            if detector.shape is None:
                raise GeometryError("PONI has no detector shape: pass shape=(rows, cols)")
            shape = detector.shape
        if pf.wavelength is None:
            raise GeometryError("PONI has no wavelength")
        rot1, rot2 = float(pf.rot1 or 0.0), float(pf.rot2 or 0.0)
        # Beam centre: where the direct beam hits; equals the PONI for an untilted detector.
        row = (pf.poni1 - pf.dist * np.tan(rot2) / np.cos(rot1)) / pixel1 - 0.5
        col = (pf.poni2 + pf.dist * np.tan(rot1)) / float(detector.pixel2) - 0.5
        return cls(shape=shape, center=(float(row), float(col)), pixel_size=pixel1,
                   distance=float(pf.dist), wavelength=float(pf.wavelength),
                   rot1=rot1, rot2=rot2, detector_name=_registered_name(detector))

    def with_center(self, center: tuple[float, float]) -> DetectorGeometry:
        """Return a copy with another beam centre."""
        return replace(self, center=(float(center[0]), float(center[1])))

    # -- checks -------------------------------------------------------------------------
    def center_on_detector(self) -> bool:
        row, col = self.center
        return (-0.5 <= row <= self.shape[0] - 0.5) and (-0.5 <= col <= self.shape[1] - 0.5)

    def check_center_on_detector(self) -> None:
        """Raise :class:`GeometryError` if the beam centre is off the detector."""
        if not self.center_on_detector():
            raise GeometryError(
                f"beam centre (row, col)={self.center} lies off the {self.shape} detector; "
                "pass the centre in pixels as (row, col), or a PONI file")

    # -- pyFAI ----------------------------------------------------------------------------
    def poni_dict(self) -> dict[str, Any]:
        """This geometry as a pyFAI PONI dictionary (version 2 keys)."""
        row, col = self.center
        detector_config: dict[str, Any] = {"pixel1": self.pixel_size,
                                           "pixel2": self.pixel_size}
        if self.detector_name is None:
            detector_config["max_shape"] = list(self.shape)
        return {
            "poni_version": 2,
            "detector": self.detector_name or "Detector",
            "detector_config": detector_config,
            "dist": self.distance,
            "poni1": (row + 0.5) * self.pixel_size + self.distance * np.tan(self.rot2)
            / np.cos(self.rot1),
            "poni2": (col + 0.5) * self.pixel_size - self.distance * np.tan(self.rot1),
            "rot1": self.rot1,
            "rot2": self.rot2,
            "rot3": 0.0,
            "wavelength": self.wavelength,
        }

    def write_poni(self, path: str | Path) -> Path:
        """Write this geometry as a ``.poni`` file readable by pyFAI."""
        from pyFAI.io.ponifile import PoniFile

        path = Path(path)
        with open(path, "w") as fh:
            PoniFile(self.poni_dict()).write(fh)
        return path

    def integrator(self):
        """A pyFAI ``AzimuthalIntegrator`` for this geometry (one per geometry, cached)."""
        return _cached_integrator(self)

    def q_map(self) -> np.ndarray:
        """Scattering vector magnitude per pixel in nm^-1."""
        return self.integrator().center_array(self.shape, unit="q_nm^-1", scale=True)

    def chi_map(self) -> np.ndarray:
        """Azimuthal angle per pixel in radians (pyFAI convention)."""
        return self.integrator().center_array(self.shape, unit="chi_rad", scale=False)

    def radius_map(self) -> np.ndarray:
        """Distance of each pixel centre from the beam centre, in pixels."""
        rows, cols = np.indices(self.shape, dtype=np.float64)
        return np.hypot(rows - self.center[0], cols - self.center[1])

    def as_metadata(self) -> dict[str, Any]:
        """JSON-safe description, for provenance in derived runs."""
        return {"shape": list(self.shape), "beam_center": list(self.center),
                "pixel_size": self.pixel_size, "distance": self.distance,
                "wavelength": self.wavelength, "rot1": self.rot1, "rot2": self.rot2,
                "detector_name": self.detector_name}


def registry_detector_name(name: str) -> str:
    """The class name pyFAI's registry gives ``name`` (``"pilatus 1m"`` -> ``"Pilatus1M"``).

    Parameters
    ----------
    name
        A detector name as ``pyFAI.detector_factory`` accepts it (case-insensitive; spaces
        may stand for underscores). File names are not accepted here.

    Raises
    ------
    GeometryError
        ``name`` is not in the registry; the message lists the closest names it has.
    """
    from pyFAI.detectors import ALL_DETECTORS

    if not isinstance(name, str) or not name.strip():
        raise GeometryError(f"detector name must be a pyFAI detector name, got {name!r}")
    key = name.strip().lower()
    if key == "detector":
        raise GeometryError("'Detector' is pyFAI's generic detector, without a shape or "
                            "gaps: use DetectorGeometry.from_center(shape, center, "
                            "pixel_size=...)")
    for candidate in (key, key.replace(" ", "_"), key.replace(" ", "")):
        if candidate in ALL_DETECTORS and candidate != "detector":
            return str(ALL_DETECTORS[candidate].__name__)
    close = difflib.get_close_matches(key.replace(" ", "_"), list(ALL_DETECTORS), n=8,
                                      cutoff=0.6)
    names = list(dict.fromkeys(ALL_DETECTORS[k].__name__ for k in close))
    hint = (f"closest names in pyFAI's registry: {', '.join(names)}" if names else
            "see pyFAI.detectors.ALL_DETECTORS for the names pyFAI knows")
    raise GeometryError(f"unknown detector {name!r}; {hint}")


def detector_mask(geometry_or_name: DetectorGeometry | str) -> np.ndarray | None:
    """The module gaps and bad pixels pyFAI knows for a named detector (True: masked).

    Parameters
    ----------
    geometry_or_name
        A :class:`DetectorGeometry` (its :attr:`~DetectorGeometry.detector_name`) or a pyFAI
        detector name.

    Returns
    -------
    numpy.ndarray or None
        bool ``(rows, cols)`` (a new array); None for a generic geometry or a detector
        whose pyFAI definition masks nothing (a monolithic sensor).

    Raises
    ------
    GeometryError
        An unknown name, or a geometry whose shape is not the detector's (binned or
        cropped frames need a mask of their own).
    """
    if isinstance(geometry_or_name, DetectorGeometry):
        name = geometry_or_name.detector_name
        if name is None:
            return None
    else:
        name = registry_detector_name(geometry_or_name)
    mask = _registry_mask(name)
    if mask is None:
        return None
    if isinstance(geometry_or_name, DetectorGeometry) and mask.shape != geometry_or_name.shape:
        raise GeometryError(
            f"the {name} mask is {mask.shape}, the geometry's frames are "
            f"{geometry_or_name.shape}: binned or cropped frames need a mask of their own")
    return mask.copy()


def with_detector_mask(geometry: DetectorGeometry, mask: np.ndarray | None
                       ) -> tuple[np.ndarray | None, str | None]:
    """The user's mask with a named detector's module gaps and bad pixels OR-ed in.

    Parameters
    ----------
    geometry
        The scan's geometry; a generic one (no :attr:`~DetectorGeometry.detector_name`)
        adds nothing.
    mask
        The user's bool ``(rows, cols)`` mask, or None. One of another shape is returned
        unchanged (its own check reports it).

    Returns
    -------
    mask, note
        The merged mask (a new array; ``mask`` itself when nothing was added) and a note
        for provenance (``"Pilatus1M: 73533 module-gap pixels masked (pyFAI's detector
        mask)"``), or None.

    Raises
    ------
    GeometryError
        The detector's mask does not fit the geometry's shape (binned or cropped frames).
    """
    gaps = detector_mask(geometry)
    if gaps is None:
        return mask, None
    note = (f"{geometry.detector_name}: {int(gaps.sum())} module-gap pixels masked "
            "(pyFAI's detector mask)")
    if mask is None:
        return gaps, note
    user = np.asarray(mask)
    if user.shape != gaps.shape:
        return mask, None
    user = user.astype(bool)
    added = int((gaps & ~user).sum())
    return user | gaps, note[:-1] + f", {added} of them not in the user's mask)"


def _registry_class(canonical: str) -> type:
    from pyFAI.detectors import ALL_DETECTORS

    return ALL_DETECTORS[canonical.lower()]


def _registered_name(detector: Any) -> str | None:
    """The registry name of a pyFAI detector object; None for a generic one."""
    from pyFAI.detectors import ALL_DETECTORS

    name = type(detector).__name__
    key = name.lower()
    if key == "detector" or ALL_DETECTORS.get(key) is not type(detector):
        return None
    return name


@functools.lru_cache(maxsize=8)
def _registry_mask(canonical: str) -> np.ndarray | None:
    mask = _registry_class(canonical)().mask
    if mask is None:
        return None
    mask = np.asarray(mask).astype(bool)
    if not mask.any():
        return None
    mask.setflags(write=False)
    return mask


@functools.lru_cache(maxsize=32)
def _cached_integrator(geometry: DetectorGeometry):
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    poni = geometry.poni_dict()
    return AzimuthalIntegrator(dist=poni["dist"], poni1=poni["poni1"], poni2=poni["poni2"],
                               rot1=poni["rot1"], rot2=poni["rot2"], rot3=0.0,
                               pixel1=geometry.pixel_size, pixel2=geometry.pixel_size,
                               wavelength=geometry.wavelength)
