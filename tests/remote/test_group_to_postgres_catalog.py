"""The facility picture end to end: RunEngines -> NATS JetStream -> a worker group of two
``serve --group`` members -> TiledWriter reading the bus -> Tiled on PostgreSQL; then the
raw runs replayed from that catalog. All real: nats-server, the members, a PostgreSQL
cluster and a Tiled server, each a subprocess on 127.0.0.1."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bluesky_symdenoise.store import derived_runs_of

from .conftest import wait_for
from .test_serve_nats import SHAPE, SUBJECT, read_stream
from .test_serve_nats_group import GROUP, completed, publish_run

pytest.importorskip("bluesky_nats")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
FRAMES = 3


def test_worker_group_to_a_postgres_catalog_and_replay(nats_server, serve, postgres_tiled):
    from bluesky_tiled_plugins import TiledWriter
    from tiled.client import from_uri

    members = [serve("--nats", nats_server, "--subject", SUBJECT, "--group", GROUP)
               for _ in range(2)]
    uids = [publish_run(nats_server, FRAMES, seed=s) for s in range(2)]
    wait_for(lambda: completed(nats_server, uids, FRAMES), 120, "the group's derived runs",
             interval=0.5)
    for member in members:
        assert member.signal(signal.SIGINT) == 0, member.output

    uri, api_key = postgres_tiled
    client = from_uri(uri, api_key=api_key)
    try:
        writer = TiledWriter(client)  # what a facility's bus-to-catalog service runs
        for name, doc in read_stream(nats_server):
            writer(name, doc)
        for uid in uids:
            (derived_uid,) = derived_runs_of(client, uid)
            run = client[derived_uid]
            assert run.metadata["stop"]["exit_status"] == "success"
            frames = run["denoised"]["det_img_denoised"].read()
            assert frames.shape == (FRAMES, *SHAPE) and np.all(np.isfinite(frames))

        # the archived raw run replayed from the PostgreSQL catalog: a second derived run
        result = subprocess.run(
            [sys.executable, "-m", "bluesky_symdenoise.cli", "replay", "--catalog", uri,
             "--api-key", api_key, uids[0], "--force", "--budget", "0", "--no-progress"],
            cwd=REPO, capture_output=True, text=True, timeout=150)
        assert result.returncode == 0, result.stderr
        derived = derived_runs_of(client, uids[0])
        assert len(derived) == 2
        replayed = client[next(d for d in derived if d not in read_stream_uids(nats_server))]
        assert replayed["denoised"]["det_img_denoised"].read().shape == (FRAMES, *SHAPE)
    finally:
        client.context.close()


def read_stream_uids(url: str) -> set[str]:
    """The uids of the runs started on the bus."""
    return {doc["uid"] for name, doc in read_stream(url) if name == "start"}
