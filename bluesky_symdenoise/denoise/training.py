"""Fitting a network to training pairs within a wall-clock budget."""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from .device import ComputePlan, OutOfMemoryFallback, autocast, compute_plan, move_model
from .targets import Batch

__all__ = ["MAX_SAMPLER_THREADS", "SAMPLER_BYTES_PER_PIXEL", "PairSource", "TrainingLog",
           "fit", "poisson_loss", "sampler_threads"]

#: Most background threads that draw training batches while a GPU trains.
MAX_SAMPLER_THREADS = 4
#: What one draw of a batch holds while it runs, bytes per pixel of the frame (a frame's
#: thinned halves, channels and targets; the live fine-tuning's measured need per pixel).
SAMPLER_BYTES_PER_PIXEL = 240


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
    #: Background threads that drew the batches (0: the trainer's own thread).
    sampler_threads: int = 0

    def as_dict(self) -> dict:
        record = {"steps": self.steps, "seconds": round(self.seconds, 2),
                  "first_loss": round(self.first_loss, 5),
                  "last_loss": round(self.last_loss, 5), "device": self.device,
                  "batch_size": self.batch_size, "events": self.events}
        if self.sampler_threads:
            record["sampler_threads"] = self.sampler_threads
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


def sampler_threads(device: torch.device, requested: int | None = None, *,
                    per_thread_bytes: int = 0, spare_bytes: int | None = None) -> int:
    """Background threads that draw training batches: ``requested``, or by default none on
    a CPU (drawing a batch and the network's step share the same cores) and on a GPU up to
    :data:`MAX_SAMPLER_THREADS`, leaving two cores to the RunEngine and the trainer; never
    more than ``spare_bytes`` hold at ``per_thread_bytes`` each (what one draw holds while
    it runs: a frame's channels and targets). On a GPU a step of the network takes a few
    ms and drawing its batch (thinning whole frames, their input channels) tens: drawn in
    the trainer's own thread, the GPU mostly waits (``bench/gpu.py``)."""
    if requested is not None:
        threads = int(requested)
    elif device.type != "cuda":
        threads = 0
    else:
        threads = max(0, min(MAX_SAMPLER_THREADS, (os.cpu_count() or 1) - 2))
    if spare_bytes is not None and per_thread_bytes > 0:
        threads = min(threads, max(0, int(spare_bytes // per_thread_bytes)))
    return threads


class _BatchPrefetcher:
    """Batches of ``pairs`` drawn on ``threads`` background threads, ``2 * threads`` ahead.

    The pairs' sources draw from a numpy ``Generator``, which locks itself, and read their
    frames only; the order batches are drawn in then varies from run to run. A batch drawn
    before the batch size was halved (out of memory) is cut to the new size."""

    def __init__(self, pairs: PairSource, threads: int, patch: int) -> None:
        self._pairs, self._patch = pairs, patch
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="symdenoise-sampler")
        self._ahead: deque[tuple[int, Future[Batch]]] = deque()
        self._depth = 2 * threads

    def next(self, batch_size: int) -> Batch:
        while len(self._ahead) < self._depth:
            self._ahead.append((batch_size, self._pool.submit(self._pairs.sample, batch_size,
                                                              self._patch)))
        size, future = self._ahead.popleft()
        batch = future.result()
        if size > batch_size:
            batch = dataclasses.replace(batch, **{
                part.name: getattr(batch, part.name)[:batch_size]
                for part in dataclasses.fields(batch)})
        return batch

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


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
        plan: ComputePlan | None = None, threads: int | None = None) -> TrainingLog:
    """Train ``model`` on batches from ``pairs`` until ``seconds`` or ``max_steps`` run out,
    or ``cancel`` is set (checked before every step; the log then says ``cancelled``).

    On CUDA out-of-memory the batch is halved, then training moves to the CPU
    (:class:`~bluesky_symdenoise.denoise.device.OutOfMemoryFallback`); each fallback is
    recorded in the log. ``plan`` defaults to
    :func:`~bluesky_symdenoise.denoise.device.compute_plan` of the device. ``threads``:
    background threads drawing the batches (:func:`sampler_threads`; None: its default).
    """
    torch.manual_seed(seed)
    log = TrainingLog(device=str(device), batch_size=batch_size)
    if seconds <= 0 or max_steps <= 0:
        return log
    plan = plan or compute_plan(device, mixed_precision)
    optimiser: torch.optim.Optimizer  # made once the model is where it trains

    def move_to(new_device: torch.device) -> None:
        nonlocal plan, optimiser
        plan = compute_plan(new_device)
        move_model(model, new_device, plan)
        optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)

    fallback = OutOfMemoryFallback("training", batch_size, device, log.events,
                                   on_device_change=move_to)
    fallback.place(lambda: move_model(model, device, plan))
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    workers = sampler_threads(device, threads)
    prefetcher = _BatchPrefetcher(pairs, workers, patch) if workers > 0 else None
    log.sampler_threads = workers
    # The clock starts after set-up: the first optimiser of a process pays for lazy imports.
    start = time.perf_counter()
    losses: list[float] = []
    try:
        while log.steps < max_steps and time.perf_counter() - start < seconds:
            if cancel is not None and cancel.is_set():
                log.cancelled = True
                break
            try:
                batch = (prefetcher.next(fallback.batch_size) if prefetcher is not None
                         else pairs.sample(fallback.batch_size, patch))
                loss = _step(model, optimiser, batch, fallback.device, plan)
            except Exception as exc:
                fallback.recover(exc)
                continue
            value = float(loss.detach())
            if np.isfinite(value):
                losses.append(value)
            log.steps += 1
    finally:
        if prefetcher is not None:
            prefetcher.close()
    device, batch_size = fallback.device, fallback.batch_size
    model.eval()
    log.seconds = time.perf_counter() - start
    log.device, log.batch_size = str(device), batch_size
    if losses:
        head = losses[: max(1, min(20, len(losses) // 5))]
        tail = losses[-max(1, min(20, len(losses) // 5)):]
        log.first_loss, log.last_loss = float(np.mean(head)), float(np.mean(tail))
    return log
