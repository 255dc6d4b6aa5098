"""``bluesky-symdenoise replay``: archived raw run in a local Tiled directory -> derived run."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bluesky_symdenoise.store import ReplayError, derived_runs_of, find_runs, replay

from .conftest import FRAMES, SHAPE


@pytest.fixture(scope="module")
def reopened(raw_catalog, cli_replay):
    """A client of the catalog directory, served again in this process after the CLI ran
    (a directory is served by one process at a time)."""
    from tiled.client import from_uri
    from tiled.server import SimpleTiledServer

    directory, _ = raw_catalog
    with SimpleTiledServer(directory=directory) as server:
        client = from_uri(server.uri)
        yield client
        client.context.close()


@pytest.fixture(scope="module")
def cli_replay(raw_catalog):
    """The CLI run once, in its own process, as a user would."""
    directory, uid = raw_catalog
    result = subprocess.run(
        [sys.executable, "-m", "bluesky_symdenoise.cli", "replay", "--catalog",
         str(directory), uid, "--budget", "0", "--no-progress"],
        capture_output=True, text=True, timeout=240)
    return result


def test_cli_replay_writes_one_linked_derived_run(raw_catalog, cli_replay, reopened):
    _, uid = raw_catalog
    assert cli_replay.returncode == 0, cli_replay.stderr
    assert "replayed:" in cli_replay.stdout
    assert "no geometry" in cli_replay.stderr  # symmetry-free, said so

    derived = [key for key in reopened
               if reopened[key].metadata["start"].get("original_run_uid") == uid]
    assert len(derived) == 1
    run = reopened[derived[0]]
    assert run.metadata["stop"]["exit_status"] == "success"
    frames = run["denoised"]["det_img_denoised"].read()
    assert frames.shape == (FRAMES, *SHAPE)
    assert np.all(np.isfinite(frames))
    raw = reopened[uid]["primary"]["det_img"].read()
    assert not np.array_equal(frames, raw)
    assert any("geometry" in w for w in run.metadata["start"]["symdenoise"]["warnings"])


def test_second_replay_skips_unless_forced(raw_catalog, cli_replay, reopened):
    _, uid = raw_catalog
    assert cli_replay.returncode == 0, cli_replay.stderr
    (first,) = derived_runs_of(reopened, uid)

    (again,) = replay(reopened, [uid], budget_s=0, progress=False)
    assert again.status == "skipped" and again.derived_uid == first
    assert derived_runs_of(reopened, uid) == [first]

    (forced,) = replay(reopened, [uid], budget_s=0, progress=False, force=True,
                       center=(32.0, 32.0))
    assert forced.status == "replayed", forced
    assert forced.frames == FRAMES
    assert sorted(derived_runs_of(reopened, uid)) == sorted([first, forced.derived_uid])
    start = reopened[forced.derived_uid].metadata["start"]
    assert start["symdenoise"]["geometry_source"].startswith("beam centre from arguments")

    # a derived run is never replayed, and a search never returns one
    (derived,) = replay(reopened, [first], budget_s=0, progress=False)
    assert derived.status == "skipped" and "itself a derived run" in derived.message
    assert find_runs(reopened, plan="count") == [uid]
    assert find_runs(reopened, plan="scan") == []


def test_bad_catalog_and_uid_are_explained(tmp_path, reopened):
    with pytest.raises(ReplayError, match="not a Tiled catalog directory"):
        replay(tmp_path, ["x"], progress=False)
    with pytest.raises(ReplayError, match="not in the catalog"):
        replay(reopened, ["no-such-uid"], progress=False)
    with pytest.raises(ReplayError, match="nothing to replay"):
        replay(reopened, [], progress=False)
