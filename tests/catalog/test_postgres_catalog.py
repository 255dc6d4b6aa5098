"""Raw and derived runs in a Tiled server whose catalog is PostgreSQL (``tiled serve catalog
postgresql+asyncpg://...``, event tables in PostgreSQL too): live, through SymDenoise and
TiledWriter, and afterwards, through ``bluesky-symdenoise replay --catalog URI``. All real:
RunEngine, ophyd's DirectImage, bluesky-tiled-plugins' TiledWriter, the server a subprocess,
the replay a subprocess.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bluesky import plans as bp
from ophyd.sim import DirectImage

from bluesky_symdenoise.store import derived_runs_of, find_runs
from bluesky_symdenoise.stream.callback import SymDenoise

from .conftest import TABLES_DB

# Per test on 2 shared cores: the server's start (once), a denoiser warm-up (~10 s), and for
# the replay a second Python process; slow, not part of the inner loop.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
N_FRAMES = 3


@pytest.fixture
def client(postgres_tiled):
    from tiled.client import from_uri

    uri, api_key = postgres_tiled
    tiled_client = from_uri(uri, api_key=api_key)
    yield tiled_client
    tiled_client.context.close()


def _query(url: str, sql: str, *args):
    import asyncpg

    async def fetch():
        connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        try:
            return await connection.fetch(sql, *args)
        finally:
            await connection.close()

    return asyncio.run(fetch())


def _assert_in_postgres(postgres_url: str, postgres_cluster, raw_uid: str, derived_uid: str):
    """The runs are rows of the PostgreSQL catalog (not of some SQLite file), the derived
    one linked in its JSONB metadata, and their event tables are PostgreSQL tables."""
    rows = _query(postgres_url, "SELECT key, metadata->'start'->>'original_run_uid' AS link "
                  "FROM nodes WHERE key = ANY($1::text[])", [raw_uid, derived_uid])
    links = {row["key"]: row["link"] for row in rows}
    assert links == {raw_uid: None, derived_uid: raw_uid}
    tables = _query(postgres_cluster.url(TABLES_DB), "SELECT count(*) AS n FROM "
                    "information_schema.tables WHERE table_schema = 'public'")
    assert tables[0]["n"] > 0


def _check_derived(client, raw_uid: str, derived_uid: str, shape: tuple[int, int]) -> None:
    run = client[derived_uid]
    assert run.metadata["start"]["original_run_uid"] == raw_uid
    assert run.metadata["stop"]["exit_status"] == "success"
    frames = run["denoised"]["det_img_denoised"].read()
    raw = client[raw_uid]["primary"]["det_img"].read()
    assert raw.shape == (N_FRAMES, *shape)
    assert frames.shape == raw.shape
    assert np.all(np.isfinite(frames))
    assert not np.array_equal(frames, raw)


def test_live_raw_and_derived_runs_in_a_postgres_catalog(RE, frames, scene, client,
                                                         postgres_url, postgres_cluster):
    from bluesky_tiled_plugins import TiledWriter

    writer = TiledWriter(client)
    sd = SymDenoise(field="det_img", center=scene.geometry.center, mask=scene.mask,
                    budget_s=0)
    sd.subscribe(writer)
    RE.subscribe(writer)
    RE.subscribe(sd)
    try:
        (uid,) = RE(bp.count([DirectImage(func=frames, name="det")], num=N_FRAMES))
        assert sd.flush(timeout=120)
    finally:
        assert sd.close(timeout=30)
    assert sd.errors == []

    (derived_uid,) = derived_runs_of(client, uid)  # a JSONB search on PostgreSQL
    _check_derived(client, uid, derived_uid, scene.mask.shape)
    iq = client[derived_uid]["integrated"]["det_img_iq_denoised"].read()
    assert iq.shape[0] == N_FRAMES
    _assert_in_postgres(postgres_url, postgres_cluster, uid, derived_uid)


def test_cli_replay_against_a_postgres_catalog(RE, frames, scene, client, postgres_tiled,
                                               postgres_url, postgres_cluster):
    from bluesky_tiled_plugins import TiledWriter

    RE.subscribe(TiledWriter(client))
    (uid,) = RE(bp.count([DirectImage(func=frames, name="det")], num=N_FRAMES),
                sample="powder")
    assert derived_runs_of(client, uid) == []

    uri, api_key = postgres_tiled
    result = subprocess.run(
        [sys.executable, "-m", "bluesky_symdenoise.cli", "replay", "--catalog", uri,
         "--api-key", api_key, uid, "--budget", "0", "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stderr
    assert "replayed:" in result.stdout, result.stdout

    (derived_uid,) = derived_runs_of(client, uid)
    _check_derived(client, uid, derived_uid, scene.mask.shape)
    start = client[derived_uid].metadata["start"]
    assert start["sample"] == "powder"
    assert any("geometry" in w for w in start["symdenoise"]["warnings"])
    found = find_runs(client, plan="count")  # JSONB searches: raw runs only
    assert uid in found and derived_uid not in found
    _assert_in_postgres(postgres_url, postgres_cluster, uid, derived_uid)
