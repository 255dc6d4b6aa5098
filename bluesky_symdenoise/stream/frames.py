"""Finding detector frames in Bluesky documents, wherever they live.

Frames arrive three ways:

* inline in events (``ophyd.sim`` ``direct_img``): the array is in ``event["data"]``;
* by reference through Resource/Datum (``NPY_SEQ``, ``AD_HDF5``): filled with
  :class:`event_model.Filler` and the standard handlers;
* by reference through StreamResource/StreamDatum (ophyd-async HDF5 writers): a slice of
  an HDF5 dataset read with h5py.

Everything here runs on the worker thread: the RunEngine thread only copies documents.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlparse

import numpy as np

if TYPE_CHECKING:
    from event_model.documents import EventPage

__all__ = ["FRAME_DOCUMENTS", "FrameSource", "FrameSourceError", "image_keys", "to_frame"]

#: Documents that may carry (or point to) frames.
FRAME_DOCUMENTS = ("event", "event_page", "stream_datum")


#: Waits (s) before the retries of a read of an event's referenced frames that may succeed
#: later (a file not visible yet, or caught mid-write): 1.6 s in all, then it fails.
_REFILL_WAITS_S = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8)


class FrameSourceError(ValueError):
    """A frame could not be read (missing handler, file, dataset or wrong layout)."""


def _may_succeed_later(exc: Exception) -> bool:
    """Whether a failed read of referenced frames may succeed if tried again: the file not
    visible yet (event-model's ``DataNotAccessible``, or its handler could not open the
    file), or a file caught mid-write (h5py and dask errors of a dataset being resized). Not
    event-model's other errors: a spec without a handler, an unknown datum or resource."""
    from event_model import DataNotAccessible, EventModelError

    if isinstance(exc, EventModelError):
        return isinstance(exc, DataNotAccessible) or isinstance(exc.__cause__, OSError)
    return isinstance(exc, OSError | ValueError | KeyError)


def _image_shape(shape: Any) -> tuple[int, int] | None:
    """(H, W) when a data key's shape is that of one 2-D frame (size-1/0 axes dropped)."""
    if not isinstance(shape, list | tuple):
        return None
    dims = [int(d) for d in shape if d not in (0, 1, None)]
    return (dims[0], dims[1]) if len(dims) == 2 else None


def image_keys(descriptor: dict, fields: list[str] | None = None) -> dict[str, tuple[int, int]]:
    """Data keys of ``descriptor`` that hold one 2-D frame per event, with their (H, W).

    ``fields`` restricts the search to those keys (kept even if their shape is undeclared).
    """
    found = {}
    for key, info in descriptor.get("data_keys", {}).items():
        if fields is not None and key not in fields:
            continue
        shape = _image_shape(info.get("shape"))
        if shape is not None:
            found[key] = shape
        elif fields is not None:
            found[key] = (0, 0)
    return found


def to_frame(value: Any) -> np.ndarray:
    """One 2-D frame from an event value (squeezes leading size-1 axes)."""
    array = np.asarray(value)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise FrameSourceError(f"expected one 2-D frame, got an array of shape {array.shape}")
    return array


def _handler_registry() -> dict[str, Any]:
    from ophyd.sim import NumpySeqHandler

    registry: dict[str, Any] = {"NPY_SEQ": NumpySeqHandler}
    try:  # optional: the areaDetector handlers package
        from area_detector_handlers.handlers import AreaDetectorHDF5Handler
    except ImportError:  # pragma: no cover - depends on the environment
        pass
    else:
        registry["AD_HDF5"] = AreaDetectorHDF5Handler
    return registry


def _uri_path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise FrameSourceError(f"cannot read {uri!r}: only file:// URIs are supported")
    return Path(parsed.path if parsed.scheme else uri)


class FrameSource:
    """Turns one run's documents into ``(data_key, seq_num, frame)`` triples.

    Feed it every document of a run, in order, on one thread; :meth:`frames` yields what a
    document carries. External references are read when their event (Resource/Datum) or
    StreamDatum arrives; a reference that cannot be read raises :class:`FrameSourceError`.
    """

    def __init__(self, fields: list[str] | None = None) -> None:
        from event_model import Filler

        self._requested = fields
        registry = _handler_registry()
        self._specs = sorted(registry)
        # No retries of its own: _fill retries what may succeed later, and only that.
        self._filler = Filler(registry, inplace=False, retry_intervals=[])
        self._keys: dict[str, dict[str, tuple[int, int]]] = {}  # descriptor uid -> keys
        #: Descriptor uid -> its keys whose values are Datum ids (``external``, not STREAM).
        self._external: dict[str, set[str]] = {}
        self._stream_resources: dict[str, dict] = {}
        #: What an unreadable frame's message names: resource uid -> (spec, path), and
        #: datum id -> resource uid.
        self._resources: dict[str, tuple[str, str]] = {}
        self._datum_resources: dict[str, str] = {}

    def keys_for(self, descriptor_uid: str) -> dict[str, tuple[int, int]]:
        return self._keys.get(descriptor_uid, {})

    @property
    def all_keys(self) -> dict[str, tuple[int, int]]:
        merged: dict[str, tuple[int, int]] = {}
        for keys in self._keys.values():
            merged.update(keys)
        return merged

    def frames(self, name: str, doc: dict[str, Any]
               ) -> Iterator[tuple[str, int, np.ndarray, float]]:
        """Frames carried by one document: ``(data_key, seq_num, frame, timestamp)``."""
        if name in ("start", "resource", "datum", "datum_page", "stop"):
            self._filler(name, doc)
            self._remember_reference(name, doc)
        elif name == "descriptor":
            self._filler(name, doc)
            self._keys[doc["uid"]] = image_keys(doc, self._requested)
            self._external[doc["uid"]] = {
                key for key, info in doc.get("data_keys", {}).items()
                if "external" in info and not str(info["external"]).startswith("STREAM:")}
        elif name == "event":
            yield from self._event_frames(doc)
        elif name == "event_page":
            from event_model import unpack_event_page

            for event in unpack_event_page(cast("EventPage", doc)):
                yield from self._event_frames(event)
        elif name == "stream_resource":
            self._stream_resources[doc["uid"]] = doc
        elif name == "stream_datum":
            yield from self._stream_frames(doc)

    def _remember_reference(self, name: str, doc: dict[str, Any]) -> None:
        if name == "resource":
            path = os.path.join(doc.get("root", ""), doc.get("resource_path", ""))
            self._resources[doc["uid"]] = (str(doc.get("spec")), path)
        elif name == "datum":
            self._datum_resources[doc["datum_id"]] = doc["resource"]
        elif name == "datum_page":
            for datum_id in doc["datum_id"]:
                self._datum_resources[datum_id] = doc["resource"]

    def _event_frames(self, event: dict) -> Iterator[tuple[str, int, np.ndarray, float]]:
        keys = self._keys.get(event["descriptor"], {})
        wanted = [k for k in keys if k in event["data"]]
        if not wanted:
            return
        # The descriptor says which values are Datum ids ("filled" is optional; a key it
        # marks filled holds its frame already).
        external = self._external.get(event["descriptor"], set())
        filled = event.get("filled", {})
        to_fill = [k for k in wanted if k in external and not filled.get(k)]
        if to_fill:
            event = self._fill(dict(event, filled={**filled, **dict.fromkeys(to_fill, False)}),
                               to_fill)
        for key in wanted:
            yield key, int(event["seq_num"]), to_frame(event["data"][key]), \
                float(event["timestamps"].get(key, event["time"]))

    def _fill(self, event: dict, keys: list[str]) -> dict:
        """The event with the frames of ``keys`` read.

        A read that may succeed later (:func:`_may_succeed_later`) is tried again after a
        short wait, on the worker's time, never the RunEngine's: a file not visible yet, or
        one still being written (AD_HDF5 without SWMR) caught mid-update, e.g. resized but
        not yet flushed, or held by a cached handler with a stale view (the handlers are
        reopened). Any other failure, or the last, raises :class:`FrameSourceError`.
        """
        waits = iter(_REFILL_WAITS_S)
        tries = 0
        while True:
            tries += 1
            try:
                out = self._filler.fill_event(event, include=keys)
                for key in keys:  # read now (AD_HDF5 gives dask arrays), within the retries
                    out["data"][key] = np.asarray(out["data"][key])
                return out
            except Exception as exc:  # noqa: BLE001 - retried or raised as FrameSourceError
                wait = next(waits, None) if _may_succeed_later(exc) else None
                if wait is None:
                    raise FrameSourceError(self._unreadable(event, keys, exc, tries)) from exc
                time.sleep(wait)
                self._filler.clear_handler_cache()

    def _unreadable(self, event: dict, keys: list[str], exc: Exception, tries: int) -> str:
        """Why the frames of ``keys`` could not be read, naming what they refer to."""
        from event_model import UndefinedAssetSpecification

        references = []
        for key in keys:
            datum_id = event["data"].get(key)
            resource = self._resources.get(self._datum_resources.get(str(datum_id), ""))
            where = (f"of a {resource[0]!r} Resource at {resource[1]}" if resource is not None
                     else "of no Resource seen in this run")
            references.append(f"{key!r} (datum {datum_id!r} {where})")
        if isinstance(exc, UndefinedAssetSpecification):
            why = f"no handler for its spec (handlers: {', '.join(self._specs)})"
        else:
            cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
            why = f"{type(cause).__name__}: {cause}"
            if tries > 1:
                why += f" (tried {tries} times over {sum(_REFILL_WAITS_S[:tries - 1]):.1f} s)"
        return (f"cannot read the frame of {', '.join(references)} in event "
                f"{event.get('seq_num')}: {why}")

    def _stream_frames(self, datum: dict) -> Iterator[tuple[str, int, np.ndarray, float]]:
        import h5py
        import hdf5plugin  # noqa: F401

        resource = self._stream_resources.get(datum["stream_resource"])
        if resource is None:
            raise FrameSourceError(f"StreamDatum {datum['uid']} refers to an unknown "
                                   f"StreamResource {datum['stream_resource']}")
        key = resource["data_key"]
        keys = self._keys.get(datum["descriptor"], {})
        if key not in keys:
            return
        if resource.get("mimetype") != "application/x-hdf5":
            raise FrameSourceError(f"StreamResource mimetype {resource.get('mimetype')!r} "
                                   "is not supported (only application/x-hdf5)")
        params = resource.get("parameters", {})
        path = _uri_path(resource["uri"])
        first, last = datum["indices"]["start"], datum["indices"]["stop"]
        seq_first = datum["seq_nums"]["start"]
        with h5py.File(path, "r", swmr=True) as handle:
            dataset = handle[params["dataset"]]
            block = np.asarray(dataset[first:last])
        for offset, frame in enumerate(block):
            yield key, seq_first + offset, to_frame(frame), time.time()

    def close(self) -> None:
        try:
            self._filler.close()
        except Exception:  # noqa: BLE001 - closing handlers must not fail a run
            pass
