"""The derived run: built only with event_model's ``compose_*`` functions, validated.

One :class:`DerivedRunPublisher` per raw run. Its start document links to the raw run with
``original_run_uid`` (as :class:`bluesky.callbacks.stream.LiveDispatcher` does) and copies the
raw metadata; its stop mirrors the raw ``exit_status``. The ``*_data_keys`` functions are the
schemas of the derived run's streams (``denoised``, ``integrated``, ``cake``, ``symmetry``,
``summary``).

Large denoised frames go to a file (:class:`~.derived_files.DerivedFrameFile`) instead of the
events: :meth:`DerivedRunPublisher.reference_file` ties a stream's key to it, and each event
of that stream then writes its frame there and emits a StreamDatum, so the documents stay
small.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import event_model
from event_model.documents import (
    Document,
    Event,
    EventDescriptor,
    RunStart,
    RunStop,
    StreamDatum,
    StreamResource,
)

from ..denoise.symmetry import VIOLATION_BITS

if TYPE_CHECKING:
    from .derived_files import DerivedFrameFile

__all__ = ["CAKE_AZIMUTHAL_BINS", "SUMMARY_COUNTS", "DerivedRunPublisher", "Emit",
           "cake_data_keys", "default_npt", "denoised_data_keys", "integrated_data_keys",
           "summary_data_keys", "symmetry_data_keys"]

#: Where the derived documents go: ``emit(name, doc)``, as event-model's callbacks take them.
Emit = Callable[[str, dict[str, Any]], None]
#: The derived stop's ``exit_status`` values (event-model's schema).
ExitStatus = Literal["success", "abort", "fail"]
_EXIT_STATUSES: tuple[ExitStatus, ...] = ("success", "abort", "fail")
#: Azimuthal bins of the ``cake`` stream when ``cake=True`` (5° each).
CAKE_AZIMUTHAL_BINS = 72
#: Counters of the ``summary`` stream (``frames_<name>``).
SUMMARY_COUNTS = ("received", "published", "dropped", "invalid", "unreadable")
_SOURCE = "symdenoise"


def default_npt(shape: tuple[int, ...]) -> int:
    """I(q) points of the ``integrated`` stream when ``npt`` is not given."""
    return max(16, min(500, max(shape) // 2))


def denoised_data_keys(key: str, shape: tuple[int, ...], *, units: str = "counts",
                       file_uri: str | None = None, file_directory_reason: str = ""
                       ) -> dict[str, dict]:
    """Data keys of the derived run's ``denoised`` stream for the field ``key`` (``units``:
    ``"counts"``, or ``"ADU"`` for an integrating detector).

    With ``file_uri`` the frames are in that HDF5 file, not in the events: ``<key>_denoised``
    is declared ``external: "STREAM:"`` with the file as its ``source``. Its shape stays
    (H, W), one frame per event: ``TiledWriter`` stacks StreamDatum rows into (N, H, W), the
    file's dataset and the shape an inline stream has in the catalog.
    ``file_directory_reason`` (why the file is where it is) goes in its description.
    """
    frames: dict[str, Any] = {"source": file_uri or _SOURCE, "dtype": "array",
                              "shape": list(shape), "dtype_numpy": "<f4", "units": units}
    if file_uri is not None:
        frames["external"] = "STREAM:"
        frames["description"] = (
            f"denoised frames in the HDF5 file {file_uri} (one StreamDatum per frame)"
            + (f"; directory: {file_directory_reason}" if file_directory_reason else ""))
    return {
        f"{key}_denoised": frames,
        f"{key}_denoised_by": {"source": _SOURCE, "dtype": "string", "shape": []},
        f"{key}_flags": {"source": _SOURCE, "dtype": "string", "shape": []},
        "raw_seq_num": {"source": _SOURCE, "dtype": "integer", "shape": []},
        "frames_dropped": {"source": _SOURCE, "dtype": "integer", "shape": []},
    }


def integrated_data_keys(key: str, npt: int, *, with_sector: bool = False,
                         units: str = "counts") -> dict[str, dict]:
    """Data keys of the derived run's ``integrated`` stream: q and the raw and denoised I(q)
    with their errors and where the denoised one fell back to raw (and the same for the
    sector ``with_sector``), ``npt`` points each, in ``units`` per pixel."""
    per_pixel = f"{units}/pixel"
    units_of = {"q": "nm^-1", f"{key}_iq_raw": per_pixel, f"{key}_iq_raw_sigma": per_pixel,
                f"{key}_iq_denoised": per_pixel, f"{key}_iq_denoised_sigma": per_pixel}
    if with_sector:
        for which in ("raw", "raw_sigma", "denoised", "denoised_sigma"):
            units_of[f"{key}_iq_sector_{which}"] = per_pixel
    keys = {name: {"source": _SOURCE, "dtype": "array", "shape": [npt],
                   "dtype_numpy": "<f8", "units": unit} for name, unit in units_of.items()}
    for prefix in ("iq", "iq_sector") if with_sector else ("iq",):
        keys[f"{key}_{prefix}_fallback"] = {
            "source": _SOURCE, "dtype": "array", "shape": [npt], "dtype_numpy": "|b1",
            "description": "True where the held-out I(q) check found the denoised I(q) worse "
                           "than raw: the denoised I(q) and sigma are raw's there"}
    keys["raw_seq_num"] = {"source": _SOURCE, "dtype": "integer", "shape": []}
    return keys


def cake_data_keys(key: str, npt_rad: int, npt_azim: int, *, units: str = "counts"
                   ) -> dict[str, dict]:
    """Data keys of the derived run's ``cake`` stream: the raw and denoised frames regrouped
    on a (chi, q) grid by pyFAI's ``integrate2d``, ``npt_azim`` × ``npt_rad`` bins."""
    binning = (f"pyFAI integrate2d, {npt_azim} chi bins of {360 / npt_azim:g}° "
               f"(pyFAI's chi convention, -180..180°) x {npt_rad} q bins; NaN: no unmasked "
               "pixel in the bin")
    keys = {"q": {"source": _SOURCE, "dtype": "array", "shape": [npt_rad],
                  "dtype_numpy": "<f8", "units": "nm^-1"},
            "chi": {"source": _SOURCE, "dtype": "array", "shape": [npt_azim],
                    "dtype_numpy": "<f8", "units": "deg"}}
    for which in ("raw", "denoised"):
        keys[f"{key}_cake_{which}"] = {
            "source": _SOURCE, "dtype": "array", "shape": [npt_azim, npt_rad],
            "dtype_numpy": "<f4", "units": f"{units}/pixel", "description": binning}
    keys["raw_seq_num"] = {"source": _SOURCE, "dtype": "integer", "shape": []}
    return keys


def symmetry_data_keys(shape: tuple[int, ...] | None) -> dict[str, dict]:
    """Data keys of the derived run's ``symmetry`` stream (one event per scan): the engine's
    report as JSON, and its violation bit map when a beam centre allowed the tests."""
    keys: dict[str, dict[str, Any]] = {"symmetry_report": {
        "source": _SOURCE, "dtype": "string", "shape": [],
        "description": "JSON: which symmetries the method used (rotation_180, azimuthal), "
                       "where they were rejected, and why; see engine.symmetry_usage"}}
    if shape is not None:
        bits = ", ".join(f"{bit} {text}" for bit, text in VIOLATION_BITS.items())
        keys["symmetry_violation"] = {
            "source": _SOURCE, "dtype": "array", "shape": list(shape),
            "dtype_numpy": "|u1",
            "description": f"bits: {bits}; local tests on the warm-up frames' sum"}
    return keys


def summary_data_keys() -> dict[str, dict]:
    """Data keys of the derived run's ``summary`` stream (one event, at the end): the frame
    counters (:data:`SUMMARY_COUNTS`) and the whole record as JSON (``provenance``)."""
    keys = {f"frames_{name}": {"source": _SOURCE, "dtype": "integer", "shape": []}
            for name in SUMMARY_COUNTS}
    keys["provenance"] = {"source": _SOURCE, "dtype": "string", "shape": []}
    return keys

#: Raw start keys that must not be copied: the derived run has its own.
_OWN_KEYS = ("uid", "time", "scan_id")


@dataclass
class _FileReference:
    """A stream key whose arrays go to ``file``; its StreamResource, once the first frame
    is written."""

    data_key: str
    file: DerivedFrameFile
    bundle: event_model.ComposeStreamResourceBundle | None = None


class DerivedRunPublisher:
    """Emit one derived run, document by document, through ``emit(name, doc)``.

    Parameters
    ----------
    emit
        Called with each new document (the callback's ``.subscribe`` fan-out).
    raw_start
        The raw run's start document (copied, never changed).
    provenance
        JSON-safe record stored under ``start["symdenoise"]``.
    """

    def __init__(self, emit: Emit, raw_start: RunStart, provenance: dict[str, Any]) -> None:
        self._emit = emit
        metadata = {k: copy.deepcopy(v) for k, v in raw_start.items() if k not in _OWN_KEYS}
        metadata["original_run_uid"] = raw_start["uid"]
        if "scan_id" in raw_start:
            metadata["original_scan_id"] = raw_start["scan_id"]
        metadata["symdenoise"] = provenance
        self._bundle = event_model.compose_run(metadata=metadata)
        self.start: RunStart = self._bundle.start_doc
        self._descriptors: dict[str, Any] = {}
        self._seq: dict[str, int] = {}
        #: Per stream, the keys its events carry (not those whose data are in files).
        self._event_keys: dict[str, set[str]] = {}
        self._files: dict[str, _FileReference] = {}
        self.stop: RunStop | None = None
        self._send("start", self.start)

    def _send(self, name: str, doc: Document) -> None:
        # A TypedDict is a plain dict at run time: subscribers take (name, dict).
        self._emit(name, cast(dict[str, Any], doc))

    def has_stream(self, name: str) -> bool:
        """Whether the stream ``name`` was declared."""
        return name in self._descriptors

    def add_stream(self, name: str, data_keys: dict[str, dict],
                   object_keys: dict[str, list[str]] | None = None) -> EventDescriptor:
        """Declare a stream (one descriptor)."""
        bundle = self._bundle.compose_descriptor(name=name, data_keys=data_keys,
                                                 object_keys=object_keys or {})
        self._descriptors[name] = bundle
        self._seq[name] = 0
        self._event_keys[name] = {k for k, v in data_keys.items()
                                  if not str(v.get("external", "")).startswith("STREAM:")}
        self._send("descriptor", bundle.descriptor_doc)
        return bundle.descriptor_doc

    def reference_file(self, stream: str, data_key: str, frames: DerivedFrameFile) -> None:
        """Write the ``data_key`` arrays of ``stream``'s events to ``frames``.

        The key must be declared ``external: "STREAM:"`` in the stream's descriptor. From
        now on :meth:`add_event` takes the array out of the event's data, appends it to the
        file and emits a StreamDatum for it (the StreamResource with the first one). The
        publisher closes the file in :meth:`finish` (or :meth:`close_files`).

        Raises
        ------
        ValueError
            If the stream is not declared, or ``data_key`` is not one of its STREAM keys.
        """
        if stream not in self._descriptors:
            raise ValueError(f"stream {stream!r} is not declared")
        keys = self._descriptors[stream].descriptor_doc["data_keys"]
        if data_key not in keys or data_key in self._event_keys[stream]:
            raise ValueError(f"{data_key!r} is not an external 'STREAM:' key of stream "
                             f"{stream!r}")
        self._files[stream] = _FileReference(data_key, frames)

    def _write_frame(self, stream: str, reference: _FileReference, frame: Any,
                     seq_num: int) -> None:
        """Append one frame to the stream's file and emit its StreamDatum (and, first,
        the StreamResource); the file is flushed before the StreamDatum goes out."""
        index = reference.file.append(frame)
        if reference.bundle is None:
            height, width = reference.file.shape
            from .derived_files import DERIVED_DATASET

            compose = self._bundle.compose_stream_resource
            if compose is None:  # event-model gives a run bundle one; guard its Optional
                raise RuntimeError("event-model's run bundle has no compose_stream_resource")
            reference.bundle = compose(
                mimetype="application/x-hdf5", uri=reference.file.uri,
                data_key=reference.data_key,
                parameters={"dataset": DERIVED_DATASET, "chunk_shape": [1, height, width],
                            "swmr": True})
            self._send("stream_resource", reference.bundle.stream_resource_doc)
        datum: StreamDatum = reference.bundle.compose_stream_datum(
            indices={"start": index, "stop": index + 1},
            seq_nums={"start": seq_num, "stop": seq_num + 1},
            descriptor=self._descriptors[stream].descriptor_doc)
        self._send("stream_datum", datum)

    @property
    def stream_resources(self) -> list[StreamResource]:
        """The StreamResource documents emitted so far."""
        return [r.bundle.stream_resource_doc for r in self._files.values()
                if r.bundle is not None]

    def close_files(self) -> None:
        """Close every file frames were written to (idempotent; never raises)."""
        for reference in self._files.values():
            reference.file.close()

    def add_event(self, stream: str, data: dict[str, Any],
                  timestamps: dict[str, float] | None = None) -> Event:
        """Emit one event of ``stream``; seq_num counts from 1 per stream.

        The first event of each stream is checked against event-model's JSON schema; later
        ones only for what can change between events of one stream, their data keys (the
        check ``compose_event`` makes). jsonschema formats the repr of every numpy array it
        meets, so checking every event against the schema costs far more per live frame
        than this (``bench/documents.py`` measures both).

        A stream with a :meth:`reference_file`: ``data`` still holds the array; it is written
        to the file and referenced by a StreamDatum emitted before the event, which carries
        the other keys only.

        Raises
        ------
        event_model.EventModelValidationError
            If the data keys are not those the stream's descriptor declares.
        """
        now = time.time()
        seq_num = self._seq[stream] + 1
        bundle = self._descriptors[stream]
        reference = self._files.get(stream)
        wanted = self._event_keys[stream] | ({reference.data_key} if reference else set())
        if set(data) != wanted:
            raise event_model.EventModelValidationError(
                f"event of stream {stream!r} has data keys {sorted(data)}, its descriptor "
                f"declares {sorted(wanted)}")
        if reference is not None:
            data = dict(data)
            self._write_frame(stream, reference, data.pop(reference.data_key), seq_num)
        timestamps = {k: (timestamps or {}).get(k, now) for k in data}
        event = bundle.compose_event(data=data, timestamps=timestamps, seq_num=seq_num,
                                     validate=seq_num == 1)
        self._seq[stream] = seq_num
        self._send("event", event)
        return event

    def finish(self, exit_status: str = "success", reason: str = "") -> RunStop:
        """Close the frame files, then emit the stop document (once)."""
        self.close_files()
        if self.stop is None:
            status: ExitStatus = next((s for s in _EXIT_STATUSES if s == exit_status), "fail")
            self.stop = self._bundle.compose_stop(exit_status=status, reason=reason)
            self._send("stop", self.stop)
        return self.stop

    @property
    def num_events(self) -> dict[str, int]:
        """Events emitted so far, per stream."""
        return dict(self._seq)
