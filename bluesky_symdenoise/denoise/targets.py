"""Training pairs: inputs and an *independent* noisy target of the same expectation.

Every pair follows Noise2Noise: the target's noise is independent of everything the network
sees, so minimising a Poisson loss against it learns the expectation.

* :class:`ThinningPairs` (self-supervised, any photon-counting frame): counts ``y`` are split
  into ``x1 ~ Binomial(y, p)`` and ``x2 = y - x1``, two independent Poisson frames. Inputs are
  built from ``x1`` alone (its 180° partner and thinned neighbouring frames included); the
  target is ``x2``, plus ``x2``'s 180° partner where symmetry holds (the symmetry partner as a
  second independent target, as in Zhou et al. 2024).
* :class:`FramePairs` (self-supervised, frames whose neighbouring pixels share noise: an
  integrating detector's point spread): a frame in, a neighbouring frame of the scan (and
  its 180° partner) out. Thinning splits a photon between input and target only where it
  landed; a point spread puts the same photon into the input's neighbouring pixels, so the
  two halves are not independent there, and a network trained on them learns to keep part
  of the noise. Two exposures share no photon.
* :class:`SubsamplingPairs` (Noise2SR, zero-shot from one frame): keep one random pixel of
  every 2×2 cell, predict the held-out pixels.
* :class:`SupervisedPairs` (Oppliger et al. 2024): a short exposure in, the long one out.
* :class:`TruthPairs` (pre-training on simulated scenes): noisy frame in, expectation out.

Each ``sample`` returns a :class:`Batch`; the loss compares ``copies * scale * output`` with
``target``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .channels import (
    ChannelContext,
    input_channels,
    mean_level,
    partner_values,
    ring_means,
    window_channels,
    window_partner_values,
)

__all__ = ["Batch", "FramePairs", "SubsamplingPairs", "SupervisedPairs", "ThinningPairs",
           "TruthPairs", "neighbour_mean", "random_crop_origin"]


@dataclass
class Batch:
    """One training batch (numpy, float32).

    inputs ``(B, C, P, P)``; target ``(B, 1, P, P)`` summed counts of ``copies`` independent
    copies; copies ``(B, 1, P, P)`` how many copies were summed (0 = ignore pixel); scale
    ``(B, 1, 1, 1)`` expected counts of one copy per unit of network output.
    """

    inputs: np.ndarray
    target: np.ndarray
    copies: np.ndarray
    scale: np.ndarray


def neighbour_mean(frames: np.ndarray, index: int) -> np.ndarray | None:
    """Mean of frames ``index-1`` and ``index+1`` that exist, or None for a single frame."""
    picks = [i for i in (index - 1, index + 1) if 0 <= i < len(frames)]
    if not picks:
        return None
    return np.mean([frames[i] for i in picks], axis=0)


def neighbour_frames(frames: np.ndarray, index: int) -> list[np.ndarray]:
    """Frames ``index-1`` and ``index+1`` that exist (those :func:`neighbour_mean`
    averages)."""
    return [frames[i] for i in (index - 1, index + 1) if 0 <= i < len(frames)]


def random_crop_origin(shape: tuple[int, int], patch: int, rng: np.random.Generator
                       ) -> tuple[int, int]:
    return (int(rng.integers(0, max(shape[0] - patch, 0) + 1)),
            int(rng.integers(0, max(shape[1] - patch, 0) + 1)))


def _crop(array: np.ndarray, origin: tuple[int, int], patch: int) -> np.ndarray:
    """Crop the last two axes to ``patch``, zero-padding frames smaller than it."""
    r, c = origin
    out = array[..., r:r + patch, c:c + patch]
    pad_r, pad_c = patch - out.shape[-2], patch - out.shape[-1]
    if pad_r or pad_c:
        widths = [(0, 0)] * (out.ndim - 2) + [(0, pad_r), (0, pad_c)]
        out = np.pad(out, widths)
    return out


def _stack(items: list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]) -> Batch:
    return Batch(inputs=np.stack([i[0] for i in items]).astype(np.float32),
                 target=np.stack([i[1] for i in items])[:, None].astype(np.float32),
                 copies=np.stack([i[2] for i in items])[:, None].astype(np.float32),
                 scale=np.asarray([i[3] for i in items], np.float32)[:, None, None, None])


#: A thinned frame gives one training patch per this many pixels (at least two).
PIXELS_PER_PATCH = 1 << 17
#: Above this many pixels a frame's training channels are built in its patches only.
WINDOWED_ABOVE = 1 << 20


def _integer_counts(frame: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(frame, 0, None)).astype(np.int64)


def _window_items(ctx: ChannelContext, source: np.ndarray, target_frame: np.ndarray, *,
                  level: float, means: tuple[np.ndarray | None, ...], scale: float,
                  neighbours: Callable[[tuple[slice, slice]], np.ndarray | None],
                  patches: int, patch: int, rng: np.random.Generator) -> list:
    """``patches`` random training patches: the input channels of ``source`` in a window
    (:func:`~.channels.window_channels`, its neighbour channel from
    ``neighbours(region)``), the target ``target_frame`` there plus its 180° partners
    where symmetry holds, the number of copies summed, and ``scale``."""
    good = ctx.good
    partnered = ctx.partner is not None and ctx.symmetric.any()
    height, width = good.shape
    items = []
    for _ in range(patches):
        row, col = random_crop_origin(good.shape, patch, rng)
        window = (row, col, min(patch, height - row), min(patch, width - col))
        region = (slice(row, row + window[2]), slice(col, col + window[3]))
        channels = window_channels(source, ctx, window, level=level,
                                   neighbours=neighbours(region), means=means)
        here = good[region]
        target = np.where(here, target_frame[region], 0).astype(np.float32)
        copies = here.astype(np.float32)
        if partnered:
            target = target + window_partner_values(target_frame, ctx, window)
            copies = copies + ctx.symmetric[region]
        items.append((_crop(channels, (0, 0), patch), _crop(target, (0, 0), patch),
                      _crop(copies, (0, 0), patch), scale))
    return items


def _sample_frames(one_frame: Callable[[int, int, int], list], shape: tuple[int, ...],
                   batch_size: int, patch: int, rng: np.random.Generator) -> Batch:
    """``batch_size`` patches from frames drawn at random from a ``(N, H, W)`` scan,
    ``one_frame(index, patches, patch)`` giving a frame's: two per frame, more on a large
    detector (one per :data:`PIXELS_PER_PATCH` pixels)."""
    items: list = []
    per_frame = max(2, int(np.prod(shape[1:])) // PIXELS_PER_PATCH)
    while len(items) < batch_size:
        index = int(rng.integers(shape[0]))
        items += one_frame(index, min(per_frame, batch_size - len(items)), patch)
    return _stack(items)


class ThinningPairs:
    """Self-supervised pairs by binomial thinning, with symmetry and neighbouring frames.

    Parameters
    ----------
    frames
        ``(N, H, W)`` counts of one scan (bad pixels zeroed).
    ctx
        The scan's channel context (good pixels, symmetry).
    p_range
        Thinning probability range for the input part.
    use_neighbours
        Feed thinned neighbouring frames as a channel (static or slowly changing samples).
    seed
        Random seed.
    """

    def __init__(self, frames: np.ndarray, ctx: ChannelContext, *,
                 p_range: tuple[float, float] = (0.5, 0.9), use_neighbours: bool = True,
                 seed: int = 0) -> None:
        # int32: whole counts of a short exposure; half the memory of int64 on 4 Mpx frames.
        self.counts = np.stack([np.minimum(_integer_counts(f), np.iinfo(np.int32).max
                                           ).astype(np.int32) for f in frames])
        self.ctx = ctx
        self.p_range = p_range
        self.use_neighbours = use_neighbours and len(frames) > 1
        self.rng = np.random.default_rng(seed)

    def _one_frame(self, index: int, patches: int, patch: int):
        if self.counts[0].size > WINDOWED_ABOVE:
            return self._one_large_frame(index, patches, patch)
        rng = self.rng
        p = float(rng.uniform(*self.p_range))
        picks = [index]
        if self.use_neighbours:
            picks += [i for i in (index - 1, index + 1) if 0 <= i < len(self.counts)]
        thinned = {i: rng.binomial(self.counts[i], p) for i in picks}
        x1 = thinned[index]
        x2 = self.counts[index] - x1
        neighbours = None
        if self.use_neighbours:
            neighbours = np.mean([thinned[i] for i in picks[1:]], axis=0)
        good = self.ctx.good
        channels, level = input_channels(x1.astype(np.float32), self.ctx, neighbours)
        target = np.where(good, x2, 0).astype(np.float32)
        copies = good.astype(np.float32)
        if self.ctx.partner is not None and self.ctx.symmetric.any():
            target = target + partner_values(x2.astype(np.float32), self.ctx)
            copies = copies + self.ctx.symmetric
        # One copy of the target has expectation (1-p)/p times that of x1 = level * output.
        scale = level * (1.0 - p) / p
        items = []
        for _ in range(patches):
            origin = random_crop_origin(good.shape, patch, rng)
            items.append((_crop(channels, origin, patch), _crop(target, origin, patch),
                          _crop(copies, origin, patch), scale))
        return items

    def _one_large_frame(self, index: int, patches: int, patch: int):
        """:meth:`_one_frame` for a large detector: the frame is thinned whole (its partner
        pixels and ring means need it), but channels and targets are built in the patches
        only, so a step holds a few bytes a pixel, not the full channel stack."""
        rng = self.rng
        p = float(rng.uniform(*self.p_range))
        counts = self.counts[index]
        x1 = rng.binomial(counts, p).astype(np.float32)
        good = self.ctx.good
        x1[~good] = 0.0
        level = mean_level(x1, good)
        means = ring_means(x1, self.ctx)
        x2 = counts - x1  # float32, whole counts
        picks = ([i for i in (index - 1, index + 1) if 0 <= i < len(self.counts)]
                 if self.use_neighbours else [])

        def thinned_neighbours(region: tuple[slice, slice]) -> np.ndarray | None:
            return (np.mean([rng.binomial(self.counts[i][region], p) for i in picks],
                            axis=0) if picks else None)

        return _window_items(self.ctx, x1, x2, level=level, means=means,
                             scale=level * (1.0 - p) / p, neighbours=thinned_neighbours,
                             patches=patches, patch=patch, rng=rng)

    def sample(self, batch_size: int, patch: int) -> Batch:
        """Draw ``batch_size`` random patches: two per thinned frame, more on a large
        detector (one per :data:`PIXELS_PER_PATCH` pixels), whose frames give many
        far-apart patches per thinning and cost a second or more each to thin."""
        return _sample_frames(self._one_frame, self.counts.shape, batch_size, patch, self.rng)


class FramePairs:
    """Self-supervised pairs across frames (Noise2Noise): a frame in, a neighbouring one out.

    Valid under any zero-mean noise independent between exposures, spatially correlated
    included, for frames of one expectation (a static or slowly changing sample: the
    engine uses it only where the noise is correlated, see
    :class:`~.detector_noise.NoiseCalibration`). The input is the whole frame, at the dose
    the network serves; the other neighbouring frame, if any, is the neighbour channel.
    The target is the neighbouring frame's value plus its 180° partner's where symmetry
    holds. Targets are not rounded or clipped: the Poisson loss is linear in them, so a
    negative value (readout noise) keeps their mean right.

    Parameters
    ----------
    frames
        ``(N, H, W)`` photon-equivalent frames of one scan (bad pixels zeroed), ``N >= 2``.
    ctx
        The scan's channel context (good pixels, symmetry).
    use_neighbours
        Feed the other neighbouring frame as a channel.
    seed
        Random seed.
    """

    def __init__(self, frames: np.ndarray, ctx: ChannelContext, *,
                 use_neighbours: bool = True, seed: int = 0) -> None:
        if len(frames) < 2:
            raise ValueError("FramePairs needs at least two frames")
        self.frames = np.asarray(frames, np.float32)
        self.ctx = ctx
        self.use_neighbours = use_neighbours
        self.rng = np.random.default_rng(seed)

    def _one_frame(self, index: int, patches: int, patch: int):
        rng, good = self.rng, self.ctx.good
        near = [i for i in (index - 1, index + 1) if 0 <= i < len(self.frames)]
        target_index = int(rng.choice(near))
        other = [i for i in near if i != target_index] if self.use_neighbours else []
        frame = np.where(good, self.frames[index], 0.0).astype(np.float32)
        target_frame = np.where(good, self.frames[target_index], 0.0).astype(np.float32)
        level = mean_level(frame, good)

        def other_frame(region: tuple[slice, slice]) -> np.ndarray | None:
            return self.frames[other[0]][region] if other else None

        return _window_items(self.ctx, frame, target_frame, level=level,
                             means=ring_means(frame, self.ctx), scale=level,
                             neighbours=other_frame, patches=patches, patch=patch, rng=rng)

    def sample(self, batch_size: int, patch: int) -> Batch:
        """Draw ``batch_size`` random patches, two per frame drawn (more on a large
        detector, as :meth:`ThinningPairs.sample`)."""
        return _sample_frames(self._one_frame, self.frames.shape, batch_size, patch, self.rng)


class SupervisedPairs:
    """Low-count inputs with high-count targets of the same sample (Oppliger et al. 2024).

    Parameters
    ----------
    low, high
        ``(N, H, W)`` paired short and long exposures.
    ctx
        Channel context built from the low-count scan.
    exposure_ratio
        ``t_high / t_low``; estimated from the total counts when None.
    """

    def __init__(self, low: np.ndarray, high: np.ndarray, ctx: ChannelContext, *,
                 exposure_ratio: float | None = None, seed: int = 0) -> None:
        if low.shape != high.shape:
            raise ValueError(f"paired frames differ in shape: {low.shape} vs {high.shape}")
        self.low, self.high, self.ctx = low, high, ctx
        good = ctx.good
        if exposure_ratio is None:
            exposure_ratio = float(high[:, good].sum() / max(low[:, good].sum(), 1.0))
        self.exposure_ratio = exposure_ratio
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size: int, patch: int) -> Batch:
        items = []
        for _ in range(batch_size):
            i = int(self.rng.integers(len(self.low)))
            channels, level = input_channels(self.low[i], self.ctx,
                                             neighbour_mean(self.low, i))
            origin = random_crop_origin(self.ctx.good.shape, patch, self.rng)
            items.append((_crop(channels, origin, patch),
                          _crop(np.where(self.ctx.good, self.high[i], 0), origin, patch),
                          _crop(self.ctx.good.astype(np.float32), origin, patch),
                          level * self.exposure_ratio))
        return _stack(items)


class TruthPairs:
    """Noisy simulated frames in, their noise-free expectation out (pre-training only).

    Parameters
    ----------
    noisy, truth
        ``(N, H, W)`` noisy frames and expectations.
    ctx
        Channel context of the simulated scan.
    """

    def __init__(self, noisy: np.ndarray, truth: np.ndarray, ctx: ChannelContext, *,
                 use_neighbours: bool = True, seed: int = 0) -> None:
        self.noisy, self.truth, self.ctx = noisy, truth, ctx
        self.use_neighbours = use_neighbours
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size: int, patch: int) -> Batch:
        items = []
        for _ in range(batch_size):
            i = int(self.rng.integers(len(self.noisy)))
            nb = neighbour_mean(self.noisy, i) if self.use_neighbours else None
            channels, level = input_channels(self.noisy[i], self.ctx, nb)
            origin = random_crop_origin(self.ctx.good.shape, patch, self.rng)
            items.append((_crop(channels, origin, patch),
                          _crop(np.where(self.ctx.good, self.truth[i], 0), origin, patch),
                          _crop(self.ctx.good.astype(np.float32), origin, patch), level))
        return _stack(items)


SUBSAMPLING_CHANNELS = 4


def subsampled_channels(frame: np.ndarray, good: np.ndarray, keep: np.ndarray,
                        level: float) -> np.ndarray:
    """Noise2SR input channels, normalised by ``level``.

    0: a smooth full-resolution interpolation of the kept pixels (normalised convolution,
    σ = 1 px): the network starts from it and learns the correction (residual); 1: kept
    pixels only (others 0); 2: the kept-pixel map; 3: log10 level.
    """
    kept = keep & good
    sparse = np.where(kept, frame, 0.0)
    num = ndimage.gaussian_filter(sparse, 1.0, mode="constant")
    den = ndimage.gaussian_filter(kept.astype(np.float64), 1.0, mode="constant")
    out = np.zeros((SUBSAMPLING_CHANNELS,) + frame.shape, np.float32)
    out[0] = np.where(den > 1e-3, num / np.maximum(den, 1e-3), 0.0) / level
    out[1] = sparse / level
    out[2] = kept
    out[3] = np.log10(level)
    return out


def random_cell_keep(shape: tuple[int, int], rng: np.random.Generator,
                     stride: int = 2) -> np.ndarray:
    """Keep one random pixel in each ``stride × stride`` cell (pixel-unshuffle sampling)."""
    cells = (-(-shape[0] // stride), -(-shape[1] // stride))
    choice = rng.integers(stride * stride, size=cells)
    keep = np.zeros((cells[0] * stride, cells[1] * stride), bool)
    for k in range(stride * stride):
        dr, dc = divmod(k, stride)
        keep[dr::stride, dc::stride] = choice == k
    return keep[:shape[0], :shape[1]]


class SubsamplingPairs:
    """Noise2SR pairs from single frames: kept pixels in, held-out pixels as target."""

    def __init__(self, frames: np.ndarray, good: np.ndarray, *, seed: int = 0) -> None:
        self.frames, self.good = frames, good
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size: int, patch: int) -> Batch:
        items = []
        for _ in range(batch_size):
            i = int(self.rng.integers(len(self.frames)))
            frame = self.frames[i]
            level = mean_level(frame, self.good)
            keep = random_cell_keep(frame.shape, self.rng)
            channels = subsampled_channels(frame, self.good, keep, level)
            held_out = self.good & ~keep
            origin = random_crop_origin(frame.shape, patch, self.rng)
            items.append((_crop(channels, origin, patch),
                          _crop(np.where(held_out, frame, 0), origin, patch),
                          _crop(held_out.astype(np.float32), origin, patch), level))
        return _stack(items)
