"""FrameSource turns a run's documents into frames: inline arrays, Resource/Datum references
(NPY_SEQ and AD_HDF5 files written in the handlers' own formats) and StreamResource/StreamDatum
slices of an HDF5 dataset. Every document is composed by event-model."""

from __future__ import annotations

from pathlib import Path

import event_model
import h5py
import numpy as np
import pytest
from event_model import compose_run

from bluesky_symdenoise.stream.frames import FrameSource, FrameSourceError

SHAPE = (6, 8)


def _frame(value: float) -> np.ndarray:
    return np.full(SHAPE, value, dtype=np.uint16)


def _image_key(shape=SHAPE, external: bool = False) -> dict:
    key = {"source": "SIM:det", "dtype": "array", "shape": list(shape)}
    if external:
        key["external"] = "FILESTORE:"
    return key


def _scalar_key() -> dict:
    return {"source": "SIM:temperature", "dtype": "number", "shape": []}


def _feed(source: FrameSource, documents) -> list[tuple[str, int, np.ndarray, float]]:
    found = []
    for name, doc in documents:
        found.extend(source.frames(name, doc))
    return found


def _run_with(data_keys: dict):
    run = compose_run()
    descriptor = run.compose_descriptor(name="primary", data_keys=data_keys)
    return run, descriptor


def test_inline_frames_come_out_with_their_key_seq_num_and_timestamp():
    run, descriptor = _run_with({"img": _image_key()})
    events = [descriptor.compose_event(data={"img": _frame(i)}, timestamps={"img": 100.0 + i})
              for i in range(3)]
    source = FrameSource()
    frames = _feed(source, [("start", run.start_doc),
                            ("descriptor", descriptor.descriptor_doc),
                            *(("event", e) for e in events),
                            ("stop", run.compose_stop())])
    assert [(key, seq, ts) for key, seq, _, ts in frames] == [
        ("img", 1, 100.0), ("img", 2, 101.0), ("img", 3, 102.0)]
    for i, (_, _, frame, _) in enumerate(frames):
        np.testing.assert_array_equal(frame, _frame(i))
    assert source.keys_for(descriptor.descriptor_doc["uid"]) == {"img": SHAPE}
    source.close()


def test_an_event_page_gives_one_frame_per_event():
    run, descriptor = _run_with({"img": _image_key()})
    page = descriptor.compose_event_page(
        data={"img": [_frame(1), _frame(2)]}, timestamps={"img": [1.0, 2.0]},
        seq_num=[1, 2], time=[1.0, 2.0])
    source = FrameSource()
    frames = _feed(source, [("start", run.start_doc),
                            ("descriptor", descriptor.descriptor_doc),
                            ("event_page", page)])
    assert [(key, seq) for key, seq, _, _ in frames] == [("img", 1), ("img", 2)]
    np.testing.assert_array_equal(frames[1][2], _frame(2))


def test_a_leading_size_one_axis_is_squeezed():
    run, descriptor = _run_with({"img": _image_key((1, *SHAPE))})
    event = descriptor.compose_event(data={"img": _frame(5)[np.newaxis]},
                                     timestamps={"img": 0.0})
    source = FrameSource()
    ((_, _, frame, _),) = _feed(source, [("start", run.start_doc),
                                         ("descriptor", descriptor.descriptor_doc),
                                         ("event", event)])
    assert frame.shape == SHAPE


def test_non_image_keys_are_ignored():
    run, descriptor = _run_with({"img": _image_key(), "temperature": _scalar_key(),
                                 "spectrum": {"source": "SIM:mca", "dtype": "array",
                                              "shape": [64]}})
    event = descriptor.compose_event(
        data={"img": _frame(1), "temperature": 300.0, "spectrum": np.zeros(64)},
        timestamps={"img": 0.0, "temperature": 0.0, "spectrum": 0.0})
    source = FrameSource()
    frames = _feed(source, [("start", run.start_doc),
                            ("descriptor", descriptor.descriptor_doc),
                            ("event", event)])
    assert [key for key, *_ in frames] == ["img"]
    assert source.all_keys == {"img": SHAPE}


def test_a_descriptor_without_images_gives_no_frames():
    run, descriptor = _run_with({"temperature": _scalar_key()})
    event = descriptor.compose_event(data={"temperature": 300.0},
                                     timestamps={"temperature": 0.0})
    source = FrameSource()
    assert _feed(source, [("start", run.start_doc),
                          ("descriptor", descriptor.descriptor_doc),
                          ("event", event)]) == []
    assert source.keys_for(descriptor.descriptor_doc["uid"]) == {}


def _two_detectors():
    run, descriptor = _run_with({"det1_image": _image_key(), "det2_image": _image_key((4, 4)),
                                 "temperature": _scalar_key()})
    event = descriptor.compose_event(
        data={"det1_image": _frame(1), "det2_image": np.full((4, 4), 2, np.uint16),
              "temperature": 300.0},
        timestamps={"det1_image": 0.0, "det2_image": 0.0, "temperature": 0.0})
    return [("start", run.start_doc), ("descriptor", descriptor.descriptor_doc),
            ("event", event)], descriptor.descriptor_doc["uid"]


def test_every_image_field_of_a_descriptor_by_default():
    documents, uid = _two_detectors()
    source = FrameSource()
    frames = _feed(source, documents)
    assert {key: frame.shape for key, _, frame, _ in frames} == {
        "det1_image": SHAPE, "det2_image": (4, 4)}
    assert source.keys_for(uid) == {"det1_image": SHAPE, "det2_image": (4, 4)}


def test_fields_selects_among_the_image_fields():
    documents, uid = _two_detectors()
    source = FrameSource(fields=["det2_image"])
    frames = _feed(source, documents)
    assert [(key, frame.shape) for key, _, frame, _ in frames] == [("det2_image", (4, 4))]
    assert source.keys_for(uid) == {"det2_image": (4, 4)}


def test_a_requested_field_without_a_declared_shape_is_still_read():
    run, descriptor = _run_with({"img": {"source": "SIM:det", "dtype": "array",
                                         "shape": []}})
    event = descriptor.compose_event(data={"img": _frame(3)}, timestamps={"img": 0.0})
    source = FrameSource(fields=["img"])
    ((key, _, frame, _),) = _feed(source, [("start", run.start_doc),
                                           ("descriptor", descriptor.descriptor_doc),
                                           ("event", event)])
    assert key == "img" and frame.shape == SHAPE
    assert source.keys_for(descriptor.descriptor_doc["uid"]) == {"img": (0, 0)}


def test_a_malformed_frame_raises_a_clear_error():
    run, descriptor = _run_with({"img": _image_key()})
    event = descriptor.compose_event(data={"img": np.zeros((2, *SHAPE))},
                                     timestamps={"img": 0.0})
    source = FrameSource()
    _feed(source, [("start", run.start_doc), ("descriptor", descriptor.descriptor_doc)])
    with pytest.raises(FrameSourceError, match=r"expected one 2-D frame.*shape \(2, 6, 8\)"):
        list(source.frames("event", event))


def test_a_flat_array_under_an_image_key_raises():
    run, descriptor = _run_with({"img": _image_key()})
    event = descriptor.compose_event(data={"img": np.zeros(48)}, timestamps={"img": 0.0})
    source = FrameSource()
    _feed(source, [("start", run.start_doc), ("descriptor", descriptor.descriptor_doc)])
    with pytest.raises(FrameSourceError, match=r"2-D frame.*\(48,\)"):
        list(source.frames("event", event))


# -- external frames: Resource/Datum --------------------------------------------------------
def _external_run(spec: str, root: Path, resource_path: str, resource_kwargs: dict,
                  datum_kwargs: list[dict]):
    """Documents of a run whose ``img`` frames live in files, as ophyd emits them."""
    run, descriptor = _run_with({"img": _image_key(external=True),
                                 "temperature": _scalar_key()})
    resource = run.compose_resource(spec=spec, root=str(root), resource_path=resource_path,
                                    resource_kwargs=resource_kwargs)
    documents = [("start", run.start_doc), ("descriptor", descriptor.descriptor_doc),
                 ("resource", resource.resource_doc)]
    for kwargs in datum_kwargs:
        datum = resource.compose_datum(datum_kwargs=kwargs)
        event = descriptor.compose_event(
            data={"img": datum["datum_id"], "temperature": 300.0},
            timestamps={"img": 7.0, "temperature": 7.0}, filled={"img": False})
        documents += [("datum", datum), ("event", event)]
    return documents + [("stop", run.compose_stop())]


def test_npy_seq_frames_are_read_from_their_files(tmp_path):
    for index in range(3):  # ophyd.sim's NumpySeqHandler format: <path>_<index>.npy
        np.save(tmp_path / f"frames_{index}.npy", _frame(10 + index))
    documents = _external_run("NPY_SEQ", tmp_path, "frames", {},
                              [{"index": i} for i in range(3)])
    source = FrameSource()
    frames = _feed(source, documents)
    assert [(key, seq, ts) for key, seq, _, ts in frames] == [
        ("img", 1, 7.0), ("img", 2, 7.0), ("img", 3, 7.0)]
    for i, (_, _, frame, _) in enumerate(frames):
        np.testing.assert_array_equal(frame, _frame(10 + i))
    source.close()


def test_ad_hdf5_frames_are_read_from_the_area_detector_dataset(tmp_path):
    pytest.importorskip("area_detector_handlers")
    stack = np.stack([_frame(20 + i) for i in range(2)])
    with h5py.File(tmp_path / "scan.h5", "w") as handle:
        handle.create_dataset("/entry/data/data", data=stack)
    documents = _external_run("AD_HDF5", tmp_path, "scan.h5", {"frame_per_point": 1},
                              [{"point_number": i} for i in range(2)])
    source = FrameSource()
    frames = _feed(source, documents)
    assert [frame.shape for _, _, frame, _ in frames] == [SHAPE, SHAPE]
    for i, (_, _, frame, _) in enumerate(frames):
        np.testing.assert_array_equal(frame, stack[i])
    source.close()


def _count_fills(source: FrameSource, monkeypatch) -> list[int]:
    calls = [0]
    fill_event = source._filler.fill_event

    def counted(*args, **kwargs):
        calls[0] += 1
        return fill_event(*args, **kwargs)

    monkeypatch.setattr(source._filler, "fill_event", counted)
    return calls


def test_a_missing_external_file_is_retried_then_raises_frame_source_error(tmp_path,
                                                                          monkeypatch):
    """A file not written yet may appear: read again after short waits, then a clear
    error naming the datum, its spec and where it was looked for."""
    monkeypatch.setattr("bluesky_symdenoise.stream.frames._REFILL_WAITS_S", (0.0, 0.0))
    documents = _external_run("NPY_SEQ", tmp_path, "missing", {}, [{"index": 0}])
    source = FrameSource()
    _feed(source, documents[:4])  # start, descriptor, resource, datum
    calls = _count_fills(source, monkeypatch)
    datum_id = documents[3][1]["datum_id"]
    with pytest.raises(FrameSourceError) as error:
        _feed(source, documents[4:])
    message = str(error.value)
    assert datum_id in message and "'NPY_SEQ'" in message and str(tmp_path / "missing") in message
    assert "FileNotFoundError" in message and "tried 3 times" in message
    assert isinstance(error.value.__cause__, event_model.DataNotAccessible)
    assert calls[0] == 3


def test_a_spec_without_a_handler_raises_frame_source_error_at_once(tmp_path, monkeypatch):
    """No handler for the spec will ever read it: no retries (neither FrameSource's nor
    event-model's)."""
    documents = _external_run("NO_SUCH_SPEC", tmp_path, "frames", {}, [{"index": 0}])
    source = FrameSource()
    _feed(source, documents[:4])
    calls = _count_fills(source, monkeypatch)
    with pytest.raises(FrameSourceError, match=r"'NO_SUCH_SPEC'.*no handler for its spec"):
        _feed(source, documents[4:])
    assert calls[0] == 1


def test_an_external_frame_is_read_when_the_event_omits_filled(tmp_path):
    np.save(tmp_path / "frames_0.npy", _frame(1))
    documents = _external_run("NPY_SEQ", tmp_path, "frames", {}, [{"index": 0}])
    for _, doc in documents:
        doc.pop("filled", None)  # optional in the schema; compose_event leaves it empty
    ((_, _, frame, _),) = _feed(FrameSource(), documents)
    np.testing.assert_array_equal(frame, _frame(1))


# -- external frames: StreamResource/StreamDatum --------------------------------------------
def test_stream_datum_frames_are_slices_of_the_hdf5_dataset(tmp_path):
    stack = np.stack([_frame(30 + i) for i in range(4)])
    path = tmp_path / "stream.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("/entry/data/data", data=stack)
    run = compose_run()
    stream_resource = run.compose_stream_resource(
        mimetype="application/x-hdf5", uri=path.as_uri(), data_key="img",
        parameters={"dataset": "/entry/data/data"})
    descriptor = run.compose_descriptor(name="primary",
                                        data_keys={"img": _image_key(external=True)})
    datum = stream_resource.compose_stream_datum(
        indices={"start": 1, "stop": 3}, seq_nums={"start": 2, "stop": 4},
        descriptor=descriptor.descriptor_doc)
    source = FrameSource()
    frames = _feed(source, [("start", run.start_doc),
                            ("descriptor", descriptor.descriptor_doc),
                            ("stream_resource", stream_resource.stream_resource_doc),
                            ("stream_datum", datum)])
    assert [(key, seq) for key, seq, _, _ in frames] == [("img", 2), ("img", 3)]
    np.testing.assert_array_equal(frames[0][2], stack[1])
    np.testing.assert_array_equal(frames[1][2], stack[2])


def test_a_stream_datum_of_an_unknown_stream_resource_raises(tmp_path):
    run, descriptor = _run_with({"img": _image_key(external=True)})
    stream_resource = run.compose_stream_resource(  # never given to the source
        mimetype="application/x-hdf5", uri=(tmp_path / "x.h5").as_uri(), data_key="img",
        parameters={"dataset": "/entry/data/data"}, uid="sr-1")
    datum = stream_resource.compose_stream_datum(
        indices={"start": 0, "stop": 1}, descriptor=descriptor.descriptor_doc)
    source = FrameSource()
    _feed(source, [("start", run.start_doc), ("descriptor", descriptor.descriptor_doc)])
    with pytest.raises(FrameSourceError, match="unknown StreamResource sr-1"):
        list(source.frames("stream_datum", datum))


# -- close ----------------------------------------------------------------------------------
def test_close_releases_the_handlers_and_can_be_called_twice(tmp_path):
    pytest.importorskip("area_detector_handlers")
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("/entry/data/data", data=_frame(1)[np.newaxis])
    documents = _external_run("AD_HDF5", tmp_path, "scan.h5", {"frame_per_point": 1},
                              [{"point_number": 0}])
    source = FrameSource()
    assert len(_feed(source, documents)) == 1
    with pytest.raises(OSError):  # the handler holds the file open
        h5py.File(path, "w")
    source.close()
    h5py.File(path, "w").close()  # released: the detector may write the file again
    source.close()  # never raises, even when already closed
