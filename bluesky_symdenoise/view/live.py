"""``LiveDenoiseView``: a live figure of the current scan, raw beside denoised.

One callable takes both document streams: subscribe it to the RunEngine (raw run) and to
:class:`~bluesky_symdenoise.stream.callback.SymDenoise` (derived run). Derived runs are told
apart by ``original_run_uid`` in their start document and joined to their raw run by it.

The figure (about 14 × 8 in) shows

* the latest raw frame and its denoised frame side by side, one colour scale (sqrt or log),
  masked pixels grey, with the outline of the region where 180° symmetry is violated;
* I(q) waterfalls (q in nm⁻¹ across, frame number down) of the raw and the denoised frames,
  flagged frames marked;
* the latest raw and denoised I(q) with their 1σ bands;
* a text panel: method, which denoiser served the frame, symmetry summary, flags, drops.

Threads: raw documents arrive on the RunEngine's thread and derived ones on the SymDenoise
worker. Under a Qt backend the bluesky ``QtAwareCallback`` machinery moves every document to
the Qt main thread. Otherwise documents only update state under a short lock (never blocking
the RunEngine behind a draw), and drawing happens on the thread of the derived document that
triggers it (every ``every`` denoised frames, and at the derived stop), under a second lock.

Nothing raises into the caller: problems are recorded in :attr:`LiveDenoiseView.errors`.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from bluesky.callbacks.mpl_plotting import QtAwareCallback

__all__ = ["LiveDenoiseView"]

logger = logging.getLogger(__name__)

#: Raw frames kept per scan while they wait for their denoised partner.
_MAX_RAW_FRAMES = 128
#: Scans whose derived run may still be running, beside the current one.
_MAX_OPEN_SCANS = 4


@dataclass
class _Scan:
    """What the view knows about one raw run and its derived run."""

    raw_uid: str
    scan_id: Any = None
    raw_start: dict | None = None
    derived_start: dict | None = None
    provenance: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    raw_frames: OrderedDict = field(default_factory=OrderedDict)  # seq_num -> {key: frame}
    raw_sum: dict = field(default_factory=dict)  # key -> running sum (symmetry check)
    raw_count: int = 0
    latest_denoised: np.ndarray | None = None
    latest_seq: int | None = None
    latest_by: str = ""
    denoised_seen: int = 0
    flags: dict = field(default_factory=dict)  # raw_seq_num -> flag text (non-empty only)
    dropped: int = 0
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
        Headless mode: write ``live_<scan_id>_<seq>.png`` every ``every`` denoised frames
        and ``live_<scan_id>_final.png`` at the derived stop.
    every
        Draw every this many denoised frames. A draw takes ~0.7 s of the thread that
        delivers the derived document (the SymDenoise worker), so keep it sparse.
    scale
        ``"sqrt"`` or ``"log"`` colour scaling of the frames and waterfalls.
    mask
        Bool array, True on bad pixels, drawn grey. Without it, the raw start's ``mask``
        (``.npy`` path) is used, else pixels the denoiser zeroed (it zeroes bad pixels).
    symmetry_map
        Outline where 180° symmetry is violated, from the view's own check on the sum of
        the raw frames seen (the derived run publishes only summary numbers).
    figsize, dpi
        Figure size in inches and PNG resolution.

    Examples
    --------
    >>> view = LiveDenoiseView(out_dir="snapshots", every=5)   # doctest: +SKIP
    >>> RE.subscribe(view)                                      # doctest: +SKIP
    >>> sd.subscribe(view)                                      # doctest: +SKIP
    """

    def __init__(self, field: str | None = None, out_dir: str | Path | None = None,
                 every: int = 10, *, scale: str = "sqrt", mask: np.ndarray | None = None,
                 symmetry_map: bool = True, figsize: tuple[float, float] = (14.0, 8.0),
                 dpi: int = 100, use_teleporter: bool | None = None) -> None:
        if scale not in ("sqrt", "log"):
            raise ValueError(f"scale must be 'sqrt' or 'log', got {scale!r}")
        super().__init__(use_teleporter=use_teleporter)
        self.field = field
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.every = max(1, int(every))
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
        self._figure = None
        #: Problems met, as messages (never raised into the caller).
        self.errors: list[str] = []
        #: Paths of the PNGs written.
        self.written: list[Path] = []

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

    def snapshot(self, path: str | Path | None = None, scan_id: Any = None) -> Path | None:
        """Draw the current scan (or ``scan_id``) now; write a PNG when ``path`` is given.
        Returns the path written, or ``None``. Never raises."""
        try:
            with self._state_lock:
                scan = self._find(scan_id)
                if scan is None:
                    return None
                frozen = _freeze(scan)
            return self._draw(frozen, Path(path) if path is not None else None)
        except Exception as exc:  # noqa: BLE001 - a view must never break its caller
            self._record(f"snapshot failed: {exc!r}")
            return None

    @property
    def figure(self):
        """The matplotlib figure (created at the first draw)."""
        return self._figure

    # -- documents ---------------------------------------------------------------------------
    def __call__(self, name: str, doc: dict, *, escape: bool = False) -> None:
        try:
            super().__call__(name, doc, escape=escape)
        except Exception as exc:  # noqa: BLE001 - never raise into the RunEngine/SymDenoise
            self._record(f"could not take the {name} document: {exc!r}")

    def _record(self, message: str) -> None:
        logger.warning("live view: %s", message)
        if len(self.errors) < 1000:
            self.errors.append(message)

    def start(self, doc: dict) -> None:
        raw_uid = doc.get("original_run_uid")
        with self._state_lock:
            if raw_uid is None:  # a raw run: follow it from now on
                scan = _Scan(raw_uid=doc["uid"], scan_id=doc.get("scan_id"), raw_start=doc)
                self._scans[doc["uid"]] = scan
                self._current = doc["uid"]
                self._run_of[doc["uid"]] = (doc["uid"], "raw")
                self._forget_old()
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
            self._scans.pop(uid)
            for key in [k for k, v in self._run_of.items() if v[0] == uid]:
                self._run_of.pop(key)
            for key in [k for k, v in self._streams.items() if v[0] == uid]:
                self._streams.pop(key)

    def descriptor(self, doc: dict) -> None:
        with self._state_lock:
            run = self._run_of.get(doc.get("run_start"))
            if run is not None:
                self._streams[doc["uid"]] = (run[0], run[1], doc.get("name", "primary"))

    def event_page(self, doc: dict) -> None:
        import event_model

        for event in event_model.unpack_event_page(doc):
            self.event(event)

    def event(self, doc: dict) -> None:
        route = self._streams.get(doc.get("descriptor"))
        if route is None:
            return
        raw_uid, kind, stream = route
        if kind == "raw":
            self._raw_event(raw_uid, doc)
            return
        draw = None
        with self._state_lock:
            scan = self._scans.get(raw_uid)
            if scan is None:
                return
            data = doc.get("data") or {}
            if stream == "denoised":
                self._denoised_event(scan, data)
                if scan.denoised_seen % self.every == 0 and self._should_draw():
                    draw = (_freeze(scan), f"{scan.denoised_seen:04d}")
            elif stream == "integrated":
                self._integrated_event(scan, data)
            elif stream == "summary":
                try:
                    scan.summary = json.loads(data.get("provenance") or "{}")
                except (TypeError, ValueError):
                    scan.summary = {}
        if draw is not None:
            self._draw_scan(*draw)

    def stop(self, doc: dict) -> None:
        run = self._run_of.get(doc.get("run_start"))
        if run is None or run[1] != "derived":
            return
        with self._state_lock:
            scan = self._scans.get(run[0])
            if scan is None:
                return
            scan.derived_stopped = True
            scan.exit_status = doc.get("exit_status")
            frozen = _freeze(scan)
        if self._should_draw():
            self._draw_scan(frozen, "final")

    # -- state -------------------------------------------------------------------------------
    def _find(self, scan_id: Any) -> _Scan | None:
        if scan_id is None:
            return self._scans.get(self._current) if self._current else None
        for scan in reversed(self._scans.values()):
            if scan.scan_id == scan_id:
                return scan
        return None

    def _raw_event(self, raw_uid: str, doc: dict) -> None:
        frames = {}
        for key, value in (doc.get("data") or {}).items():
            if self.field is not None and key != self.field:
                continue
            if isinstance(value, np.ndarray | list) and np.ndim(value) == 2:
                frames[key] = np.asarray(value)  # kept, never changed
        if not frames:
            return
        with self._state_lock:
            scan = self._scans.get(raw_uid)
            if scan is None:
                return
            scan.raw_frames[doc.get("seq_num")] = frames
            while len(scan.raw_frames) > _MAX_RAW_FRAMES:
                scan.raw_frames.popitem(last=False)
            scan.raw_count += 1
            if self.symmetry_map:
                for key, frame in frames.items():
                    total = scan.raw_sum.get(key)
                    if total is None or total.shape != frame.shape:
                        scan.raw_sum[key] = np.nan_to_num(frame.astype(np.float64))
                    else:
                        total += np.nan_to_num(frame)

    def _field(self, scan: _Scan) -> str | None:
        return self.field or scan.provenance.get("field")

    def _denoised_event(self, scan: _Scan, data: dict) -> None:
        key = self._field(scan)
        scan.denoised_seen += 1
        value = data.get(f"{key}_denoised") if key else None
        if value is None:  # no field named: take the first *_denoised key
            key, value = next(((k[: -len("_denoised")], v) for k, v in data.items()
                               if k.endswith("_denoised")), (key, None))
        if value is not None and np.ndim(value) == 2:
            scan.latest_denoised = np.asarray(value)
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

    # -- drawing -----------------------------------------------------------------------------
    def _should_draw(self) -> bool:
        import matplotlib

        return self.out_dir is not None or "agg" not in matplotlib.get_backend().lower()

    def _draw_scan(self, frozen: dict, suffix: str) -> None:
        path = None
        if self.out_dir is not None:
            path = self.out_dir / f"live_{_safe(frozen['label'])}_{suffix}.png"
        try:
            self._draw(frozen, path)
        except Exception as exc:  # noqa: BLE001
            self._record(f"drawing failed: {exc!r}")

    def _new_figure(self):
        import matplotlib

        if self.out_dir is None and "agg" not in matplotlib.get_backend().lower():
            import matplotlib.pyplot as plt

            return plt.figure(figsize=self.figsize, dpi=self.dpi, layout="constrained")
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=self.figsize, dpi=self.dpi, layout="constrained")
        FigureCanvasAgg(figure)
        return figure

    def _draw(self, frozen: dict, path: Path | None) -> Path | None:
        with self._draw_lock:
            if self._figure is None:
                self._figure = self._new_figure()
            figure = self._figure
            figure.clear()
            _render(figure, frozen, self)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                figure.savefig(path, dpi=self.dpi)
                self.written.append(path)
            else:
                figure.canvas.draw_idle()
            return path


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
    """A consistent copy of what a draw needs, taken under the state lock."""
    field_name = scan.provenance.get("field")
    raw = None
    if scan.latest_seq is not None and scan.latest_seq in scan.raw_frames:
        frames = scan.raw_frames[scan.latest_seq]
        raw = frames.get(field_name) if field_name else next(iter(frames.values()))
        if raw is None and len(frames) == 1:
            raw = next(iter(frames.values()))
    raw_sum = scan.raw_sum.get(field_name) if field_name else None
    if raw_sum is None and len(scan.raw_sum) == 1:
        raw_sum = next(iter(scan.raw_sum.values()))
    return {
        "label": scan.label, "raw": raw, "denoised": scan.latest_denoised,
        "seq": scan.latest_seq, "by": scan.latest_by, "n_denoised": scan.denoised_seen,
        "raw_sum": None if raw_sum is None else raw_sum.copy(),
        "raw_count": scan.raw_count, "raw_start": scan.raw_start,
        "provenance": copy.deepcopy(scan.provenance), "summary": copy.deepcopy(scan.summary),
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


def _norm(scale: str, values: np.ndarray):
    from matplotlib.colors import LogNorm, PowerNorm

    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    if positive.size == 0:
        return PowerNorm(0.5, vmin=0.0, vmax=1.0)
    vmax = float(np.percentile(positive, 99.5))
    if scale == "log":
        vmin = float(max(np.percentile(positive, 1.0), vmax * 1e-4))
        return LogNorm(vmin=vmin, vmax=max(vmax, vmin * 10))
    return PowerNorm(0.5, vmin=0.0, vmax=max(vmax, 1e-9))


def _symmetry_text(frozen: dict) -> tuple[str, float | None]:
    symmetry = (frozen["summary"].get("symmetry")
                or (frozen["provenance"].get("engine") or {}).get("symmetry"))
    if not symmetry:
        return "symmetry: no report (no geometry or not analysed)", None
    if isinstance(symmetry, str):
        return f"symmetry: {symmetry}", None
    violated = symmetry.get("fraction_violated")
    text = (f"180° symmetry violated on {100 * violated:.2f} % of paired pixels\n"
            "  (engine, on the warm-up frames)"
            if isinstance(violated, int | float) else "symmetry: no violation figure")
    paired = symmetry.get("fraction_paired")
    chi2 = symmetry.get("chi2_per_pair")
    extra = []
    if isinstance(paired, int | float):
        extra.append(f"paired {100 * paired:.0f} %")
    if isinstance(chi2, int | float):
        extra.append(f"χ²/pair {chi2:.2f}")
    return text + (f"\n  {', '.join(extra)}" if extra else ""), violated


def _violation_map(frozen: dict, mask: np.ndarray) -> np.ndarray | None:
    """The view's own local 180° check on Σ raw frames (what the engine does at warm-up)."""
    total = frozen["raw_sum"]
    engine = frozen["provenance"].get("engine") or {}
    center = engine.get("beam_center") or (frozen["provenance"].get("geometry") or {}).get(
        "beam_center")
    if total is None or center is None or total.shape != mask.shape:
        return None
    from ..physics.symmetry import symmetry_validity

    return symmetry_validity(total, (float(center[0]), float(center[1])), mask).violation


def _render(figure, frozen: dict, view: LiveDenoiseView) -> None:
    import matplotlib

    grid = figure.add_gridspec(2, 3, width_ratios=[1, 1, 1.15])
    ax_raw, ax_den = figure.add_subplot(grid[0, 0]), figure.add_subplot(grid[0, 1])
    ax_iq = figure.add_subplot(grid[0, 2])
    ax_wr, ax_wd = figure.add_subplot(grid[1, 0]), figure.add_subplot(grid[1, 1])
    ax_text = figure.add_subplot(grid[1, 2])
    prov = frozen["provenance"]
    key = view.field or prov.get("field") or "?"
    status = (f"  [derived run {frozen['exit_status']}]" if frozen["stopped"]
              else "  [live]")
    figure.suptitle(f"Scan {frozen['label']}: {key}, raw vs denoised "
                    f"(method {prov.get('method', '?')}){status}", fontsize=14)

    # -- frames --
    raw, den = frozen["raw"], frozen["denoised"]
    shape = (den if den is not None else raw).shape if (den is not None or raw is not None) \
        else None
    cmap = matplotlib.colormaps["viridis"].copy()
    cmap.set_bad("0.6")
    seq = frozen["seq"]
    violation = None
    if shape is not None:
        mask = _display_mask(frozen, view, shape)
        frozen["display_mask"] = mask
        if view.symmetry_map:
            try:
                violation = _violation_map(frozen, mask)
            except Exception as exc:  # noqa: BLE001
                view._record(f"symmetry map failed: {exc!r}")
        reference = den if den is not None else raw
        norm = _norm(view.scale, np.where(mask, np.nan, np.asarray(reference, float)))
        image = None
        for ax, frame, title in ((ax_raw, raw, f"raw frame {seq}"),
                                 (ax_den, den, f"denoised ({frozen['by'] or '?'})")):
            ax.set_title(title, fontsize=11)
            ax.set_xlabel("column (px)")
            ax.set_ylabel("row (px)")
            if frame is None or np.shape(frame) != shape:
                ax.set_axis_off()
                ax.text(0.5, 0.5, "raw frame not received\n(subscribe the view to the "
                        "RunEngine;\nframes must be inline in events)" if ax is ax_raw
                        else "no denoised frame yet", ha="center", va="center",
                        transform=ax.transAxes, fontsize=10)
                continue
            values = np.asarray(frame, float)
            if view.scale == "log":  # zero counts: the lowest colour, not "masked" grey
                values = np.maximum(values, norm.vmin)
            shown = np.ma.masked_array(values, mask | ~np.isfinite(values))
            image = ax.imshow(shown, cmap=cmap, norm=norm, origin="upper",
                              interpolation="nearest")
            if violation is not None and violation.any():
                ax.contour(violation.astype(float), levels=[0.5], colors="red",
                           linewidths=1.0)
        if image is not None:
            bar = figure.colorbar(image, ax=[ax_raw, ax_den], shrink=0.9, pad=0.02)
            bar.set_label(f"counts / pixel ({view.scale} scale, grey: masked)")
        if violation is not None and violation.any():
            from matplotlib.lines import Line2D

            ax_den.legend(handles=[Line2D([], [], color="red", lw=1.0,
                                          label="180° symmetry violated")],
                          loc="lower right", fontsize=8, framealpha=0.8)
    else:
        for ax in (ax_raw, ax_den):
            ax.set_axis_off()
            ax.text(0.5, 0.5, "waiting for frames", ha="center", va="center",
                    transform=ax.transAxes)

    # -- waterfalls --
    q, seqs = frozen["iq_q"], frozen["iq_seq"]
    if seqs.size and q.size and np.all(np.isfinite(q)):
        rows = np.concatenate([frozen["iq_raw"].ravel(), frozen["iq_den"].ravel()])
        wnorm = _norm(view.scale, rows)
        extent = [float(q[0]), float(q[-1]), float(seqs.max()) + 0.5, float(seqs.min()) - 0.5]
        wcmap = matplotlib.colormaps["magma"].copy()
        wcmap.set_bad("0.6")
        order = np.argsort(seqs, kind="stable")
        flagged = sorted(s for s in frozen["flags"] if s in set(seqs.tolist()))
        picture = None
        for ax, rows_, title in ((ax_wr, frozen["iq_raw"], "I(q) waterfall, raw"),
                                 (ax_wd, frozen["iq_den"], "I(q) waterfall, denoised")):
            data = np.ma.masked_invalid(rows_[order][:, : q.size])
            picture = ax.imshow(data, aspect="auto", extent=extent, cmap=wcmap, norm=wnorm,
                                interpolation="nearest")
            ax.set_title(title, fontsize=11)
            ax.set_xlabel("q (nm$^{-1}$)")
            ax.set_ylabel("frame (raw seq_num)")
            if flagged:
                ax.plot(np.full(len(flagged), q[0]), flagged, ">", color="red",
                        markersize=7, clip_on=False, label="frame flagged")
                ax.legend(loc="lower right", fontsize=8, framealpha=0.8)
        bar = figure.colorbar(picture, ax=[ax_wr, ax_wd], shrink=0.9, pad=0.02)
        bar.set_label(f"I(q) (counts / pixel, {view.scale} scale)")

        last = int(np.argmax(seqs))
        for rows_, sig, colour, label in (
                (frozen["iq_raw"], frozen["iq_raw_sigma"], "0.45", "raw"),
                (frozen["iq_den"], frozen["iq_den_sigma"], "C3", "denoised")):
            y = rows_[last, : q.size]
            s = sig[last, : q.size] if sig.size else np.full_like(y, np.nan)
            ax_iq.plot(q, y, color=colour, lw=1.2 if label == "raw" else 1.8, label=label)
            ok = np.isfinite(y) & np.isfinite(s)
            if ok.any():
                ax_iq.fill_between(q, np.where(ok, y - s, np.nan), np.where(ok, y + s, np.nan),
                                   color=colour, alpha=0.2, lw=0)
        if view.scale == "log":
            ax_iq.set_yscale("log")
        ax_iq.set_title(f"I(q), frame {int(seqs[last])} (bands: 1σ)", fontsize=11)
        ax_iq.set_xlabel("q (nm$^{-1}$)")
        ax_iq.set_ylabel("I(q) (counts / pixel)")
        ax_iq.grid(alpha=0.3)
        ax_iq.legend(fontsize=9)
    else:
        reason = ("no I(q): the derived run has no 'integrated' stream (no geometry?)"
                  if frozen["has_derived"] else "waiting for the derived run")
        for ax in (ax_wr, ax_wd, ax_iq):
            ax.set_axis_off()
        ax_iq.text(0.5, 0.5, reason, ha="center", va="center", transform=ax_iq.transAxes,
                   fontsize=10, wrap=True)

    # -- text panel --
    _text_panel(ax_text, frozen, prov, violation)


def _text_panel(ax, frozen: dict, prov: dict, violation: np.ndarray | None) -> None:
    """Provenance lines, a symmetry badge and the flags, stacked top-down."""
    from matplotlib.offsetbox import AnchoredOffsetbox, TextArea, VPacker

    ax.set_axis_off()
    ax.set_title("Provenance and symmetry", fontsize=11, loc="left")
    style = {"family": "monospace", "fontsize": 9.5}
    general = [f"frames denoised: {frozen['n_denoised']}   raw frames seen: "
               f"{frozen['raw_count']}",
               f"method: {prov.get('method', '?')}",
               f"  {str(prov.get('reason', ''))[:60]}",
               f"latest served by: {frozen['by'] or '?'}"]
    network = frozen["summary"].get("network")
    if network:
        general.append(f"network: {str(network)[:58]}")
    if frozen["dropped"]:
        general.append(f"frames dropped (queue full): {frozen['dropped']}")
    for warning in (prov.get("warnings") or [])[:2]:
        general.append(f"warning: {str(warning)[:58]}")
    sym_text, violated = _symmetry_text(frozen)
    if violation is not None:
        paired = max(int((~frozen["display_mask"]).sum()), 1) if "display_mask" in frozen \
            else max(violation.size, 1)
        sym_text += (f"\nred outline: the view's own check on Σ of {frozen['raw_count']}"
                     f"\n  raw frames: {100 * violation.sum() / paired:.2f} % of unmasked"
                     " pixels")
    broken = isinstance(violated, int | float) and violated > 0.01
    badge = TextArea(sym_text, textprops={**style, "color": "darkred" if broken
                                          else "darkgreen", "fontweight": "bold"})
    flags = frozen["flags"]
    if flags:
        last_seq = max(flags)
        flag_text = (f"flagged frames: {len(flags)} (red ▶ on the waterfalls)\n"
                     f"  frame {last_seq}: {flags[last_seq][:52]}")
    else:
        flag_text = "flagged frames: none"
    children = [TextArea("\n".join(general), textprops=style), badge,
                TextArea(flag_text, textprops={**style, "color": "red" if flags
                                               else "black"})]
    box = AnchoredOffsetbox(loc="upper left", child=VPacker(children=children, pad=0, sep=8),
                            frameon=False, bbox_to_anchor=(0, 1), bbox_transform=ax.transAxes,
                            borderpad=0)
    ax.add_artist(box)
