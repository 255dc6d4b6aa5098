"""The derived run: built only with event_model's ``compose_*`` functions, validated.

One :class:`DerivedRunPublisher` per raw run. Its start document links to the raw run with
``original_run_uid`` (as :class:`bluesky.callbacks.stream.LiveDispatcher` does) and copies the
raw metadata; its stop mirrors the raw ``exit_status``. The ``*_data_keys`` functions are the
schemas of the derived run's streams (``denoised``, ``integrated``, ``cake``, ``symmetry``,
``summary``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any, Literal, cast

import event_model
from event_model.documents import Document, Event, EventDescriptor, RunStart, RunStop

from ..denoise.symmetry import VIOLATION_BITS

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


def denoised_data_keys(key: str, shape: tuple[int, ...], *, units: str = "counts"
                       ) -> dict[str, dict]:
    """Data keys of the derived run's ``denoised`` stream for the field ``key`` (``units``:
    ``"counts"``, or ``"ADU"`` for an integrating detector)."""
    return {
        f"{key}_denoised": {"source": _SOURCE, "dtype": "array", "shape": list(shape),
                            "dtype_numpy": "<f4", "units": units},
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
        self._send("descriptor", bundle.descriptor_doc)
        return bundle.descriptor_doc

    def add_event(self, stream: str, data: dict[str, Any],
                  timestamps: dict[str, float] | None = None) -> Event:
        """Emit one event of ``stream``; seq_num counts from 1 per stream.

        The first event of each stream is checked against event-model's JSON schema; later
        ones only for what can change between events of one stream, their data keys (the
        check ``compose_event`` makes). jsonschema formats the repr of every numpy array it
        meets, so checking every event against the schema costs far more per live frame
        than this (``bench/documents.py`` measures both).

        Raises
        ------
        event_model.EventModelValidationError
            If the data keys are not those the stream's descriptor declares.
        """
        now = time.time()
        seq_num = self._seq[stream] + 1
        bundle = self._descriptors[stream]
        timestamps = {k: (timestamps or {}).get(k, now) for k in data}
        event = bundle.compose_event(data=data, timestamps=timestamps, seq_num=seq_num,
                                     validate=seq_num == 1)
        if seq_num > 1 and set(data) != set(bundle.descriptor_doc["data_keys"]):
            raise event_model.EventModelValidationError(
                f"event of stream {stream!r} has data keys {sorted(data)}, its descriptor "
                f"declares {sorted(bundle.descriptor_doc['data_keys'])}")
        self._seq[stream] = seq_num
        self._send("event", event)
        return event

    def finish(self, exit_status: str = "success", reason: str = "") -> RunStop:
        """Emit the stop document (once)."""
        if self.stop is None:
            status: ExitStatus = next((s for s in _EXIT_STATUSES if s == exit_status), "fail")
            self.stop = self._bundle.compose_stop(exit_status=status, reason=reason)
            self._send("stop", self.stop)
        return self.stop

    @property
    def num_events(self) -> dict[str, int]:
        """Events emitted so far, per stream."""
        return dict(self._seq)
