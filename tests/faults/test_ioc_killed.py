"""Row 6: the detector's IOC (a caproto subprocess, on loopback) is killed mid-scan: the
RunEngine's own failure path runs, the derived run closes with ``fail``, nothing leaks."""

from __future__ import annotations

import pytest
from bluesky import plans as bp

pytest.importorskip("bluesky_symdenoise.detector.devices",
                    reason="the simulated IOCs' ophyd devices are not in this checkout")

from bluesky_symdenoise.detector.launch import start_beamline_ioc  # noqa: E402
from bluesky_symdenoise.detector.loopback import pin_ca_to_loopback  # noqa: E402

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def ioc():
    pin_ca_to_loopback()
    running = start_beamline_ioc(scene="powder", shape=64, seed=2, counts_per_second=200.0)
    try:
        yield running
    finally:
        running.stop()
        assert not running.running


def test_ioc_killed_mid_scan(harness, ioc, loopback_only):
    from bluesky_symdenoise.detector.devices import make_beamline_devices

    det, _, _ = make_beamline_devices(ioc.prefix)
    det.cam.acquire_time.put(0.01)
    sd = harness.plugin("det_image", poni=str(ioc.poni_path), mask=str(ioc.mask_path),
                        budget_s=0)
    events = iter(range(100))

    def kill_after_third_event(name, doc):
        if name == "event" and next(events) == 2:
            ioc.process.kill()  # SIGKILL: no clean shutdown
            ioc.process.wait(10)

    harness.RE.subscribe(kill_after_third_event)
    with pytest.raises(Exception) as raised:  # whatever CA raises: the scan fails
        harness.RE(bp.count([det], num=10))
    assert "RunEngineInterrupted" not in type(raised.value).__name__
    (stop,) = harness.finish().values()
    raw = harness.raw_stop()
    assert raw["exit_status"] == "fail"
    assert stop["exit_status"] == "fail" and raw["reason"] in stop["reason"]
    assert stop["num_events"]["denoised"] == raw["num_events"]["primary"] == 3
    assert sd.errors == []
    assert harness.RE.state == "idle"
    # The loopback guard saw the Channel Access traffic (so it would have seen any other).
    assert any(isinstance(a, tuple) and a[0] == "127.0.0.1" for a in loopback_only.seen)
