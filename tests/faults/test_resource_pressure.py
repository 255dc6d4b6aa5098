"""Row 4: a slow consumer and a fast detector; simulated GPU out-of-memory."""

from __future__ import annotations

import json
import time

import pytest
import torch
from bluesky import plans as bp
from ophyd.sim import DirectImage

from bluesky_symdenoise.denoise import inference, training

from .conftest import waiting_frames

N = 30


def _slow_consumer(seconds: float):
    def consumer(name, doc):
        time.sleep(seconds)
    return consumer


def test_live_mode_drops_and_counts_but_never_blocks(harness, scene, frames):
    sd = harness.plugin("det_img", center=scene.geometry.center, mask=scene.mask, budget_s=0,
                        max_queue=4, warmup_frames=1)
    sd.subscribe(_slow_consumer(0.05))
    harness.RE(bp.count([DirectImage(func=frames, name="det")], num=N))
    (stop,) = harness.finish(timeout=90).values()
    # Bounded memory: never more than max_queue frames waiting.
    assert sd._queue.high_water <= 4
    # Never blocked: the RunEngine's thread only copies and enqueues, even with the queue
    # full (it drops instead of waiting for the slow consumer).
    assert sd.re_thread_waits == 0
    published = len(harness.derived.stream("denoised"))
    summary = harness.derived.stream("summary")[0]["data"]
    assert sd.dropped > 0 and summary["frames_dropped"] == sd.dropped
    assert published + sd.dropped == N == summary["frames_received"] + sd.dropped
    assert stop["exit_status"] == "success" and f"{sd.dropped} frames dropped" in stop["reason"]


def test_lossless_mode_with_a_slow_consumer_loses_nothing(harness, scene, frames):
    sd = harness.plugin("det_img", center=scene.geometry.center, mask=scene.mask, budget_s=0,
                        max_queue=2, warmup_frames=1, lossless=True)
    sd.subscribe(_slow_consumer(0.02))
    harness.RE(bp.count([DirectImage(func=frames, name="det")], num=12))
    (stop,) = harness.finish(timeout=90).values()
    assert sd._queue.high_water <= 2
    assert sd.dropped == 0 and stop["num_events"]["denoised"] == 12
    assert [e["data"]["raw_seq_num"] for e in harness.derived.stream("denoised")] == \
        list(range(1, 13))
    assert stop["exit_status"] == "success" and "dropped" not in stop["reason"]


def _oom_first(calls: int, step):
    """``step`` (a training step or a forward pass), raising CUDA out-of-memory on its first
    ``calls`` calls."""
    count = iter(range(10**6))

    def patched(*args, **kwargs):
        if next(count) < calls:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return step(*args, **kwargs)
    return patched


@pytest.mark.parametrize("where", ["training", "inference"])
def test_out_of_memory_halves_the_batch_and_is_recorded(harness, scene, frames, where,
                                                       training_done, monkeypatch):
    harness.plugin("det_img", center=scene.geometry.center, mask=scene.mask,
                   method="symmetry", budget_s=2, min_training_steps=1,
                   config={"batch_size": 4, "patch_size": 32, "test_time_flips": 1,
                           "inference_batch": 4})
    module, name = (training, "_step") if where == "training" else (inference, "_forward")
    monkeypatch.setattr(module, name, _oom_first(2, getattr(module, name)))
    det = DirectImage(func=waiting_frames(frames, training_done), name="det")
    harness.RE(bp.count([det], num=6))
    (stop,) = harness.finish(timeout=90).values()
    assert stop["exit_status"] == "success", stop["reason"]
    summary = json.loads(harness.derived.stream("summary")[0]["data"]["provenance"])
    events = summary["engine_events"]
    assert [e for e in events if f"out of memory during {where}" in e and "batch 2" in e]
    assert [e for e in events if f"out of memory during {where}" in e and "batch 1" in e]
    if where == "training":
        assert summary["training"]["batch_size"] == 1 and summary["training"]["steps"] >= 1
    assert len(harness.derived.stream("denoised")) == 6
    assert all(e["data"]["det_img_flags"] == "" for e in harness.derived.stream("denoised"))


def test_a_worker_behind_serves_waiting_frames_in_batches(harness, scene, frames,
                                                          training_done):
    harness.plugin("det_img", center=scene.geometry.center, mask=scene.mask,
                   method="symmetry", budget_s=1, min_training_steps=1, max_queue=64,
                   lossless=True, config={"batch_size": 4, "patch_size": 32})
    # The detector waits for the fine-tuning at frame 5, then 20 frames arrive at once.
    det = DirectImage(func=waiting_frames(frames, training_done), name="det")
    harness.RE(bp.count([det], num=25))
    (stop,) = harness.finish(timeout=120).values()
    assert stop["exit_status"] == "success", stop["reason"]
    denoised = harness.derived.stream("denoised")
    assert [e["data"]["raw_seq_num"] for e in denoised] == list(range(1, 26))
    assert all(e["data"]["det_img_flags"] == "" for e in denoised)
    summary = json.loads(harness.derived.stream("summary")[0]["data"]["provenance"])
    sizes = {int(k): v for k, v in summary["batches"].items()}
    assert sum(k * v for k, v in sizes.items()) == 25
    assert max(sizes) > 1, f"never batched: {sizes}"
