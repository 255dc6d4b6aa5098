"""Row 5: an exception inside training, inference or the worker's own processing: the
derived run ends with ``fail`` and the reason, the scan never notices, the next scan works."""

from __future__ import annotations

import json
import threading

import pytest
from bluesky import plans as bp
from ophyd.sim import DirectImage

from bluesky_symdenoise.denoise import inference, training
from bluesky_symdenoise.denoise.engine import ScanDenoiser
from bluesky_symdenoise.stream.scan import LiveScan

from .conftest import waiting_frames


def _crash(*args, **kwargs):
    raise RuntimeError("injected crash")


@pytest.mark.parametrize("where", ["training", "inference", "worker"])
def test_crash_fails_the_derived_run_only(harness, scene, frames, monkeypatch, where,
                                          training_done):
    sd = harness.plugin("det_img", center=scene.geometry.center, mask=scene.mask,
                        method="symmetry", budget_s=1, min_training_steps=1,
                        config={"batch_size": 4, "patch_size": 32, "test_time_flips": 1})
    if where == "worker":
        original = LiveScan._integrate
        calls = iter(range(100))

        def integrate(self, *args, **kwargs):
            if next(calls) == 4:
                raise RuntimeError("injected crash")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(LiveScan, "_integrate", integrate)
    elif where == "training":  # every training step
        monkeypatch.setattr(training, "_step", _crash)
    else:  # every forward pass of a network
        monkeypatch.setattr(inference, "_forward", _crash)
    det = DirectImage(func=waiting_frames(frames, training_done), name="det")
    first = harness.RE(bp.count([det], num=6))  # raises nothing: the RunEngine never notices
    assert sd.flush(90)
    monkeypatch.undo()
    second = harness.RE(bp.count([DirectImage(func=frames, name="det")], num=3))
    stops = harness.finish(timeout=90)
    assert [s["exit_status"] for s in harness.before.of("stop")] == ["success", "success"]
    by_raw = {d["original_run_uid"]: stops[d["uid"]] for d in harness.derived.of("start")}
    failed, ok = by_raw[first[0]], by_raw[second[0]]
    assert failed["exit_status"] == "fail"
    assert "symdenoise:" in failed["reason"] and "injected crash" in failed["reason"]
    assert failed["num_events"]["denoised"] == 6, "frames were lost"
    assert ok["exit_status"] == "success" and ok["reason"] == ""
    assert ok["num_events"]["denoised"] == 3


def test_a_run_that_ends_cancels_its_fine_tuning(harness, scene, frames, monkeypatch):
    """The raw run stops while the network trains with a budget of ten minutes: the stop
    cancels the fine-tuning (a threading.Event the engine checks before every step), the
    interim mode keeps serving, and the derived run ends at once, successfully."""
    started = threading.Event()
    fit = ScanDenoiser.fit

    def fit_and_tell(self, *args, **kwargs):
        started.set()
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(ScanDenoiser, "fit", fit_and_tell)
    harness.plugin("det_img", center=scene.geometry.center, mask=scene.mask,
                   method="symmetry", budget_s=600, min_training_steps=1,
                   config={"batch_size": 2, "patch_size": 32, "test_time_flips": 1})
    det = DirectImage(func=waiting_frames(frames, started), name="det")
    harness.RE(bp.count([det], num=6))
    (stop,) = harness.finish(timeout=90).values()
    assert stop["exit_status"] == "success" and stop["reason"] == ""
    summary = json.loads(harness.derived.stream("summary")[0]["data"]["provenance"])
    assert summary["network"].startswith("training cut short"), summary["network"]
    assert summary["training"]["cancelled"] is True
    assert all(e["data"]["det_img_denoised_by"] != "network:symmetry"
               for e in harness.derived.stream("denoised"))
