"""``SymDenoise``: the live plugin a beamline subscribes to its RunEngine.

On the RunEngine's thread it only deep-copies documents and enqueues them (bounded for
frames, see :class:`~bluesky_symdenoise.stream.background.FrameQueue`); it never blocks in live
mode and never raises. A worker thread denoises the frames and publishes a derived run, linked
to the raw one by ``original_run_uid``, to every callback given to :meth:`SymDenoise.subscribe`.
"""

from __future__ import annotations

import collections
import copy
import logging
import threading
import time
from pathlib import Path
from typing import Any, cast

import event_model
import numpy as np
from event_model.documents import RunStart, RunStop

from .background import DenoiseWorker, FrameQueue, QueueItem
from .frames import FRAME_DOCUMENTS, image_keys
from .options import LiveOptions
from .publisher import Emit
from .scan import START_KEYS, LiveScan

__all__ = ["START_KEYS", "SymDenoise"]

logger = logging.getLogger(__name__)


class SymDenoise(event_model.DocumentRouter):
    """Denoise the 2-D frames of every run live and publish them as a derived run.

    Parameters
    ----------
    field
        Data key of the frames; ``None`` picks the first 2-D array key of the descriptors
        (others are named in the derived run's warnings).
    poni, center, mask
        Geometry: a pyFAI PONI (path or dict), or a beam centre ``(row, col)`` in pixels, and
        a bool mask (array or ``.npy`` path, True on bad pixels). When none is given, the raw
        start document's ``poni``, ``beam_center`` and ``mask`` keys are used; without any,
        denoising is symmetry-free and no I(q) is computed (a warning is recorded).
    method
        ``"auto"`` or a :class:`~bluesky_symdenoise.DenoiseConfig` method.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    budget_s
        Seconds of per-scan fine-tuning (default: the engine's, 60 s on CPU). ``0``: classical
        fast mode only.
    max_queue
        Frames that may wait for the worker. When full, live mode drops new frames and
        counts them (``frames_dropped`` in the derived run); ``lossless=True`` waits instead
        (for replay).
    warmup_frames
        Frames held before the scan is analysed and training starts.
    npt, sector
        I(q) bins, and an optional ``(chi_min, chi_max)`` sector in degrees integrated too.
    cake
        Also publish a ``cake`` stream: raw and denoised frames regrouped on a (chi, q) grid
        (pyFAI ``integrate2d``) for texture analysis. ``True``: ``npt`` q bins × 72 chi bins
        of 5°; or ``(npt_rad, npt_azim)``. Off by default: it adds two 2-D integrations and
        two arrays to every frame (``bench/cake.py`` measures the cost).
    min_training_steps
        Fewer fine-tuning steps than this within the budget: the network is not used.
    config
        Further :class:`~bluesky_symdenoise.DenoiseConfig` fields (e.g. ``width=8``).
    detector, gain, read_noise
        An integrating detector (flat panel, CCD, CMOS; frames in ADU, usually
        dark-subtracted): ``detector="integrating"``, with its ADU per photon and readout
        noise (ADU rms) if known, else estimated from the warm-up frames (at least two) and
        recorded in the derived run's provenance (``engine.detector_noise``). Either number
        given makes the detector integrating. None of them given: the raw start document's
        ``detector_noise`` key (a dict of the same fields), else photon counting. Derived
        frames and I(q) are then in ADU.
    derived_files, inline_limit_bytes
        Denoised frames larger than ``inline_limit_bytes`` (float32; default 1 MB, 512 x 512
        and up) are written to one compressed HDF5 file per derived run in
        ``derived_files`` (default: beside the raw frames' files, else
        ``$BLUESKY_SYMDENOISE_DATA``) and referenced by StreamResource/StreamDatum
        (``docs/derived_files.md``).
    max_memory_gb
        How much the process's resident memory may grow during a scan (default: 1.5 GB, or
        a quarter of the memory available, if less). Above it the scan is not fine-tuned
        and frames are passed through raw, each flagged with why, rather than risk the
        session (``docs/real_detectors.md``).

    Raises
    ------
    pydantic.ValidationError
        A ``ValueError``, at construction: an unknown method, device or ``config`` field, or
        a value out of range; the message names the valid choices
        (:class:`~bluesky_symdenoise.stream.options.LiveOptions`).

    Examples
    --------
    >>> sd = SymDenoise(center=(511.5, 498.2), mask=mask, budget_s=30)  # doctest: +SKIP
    >>> sd.subscribe(tiled_writer)                                       # doctest: +SKIP
    >>> RE.subscribe(sd)                                                 # doctest: +SKIP
    """

    def __init__(self, field: str | None = None, *, poni: str | Path | dict | None = None,
                 center: tuple[float, float] | None = None,
                 mask: np.ndarray | str | Path | None = None, method: str = "auto",
                 device: str = "auto", budget_s: float | None = None, max_queue: int = 64,
                 lossless: bool = False, warmup_frames: int = 4, npt: int | None = None,
                 sector: tuple[float, float] | None = None,
                 cake: bool | tuple[int, int] = False, min_training_steps: int = 10,
                 config: dict[str, Any] | None = None,
                 detector: str | dict[str, Any] | None = None, gain: float | None = None,
                 read_noise: float | None = None,
                 derived_files: str | Path | None = None,
                 inline_limit_bytes: int = 1_000_000,
                 max_memory_gb: float | None = None) -> None:
        super().__init__()
        if max_memory_gb is not None:
            config = {**(config or {}), "max_memory_gb": max_memory_gb}
        if detector is not None or gain is not None or read_noise is not None:
            from ..denoise.detector_noise import detector_noise

            config = dict(config or {})
            config["detector"] = detector_noise(detector or config.get("detector"),
                                                gain=gain, read_noise=read_noise)
        # Validated as given (a str method, the config dict): LiveOptions checks and folds
        # them into its typed fields.
        self.options = LiveOptions.model_validate({
            "field": field, "poni": poni, "center": center, "mask": mask, "method": method,
            "device": device, "budget_s": budget_s, "max_queue": max_queue,
            "lossless": lossless, "warmup_frames": warmup_frames, "npt": npt,
            "sector": sector, "cake": cake, "min_training_steps": min_training_steps,
            "derived_files": derived_files, "inline_limit_bytes": inline_limit_bytes,
            "config": config})
        self._queue = FrameQueue(self.options.max_queue, lossless=self.options.lossless)
        self._worker: DenoiseWorker | None = None
        self._subscribers: dict[int, Emit] = {}
        self._next_token = 0
        self._lock = threading.Lock()
        self._run_uid: str | None = None
        self._image_descriptors: set[str] = set()
        self._live_scans_by_run_uid: dict[str, LiveScan] = {}
        self._closed = False
        #: Problems met, as messages (never raised into the RunEngine).
        self.errors: list[str] = []
        #: Frames dropped because the queue was full, over all runs.
        self.dropped = 0
        #: How many times the RunEngine's thread had to wait in this callback: for the
        #: queue's lock (held by another thread at that moment) or for room in the queue
        #: (lossless mode only). Live it stays 0: the callback never blocks.
        self.re_thread_waits = 0
        #: Seconds spent on the RunEngine's thread, per document (the latest 10 000), for
        #: reports; tests assert on :attr:`re_thread_waits`, not on wall time.
        self.re_thread_seconds: collections.deque[float] = collections.deque(maxlen=10_000)
        #: Frame-in to derived-event-out latencies in seconds (the latest 10 000).
        self.latencies: collections.deque[float] = collections.deque(maxlen=10_000)

    @property
    def lossless(self) -> bool:
        """``True``: a full queue makes the caller wait; ``False`` (live): new frames are
        dropped and counted. Settable between runs (a worker group reads a run taken over
        from a crashed member losslessly: its frames are already recorded)."""
        return self._queue.lossless

    @lossless.setter
    def lossless(self, value: bool) -> None:
        self._queue.lossless = bool(value)

    # -- downstream --------------------------------------------------------------------------
    def subscribe(self, callback: Emit) -> int:
        """Send every derived document to ``callback(name, doc)``; returns a token."""
        with self._lock:
            self._next_token += 1
            self._subscribers[self._next_token] = callback
            return self._next_token

    def unsubscribe(self, token: int) -> None:
        """Stop sending derived documents to the callback of ``token``."""
        with self._lock:
            self._subscribers.pop(token, None)

    def _emit(self, name: str, doc: dict[str, Any]) -> None:
        with self._lock:
            callbacks = list(self._subscribers.values())
        for callback in callbacks:
            try:
                callback(name, doc)
            except Exception as exc:  # noqa: BLE001 - one bad consumer must not stop others
                self._record(f"subscriber {callback!r} failed on {name}: {exc!r}")

    def _record(self, message: str) -> None:
        logger.warning("symdenoise: %s", message)
        self.errors.append(message)

    # -- RunEngine thread --------------------------------------------------------------------
    def __call__(self, name: str, doc: dict, validate: bool = False) -> tuple[str, dict]:
        """Route one raw document; never raises, never blocks (unless ``lossless``)."""
        began = time.perf_counter()
        try:
            self._route(name, doc)
        except BaseException as exc:  # noqa: BLE001 - never raise into the RunEngine
            try:
                self._record(f"could not take the {name} document: {exc!r}")
            except BaseException:  # noqa: BLE001
                pass
        self.re_thread_seconds.append(time.perf_counter() - began)
        return name, doc

    def _count_wait(self) -> None:
        self.re_thread_waits += 1

    def _put(self, item: QueueItem) -> bool:
        return self._queue.put(item, on_wait=self._count_wait)

    def _route(self, name: str, doc: dict[str, Any]) -> None:
        if self._closed:
            return
        if name == "start":
            self._ensure_worker()
            if self._run_uid is not None:  # the previous run never stopped
                self._put(QueueItem.control("abandon", self._run_uid))
            self._run_uid = doc["uid"]
        if self._run_uid is None:
            return
        if name == "descriptor" and image_keys(doc, self._fields()):
            self._image_descriptors.add(doc["uid"])
        if name in FRAME_DOCUMENTS:
            descriptor = doc.get("descriptor")
            if descriptor not in self._image_descriptors:
                return
            item = QueueItem.document(self._run_uid, name, copy.deepcopy(doc),
                                      time.perf_counter())
            if not self._put(item):
                self.dropped += 1
                self._put(QueueItem.control("dropped", self._run_uid))
            return
        self._put(QueueItem.document(self._run_uid, name, copy.deepcopy(doc),
                                     time.perf_counter()))
        if name == "stop":
            self._run_uid = None
            self._image_descriptors.clear()

    def _fields(self) -> list[str] | None:
        return [self.options.field] if self.options.field else None

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.alive:
            self._worker = DenoiseWorker(self._queue, self._handle, self._on_worker_error)

    # -- worker thread -----------------------------------------------------------------------
    def _on_worker_error(self, exc: BaseException) -> None:
        self._record(f"worker error: {exc!r}")

    def _handle(self, item: QueueItem) -> None:
        if item.kind == "flush":  # publish frames still held for warm-up
            for open_scan in self._live_scans_by_run_uid.values():
                open_scan.end_warm_up()
            return
        run_uid = item.run_uid
        if run_uid is None:
            raise ValueError(f"a {item.kind!r} record names no run")
        if item.kind == "document":
            self._handle_document(run_uid, item)
            return
        scan = self._live_scans_by_run_uid.get(run_uid)
        if scan is None:
            return
        if item.kind == "dropped":
            scan.counts["dropped"] += 1
            return
        scan.end_run(None, reason="raw run never stopped (a new run started)")  # abandon
        self._forget_if_stopped(run_uid, scan)

    def _handle_document(self, run_uid: str, item: QueueItem) -> None:
        name, doc = item.name, item.doc
        if name is None or doc is None:
            raise ValueError(f"run {run_uid[:8]}: a document record without its document")
        if name == "start":
            self._live_scans_by_run_uid[run_uid] = LiveScan(cast(RunStart, doc), self.options,
                                                            self._emit)
            return
        scan = self._live_scans_by_run_uid.get(run_uid)
        if scan is None:
            return
        try:
            scan.handle(name, doc, item.received, backlog=self._queue.frames_waiting)
        except Exception as exc:  # noqa: BLE001
            self._record(f"run {run_uid[:8]}: {name} failed: {exc!r}")
            # The derived run goes on (no data lost) but ends with "fail" and why.
            scan.failure = scan.failure or f"processing a {name} failed: {exc!r}"
            if name != "stop":
                return
            scan.end_run(cast(RunStop, doc))
        self._forget_if_stopped(run_uid, scan)

    def _forget_if_stopped(self, run_uid: str, scan: LiveScan) -> None:
        if scan.stopped:
            self.latencies.extend(scan.latencies)
            self._live_scans_by_run_uid.pop(run_uid, None)

    # -- life cycle --------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued frame is published (and stopped runs' derived stops are
        out); True if that happened within ``timeout`` seconds."""
        if self._worker is not None and self._worker.alive:
            self._queue.put(QueueItem.control("flush"))
        return self._queue.wait_empty(timeout)

    def status(self) -> dict[str, dict[str, Any]]:
        """What each open run is doing, by raw run uid: method, which denoiser serves frames
        now (``"network"`` once the fine-tuned model has passed its check), counts.

        A snapshot for a status line or a script that waits for the fine-tuned model; it
        does not lock the worker.
        """
        return {uid: scan.status()
                for uid, scan in list(self._live_scans_by_run_uid.items())}

    def close(self, timeout: float | None = None) -> bool:
        """Finish open runs (exit status ``fail``), join the worker; True if it ended."""
        if self._closed:
            return self._worker is None or not self._worker.alive
        self._closed = True
        if self._run_uid is not None:
            self._queue.put(QueueItem.control("abandon", self._run_uid))
            self._run_uid = None
        if self._worker is None:
            return True
        return self._worker.stop(timeout)

    def __enter__(self) -> SymDenoise:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
