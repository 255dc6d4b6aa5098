"""Counting noise: turn an expectation into a detector frame, and split photons.

Photon-counting detectors (Pilatus, Eiger) give Poisson counts and no readout noise;
integrating detectors add Gaussian readout noise, so their frames are float.
"""

from __future__ import annotations

import numpy as np

from .defects import DetectorDefects

__all__ = ["binomial_thin", "expose"]


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
