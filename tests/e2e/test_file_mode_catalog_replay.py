"""File mode end to end, all real: frames in through areaDetector HDF5 files, derived frames
out to an HDF5 file, both registered in a catalog directory, then replayed from that
directory by the command line after the server that wrote it has stopped.

    beamline IOC (caproto subprocess, loopback) --HDF1--> frames_dir/*.h5 (AD_HDF5 Resource)
        -> RunEngine count -> TiledWriter -> SimpleTiledServer(directory=catalog_dir,
                                             readable_storage=[frames_dir, derived_dir])
        -> SymDenoise(derived_files=derived_dir, inline_limit_bytes=0)
              -> derived_dir/<derived uid>.h5 (StreamResource/StreamDatum) -> TiledWriter
    server stopped
    python -m bluesky_symdenoise.cli replay --catalog catalog_dir RAW_UID --force ...
        (no --readable-storage: the embedded server reads the directories the catalog
        registered) -> a second derived run, in the same directory
    SimpleTiledServer(directory=catalog_dir, readable_storage=[...]) again: both read back.
"""

from __future__ import annotations

import re
import sys

import h5py
import hdf5plugin  # noqa: F401  (the derived file is Bitshuffle-compressed)
import numpy as np
import pytest

from bluesky_symdenoise.detector.loopback import loopback_env
from bluesky_symdenoise.store import derived_runs_of, registered_directories
from bluesky_symdenoise.stream.callback import SymDenoise
from bluesky_symdenoise.stream.derived_files import DERIVED_DATASET
from tests.helpers import count_and_drain, running_beamline_ioc

from .conftest import REPO, run

# ~100 s on 2 shared cores: three Tiled server starts (~15 s each: live, the replay's
# embedded one, read-back) and two denoiser warm-ups (~13 s each) dominate.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SHAPE = (64, 64)
N_FRAMES = 3
FIELD = "det_image"
DERIVED_FIELD = f"{FIELD}_denoised"


@pytest.fixture(scope="module")
def beamline_ioc():
    with running_beamline_ioc(SHAPE, seed=5) as ioc:
        yield ioc


def _live_run(beamline_ioc, RE, collector, derived, catalog_dir, frames_dir, derived_dir):
    """Count N_FRAMES through the HDF5 plugin with SymDenoise and TiledWriter subscribed;
    return (raw uid, the IOC's file, its frames read with h5py) after the server stopped."""
    from bluesky_tiled_plugins import TiledWriter
    from tiled.client import from_uri
    from tiled.server import SimpleTiledServer

    from bluesky_symdenoise.detector.devices import SimXrayDetectorHDF5, make_beamline_devices

    det, _, _ = make_beamline_devices(beamline_ioc.prefix, frames_dir=frames_dir)
    assert isinstance(det, SimXrayDetectorHDF5)
    det.cam.acquire_time.put(0.05, wait=True)
    with SimpleTiledServer(directory=catalog_dir,
                           readable_storage=[frames_dir, derived_dir]) as server:
        client = from_uri(server.uri)
        try:
            writer = TiledWriter(client)
            sd = SymDenoise(FIELD, poni=str(beamline_ioc.poni_path),
                            mask=str(beamline_ioc.mask_path), budget_s=0,
                            derived_files=derived_dir, inline_limit_bytes=0)
            sd.subscribe(writer)
            sd.subscribe(derived)
            for callback in (collector, writer, sd):
                RE.subscribe(callback)
            uid = count_and_drain(RE, det, sd, N_FRAMES)
        finally:
            client.context.close()

    # The raw frames went out through the IOC's HDF5 plugin, one AD_HDF5 Resource.
    (resource,) = collector.of("resource")
    assert resource["spec"] == "AD_HDF5"
    assert resource["root"] == str(frames_dir.resolve())
    events = collector.of("event")
    assert len(events) == N_FRAMES and all(isinstance(e["data"][FIELD], str) for e in events)
    raw_file = frames_dir / resource["resource_path"]  # under a date tree of frames_dir
    with h5py.File(raw_file, "r") as handle:
        on_disk = handle["/entry/data/data"][()]
    assert on_disk.shape == (N_FRAMES, *SHAPE) and on_disk.sum() > 0
    assert len({f.tobytes() for f in on_disk}) == N_FRAMES  # distinct exposures
    return uid, raw_file, on_disk


def test_file_mode_run_is_registered_and_replays_from_the_catalog_directory(
        beamline_ioc, RE, collector, derived, tmp_path):
    from tiled.client import from_uri
    from tiled.server import SimpleTiledServer

    catalog_dir, frames_dir, derived_dir = (tmp_path / name for name in
                                            ("catalog", "frames", "derived"))
    raw_uid, raw_file, on_disk = _live_run(beamline_ioc, RE, collector, derived,
                                           catalog_dir, frames_dir, derived_dir)

    # The live derived run: its frames went to one HDF5 file, referenced, not inline.
    (start,) = derived.of("start")
    live_uid = start["uid"]
    assert start["original_run_uid"] == raw_uid
    (stop,) = derived.of("stop")
    assert stop["exit_status"] == "success"
    (stream_resource,) = derived.of("stream_resource")
    live_file = derived_dir / f"{live_uid}.h5"
    assert stream_resource["uri"] == live_file.resolve().as_uri()
    assert len(derived.of("stream_datum")) == N_FRAMES
    assert all(DERIVED_FIELD not in e["data"] for e in derived.stream("denoised"))
    derived.validate()
    with h5py.File(live_file, "r") as handle:
        dataset = handle[DERIVED_DATASET]
        assert dataset.shape == (N_FRAMES, *SHAPE) and dataset.dtype == np.float32
        live_frames = dataset[()]
    assert np.all(np.isfinite(live_frames)) and live_frames.std() > 0

    # Both directories are registered by the catalog: the replay needs no flag to read them.
    assert registered_directories(catalog_dir) == sorted([raw_file.parent, derived_dir])

    # Replay as a user does, the server that wrote the directory stopped (DuckDB: one
    # process holds it). --force: the live derived run already links to the raw run.
    env = loopback_env()
    env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"})
    argv = [sys.executable, "-m", "bluesky_symdenoise.cli", "replay", "--catalog",
            str(catalog_dir), raw_uid, "--force", "--no-progress", "--budget", "0",
            "--poni", str(beamline_ioc.poni_path), "--mask", str(beamline_ioc.mask_path)]
    result = run(argv, timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    match = re.search(rf"^replayed: run {raw_uid} -> derived run (\S+): {N_FRAMES} frames",
                      result.stdout, re.MULTILINE)
    assert match, result.stdout
    replayed_uid = match.group(1)
    assert replayed_uid != live_uid

    # The directory read again: raw frames from the IOC's file, both derived runs, the live
    # one's frames from its registered HDF5 file.
    with SimpleTiledServer(directory=catalog_dir,
                           readable_storage=[frames_dir, derived_dir]) as server:
        client = from_uri(server.uri)
        try:
            assert sorted(derived_runs_of(client, raw_uid)) == sorted([live_uid, replayed_uid])
            raw = np.asarray(client[raw_uid]["primary"][FIELD].read())
            live_run = client[live_uid]
            (source,) = live_run["denoised"][DERIVED_FIELD].data_sources()
            assert [a.data_uri for a in source.assets] == [live_file.resolve().as_uri()]
            live_stored = np.asarray(live_run["denoised"][DERIVED_FIELD].read())
            replayed_run = client[replayed_uid]
            replayed_start = replayed_run.metadata["start"]
            replayed_stop = replayed_run.metadata["stop"]
            replayed = np.asarray(replayed_run["denoised"][DERIVED_FIELD].read())
            replayed_iq_raw = np.asarray(replayed_run["integrated"][f"{FIELD}_iq_raw"].read())
        finally:
            client.context.close()
    np.testing.assert_array_equal(raw.reshape(on_disk.shape), on_disk)
    np.testing.assert_array_equal(live_stored, live_frames)
    assert replayed_start["original_run_uid"] == raw_uid
    assert replayed_stop["exit_status"] == "success"
    assert replayed.shape == (N_FRAMES, *SHAPE) and np.all(np.isfinite(replayed))
    assert not np.allclose(replayed, on_disk)  # denoised, not passed through
    # The replay read the same raw frames from the AD_HDF5 file (through its embedded
    # server) as the live run (event_model.Filler): the same raw I(q), the same denoised
    # frames.
    live_iq_raw = np.stack([e["data"][f"{FIELD}_iq_raw"]
                            for e in derived.stream("integrated")])
    assert live_iq_raw.shape[0] == N_FRAMES
    assert np.all(live_iq_raw.sum(axis=1) > 0)
    assert not np.allclose(live_iq_raw[0], live_iq_raw[1])  # distinct exposures
    np.testing.assert_allclose(replayed_iq_raw, live_iq_raw, rtol=1e-6)
    np.testing.assert_allclose(replayed, live_frames, rtol=1e-4, atol=1e-4)
