"""Detector geometry: beam centre, pixel size, distance, wavelength, and the pyFAI view of it.

The beam centre is given as ``(row, col)`` in array-index coordinates, where the centre of
pixel ``[i, j]`` sits at ``(i, j)``. pyFAI places that same pixel centre at
``((i + 0.5) * pixel1, (j + 0.5) * pixel2)`` metres, so for an untilted detector
``poni1 = (row + 0.5) * pixel1``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DetectorGeometry", "GeometryError"]


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
    """

    shape: tuple[int, int]
    center: tuple[float, float]
    pixel_size: float = 75e-6
    distance: float = 0.2
    wavelength: float = 1.0e-10
    rot1: float = 0.0
    rot2: float = 0.0

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
                   rot1=rot1, rot2=rot2)

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
        return {
            "poni_version": 2,
            "detector": "Detector",
            "detector_config": {"pixel1": self.pixel_size, "pixel2": self.pixel_size,
                                "max_shape": list(self.shape)},
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
                "wavelength": self.wavelength, "rot1": self.rot1, "rot2": self.rot2}


@functools.lru_cache(maxsize=32)
def _cached_integrator(geometry: DetectorGeometry):
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    poni = geometry.poni_dict()
    return AzimuthalIntegrator(dist=poni["dist"], poni1=poni["poni1"], poni2=poni["poni2"],
                               rot1=poni["rot1"], rot2=poni["rot2"], rot3=0.0,
                               pixel1=geometry.pixel_size, pixel2=geometry.pixel_size,
                               wavelength=geometry.wavelength)
