"""The transport-independent part of ``bluesky-symdenoise serve``.

:class:`RemoteDenoiser` is a ``(name, doc)`` callback for a dispatcher that receives *every*
document on a bus (0MQ ``RemoteDispatcher``, ``NATSDispatcher``, a bluesky-kafka consumer).
It passes raw runs to a :class:`~bluesky_symdenoise.stream.callback.SymDenoise` whose derived
documents go to ``publish`` (back onto the same bus), and it drops every document of a
derived run (a start with ``original_run_uid``): its own derived runs come back to it over
the bus, and denoising them again would loop forever.

The worker is live: ``SymDenoise(lossless=False)`` by default, so a worker slower than the
beamline drops frames (counted in the derived run's ``frames_dropped`` and stop reason)
instead of growing a backlog without bound. Replays use ``lossless=True``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, cast

import event_model
from event_model.documents import RunStart

__all__ = ["DerivedRunFilter", "RemoteDenoiser"]

logger = logging.getLogger(__name__)


class DerivedRunFilter:
    """Tells which documents belong to a derived run, by following uids.

    Documents of one run point at their start (``run_start``), descriptor (``descriptor``)
    or resource (``resource``, ``stream_resource``); a derived run's uids are remembered
    from its start document until its stop.
    """

    def __init__(self) -> None:
        self._runs: set[str] = set()
        self._descriptors: set[str] = set()
        self._resources: set[str] = set()

    def is_derived(self, name: str, doc: dict) -> bool:
        """True for a document of a derived run (remembering the uids it introduces)."""
        if name == "start":
            if "original_run_uid" in doc:
                self._runs.add(doc["uid"])
                return True
            return False
        if name in ("descriptor", "resource", "stream_resource"):
            if doc.get("run_start") in self._runs:
                (self._descriptors if name == "descriptor" else self._resources).add(doc["uid"])
                return True
            return False
        if name in ("event", "event_page", "stream_datum"):
            return doc.get("descriptor") in self._descriptors
        if name == "datum":
            return doc.get("resource") in self._resources
        if name == "datum_page":
            return doc.get("resource") in self._resources
        if name == "stop":
            if doc.get("run_start") in self._runs:
                self._runs.discard(doc["run_start"])
                return True
        return False


class RemoteDenoiser:
    """Denoise the raw runs seen on a document bus; publish derived runs to ``publish``.

    Parameters
    ----------
    publish
        ``publish(name, doc)``, called on the denoiser's worker thread for every derived
        document (a 0MQ ``Publisher``, a NATS publisher, ...).
    lossless
        ``False`` (default): live, drop frames when the queue is full and count them.
    **options
        Passed to :class:`~bluesky_symdenoise.stream.callback.SymDenoise` (``field``,
        ``poni``, ``center``, ``mask``, ``method``, ``device``, ``budget_s``, ``max_queue``).
    """

    def __init__(self, publish: Callable[[str, dict], Any], *, lossless: bool = False,
                 **options: Any) -> None:
        from ..stream.callback import SymDenoise

        self.denoiser = SymDenoise(lossless=lossless, **options)
        self.denoiser.subscribe(publish)
        self._filter = DerivedRunFilter()
        #: The raw run being denoised (SymDenoise follows one run at a time: a new start
        #: closes the previous run's derived run as "fail").
        self._current: RunStart | None = None
        self._lock = threading.Lock()
        #: Derived-run documents received and ignored.
        self.ignored = 0
        #: Raw runs passed to the denoiser.
        self.raw_runs = 0

    def __call__(self, name: str, doc: dict) -> None:
        name = getattr(name, "name", name)  # DocumentNames from a Dispatcher
        if self._filter.is_derived(name, doc):
            self.ignored += 1
            if name == "start":
                logger.info("ignoring derived run %s (of %s)", doc["uid"],
                            doc["original_run_uid"])
            return
        with self._lock:
            if name == "start":
                self._current = cast(RunStart, doc)
                self.raw_runs += 1
                logger.info("denoising raw run %s", doc["uid"])
            elif name == "stop" and self._current is not None \
                    and doc.get("run_start") == self._current["uid"]:
                self._current = None
        self.denoiser(name, doc)

    def end_current_run(self, reason: str, exit_status: str = "abort",
                        timeout: float | None = 60.0) -> bool:
        """Close the derived run of the raw run being denoised, if any (``exit_status``,
        ``reason``: the raw run never stopped for this worker), and publish what is queued.
        True if everything was published within ``timeout``."""
        with self._lock:
            start, self._current = self._current, None
        if start is not None:
            stop = event_model.compose_stop(
                start=start, event_counters={}, poison_pill=[],
                exit_status=cast(Any, exit_status), reason=reason)
            logger.warning("closing the derived run of %s: %s", start["uid"], reason)
            self.denoiser("stop", dict(stop))
        return self.denoiser.flush(timeout)

    def shutdown(self, reason: str, timeout: float | None = 60.0) -> bool:
        """Close every open derived run (``exit_status="abort"``, ``reason``), publish what
        is queued, and stop the denoiser's threads. True if all ended within ``timeout``."""
        flushed = self.end_current_run(
            f"bluesky-symdenoise serve stopped before the raw run ended: {reason}",
            timeout=timeout)
        return self.denoiser.close(timeout) and flushed

    @property
    def errors(self) -> list[str]:
        return self.denoiser.errors
