"""Files a Tiled catalog has registered (HDF5, TIFF, ... written beside it by the detector).

A catalog directory (``SimpleTiledServer(directory=...)``) serves only files under its
*readable storage*: its own ``data/`` and the directories it is told about. A run written
by ``TiledWriter`` from ophyd-async StreamResources (``SimBlobDetector``, AreaDetector HDF5
writers) registers its files where the detector wrote them, outside the catalog directory,
so an embedded server started without readable storage answers HTTP 500 for every such
array. The catalog's SQLite database lists every asset it registered (tiled's ``assets``
table, ``data_uri`` column): their directories are what a replay has to be able to read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

__all__ = ["RegisteredFile", "missing_files", "readable_directories",
           "registered_directories", "registered_files"]

logger = logging.getLogger(__name__)


def _file_path(data_uri: str) -> Path | None:
    """The local path of a ``file://`` data URI, else None (duckdb://, s3://, ...)."""
    from tiled.utils import path_from_uri

    if urlparse(data_uri).scheme != "file":
        return None
    return path_from_uri(data_uri)


def _outermost(directories: Iterable[Path]) -> list[Path]:
    """The directories, sorted, without those that lie inside another of them."""
    kept: list[Path] = []
    for directory in sorted(set(directories), key=lambda p: (len(p.parts), str(p))):
        if not any(directory == k or k in directory.parents for k in kept):
            kept.append(directory)
    return sorted(kept)


def registered_directories(catalog_dir: str | Path) -> list[Path]:
    """Directories of the local files registered by the catalog in ``catalog_dir``.

    Parameters
    ----------
    catalog_dir
        A directory laid out by ``SimpleTiledServer(directory=...)`` (``catalog.db``).

    Returns
    -------
    list of Path
        For each ``file://`` asset of the catalog's ``assets`` table, its parent directory
        (the asset itself when it is a directory, e.g. a TIFF series or zarr store), nested
        directories folded into the outermost one, the catalog's own ``data/`` left out
        (the server writes there, so it reads there too). Empty for a new directory, and
        when the database cannot be read as a tiled catalog (a warning is logged).
    """
    directory = Path(catalog_dir).expanduser().absolute()
    own = directory / "data"
    if not (directory / "catalog.db").is_file():  # a new catalog: nothing registered yet
        return []
    database = f"file:{directory / 'catalog.db'}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(database, uri=True)) as connection:
            rows = connection.execute("SELECT data_uri, is_directory FROM assets").fetchall()
    except sqlite3.Error as exc:
        logger.warning("cannot list the files registered by %s (%s): only its own data/ "
                       "and --readable-storage will be readable", directory, exc)
        return []
    found = []
    for data_uri, is_directory in rows:
        path = _file_path(str(data_uri))
        if path is None:
            continue
        where = path if is_directory else path.parent
        if where != own and own not in where.parents:
            found.append(where)
    return _outermost(found)


def readable_directories(catalog_dir: str | Path,
                         readable_storage: str | Path | Sequence[str | Path] | None = None
                         ) -> list[Path]:
    """What an embedded server of ``catalog_dir`` must be able to read.

    The user's ``readable_storage`` (each must be an existing directory) plus the
    directories of the files the catalog registered (:func:`registered_directories`).
    Raises :class:`FileNotFoundError` for a user directory that does not exist.
    """
    if isinstance(readable_storage, str | Path):
        readable_storage = [readable_storage]
    given = [Path(p).expanduser().absolute() for p in readable_storage or ()]
    for path in given:
        if not path.is_dir():
            raise FileNotFoundError(f"readable storage {path} is not a directory")
    return _outermost([*given, *registered_directories(catalog_dir)])


@dataclass
class RegisteredFile:
    """A local file registered for some arrays of a run."""

    path: Path
    #: The data keys whose data the file holds, as ``stream/key``.
    keys: list[str] = field(default_factory=list)
    #: Those of :attr:`keys` that are frames (one 2-D image or more per event).
    frame_keys: list[str] = field(default_factory=list)

    @property
    def problem(self) -> str | None:
        """``"does not exist"``, ``"cannot be read ..."`` or None when the file is readable."""
        if not self.path.is_file() and not self.path.is_dir():
            return "does not exist"
        if not os.access(self.path, os.R_OK):
            return "cannot be read (permission denied)"
        return None


def registered_files(run: Any) -> list[RegisteredFile]:
    """The local files that the arrays of ``run`` (a ``BlueskyRun`` v3 client) are in.

    One request per array (its data sources). Arrays the catalog holds itself (event
    tables in DuckDB) have no ``file://`` asset and are not listed.
    """
    by_path: dict[Path, RegisteredFile] = {}
    for stream_name in run:
        stream = run[stream_name]
        for key in stream:
            node = stream[key]
            for source in node.data_sources() or ():
                for asset in source.assets:
                    path = _file_path(asset.data_uri)
                    if path is None:
                        continue
                    registered = by_path.setdefault(path, RegisteredFile(path))
                    registered.keys.append(f"{stream_name}/{key}")
                    if len(getattr(node, "shape", ())) >= 3:
                        registered.frame_keys.append(f"{stream_name}/{key}")
    return list(by_path.values())


def missing_files(run: Any) -> list[str]:
    """One sentence per registered file of ``run`` that is missing or cannot be read,
    e.g. ``frames of 'blob' are in /x/y.h5, which does not exist (registered by the
    catalog)``; empty when every file can be read."""
    problems = []
    for registered in registered_files(run):
        problem = registered.problem
        if problem is None:
            continue
        keys = registered.frame_keys or registered.keys
        names = ", ".join(map(repr, dict.fromkeys(k.split("/", 1)[1] for k in keys)))
        what = "frames" if registered.frame_keys else "data"
        problems.append(f"{what} of {names} are in {registered.path}, which {problem} "
                        "(registered by the catalog)")
    return problems
