"""The hand-off between the RunEngine's thread and the denoising worker thread.

Everything queued is a :class:`QueueItem`: a raw document, or a control record (``flush``,
``abandon``, ``dropped``). :class:`FrameQueue` bounds the number of *frame documents*
waiting, never the small documents and records that organise them (start, descriptor,
resource, datum, stop), so a full queue loses frames but never the bookkeeping. In live mode
a full queue drops the frame and counts it; in lossless mode (replay) the producer waits.

:class:`DenoiseWorker` is the one thread that consumes the queue and drives the per-run
:class:`~bluesky_symdenoise.stream.scan.LiveScan` objects.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .frames import FRAME_DOCUMENTS

__all__ = ["DenoiseWorker", "FrameQueue", "QueueItem", "QueueItemKind",
           "lower_thread_priority"]

#: ``document``: a raw document of the run; ``flush``: publish what warm-ups hold;
#: ``abandon``: the run never stopped (a new one started, or the plugin closed);
#: ``dropped``: a frame of the run was dropped (queue full).
QueueItemKind = Literal["document", "flush", "abandon", "dropped"]


@dataclass(frozen=True)
class QueueItem:
    """One item of the :class:`FrameQueue`.

    Attributes
    ----------
    kind
        A raw document or a control record (:data:`QueueItemKind`).
    run_uid
        The raw run it belongs to (None for ``flush``, which concerns every run).
    name, doc
        The document's name and a deep copy of it (``document`` items only), a ``dict`` as
        event-model's callbacks take it (its name says which document type it is).
    received
        ``time.perf_counter()`` when the RunEngine's thread took it (for latencies).
    """

    kind: QueueItemKind
    run_uid: str | None
    name: str | None = None
    doc: dict[str, Any] | None = None
    received: float = 0.0

    @classmethod
    def document(cls, run_uid: str, name: str, doc: dict[str, Any], received: float
                 ) -> QueueItem:
        """A raw document of the run ``run_uid``."""
        return cls("document", run_uid, name, doc, received)

    @classmethod
    def control(cls, kind: Literal["flush", "abandon", "dropped"],
                run_uid: str | None = None) -> QueueItem:
        """A control record (no document)."""
        return cls(kind, run_uid)

    @property
    def is_frame(self) -> bool:
        """A document that may carry frames: what the queue's bound counts."""
        return self.kind == "document" and self.name in FRAME_DOCUMENTS

logger = logging.getLogger(__name__)


def lower_thread_priority(niceness: int = 10) -> None:
    """Give the calling thread a lower CPU priority (Linux: threads have their own nice
    value), so the RunEngine and detector threads win when cores are scarce. Threads it
    starts (torch's intra-op pool) inherit it. A no-op where unsupported."""
    import os

    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid),
                                                 niceness))
    except (AttributeError, OSError):
        pass


class FrameQueue:
    """FIFO of :class:`QueueItem` with a bound on frame documents only.

    Parameters
    ----------
    max_frames
        Frame documents that may wait at once.
    lossless
        ``False``: a frame put into a full queue is dropped (:meth:`put` returns False);
        ``True``: the producer waits for room.

    Attributes
    ----------
    high_water
        The most frames ever waiting at once (never above ``max_frames``).
    """

    def __init__(self, max_frames: int, lossless: bool = False) -> None:
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.max_frames = int(max_frames)
        self.lossless = bool(lossless)
        self._items: collections.deque[QueueItem] = collections.deque()
        self._frames = 0
        self.high_water = 0
        self._unfinished = 0
        self._cond = threading.Condition(threading.Lock())

    def put(self, item: QueueItem, *, on_wait: Callable[[], None] | None = None) -> bool:
        """Enqueue; return False when a frame was dropped (live mode, queue full).

        ``on_wait`` is called each time the caller has to wait: for the queue's lock (held by
        another thread at that moment) or for room (lossless mode, queue full).
        """
        if not self._cond.acquire(blocking=False):
            if on_wait is not None:
                on_wait()
            self._cond.acquire()
        try:
            if item.is_frame:
                if self._frames >= self.max_frames:
                    if not self.lossless:
                        return False
                    if on_wait is not None:
                        on_wait()
                    self._cond.wait_for(lambda: self._frames < self.max_frames)
                self._frames += 1
                self.high_water = max(self.high_water, self._frames)
            self._items.append(item)
            self._unfinished += 1
            self._cond.notify_all()
            return True
        finally:
            self._cond.release()

    def get(self, timeout: float) -> QueueItem | None:
        """Next item, or None after ``timeout`` seconds."""
        with self._cond:
            if not self._items and not self._cond.wait_for(lambda: bool(self._items), timeout):
                return None
            item = self._items.popleft()
            if item.is_frame:
                self._frames -= 1
                self._cond.notify_all()
            return item

    def task_done(self) -> None:
        """Mark an item taken by :meth:`get` as processed (see :meth:`wait_empty`)."""
        with self._cond:
            self._unfinished -= 1
            self._cond.notify_all()

    def wait_empty(self, timeout: float | None) -> bool:
        """Wait until every item put so far was processed (``task_done``)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._unfinished == 0, timeout)

    @property
    def frames_waiting(self) -> int:
        """Frames queued and not yet taken by the worker."""
        with self._cond:
            return self._frames

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class DenoiseWorker:
    """One daemon thread running ``handle(item)`` for each queued item, in order.

    ``handle`` must not raise; if it does, the error is logged, passed to ``on_error`` and the
    worker carries on with the next item.
    """

    def __init__(self, queue: FrameQueue, handle: Callable[[QueueItem], None],
                 on_error: Callable[[BaseException], None], name: str = "symdenoise-worker"
                 ) -> None:
        self.queue = queue
        self._handle = handle
        self._on_error = on_error
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        lower_thread_priority()
        while not self._stopping.is_set() or len(self.queue):
            item = self.queue.get(timeout=0.05)
            if item is None:
                continue
            try:
                self._handle(item)
            except BaseException as exc:  # noqa: BLE001 - the worker must survive
                logger.exception("symdenoise worker failed on an item")
                try:
                    self._on_error(exc)
                except Exception:  # noqa: BLE001
                    pass
            finally:
                self.queue.task_done()

    @property
    def alive(self) -> bool:
        """Whether the thread still runs."""
        return self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> bool:
        """Finish the queued items, then end the thread; True if it ended in time."""
        self._stopping.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        self._thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()
