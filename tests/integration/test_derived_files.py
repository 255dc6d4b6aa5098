"""Denoised frames above ``inline_limit_bytes`` go to one HDF5 file per derived run,
referenced by StreamResource/StreamDatum: registered by TiledWriter in a real Tiled catalog,
readable back by the plugin's own FrameSource, closed even when the scan is aborted."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from bluesky import Msg
from bluesky import plan_stubs as bps
from bluesky import plans as bp
from bluesky.utils import RunEngineInterrupted
from ophyd.sim import DirectImage, SynSignalWithRegistry

from bluesky_symdenoise.stream.callback import SymDenoise
from bluesky_symdenoise.stream.derived_files import (
    DATA_DIR_ENV,
    DERIVED_DATASET,
    derived_directory,
)
from bluesky_symdenoise.stream.frames import FrameSource

#: Bitshuffle's HDF5 filter id (hdf5plugin.BSHUF_ID).
BITSHUFFLE_FILTER = "32008"
#: The bus argument: no derived document may be larger than this once serialised.
DOCUMENT_LIMIT = 64 * 1024


def _json_size(doc: dict) -> int:
    return len(json.dumps(doc, default=lambda v: np.asarray(v).tolist()))


def _subscribe(RE, sd, derived, *callbacks):
    sd.subscribe(derived)
    for callback in callbacks:
        sd.subscribe(callback)
        RE.subscribe(callback)
    RE.subscribe(sd)


def _file_frames(path) -> np.ndarray:
    with h5py.File(path, "r") as handle:
        return handle[DERIVED_DATASET][()]


@pytest.fixture
def tiled_client(tmp_path):
    from tiled.client import from_uri
    from tiled.server import SimpleTiledServer

    (tmp_path / "derived").mkdir()
    with SimpleTiledServer(directory=tmp_path / "catalog",
                           readable_storage=[tmp_path / "derived"]) as server:
        client = from_uri(server.uri)
        yield client
        client.context.close()


def test_large_frames_go_to_one_compressed_file_that_tiled_serves(
        RE, frames, scene, derived, tmp_path, tiled_client):
    from bluesky_tiled_plugins import TiledWriter

    writer = TiledWriter(tiled_client)
    sd = SymDenoise(field="det_img", center=scene.geometry.center, mask=scene.mask,
                    budget_s=0, inline_limit_bytes=1000, derived_files=tmp_path / "derived")
    _subscribe(RE, sd, derived, writer)
    (uid,) = RE(bp.count([DirectImage(func=frames, name="det")], num=5))
    assert sd.flush(timeout=120)
    sd.close()
    assert sd.errors == []

    (start,) = derived.of("start")
    (resource,) = derived.of("stream_resource")
    datums = derived.of("stream_datum")
    assert len(datums) == 5
    assert resource["mimetype"] == "application/x-hdf5"
    assert resource["run_start"] == start["uid"]
    assert resource["parameters"]["dataset"] == DERIVED_DATASET
    (descriptor,) = [d for d in derived.of("descriptor") if d["name"] == "denoised"]
    frames_key = descriptor["data_keys"]["det_img_denoised"]
    assert frames_key["external"] == "STREAM:" and frames_key["shape"] == list(scene.mask.shape)
    assert "directory: derived_files=" in frames_key["description"]
    assert [d["seq_nums"]["start"] for d in datums] == [1, 2, 3, 4, 5]
    assert all(d["descriptor"] == descriptor["uid"] for d in datums)
    events = derived.stream("denoised")
    assert len(events) == 5 and all("det_img_denoised" not in e["data"] for e in events)
    derived.validate()
    assert derived.unchanged()
    # The bus argument: every derived document is small.
    sizes = {name: max(_json_size(d) for d in derived.of(name))
             for name in {name for name, _ in derived.docs}}
    assert max(sizes.values()) < DOCUMENT_LIMIT, sizes

    path = tmp_path / "derived" / f"{start['uid']}.h5"
    assert resource["uri"] == path.resolve().as_uri()
    with h5py.File(path, "r") as handle:
        dataset = handle[DERIVED_DATASET]
        assert dataset.shape == (5, *scene.mask.shape) and dataset.dtype == np.float32
        assert dataset.chunks == (1, *scene.mask.shape)
        assert BITSHUFFLE_FILTER in dataset._filters  # compressed with hdf5plugin's filter
        in_file = dataset[()]
        stored = dataset.id.get_storage_size()
    assert stored < in_file.nbytes
    assert np.isfinite(in_file).all() and in_file.std() > 0

    derived_run = tiled_client[start["uid"]]
    assert derived_run.metadata["start"]["original_run_uid"] == uid
    assert derived_run.metadata["stop"]["exit_status"] == "success"
    from_catalog = derived_run["denoised"]["det_img_denoised"].read()
    np.testing.assert_array_equal(np.asarray(from_catalog), in_file)

    # The derived run can itself be replayed: the plugin's FrameSource reads its frames.
    source = FrameSource(["det_img_denoised"])
    read_back = [frame for name, doc in derived.docs
                 for _, _, frame, _ in source.frames(name, doc)]
    source.close()
    np.testing.assert_array_equal(np.stack(read_back), in_file)


def test_frames_below_the_limit_stay_inline(RE, frames, scene, derived, tmp_path,
                                            monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "default"))
    sd = SymDenoise(field="det_img", center=scene.geometry.center, mask=scene.mask,
                    budget_s=0)
    _subscribe(RE, sd, derived)
    RE(bp.count([DirectImage(func=frames, name="det")], num=4))
    assert sd.flush(timeout=120)
    sd.close()
    assert sd.errors == []
    assert derived.of("stream_resource") == [] and derived.of("stream_datum") == []
    (descriptor,) = [d for d in derived.of("descriptor") if d["name"] == "denoised"]
    assert "external" not in descriptor["data_keys"]["det_img_denoised"]
    frames_out = [np.asarray(e["data"]["det_img_denoised"]) for e in
                  derived.stream("denoised")]
    assert len(frames_out) == 4 and all(f.shape == scene.mask.shape for f in frames_out)
    assert not (tmp_path / "default").exists()


def test_an_aborted_scan_leaves_a_closed_readable_file(RE, frames, scene, derived,
                                                       tmp_path):
    det = DirectImage(func=frames, name="det")

    def paused_scan():
        yield from bps.open_run()
        for _ in range(5):
            yield from bps.trigger_and_read([det])
        yield from bps.checkpoint()
        yield Msg("pause")
        for _ in range(5):
            yield from bps.trigger_and_read([det])
        yield from bps.close_run()

    sd = SymDenoise(field="det_img", center=scene.geometry.center, mask=scene.mask,
                    budget_s=0, inline_limit_bytes=1000, derived_files=tmp_path / "derived")
    _subscribe(RE, sd, derived)
    with pytest.raises(RunEngineInterrupted):
        RE(paused_scan())
    RE.abort(reason="test abort")
    assert sd.flush(timeout=120)
    sd.close()

    (start,) = derived.of("start")
    (stop,) = derived.of("stop")
    assert stop["exit_status"] == "abort"
    published = len(derived.of("stream_datum"))
    assert published == len(derived.stream("denoised")) == 5
    path = tmp_path / "derived" / f"{start['uid']}.h5"
    # Closed: no handle to it is open in this process, and another process opens it
    # (an HDF5 file left open for writing in SWMR mode refuses that).
    open_files = {h5py.h5f.FileID(i).name.decode() for i in
                  h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)}
    assert str(path) not in open_files
    script = ("import sys, h5py, hdf5plugin, numpy; "
              "f = h5py.File(sys.argv[1], 'r'); d = f[sys.argv[2]][()]; "
              "print(d.shape[0], int(numpy.isfinite(d).all()))")
    out = subprocess.run([sys.executable, "-c", script, str(path), DERIVED_DATASET],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.split() == [str(published), "1"]
    assert _file_frames(path).shape == (published, *scene.mask.shape)


def test_without_a_directory_the_file_goes_beside_the_raw_frames(RE, frames, scene,
                                                                derived, tmp_path):
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    img = SynSignalWithRegistry(func=frames, name="img", save_path=str(raw_dir),
                                labels={"detectors"})
    sd = SymDenoise("img", center=scene.geometry.center, mask=scene.mask, budget_s=0,
                    inline_limit_bytes=1000)
    _subscribe(RE, sd, derived)
    RE(bp.count([img], num=4))
    assert sd.flush(timeout=120)
    sd.close()
    assert sd.errors == []
    (start,) = derived.of("start")
    path = raw_dir / f"{start['uid']}.h5"
    assert _file_frames(path).shape == (4, *scene.mask.shape)
    assert derived.of("stream_resource")[0]["uri"] == path.resolve().as_uri()
    (descriptor,) = [d for d in derived.of("descriptor") if d["name"] == "denoised"]
    assert descriptor["data_keys"]["img_denoised"]["description"].endswith(
        "directory: beside the raw frames")


def test_the_directory_rule(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "default"))
    raw = tmp_path / "raw"
    raw.mkdir()
    given = tmp_path / "given" / "nested"
    assert derived_directory(given, [str(raw / "a.h5")]) == (given, "derived_files=")
    assert given.is_dir()
    assert derived_directory(None, ["https://example.org/x.h5", (raw / "a.h5").as_uri()]
                             ) == (raw, "beside the raw frames")
    assert derived_directory(None, [str(tmp_path / "missing" / "a.h5")]) == (
        tmp_path / "default", f"${DATA_DIR_ENV}")
    assert (tmp_path / "default").is_dir()


def test_derived_files_must_be_a_directory(tmp_path):
    a_file = tmp_path / "frames.h5"
    a_file.write_bytes(b"")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        SymDenoise("det", derived_files=a_file)
    with pytest.raises(ValueError, match="inline_limit_bytes"):
        SymDenoise("det", inline_limit_bytes=-1)
