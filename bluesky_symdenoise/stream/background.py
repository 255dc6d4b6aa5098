"""The hand-off between the RunEngine's thread and the denoising worker thread.

:class:`FrameQueue` bounds the number of *frames* waiting, never the small documents that
organise them (start, descriptor, resource, datum, stop), so a full queue loses frames but
never the bookkeeping. In live mode a full queue drops the frame and counts it; in lossless
mode (replay) the producer waits.

:class:`DenoiseWorker` is the one thread that consumes the queue and drives the per-run
:class:`~bluesky_symdenoise.stream.scan.LiveScan` objects.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["DenoiseWorker", "FrameQueue", "lower_thread_priority"]

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
    """FIFO of ``(kind, payload)`` items with a bound on frame items only."""

    def __init__(self, max_frames: int, lossless: bool = False) -> None:
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.max_frames = int(max_frames)
        self.lossless = bool(lossless)
        self._items: collections.deque = collections.deque()
        self._frames = 0
        #: The most frames ever waiting at once (never above ``max_frames``).
        self.high_water = 0
        self._unfinished = 0
        self._cond = threading.Condition()

    def put(self, item: Any, *, is_frame: bool) -> bool:
        """Enqueue; return False when a frame was dropped (live mode, queue full)."""
        with self._cond:
            if is_frame:
                while self._frames >= self.max_frames:
                    if not self.lossless:
                        return False
                    self._cond.wait(0.1)
                self._frames += 1
                self.high_water = max(self.high_water, self._frames)
            self._items.append((is_frame, item))
            self._unfinished += 1
            self._cond.notify_all()
            return True

    def get(self, timeout: float) -> Any | None:
        """Next item, or None after ``timeout`` seconds."""
        with self._cond:
            if not self._items and not self._cond.wait_for(lambda: bool(self._items), timeout):
                return None
            is_frame, item = self._items.popleft()
            if is_frame:
                self._frames -= 1
                self._cond.notify_all()
            return item

    def task_done(self) -> None:
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

    def __init__(self, queue: FrameQueue, handle: Callable[[Any], None],
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
        return self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> bool:
        """Finish the queued items, then end the thread; True if it ended in time."""
        self._stopping.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        self._thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()
