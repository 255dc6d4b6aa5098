"""A local Tiled catalog directory holding one raw run written by bluesky's TiledWriter."""

from __future__ import annotations

import numpy as np
import pytest

SHAPE = (64, 64)
FRAMES = 3



@pytest.fixture(scope="session")
def raw_catalog(tmp_path_factory):
    """(directory, raw uid): a count of 64x64 frames, no geometry in the start document."""
    from bluesky import RunEngine
    from bluesky import plans as bp
    from bluesky_tiled_plugins import TiledWriter
    from ophyd.sim import DirectImage
    from tiled.client import from_uri
    from tiled.server import SimpleTiledServer

    from bluesky_symdenoise.simulate.scenes import make_scene

    scene = make_scene("powder", shape=SHAPE, seed=3)
    rng = np.random.default_rng(0)
    directory = tmp_path_factory.mktemp("catalog")
    with SimpleTiledServer(directory=directory) as server:
        client = from_uri(server.uri)
        engine = RunEngine({})
        engine.subscribe(TiledWriter(client))
        det = DirectImage(func=lambda: scene.expose(2.0, rng), name="det")
        (uid,) = engine(bp.count([det], num=FRAMES), sample="powder")
        client.context.close()
    return directory, uid
