"""Fitting a network to training pairs within a wall-clock budget."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from .device import ComputePlan, OutOfMemoryFallback, autocast, compute_plan, move_model
from .targets import Batch

__all__ = ["PairSource", "TrainingLog", "fit", "poisson_loss"]


class PairSource(Protocol):
    def sample(self, batch_size: int, patch: int) -> Batch: ...


@dataclass
class TrainingLog:
    """What a fit did, for provenance."""

    steps: int = 0
    seconds: float = 0.0
    first_loss: float = math.nan
    last_loss: float = math.nan
    device: str = "cpu"
    batch_size: int = 0
    events: list[str] = field(default_factory=list)
    #: Training stopped early because its ``cancel`` event was set.
    cancelled: bool = False

    def as_dict(self) -> dict:
        record = {"steps": self.steps, "seconds": round(self.seconds, 2),
                  "first_loss": round(self.first_loss, 5),
                  "last_loss": round(self.last_loss, 5), "device": self.device,
                  "batch_size": self.batch_size, "events": self.events}
        if self.cancelled:
            record["cancelled"] = True
        return record


def poisson_loss(output: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Poisson deviance of summed target counts against ``copies * scale * output``.

    Normalised by the expected counts so frames of every level weigh alike. Its minimum is
    at the expectation of the target, whatever the count level (no max-normalisation).
    """
    rate = (batch["copies"] * batch["scale"] * output.float()).clamp(min=1e-6)
    target = batch["target"]
    # The xlogy term (a constant: it makes the deviance 0 at rate = target) is taken at
    # target >= 0: an integrating detector's targets may be negative (FramePairs), and
    # the loss is linear in the target, so its minimum stays at the target's mean.
    positive = target.clamp(min=0)
    deviance = rate - target + torch.xlogy(positive, positive) - target * torch.log(rate)
    weight = batch["copies"] > 0
    norm = (batch["copies"] * batch["scale"]).sum().clamp(min=1e-6)
    return (deviance * weight).sum() / norm


def _to_device(batch: Batch, device: torch.device, channels_last: bool) -> dict:
    out = {name: torch.from_numpy(getattr(batch, name)).to(device)
           for name in ("inputs", "target", "copies", "scale")}
    if channels_last:
        out["inputs"] = out["inputs"].contiguous(memory_format=torch.channels_last)
    return out


def _step(model: torch.nn.Module, optimiser: torch.optim.Optimizer, batch: Batch,
          device: torch.device, plan: ComputePlan) -> torch.Tensor:
    """One optimiser step on one batch; returns the loss."""
    tensors = _to_device(batch, device, plan.channels_last)
    with autocast(device, plan.bf16):
        output = model(tensors["inputs"])
    loss = poisson_loss(output, tensors)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return loss


def fit(model: torch.nn.Module, pairs: PairSource, *, seconds: float, max_steps: int,
        learning_rate: float, batch_size: int, patch: int, device: torch.device,
        mixed_precision: bool = True, seed: int = 0,
        cancel: threading.Event | None = None,
        plan: ComputePlan | None = None) -> TrainingLog:
    """Train ``model`` on batches from ``pairs`` until ``seconds`` or ``max_steps`` run out,
    or ``cancel`` is set (checked before every step; the log then says ``cancelled``).

    On CUDA out-of-memory the batch is halved, then training moves to the CPU
    (:class:`~bluesky_symdenoise.denoise.device.OutOfMemoryFallback`); each fallback is
    recorded in the log. ``plan`` defaults to
    :func:`~bluesky_symdenoise.denoise.device.compute_plan` of the device.
    """
    torch.manual_seed(seed)
    log = TrainingLog(device=str(device), batch_size=batch_size)
    if seconds <= 0 or max_steps <= 0:
        return log
    plan = plan or compute_plan(device, mixed_precision)
    move_model(model, device, plan).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)

    def move_to(new_device: torch.device) -> None:
        nonlocal plan, optimiser
        plan = compute_plan(new_device)
        move_model(model, new_device, plan)
        optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)

    fallback = OutOfMemoryFallback("training", batch_size, device, log.events,
                                   on_device_change=move_to)
    # The clock starts after set-up: the first optimiser of a process pays for lazy imports.
    start = time.perf_counter()
    losses: list[float] = []
    while log.steps < max_steps and time.perf_counter() - start < seconds:
        if cancel is not None and cancel.is_set():
            log.cancelled = True
            break
        try:
            loss = _step(model, optimiser, pairs.sample(fallback.batch_size, patch),
                         fallback.device, plan)
        except Exception as exc:
            fallback.recover(exc)
            continue
        value = float(loss.detach())
        if np.isfinite(value):
            losses.append(value)
        log.steps += 1
    device, batch_size = fallback.device, fallback.batch_size
    model.eval()
    log.seconds = time.perf_counter() - start
    log.device, log.batch_size = str(device), batch_size
    if losses:
        head = losses[: max(1, min(20, len(losses) // 5))]
        tail = losses[-max(1, min(20, len(losses) // 5)):]
        log.first_loss, log.last_loss = float(np.mean(head)), float(np.mean(tail))
    return log
