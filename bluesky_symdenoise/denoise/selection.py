"""Choosing between denoisers without ground truth: a held-out binomial split.

A frame of Poisson counts splits into two independent halves with the same expectation
(binomial thinning): a denoiser sees one half and is scored against the other. The
deviance compares denoisers over the whole frame (:func:`held_out_deviance`); the squared
error, band by band of intensity, gives the mix of two denoisers that the data favour
where each is better (:func:`held_out_blend`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import xlogy

__all__ = ["BLEND_BAND_EDGES", "BLEND_SNAP", "BlendWeights", "binomial_split", "held_out_blend",
           "held_out_deviance", "intensity_bands", "mean_squared_error", "poisson_deviance"]

#: Intensity bands of :func:`held_out_blend`, in multiples of the frame's mean counts.
BLEND_BAND_EDGES: tuple[float, ...] = (4.0, 32.0)
#: Band weights at or above this are taken as 1 (see :func:`held_out_blend`).
BLEND_SNAP = 0.95


def held_out_deviance(denoise: Callable[[np.ndarray], np.ndarray], frame: np.ndarray,
                      good: np.ndarray, seed: int = 1) -> float:
    """Poisson deviance of one half of a binomial split against the other half's estimate.

    The frame's counts are split into two independent Poisson halves; ``denoise`` sees one
    and its estimate is scored against the other. Both halves have the same expectation, so
    a lower value means a better estimate of it: an unbiased way to compare denoisers on the
    scan itself.

    Parameters
    ----------
    denoise
        Maps a frame of counts to its estimated expectation.
    frame
        ``(H, W)`` counts (rounded to whole photons for the split).
    good
        Pixels to score.
    seed
        Seed of the split (use the same one for every denoiser compared).
    """
    half, rest = binomial_split(frame, seed)
    rate = np.asarray(denoise(half.astype(np.float32)), np.float64)
    return poisson_deviance(rate[good], rest[good])


def binomial_split(frame: np.ndarray, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Two independent Poisson halves of a frame of counts (rounded to whole photons)."""
    rng = np.random.default_rng(seed)
    counts = np.round(frame).astype(np.int64).clip(0)
    half = rng.binomial(counts, 0.5)
    return half.astype(np.float64), (counts - half).astype(np.float64)


def poisson_deviance(rate: np.ndarray, counts: np.ndarray) -> float:
    """Mean Poisson deviance of ``counts`` against expected ``rate``."""
    rate = np.clip(np.asarray(rate, np.float64), 1e-6, None)
    return float(np.mean(rate - counts + xlogy(counts, counts / rate)))


def mean_squared_error(estimate: np.ndarray, other: np.ndarray) -> float:
    """Mean squared difference of an estimate from an independent noisy copy: the held-out
    score for noise that is not Poisson (a lower value is a better estimate of the mean
    under any zero-mean noise independent of the estimate)."""
    return float(np.mean((np.asarray(estimate, np.float64) - np.asarray(other, np.float64))
                         ** 2))


@dataclass(frozen=True)
class BlendWeights:
    """Weight of the first of two estimates per intensity band (the second gets the rest).

    Attributes
    ----------
    edges
        Band edges in multiples of the frame's mean counts.
    weights
        One weight in [0, 1] per band (``len(edges) + 1``).
    pixels
        Scored pixels per band.
    """

    edges: tuple[float, ...]
    weights: tuple[float, ...]
    pixels: tuple[int, ...]

    @property
    def first_only(self) -> bool:
        """Whether the first estimate is used alone everywhere."""
        return all(w >= 1.0 for w in self.weights)

    def mix(self, first: np.ndarray, second: np.ndarray, good: np.ndarray,
            kept: np.ndarray | None = None) -> np.ndarray:
        """``w·first + (1 - w)·second`` with each pixel's band weight (bands as in
        :func:`held_out_blend`, from these two estimates). ``kept``: per pixel, the share
        of ``first`` that ``second`` does not replace (its weight becomes
        ``w + (1 - w)·kept``)."""
        first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
        w = np.asarray(self.weights, np.float64)[intensity_bands(first, second, good,
                                                                 self.edges)]
        if kept is not None:
            w = w + (1.0 - w) * np.clip(kept, 0.0, 1.0)
        return w * first + (1.0 - w) * second

    def summary(self) -> dict:
        """JSON-safe description for provenance."""
        return {"band_edges_x_mean": list(self.edges),
                "weights": [round(w, 3) for w in self.weights], "pixels": list(self.pixels)}


def intensity_bands(first: np.ndarray, second: np.ndarray, good: np.ndarray,
                    edges: tuple[float, ...]) -> np.ndarray:
    """Band index of each pixel: the two estimates' mean against ``edges`` × its mean over
    ``good`` (scale-free, so a half frame and the whole frame band alike)."""
    level = 0.5 * (np.asarray(first, np.float64) + np.asarray(second, np.float64))
    mean_level = float(level[good].mean()) if good.any() else 1.0
    return np.digitize(level / max(mean_level, 1e-12), edges)


def held_out_blend(first: np.ndarray, second: np.ndarray, rest: np.ndarray,
                   good: np.ndarray, *, edges: tuple[float, ...] = BLEND_BAND_EDGES,
                   min_pixels: int = 50, snap: float = BLEND_SNAP,
                   scored: np.ndarray | None = None) -> BlendWeights:
    """Per intensity band, the mix of two estimates closest to the held-out half.

    ``first`` and ``second`` estimate the expectation of one half of a binomial split and
    ``rest`` is the other half: it is independent of both, so the squared error against it
    is the estimate's squared error plus a constant, and the weight minimising it (closed
    form, clipped to [0, 1]) is the data's choice of mix for that band. Bands are decided by
    the two estimates' mean (the expected counts, not the noisy ones); a band with fewer
    than ``min_pixels`` pixels keeps the first estimate.

    Parameters
    ----------
    first, second
        ``(H, W)`` estimates from the same half frame.
    rest
        ``(H, W)`` the other half's counts.
    good
        Pixels to score (and whose mean level scales the band edges).
    edges
        Band edges in multiples of the mean expected counts.
    min_pixels
        Fewest pixels a band needs for its own weight.
    snap
        Weights at or above it become 1: the first estimate alone (a weight that close to
        1 is within the split's noise, and the second estimate need not be computed).
    scored
        The pixels of ``good`` the mix will act on, if not all (the rest keep the first
        estimate whatever the weights): only they fit the weights; the band edges still
        scale with the mean level over ``good``, as :meth:`BlendWeights.mix` takes them.
    """
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    bands = intensity_bands(first, second, good, edges)
    scored = good if scored is None else good & scored
    weights, pixels = [], []
    for band in range(len(edges) + 1):
        on = scored & (bands == band)
        pixels.append(int(on.sum()))
        diff = (first - second)[on]
        spread = float(np.sum(diff ** 2))
        if on.sum() < min_pixels or spread <= 0:
            weights.append(1.0)
            continue
        w = float(np.sum((rest[on] - second[on]) * diff)) / spread
        weights.append(1.0 if w >= snap else float(np.clip(w, 0.0, 1.0)))
    return BlendWeights(edges=tuple(edges), weights=tuple(weights), pixels=tuple(pixels))
