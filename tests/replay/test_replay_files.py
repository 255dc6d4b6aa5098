"""``bluesky-symdenoise replay`` of ophyd-async runs whose frames are HDF5 files the catalog
registered (StreamResource), outside the catalog directory: the embedded server reads them
without being told where they are, and a missing file fails its run in one line."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_symdenoise.cli import main
from bluesky_symdenoise.store import derived_runs_of, registered_directories

#: Frames per run; SimBlobDetector's frames are always 240 x 320 (uint8).
FRAMES = 3
SHAPE = (240, 320)
#: The fast classical mode: these tests are about reading the files, not the denoiser.
FAST = ["--no-progress", "--budget", "0", "--method", "classical-nlm"]


@pytest.fixture(scope="module")
def blob_catalog(tmp_path_factory):
    """(catalog directory, frames directory, [(uid, its HDF5 file)] for two runs): counts of
    an ophyd-async SimBlobDetector, written by TiledWriter to a server that was given the
    frames directory as readable storage, then closed."""
    from bluesky import RunEngine
    from bluesky import plans as bp
    from bluesky_tiled_plugins import TiledWriter
    from ophyd_async.core import StaticPathProvider, UUIDFilenameProvider, init_devices
    from ophyd_async.sim import SimBlobDetector
    from tiled.client import from_uri
    from tiled.server import SimpleTiledServer

    root = tmp_path_factory.mktemp("blob")
    catalog, frames = root / "catalog", root / "frames"
    frames.mkdir()
    engine = RunEngine({})
    with init_devices():  # ophyd-async connects in the RunEngine's event loop
        blob = SimBlobDetector(StaticPathProvider(UUIDFilenameProvider(), frames), name="blob")
    runs = []
    with SimpleTiledServer(directory=catalog, readable_storage=[frames]) as server:
        client = from_uri(server.uri)
        engine.subscribe(TiledWriter(client))
        for _ in range(2):
            before = set(frames.glob("*.h5"))
            (uid,) = engine(bp.count([blob], num=FRAMES))
            (written,) = set(frames.glob("*.h5")) - before
            runs.append((uid, written))
        client.context.close()
    return catalog, frames, runs


def test_replay_reads_the_frames_files_the_catalog_registered(blob_catalog, capsys):
    from tiled.client import from_uri
    from tiled.server import SimpleTiledServer

    catalog, frames, [(uid, _), _] = blob_catalog
    assert registered_directories(catalog) == [frames]

    status = main(["replay", "--catalog", str(catalog), uid, *FAST])  # no --readable-storage
    out = capsys.readouterr()
    assert status == 0, out
    assert "replayed:" in out.out and "Traceback" not in out.err

    with SimpleTiledServer(directory=catalog, readable_storage=[frames]) as server:
        client = from_uri(server.uri)
        (derived,) = derived_runs_of(client, uid)
        run = client[derived]
        assert run.metadata["start"]["original_run_uid"] == uid
        assert run.metadata["stop"]["exit_status"] == "success"
        denoised = run["denoised"]["blob_denoised"].read()
        raw = client[uid]["primary"]["blob"].read()
        client.context.close()
    assert raw.shape == (FRAMES, 1, *SHAPE)  # one (1, 240, 320) block per event
    assert denoised.shape == (FRAMES, *SHAPE)
    assert np.all(np.isfinite(denoised)) and denoised.sum() > 0
    assert not np.array_equal(denoised, raw[:, 0])


def test_a_missing_frames_file_fails_its_run_in_one_line_and_the_next_run_goes_on(
        blob_catalog, capsys):
    catalog, frames, [(first, lost), (second, _)] = blob_catalog
    away = lost.with_name(lost.name + ".away")
    lost.rename(away)
    try:
        status = main(["replay", "--catalog", str(catalog), first, second, "--force",
                       "--readable-storage", str(frames), *FAST])
    finally:
        away.rename(lost)
    out = capsys.readouterr()
    assert status == 1, out
    (failed,) = [line for line in out.out.splitlines() if line.startswith("failed:")]
    assert failed.startswith(f"failed: run {first}: frames of 'blob' are in {lost}, "
                             "which does not exist (registered by the catalog)")
    assert "Traceback" not in out.err
    assert any(line.startswith(f"replayed: run {second} -> derived run")
               for line in out.out.splitlines()), out.out


def test_readable_storage_must_be_a_directory_of_a_catalog_directory(blob_catalog, tmp_path,
                                                                     capsys):
    catalog, _, [(uid, _), _] = blob_catalog
    status = main(["replay", "--catalog", str(catalog), uid, "--readable-storage",
                   str(tmp_path / "nowhere"), *FAST])
    assert status == 2
    assert f"{tmp_path / 'nowhere'} is not a directory" in capsys.readouterr().err

    status = main(["replay", "--catalog", "http://127.0.0.1:9/api/v1", uid,
                   "--readable-storage", str(tmp_path), *FAST])
    assert status == 2
    assert "catalog directory" in capsys.readouterr().err
