"""Frames the live view shows that came by reference, read when drawn rather than announced.

A run's frames may live in files: Resource/Datum (``AD_HDF5``, ``NPY_SEQ``) or
StreamResource/StreamDatum (ophyd-async writers, and the derived run's ``denoised`` frames
above ``inline_limit_bytes``). The view feeds every such run's documents to one
:class:`RunFrames`, which keeps them in a :class:`~bluesky_symdenoise.stream.frames.FrameSource`
and hands back a :class:`FrameReference` per frame. Nothing is read then: the RunEngine thread
only stores small documents. The view reads a reference when it draws its frame, so of a
fast scan only the frames drawn are ever read.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bluesky_symdenoise.stream.frames import FrameSource, FrameSourceError

__all__ = ["FrameReference", "RunFrames"]

#: Documents a :class:`RunFrames` keeps (none of them is read from a file when fed).
_KEPT = ("start", "descriptor", "resource", "datum", "datum_page", "stream_resource", "stop")


@dataclass(frozen=True, eq=False)
class FrameReference:
    """One frame not read yet: the event (Resource/Datum) or StreamDatum that points to it.

    Attributes
    ----------
    run
        The run's documents, needed to read it.
    name
        ``"event"`` or ``"stream_datum"``.
    doc
        A copy of the document, of its own: an event narrowed to ``key``, or the StreamDatum
        (possibly of several frames; :meth:`read` reads this one only).
    key
        Data key of the frame.
    seq_num
        Its event's sequence number in its stream.
    """

    run: RunFrames
    name: str
    doc: Mapping[str, Any]
    key: str
    seq_num: int

    def read(self) -> np.ndarray:
        """The frame, read now.

        Raises
        ------
        FrameSourceError
            If it cannot be read (file missing, no handler, run closed, ...).
        """
        return self.run.read(self)


class RunFrames:
    """One run's referenced frames: documents kept as they come, frames read on demand.

    :meth:`feed` takes the documents that describe where frames are (cheap, any thread, in
    the run's order); :meth:`event_references` and :meth:`stream_references` turn an event or
    a StreamDatum into :class:`FrameReference` objects; :meth:`read` reads one (one reader
    at a time). :meth:`close` releases the handlers; a closed run reads nothing.

    Parameters
    ----------
    fields
        Data keys to take frames of; ``None``: every key whose descriptor shape is one 2-D
        frame.
    """

    def __init__(self, fields: list[str] | None = None) -> None:
        self._source = FrameSource(fields)
        self._read_lock = threading.Lock()  # readers only: feeding never waits for a read
        self._closed = False
        self._close_when_read = False  # close() came during a read: the reader closes
        #: Descriptor uid -> its 2-D keys whose values are Datum ids (not ``STREAM:``).
        self._external: dict[str, set[str]] = {}
        #: StreamResource uid -> its data key.
        self._stream_keys: dict[str, str] = {}

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def feed(self, name: str, doc: Mapping[str, Any]) -> None:
        """Keep a start, descriptor, resource, datum, datum_page, stream_resource or stop
        document; other names are ignored. Reads no file.

        Raises
        ------
        event_model.EventModelError
            If event-model's Filler rejects the document.
        """
        if self._closed or name not in _KEPT:
            return
        for _ in self._source.frames(name, dict(doc)):  # these yield no frames
            pass
        if name == "descriptor":
            data_keys = doc.get("data_keys") or {}
            self._external[doc["uid"]] = {
                key for key in self._source.keys_for(doc["uid"])
                if "external" in data_keys.get(key, {})
                and not str(data_keys[key]["external"]).startswith("STREAM:")}
        elif name == "stream_resource":
            self._stream_keys[doc["uid"]] = str(doc.get("data_key"))

    def event_references(self, event: Mapping[str, Any]) -> dict[str, FrameReference]:
        """``{data_key: reference}`` of the frames ``event`` carries as Datum ids.

        Each reference keeps a small copy of the event (that key's Datum id alone), so a
        callback that fills the event in place later changes nothing here.
        """
        keys = self._external.get(str(event.get("descriptor")), set())
        data = event.get("data") or {}
        filled = event.get("filled") or {}
        seq_num = event.get("seq_num")
        if not keys or not isinstance(seq_num, int):
            return {}
        timestamps = event.get("timestamps") or {}
        references = {}
        for key in keys:
            if key not in data or filled.get(key) or not isinstance(data[key], str):
                continue
            narrowed = {"uid": event.get("uid"), "descriptor": event["descriptor"],
                        "seq_num": seq_num, "time": event.get("time", 0.0),
                        "data": {key: data[key]},
                        "timestamps": {key: timestamps.get(key, event.get("time", 0.0))}}
            references[key] = FrameReference(self, "event", narrowed, key, seq_num)
        return references

    def stream_references(self, datum: Mapping[str, Any]) -> list[FrameReference]:
        """References of the frames of a StreamDatum, one per sequence number it covers;
        none when its StreamResource is unknown or its key is not a frame of its stream."""
        key = self._stream_keys.get(str(datum.get("stream_resource")))
        if key is None or key not in self._source.keys_for(str(datum.get("descriptor"))):
            return []
        seq_nums = datum.get("seq_nums") or {}
        first, stop = seq_nums.get("start"), seq_nums.get("stop")
        if not (isinstance(first, int) and isinstance(stop, int)):
            return []
        own = copy.deepcopy(dict(datum))  # small; shared by its frames' references
        return [FrameReference(self, "stream_datum", own, key, seq)
                for seq in range(first, stop)]

    def read(self, reference: FrameReference) -> np.ndarray:
        """The frame of ``reference``, read now (with the FrameSource's retries).

        Raises
        ------
        FrameSourceError
            If the run is closed, or the frame cannot be read.
        """
        with self._read_lock:
            try:
                if self._closed:
                    raise FrameSourceError(f"the frame {reference.key!r} {reference.seq_num} "
                                           "of a finished run is no longer readable")
                doc = _one_frame(reference)
                for key, seq_num, frame, _ in self._source.frames(reference.name, doc):
                    if key == reference.key and seq_num == reference.seq_num:
                        return frame
            finally:
                if self._close_when_read:
                    self._close_now()
        raise FrameSourceError(f"the {reference.name} of {reference.key!r} "
                               f"{reference.seq_num} holds no such frame")

    def close(self) -> None:
        """Release the handlers (open files); idempotent, never raises, never waits: during
        a read on another thread, that reader closes when it is done."""
        self._close_when_read = True  # first: a reader that is done by now sees it ...
        if not self._read_lock.acquire(blocking=False):  # ... or has released the lock
            return
        try:
            self._close_now()
        finally:
            self._read_lock.release()

    def _close_now(self) -> None:
        if not self._closed:
            self._closed = True
            self._source.close()


def _one_frame(reference: FrameReference) -> dict[str, Any]:
    """A fresh document of ``reference``'s one frame: its event (that key alone), or its
    StreamDatum narrowed to that sequence number (a StreamDatum of a fly scan may cover
    thousands of frames; only this one is read)."""
    doc = dict(reference.doc)
    if reference.name == "event":  # narrowed when the reference was made
        doc["data"] = dict(doc["data"])
        return doc
    offset = reference.seq_num - int(doc["seq_nums"]["start"])
    index = int(doc["indices"]["start"]) + offset
    doc["indices"] = {"start": index, "stop": index + 1}
    doc["seq_nums"] = {"start": reference.seq_num, "stop": reference.seq_num + 1}
    return doc
