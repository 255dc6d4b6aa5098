"""Raw and derived runs land in one Tiled catalog (embedded SQLite server) and read back."""

from __future__ import annotations

import numpy as np
import pytest
from bluesky import plans as bp
from ophyd.sim import DirectImage

from bluesky_symdenoise.stream.callback import SymDenoise


@pytest.fixture
def tiled_client(tmp_path):
    from tiled.client import from_uri
    from tiled.server import SimpleTiledServer

    with SimpleTiledServer(directory=tmp_path / "catalog") as server:
        client = from_uri(server.uri)
        yield client
        client.context.close()


def test_raw_and_derived_runs_in_tiled(RE, frames, scene, tiled_client):
    from bluesky_tiled_plugins import TiledWriter

    writer = TiledWriter(tiled_client)
    sd = SymDenoise(field="det_img", center=scene.geometry.center, mask=scene.mask,
                    budget_s=0)
    sd.subscribe(writer)
    RE.subscribe(writer)
    RE.subscribe(sd)
    (uid,) = RE(bp.count([DirectImage(func=frames, name="det")], num=3))
    assert sd.flush(timeout=120)
    sd.close()
    assert sd.errors == []

    raw = tiled_client[uid]
    derived_uid = next(key for key in tiled_client
                       if tiled_client[key].metadata["start"].get("original_run_uid") == uid)
    derived = tiled_client[derived_uid]
    assert derived.metadata["stop"]["exit_status"] == "success"
    images = derived["denoised"]["det_img_denoised"].read()
    assert images.shape == (3, *scene.mask.shape)
    assert np.all(np.isfinite(images))
    raw_images = raw["primary"]["det_img"].read()
    assert raw_images.shape == (3, *scene.mask.shape)
    iq = derived["integrated"]["det_img_iq_denoised"].read()
    assert iq.shape[0] == 3
