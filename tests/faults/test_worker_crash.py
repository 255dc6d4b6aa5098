"""Row 5: an exception inside training, inference or the worker's own processing: the
derived run ends with ``fail`` and the reason, the scan never notices, the next scan works."""

from __future__ import annotations

import pytest
from bluesky import plans as bp
from ophyd.sim import DirectImage

from bluesky_symdenoise.stream.scan import LiveScan

from .conftest import waiting_frames


def _crash(step):
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
    else:
        sd.fault_hooks[where] = _crash
    det = DirectImage(func=waiting_frames(frames, training_done), name="det")
    first = harness.RE(bp.count([det], num=6))  # raises nothing: the RunEngine never notices
    assert sd.flush(90)
    sd.fault_hooks.clear()
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
