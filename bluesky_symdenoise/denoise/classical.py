"""Classical fast mode: 180° averaging, variance stabilisation and BM3D / NLM.

This is the answer a beamline user already has, and a first-class mode of the product: on
textured powder it is the bar every learned denoiser must beat side by side (DESIGN.md §2).

The pipeline is

1. optionally average each pixel with its 180° partner about the beam centre, where the
   partner exists and the symmetry holds (``n_copies`` = 2 there, 1 elsewhere);
2. fill detector gaps so the patch-based denoiser does not see holes;
3. Anscombe transform of the Poisson count ``n * x`` (a Poisson(n λ) count), with the
   generalised transform when there is Gaussian readout noise;
4. BM3D (or NL-means) with unit noise in the stabilised domain;
5. exact unbiased inverse (Mäkitalo & Foi closed form), then division by ``n``.

Every denoiser here returns ``float32`` expected counts per pixel, on the input's absolute
scale, with masked pixels set to 0.0 (they are not estimates and must not be used).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
from scipy import ndimage

__all__ = [
    "anscombe",
    "inverse_anscombe",
    "fill_masked",
    "bm3d_poisson",
    "nlm_poisson",
    "gaussian_smooth",
    "symmetry_average",
    "classical_denoise",
    "ClassicalDenoiseError",
]

_SQRT_3_2 = np.sqrt(1.5)


class ClassicalDenoiseError(ValueError):
    """Input to a classical denoiser cannot be used (shape mismatch, unknown engine, ...)."""


# -- variance stabilisation -------------------------------------------------------------
def anscombe(x: np.ndarray | float, sigma: np.ndarray | float = 0.0) -> np.ndarray:
    """Generalised Anscombe transform of Poisson (+ Gaussian readout) counts.

    ``2 * sqrt(max(x + 3/8 + sigma**2, 0))``; for ``sigma = 0`` this is the classical
    Anscombe transform. The output has approximately unit variance.

    Parameters
    ----------
    x
        Counts (Poisson, gain 1), possibly with additive zero-mean Gaussian readout noise.
    sigma
        Standard deviation of the Gaussian readout noise in counts (scalar or per pixel).

    Returns
    -------
    numpy.ndarray
        Stabilised values, float64.
    """
    x = np.asarray(x, dtype=np.float64)
    sigma2 = np.square(np.asarray(sigma, dtype=np.float64))
    return 2.0 * np.sqrt(np.maximum(x + 0.375 + sigma2, 0.0))


def inverse_anscombe(d: np.ndarray | float, sigma: np.ndarray | float = 0.0) -> np.ndarray:
    """Exact unbiased inverse of the (generalised) Anscombe transform.

    Uses the closed-form approximation of Mäkitalo & Foi (IEEE TIP 2011)::

        1/4 D^2 + 1/4 sqrt(3/2) D^-1 - 11/8 D^-2 + 5/8 sqrt(3/2) D^-3 - 1/8

    which maps ``E[anscombe(Poisson(λ))]`` back to ``λ``. With readout noise the count plus
    ``sigma**2`` is treated as a Poisson variable of mean ``λ + sigma**2`` (the variance
    matches exactly, the shape approximately), so ``sigma**2`` is subtracted afterwards.

    Parameters
    ----------
    d
        Denoised values in the stabilised domain.
    sigma
        Readout noise used in the forward transform.

    Returns
    -------
    numpy.ndarray
        Expected counts, float64, clipped to be non-negative.
    """
    d = np.asarray(d, dtype=np.float64)
    # Below D ~ 2 sqrt(3/8) the expansion is meaningless; the clip keeps it finite and >= 0.
    d = np.maximum(d, 0.8)
    inv = (0.25 * d**2 + 0.25 * _SQRT_3_2 / d - 1.375 / d**2
           + 0.625 * _SQRT_3_2 / d**3 - 0.125)
    inv = inv - np.square(np.asarray(sigma, dtype=np.float64))
    return np.maximum(inv, 0.0)


# -- masks ------------------------------------------------------------------------------
def _as_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if mask is None:
        return np.zeros(shape, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape:
        raise ClassicalDenoiseError(f"mask shape {mask.shape} does not match image {shape}")
    return mask


def _as_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ClassicalDenoiseError(f"expected a 2-D frame, got shape {image.shape}")
    return image


def fill_masked(image: np.ndarray, mask: np.ndarray | None, *,
                sigma: float = 2.0) -> np.ndarray:
    """Fill masked pixels with a local estimate so patch denoisers see no holes.

    Masked pixels get a normalised Gaussian convolution of their valid neighbours; pixels
    deep inside large gaps (no valid pixel within ~3 ``sigma``) take the value of the
    nearest filled pixel. The filled values are placeholders, not estimates.

    Parameters
    ----------
    image
        2-D frame.
    mask
        True where a pixel is invalid (gap, dead, beamstop). ``None``: nothing to fill.
    sigma
        Width of the Gaussian in pixels.

    Returns
    -------
    numpy.ndarray
        float64 copy of ``image`` with masked pixels replaced.
    """
    image = _as_image(image)
    mask = _as_mask(mask, image.shape)
    out = image.copy()
    if not mask.any():
        return out
    valid = ~mask
    if not valid.any():
        out[:] = 0.0
        return out
    weight = ndimage.gaussian_filter(valid.astype(np.float64), sigma, mode="constant")
    total = ndimage.gaussian_filter(np.where(valid, image, 0.0), sigma, mode="constant")
    reached = weight > 1e-3
    smooth = np.divide(total, weight, out=np.zeros_like(total), where=reached)
    known = valid | reached
    out[mask] = smooth[mask]
    if not known.all():
        _, (rows, cols) = ndimage.distance_transform_edt(~known, return_indices=True)
        out[~known] = out[rows[~known], cols[~known]]
    return out


# -- VST denoisers ----------------------------------------------------------------------
def _prepare_counts(counts: np.ndarray, mask: np.ndarray | None,
                    n_copies: np.ndarray | float, readout_sigma: float):
    counts = _as_image(counts)
    mask = _as_mask(mask, counts.shape)
    n = np.asarray(n_copies, dtype=np.float64)
    if n.ndim not in (0, 2) or (n.ndim == 2 and n.shape != counts.shape):
        raise ClassicalDenoiseError(
            f"n_copies must be a scalar or an array of shape {counts.shape}, got {n.shape}")
    if np.any(n < 1):
        raise ClassicalDenoiseError("n_copies must be >= 1 everywhere")
    if readout_sigma < 0:
        raise ClassicalDenoiseError(f"readout_sigma must be >= 0, got {readout_sigma}")
    # n * mean of n copies is one Poisson(n λ) count; its readout variance is n sigma^2.
    sigma_n = readout_sigma * np.sqrt(n)
    z = anscombe(fill_masked(counts, mask) * n, sigma_n)
    return mask, n, sigma_n, z


def _finish(d: np.ndarray, mask: np.ndarray, n: np.ndarray, sigma_n) -> np.ndarray:
    est = inverse_anscombe(d, sigma_n) / n
    est[mask] = 0.0
    return est.astype(np.float32)


def bm3d_poisson(counts: np.ndarray, mask: np.ndarray | None = None, *,
                 readout_sigma: float = 0.0,
                 n_copies: np.ndarray | float = 1) -> np.ndarray:
    """Anscombe + BM3D + exact unbiased inverse: expected counts from one Poisson frame.

    Parameters
    ----------
    counts
        2-D frame of counts, or the average of ``n_copies`` independent copies.
    mask
        True where pixels are invalid; they are filled before BM3D and set to 0 in the output.
    readout_sigma
        Gaussian readout noise per copy, in counts (0 for photon-counting detectors).
    n_copies
        Number of independent Poisson copies averaged into each pixel: a scalar, or an array
        (1 where a pixel had no partner, 2 where it was averaged with its 180° partner).

    Returns
    -------
    numpy.ndarray
        float32 expected counts per pixel (per copy), masked pixels 0.0.
    """
    import bm3d

    mask, n, sigma_n, z = _prepare_counts(counts, mask, n_copies, readout_sigma)
    d = np.asarray(bm3d.bm3d(z, sigma_psd=1.0), dtype=np.float64)
    return _finish(d, mask, n, sigma_n)


def nlm_poisson(counts: np.ndarray, mask: np.ndarray | None = None, *,
                readout_sigma: float = 0.0,
                n_copies: np.ndarray | float = 1,
                h: float = 0.8) -> np.ndarray:
    """Anscombe + non-local means (scikit-image, fast mode) + exact unbiased inverse.

    Parameters
    ----------
    counts, mask, readout_sigma, n_copies
        As for :func:`bm3d_poisson`.
    h
        Filtering strength in units of the (unit) noise in the stabilised domain.

    Returns
    -------
    numpy.ndarray
        float32 expected counts per pixel, masked pixels 0.0.
    """
    from skimage.restoration import denoise_nl_means

    mask, n, sigma_n, z = _prepare_counts(counts, mask, n_copies, readout_sigma)
    d = denoise_nl_means(z, patch_size=5, patch_distance=6, h=h, sigma=1.0,
                         fast_mode=True, preserve_range=True)
    return _finish(np.asarray(d, dtype=np.float64), mask, n, sigma_n)


def gaussian_smooth(counts: np.ndarray, mask: np.ndarray | None = None,
                    sigma: float = 1.0) -> np.ndarray:
    """Normalised Gaussian convolution: masked pixels neither contribute nor are estimated.

    Parameters
    ----------
    counts
        2-D frame.
    mask
        True where pixels are invalid.
    sigma
        Gaussian width in pixels.

    Returns
    -------
    numpy.ndarray
        float32 smoothed counts, masked pixels 0.0.
    """
    counts = _as_image(counts)
    mask = _as_mask(mask, counts.shape)
    valid = (~mask).astype(np.float64)
    total = ndimage.gaussian_filter(counts * valid, sigma, mode="constant")
    weight = ndimage.gaussian_filter(valid, sigma, mode="constant")
    out = np.divide(total, weight, out=np.zeros_like(total), where=weight > 1e-12)
    out[mask] = 0.0
    return out.astype(np.float32)


# -- symmetry ---------------------------------------------------------------------------
def symmetry_average(counts: np.ndarray, center: tuple[float, float],
                     mask: np.ndarray | None = None,
                     valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Average each pixel with its 180° partner about the beam centre where that is allowed.

    Parameters
    ----------
    counts
        2-D frame of counts.
    center
        Beam centre ``(row, col)`` in pixels.
    mask
        True where pixels are invalid (their partner is then not used either).
    valid
        Optional symmetry-validity map: True where the 180° symmetry was found to hold.
        Pixels outside it keep their own value (``n_copies`` 1), so a one-sided feature is
        not halved.

    Returns
    -------
    average : numpy.ndarray
        float64 frame: ``(x + partner) / 2`` where paired, ``x`` elsewhere.
    n_copies : numpy.ndarray
        float64 frame, 2 where paired, 1 elsewhere.
    """
    from .symmetry import rotate180

    counts = _as_image(counts)
    mask = _as_mask(mask, counts.shape)
    partner, partner_valid = rotate180(counts, center, mask=mask)
    paired = np.asarray(partner_valid, dtype=bool) & ~mask
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != counts.shape:
            raise ClassicalDenoiseError(
                f"validity map shape {valid.shape} does not match image {counts.shape}")
        paired &= valid
    average = np.where(paired, 0.5 * (counts + np.asarray(partner, dtype=np.float64)), counts)
    n_copies = np.where(paired, 2.0, 1.0)
    return average, n_copies


def classical_denoise(counts: np.ndarray, *, mask: np.ndarray | None = None,
                      center: tuple[float, float] | None = None,
                      validity: np.ndarray | None = None,
                      engine: Literal["bm3d", "nlm"] = "bm3d",
                      readout_sigma: float = 0.0) -> np.ndarray:
    """The classical fast mode: optional 180° average, then a variance-stabilised denoiser.

    Parameters
    ----------
    counts
        2-D frame of counts.
    mask
        True where pixels are invalid (gaps, beamstop, dead/hot pixels).
    center
        Beam centre ``(row, col)``; when given, pixels are first averaged with their 180°
        partner where it is valid (and where ``validity`` is True).
    validity
        Optional map, True where the 180° symmetry holds.
    engine
        ``"bm3d"`` (best, ~seconds per 256² frame) or ``"nlm"`` (faster).
    readout_sigma
        Gaussian readout noise in counts.

    Returns
    -------
    numpy.ndarray
        float32 expected counts per pixel, masked pixels 0.0.
    """
    if engine not in ("bm3d", "nlm"):
        raise ClassicalDenoiseError(f"unknown engine {engine!r}: use 'bm3d' or 'nlm'")
    counts = _as_image(counts)
    if center is not None:
        counts, n_copies = symmetry_average(counts, center, mask, validity)
    else:
        n_copies = np.ones(counts.shape)
    denoiser = bm3d_poisson if engine == "bm3d" else nlm_poisson
    if engine == "nlm" and counts.size > LARGE_FRAME_PIXELS:
        return _in_bands(denoiser, counts, _as_mask(mask, counts.shape), n_copies,
                         readout_sigma)
    return denoiser(counts, mask, readout_sigma=readout_sigma, n_copies=n_copies)


#: Frames above this many pixels go through the non-local means in bands of rows
#: (:data:`BAND_ROWS`, with a halo of :data:`BAND_HALO` rows): a band's transients, not
#: the frame's (the fill of masked pixels and the means are local; a placeholder deep in
#: a wide gap may differ, and it is masked in the output).
LARGE_FRAME_PIXELS = 1 << 21
BAND_ROWS = 256
#: The means' reach (patch distance 6 + half a patch 2) and the fill's (3 sigma = 6),
#: with margin.
BAND_HALO = 24


def _in_bands(denoiser: Callable[..., np.ndarray], counts: np.ndarray, mask: np.ndarray,
              n_copies: np.ndarray, readout_sigma: float) -> np.ndarray:
    from .symmetry import row_bands

    out = np.zeros(counts.shape, np.float32)
    for own, read, kept in row_bands(counts.shape[0], BAND_HALO, BAND_ROWS):
        band = denoiser(counts[read], mask[read], readout_sigma=readout_sigma,
                        n_copies=np.asarray(n_copies)[read] if np.ndim(n_copies) == 2
                        else n_copies)
        out[own] = band[kept]
    return out
