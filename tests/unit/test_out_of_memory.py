"""The one out-of-memory rule of training and inference (OutOfMemoryFallback)."""

from __future__ import annotations

import pytest
import torch

from bluesky_symdenoise.denoise.device import OutOfMemoryFallback

CPU = torch.device("cpu")


def test_out_of_memory_halves_the_batch_down_to_one_and_records_each_step():
    events: list[str] = []
    fallback = OutOfMemoryFallback("inference", 8, CPU, events)
    for _ in range(3):
        fallback.recover(torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)"))
    assert fallback.batch_size == 1 and fallback.device == CPU
    assert events == [f"out of memory during inference on cpu: batch {n}" for n in (4, 2, 1)]


def test_the_generic_runtime_error_form_counts_as_out_of_memory():
    events: list[str] = []
    fallback = OutOfMemoryFallback("training", 2, CPU, events)
    fallback.recover(RuntimeError("CUDA error: out of memory"))
    assert fallback.batch_size == 1 and events == ["out of memory during training on cpu: "
                                                   "batch 1"]


def test_other_errors_and_out_of_memory_at_batch_one_on_the_cpu_are_raised():
    fallback = OutOfMemoryFallback("training", 4, CPU, [])
    with pytest.raises(ValueError, match="not memory"):
        fallback.recover(ValueError("not memory"))
    assert fallback.batch_size == 4
    last = OutOfMemoryFallback("training", 1, CPU, [])
    with pytest.raises(torch.cuda.OutOfMemoryError):
        last.recover(torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)"))


def test_a_model_that_does_not_fit_on_the_device_moves_the_work_to_the_cpu():
    events: list[str] = []
    moved: list[torch.device] = []
    fallback = OutOfMemoryFallback("training", 8, torch.device("cuda"), events,
                                   on_device_change=moved.append)

    def move() -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    fallback.place(move)
    assert fallback.device == CPU and moved == [CPU] and fallback.batch_size == 8
    assert events == ["out of memory during training placing the model on cuda: moved to cpu"]
    with pytest.raises(ValueError, match="not memory"):
        fallback.place(lambda: (_ for _ in ()).throw(ValueError("not memory")))
    with pytest.raises(torch.cuda.OutOfMemoryError):  # already on the CPU: nowhere to go
        fallback.place(move)
