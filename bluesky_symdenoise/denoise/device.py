"""The one place that chooses where tensors live, and how to survive running out of memory."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["ComputePlan", "OutOfMemory", "OutOfMemoryFallback", "autocast", "compute_plan",
           "is_out_of_memory", "memory_format", "move_model", "select_device", "warm_up"]

logger = logging.getLogger(__name__)

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


_WARM: set[str] = set()


def warm_up(device: torch.device) -> None:
    """Start a CUDA device's context and load its libraries (cuDNN, cuBLAS) once per
    process: a tiny bf16 convolution and matrix product, forward and backward. They take
    about 1 GB of the process's host memory for good; done before a live scan's memory
    guard reads its baseline, that is not counted as the scan's growth (on an H200 it had
    passed a Pilatus 1M scan's fine-tuning over a 1.5 GB budget: ``bench/large_frames.py``).
    Nothing on a CPU; a failure is left to the scan's own first use of the device."""
    if device.type != "cuda" or str(device) in _WARM:
        return
    try:
        x = torch.ones(1, 2, 8, 8, device=device, requires_grad=True)
        w = torch.ones(2, 2, 3, 3, device=device, requires_grad=True)
        with torch.autocast("cuda", dtype=torch.bfloat16,
                            enabled=torch.cuda.is_bf16_supported()):
            y = torch.nn.functional.conv2d(x, w, padding=1)
            z = y.flatten(1) @ y.flatten(1).T
        z.float().sum().backward()
        torch.cuda.synchronize(device)
        _WARM.add(str(device))
    except Exception as exc:  # noqa: BLE001 - the scan reports its own device errors
        logger.warning("symdenoise: could not warm up %s: %s", device, exc)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA out-of-memory errors (and the generic RuntimeError form of them)."""
    return isinstance(exc, OutOfMemory) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


@dataclass(frozen=True)
class ComputePlan:
    """How the network runs on a device.

    Attributes
    ----------
    bf16
        bf16 autocast for the forward pass (the loss and the outputs stay float32).
    channels_last
        NHWC memory format for the model and its inputs (faster convolutions on GPUs).
    inference_batch
        Frames per forward pass at inference (halved on out-of-memory).
    """

    bf16: bool
    channels_last: bool
    inference_batch: int


def compute_plan(device: torch.device, mixed_precision: bool = True) -> ComputePlan:
    """The plan for a device: on CUDA bf16 (where supported), channels-last and batches of 8
    frames; on CPU float32 (bf16 autocast is far slower on CPUs without bf16 units),
    channels-last (faster convolutions on a 2-core CPU too) and one frame per pass (a batch
    of 4 was slower per frame there; ``bench/throughput.py`` prints both).

    Tests run the CUDA plan on the CPU (torch supports bf16 autocast there), so the code a
    GPU runs is exercised where no GPU is present.
    """
    if device.type == "cuda":
        bf16 = mixed_precision and torch.cuda.is_bf16_supported()
        return ComputePlan(bf16=bool(bf16), channels_last=True, inference_batch=8)
    return ComputePlan(bf16=False, channels_last=True, inference_batch=1)


def memory_format(plan: ComputePlan) -> torch.memory_format:
    """The tensor memory format a plan's model and inputs use."""
    return torch.channels_last if plan.channels_last else torch.contiguous_format


def move_model(model: torch.nn.Module, device: torch.device,
               plan: ComputePlan) -> torch.nn.Module:
    """``model`` moved to ``device`` in the plan's memory format (in place; returned)."""
    # Module.to accepts memory_format at run time; torch's overloads leave it out.
    return model.to(device, memory_format=memory_format(plan))  # type: ignore[call-overload]


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` when ``enabled`` (a plan's ``bf16``), else a no-op."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


class OutOfMemoryFallback:
    """The one rule for running out of memory: halve the batch, then move to the CPU.

    Training and inference keep one of these per loop and hand every exception of a step to
    :meth:`recover`; it re-raises what it cannot survive. Each fallback is appended to
    ``events`` (recorded in provenance) as ``"out of memory during <what> on <device>:
    batch <n>"``, ``"out of memory during <what> at batch 1: moved to cpu"`` or, where the
    model itself did not fit (:meth:`place`), ``"out of memory during <what> placing the
    model on <device>: moved to cpu"``.

    Parameters
    ----------
    what
        ``"training"`` or ``"inference"``, for the messages.
    batch_size, device
        Where the work starts.
    events
        List the fallbacks are appended to.
    on_device_change
        Called with the new device after a move to the CPU (to move the model, rebuild an
        optimiser).

    Examples
    --------
    >>> fallback = OutOfMemoryFallback("inference", 8, device, events)  # doctest: +SKIP
    >>> while todo:                                                     # doctest: +SKIP
    ...     try:
    ...         step(fallback.batch_size, fallback.device)
    ...     except Exception as exc:
    ...         fallback.recover(exc)
    """

    def __init__(self, what: str, batch_size: int, device: torch.device, events: list[str],
                 on_device_change: Callable[[torch.device], None] | None = None) -> None:
        self.what = what
        self.batch_size = int(batch_size)
        self.device = device
        self.events = events
        self._on_device_change = on_device_change

    def place(self, move: Callable[[], object]) -> None:
        """Run ``move`` (the model onto :attr:`device`); if the device has not even room for
        the model, move the work to the CPU at once (``on_device_change``) and record it."""
        try:
            move()
        except Exception as exc:
            if not is_out_of_memory(exc) or self.device.type == "cpu":
                raise
            where, self.device = self.device, torch.device("cpu")
            if where.type == "cuda":
                torch.cuda.empty_cache()
            if self._on_device_change is not None:
                self._on_device_change(self.device)
            self.events.append(f"out of memory during {self.what} placing the model on "
                               f"{where}: moved to cpu")
            logger.warning("symdenoise: %s", self.events[-1])

    def recover(self, exc: BaseException) -> None:
        """Adapt to an out-of-memory error, or re-raise ``exc`` (any other error, or out of
        memory at batch 1 on the CPU)."""
        if not is_out_of_memory(exc):
            raise exc
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.batch_size > 1:
            self.batch_size //= 2
            self.events.append(f"out of memory during {self.what} on {self.device}: batch "
                               f"{self.batch_size}")
        elif self.device.type != "cpu":
            self.device = torch.device("cpu")
            if self._on_device_change is not None:
                self._on_device_change(self.device)
            self.events.append(f"out of memory during {self.what} at batch 1: moved to cpu")
        else:
            raise exc
        logger.warning("symdenoise: %s", self.events[-1])
