"""``denoise``: the one-call entry point for a scan already in memory."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from .config import DenoiseConfig
from .detector_noise import DetectorNoise, detector_noise

if TYPE_CHECKING:  # the engine imports torch: loaded on the first call, not on import
    from .engine import DenoiseResult

__all__ = ["denoise", "denoise_scan"]


def denoise(frames: np.ndarray, *, mask: np.ndarray | None = None,
            center: tuple[float, float] | None = None,
            poni: str | Path | dict | None = None, method: str = "auto",
            budget_s: float | None = None, device: str = "auto",
            pairs: tuple[np.ndarray, np.ndarray] | None = None,
            bad_pixels: Literal["raise", "mask"] = "raise",
            detector: str | DetectorNoise | dict | None = None,
            gain: float | None = None, read_noise: float | None = None) -> np.ndarray:
    """Denoise the raw frames of one scan.

    Parameters
    ----------
    frames
        ``(N, H, W)`` or ``(H, W)`` raw counts of one scan; frames may differ (in situ).
    mask
        Bool ``(H, W)``, True on bad pixels (gaps, beamstop, known defects).
    center
        Beam centre ``(row, col)`` in pixels (pixel centres at integers).
    poni
        pyFAI PONI file or dict; used for the beam centre when ``center`` is None.
    method
        ``"auto"`` (chosen per scan, see :class:`DenoiseConfig`), ``"symmetry"``,
        ``"thinning"``, ``"noise2sr"``, ``"supervised"``, ``"classical"``,
        ``"classical-nlm"``.
    budget_s
        Wall-time budget of the whole call in seconds; None for the default fine-tuning time
        (60 s on CPU, 20 s on GPU).
    device
        ``"auto"`` (CUDA if present, else CPU), ``"cpu"``, ``"cuda"``.
    pairs
        ``(low, high)`` paired exposures for ``method="supervised"``.
    bad_pixels
        NaN, inf or negative unmasked values: ``"raise"`` (default) or ``"mask"`` them.
        For an integrating detector negative values are ordinary data, never masked.
    detector
        ``"counting"`` (default: photon counts) or ``"integrating"`` (flat panel, CCD,
        CMOS: ADU, usually dark-subtracted), or a :class:`DetectorNoise`.
    gain, read_noise
        An integrating detector's ADU per photon and readout noise (ADU rms); either given
        makes the detector integrating. None: estimated from the scan's frames (at least
        two), recorded with their errors in the provenance (``"detector_noise"``).

    Returns
    -------
    numpy.ndarray
        Float32 expected counts (integrating: ADU, dark level as in the input), the shape
        of ``frames``; 0 on masked pixels; unmasked hot and dead pixels found in the data
        get the estimate from their neighbourhood.

    Raises
    ------
    InputError
        Wrong dimensions, mask shape mismatch, NaN or negative values (unless
        ``bad_pixels="mask"``), a centre off the detector.
    """
    return denoise_scan(frames, mask=mask, center=center, poni=poni, method=method,
                        budget_s=budget_s, device=device, pairs=pairs,
                        bad_pixels=bad_pixels, detector=detector, gain=gain,
                        read_noise=read_noise).denoised


def denoise_scan(frames: np.ndarray, *, mask: np.ndarray | None = None,
                 center: tuple[float, float] | None = None,
                 poni: str | Path | dict | None = None,
                 pairs: tuple[np.ndarray, np.ndarray] | None = None,
                 bad_pixels: Literal["raise", "mask"] = "raise",
                 config: DenoiseConfig | None = None,
                 detector: str | DetectorNoise | dict | None = None,
                 gain: float | None = None, read_noise: float | None = None,
                 **options) -> DenoiseResult:
    """Like :func:`denoise` but returns a :class:`DenoiseResult` with provenance.

    Parameters
    ----------
    frames, mask, center, poni, pairs, bad_pixels, detector, gain, read_noise
        As for :func:`denoise`.
    config
        A :class:`DenoiseConfig`; ``options`` override its fields.
    **options
        :class:`DenoiseConfig` fields (``method``, ``budget_s``, ``device``, ...).

    Returns
    -------
    DenoiseResult
        The denoised frames, the method that served them and why, and the provenance.

    Raises
    ------
    InputError
        As for :func:`denoise`.
    pydantic.ValidationError
        An unknown option or an invalid value.
    """
    from .engine import ScanDenoiser

    if detector is not None or gain is not None or read_noise is not None:
        base = config.detector if config is not None and detector is None else detector
        options["detector"] = detector_noise(base, gain=gain, read_noise=read_noise)
    denoiser = ScanDenoiser(config, **options)
    mask, gap_note = _mask_with_detector_gaps(frames, mask, poni)
    result = denoiser.run(frames, mask=mask, center=center, poni=poni, pairs=pairs,
                          bad_pixels=bad_pixels)
    if gap_note is not None:
        result.analysis.notes.insert(0, gap_note)  # the provenance's notes are this list
    return result


def _mask_with_detector_gaps(frames: np.ndarray, mask: np.ndarray | None,
                             poni: str | Path | dict | None
                             ) -> tuple[np.ndarray | None, str | None]:
    """The user's mask with the module gaps of the detector a PONI names (``Detector:
    Pilatus1M``) OR-ed in, and a note saying so; unchanged when the PONI names none. A PONI
    that cannot be read is left to the engine, which says why."""
    from ..geometry import DetectorGeometry, GeometryError, with_detector_mask

    shape = np.shape(frames)
    if poni is None or len(shape) not in (2, 3):
        return mask, None
    try:
        geometry = DetectorGeometry.from_poni(poni, shape=(int(shape[-2]), int(shape[-1])))
    except GeometryError:
        return mask, None
    try:
        return with_detector_mask(geometry, mask)
    except GeometryError as exc:
        return mask, f"module gaps not masked: {exc}"
