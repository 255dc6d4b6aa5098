"""Applying a trained network to whole frames: padding, flips, batches, tiles, OOM fallback.

A frame larger than ``tile`` pixels a side is run through the network in tiles: each tile's
core is computed from a window :data:`TILE_MARGIN` pixels wider on every side, which covers
the network's receptive field, and the windows start on the network's pooling grid, so the
tiled result equals the whole-frame one (to float rounding) while the activations held at
once are those of one window (about 500 bytes a pixel for the shipped networks on a CPU).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from .device import ComputePlan, OutOfMemoryFallback, autocast, compute_plan, move_model

__all__ = ["TILE_MARGIN", "predict_rates", "tile_windows"]

#: Pixels of context around each tile's core: more than the receptive-field radius of the
#: depth-3 U-Net (about 50 px: two 3x3 convolutions at each of four scales and back), and a
#: multiple of its pooling factor (8).
TILE_MARGIN = 64

# Flips used for test-time averaging; the network is applied to each and flipped back.
_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def predict_rates(model: torch.nn.Module, inputs: Sequence[np.ndarray],
                  levels: Sequence[float], *, device: torch.device, flips: int = 2,
                  batch_size: int | None = None, mixed_precision: bool = True,
                  events: list[str] | None = None,
                  plan: ComputePlan | None = None, tile: int | None = None) -> np.ndarray:
    """Expected counts for a list of frames' input channels.

    Parameters
    ----------
    model
        A trained :class:`~bluesky_symdenoise.denoise.network.RateUNet`.
    inputs
        ``(C, H, W)`` channel stacks, one per frame.
    levels
        Normalisation level of each stack (output is multiplied by it).
    flips
        Test-time averaging over this many flips (1-4).
    batch_size
        Frames per forward pass (default: the plan's); halved on CUDA out-of-memory, then
        CPU is used.
    events
        Fallbacks are appended here.
    plan
        bf16 / channels-last / batch choices; default
        :func:`~bluesky_symdenoise.denoise.device.compute_plan` of ``device``.
    tile
        Largest tile core (pixels a side, rounded down to the pooling factor); frames larger
        than it go through the network tile by tile (:func:`tile_windows`). None: whole
        frames.

    Returns
    -------
    numpy.ndarray
        ``(N, H, W)`` float32 expected counts.
    """
    events = events if events is not None else []
    plan = plan or compute_plan(device, mixed_precision)
    multiple = 2 ** getattr(model, "depth", 3)
    results: list[np.ndarray] = []

    def move_to(new_device: torch.device) -> None:
        nonlocal plan
        plan = compute_plan(new_device)
        move_model(model, new_device, plan)

    fallback = OutOfMemoryFallback("inference", batch_size or plan.inference_batch, device,
                                   events, on_device_change=move_to)
    fallback.place(lambda: move_model(model, device, plan))
    model.eval()
    index = 0
    flip_set = _FLIPS[:max(1, min(flips, 4))]
    while index < len(inputs):
        chunk = np.stack(inputs[index:index + fallback.batch_size])
        try:
            rates = _forward_tiled(model, chunk, fallback.device, flip_set, multiple, plan,
                                   tile)
        except Exception as exc:
            fallback.recover(exc)
            continue
        for k, rate in enumerate(rates):
            results.append(rate * np.float32(levels[index + k]))
        index += len(chunk)
    return np.stack(results).astype(np.float32)


def tile_windows(shape: tuple[int, int], tile: int, multiple: int = 8
                 ) -> list[tuple[slice, slice, slice, slice]]:
    """How a frame of ``shape`` is cut into tiles of at most ``tile`` pixels a side.

    Returns, per tile, ``(window_rows, window_cols, core_rows, core_cols)``: the window run
    through the network (the core plus :data:`TILE_MARGIN` on each side, clipped to the
    frame) and where the core lies within the window's output. Window origins are multiples
    of ``multiple`` (the network's pooling factor), as the whole frame's grid is.
    """
    step = max(multiple, tile - tile % multiple)
    margin = TILE_MARGIN - TILE_MARGIN % multiple

    def spans(length: int) -> list[tuple[slice, slice]]:
        out = []
        for start in range(0, length, step):
            stop = min(start + step, length)
            lo, hi = max(0, start - margin), min(length, stop + margin)
            out.append((slice(lo, hi), slice(start - lo, stop - lo)))
        return out

    return [(wr, wc, cr, cc) for wr, cr in spans(shape[0]) for wc, cc in spans(shape[1])]


def _forward_tiled(model: torch.nn.Module, chunk: np.ndarray, device: torch.device,
                   flip_set: tuple[tuple[int, ...], ...], multiple: int, plan: ComputePlan,
                   tile: int | None) -> np.ndarray:
    height, width = chunk.shape[-2:]
    if tile is None or max(height, width) <= tile + 2 * TILE_MARGIN:
        return _forward(model, chunk, device, flip_set, multiple, plan)
    out = np.empty((chunk.shape[0], height, width), np.float32)
    for wr, wc, cr, cc in tile_windows((height, width), tile, multiple):
        window = np.ascontiguousarray(chunk[..., wr, wc])
        rates = _forward(model, window, device, flip_set, multiple, plan)
        out[:, wr.start + cr.start:wr.start + cr.stop,
            wc.start + cc.start:wc.start + cc.stop] = rates[:, cr, cc]
    return out


@torch.inference_mode()
def _forward(model: torch.nn.Module, chunk: np.ndarray, device: torch.device,
             flip_set: tuple[tuple[int, ...], ...], multiple: int,
             plan: ComputePlan) -> np.ndarray:
    x = torch.from_numpy(chunk).to(device)
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    if plan.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    total = torch.zeros(x.shape[0], 1, *x.shape[-2:], device=device)
    for dims in flip_set:
        xf = torch.flip(x, dims) if dims else x
        with autocast(device, plan.bf16):
            out = model(xf).float()
        total += torch.flip(out, dims) if dims else out
    total /= len(flip_set)
    return total[:, 0, :height, :width].cpu().numpy()
