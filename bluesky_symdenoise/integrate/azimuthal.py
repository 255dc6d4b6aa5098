"""Azimuthal integration of raw and denoised frames with pyFAI.

One :class:`AzimuthalIntegration` per (geometry, mask): it owns nothing heavy itself; the
pyFAI integrator is cached by :meth:`DetectorGeometry.integrator` and pyFAI caches its own
look-up tables per integrator.

Error models
------------
``error_model="poisson"`` propagates Poisson variances: only meaningful for raw counts. Each
pixel's variance is its expectation, estimated by the counts around it (a Gaussian of
:data:`POISSON_SMOOTH_PX` over valid pixels; unbiased where the rate is smooth on that
scale). Not pyFAI's own ``"poisson"`` model, which takes max(1, counts) and so overstates
the error of sparse frames (its 1σ bars covered 0.76-0.96 of the bins on the bench instead
of 0.68); and not the bare counts, which are unbiased too but so noisy in a sector's sparse
bins (a bin of no counts gets a zero sigma) that their bars covered only 0.58-0.64 there
at 0.25 counts/pixel. A denoised frame is not Poisson: pass its variance map with ``variance=``
(e.g. from an ensemble of seeds) or leave ``error_model=None`` and get no sigma. pyFAI's
``"azimuthal"`` model estimates the variance from the spread within each ring.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Literal

import numpy as np

from bluesky_symdenoise.geometry import DetectorGeometry

__all__ = ["AzimuthalIntegration", "IntegrationResult", "CakeResult", "IntegrationError",
           "integrator_for"]

#: Width (pixels) of the Gaussian that estimates each pixel's Poisson variance.
POISSON_SMOOTH_PX = 0.7
ErrorModel = Literal["poisson", "azimuthal"] | None
#: Split pixels by bounding box, CSR sparse matrix, Cython engine: fast and correct on CPU.
DEFAULT_METHOD = ("bbox", "csr", "cython")


class IntegrationError(ValueError):
    """Integration request cannot be served (bad shape, sector, error model)."""


@dataclass(frozen=True)
class IntegrationResult:
    """A 1-D azimuthal profile.

    Attributes
    ----------
    q_nm
        Bin centres in nm^-1.
    intensity
        Mean (solid-angle corrected if requested) counts per pixel in each bin.
    sigma
        Standard error of ``intensity`` per bin, or None when no error model was used.
    """

    q_nm: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray | None


@dataclass(frozen=True)
class CakeResult:
    """A 2-D (chi, q) regrouping ("cake") of a frame.

    Attributes
    ----------
    q_nm
        Radial bin centres in nm^-1, length ``npt_rad``.
    chi_deg
        Azimuthal bin centres in degrees (pyFAI convention), length ``npt_azim``.
    intensity
        Array of shape ``(npt_azim, npt_rad)``; NaN where no unmasked pixel falls (gaps,
        beamstop, beyond the detector's corners), so an empty bin never reads as zero counts.
    sigma
        Same shape (NaN in empty bins), or None without an error model.
    """

    q_nm: np.ndarray
    chi_deg: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray | None


class AzimuthalIntegration:
    """Integrate frames of one detector geometry and mask into I(q) or a cake.

    Parameters
    ----------
    geometry
        Detector geometry (provides the cached pyFAI integrator).
    mask
        True where pixels are invalid; ``None`` for none.
    correct_solid_angle
        Apply pyFAI's solid-angle correction (pyFAI's default; values stay close to counts
        per pixel because pyFAI normalises to the pixel at the PONI).
    method
        pyFAI integration method.
    """

    def __init__(self, geometry: DetectorGeometry, mask: np.ndarray | None = None, *,
                 correct_solid_angle: bool = True,
                 method: tuple[str, str, str] = DEFAULT_METHOD) -> None:
        self.geometry = geometry
        if mask is None:
            mask = np.zeros(geometry.shape, dtype=bool)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != tuple(geometry.shape):
            raise IntegrationError(
                f"mask shape {mask.shape} does not match detector {geometry.shape}")
        # pyFAI wants an integer mask (non-zero = masked).
        self.mask = mask
        self._mask_i8 = mask.astype(np.int8)
        self.correct_solid_angle = bool(correct_solid_angle)
        self.method = tuple(method)

    def _check(self, image: np.ndarray, variance: np.ndarray | None,
               error_model: ErrorModel) -> tuple[np.ndarray, np.ndarray | None]:
        image = np.asarray(image, dtype=np.float32)
        if image.shape != tuple(self.geometry.shape):
            raise IntegrationError(
                f"image shape {image.shape} does not match detector {self.geometry.shape}")
        if error_model not in (None, "poisson", "azimuthal"):
            raise IntegrationError(
                f"unknown error_model {error_model!r}: use None, 'poisson' or 'azimuthal'")
        if variance is not None:
            if error_model is not None:
                raise IntegrationError("pass either variance= or error_model=, not both")
            variance = np.asarray(variance, dtype=np.float32)
            if variance.shape != image.shape:
                raise IntegrationError(
                    f"variance shape {variance.shape} does not match image {image.shape}")
        return image, variance

    def poisson_variance(self, image: np.ndarray) -> np.ndarray:
        """Per-pixel Poisson variance of a frame of counts (what ``error_model="poisson"``
        propagates): the counts around each pixel, Gaussian-weighted over valid pixels."""
        from scipy.ndimage import gaussian_filter

        valid = ~self.mask
        counts = np.where(valid, np.maximum(np.asarray(image, np.float64), 0.0), 0.0)
        weight = gaussian_filter(valid.astype(np.float64), POISSON_SMOOTH_PX, mode="constant")
        smooth = gaussian_filter(counts, POISSON_SMOOTH_PX, mode="constant")
        return np.where(valid, smooth / np.maximum(weight, 1e-6), 0.0).astype(np.float32)

    def _poisson(self, image: np.ndarray, variance: np.ndarray | None,
                 error_model: ErrorModel) -> tuple[np.ndarray, np.ndarray | None, ErrorModel]:
        if error_model == "poisson":
            return image, self.poisson_variance(image), None
        return image, variance, error_model

    @staticmethod
    def _sector(sector: tuple[float, float] | None) -> tuple[float, float] | None:
        if sector is None:
            return None
        lo, hi = (float(s) for s in sector)
        if not hi > lo:
            raise IntegrationError(f"sector must be (chi_min_deg, chi_max_deg) with max > min, "
                                   f"got {sector!r}")
        return (lo, hi)

    def integrate(self, image: np.ndarray, *, npt: int = 500,
                  sector: tuple[float, float] | None = None,
                  error_model: ErrorModel = None,
                  variance: np.ndarray | None = None,
                  radial_range: tuple[float, float] | None = None,
                  unit: str = "q_nm^-1") -> IntegrationResult:
        """Azimuthally integrate one frame into I(q).

        Parameters
        ----------
        image
            Frame on the detector grid (raw counts or a denoised estimate).
        npt
            Number of q bins.
        sector
            ``(chi_min_deg, chi_max_deg)`` in pyFAI's chi convention (degrees, -180..180);
            None integrates the full ring.
        error_model
            ``None``, ``"poisson"`` (raw counts only) or ``"azimuthal"``.
        variance
            Per-pixel variance to propagate instead of an error model (for denoised frames).
        radial_range
            Optional ``(min, max)`` of the radial axis, in ``unit``.
        unit
            pyFAI radial unit: ``"q_nm^-1"`` (default) or e.g. ``"2th_deg"``; the result's
            ``q_nm`` then holds the bin centres in that unit.

        Returns
        -------
        IntegrationResult
        """
        image, variance = self._check(image, variance, error_model)
        image, variance, error_model = self._poisson(image, variance, error_model)
        result = self.geometry.integrator().integrate1d(
            image, int(npt), unit=unit, mask=self._mask_i8,
            correctSolidAngle=self.correct_solid_angle, error_model=error_model,
            variance=variance, azimuth_range=self._sector(sector),
            radial_range=radial_range, method=self.method)
        sigma = None
        if error_model is not None or variance is not None:
            sigma = np.asarray(result.sigma, dtype=np.float64)
        return IntegrationResult(q_nm=np.asarray(result.radial, dtype=np.float64),
                                 intensity=np.asarray(result.intensity, dtype=np.float64),
                                 sigma=sigma)

    def cake(self, image: np.ndarray, npt_rad: int = 500, npt_azim: int = 360, *,
             error_model: ErrorModel = None,
             variance: np.ndarray | None = None) -> CakeResult:
        """Regroup a frame on a (chi, q) grid with pyFAI's ``integrate2d``.

        Parameters
        ----------
        image
            Frame on the detector grid.
        npt_rad, npt_azim
            Number of q and chi bins.
        error_model, variance
            As for :meth:`integrate`.

        Returns
        -------
        CakeResult
        """
        image, variance = self._check(image, variance, error_model)
        image, variance, error_model = self._poisson(image, variance, error_model)
        result = self.geometry.integrator().integrate2d(
            image, int(npt_rad), int(npt_azim), unit="q_nm^-1", mask=self._mask_i8,
            correctSolidAngle=self.correct_solid_angle, error_model=error_model,
            variance=variance, method=self.method)
        empty = np.asarray(result.count) <= 0
        sigma = None
        if error_model is not None or variance is not None:
            sigma = np.where(empty, np.nan, np.asarray(result.sigma, dtype=np.float64))
        return CakeResult(q_nm=np.asarray(result.radial, dtype=np.float64),
                          chi_deg=np.asarray(result.azimuthal, dtype=np.float64),
                          intensity=np.where(empty, np.nan,
                                             np.asarray(result.intensity, dtype=np.float64)),
                          sigma=sigma)


_INTEGRATORS: dict[tuple, AzimuthalIntegration] = {}
_INTEGRATORS_LOCK = threading.Lock()
#: Most (geometry, mask) integrators :func:`integrator_for` keeps.
_MAX_INTEGRATORS = 16


def integrator_for(geometry: DetectorGeometry, mask: np.ndarray) -> AzimuthalIntegration:
    """One :class:`AzimuthalIntegration` per (geometry, mask), cached for the process (the
    live path integrates every frame of a scan with the same pair). Thread-safe."""
    key = (geometry, hashlib.sha1(np.packbits(mask).tobytes()).hexdigest())
    with _INTEGRATORS_LOCK:
        if key not in _INTEGRATORS:
            if len(_INTEGRATORS) > _MAX_INTEGRATORS:
                _INTEGRATORS.clear()
            _INTEGRATORS[key] = AzimuthalIntegration(geometry, mask)
        return _INTEGRATORS[key]
