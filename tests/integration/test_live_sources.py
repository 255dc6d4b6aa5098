"""Frames by reference: Resource/Datum (NPY_SEQ, AD_HDF5) and StreamResource/StreamDatum
(ophyd-async's HDF5-writing SimBlobDetector), each through a real RunEngine."""

from __future__ import annotations

import numpy as np
from bluesky import plans as bp
from ophyd.sim import SynSignalWithRegistry

from bluesky_symdenoise.stream.callback import SymDenoise
from tests.helpers import psnr

from .devices import HDF5AreaDetector


def _run(RE, detectors, collector, derived, sd, num):
    RE.subscribe(collector)
    RE.subscribe(sd)
    sd.subscribe(derived)
    (uid,) = RE(bp.count(detectors, num=num))
    assert sd.flush(timeout=120)
    sd.close()
    return uid


def _check(derived, uid, field, num, sd):
    assert sd.errors == []
    (start,) = derived.of("start")
    assert start["original_run_uid"] == uid
    assert start["symdenoise"]["field"] == field
    assert len(derived.stream("denoised")) == num
    summary = derived.stream("summary")[0]["data"]
    assert summary["frames_unreadable"] == 0 and summary["frames_published"] == num
    derived.validate()


def test_npy_seq_resource_datum(RE, frames, scene, collector, derived, tmp_path):
    img = SynSignalWithRegistry(func=frames, name="img", save_path=str(tmp_path),
                                labels={"detectors"})
    sd = SymDenoise("img", center=scene.geometry.center, mask=scene.mask, budget_s=0)
    uid = _run(RE, [img], collector, derived, sd, num=4)
    _check(derived, uid, "img", 4, sd)
    assert all(isinstance(e["data"]["img"], str) for e in collector.of("event"))  # unfilled
    out = np.stack([e["data"]["img_denoised"] for e in derived.stream("denoised")])
    files = sorted(tmp_path.glob("*.npy"))
    raw = np.stack([np.load(f) for f in files]).astype(float)
    assert psnr(out, frames.truth, scene.usable) - psnr(raw, frames.truth, scene.usable) >= 3
    assert collector.unchanged()


def test_ad_hdf5_resource_datum(RE, frames, scene, collector, derived, tmp_path):
    det = HDF5AreaDetector(frames, tmp_path, name="ad")
    sd = SymDenoise(center=scene.geometry.center, mask=scene.mask, budget_s=0)
    uid = _run(RE, [det], collector, derived, sd, num=4)
    assert collector.of("resource")[0]["spec"] == "AD_HDF5"
    _check(derived, uid, "ad_image", 4, sd)
    assert len(derived.stream("integrated")) == 4
    assert collector.unchanged()


def test_ophyd_async_stream_resource(RE, collector, derived, tmp_path):
    from ophyd_async.core import StaticPathProvider, UUIDFilenameProvider, init_devices
    from ophyd_async.sim import PatternGenerator, SimBlobDetector

    with init_devices():
        blob = SimBlobDetector(StaticPathProvider(UUIDFilenameProvider(), tmp_path),
                               PatternGenerator())
    sd = SymDenoise(budget_s=0)
    uid = _run(RE, [blob], collector, derived, sd, num=3)
    assert collector.of("stream_datum")
    _check(derived, uid, "blob", 3, sd)
    out = derived.stream("denoised")[0]["data"]["blob_denoised"]
    assert out.shape == (240, 320) and out.sum() > 0
    assert collector.unchanged()
