"""symdenoise profile, 10: an embedded Tiled catalog; every raw run is written to it.

Environment:
    SYMDENOISE_CATALOG    catalog directory (default ~/.symdenoise/catalog), served by
                          tiled.server.SimpleTiledServer (SQLite + files) on loopback.

Names: ``tiled_server``, ``catalog`` (a Tiled client), ``tiled_writer``.
"""

import os
from pathlib import Path

from bluesky_tiled_plugins import TiledWriter
from tiled.client import from_uri
from tiled.server import SimpleTiledServer

SYMDENOISE_CATALOG_DIR = Path(os.environ.get("SYMDENOISE_CATALOG")
                              or Path.home() / ".symdenoise" / "catalog").expanduser()
SYMDENOISE_CATALOG_DIR.mkdir(parents=True, exist_ok=True)
tiled_server = SimpleTiledServer(directory=SYMDENOISE_CATALOG_DIR)
catalog = from_uri(tiled_server.uri)
tiled_writer = TiledWriter(catalog)
RE.subscribe(tiled_writer)  # noqa: F821 - defined by 00-base.py


def _symdenoise_close_catalog():
    try:
        catalog.context.close()
    finally:
        tiled_server.close()


symdenoise_at_exit(_symdenoise_close_catalog)  # noqa: F821 - runs after the later files' handlers
print(f"symdenoise: catalog {SYMDENOISE_CATALOG_DIR} at {tiled_server.uri}")
