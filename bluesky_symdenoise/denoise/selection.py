"""Choosing between denoisers without ground truth: a held-out binomial split."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.special import xlogy

__all__ = ["held_out_deviance"]


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
    rng = np.random.default_rng(seed)
    counts = np.round(frame).astype(np.int64).clip(0)
    half = rng.binomial(counts, 0.5)
    rest = (counts - half).astype(np.float64)
    rate = np.clip(np.asarray(denoise(half.astype(np.float32)), np.float64), 1e-6, None)
    rate, rest = rate[good], rest[good]
    return float(np.mean(rate - rest + xlogy(rest, rest / rate)))
