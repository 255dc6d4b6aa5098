"""Applying a trained network to whole frames: padding, flips, batches, OOM fallback."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from .device import ComputePlan, OutOfMemoryFallback, autocast, compute_plan, move_model

__all__ = ["predict_rates"]

# Flips used for test-time averaging; the network is applied to each and flipped back.
_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def predict_rates(model: torch.nn.Module, inputs: Sequence[np.ndarray],
                  levels: Sequence[float], *, device: torch.device, flips: int = 2,
                  batch_size: int | None = None, mixed_precision: bool = True,
                  events: list[str] | None = None,
                  plan: ComputePlan | None = None) -> np.ndarray:
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

    Returns
    -------
    numpy.ndarray
        ``(N, H, W)`` float32 expected counts.
    """
    events = events if events is not None else []
    plan = plan or compute_plan(device, mixed_precision)
    multiple = 2 ** getattr(model, "depth", 3)
    results: list[np.ndarray] = []
    move_model(model, device, plan)
    model.eval()

    def move_to(new_device: torch.device) -> None:
        nonlocal plan
        plan = compute_plan(new_device)
        move_model(model, new_device, plan)

    fallback = OutOfMemoryFallback("inference", batch_size or plan.inference_batch, device,
                                   events, on_device_change=move_to)
    index = 0
    flip_set = _FLIPS[:max(1, min(flips, 4))]
    while index < len(inputs):
        chunk = np.stack(inputs[index:index + fallback.batch_size])
        try:
            rates = _forward(model, chunk, fallback.device, flip_set, multiple, plan)
        except Exception as exc:
            fallback.recover(exc)
            continue
        for k, rate in enumerate(rates):
            results.append(rate * np.float32(levels[index + k]))
        index += len(chunk)
    return np.stack(results).astype(np.float32)


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
