"""The one place that chooses where tensors live, and how to survive running out of memory."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = ["OutOfMemory", "autocast", "is_out_of_memory", "run_with_oom_fallback", "select_device"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

OutOfMemory = torch.cuda.OutOfMemoryError


def select_device(preference: str = "auto") -> torch.device:
    """Pick the compute device: CUDA when present, else CPU.

    Parameters
    ----------
    preference
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. Asking for CUDA on a machine
        without it raises ``ValueError`` with the reason.
    """
    preference = (preference or "auto").lower()
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={preference!r} asked for, but CUDA is not available here; "
                         "use device='auto' or 'cpu'")
    if preference == "mps":
        raise ValueError("device='mps' is not supported; use 'auto', 'cpu' or 'cuda'")
    return torch.device(preference)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA out-of-memory errors (and the generic RuntimeError form of them)."""
    return isinstance(exc, OutOfMemory) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled; a no-op context on CPU (bf16 is slower there)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=enabled and device.type == "cuda")


def run_with_oom_fallback(step: Callable[[int, torch.device], T], batch_size: int,
                          device: torch.device, events: list[str]) -> T:
    """Run ``step(batch_size, device)``, halving the batch on out-of-memory, then using CPU.

    Every fallback is appended to ``events`` (recorded in provenance).
    """
    while True:
        try:
            return step(batch_size, device)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if batch_size > 1:
                events.append(f"out of memory on {device} at batch {batch_size}: "
                              f"batch {batch_size // 2}")
                batch_size //= 2
            elif device.type != "cpu":
                events.append(f"out of memory on {device} at batch 1: falling back to cpu")
                device = torch.device("cpu")
            else:
                raise
            logger.warning(events[-1])
