"""LiveDenoiseView shows frames that come by reference: denoised frames in the derived run's
HDF5 file (StreamResource/StreamDatum), raw frames through Resource/Datum (NPY_SEQ), and
records a raw frame it cannot read instead of raising, reading it only when it is drawn."""

from __future__ import annotations

import h5py
import numpy as np
from bluesky import plans as bp
from event_model import compose_run
from ophyd.sim import DirectImage, SynSignalWithRegistry

from bluesky_symdenoise.stream.callback import SymDenoise
from bluesky_symdenoise.stream.derived_files import DERIVED_DATASET
from bluesky_symdenoise.view.live import LiveDenoiseView
from tests.helpers import DocumentCollector

NUM = 4


def _scan(RE, detector, sd, view, collector, derived):
    RE.subscribe(collector)
    RE.subscribe(view)
    RE.subscribe(sd)
    sd.subscribe(view)
    sd.subscribe(derived)
    try:
        RE(bp.count([detector], num=NUM))
        assert sd.flush(timeout=60)
    finally:
        sd.close()
    assert sd.errors == []


def _frame_panels(view):
    """The raw and denoised frame axes of the figure, by their titles."""
    axes = {ax.get_title().split(" ")[0]: ax for ax in view.figure.axes if ax.images}
    return axes.get("raw"), axes.get("denoised")


def test_denoised_frames_in_the_derived_file_are_drawn(RE, frames, scene, tmp_path):
    collector, derived = DocumentCollector(), DocumentCollector()
    view = LiveDenoiseView(out_dir=tmp_path / "png", every=2, mask=scene.mask)
    sd = SymDenoise(field="det_img", center=scene.geometry.center, mask=scene.mask,
                    budget_s=0, inline_limit_bytes=1000, derived_files=tmp_path / "derived")
    _scan(RE, DirectImage(func=frames, name="det"), sd, view, collector, derived)

    # The denoised frames really came by reference only.
    assert len(derived.of("stream_datum")) == NUM
    assert all("det_img_denoised" not in e["data"] for e in derived.stream("denoised"))
    assert view.errors == []
    (start,) = derived.of("start")
    with h5py.File(tmp_path / "derived" / f"{start['uid']}.h5", "r") as handle:
        in_file = handle[DERIVED_DATASET][()]
    raw, denoised = view.latest_frames()
    np.testing.assert_array_equal(denoised, in_file[-1])
    last_raw = collector.of("event")[-1]["data"]["det_img"]
    np.testing.assert_array_equal(raw, last_raw)

    scan_id = view.scan_id
    names = sorted(p.name for p in (tmp_path / "png").glob("*.png"))
    assert names == [f"live_{scan_id}_0002.png", f"live_{scan_id}_0004.png",
                     f"live_{scan_id}_final.png"]
    # Both frame panels were drawn, with the frames read from the file and the raw event.
    ax_raw, ax_den = _frame_panels(view)
    assert ax_raw is not None and ax_den is not None
    assert ax_raw.get_title() == f"raw frame {NUM}"
    shown = ax_den.images[0].get_array()
    valid = ~np.ma.getmaskarray(shown)
    assert valid.sum() > 0.5 * valid.size
    np.testing.assert_allclose(shown[valid], in_file[-1][valid])
    shown_raw = ax_raw.images[0].get_array()
    np.testing.assert_allclose(shown_raw[valid], np.asarray(last_raw, float)[valid])


def test_raw_frames_by_resource_datum_fill_the_raw_panel(RE, frames, scene, tmp_path):
    collector, derived = DocumentCollector(), DocumentCollector()
    view = LiveDenoiseView(out_dir=tmp_path / "png", every=NUM, mask=scene.mask)
    (tmp_path / "npy").mkdir()
    img = SynSignalWithRegistry(func=frames, name="img", save_path=str(tmp_path / "npy"),
                                labels={"detectors"})
    sd = SymDenoise("img", center=scene.geometry.center, mask=scene.mask, budget_s=0)
    _scan(RE, img, sd, view, collector, derived)

    assert collector.of("resource")[0]["spec"] == "NPY_SEQ"
    assert all(isinstance(e["data"]["img"], str) for e in collector.of("event"))  # Datum ids
    assert collector.unchanged()  # the view filled nothing in place
    assert view.errors == []
    raw, denoised = view.latest_frames()
    files = sorted((tmp_path / "npy").glob("*.npy"))
    assert len(files) == NUM
    np.testing.assert_array_equal(raw, np.load(files[-1]))
    np.testing.assert_array_equal(denoised, derived.stream("denoised")[-1]["data"]
                                  ["img_denoised"])
    assert (tmp_path / "png" / f"live_{view.scan_id}_final.png").stat().st_size > 10_000
    ax_raw, ax_den = _frame_panels(view)
    assert ax_raw is not None and ax_den is not None
    assert ax_raw.get_title() == f"raw frame {NUM}"


def test_an_unreadable_raw_frame_is_recorded_when_drawn_never_raised(tmp_path):
    shape = (16, 16)
    view = LiveDenoiseView(out_dir=tmp_path, every=1)
    raw = compose_run(metadata={"scan_id": 3})
    view("start", raw.start_doc)
    resource = raw.compose_resource(spec="NPY_SEQ", root=str(tmp_path),
                                    resource_path="missing", resource_kwargs={})
    view("resource", resource.resource_doc)
    datum = resource.compose_datum(datum_kwargs={"index": 0})
    view("datum", datum)
    desc = raw.compose_descriptor(name="primary", data_keys={
        "img": {"source": "sim", "dtype": "array", "shape": list(shape), "external": "FILESTORE:"}})
    view("descriptor", desc.descriptor_doc)
    view("event", desc.compose_event(data={"img": datum["datum_id"]},
                                     timestamps={"img": 0.0}, seq_num=1))
    view("stop", raw.compose_stop())
    # Kept as a Datum id: nothing was read on the thread that delivered the raw event.
    assert view.errors == []

    derived = compose_run(metadata={"original_run_uid": raw.start_doc["uid"],
                                    "symdenoise": {"field": "img", "method": "x"}})
    view("start", derived.start_doc)
    den = derived.compose_descriptor(name="denoised", data_keys={
        "img_denoised": {"source": "s", "dtype": "array", "shape": list(shape)},
        "raw_seq_num": {"source": "s", "dtype": "integer", "shape": []}})
    view("descriptor", den.descriptor_doc)
    frame = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    view("event", den.compose_event(data={"img_denoised": frame, "raw_seq_num": 1},
                                    timestamps={"img_denoised": 0, "raw_seq_num": 0},
                                    seq_num=1))
    # The draw read the raw frame: unreadable, recorded once, the denoised panel drawn alone.
    assert len(view.errors) == 1 and "cannot read the raw frame 'img'" in view.errors[0]
    assert "missing" in view.errors[0]
    assert view.written and view.written[-1].exists()
    view("stop", derived.compose_stop())
    assert len(view.errors) == 1
    raw_frame, denoised = view.latest_frames()
    assert raw_frame is None
    np.testing.assert_array_equal(denoised, frame)
    ax_raw, ax_den = _frame_panels(view)
    assert ax_raw is None and ax_den is not None


def test_raw_frames_by_stream_datum_are_read_one_frame_at_a_time(tmp_path):
    shape = (16, 16)
    stack = np.arange(3 * 16 * 16, dtype=np.uint16).reshape(3, *shape)
    path = tmp_path / "raw.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("/entry/data/data", data=stack, chunks=(1, *shape))
    view = LiveDenoiseView(out_dir=tmp_path / "png", every=1)
    raw = compose_run(metadata={"scan_id": 5})
    view("start", raw.start_doc)
    desc = raw.compose_descriptor(name="primary", data_keys={
        "blob": {"source": "sim", "dtype": "array", "shape": [1, *shape],
                 "external": "STREAM:"}})
    view("descriptor", desc.descriptor_doc)
    stream = raw.compose_stream_resource(mimetype="application/x-hdf5", uri=path.as_uri(),
                                         data_key="blob",
                                         parameters={"dataset": "/entry/data/data"})
    view("stream_resource", stream.stream_resource_doc)
    # One StreamDatum for the three frames, as a fly scan's would be.
    view("stream_datum", stream.compose_stream_datum(
        indices={"start": 0, "stop": 3}, seq_nums={"start": 1, "stop": 4},
        descriptor=desc.descriptor_doc))
    view("stop", raw.compose_stop())

    derived = compose_run(metadata={"original_run_uid": raw.start_doc["uid"],
                                    "symdenoise": {"field": "blob", "method": "x"}})
    view("start", derived.start_doc)
    den = derived.compose_descriptor(name="denoised", data_keys={
        "blob_denoised": {"source": "s", "dtype": "array", "shape": list(shape)},
        "raw_seq_num": {"source": "s", "dtype": "integer", "shape": []}})
    view("descriptor", den.descriptor_doc)
    frame = np.ones(shape, np.float32)
    view("event", den.compose_event(data={"blob_denoised": frame, "raw_seq_num": 2},
                                    timestamps={"blob_denoised": 0, "raw_seq_num": 0},
                                    seq_num=1))
    view("stop", derived.compose_stop())
    assert view.errors == []
    raw_frame, denoised = view.latest_frames()
    np.testing.assert_array_equal(raw_frame, stack[1])  # raw seq_num 2: the file's index 1
    np.testing.assert_array_equal(denoised, frame)
    ax_raw, _ = _frame_panels(view)
    assert ax_raw is not None and ax_raw.get_title() == "raw frame 2"
