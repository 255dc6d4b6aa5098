"""Counting noise: turn an expectation into a detector frame, and split photons.

Photon-counting detectors (Pilatus, Eiger) give Poisson counts and no readout noise
(:func:`expose`). Integrating detectors (flat panels, CCD/CMOS) give a float frame in ADU:
gain × photons (spread by the scintillator's point spread) + offset + Gaussian readout
noise, usually with a measured dark subtracted (:func:`expose_integrating`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .defects import DetectorDefects

__all__ = ["binomial_thin", "blur_psf", "expose", "expose_integrating", "measure_dark",
           "psf_noise_factor"]


def expose(expectation: np.ndarray, *, rng: np.random.Generator, readout_sigma: float = 0.0,
           defects: DetectorDefects | None = None,
           saturation: float | None = None) -> np.ndarray:
    """Draw one noisy frame (or a stack) from an expectation.

    Parameters
    ----------
    expectation
        Expected counts, ``(..., rows, cols)``, non-negative.
    rng
        Random generator.
    readout_sigma
        Gaussian readout noise (counts). 0 models a photon-counting detector.
    defects
        Hot pixels count ``Poisson(defects.hot_rate)`` regardless of the scene; dead pixels
        read exactly 0. Broadcast over leading (frame) axes.
    saturation
        Counts are clipped to this value (after readout noise).

    Returns
    -------
    numpy.ndarray
        int32 counts when ``readout_sigma == 0``; float32 otherwise.
    """
    lam = np.asarray(expectation, dtype=np.float64)
    if np.any(lam < 0) or not np.all(np.isfinite(lam)):
        raise ValueError("expectation must be finite and non-negative")
    if defects is not None:
        lam = np.where(defects.hot, defects.hot_rate, lam)
    counts = rng.poisson(lam)
    if readout_sigma > 0:
        frame = counts.astype(np.float32)
        frame += rng.normal(0.0, readout_sigma, size=frame.shape).astype(np.float32)
    else:
        frame = counts.astype(np.int32)
    if saturation is not None:
        np.minimum(frame, np.asarray(saturation).astype(frame.dtype), out=frame)
    if defects is not None:
        frame[..., defects.dead] = 0
    return frame


def blur_psf(image: np.ndarray, psf_sigma: float) -> np.ndarray:
    """Spread an image by a scintillator's point spread: a normalised Gaussian kernel.

    Parameters
    ----------
    image
        ``(..., rows, cols)``; leading (frame) axes are not blurred.
    psf_sigma
        Standard deviation of the kernel in pixels; 0 returns the image unchanged (as
        float64).

    Returns
    -------
    numpy.ndarray
        float64, same shape. The kernel (``scipy.ndimage.gaussian_filter``, truncated at
        4 σ) sums to 1 and the edges reflect, so the total is kept.
    """
    image = np.asarray(image, dtype=np.float64)
    if psf_sigma < 0:
        raise ValueError(f"psf_sigma must be >= 0, got {psf_sigma!r}")
    if psf_sigma == 0 or image.ndim < 2:
        return image.copy()
    sigma = (0.0,) * (image.ndim - 2) + (float(psf_sigma),) * 2
    return ndimage.gaussian_filter(image, sigma=sigma, mode="reflect")


def psf_noise_factor(psf_sigma: float) -> float:
    """``Σ k²`` of the kernel of :func:`blur_psf`: photon variance over mean after the blur.

    1 without a point spread; for a blurred Poisson frame of a smooth expectation λ the
    per-pixel variance is ``λ·Σ k²`` (in photons²) while the mean stays λ.
    """
    if psf_sigma == 0:
        return 1.0
    radius = int(np.ceil(4.0 * psf_sigma)) + 1
    delta = np.zeros((2 * radius + 1, 2 * radius + 1))
    delta[radius, radius] = 1.0
    return float(np.sum(blur_psf(delta, psf_sigma) ** 2))


def measure_dark(shape: tuple[int, ...], *, rng: np.random.Generator, read_noise: float,
                 offset: float = 0.0, dark_frames: int = 16,
                 saturation: float | None = None) -> np.ndarray:
    """A measured dark: the mean of ``dark_frames`` frames taken without beam (ADU).

    Parameters
    ----------
    shape
        ``(rows, cols)`` of the detector.
    rng
        Random generator.
    read_noise
        Gaussian readout noise of one frame (ADU).
    offset
        Electronic offset (ADU).
    dark_frames
        Number of dark frames averaged; the dark keeps ``read_noise / sqrt(dark_frames)``
        of noise per pixel, a fixed pattern shared by every frame it is subtracted from.
    saturation
        Each dark frame is clipped to this value (ADU) before averaging.

    Returns
    -------
    numpy.ndarray
        float64 ``shape``.
    """
    if dark_frames < 1:
        raise ValueError(f"dark_frames must be >= 1, got {dark_frames!r}")
    if read_noise < 0:
        raise ValueError(f"read_noise must be >= 0, got {read_noise!r}")
    if saturation is None:
        # The mean of n Gaussian frames is one Gaussian of sigma / sqrt(n).
        noise = rng.normal(0.0, read_noise / np.sqrt(dark_frames), size=shape)
        return float(offset) + noise
    frames = float(offset) + rng.normal(0.0, read_noise, size=(dark_frames, *shape))
    return np.minimum(frames, float(saturation)).mean(axis=0)


def expose_integrating(expectation: np.ndarray, *, rng: np.random.Generator, gain: float,
                       read_noise: float, offset: float = 0.0, psf_sigma: float = 0.0,
                       dark_frames: int = 16, dark_subtracted: bool = True,
                       dark: np.ndarray | None = None,
                       defects: DetectorDefects | None = None,
                       saturation: float | None = None) -> np.ndarray:
    """Draw one frame (or a stack) of an integrating detector, in ADU.

    Photons ``~ Poisson(expectation)`` are spread by the scintillator's point spread
    (:func:`blur_psf`), converted at ``gain`` ADU per photon, and read out with an
    ``offset`` and Gaussian readout noise; a measured dark (offset plus its own readout
    noise, :func:`measure_dark`) is then subtracted, so negative values are ordinary.

    Parameters
    ----------
    expectation
        Expected photons per pixel, ``(..., rows, cols)``, non-negative.
    rng
        Random generator.
    gain
        ADU per photon, > 0.
    read_noise
        Gaussian readout noise per pixel and frame (ADU), >= 0.
    offset
        Electronic offset (ADU) added to every pixel of every frame.
    psf_sigma
        Point spread (pixels) of the scintillator; 0 for none. The blur makes the noise of
        neighbouring pixels correlated and lowers the per-pixel photon variance to
        ``Σ k²`` times the mean (:func:`psf_noise_factor`); the expectation of the frame is
        ``gain · blur_psf(expectation, psf_sigma)``.
    dark_frames
        Frames averaged into the measured dark when ``dark`` is None.
    dark_subtracted
        Subtract the measured dark (True) or return the raw ADU, offset included (False).
    dark
        A measured dark ``(rows, cols)`` in ADU (offset included) to subtract, e.g. from
        :func:`measure_dark`, to share one dark between calls as a scan does. None draws
        one per call (``offset`` plus ``read_noise / sqrt(dark_frames)`` noise per pixel),
        shared by every frame of the stack.
    defects
        Hot pixels read ``gain · Poisson(defects.hot_rate)`` (a leak after the
        scintillator: not blurred) regardless of the scene; dead pixels read exactly 0 in
        the returned frame. Broadcast over leading (frame) axes.
    saturation
        Raw ADU (offset included) are clipped to this value before the dark is
        subtracted.

    Returns
    -------
    numpy.ndarray
        float32 ADU, the shape of ``expectation``. Not quantised to integer ADU.
    """
    lam = np.asarray(expectation, dtype=np.float64)
    if np.any(lam < 0) or not np.all(np.isfinite(lam)):
        raise ValueError("expectation must be finite and non-negative")
    if lam.ndim < 2:
        raise ValueError(f"expectation must be (..., rows, cols), got shape {lam.shape}")
    if not gain > 0:
        raise ValueError(f"gain must be > 0 ADU per photon, got {gain!r}")
    if read_noise < 0:
        raise ValueError(f"read_noise must be >= 0, got {read_noise!r}")
    shape = lam.shape[-2:]
    if dark is not None and np.shape(dark) != shape:
        raise ValueError(f"dark shape {np.shape(dark)} does not match frames {shape}")
    photons = blur_psf(rng.poisson(lam), psf_sigma)
    if defects is not None:
        hot = photons[..., defects.hot]
        photons[..., defects.hot] = rng.poisson(defects.hot_rate, size=hot.shape)
    adu = float(gain) * photons + float(offset)
    if read_noise > 0:
        adu += rng.normal(0.0, read_noise, size=adu.shape)
    if saturation is not None:
        np.minimum(adu, float(saturation), out=adu)
    if dark_subtracted:
        if dark is None:
            dark = measure_dark(shape, rng=rng, read_noise=read_noise, offset=offset,
                                dark_frames=dark_frames, saturation=saturation)
        adu -= np.asarray(dark, dtype=np.float64)
    frame = adu.astype(np.float32)
    if defects is not None:
        frame[..., defects.dead] = 0
    return frame


def binomial_thin(counts: np.ndarray, p: float | np.ndarray,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split photon counts into two independent parts (binomial thinning).

    If ``counts ~ Poisson(λ)``, then ``part ~ Poisson(p·λ)`` and
    ``rest ~ Poisson((1-p)·λ)`` and the two are independent: two noisy copies of the same
    (scaled) expectation from a single frame.

    Parameters
    ----------
    counts
        Photon counts. Non-integer input (float frames, e.g. from an integrating detector
        or after dark subtraction) is first rounded to the nearest integer and negative
        values are set to 0; the split is then only approximately Poisson.
    p
        Probability that a photon goes to ``part``; scalar or broadcastable array in [0, 1].
    rng
        Random generator.

    Returns
    -------
    part, rest
        Integer arrays with ``part + rest`` equal to the (rounded) counts. Integer input
        keeps its dtype; float input gives int64.
    """
    p_arr = np.asarray(p, dtype=np.float64)
    if np.any((p_arr < 0) | (p_arr > 1)):
        raise ValueError(f"p must lie in [0, 1], got {p!r}")
    counts = np.asarray(counts)
    if np.issubdtype(counts.dtype, np.integer):
        n = np.maximum(counts, 0)
    else:
        n = np.maximum(np.rint(counts), 0).astype(np.int64)
    part = rng.binomial(n, p_arr).astype(n.dtype)
    return part, n - part
