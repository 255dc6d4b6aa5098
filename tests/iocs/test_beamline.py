"""The beamline IOC over Channel Access: caproto client, ophyd devices, a real RunEngine."""

from __future__ import annotations

import time

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import numpy as np
import pytest

from bluesky_symdenoise.geometry import DetectorGeometry
from tests.helpers import ca_read as read
from tests.helpers import ca_write as write

from .conftest import COUNTS_PER_SECOND, SHAPE

pytestmark = pytest.mark.timeout(60)


def collect(RE, plan):
    docs = []
    RE(plan, lambda name, doc: docs.append((name, doc)))
    return docs


def events(docs):
    return [doc for name, doc in docs if name == "event"]


def radial_profile(frame, center, mask, n_bins):
    rows, cols = np.indices(frame.shape)
    radius = np.rint(np.hypot(rows - center[0], cols - center[1])).astype(int)
    valid = ~mask & (radius < n_bins)
    total = np.bincount(radius[valid], weights=frame[valid], minlength=n_bins)
    count = np.bincount(radius[valid], minlength=n_bins)
    return total / np.maximum(count, 1)


def best_shift(profile_a, profile_b, start, max_shift=15):
    """Shift s (px) for which profile_b[r + s] best matches profile_a[r], r >= start."""
    assert start >= max_shift
    stop = len(profile_a) - max_shift
    a = profile_a[start:stop] - profile_a[start:stop].mean()
    scores = [np.dot(a, profile_b[start + s:stop + s] - profile_b[start + s:stop + s].mean())
              for s in range(-max_shift, max_shift + 1)]
    return int(np.argmax(scores)) - max_shift


# -- Channel Access, caproto client ------------------------------------------------------

def test_serves_on_loopback_only(beamline_ioc):
    assert "--interfaces" in beamline_ioc.args
    assert beamline_ioc.args[beamline_ioc.args.index("--interfaces") + 1] == "127.0.0.1"
    listening = [line for line in beamline_ioc.log().splitlines() if "Listening on" in line]
    assert listening and all("127.0.0.1:" in line for line in listening)


def test_geometry_published_as_poni_and_pvs(beamline_ioc):
    pv = beamline_ioc.pv
    poni = bytes(read(pv("det:PoniPath")).data).decode().rstrip("\0")
    assert poni == str(beamline_ioc.poni_path.resolve())
    geometry = DetectorGeometry.from_poni(poni)
    assert geometry.shape == SHAPE
    assert geometry.center[1] == pytest.approx(read(pv("det:BeamCenterX_RBV")).data[0])
    assert geometry.center[0] == pytest.approx(read(pv("det:BeamCenterY_RBV")).data[0])
    assert geometry.pixel_size == pytest.approx(read(pv("det:PixelSize_RBV")).data[0])
    mask = np.load(beamline_ioc.mask_path)
    assert mask.shape == SHAPE and mask.dtype == bool and 0 < mask.mean() < 0.5
    assert read(pv("det:image1:ArraySize0_RBV")).data[0] == SHAPE[1]
    assert read(pv("det:image1:ArraySize1_RBV")).data[0] == SHAPE[0]
    assert read(pv("det:cam1:DataType_RBV"), data_type="native").data[0] == 4  # Int32


def test_acquire_put_completes_when_frame_is_published(beamline_ioc):
    pv = beamline_ioc.pv
    write(pv("det:cam1:ImageMode"), "Single", notify=True)
    write(pv("det:cam1:AcquireTime"), 0.3, notify=True)
    before = read(pv("det:cam1:ArrayCounter_RBV")).data[0]
    started = time.monotonic()
    write(pv("det:cam1:Acquire"), 1, notify=True, timeout=5)
    assert time.monotonic() - started >= 0.3
    assert read(pv("det:cam1:ArrayCounter_RBV")).data[0] == before + 1
    assert read(pv("det:cam1:Acquire_RBV"), data_type="native").data[0] == 0
    frame = read(pv("det:image1:ArrayData")).data
    assert frame.shape == (SHAPE[0] * SHAPE[1],)
    mask = np.load(beamline_ioc.mask_path).ravel()
    assert np.all(frame[mask] == 0) and frame[~mask].mean() > 1.0


def test_multiple_image_mode(beamline_ioc):
    pv = beamline_ioc.pv
    write(pv("det:cam1:AcquireTime"), 0.05, notify=True)
    write(pv("det:cam1:AcquirePeriod"), 0.1, notify=True)
    write(pv("det:cam1:NumImages"), 3, notify=True)
    write(pv("det:cam1:ImageMode"), "Multiple", notify=True)
    before = read(pv("det:cam1:ArrayCounter_RBV")).data[0]
    started = time.monotonic()
    write(pv("det:cam1:Acquire"), 1, notify=True, timeout=5)
    assert time.monotonic() - started >= 0.25
    assert read(pv("det:cam1:ArrayCounter_RBV")).data[0] == before + 3
    assert read(pv("det:cam1:NumImagesCounter_RBV")).data[0] == 3
    write(pv("det:cam1:ImageMode"), "Single", notify=True)
    write(pv("det:cam1:AcquirePeriod"), 0.0, notify=True)


# -- ophyd devices and the RunEngine -----------------------------------------------------

def test_count_gives_inline_frames(beamline, RE):
    det, temperature, shutter = beamline
    RE(bps.mv(det.cam.acquire_time, 0.1))
    docs = collect(RE, bp.count([det], num=3))
    (descriptor,) = [doc for name, doc in docs if name == "descriptor"]
    key = descriptor["data_keys"]["det_image"]
    assert key["shape"] == list(SHAPE) and key["dtype"] == "array"
    assert key["dtype_numpy"] == "<i4"
    assert descriptor["configuration"]["det"]["data"]["det_cam_acquire_time"] == 0.1
    assert descriptor["configuration"]["det"]["data"]["det_poni_path"].endswith(".poni")
    frames = [np.asarray(event["data"]["det_image"]) for event in events(docs)]
    assert len(frames) == 3
    assert all(frame.shape == SHAPE for frame in frames)
    assert not np.array_equal(frames[0], frames[1])  # fresh Poisson noise per frame
    (stop,) = [doc for name, doc in docs if name == "stop"]
    assert stop["exit_status"] == "success"


def test_counts_scale_with_acquire_time(beamline, RE):
    det, temperature, shutter = beamline
    RE(bps.mv(temperature, 300.0))
    valid = ~det.mask()
    means = {}
    for exposure in (0.1, 0.2):
        RE(bps.mv(det.cam.acquire_time, exposure))
        docs = collect(RE, bp.count([det], num=2))
        means[exposure] = np.mean([np.asarray(e["data"]["det_image"])[valid]
                                   for e in events(docs)])
    # Mean 1 count/valid pixel per COUNTS_PER_SECOND*s, plus a few hot pixels.
    assert means[0.1] == pytest.approx(COUNTS_PER_SECOND * 0.1, rel=0.1)
    assert means[0.2] / means[0.1] == pytest.approx(2.0, rel=0.1)


def test_temperature_scan_moves_the_rings(beamline, RE):
    det, temperature, shutter = beamline
    RE(bps.mv(det.cam.acquire_time, 0.3))
    docs = collect(RE, bp.list_scan([det], temperature, [300.0, 600.0]))
    found = events(docs)
    assert [e["data"]["temperature"] for e in found] == pytest.approx([300.0, 600.0], abs=0.1)
    geometry, mask = det.geometry(), det.mask()
    n_bins = int(min(SHAPE) * 0.7)
    low, high = (radial_profile(np.asarray(e["data"]["det_image"], float), geometry.center,
                                mask, n_bins) for e in found)
    # ring_drift: over the whole temperature range the rings move 10 px outwards.
    assert 7 <= best_shift(low, high, start=15) <= 13


def test_shutter_closed_gives_dark_frames(beamline, RE):
    det, temperature, shutter = beamline
    RE(bps.mv(det.cam.acquire_time, 0.1, shutter, "Close"))
    try:
        assert shutter.status.get() == "Closed"
        docs = collect(RE, bp.count([det, shutter], num=1))
        (event,) = events(docs)
        assert event["data"]["shutter_status"] == "Closed"
        dark = np.asarray(event["data"]["det_image"])
        lit = np.count_nonzero(dark)
        assert lit <= 5 and dark.sum() > 0  # only the hot pixels count
    finally:
        RE(bps.mv(shutter, "Open"))
    assert shutter.is_open


def test_temperature_set_completes_on_arrival(beamline):
    det, temperature, shutter = beamline
    temperature.ramp_rate.put(500.0, wait=True)
    started = time.monotonic()
    temperature.set(400.0).wait(timeout=5)
    assert time.monotonic() - started >= 0.15  # 100 K at 500 K/s
    assert temperature.position == pytest.approx(400.0)
    assert temperature.moving.get() == 0
    temperature.set(400.0).wait(timeout=2)  # already there: completes at once
    temperature.ramp_rate.put(1000.0, wait=True)
