"""Archived runs: read a raw run back from Tiled, denoise it, write the derived run beside it."""

from .assets import registered_directories
from .replay import (
    ReplayError,
    ReplayOutcome,
    derived_runs_of,
    find_runs,
    open_catalog,
    replay,
    run_documents,
)

__all__ = ["ReplayError", "ReplayOutcome", "derived_runs_of", "find_runs", "open_catalog",
           "registered_directories", "replay", "run_documents"]
