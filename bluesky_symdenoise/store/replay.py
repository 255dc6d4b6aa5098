"""Replay archived raw runs from a Tiled catalog through :class:`SymDenoise`.

A raw run written by bluesky-tiled-plugins' ``TiledWriter`` is read back as Bluesky documents
(:func:`run_documents`): the start and stop from the run's metadata, the descriptors from
each stream's metadata, and one event per row with every frame *filled in*, read through
Tiled's array API. That works the same for frames stored inline (Tiled-managed zarr/duckdb)
and for external files the Tiled server registered (HDF5, TIFF, ...): the server reads them,
the replay never needs a path on its own disk. Memory stays bounded: frames are read a block
at a time, and :class:`SymDenoise` in lossless mode makes the reader wait for the denoiser.

The derived run goes to the same catalog (or another) through ``TiledWriter``, linked by
``start["original_run_uid"]``.

Files registered by a catalog directory (an ophyd-async detector's HDF5 files, written
beside the catalog, not in it): the embedded server may read the directories of every file
the catalog registered (:mod:`.assets`) plus ``readable_storage``, and before a run is read
its files are checked, so a missing or unreadable one fails that run with one sentence
naming the file and the keys it holds, and the next run goes on.

Second replay of a run: a raw run that already has a derived run in the destination catalog
is **skipped** (status ``"skipped"``, the existing derived uids named) unless ``force=True``,
which writes one more derived run; the old one is kept (derived runs are never deleted by this
package). Runs that are themselves derived (their start has ``original_run_uid``) are
skipped, always.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ReplayError", "ReplayOutcome", "derived_runs_of", "find_runs", "open_catalog",
           "replay", "run_documents"]

logger = logging.getLogger(__name__)

#: Frames are read from Tiled in blocks of about this many bytes.
_BLOCK_BYTES = 32 * 2**20
#: Start keys that give the replay a geometry (see ``SymDenoise``).
_GEOMETRY_KEYS = ("poni", "beam_center")


class ReplayError(ValueError):
    """A catalog or run cannot be replayed; the message says what to change."""


@dataclass
class ReplayOutcome:
    """What happened to one raw run."""

    raw_uid: str
    #: ``"replayed"``, ``"skipped"`` or ``"failed"``.
    status: str
    derived_uid: str | None = None
    frames: int = 0
    message: str = ""
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# -- catalogs ----------------------------------------------------------------------------------
def _is_uri(spec: Any) -> bool:
    return isinstance(spec, str) and "://" in spec


@contextlib.contextmanager
def open_catalog(spec: Any, *, api_key: str | None = None, create: bool = False,
                 readable_storage: str | Path | Sequence[str | Path] | None = None
                 ) -> Iterator[Any]:
    """Yield a Tiled client for ``spec``, closing what was opened on exit.

    ``spec`` is a Tiled client (used as is), a Tiled URI (``http://host:8000/api/v1``, with
    ``api_key`` when the server needs one), or a local directory laid out by
    ``tiled.server.SimpleTiledServer(directory=...)`` (``catalog.db``, ``storage.duckdb``,
    ``data/``): an embedded server is started on 127.0.0.1 for the duration. A directory is
    held by one server at a time (DuckDB locks it): while another process serves it, give
    that server's URI instead. ``create=True`` lets a new directory be made (``--to``).

    The embedded server of a directory may read (besides its own ``data/``) the directories
    of the files the catalog registered (:func:`.assets.registered_directories`: HDF5 files
    of ophyd-async detectors, ...) and the directories ``readable_storage``; a server at a
    URI reads what its own configuration allows, so ``readable_storage`` is refused there.
    """
    from tiled.client import from_uri

    if readable_storage is not None and (not isinstance(spec, str | Path) or _is_uri(spec)):
        raise ReplayError("readable storage is given to the embedded server of a catalog "
                          "directory; a Tiled server at a URI reads what its own "
                          "configuration allows (its readable_storage)")
    if not isinstance(spec, str | Path):
        yield spec
        return
    if _is_uri(spec):
        client = from_uri(str(spec), api_key=api_key)
        try:
            yield client
        finally:
            client.context.close()
        return
    directory = Path(spec).expanduser()
    if not create and not (directory / "catalog.db").is_file():
        raise ReplayError(f"{directory} is not a Tiled catalog directory (no catalog.db); "
                          "give a directory written by SimpleTiledServer(directory=...) or a "
                          "Tiled URI")
    from tiled.server import SimpleTiledServer

    from .assets import readable_directories

    try:
        readable = readable_directories(directory, readable_storage)
    except FileNotFoundError as exc:
        raise ReplayError(f"{exc} (--readable-storage takes existing directories)") from exc
    with SimpleTiledServer(directory=directory, readable_storage=readable or None) as server:
        client = from_uri(server.uri)
        try:
            yield client
        finally:
            client.context.close()


def _same_catalog(a: Any, b: Any) -> bool:
    if b is None or a is b:
        return True
    if isinstance(a, str | Path) and isinstance(b, str | Path) and not _is_uri(a) \
            and not _is_uri(b):
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    return isinstance(a, str) and isinstance(b, str) and a == b


def _timestamp(value: str | float | None) -> float | None:
    if value is None or isinstance(value, int | float):
        return value
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(value).timestamp()
    except ValueError as exc:
        raise ReplayError(f"cannot read the time {value!r}: give an ISO date "
                          "(2025-03-01 or 2025-03-01T14:30) or seconds since the epoch") from exc


def find_runs(client: Any, uids: Sequence[str] = (), *, plan: str | None = None,
              since: str | float | None = None, until: str | float | None = None
              ) -> list[str]:
    """Raw run uids to replay: ``uids`` as given, plus the runs matching the search
    (``plan``: ``start.plan_name``; ``since``/``until``: ``start.time``, ISO date or epoch
    seconds). Derived runs are never returned by the search. Raises :class:`ReplayError` for
    a uid the catalog does not hold."""
    from tiled.queries import Key

    found: list[str] = []
    for uid in uids:
        if uid not in client:
            raise ReplayError(f"run {uid!r} is not in the catalog")
        found.append(uid)
    if plan is None and since is None and until is None:
        return found
    results = client
    if plan is not None:
        results = results.search(Key("start.plan_name") == plan)
    if (start := _timestamp(since)) is not None:
        results = results.search(Key("start.time") >= start)
    if (end := _timestamp(until)) is not None:
        results = results.search(Key("start.time") <= end)
    for uid, run in results.items():
        if uid not in found and "original_run_uid" not in run.metadata.get("start", {}):
            found.append(uid)
    return found


def derived_runs_of(client: Any, raw_uid: str) -> list[str]:
    """Uids of the runs in ``client`` whose start links to ``raw_uid``."""
    from tiled.queries import Key

    return list(client.search(Key("start.original_run_uid") == raw_uid).keys())


# -- documents ---------------------------------------------------------------------------------
def _builtin(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value


class _StreamReader:
    """Events of one stream of a ``BlueskyRun`` v3, frames read block by block."""

    def __init__(self, stream: Any, name: str) -> None:
        self.name = name
        self.descriptors = [copy.deepcopy(dict(d)) for d in stream.descriptors]
        columns = set(stream)
        data_keys = self.descriptors[0].get("data_keys", {})
        self.keys = [k for k in data_keys if k in columns]
        self.missing = [k for k in data_keys if k not in columns]
        if "seq_num" in columns:
            self.seq_nums = np.asarray(stream["seq_num"].read()).astype(int)
        else:  # a stream declared but without events
            self.seq_nums = np.zeros(0, int)
        n = len(self.seq_nums)
        self.times = (np.asarray(stream["time"].read(), float) if "time" in columns
                      else np.zeros(n))
        self._stream = stream
        self.arrays: dict[str, Any] = {}   # frame-like keys: read lazily
        self.columns: dict[str, np.ndarray] = {}
        self.stamps: dict[str, np.ndarray] = {}
        for key in self.keys:
            node = stream[key]
            if len(getattr(node, "shape", ())) >= 3:
                self.arrays[key] = node
            else:
                self.columns[key] = np.asarray(node.read())
            if f"ts_{key}" in columns:
                self.stamps[key] = np.asarray(stream[f"ts_{key}"].read(), float)
        for descriptor in self.descriptors:  # frames come back filled, not as references
            for key in self.arrays:
                descriptor["data_keys"].get(key, {}).pop("external", None)

    def __len__(self) -> int:
        return len(self.seq_nums)

    def _descriptor_uid(self, when: float) -> str:
        uid = self.descriptors[0]["uid"]
        for descriptor in self.descriptors[1:]:  # configuration changed mid-stream
            if descriptor["time"] <= when:
                uid = descriptor["uid"]
        return uid

    def events(self) -> Iterator[dict]:
        blocks: dict[str, tuple[int, np.ndarray]] = {}
        for row in range(len(self)):
            data, stamps = {}, {}
            when = float(self.times[row])
            for key, column in self.columns.items():
                data[key] = _builtin(column[row])
            for key, node in self.arrays.items():
                first, block = blocks.get(key, (-1, None))
                if block is None or not first <= row < first + len(block):
                    frame_bytes = int(np.prod(node.shape[1:])) * np.dtype(node.dtype).itemsize
                    size = max(1, _BLOCK_BYTES // max(1, frame_bytes))
                    block = np.asarray(node[row:row + size])
                    first = row
                    blocks[key] = (first, block)
                data[key] = block[row - first]
            for key in data:
                stamps[key] = float(self.stamps[key][row]) if key in self.stamps else when
            yield {"uid": str(uuid.uuid4()), "time": when, "seq_num": int(self.seq_nums[row]),
                   "descriptor": self._descriptor_uid(when), "data": data,
                   "timestamps": stamps, "filled": {}}


def _run_streams(run: Any) -> list[_StreamReader]:
    return [_StreamReader(run[name], name) for name in run]


def run_documents(run: Any, *, streams: list | None = None) -> Iterator[tuple[str, dict]]:
    """The documents of an archived run, frames filled into the events.

    ``run`` is a ``BlueskyRun`` client of bluesky-tiled-plugins. For SQL-backed runs (what
    ``TiledWriter`` writes) the documents are rebuilt from the run's metadata and arrays, so
    no server-side exporter is needed; events are merged across streams in time order. A
    MongoDB-backed (databroker) run is read with ``run.documents(fill=True)``. A run
    without a stop document gets one with ``exit_status="fail"``.
    """
    from bluesky_tiled_plugins.clients.bluesky_run import BlueskyRunV2Mongo

    if isinstance(run, BlueskyRunV2Mongo):
        yield from ((name, dict(doc)) for name, doc in run.documents(fill=True))
        return
    metadata = run.metadata_copy()[0]
    start = metadata["start"]
    yield "start", start
    readers = _run_streams(run) if streams is None else streams
    for reader in readers:
        for descriptor in reader.descriptors:
            yield "descriptor", descriptor
    import heapq

    merged = heapq.merge(*(((e["time"], i, e) for e in r.events())
                           for i, r in enumerate(readers)), key=lambda t: (t[0], t[1]))
    for _, _, event in merged:
        yield "event", event
    stop = metadata.get("stop")
    if not stop:
        import event_model

        stop = event_model.compose_stop(
            start=start, event_counters={r.name: len(r) for r in readers}, poison_pill=[],
            exit_status="fail", reason="the archived run has no stop document")
    yield "stop", stop


# -- replay ------------------------------------------------------------------------------------
class _DerivedWatcher:
    """Follows the derived documents: the derived uid, its stop, the frames done."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.start: dict | None = None
        self.stop: dict | None = None
        self._denoised: set[str] = set()
        self.frames = 0

    def __call__(self, name: str, doc: dict) -> None:
        if name == "start":
            self.start = doc
        elif name == "descriptor" and doc.get("name") == "denoised":
            self._denoised.add(doc["uid"])
        elif name == "event" and doc["descriptor"] in self._denoised:
            self.frames += 1
            self.bar.update(1)
        elif name == "stop":
            self.stop = doc


def _frame_count(readers: Iterable[_StreamReader], field_name: str | None) -> int:
    best = 0
    for reader in readers:
        keys = [k for k in reader.arrays if field_name in (None, k)]
        if keys:
            best = max(best, len(reader))
    return best


def _replay_one(source: Any, destination: Any, uid: str, *, force: bool, progress: bool,
                check_files: bool, options: dict[str, Any]) -> ReplayOutcome:
    from bluesky_tiled_plugins import TiledWriter
    from tqdm import tqdm

    from ..stream.callback import SymDenoise

    run = source[uid]
    start = run.metadata.get("start", {})
    if "original_run_uid" in start:
        return ReplayOutcome(uid, "skipped", message=(
            f"run {uid} is itself a derived run (of {start['original_run_uid']}); "
            "replay its raw run instead"))
    existing = derived_runs_of(destination, uid)
    if existing and not force:
        return ReplayOutcome(uid, "skipped", derived_uid=existing[-1], message=(
            f"run {uid} already has a derived run ({', '.join(existing)}); pass --force "
            "(force=True) to write another"))
    if check_files:  # the server runs here: its files are ours to check
        from .assets import missing_files

        if problems := missing_files(run):
            files = "the file at that path" if len(problems) == 1 else "the files there"
            return ReplayOutcome(uid, "failed", message=(
                f"run {uid}: {'; '.join(problems)}; restore {files} (the catalog reads "
                "them from where they were registered) and replay again"))
    outcome = ReplayOutcome(uid, "failed")
    has_geometry = any(options.get(k) is not None for k in ("poni", "center")) or \
        any(start.get(k) is not None for k in _GEOMETRY_KEYS)
    if not has_geometry:
        outcome.warnings.append(
            f"run {uid}: no geometry (--poni/--center, or start keys poni/beam_center): "
            "symmetry-free denoising, no I(q)")
        logger.warning(outcome.warnings[-1])
    readers = _run_streams(run)
    total = _frame_count(readers, options.get("field"))
    if total == 0:
        outcome.warnings.append(f"run {uid}: no 2-D frames found; the derived run is empty")
    bar = tqdm(total=total, unit="frame", desc=f"replay {uid[:8]}", disable=not progress,
               leave=False)
    watcher = _DerivedWatcher(bar)
    sd = SymDenoise(lossless=True, **options)
    sd.subscribe(TiledWriter(destination))
    sd.subscribe(watcher)
    began = time.perf_counter()
    try:
        for name, doc in run_documents(run, streams=readers):
            sd(name, doc)
        sd.flush()
    finally:
        sd.close()
        bar.close()
    outcome.errors = list(sd.errors)
    outcome.frames = watcher.frames
    if watcher.start is not None:
        outcome.derived_uid = watcher.start["uid"]
        outcome.warnings.extend(watcher.start.get("symdenoise", {}).get("warnings", []))
    if watcher.stop is None:
        outcome.message = f"run {uid}: no derived run was completed"
        return outcome
    if any("subscriber" in e for e in outcome.errors):
        outcome.message = f"run {uid}: writing the derived run failed"
        return outcome
    outcome.status = "replayed"
    outcome.message = (f"run {uid} -> derived run {outcome.derived_uid}: {watcher.frames} "
                       f"frames in {time.perf_counter() - began:.1f} s "
                       f"({watcher.stop['exit_status']})")
    return outcome


def _server_read_failure(uid: str, exc: Exception) -> str | None:
    """One sentence for a Tiled server that failed to read an array (HTTP 5xx), else None."""
    import httpx

    if not isinstance(exc, httpx.HTTPStatusError) or exc.response.status_code < 500:
        return None
    parts = exc.request.url.path.split("/")
    node = "/".join(parts[parts.index(uid) + 1:]) if uid in parts else "/".join(parts)
    return (f"run {uid}: the catalog's server could not read {node!r} (HTTP "
            f"{exc.response.status_code}); when the run's data are files the catalog "
            "registered, check that they exist and that the server may read their "
            "directories (a server's readable_storage; --readable-storage for a catalog "
            "directory)")


def replay(catalog: Any, uids: Sequence[str] = (), *, to: Any = None, api_key: str | None = None,
           to_api_key: str | None = None, plan: str | None = None,
           since: str | float | None = None, until: str | float | None = None,
           force: bool = False, progress: bool = True, field: str | None = None,
           poni: str | Path | dict | None = None, center: tuple[float, float] | None = None,
           mask: np.ndarray | str | Path | None = None, method: str = "auto",
           device: str = "auto", budget_s: float | None = None,
           config: dict[str, Any] | None = None,
           readable_storage: str | Path | Sequence[str | Path] | None = None
           ) -> list[ReplayOutcome]:
    """Denoise archived raw runs and write their derived runs to a Tiled catalog.

    Parameters
    ----------
    catalog
        Where the raw runs are: a Tiled client, a Tiled URI (with ``api_key``), or a local
        ``SimpleTiledServer`` directory (see :func:`open_catalog`).
    uids, plan, since, until
        Which runs: explicit uids and/or a search (:func:`find_runs`).
    to, to_api_key
        Where the derived runs go; default: the same catalog.
    readable_storage
        For a catalog directory: more directories its embedded server may read files from,
        besides those of the files the catalog registered (always readable) and its own
        ``data/``. Refused for a URI or client (that server's configuration decides).
    force
        Replay a run that already has a derived run there (writes one more; default: skip).
    progress
        Show a tqdm bar per run (frames denoised).
    field, poni, center, mask, method, device, budget_s, config
        As for :class:`~bluesky_symdenoise.stream.callback.SymDenoise` (which runs with
        ``lossless=True``: no frame is dropped). Geometry precedence: arguments, else the raw
        start's ``poni``/``beam_center``/``mask``, else symmetry-free with a warning.

    Returns
    -------
    One :class:`ReplayOutcome` per raw run, in order.
    """
    options = {"field": field, "poni": poni, "center": center, "mask": mask,
               "method": method, "device": device, "budget_s": budget_s, "config": config}
    if not uids and plan is None and since is None and until is None:
        raise ReplayError("nothing to replay: give run uids or a search (plan, since, until)")
    outcomes: list[ReplayOutcome] = []
    local = isinstance(catalog, str | Path) and not _is_uri(catalog)
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(open_catalog(catalog, api_key=api_key,
                                                  readable_storage=readable_storage))
        if _same_catalog(catalog, to):
            destination = source
        else:
            destination = stack.enter_context(
                open_catalog(to, api_key=to_api_key or api_key, create=True))
        for uid in find_runs(source, uids, plan=plan, since=since, until=until):
            try:
                outcome = _replay_one(source, destination, uid, force=force,
                                      progress=progress, check_files=local, options=options)
            except Exception as exc:  # noqa: BLE001 - one bad run must not stop the others
                if (message := _server_read_failure(uid, exc)) is not None:
                    logger.debug("replay of %s failed", uid, exc_info=True)
                else:
                    logger.exception("replay of %s failed", uid)
                    message = f"run {uid}: {exc!r}"
                outcome = ReplayOutcome(uid, "failed", message=message)
            outcomes.append(outcome)
    return outcomes
