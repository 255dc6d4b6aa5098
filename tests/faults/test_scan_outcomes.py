"""Row 1: every way a scan can end gives exactly one derived stop mirroring the raw one."""

from __future__ import annotations

import threading

import pytest
from bluesky import Msg
from bluesky import plan_stubs as bps
from bluesky import plans as bp
from bluesky import preprocessors as bpp
from bluesky.utils import RunEngineInterrupted
from ophyd.sim import DirectImage, det1

N = 5


def _plan(det, outcome):
    @bpp.run_decorator()
    def inner():
        for i in range(N):
            yield from bps.trigger_and_read([det])
            if i == 2 and outcome.startswith("pause"):
                yield from bps.checkpoint()
                yield Msg("pause")
            if i == 2 and outcome == "fail":
                raise ValueError("sample holder jammed")
    return inner()


def _run(RE, det, outcome):
    """Run the scan to its end; returns the expected raw exit status."""
    if outcome in ("success", "fail"):
        if outcome == "fail":
            with pytest.raises(ValueError, match="sample holder jammed"):
                RE(_plan(det, outcome))
            return "fail"
        RE(_plan(det, outcome))
        return "success"
    if outcome == "abort-running":
        # RE.abort() from another thread while the scan runs (a user's second terminal).
        calls = iter(range(100))
        started = threading.Event()

        def interrupt():
            started.wait(10)
            RE.abort("operator abort")

        thread = threading.Thread(target=interrupt)
        thread.start()
        original = det.img.get

        def slow_get(*args, **kwargs):
            if next(calls) == 2:
                started.set()
                thread.join(0.5)
            return original(*args, **kwargs)

        det.img.get = slow_get
        with pytest.raises(RunEngineInterrupted):
            RE(_plan(det, "success"))
        thread.join(10)
        assert RE.state == "idle"  # aborted while running, not paused
        return "abort"
    with pytest.raises(RunEngineInterrupted):
        RE(_plan(det, outcome))
    assert RE.state == "paused"
    action = outcome.split("-", 1)[1]
    if action == "resume":
        RE.resume()
        return "success"
    if action == "abort":
        RE.abort("operator abort")
        return "abort"
    if action == "halt":
        RE.halt()
        return "abort"
    RE.stop()
    return "success"


@pytest.mark.parametrize("outcome", ["success", "fail", "abort-running", "pause-resume",
                                     "pause-abort", "pause-halt", "pause-stop"])
def test_derived_stop_mirrors_raw_exit(harness, scene, frames, outcome):
    det = DirectImage(func=frames, name="det")
    harness.plugin("det_img", center=scene.geometry.center, mask=scene.mask, budget_s=0)
    expected = _run(harness.RE, det, outcome)
    stops = harness.finish()
    raw = harness.raw_stop()
    assert raw["exit_status"] == expected
    assert len(stops) == 1, "exactly one derived run"
    (stop,) = stops.values()
    assert stop is not None and stop["exit_status"] == raw["exit_status"]
    if raw["reason"]:
        assert raw["reason"] in stop["reason"]
    raw_events = raw["num_events"].get("primary", 0)
    assert stop["num_events"]["denoised"] == raw_events
    assert harness.sd.errors == []


def test_no_derived_run_for_a_scan_without_frames(harness, scene):
    """A scalar scan, and a scan failing before its first frame: no derived start, no stop."""
    harness.plugin("det_img", center=scene.geometry.center, budget_s=0)
    harness.RE(bp.count([det1], num=3))

    def broken():
        raise RuntimeError("detector not armed")

    with pytest.raises(RuntimeError, match="not armed"):
        harness.RE(bp.count([DirectImage(func=broken, name="det")], num=3))
    harness.finish()
    assert harness.derived.docs == []
    assert harness.sd.errors == []
    assert [d["exit_status"] for d in harness.before.of("stop")] == ["success", "fail"]
