"""Bad input and back-pressure: nothing raises into the RunEngine, everything is recorded."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from bluesky import plans as bp
from bluesky.utils import FailedStatus
from ophyd.sim import DirectImage

from bluesky_symdenoise.stream.callback import SymDenoise


def _subscribe(RE, sd, collector, derived):
    RE.subscribe(collector)
    RE.subscribe(sd)
    sd.subscribe(derived)


def test_nan_and_wrong_shape_frames_are_flagged(RE, scene, frames, collector, derived):
    seq = iter(range(100))

    def frame():
        i = next(seq)
        image = frames().astype(np.float32)
        if i == 4:
            image[10:12, 30:33] = np.nan
        if i == 5:
            return np.ones((32, 32), np.float32)
        return image

    sd = SymDenoise("det_img", center=scene.geometry.center, mask=scene.mask, budget_s=0)
    _subscribe(RE, sd, collector, derived)
    RE(bp.count([DirectImage(func=frame, name="det")], num=7))
    assert sd.flush(60)
    sd.close()
    events = derived.stream("denoised")
    assert len(events) == 7
    flags = [e["data"]["det_img_flags"] for e in events]
    assert "6 NaN/inf/negative pixels masked" in flags[4]
    assert flags[5].startswith("skipped: frame shape (32, 32)")
    assert np.all(np.isfinite(events[4]["data"]["det_img_denoised"]))
    summary = derived.stream("summary")[0]["data"]
    assert summary["frames_invalid"] == 1
    derived.validate()
    assert collector.unchanged()
    assert sd.errors == []


def test_aborted_run_is_mirrored(RE, scene, frames, collector, derived):
    calls = iter(range(100))

    def frame():
        if next(calls) == 3:
            raise RuntimeError("detector fault")
        return frames()

    sd = SymDenoise("det_img", center=scene.geometry.center, mask=scene.mask, budget_s=0.5)
    _subscribe(RE, sd, collector, derived)
    with pytest.raises((RuntimeError, FailedStatus)):
        RE(bp.count([DirectImage(func=frame, name="det")], num=6))
    assert sd.flush(60)
    sd.close()
    (raw_stop,) = collector.of("stop")
    (stop,) = derived.of("stop")
    assert stop["exit_status"] == raw_stop["exit_status"] == "fail"
    assert raw_stop["reason"] in stop["reason"]
    assert stop["num_events"]["denoised"] == raw_stop["num_events"]["primary"]
    derived.validate()


def test_full_queue_drops_and_counts(RE, scene, frames, collector, derived):
    gate = threading.Event()

    def slow_consumer(name, doc):
        if name == "start":
            gate.wait(30)  # holds the worker while the scan runs

    sd = SymDenoise("det_img", center=scene.geometry.center, mask=scene.mask, budget_s=0,
                    max_queue=2, warmup_frames=1)
    sd.subscribe(slow_consumer)
    _subscribe(RE, sd, collector, derived)
    RE(bp.count([DirectImage(func=frames, name="det")], num=12))
    gate.set()
    assert sd.flush(60)
    sd.close()
    published = len(derived.stream("denoised"))
    summary = derived.stream("summary")[0]["data"]
    assert sd.dropped > 0 and summary["frames_dropped"] == sd.dropped
    assert published + sd.dropped == 12
    (stop,) = derived.of("stop")
    assert f"{sd.dropped} frames dropped" in stop["reason"]
    assert stop["num_events"]["denoised"] == published
    derived.validate()


def test_lossless_mode_keeps_every_frame(RE, scene, frames, collector, derived):
    sd = SymDenoise("det_img", center=scene.geometry.center, mask=scene.mask, budget_s=0,
                    max_queue=1, lossless=True)
    _subscribe(RE, sd, collector, derived)
    RE(bp.count([DirectImage(func=frames, name="det")], num=6))
    assert sd.flush(60)
    sd.close()
    assert sd.dropped == 0 and len(derived.stream("denoised")) == 6


def test_failing_subscriber_and_close_without_stop(RE, scene, frames, collector, derived):
    def broken(name, doc):
        raise ValueError("downstream bug")

    sd = SymDenoise("det_img", center=scene.geometry.center, mask=scene.mask, budget_s=5)
    sd.subscribe(broken)
    sd.subscribe(derived)
    det = DirectImage(func=frames, name="det")
    # Replay a real run's documents without its stop: close() must end it and the trainer.
    RE.subscribe(collector)
    RE(bp.count([det], num=5))
    for name, doc in collector.docs:
        if name != "stop":
            sd(name, doc)
    assert sd.close(timeout=60)
    assert any("downstream bug" in e for e in sd.errors)
    (stop,) = derived.of("stop")
    assert stop["exit_status"] == "fail"
    assert "never stopped" in stop["reason"]
    derived.validate()
