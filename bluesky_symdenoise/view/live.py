"""``LiveDenoiseView``: a live figure of the current scan, raw beside denoised.

One callable takes both document streams: subscribe it to the RunEngine (raw run) and to
:class:`~bluesky_symdenoise.stream.callback.SymDenoise` (derived run). Derived runs are told
apart by ``original_run_uid`` in their start document and joined to their raw run by it.

The figure (about 14 × 8 in) shows

* the latest raw frame and its denoised frame side by side, one colour scale (sqrt or log),
  masked pixels grey, outlined where the engine rejected 180° symmetry (the derived run's
  ``symmetry`` stream: the engine's own map, not a check of the view's);
* I(q) waterfalls (q in nm⁻¹ across, frame number down) of the raw and the denoised frames,
  flagged frames marked;
* the latest raw and denoised I(q) with their 1σ bands;
* a text panel: method and why, which denoiser served the frame, which symmetries the engine
  used (from the same ``symmetry`` stream), flags, drops.

Frames may be inline in events or come by reference, raw and denoised alike: Resource/Datum
(``AD_HDF5``, ``NPY_SEQ``) or StreamResource/StreamDatum (ophyd-async writers; the derived
run's ``denoised`` frames above ``inline_limit_bytes``). Each run's documents go to a
:class:`~bluesky_symdenoise.view.frame_refs.RunFrames` (an
:class:`~bluesky_symdenoise.stream.frames.FrameSource`); a referenced frame is read only when
it is drawn, on the drawing thread, so the RunEngine thread never reads a file. A denoised
frame's StreamDatum comes before its event and shares its ``seq_num``.

Where it draws (:attr:`LiveDenoiseView.mode`):

``"window"``
    An interactive matplotlib backend (QtAgg, TkAgg, GTK, macOS, WebAgg, nbAgg/ipympl):
    one window, drawn on the main thread only. Under Qt, bluesky's teleporter
    (``QtAwareCallback``) moves every document to the Qt main thread, and bluesky runs the Qt
    event loop while ``RE(...)`` waits, so the window follows the scan as it runs. Under other
    GUI toolkits documents are taken on their own threads and a GUI timer draws on the main
    thread whenever its event loop runs (between commands in IPython, or in ``plt.pause``).
    Updates are throttled by wall time (``interval_s``): every frame at slow rates, the latest
    one at most once per interval at fast ones.
``"files"``
    ``out_dir`` given: PNG snapshots every ``every`` denoised frames and at the derived stop,
    drawn on a private Agg figure by the thread that delivers the derived document.
``"off"``
    A non-interactive backend (Agg) and no ``out_dir``: nothing is drawn until
    :meth:`LiveDenoiseView.snapshot`.

Nothing raises into the caller: problems are recorded in :attr:`LiveDenoiseView.errors`.
"""

from __future__ import annotations

import copy
import json
import logging
import textwrap
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from bluesky.callbacks.mpl_plotting import QtAwareCallback

from .frame_refs import FrameReference, RunFrames

if TYPE_CHECKING:
    from event_model.documents import Datum, DatumPage, Event, EventPage
    from matplotlib.artist import Artist
    from matplotlib.backend_bases import TimerBase
    from matplotlib.figure import Figure

__all__ = ["LiveDenoiseView"]

logger = logging.getLogger(__name__)

#: Raw frames kept per scan while they wait for their denoised partner.
_MAX_RAW_FRAMES = 128
#: Scans whose derived run may still be running, beside the current one.
_MAX_OPEN_SCANS = 4
#: Bits of the derived run's ``symmetry_violation`` map the outline draws, with their colour
#: and legend (see :data:`bluesky_symdenoise.denoise.engine.VIOLATION_BITS`).
_OUTLINES = ((1, "red", "180° symmetry rejected (engine's local test)"),)
#: Bit of the map for spots the engine kept at their raw intensity (counted, not outlined).
_SPOTS_KEPT = 4
#: Backends that draw to files or memory only (matplotlib's own list, when it has one).
_NON_INTERACTIVE = ("agg", "cairo", "pdf", "pgf", "ps", "svg", "template",
                    "module://matplotlib_inline.backend_inline")


def _interactive_backend(backend: str | None = None) -> bool:
    """Whether ``backend`` (default: matplotlib's current one) shows windows.

    Every interactive backend counts, Agg-based ones included (QtAgg, TkAgg, GTK4Agg,
    WebAgg, nbAgg, ipympl's widget); Agg, the file backends and Jupyter's inline backend do
    not.
    """
    import matplotlib

    name = (backend or matplotlib.get_backend()).lower()
    try:
        from matplotlib.backends import BackendFilter, backend_registry

        if name in backend_registry.list_builtin(BackendFilter.NON_INTERACTIVE):
            return False
    except ImportError:  # matplotlib < 3.9: the list above
        pass
    return name not in _NON_INTERACTIVE


@dataclass
class _Scan:
    """What the view knows about one raw run and its derived run."""

    raw_uid: str
    scan_id: Any = None
    raw_start: Mapping[str, Any] | None = None
    derived_start: Mapping[str, Any] | None = None
    provenance: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    #: seq_num -> {key: frame, or a FrameReference read when drawn}
    raw_frames: OrderedDict = field(default_factory=OrderedDict)
    raw_count: int = 0
    latest_denoised: np.ndarray | FrameReference | None = None
    #: The runs' referenced frames (None until their start is seen).
    raw_run: RunFrames | None = None
    derived_run: RunFrames | None = None
    #: Derived ``denoised`` seq_num -> the reference of its StreamDatum, until its event.
    denoised_refs: OrderedDict = field(default_factory=OrderedDict)
    raw_stopped: bool = False
    latest_seq: int | None = None
    latest_by: str = ""
    denoised_seen: int = 0
    flags: dict = field(default_factory=dict)  # raw_seq_num -> flag text (non-empty only)
    dropped: int = 0
    violation: np.ndarray | None = None  # the engine's bit map (``symmetry`` stream)
    symmetry: dict = field(default_factory=dict)  # the engine's report (``symmetry`` stream)
    iq_seq: list = field(default_factory=list)
    iq_q: list = field(default_factory=list)
    iq_raw: list = field(default_factory=list)
    iq_den: list = field(default_factory=list)
    iq_raw_sigma: list = field(default_factory=list)
    iq_den_sigma: list = field(default_factory=list)
    derived_stopped: bool = False
    exit_status: str | None = None

    @property
    def label(self) -> str:
        return str(self.scan_id) if self.scan_id is not None else self.raw_uid[:8]


class LiveDenoiseView(QtAwareCallback):
    """Live figure of the current scan: raw vs denoised frame, I(q) waterfalls, symmetry.

    Parameters
    ----------
    field
        Raw data key of the frames; ``None`` uses the one the derived run names
        (``start["symdenoise"]["field"]``).
    out_dir
        Write ``live_<scan_id>_<nnnn>.png`` every ``every`` denoised frames and
        ``live_<scan_id>_final.png`` at the derived stop, instead of drawing a window.
    every
        Draw every this many denoised frames; default 1 in a window (then ``interval_s``
        sets the pace) and 10 for PNG files (a PNG takes about a second of the thread that
        delivers the derived document, the SymDenoise worker).
    interval_s
        In a window, at most one redraw per this many seconds of wall time; a frame that
        arrives sooner is drawn by a GUI timer when the interval has passed, so the window
        always ends on the latest frame.
    scale
        ``"sqrt"`` or ``"log"`` colour scaling of the frames and waterfalls.
    mask
        Bool array, True on bad pixels, drawn grey. Without it, the raw start's ``mask``
        (``.npy`` path) is used, else pixels the denoiser zeroed (it zeroes bad pixels).
    symmetry_map
        Outline where the engine rejected 180° symmetry (and kept spots at their raw
        intensity), from the derived run's ``symmetry`` stream.
    figsize, dpi
        Figure size in inches and resolution.
    use_teleporter
        Move documents to the Qt main thread (bluesky's ``QtAwareCallback``); default: when
        the backend is a Qt one.

    Examples
    --------
    In IPython, ``%matplotlib qt`` first (the shipped profile does it when there is a
    display):

    >>> view = LiveDenoiseView()                 # doctest: +SKIP
    >>> RE.subscribe(view)                       # doctest: +SKIP
    >>> sd.subscribe(view)                       # doctest: +SKIP

    Headless, PNG files:

    >>> view = LiveDenoiseView(out_dir="snapshots", every=5)   # doctest: +SKIP
    """

    def __init__(self, field: str | None = None, out_dir: str | Path | None = None,
                 every: int | None = None, *, interval_s: float = 1.0, scale: str = "sqrt",
                 mask: np.ndarray | None = None, symmetry_map: bool = True,
                 figsize: tuple[float, float] = (14.0, 8.0), dpi: int = 100,
                 use_teleporter: bool | None = None) -> None:
        if scale not in ("sqrt", "log"):
            raise ValueError(f"scale must be 'sqrt' or 'log', got {scale!r}")
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s!r}")
        super().__init__(use_teleporter=use_teleporter)
        self.field = field
        self.out_dir = Path(out_dir) if out_dir is not None else None
        if self.out_dir is not None:
            self.mode = "files"
        else:
            self.mode = "window" if _interactive_backend() else "off"
        if every is None:
            every = 10 if self.mode == "files" else 1
        self.every = max(1, int(every))
        self.interval_s = float(interval_s)
        self.scale = scale
        self.mask = None if mask is None else np.asarray(mask, bool)
        self.symmetry_map = symmetry_map
        self.figsize, self.dpi = figsize, dpi
        self._state_lock = threading.Lock()
        self._draw_lock = threading.Lock()
        self._scans: OrderedDict[str, _Scan] = OrderedDict()  # raw uid -> scan
        self._current: str | None = None
        self._run_of: dict[str, tuple[str, str]] = {}  # run start uid -> (raw uid, kind)
        self._streams: dict[str, tuple[str, str, str]] = {}  # descriptor -> (raw, kind, name)
        self._resource_run: dict[str, str] = {}  # Resource uid -> run start uid
        self._figure: Figure | None = None
        self._panels: _Panels | None = None
        self._timer: TimerBase | None = None
        self._dirty = False
        self._last_draw = -np.inf
        self._window_closed = False
        #: Problems met, as messages (never raised into the caller).
        self.errors: list[str] = []
        #: Paths of the PNGs written.
        self.written: list[Path] = []
        #: How many times the figure was redrawn (window or file).
        self.draws = 0
        if self.mode == "off":
            logger.info("live view: backend %r shows no window and no out_dir was given: "
                        "nothing is drawn until snapshot()", _backend())
        elif self.mode == "window" and _on_main_thread():
            self._open_window()

    # -- public ------------------------------------------------------------------------------
    @property
    def scan_id(self) -> Any:
        """Scan id of the scan followed now (``None`` before any)."""
        scan = self._scans.get(self._current) if self._current else None
        return scan.scan_id if scan else None

    def waterfall(self, which: str = "denoised", scan_id: Any = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(raw_seq_num, q_nm, I)`` of the current scan (or ``scan_id``): one row of
        ``I`` per frame, ``which`` is ``"raw"`` or ``"denoised"``."""
        with self._state_lock:
            scan = self._find(scan_id)
            if scan is None or not scan.iq_seq:
                return np.zeros(0, int), np.zeros(0), np.zeros((0, 0))
            rows = scan.iq_raw if which == "raw" else scan.iq_den
            return (np.asarray(scan.iq_seq), _common_q(scan.iq_q),
                    _stack_rows(rows))

    def flagged(self, scan_id: Any = None) -> dict[int, str]:
        """``{raw_seq_num: flags}`` of the frames the derived run flagged (current scan)."""
        with self._state_lock:
            scan = self._find(scan_id)
            return dict(scan.flags) if scan is not None else {}

    def finished(self, scan_id: Any = None) -> bool:
        """Whether the derived run of the current scan (or ``scan_id``) has stopped and been
        taken in (in a Qt window: on the main thread)."""
        with self._state_lock:
            scan = self._find(scan_id)
            return scan is not None and scan.derived_stopped

    def violation(self, scan_id: Any = None) -> np.ndarray | None:
        """The engine's symmetry-violation bit map of the current scan (or ``scan_id``), as
        the derived run published it; ``None`` before it arrives or when nothing was tested."""
        with self._state_lock:
            scan = self._find(scan_id)
            return None if scan is None or scan.violation is None else scan.violation.copy()

    def snapshot(self, path: str | Path | None = None, scan_id: Any = None) -> Path | None:
        """Draw the current scan (or ``scan_id``) now; write a PNG when ``path`` is given.

        In a window, call it from the main thread. Returns the path written, or ``None``.
        Never raises.
        """
        try:
            with self._state_lock:
                scan = self._find(scan_id)
                if scan is None:
                    return None
                frozen = _freeze(scan)
            frozen = self._read_frames(scan, frozen)
            return self._draw(frozen, Path(path) if path is not None else None)
        except Exception as exc:  # noqa: BLE001 - a view must never break its caller
            self._record(f"snapshot failed: {exc!r}")
            return None

    def latest_frames(self, scan_id: Any = None
                      ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``(raw, denoised)``: the latest denoised frame of the current scan (or
        ``scan_id``) and the raw frame it came from, as the view draws them.

        Frames that came by reference are read now if no draw has read them yet. Either is
        ``None`` when it was not received or could not be read (see :attr:`errors`). Copies;
        never raises.
        """
        try:
            with self._state_lock:
                scan = self._find(scan_id)
                if scan is None:
                    return None, None
                frozen = _freeze(scan)
            frozen = self._read_frames(scan, frozen)
            raw, denoised = frozen["raw"], frozen["denoised"]
            return (None if raw is None else np.array(raw),
                    None if denoised is None else np.array(denoised))
        except Exception as exc:  # noqa: BLE001 - a view must never break its caller
            self._record(f"latest_frames failed: {exc!r}")
            return None, None

    @property
    def figure(self):
        """The matplotlib figure (in a window: the one pyplot shows)."""
        return self._figure

    # -- documents ---------------------------------------------------------------------------
    # QtAwareCallback (untyped) already replaced DocumentRouter's signature; a view returns
    # nothing.
    def __call__(  # type: ignore[override]
            self, name: str, doc: dict, *, escape: bool = False) -> None:
        try:
            super().__call__(name, doc, escape=escape)
        except Exception as exc:  # noqa: BLE001 - never raise into the RunEngine/SymDenoise
            self._record(f"could not take the {name} document: {exc!r}")

    def _record(self, message: str) -> None:
        logger.warning("live view: %s", message)
        if len(self.errors) < 1000:
            self.errors.append(message)

    def start(self, doc: Mapping[str, Any]) -> None:
        raw_uid = doc.get("original_run_uid")
        with self._state_lock:
            if raw_uid is None:  # a raw run: follow it from now on
                raw_run = RunFrames([self.field] if self.field else None)
                raw_run.feed("start", doc)
                self._scans[doc["uid"]] = _Scan(raw_uid=doc["uid"], scan_id=doc.get("scan_id"),
                                                raw_start=doc, raw_run=raw_run)
                self._current = doc["uid"]
                self._run_of[doc["uid"]] = (doc["uid"], "raw")
                self._forget_old()
                self._window_closed = False  # a new scan opens a closed window again
                return
            scan = self._scans.get(raw_uid)
            if scan is None:  # the view hears only the derived run
                scan = _Scan(raw_uid=raw_uid, scan_id=doc.get("original_scan_id"))
                self._scans[raw_uid] = scan
                self._current = raw_uid
                self._forget_old()
            scan.derived_start = doc
            provenance = doc.get("symdenoise")
            scan.provenance = provenance if isinstance(provenance, dict) else {}
            if scan.derived_run is not None:  # a second derived run of the same scan
                scan.derived_run.close()
            key = self._field(scan)
            scan.derived_run = RunFrames([f"{key}_denoised"] if key else None)
            scan.derived_run.feed("start", doc)
            scan.denoised_refs.clear()
            scan.derived_stopped, scan.exit_status = False, None
            if scan.scan_id is None:
                scan.scan_id = doc.get("original_scan_id")
            self._run_of[doc["uid"]] = (raw_uid, "derived")

    def _forget_old(self) -> None:
        """Keep the current scan and a few whose derived run may still be arriving."""
        while len(self._scans) > _MAX_OPEN_SCANS:
            uid = next(iter(self._scans))
            if uid == self._current:
                self._scans.move_to_end(uid)
                continue
            scan = self._scans.pop(uid)
            for run in (scan.raw_run, scan.derived_run):
                if run is not None:
                    run.close()  # never waits: a draw reading now closes it when done
            runs = [k for k, v in self._run_of.items() if v[0] == uid]
            for key in runs:
                self._run_of.pop(key)
            for key in [k for k, v in self._streams.items() if v[0] == uid]:
                self._streams.pop(key)
            for key in [k for k, v in self._resource_run.items() if v in runs]:
                self._resource_run.pop(key)

    def descriptor(self, doc: Mapping[str, Any]) -> None:
        with self._state_lock:
            run = self._run_of.get(doc.get("run_start", ""))
            if run is not None:
                self._streams[doc["uid"]] = (run[0], run[1], doc.get("name", "primary"))
                frames = self._frames_of(run)
                if frames is not None:
                    frames.feed("descriptor", doc)

    # Where referenced frames are: kept per run, nothing read (see frame_refs).
    def resource(self, doc: Mapping[str, Any]) -> None:
        with self._state_lock:
            run_uid = doc.get("run_start") or self._current  # old Resources name no run
            frames = self._frames_of(self._run_of.get(run_uid or ""))
            if frames is not None:
                self._resource_run[doc["uid"]] = str(run_uid)
                frames.feed("resource", doc)

    def datum(self, doc: Datum) -> Datum:
        self._feed_datum("datum", doc)
        return doc  # passed on unchanged, as a DocumentRouter may

    def datum_page(self, doc: DatumPage) -> None:
        self._feed_datum("datum_page", doc)

    def _feed_datum(self, name: str, doc: Mapping[str, Any]) -> None:
        with self._state_lock:
            run_uid = self._resource_run.get(str(doc.get("resource")), "")
            frames = self._frames_of(self._run_of.get(run_uid))
            if frames is not None:
                frames.feed(name, doc)

    def stream_resource(self, doc: Mapping[str, Any]) -> None:
        with self._state_lock:
            run_uid = doc.get("run_start") or self._current
            frames = self._frames_of(self._run_of.get(run_uid or ""))
            if frames is not None:
                frames.feed("stream_resource", doc)

    def stream_datum(self, doc: Mapping[str, Any]) -> None:
        """A frame in a file: kept as a reference, read when drawn. A raw one joins the raw
        frames by its seq_num; a derived ``denoised`` one waits for its event (same
        seq_num: the publisher sends the StreamDatum first)."""
        route = self._streams.get(str(doc.get("descriptor")))
        if route is None:
            return
        raw_uid, kind, stream = route
        with self._state_lock:
            scan = self._scans.get(raw_uid)
            frames = self._frames_of((raw_uid, kind))
            if scan is None or frames is None:
                return
            references = frames.stream_references(doc)
            if kind == "raw":
                for reference in references[-_MAX_RAW_FRAMES:]:
                    if self.field is None or reference.key == self.field:
                        self._keep_raw(scan, reference.seq_num, {reference.key: reference},
                                       merge=True)
            elif stream == "denoised":
                for reference in references[-_MAX_RAW_FRAMES:]:
                    scan.denoised_refs[reference.seq_num] = reference
                while len(scan.denoised_refs) > _MAX_RAW_FRAMES:
                    scan.denoised_refs.popitem(last=False)

    def _frames_of(self, run: tuple[str, str] | None) -> RunFrames | None:
        """The referenced frames of a run ``(raw uid, kind)``; call with the state lock."""
        scan = self._scans.get(run[0]) if run is not None else None
        if scan is None or run is None:
            return None
        return scan.raw_run if run[1] == "raw" else scan.derived_run

    def event_page(self, doc: EventPage) -> EventPage:
        import event_model

        for event in event_model.unpack_event_page(doc):
            self._take_event(event)
        return doc  # passed on unchanged, as a DocumentRouter may

    def event(self, doc: Event) -> Event:
        self._take_event(doc)
        return doc  # passed on unchanged, as a DocumentRouter may

    def _take_event(self, doc: Mapping[str, Any]) -> None:
        route = self._streams.get(doc.get("descriptor", ""))
        if route is None:
            return
        raw_uid, kind, stream = route
        if kind == "raw":
            self._raw_event(raw_uid, doc)
            return
        changed = False
        with self._state_lock:
            scan = self._scans.get(raw_uid)
            if scan is None:
                return
            data = doc.get("data") or {}
            if stream == "denoised":
                self._denoised_event(scan, data, doc.get("seq_num"))
                changed = scan.denoised_seen % self.every == 0
            elif stream == "integrated":
                self._integrated_event(scan, data)
                changed = self.mode == "window"  # a PNG is drawn at its denoised frame
            elif stream == "symmetry":
                self._symmetry_event(scan, data)
                changed = True
            elif stream == "summary":
                try:
                    scan.summary = json.loads(data.get("provenance") or "{}")
                except (TypeError, ValueError):
                    scan.summary = {}
            frozen = _freeze(scan) if changed and self.mode == "files" \
                and stream == "denoised" else None
        if frozen is not None:
            self._draw_file(self._read_frames(scan, frozen), f"{frozen['n_denoised']:04d}")
        elif changed and self.mode == "window":
            self._window_changed(final=False)

    def stop(self, doc: Mapping[str, Any]) -> None:
        run = self._run_of.get(doc.get("run_start", ""))
        if run is None:
            return
        with self._state_lock:
            scan = self._scans.get(run[0])
            if scan is None:
                return
            frames = self._frames_of(run)
            if frames is not None:
                frames.feed("stop", doc)
            if run[1] == "raw":
                scan.raw_stopped = True
                self._close_finished(scan)
                return
            scan.derived_stopped = True
            scan.exit_status = doc.get("exit_status")
            frozen = _freeze(scan)
        # The last frames are read now, before their runs close, in every mode (a window
        # may draw them later, a snapshot after the scan).
        frozen = self._read_frames(scan, frozen)
        with self._state_lock:
            self._close_finished(scan)
        if self.mode == "files":
            self._draw_file(frozen, "final")
        elif self.mode == "window":
            self._window_changed(final=True)

    @staticmethod
    def _close_finished(scan: _Scan) -> None:
        """Close the referenced frames of a scan's runs once nothing of them will be drawn:
        the derived run's at its stop, the raw run's when both runs have stopped (the
        derived run lags behind the raw one). Frames not read by then are forgotten."""
        if not scan.derived_stopped:
            return
        closing = [run for run in (scan.derived_run, scan.raw_stopped and scan.raw_run)
                   if isinstance(run, RunFrames) and not run.closed]
        for run in closing:
            run.close()
        for frames in scan.raw_frames.values():
            for key in [k for k, v in frames.items()
                        if isinstance(v, FrameReference) and v.run in closing]:
                frames.pop(key)
        scan.denoised_refs.clear()
        if isinstance(scan.latest_denoised, FrameReference):
            scan.latest_denoised = None

    # -- state -------------------------------------------------------------------------------
    def _find(self, scan_id: Any) -> _Scan | None:
        if scan_id is None:
            return self._scans.get(self._current) if self._current else None
        for scan in reversed(self._scans.values()):
            if scan.scan_id == scan_id:
                return scan
        return None

    def _raw_event(self, raw_uid: str, doc: Mapping[str, Any]) -> None:
        frames: dict[str, np.ndarray | FrameReference] = {}
        for key, value in (doc.get("data") or {}).items():
            if self.field is not None and key != self.field:
                continue
            if isinstance(value, np.ndarray | list) and np.ndim(value) == 2:
                frames[key] = np.asarray(value)  # kept, never changed
        with self._state_lock:
            scan = self._scans.get(raw_uid)
            if scan is None:
                return
            if scan.raw_run is not None:  # Datum ids: read when drawn, not here
                for key, reference in scan.raw_run.event_references(doc).items():
                    if self.field is None or key == self.field:
                        frames.setdefault(key, reference)
            if frames:
                self._keep_raw(scan, doc.get("seq_num"), frames)

    @staticmethod
    def _keep_raw(scan: _Scan, seq_num: Any, frames: dict, *, merge: bool = False) -> None:
        """Keep the raw frames (or references) of one seq_num, the last few only; call with
        the state lock. ``merge``: add to what that seq_num has (StreamDatum, key by key)."""
        if merge and seq_num in scan.raw_frames:
            scan.raw_frames[seq_num].update(frames)
            return
        scan.raw_frames[seq_num] = frames
        while len(scan.raw_frames) > _MAX_RAW_FRAMES:
            scan.raw_frames.popitem(last=False)
        scan.raw_count += 1

    def _field(self, scan: _Scan) -> str | None:
        return self.field or scan.provenance.get("field")

    def _denoised_event(self, scan: _Scan, data: dict, seq_num: Any = None) -> None:
        key = self._field(scan)
        scan.denoised_seen += 1
        value = data.get(f"{key}_denoised") if key else None
        if value is None:  # no field named: take the first *_denoised key
            key, value = next(((k[: -len("_denoised")], v) for k, v in data.items()
                               if k.endswith("_denoised")), (key, None))
        if value is not None and np.ndim(value) == 2:
            scan.latest_denoised = np.asarray(value)
        elif value is None:  # in a file: its StreamDatum came first, with this seq_num
            reference = self._denoised_reference(scan, seq_num, key)
            if reference is not None:
                scan.latest_denoised = reference
                key = key or reference.key[: -len("_denoised")]
        seq = data.get("raw_seq_num")
        scan.latest_seq = int(seq) if isinstance(seq, int | np.integer) else None
        scan.latest_by = str(data.get(f"{key}_denoised_by", ""))
        flags = data.get(f"{key}_flags")
        if flags and scan.latest_seq is not None:
            scan.flags[scan.latest_seq] = str(flags)
        dropped = data.get("frames_dropped")
        if isinstance(dropped, int | np.integer):
            scan.dropped = int(dropped)
        # Raw frames older than the one just denoised will not be shown any more.
        if scan.latest_seq is not None:
            for old in [s for s in scan.raw_frames if isinstance(s, int) and s < scan.latest_seq]:
                scan.raw_frames.pop(old)

    @staticmethod
    def _denoised_reference(scan: _Scan, seq_num: Any, key: str | None
                            ) -> FrameReference | None:
        """The reference of the denoised frame of derived event ``seq_num`` (forgetting it
        and any older one), or None."""
        if not isinstance(seq_num, int | np.integer):
            return None
        reference = scan.denoised_refs.pop(int(seq_num), None)
        for older in [s for s in scan.denoised_refs if s < seq_num]:
            scan.denoised_refs.pop(older)
        if reference is None or (key and reference.key != f"{key}_denoised"):
            return None
        return reference

    def _integrated_event(self, scan: _Scan, data: dict) -> None:
        key = self._field(scan)
        if key is None:
            key = next((k[: -len("_iq_raw")] for k in data if k.endswith("_iq_raw")), None)
        q = data.get("q")
        if key is None or q is None:
            return
        seq = data.get("raw_seq_num")
        scan.iq_seq.append(int(seq) if isinstance(seq, int | np.integer)
                           else len(scan.iq_seq) + 1)
        scan.iq_q.append(np.asarray(q, float))
        for name, rows in ((f"{key}_iq_raw", scan.iq_raw), (f"{key}_iq_denoised", scan.iq_den),
                           (f"{key}_iq_raw_sigma", scan.iq_raw_sigma),
                           (f"{key}_iq_denoised_sigma", scan.iq_den_sigma)):
            value = data.get(name)
            rows.append(np.asarray(value, float) if value is not None
                        else np.full(np.shape(q), np.nan))

    @staticmethod
    def _symmetry_event(scan: _Scan, data: dict) -> None:
        violation = data.get("symmetry_violation")
        if violation is not None and np.ndim(violation) == 2:
            scan.violation = np.asarray(violation, np.uint8)
        try:
            report = json.loads(data.get("symmetry_report") or "{}")
        except (TypeError, ValueError):
            report = {}
        scan.symmetry = report if isinstance(report, dict) else {}

    def _read_frames(self, scan: _Scan, frozen: dict) -> dict:
        """``frozen`` with its raw and denoised frames read where they are references.

        Called without the state lock, on the drawing thread: the file is read there, and
        the frame read replaces its reference in the scan, so it is read once. A frame that
        cannot be read is recorded in :attr:`errors`, forgotten and not drawn.
        """
        for which in ("raw", "denoised"):
            reference = frozen[which]
            if not isinstance(reference, FrameReference):
                continue
            frame: np.ndarray | None
            try:
                frame = reference.read()
            except Exception as exc:  # noqa: BLE001 - FrameSourceError, h5py's OSError, ...
                self._record(f"cannot read the {which} frame {reference.key!r} "
                             f"(seq_num {reference.seq_num}): {exc}")
                frame = None
            frozen[which] = frame
            with self._state_lock:
                if scan.latest_denoised is reference:
                    scan.latest_denoised = frame
                frames = scan.raw_frames.get(reference.seq_num) or {}
                for key in [k for k, v in frames.items() if v is reference]:
                    if frame is None:
                        frames.pop(key)
                    else:
                        frames[key] = frame
        return frozen

    # -- drawing -----------------------------------------------------------------------------
    def _draw_file(self, frozen: dict, suffix: str) -> None:
        assert self.out_dir is not None  # files mode
        path = self.out_dir / f"live_{_safe(frozen['label'])}_{suffix}.png"
        try:
            self._draw(frozen, path)
        except Exception as exc:  # noqa: BLE001
            self._record(f"drawing failed: {exc!r}")

    def _window_changed(self, *, final: bool) -> None:
        """Something to show changed: draw now on the main thread when the interval allows
        (always for the final state); otherwise the GUI timer draws it soon."""
        self._dirty = True
        if not _on_main_thread():
            return  # never draw a GUI figure off the main thread: the timer will
        if final or time.monotonic() - self._last_draw >= self.interval_s:
            self._draw_window()

    def _on_timer(self) -> None:
        if self._dirty and time.monotonic() - self._last_draw >= self.interval_s:
            self._draw_window()

    def _draw_window(self) -> None:
        try:
            if self._window_closed:
                self._dirty = False
                return
            if self._figure is None:
                self._open_window()
            with self._state_lock:
                scan = self._find(None)
                frozen = _freeze(scan) if scan is not None else None
            self._dirty = False
            self._last_draw = time.monotonic()
            if scan is not None and frozen is not None:
                self._draw(self._read_frames(scan, frozen), None)
        except Exception as exc:  # noqa: BLE001
            self._record(f"drawing failed: {exc!r}")

    def _open_window(self) -> None:
        """The pyplot figure, shown, with a GUI timer for updates from other threads."""
        import matplotlib.pyplot as plt

        figure = plt.figure(figsize=self.figsize, dpi=self.dpi, layout="constrained")
        manager = figure.canvas.manager
        assert manager is not None  # pyplot's figures have one
        manager.set_window_title("symdenoise: raw vs denoised")
        figure.text(0.5, 0.5, "waiting for a scan", ha="center", va="center", fontsize=14)
        figure.canvas.mpl_connect("close_event", self._on_close)
        manager.show()
        timer = figure.canvas.new_timer(interval=max(50, int(1000 * self.interval_s / 2)))
        timer.add_callback(self._on_timer)
        timer.start()
        self._figure, self._panels, self._timer = figure, None, timer

    def _on_close(self, _event: Any) -> None:
        """The user closed the window: stop drawing until the next scan starts."""
        if self._timer is not None:
            self._timer.stop()
        self._figure = self._panels = self._timer = None
        self._window_closed = True

    def _draw(self, frozen: dict, path: Path | None) -> Path | None:
        with self._draw_lock:
            if self._figure is None:
                self._figure = self._agg_figure()
            if self._panels is None or not self._panels.fits(frozen, self):
                self._panels = _Panels(self._figure, frozen, self)
            else:
                self._panels.update(frozen, self)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._figure.savefig(path, dpi=self.dpi)
                self.written.append(path)
            else:
                self._figure.canvas.draw_idle()
            self.draws += 1
            return path

    def _agg_figure(self) -> Figure:
        """A figure of its own (not pyplot's), for files and snapshots."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=self.figsize, dpi=self.dpi, layout="constrained")
        FigureCanvasAgg(figure)
        return figure


def _backend() -> str:
    import matplotlib

    return matplotlib.get_backend()


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def _common_q(rows: list[np.ndarray]) -> np.ndarray:
    for q in reversed(rows):
        if q.size and np.all(np.isfinite(q)):
            return q
    return rows[-1] if rows else np.zeros(0)


def _stack_rows(rows: list[np.ndarray]) -> np.ndarray:
    width = max((r.size for r in rows), default=0)
    out = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        out[i, : row.size] = row
    return out


def _freeze(scan: _Scan) -> dict:
    """A consistent copy of what a draw needs, taken under the state lock (its frames may
    still be references: :meth:`LiveDenoiseView._read_frames` reads them)."""
    field_name = scan.provenance.get("field")
    raw = None
    if scan.latest_seq is not None and scan.latest_seq in scan.raw_frames:
        frames = scan.raw_frames[scan.latest_seq]
        raw = frames.get(field_name) if field_name else next(iter(frames.values()))
        if raw is None and len(frames) == 1:
            raw = next(iter(frames.values()))
    return {
        "label": scan.label, "raw": raw, "denoised": scan.latest_denoised,
        "seq": scan.latest_seq, "by": scan.latest_by, "n_denoised": scan.denoised_seen,
        "raw_count": scan.raw_count, "raw_start": scan.raw_start,
        "provenance": copy.deepcopy(scan.provenance), "summary": copy.deepcopy(scan.summary),
        "symmetry": copy.deepcopy(scan.symmetry), "violation": scan.violation,
        "flags": dict(scan.flags), "dropped": scan.dropped,
        "iq_seq": np.asarray(scan.iq_seq, int), "iq_q": _common_q(scan.iq_q),
        "iq_raw": _stack_rows(scan.iq_raw), "iq_den": _stack_rows(scan.iq_den),
        "iq_raw_sigma": _stack_rows(scan.iq_raw_sigma),
        "iq_den_sigma": _stack_rows(scan.iq_den_sigma),
        "stopped": scan.derived_stopped, "exit_status": scan.exit_status,
        "has_derived": scan.derived_start is not None,
    }


def _display_mask(frozen: dict, view: LiveDenoiseView, shape: tuple[int, ...]) -> np.ndarray:
    if view.mask is not None and view.mask.shape == shape:
        return view.mask
    start = frozen["raw_start"] or {}
    path = start.get("mask")
    if isinstance(path, str):
        try:
            mask = np.load(path).astype(bool)
            if mask.shape == shape:
                return mask
        except Exception:  # noqa: BLE001 - fall back to what the denoiser zeroed
            pass
    if frozen["denoised"] is not None and frozen["denoised"].shape == shape:
        return frozen["denoised"] == 0  # the publisher zeroes bad pixels
    return np.zeros(shape, bool)


def _limits(scale: str, values: np.ndarray) -> tuple[float, float]:
    """Colour limits of ``values`` for a sqrt or log scale."""
    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    if positive.size == 0:
        return (1e-3, 1.0) if scale == "log" else (0.0, 1.0)
    vmax = float(np.percentile(positive, 99.5))
    if scale == "log":
        vmin = float(max(np.percentile(positive, 1.0), vmax * 1e-4))
        return vmin, max(vmax, vmin * 10)
    return 0.0, max(vmax, 1e-9)


def _norm(scale: str, values: np.ndarray):
    from matplotlib.colors import LogNorm, PowerNorm

    vmin, vmax = _limits(scale, values)
    return LogNorm(vmin=vmin, vmax=vmax) if scale == "log" else PowerNorm(0.5, vmin, vmax)


def _layout_key(frozen: dict) -> tuple:
    """What fixes the figure's layout: a change rebuilds it, anything else updates it."""
    raw, den = frozen["raw"], frozen["denoised"]
    reference = den if den is not None else raw
    shape = None if reference is None else np.shape(reference)
    q = frozen["iq_q"]
    has_iq = bool(frozen["iq_seq"].size and q.size and np.all(np.isfinite(q)))
    return (shape, raw is not None and np.shape(raw) == shape,
            den is not None and np.shape(den) == shape, has_iq)


class _Panels:
    """The figure's axes and artists: built once per layout, then updated in place.

    Rebuilding the whole figure (and solving its constrained layout) costs several times a
    redraw of artists whose data changed, so a live window only rebuilds when the layout
    changes (the first frame, the first I(q), a new frame shape).
    """

    def __init__(self, figure, frozen: dict, view: LiveDenoiseView) -> None:
        import matplotlib
        from matplotlib.ticker import MaxNLocator

        figure.clear()
        figure.set_layout_engine("constrained")
        self.key = _layout_key(frozen)
        shape, has_raw, has_den, has_iq = self.key
        grid = figure.add_gridspec(2, 3, width_ratios=[1, 1, 1.15])
        self.ax_raw, self.ax_den = figure.add_subplot(grid[0, 0]), figure.add_subplot(grid[0, 1])
        self.ax_iq = figure.add_subplot(grid[0, 2])
        self.ax_wr, self.ax_wd = figure.add_subplot(grid[1, 0]), figure.add_subplot(grid[1, 1])
        self.ax_text = figure.add_subplot(grid[1, 2])
        self.ax_text.set_axis_off()
        self.ax_text.set_title("Provenance and symmetry", fontsize=11, loc="left")
        self.suptitle = figure.suptitle("", fontsize=14)
        self.scale = view.scale
        self.images: dict[str, Any] = {}
        self.outlines: list[Any] = []
        self.outline_of: Any = None
        self.outline_legend: list[tuple[int, str, str]] = []
        self.text_box = None
        cmap = matplotlib.colormaps["viridis"].copy()
        cmap.set_bad("0.6")
        self.frame_norm = _norm(view.scale, np.zeros(0))
        if shape is None:
            for ax in (self.ax_raw, self.ax_den):
                ax.set_axis_off()
                ax.text(0.5, 0.5, "waiting for frames", ha="center", va="center",
                        transform=ax.transAxes)
        else:
            blank = np.ma.masked_all(shape)
            for ax, which, present in ((self.ax_raw, "raw", has_raw),
                                       (self.ax_den, "denoised", has_den)):
                ax.set_xlabel("column (px)")
                ax.set_ylabel("row (px)")
                if not present:
                    ax.set_axis_off()
                    ax.text(0.5, 0.5, "raw frame not received\n(subscribe the view to the "
                            "RunEngine)\nor not readable (view.errors)" if which == "raw"
                            else "no denoised frame yet", ha="center", va="center",
                            transform=ax.transAxes, fontsize=10)
                    continue
                self.images[which] = ax.imshow(blank, cmap=cmap, norm=self.frame_norm,
                                               origin="upper", interpolation="nearest")
            if self.images:
                bar = figure.colorbar(next(iter(self.images.values())),
                                      ax=[self.ax_raw, self.ax_den], shrink=0.9, pad=0.02)
                bar.set_label(f"counts / pixel ({view.scale} scale, grey: masked)")
        self.has_iq = has_iq
        if has_iq:
            wcmap = matplotlib.colormaps["magma"].copy()
            wcmap.set_bad("0.6")
            self.iq_norm = _norm(view.scale, np.zeros(0))
            self.waterfalls, self.flag_marks = {}, {}
            for ax, which, title in ((self.ax_wr, "raw", "I(q) waterfall, raw"),
                                     (self.ax_wd, "denoised", "I(q) waterfall, denoised")):
                self.waterfalls[which] = ax.imshow(np.ma.masked_all((1, 2)), aspect="auto",
                                                   cmap=wcmap, norm=self.iq_norm,
                                                   interpolation="nearest")
                ax.set_title(title, fontsize=11)
                ax.set_xlabel("q (nm$^{-1}$)")
                ax.set_ylabel("frame (raw seq_num)")
                ax.yaxis.set_major_locator(MaxNLocator(integer=True))
                (self.flag_marks[which],) = ax.plot([], [], ">", color="red", markersize=7,
                                                    clip_on=False, label="frame flagged")
                self.flag_marks[which].set_in_layout(False)  # an empty line has no extent
            bar = figure.colorbar(self.waterfalls["raw"], ax=[self.ax_wr, self.ax_wd],
                                  shrink=0.9, pad=0.02)
            bar.set_label(f"I(q) (counts / pixel, {view.scale} scale)")
            (self.line_raw,) = self.ax_iq.plot([], [], color="0.45", lw=1.2, label="raw")
            (self.line_den,) = self.ax_iq.plot([], [], color="C3", lw=1.8, label="denoised")
            self.bands: list[Any] = []
            if view.scale == "log":
                self.ax_iq.set_yscale("log")
            self.ax_iq.set_xlabel("q (nm$^{-1}$)")
            self.ax_iq.set_ylabel("I(q) (counts / pixel)")
            self.ax_iq.grid(alpha=0.3)
            self.ax_iq.legend(fontsize=9)
        else:
            for ax in (self.ax_wr, self.ax_wd, self.ax_iq):
                ax.set_axis_off()
            self.iq_reason = self.ax_iq.text(0.5, 0.5, "", ha="center", va="center",
                                             transform=self.ax_iq.transAxes, fontsize=10,
                                             wrap=True)
        self.update(frozen, view)
        # Solve the layout once, then freeze it: updates only move data.
        figure.get_layout_engine().execute(figure)
        figure.set_layout_engine("none")

    def fits(self, frozen: dict, view: LiveDenoiseView) -> bool:
        return _layout_key(frozen) == self.key

    def update(self, frozen: dict, view: LiveDenoiseView) -> None:
        prov = frozen["provenance"]
        key = view.field or prov.get("field") or "?"
        status = (f"  [derived run {frozen['exit_status']}]" if frozen["stopped"]
                  else "  [live]")
        self.suptitle.set_text(f"Scan {frozen['label']}: {key}, raw vs denoised "
                               f"(method {prov.get('method', '?')}){status}")
        self._update_frames(frozen, view)
        if self.has_iq:
            self._update_iq(frozen)
        else:
            self.iq_reason.set_text(
                "no I(q): the derived run has no 'integrated' stream (no geometry?)"
                if frozen["has_derived"] else "waiting for the derived run")
        if self.text_box is not None:
            self.text_box.remove()
        self.text_box = _text_panel(self.ax_text, frozen, prov, self.outline_shown)

    # -- frames --
    @property
    def outline_shown(self) -> list[str]:
        return [label for _, _, label in self.outline_legend]

    def _update_frames(self, frozen: dict, view: LiveDenoiseView) -> None:
        shape = self.key[0]
        if shape is None:
            return
        mask = _display_mask(frozen, view, shape)
        reference = frozen["denoised"] if frozen["denoised"] is not None else frozen["raw"]
        vmin, vmax = _limits(view.scale, np.where(mask, np.nan, np.asarray(reference, float)))
        self.frame_norm.vmin, self.frame_norm.vmax = vmin, vmax
        titles = {"raw": f"raw frame {frozen['seq']}",
                  "denoised": f"denoised ({frozen['by'] or '?'})"}
        for which, image in self.images.items():
            values = np.asarray(frozen[which], float)
            if view.scale == "log":  # zero counts: the lowest colour, not "masked" grey
                values = np.maximum(values, vmin)
            image.set_data(np.ma.masked_array(values, mask | ~np.isfinite(values)))
            image.axes.set_title(titles[which], fontsize=11)
        violation = frozen["violation"] if view.symmetry_map else None
        if violation is not None and np.shape(violation) != shape:
            violation = None
        if violation is not self.outline_of:  # the map comes once per scan: redraw then
            self._draw_outlines(violation)

    def _draw_outlines(self, violation: np.ndarray | None) -> None:
        """Contours of the map's outlined bits on both frames, and their legend."""
        from matplotlib.lines import Line2D

        for artist in self.outlines:
            artist.remove()
        self.outlines, self.outline_of, self.outline_legend = [], violation, []
        if violation is not None:
            for bit, colour, label in _OUTLINES:
                region = (np.asarray(violation) & bit).astype(bool)
                if not region.any():
                    continue
                self.outline_legend.append((bit, colour, label))
                for image in self.images.values():
                    self.outlines.append(image.axes.contour(
                        region.astype(float), levels=[0.5], colors=colour, linewidths=1.0))
        if "denoised" in self.images:
            axes = self.images["denoised"].axes
            if axes.get_legend() is not None:
                axes.get_legend().remove()
            if self.outline_legend:
                axes.legend(handles=[Line2D([], [], color=c, lw=1.0, label=label)
                                     for _, c, label in self.outline_legend],
                            loc="lower right", fontsize=8, framealpha=0.8)

    # -- I(q) --
    def _update_iq(self, frozen: dict) -> None:
        q, seqs = frozen["iq_q"], frozen["iq_seq"]
        if not (seqs.size and q.size and np.all(np.isfinite(q))):
            return
        rows = np.concatenate([frozen["iq_raw"].ravel(), frozen["iq_den"].ravel()])
        self.iq_norm.vmin, self.iq_norm.vmax = _limits(self.scale, rows)
        extent = [float(q[0]), float(q[-1]), float(seqs.max()) + 0.5, float(seqs.min()) - 0.5]
        order = np.argsort(seqs, kind="stable")
        present = set(seqs.tolist())
        flagged = sorted(s for s in frozen["flags"] if s in present)
        for which, rows_ in (("raw", frozen["iq_raw"]), ("denoised", frozen["iq_den"])):
            picture = self.waterfalls[which]
            picture.set_data(np.ma.masked_invalid(rows_[order][:, : q.size]))
            picture.set_extent(extent)
            self.flag_marks[which].set_data(np.full(len(flagged), q[0]), flagged)
            if flagged and picture.axes.get_legend() is None:
                picture.axes.legend(loc="lower right", fontsize=8, framealpha=0.8)
        last = int(np.argmax(seqs))
        for band in self.bands:
            band.remove()
        self.bands = []
        for line, rows_, sig in ((self.line_raw, frozen["iq_raw"], frozen["iq_raw_sigma"]),
                                 (self.line_den, frozen["iq_den"], frozen["iq_den_sigma"])):
            y = rows_[last, : q.size]
            s = sig[last, : q.size] if sig.size else np.full_like(y, np.nan)
            line.set_data(q, y)
            ok = np.isfinite(y) & np.isfinite(s)
            if ok.any():
                self.bands.append(self.ax_iq.fill_between(
                    q, np.where(ok, y - s, np.nan), np.where(ok, y + s, np.nan),
                    color=line.get_color(), alpha=0.2, lw=0))
        self.ax_iq.relim()
        self.ax_iq.autoscale_view()
        self.ax_iq.set_title(f"I(q), frame {int(seqs[last])} (bands: 1σ)", fontsize=11)


def _symmetry_lines(frozen: dict) -> tuple[list[str], str]:
    """What the engine says it did with symmetry, and a colour for it."""
    report = frozen["symmetry"]
    if not report:  # a derived run without a ``symmetry`` stream (older, or no analysis)
        engine = frozen["provenance"].get("engine") or {}
        text = engine.get("symmetry_usage")
        if not text:
            return ["symmetry: no report (no geometry, or the scan was not analysed)"], "black"
        return [part.strip() for part in str(text).split(";")], "black"
    rotation = report.get("rotation_180") or {}
    azimuthal = report.get("azimuthal") or {}
    lines = [str(rotation.get("text", "180° symmetry: no report")),
             str(azimuthal.get("text", "ring symmetry: no report"))]
    violation = frozen["violation"]
    if violation is not None:
        kept = int((np.asarray(violation) & _SPOTS_KEPT).astype(bool).sum())
        if kept:
            lines.append(f"{kept} px of spots kept at their raw intensity")
    violated = rotation.get("fraction_violated") or 0.0
    if rotation.get("used"):
        colour = "darkgreen" if violated <= rotation.get("limit", 0.05) else "darkorange"
    elif rotation.get("tested"):
        colour = "darkred"
    else:
        colour = "black"
    return lines, colour


def _text_panel(ax, frozen: dict, prov: dict, outlines: list[str]):
    """Provenance lines, what the engine did with symmetry, and the flags, top-down."""
    from matplotlib.offsetbox import AnchoredOffsetbox, TextArea, VPacker

    width = 54
    style = {"family": "monospace", "fontsize": 9.5}
    general = [f"frames denoised: {frozen['n_denoised']}   raw frames seen: "
               f"{frozen['raw_count']}",
               f"method: {prov.get('method', '?')}"]
    general += textwrap.wrap(f"why: {prov.get('reason', '')}", width,
                             subsequent_indent="  ")[:3]
    general.append(f"latest served by: {frozen['by'] or '?'}")
    network = frozen["summary"].get("network")
    if network:
        general += textwrap.wrap(f"network: {network}", width, subsequent_indent="  ")[:2]
    if frozen["dropped"]:
        general.append(f"frames dropped (queue full): {frozen['dropped']}")
    for warning in (prov.get("warnings") or [])[:2]:
        general.append(f"warning: {str(warning)[:width - 9]}")
    lines, colour = _symmetry_lines(frozen)
    symmetry = [wrapped for line in lines
                for wrapped in textwrap.wrap(line, width, subsequent_indent="  ")]
    symmetry += [f"outline: {label}" for label in outlines] or (
        ["outline: none (no symmetry violation found)"] if frozen["violation"] is not None
        else [])
    flags = frozen["flags"]
    if flags:
        last_seq = max(flags)
        flag_text = (f"flagged frames: {len(flags)} (red ▶ on the waterfalls)\n"
                     f"  frame {last_seq}: {flags[last_seq][:52]}")
    else:
        flag_text = "flagged frames: none"
    children: list[Artist] = [TextArea("\n".join(general), textprops=style),
                TextArea("\n".join(symmetry), textprops={**style, "color": colour,
                                                         "fontweight": "bold"}),
                TextArea(flag_text, textprops={**style, "color": "red" if flags
                                               else "black"})]
    box = AnchoredOffsetbox(loc="upper left", child=VPacker(children=children, pad=0, sep=8),
                            frameon=False, bbox_to_anchor=(0, 1), bbox_transform=ax.transAxes,
                            borderpad=0)
    box.set_in_layout(False)  # the panel's axes set its place; its text does not move others
    ax.add_artist(box)
    return box
