"""One raw run, processed live on the worker thread: warm-up, fine-tuning, denoising, I(q).

Life of a run:

1. *warm-up*: the first ``warmup_frames`` frames are held; then the scan is analysed
   (bad pixels, beam centre, local 180° symmetry) and the method chosen. The derived run's
   start document is emitted now, so it carries the symmetry report and the method.
2. *fine-tuning*: a trainer thread fits the per-scan network for ``budget_s`` seconds while
   every frame is served by the classical fast mode (Anscombe + NLM, ``denoised_by`` says
   so). The network is switched on only if it beats NLM on a held-out binomial split of a
   warm-up frame (an unbiased self-supervised check); otherwise NLM stays, and the reason is
   recorded.
3. *stop*: the trainer is stopped, a ``summary`` event and the stop document are emitted;
   the stop mirrors the raw ``exit_status``.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..denoise.classical import classical_denoise
from ..denoise.device import select_device
from ..denoise.engine import (
    VIOLATION_BITS,
    ScanAnalysis,
    ScanDenoiser,
    keep_total_counts,
    symmetry_usage,
    thinned_neighbours,
    violation_map,
)
from ..denoise.models import load_base_model
from ..denoise.selection import held_out_deviance
from ..geometry import DetectorGeometry
from ..integrate.azimuthal import AzimuthalIntegration, IntegrationResult
from ..integrate.heldout import IqCheck
from .background import lower_thread_priority
from .frames import FrameSource
from .publisher import DerivedRunPublisher

__all__ = ["LiveOptions", "LiveScan", "START_KEYS"]

logger = logging.getLogger(__name__)

#: Start-document keys read when the callback was given no geometry.
START_KEYS = {"poni": "pyFAI PONI file path or PONI dict",
              "beam_center": "[row, col] in pixels",
              "mask": "path of a .npy bool array, True on bad pixels"}

_NETWORK_METHODS = ("symmetry", "thinning", "noise2sr")
#: Documents that may carry (or point to) frames.
FRAME_DOCUMENTS = ("event", "event_page", "stream_datum")
#: Most frames a worker that has fallen behind denoises in one forward pass.
MAX_LIVE_BATCH = 8
#: Width of the network the live plugin fine-tunes on a CPU (see :func:`live_cpu_settings`).
LIVE_CPU_WIDTH = 12


@dataclass
class LiveOptions:
    """Everything :class:`~bluesky_symdenoise.SymDenoise` was configured with."""

    field: str | None = None
    poni: str | Path | dict | None = None
    center: tuple[float, float] | None = None
    mask: np.ndarray | str | Path | None = None
    method: str = "auto"
    device: str = "auto"
    budget_s: float | None = None
    warmup_frames: int = 4
    npt: int | None = None
    sector: tuple[float, float] | None = None
    cake: bool | tuple[int, int] = False
    min_training_steps: int = 10
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        cake = self.cake
        if not (isinstance(cake, bool) or (
                isinstance(cake, tuple | list) and len(cake) == 2
                and all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                        for n in cake))):
            raise ValueError(f"cake must be True/False or (npt_rad, npt_azim) positive "
                             f"integers, got {cake!r}")
        if isinstance(cake, list):
            self.cake = tuple(cake)


def live_cpu_settings(asked: dict[str, Any]) -> dict[str, Any]:
    """Denoiser settings the live plugin uses on a CPU, where the caller did not set them.

    To keep pace (>= 10 frames/s at 256² on 2 cores, see ``bench/throughput.py``) a frame
    gets one forward pass, not an average over flips (twice the time for a few 0.1 dB),
    through the narrower shipped network (:data:`LIVE_CPU_WIDTH`: 30-40 % less forward time
    than the default width, up to 1 dB lower on some scenes), when its pre-trained weights
    are installed. A GPU keeps the defaults.
    """
    settings: dict[str, Any] = {}
    if "test_time_flips" not in asked:
        settings["test_time_flips"] = 1
    if ("width" not in asked and asked.get("use_pretrained", True)
            and load_base_model(LIVE_CPU_WIDTH, asked.get("depth", 3))[0] is not None):
        settings["width"] = LIVE_CPU_WIDTH
    return settings


def default_npt(shape: tuple[int, ...]) -> int:
    """I(q) points of the ``integrated`` stream when ``npt`` is not given."""
    return max(16, min(500, max(shape) // 2))


def denoised_data_keys(key: str, shape: tuple[int, ...]) -> dict[str, dict]:
    """Data keys of the derived run's ``denoised`` stream for the field ``key``."""
    source = "symdenoise"
    return {
        f"{key}_denoised": {"source": source, "dtype": "array", "shape": list(shape),
                            "dtype_numpy": "<f4", "units": "counts"},
        f"{key}_denoised_by": {"source": source, "dtype": "string", "shape": []},
        f"{key}_flags": {"source": source, "dtype": "string", "shape": []},
        "raw_seq_num": {"source": source, "dtype": "integer", "shape": []},
        "frames_dropped": {"source": source, "dtype": "integer", "shape": []},
    }


def integrated_data_keys(key: str, npt: int, *, with_sector: bool = False
                         ) -> dict[str, dict]:
    """Data keys of the derived run's ``integrated`` stream: q and the raw and denoised I(q)
    with their errors and where the denoised one fell back to raw (and the same for the
    sector ``with_sector``), ``npt`` points each."""
    units = {"q": "nm^-1", f"{key}_iq_raw": "counts/pixel",
             f"{key}_iq_raw_sigma": "counts/pixel", f"{key}_iq_denoised": "counts/pixel",
             f"{key}_iq_denoised_sigma": "counts/pixel"}
    if with_sector:
        for which in ("raw", "raw_sigma", "denoised", "denoised_sigma"):
            units[f"{key}_iq_sector_{which}"] = "counts/pixel"
    keys = {name: {"source": "symdenoise", "dtype": "array", "shape": [npt],
                   "dtype_numpy": "<f8", "units": unit} for name, unit in units.items()}
    for prefix in ("iq", "iq_sector") if with_sector else ("iq",):
        keys[f"{key}_{prefix}_fallback"] = {
            "source": "symdenoise", "dtype": "array", "shape": [npt], "dtype_numpy": "|b1",
            "description": "True where the held-out I(q) check found the denoised I(q) worse "
                           "than raw: the denoised I(q) and sigma are raw's there"}
    keys["raw_seq_num"] = {"source": "symdenoise", "dtype": "integer", "shape": []}
    return keys


#: Azimuthal bins of the ``cake`` stream when ``cake=True`` (5° each).
CAKE_AZIMUTHAL_BINS = 72


def cake_data_keys(key: str, npt_rad: int, npt_azim: int) -> dict[str, dict]:
    """Data keys of the derived run's ``cake`` stream: the raw and denoised frames regrouped
    on a (chi, q) grid by pyFAI's ``integrate2d``, ``npt_azim`` × ``npt_rad`` bins."""
    source = "symdenoise"
    binning = (f"pyFAI integrate2d, {npt_azim} chi bins of {360 / npt_azim:g}° "
               f"(pyFAI's chi convention, -180..180°) x {npt_rad} q bins; NaN: no unmasked "
               "pixel in the bin")
    keys = {"q": {"source": source, "dtype": "array", "shape": [npt_rad],
                  "dtype_numpy": "<f8", "units": "nm^-1"},
            "chi": {"source": source, "dtype": "array", "shape": [npt_azim],
                    "dtype_numpy": "<f8", "units": "deg"}}
    for which in ("raw", "denoised"):
        keys[f"{key}_cake_{which}"] = {
            "source": source, "dtype": "array", "shape": [npt_azim, npt_rad],
            "dtype_numpy": "<f4", "units": "counts/pixel", "description": binning}
    keys["raw_seq_num"] = {"source": source, "dtype": "integer", "shape": []}
    return keys


def symmetry_data_keys(shape: tuple[int, ...] | None) -> dict[str, dict]:
    """Data keys of the derived run's ``symmetry`` stream (one event per scan): the engine's
    report as JSON, and its violation bit map when a beam centre allowed the tests."""
    keys = {"symmetry_report": {
        "source": "symdenoise", "dtype": "string", "shape": [],
        "description": "JSON: which symmetries the method used (rotation_180, azimuthal), "
                       "where they were rejected, and why; see engine.symmetry_usage"}}
    if shape is not None:
        bits = ", ".join(f"{bit} {text}" for bit, text in VIOLATION_BITS.items())
        keys["symmetry_violation"] = {
            "source": "symdenoise", "dtype": "array", "shape": list(shape),
            "dtype_numpy": "|u1",
            "description": f"bits: {bits}; local tests on the warm-up frames' sum"}
    return keys


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("bluesky-symdenoise", "torch", "pyFAI", "numpy", "event-model", "bluesky"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


_INTEGRATORS: dict[tuple, AzimuthalIntegration] = {}
_INTEGRATORS_LOCK = threading.Lock()


def integrator_for(geometry: DetectorGeometry, mask: np.ndarray) -> AzimuthalIntegration:
    """One :class:`AzimuthalIntegration` per (geometry, mask), cached for the process."""
    key = (geometry, hashlib.sha1(np.packbits(mask)).hexdigest())
    with _INTEGRATORS_LOCK:
        if key not in _INTEGRATORS:
            if len(_INTEGRATORS) > 16:
                _INTEGRATORS.clear()
            _INTEGRATORS[key] = AzimuthalIntegration(geometry, mask)
        return _INTEGRATORS[key]


def _load_mask(value: Any) -> np.ndarray:
    if isinstance(value, str | Path):
        return np.load(Path(value)).astype(bool)
    return np.asarray(value).astype(bool)


class LiveScan:
    """The worker-thread state of one raw run and its derived run."""

    def __init__(self, raw_start: dict, options: LiveOptions,
                 emit: Callable[[str, dict], None], *,
                 fault_hooks: dict[str, Callable[[int], None]] | None = None) -> None:
        self.raw_start = raw_start
        #: ``SymDenoise.fault_hooks`` (test seam) given to this run's engines.
        self.fault_hooks = dict(fault_hooks or {})
        #: Why the processing failed (training or denoising raised): the derived stop is
        #: then ``fail`` with this reason, whatever the raw exit status.
        self.failure: str | None = None
        self.options = options
        self._emit = emit
        self.source = FrameSource([options.field] if options.field else None)
        self.field: str | None = options.field
        self.other_fields: list[str] = []
        self.shape: tuple[int, int] | None = None
        self.warnings: list[str] = []
        self.counts: collections.Counter = collections.Counter()
        self.publisher: DerivedRunPublisher | None = None
        self.held: list[tuple[int, np.ndarray, float, float]] = []
        self.denoiser: ScanDenoiser | None = None
        self.analysis: ScanAnalysis | None = None
        self.method = "none"
        self.reason = ""
        self.geometry: DetectorGeometry | None = None
        self.geometry_source = "none"
        self.user_mask: np.ndarray | None = None
        self.network_ready = False
        self.network_note = "not trained yet"
        #: Pre-trained base model serving frames while the per-scan model trains.
        self.interim: ScanDenoiser | None = None
        self._cancel = threading.Event()
        self._trainer: threading.Thread | None = None
        self._previous: np.ndarray | None = None
        #: Frames taken but not yet served (see :meth:`serve_pending`).
        self._pending: list[tuple[int, np.ndarray, float, float]] = []
        #: How many batches of each size were served (a worker behind serves larger ones).
        self.batches: collections.Counter = collections.Counter()
        self.latencies: list[float] = []
        self.stopped = False
        self._streamed: dict[str, set[str]] = {}
        #: Held-out I(q) checks (full ring, then the sector) per serving mode (``by``).
        self.iq_checks: dict[str, list[IqCheck]] = {}
        self.iq_seconds = 0.0

    # -- documents ---------------------------------------------------------------------------
    def handle(self, name: str, doc: dict, received: float, *, backlog: int = 0) -> None:
        """Process one raw document.

        ``backlog`` is how many frames wait behind this document: frames are batched while
        it is above 0 (see :meth:`serve_pending`).
        """
        if name not in FRAME_DOCUMENTS:
            self.serve_pending()
        if name == "descriptor":
            list(self.source.frames(name, doc))
            self._pick_field()
            # Keys whose frames come in StreamDatum documents, never in events.
            self._streamed[doc["uid"]] = {
                k for k, v in doc.get("data_keys", {}).items()
                if str(v.get("external", "")).startswith("STREAM:")}
            return
        if name == "stop":
            self.finish(doc)
            return
        try:
            frames = list(self.source.frames(name, doc))
        except Exception as exc:  # noqa: BLE001 - a bad reference must not end the run
            self.counts["unreadable"] += 1
            self._warn(f"could not read a frame from a {name} document: {exc}")
            return
        taken = 0
        for key, seq_num, frame, timestamp in frames:
            if key == self.field:
                self.take(seq_num, frame, timestamp, received)
                taken += 1
        if backlog == 0:
            self.serve_pending()
        descriptor = doc.get("descriptor")
        if (name == "event" and not taken and self.field in self.source.keys_for(descriptor)
                and self.field not in self._streamed.get(descriptor, ())):
            self.counts["unreadable"] += 1
            self._warn(f"an event (seq_num {doc.get('seq_num')}) carries no {self.field!r}")

    def _pick_field(self) -> None:
        keys = self.source.all_keys
        if self.field is None and keys:
            self.field = sorted(keys)[0]
            self.other_fields = sorted(k for k in keys if k != self.field)
            if self.other_fields:
                self._warn(f"several 2-D fields {sorted(keys)}: denoising {self.field!r} "
                           "only; pass field= to choose (one SymDenoise per field)")

    def _warn(self, message: str) -> None:
        if message not in self.warnings:
            logger.warning("symdenoise: %s", message)
            self.warnings.append(message)

    # -- frames ------------------------------------------------------------------------------
    def take(self, seq_num: int, frame: np.ndarray, timestamp: float, received: float) -> None:
        self.counts["received"] += 1
        if self.shape is None:
            self.shape = tuple(frame.shape)
        if self.publisher is None:
            self.held.append((seq_num, frame, timestamp, received))
            if len(self.held) >= max(1, self.options.warmup_frames):
                self._warm_up()
            return
        self._serve(seq_num, frame, timestamp, received)

    def end_warm_up(self) -> None:
        """Analyse now with the frames held so far (``SymDenoise.flush``)."""
        if self.publisher is None and self.held and not self.stopped:
            self._warm_up()
        self.serve_pending()

    def _resolve_geometry(self, notes: list[str]) -> None:
        opts, start, shape = self.options, self.raw_start, self.shape
        mask = opts.mask if opts.mask is not None else start.get("mask")
        if mask is not None:
            try:
                mask = _load_mask(mask)
            except Exception as exc:  # noqa: BLE001
                self._warn(f"mask ignored: {exc}")
            else:
                if mask.shape != shape:
                    # A mask of another detector: its centre cannot be trusted either.
                    self._warn(f"geometry unusable (mask shape {mask.shape} != frame shape "
                               f"{shape}: mask and geometry describe another detector): "
                               "symmetry-free denoising, no I(q)")
                    return
                self.user_mask = mask
                notes.append("mask from " + ("arguments" if opts.mask is not None
                                             else "start['mask']"))
        poni = opts.poni if opts.poni is not None else None
        center = opts.center
        source = "arguments"
        if poni is None and center is None:
            poni, center, source = start.get("poni"), start.get("beam_center"), "start document"
        try:
            if poni is not None:
                self.geometry = DetectorGeometry.from_poni(poni, shape=shape)
                self.geometry_source = f"PONI from {source}"
            elif center is not None:
                self.geometry = DetectorGeometry.from_center(shape, tuple(center))
                self.geometry_source = (f"beam centre from {source}; pixel size, distance and "
                                        "wavelength are defaults (pass poni= for a true q)")
        except Exception as exc:  # noqa: BLE001
            self._warn(f"geometry unusable ({exc}): symmetry-free denoising, no I(q)")
            self.geometry = None
        if self.geometry is None and not any("geometry" in w for w in self.warnings):
            self._warn("no geometry (poni=, center= or start keys "
                       f"{sorted(START_KEYS)}): symmetry-free denoising, no I(q)")

    def _warm_up(self) -> None:
        """Analyse the held frames, choose the method, emit the derived start."""
        notes: list[str] = []
        self._resolve_geometry(notes)
        opts = self.options
        overrides = dict(opts.config)
        overrides.setdefault("device", opts.device)
        method = opts.method
        try:
            if select_device(overrides["device"]).type == "cpu":
                overrides = {**live_cpu_settings(overrides), **overrides}
            self.denoiser = ScanDenoiser(**overrides)
            self.denoiser.inference_fault = self.fault_hooks.get("inference")
            frames = np.stack([f for _, f, _, _ in self.held
                               if f.shape == self.shape and _numeric(f)])
            center = self.geometry.center if self.geometry is not None else None
            self.analysis = self.denoiser.analyse(frames, mask=self.user_mask, center=center,
                                                  bad_pixels="mask")
            if method == "auto":
                if opts.budget_s is not None and opts.budget_s <= 0:
                    method, reason = "classical-nlm", "budget 0: classical fast mode only"
                else:
                    self.denoiser.config.method = "auto"
                    method, reason = self.denoiser.choose_method(self.analysis, budget_s=None,
                                                                 have_pairs=False)
            elif method == "supervised":
                method, reason = "thinning", "supervised needs paired frames: not live"
            else:
                reason = f"method={method!r} asked for"
            self.method, self.reason = method, reason
        except Exception as exc:  # noqa: BLE001
            self.method, self.reason = "passthrough", f"analysis failed: {exc}"
            self._warn(f"frames cannot be denoised ({exc}): raw frames passed through")
        self.publisher = DerivedRunPublisher(self._emit, self.raw_start,
                                             self._provenance(notes))
        self._declare_streams()
        if self.method in ("symmetry", "thinning"):
            self._start_interim(overrides)
        if self.method in _NETWORK_METHODS:
            self._trainer = threading.Thread(target=self._train, name="symdenoise-trainer",
                                             daemon=True)
            self._trainer.start()
        else:
            self.network_note = f"no network: {self.reason}"
        self._check_iq(self._interim_by())
        held, self.held = self.held, []
        for seq_num, frame, timestamp, received in held:
            self._serve(seq_num, frame, timestamp, received)

    def _start_interim(self, overrides: dict[str, Any]) -> None:
        try:
            interim = ScanDenoiser(**overrides)
            interim.inference_fault = self.fault_hooks.get("inference")
            if interim.use_pretrained():
                self.interim = interim
        except Exception as exc:  # noqa: BLE001
            self._warn(f"pre-trained base model unusable ({exc}): classical interim mode")

    def _interim_name(self) -> str:
        if self.interim is not None:
            return "network:base (interim)"
        return "classical-nlm (interim)"

    def _provenance(self, notes: list[str]) -> dict[str, Any]:
        opts = self.options
        record: dict[str, Any] = {
            "field": self.field, "method": self.method, "reason": self.reason,
            "interim_mode": ("pre-trained base model until the fine-tuned one is ready"
                             if self.interim is not None else
                             "classical-nlm (Anscombe + NLM) until the network is ready"),
            "budget_s": opts.budget_s, "warmup_frames": opts.warmup_frames,
            "geometry": self.geometry.as_metadata() if self.geometry else None,
            "geometry_source": self.geometry_source, "warnings": list(self.warnings),
            "notes": notes, "versions": _versions(),
            "iq_sigma": "raw: Poisson, each pixel's variance the counts around it (0.7 px "
                        "Gaussian); denoised: calibrated per q block on held-out binomial "
                        "splits of the warm-up frames, once per serving mode "
                        "(integrate.heldout); where the denoised I(q) is worse than raw "
                        "beyond the check's noise it falls back to raw (<field>_iq_fallback), "
                        "see the summary's iq_check",
        }
        if self.denoiser is not None and self.analysis is not None:
            engine = self.denoiser.provenance(self.analysis, self.method, self.reason, 0.0)
            engine.pop("seconds", None)
            record["engine"] = engine
        return json.loads(json.dumps(record, default=str))

    def _declare_streams(self) -> None:
        keys = denoised_data_keys(self.field, self.shape)
        self.publisher.add_stream("denoised", keys, object_keys={"symdenoise": list(keys)})
        self._publish_symmetry()
        if self.geometry is not None:
            self._npt = self.options.npt or default_npt(self.shape)
            keys = integrated_data_keys(self.field, self._npt,
                                        with_sector=self.options.sector is not None)
            self.publisher.add_stream("integrated", keys,
                                      object_keys={"symdenoise": sorted(keys)})
            cake = self.options.cake
            if cake:
                self._cake_bins = ((int(cake[0]), int(cake[1])) if isinstance(cake, tuple)
                                   else (self._npt, CAKE_AZIMUTHAL_BINS))
                keys = cake_data_keys(self.field, *self._cake_bins)
                self.publisher.add_stream("cake", keys, object_keys={"symdenoise": sorted(keys)})

    def _publish_symmetry(self) -> None:
        """The ``symmetry`` stream: once per scan, at warm-up, what the engine found and used
        (a live view outlines the map; a catalog keeps it with the derived frames)."""
        if self.analysis is None:
            return
        violation = violation_map(self.analysis, self.method)
        usage = symmetry_usage(self.analysis, self.method,
                               self.denoiser.config if self.denoiser else None)
        keys = symmetry_data_keys(None if violation is None else violation.shape)
        self.publisher.add_stream("symmetry", keys, object_keys={"symdenoise": sorted(keys)})
        values: dict[str, Any] = {"symmetry_report": json.dumps(usage)}
        if violation is not None:
            values["symmetry_violation"] = violation
        self.publisher.add_event("symmetry", values)

    # -- training (trainer thread) -----------------------------------------------------------
    def _train(self) -> None:
        lower_thread_priority()
        denoiser, analysis = self.denoiser, self.analysis

        hook = self.fault_hooks.get("training")

        def cancelled(step: int) -> None:
            if self._cancel.is_set():
                raise _Cancelled(f"stopped at step {step}: the raw run ended")
            if hook is not None:
                hook(step)

        denoiser.training_fault = cancelled
        seconds = self.options.budget_s
        if seconds is None:
            seconds = denoiser.config.fine_tune_seconds(denoiser.device.type)
        try:
            log = denoiser.fit(analysis, method=self.method, seconds=float(seconds))
        except _Cancelled as exc:
            self.network_note = f"training cut short ({exc}): interim mode kept"
            return
        except Exception as exc:  # noqa: BLE001
            self.network_note = (f"training failed ({type(exc).__name__}: {exc}): "
                                 "interim mode kept")
            self.failure = self.failure or f"training failed: {exc!r}"
            logger.warning("symdenoise: %s", self.network_note)
            return
        if log.steps < self.options.min_training_steps:
            self.network_note = (f"only {log.steps} training steps in {log.seconds:.1f} s "
                                 f"(< {self.options.min_training_steps}): interim mode kept")
            return
        try:
            self._validate_network()
        except Exception as exc:  # noqa: BLE001
            self.network_note = f"network check failed ({exc}): interim mode kept"

    def _validate_network(self) -> None:
        analysis = self.analysis
        prepared = analysis.prepared
        if not prepared.integer_counts:
            self.network_ready = True
            self.network_note = "network used (non-integer counts: held-out check skipped)"
            return
        frame, good = prepared.frames[-1], prepared.good
        # The neighbour is thinned like the frame (half of its counts), as in training.
        previous = prepared.frames[-2] * 0.5 if len(prepared.frames) > 1 else None

        def by_network(x: np.ndarray) -> np.ndarray:
            return self.denoiser.denoise_frame(analysis, method=self.method, frame=x,
                                               neighbours=previous)

        net = held_out_deviance(by_network, frame, good, seed=1)
        if self.interim is not None:
            name = "base model"
            ref = held_out_deviance(
                lambda x: self.interim.denoise_frame(analysis, method=self.method, frame=x,
                                                     neighbours=previous), frame, good, 1)
        else:
            name = "NLM"
            ref = held_out_deviance(lambda x: self._classical(x, prepared.bad), frame, good, 1)
        if net < ref:
            self._check_iq(f"network:{self.method}")
            self.network_ready = True
            self.network_note = (f"network used: held-out deviance {net:.4f} < {name} "
                                 f"{ref:.4f}")
        else:
            self.network_note = (f"fine-tuned network not used: held-out deviance {net:.4f} "
                                 f">= {name} {ref:.4f} (budget too short?)")

    # -- the held-out I(q) check --------------------------------------------------------------
    def _interim_by(self) -> str:
        """``denoised_by`` of the frames served before the network is ready."""
        if self.method == "passthrough":
            return "none (passthrough)"
        if self.interim is not None:
            return self._interim_name()
        engine = "classical-bm3d" if self.method == "classical" else "classical-nlm"
        return engine + (" (interim)" if self.method in _NETWORK_METHODS else "")

    def _check_iq(self, by: str) -> None:
        """Calibrate the denoised I(q)'s sigma and find where it falls back to raw, for the
        serving mode ``by``, on held-out splits of the warm-up frames (the engine's
        :meth:`~..denoise.engine.ScanDenoiser.iq_check`; once per mode and scan)."""
        if (self.geometry is None or self.analysis is None or self.method == "passthrough"
                or not self.analysis.prepared.integer_counts):
            return
        prepared = self.analysis.prepared
        frames, bad = prepared.frames, prepared.bad
        engine = (self.denoiser if by.startswith("network:") and by == f"network:{self.method}"
                  else self.interim)

        def serve(half: np.ndarray, index: int, which: int) -> np.ndarray:
            # The previous frame at half dose (half ``which`` of its own split), as the
            # frames served see theirs: live, a frame's only neighbour is the previous one.
            halves = thinned_neighbours(frames[:index + 1], index, seed=index, which=which)
            previous = halves[0] if halves else None
            if engine is not None:
                out = engine.denoise_frame(self.analysis, method=self.method, frame=half,
                                           neighbours=previous)
            else:
                out = self._classical(half, bad)
            return self._finish(out, half, bad)

        try:
            sectors = [None] if self.options.sector is None else [None, self.options.sector]
            start = time.perf_counter()
            checks = self.denoiser.iq_check(
                self.analysis, method=self.method, integration=integrator_for(self.geometry,
                                                                              bad),
                npt=self._npt, sectors=sectors, serve=serve)
            self.iq_seconds += time.perf_counter() - start
            self.iq_checks[by] = checks
        except Exception as exc:  # noqa: BLE001 - sigmas then stay the Poisson upper bound
            self._warn(f"held-out I(q) check failed for {by} ({exc}): denoised sigma is the "
                       "Poisson error at the denoised rate, no fallback")

    def _published_iq(self, by: str, which: int, raw: IntegrationResult,
                      den: IntegrationResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Denoised I(q), its sigma and the fallback flags of profile ``which`` (0: full
        ring, 1: sector), as the held-out check for ``by`` says."""
        checks = self.iq_checks.get(by)
        if checks is not None and len(checks) > which:
            check = checks[which]
            if len(check.q_nm) == len(raw.q_nm) and np.allclose(check.q_nm, raw.q_nm):
                intensity, sigma = check.apply(raw, den)
                return intensity, sigma, check.fallback.copy()
        return den.intensity, den.sigma, np.zeros(len(raw.q_nm), bool)

    # -- serving -----------------------------------------------------------------------------
    def _classical(self, frame: np.ndarray, bad: np.ndarray) -> np.ndarray:
        analysis = self.analysis
        validity = analysis.symmetry.valid if analysis and analysis.symmetry else None
        center = analysis.center if analysis else None
        engine = "bm3d" if self.method == "classical" else "nlm"
        return classical_denoise(frame, mask=bad, center=center, validity=validity,
                                 engine=engine)

    def _prepare(self, frame: np.ndarray, flags: list[str]) -> tuple[np.ndarray, np.ndarray]:
        bad = (self.analysis.prepared.bad.copy() if self.analysis is not None
               else (self.user_mask.copy() if self.user_mask is not None
                     else np.zeros(self.shape, bool)))
        data = np.asarray(frame, np.float32).copy()
        broken = ~np.isfinite(data) | (np.nan_to_num(data) < 0)
        new = broken & ~bad
        if new.any():
            flags.append(f"{int(new.sum())} NaN/inf/negative pixels masked")
            bad |= broken
        if frame.dtype.kind in "iu":  # a counter at its maximum has lost counts
            saturated = (frame == np.iinfo(frame.dtype).max) & ~bad
            if saturated.any():
                flags.append(f"{int(saturated.sum())} saturated pixels masked")
                bad |= saturated
        data[bad] = 0.0
        return data, bad

    def _serve(self, seq_num: int, frame: np.ndarray, timestamp: float,
               received: float) -> None:
        """Take a frame for the next batch (see :meth:`serve_pending`)."""
        self._pending.append((seq_num, frame, timestamp, received))
        if len(self._pending) >= MAX_LIVE_BATCH:
            self.serve_pending()

    def serve_pending(self) -> None:
        """Denoise the frames taken since the last call as one batch and publish them.

        The worker calls this when no other frame is waiting, so one frame is served at once
        with full test-time averaging; a worker that has fallen behind serves up to
        :data:`MAX_LIVE_BATCH` frames in one call, one flip each, to catch up.
        """
        batch, self._pending = self._pending, []
        if not batch:
            return
        served = []  # (seq_num, received, flags, data, bad)
        for seq_num, frame, _, received in batch:
            flags: list[str] = []
            if frame.shape != self.shape or not _numeric(frame):
                flags.append(f"skipped: frame shape {frame.shape} != {self.shape}"
                             if frame.shape != self.shape else
                             f"skipped: frame dtype {frame.dtype} is not real numbers")
                self.counts["invalid"] += 1
                served.append((seq_num, received, flags, None, None))
            else:
                served.append((seq_num, received, flags, *self._prepare(frame, flags)))
        valid = [item for item in served if item[3] is not None]
        flips = None if len(valid) <= 1 else 1
        self.batches[len(valid)] += 1
        outputs: list[np.ndarray] = []
        by = "none"
        if valid:
            try:
                outputs, by = self._denoise([item[3] for item in valid],
                                            [item[4] for item in valid], flips)
            except Exception as exc:  # noqa: BLE001
                for item in valid:
                    item[2].append(f"denoising failed ({type(exc).__name__}: {exc}): raw "
                                   "copied")
                self.counts["failed"] += len(valid)
                self.failure = self.failure or f"denoising failed: {exc!r}"
                outputs, by = [item[3].copy() for item in valid], "none"
        results = iter(outputs)
        for seq_num, received, flags, data, bad in served:
            try:
                if data is None:
                    self._publish(seq_num, received, flags, np.zeros(self.shape, np.float32),
                                  "none", None, None)
                else:
                    self._publish(seq_num, received, flags,
                                  self._finish(next(results), data, bad), by, data, bad)
            except Exception as exc:  # noqa: BLE001 - the rest of the batch goes on
                logger.exception("symdenoise: publishing frame %s failed", seq_num)
                self.failure = self.failure or f"publishing frame {seq_num} failed: {exc!r}"

    def _publish(self, seq_num: int, received: float, flags: list[str], denoised: np.ndarray,
                 by: str, data: np.ndarray | None, bad: np.ndarray | None) -> None:
        key = self.field
        self.counts[f"by:{by}"] += 1
        self.publisher.add_event("denoised", {
            f"{key}_denoised": denoised, f"{key}_denoised_by": by,
            f"{key}_flags": "; ".join(flags), "raw_seq_num": int(seq_num),
            "frames_dropped": int(self.counts["dropped"])})
        if self.publisher.has_stream("integrated"):
            self._integrate(seq_num, data, denoised, bad, by)
        if self.publisher.has_stream("cake"):
            self._integrate_cake(seq_num, data, denoised, bad)
        self.counts["published"] += 1
        self.latencies.append(time.perf_counter() - received)

    def _denoise(self, frames: list[np.ndarray], bads: list[np.ndarray],
                 flips: int | None) -> tuple[list[np.ndarray], str]:
        """Denoise a batch of prepared frames; returns the outputs and who made them."""
        if self.method == "passthrough":
            return [f.copy() for f in frames], "none (passthrough)"
        if self.network_ready or self.interim is not None:
            engine = self.denoiser if self.network_ready else self.interim
            neighbours = [self._previous, *frames[:-1]]
            out = engine.denoise_frames(self.analysis, method=self.method, frames=frames,
                                        neighbours=neighbours, flips=flips)
            self._previous = frames[-1]
            name = f"network:{self.method}" if self.network_ready else self._interim_name()
            return [np.asarray(o, np.float32) for o in out], name
        self._previous = frames[-1]
        engine = "classical-bm3d" if self.method == "classical" else "classical-nlm"
        interim = " (interim)" if self.method in _NETWORK_METHODS else ""
        return ([self._classical(f, b).astype(np.float32) for f, b in zip(frames, bads,
                                                                           strict=True)],
                engine + interim)

    def _finish(self, denoised: np.ndarray, data: np.ndarray, bad: np.ndarray) -> np.ndarray:
        """Keep the frame's total counts (the engine's rule) and zero bad pixels."""
        out = keep_total_counts(np.nan_to_num(np.asarray(denoised, np.float32))[None],
                                data[None], ~bad)[0]
        out[bad] = 0.0
        return out

    def _integrate(self, seq_num: int, data: np.ndarray | None, denoised: np.ndarray,
                   bad: np.ndarray | None, by: str = "none") -> None:
        key, npt = self.field, self._npt
        nan = np.full(npt, np.nan)
        sector = self.options.sector
        prefixes = ("iq",) if sector is None else ("iq", "iq_sector")
        values: dict[str, Any] = {"q": nan}
        for prefix in prefixes:
            for which in ("raw", "raw_sigma", "denoised", "denoised_sigma"):
                values[f"{key}_{prefix}_{which}"] = nan
            values[f"{key}_{prefix}_fallback"] = np.zeros(npt, bool)
        if data is not None:
            try:
                ai = integrator_for(self.geometry, bad)
                for which, (prefix, sec) in enumerate(zip(prefixes, (None, sector),
                                                          strict=False)):
                    raw = ai.integrate(data, npt=npt, sector=sec, error_model="poisson")
                    # Raw's error at the denoised rate; the check scales it (IqCheck.apply).
                    den = ai.integrate(denoised, npt=npt, sector=sec,
                                       variance=np.maximum(denoised, 0))
                    intensity, sigma, fallback = self._published_iq(by, which, raw, den)
                    values.update({"q": raw.q_nm if which == 0 else values["q"],
                                   f"{key}_{prefix}_raw": raw.intensity,
                                   f"{key}_{prefix}_raw_sigma": raw.sigma,
                                   f"{key}_{prefix}_denoised": intensity,
                                   f"{key}_{prefix}_denoised_sigma": sigma,
                                   f"{key}_{prefix}_fallback": fallback})
            except Exception as exc:  # noqa: BLE001
                self._warn(f"integration failed: {exc}")
        values["raw_seq_num"] = int(seq_num)
        self.publisher.add_event("integrated", values)

    def _integrate_cake(self, seq_num: int, data: np.ndarray | None, denoised: np.ndarray,
                        bad: np.ndarray | None) -> None:
        key, (npt_rad, npt_azim) = self.field, self._cake_bins
        values: dict[str, Any] = {
            "q": np.full(npt_rad, np.nan), "chi": np.full(npt_azim, np.nan),
            f"{key}_cake_raw": np.full((npt_azim, npt_rad), np.nan, np.float32),
            f"{key}_cake_denoised": np.full((npt_azim, npt_rad), np.nan, np.float32)}
        if data is not None:
            try:
                ai = integrator_for(self.geometry, bad)
                raw = ai.cake(data, npt_rad, npt_azim)
                den = ai.cake(denoised, npt_rad, npt_azim)
                values.update({"q": raw.q_nm, "chi": raw.chi_deg,
                               f"{key}_cake_raw": raw.intensity.astype(np.float32),
                               f"{key}_cake_denoised": den.intensity.astype(np.float32)})
            except Exception as exc:  # noqa: BLE001
                self._warn(f"cake integration failed: {exc}")
        values["raw_seq_num"] = int(seq_num)
        self.publisher.add_event("cake", values)

    # -- end ---------------------------------------------------------------------------------
    def finish(self, raw_stop: dict | None, *, reason: str | None = None) -> None:
        """Stop training, emit the summary and the stop (mirrors the raw exit status)."""
        if self.stopped:
            return
        self.stopped = True
        if self.publisher is None:
            if self.held:
                self._warm_up()
            elif not self.source.all_keys:
                # The run never declared a 2-D field (a scalar scan, or one that failed
                # before its first reading): there is nothing to derive, so no derived run.
                self.source.close()
                return
            elif self.shape is None:
                # A 2-D field was declared but no frame could be read: still publish a
                # linked, empty derived run, so the failure is on record.
                self._warn("no frames of a 2-D field arrived")
                self.publisher = DerivedRunPublisher(self._emit, self.raw_start,
                                                     self._provenance([]))
        self.serve_pending()
        self._cancel.set()
        if self._trainer is not None:
            self._trainer.join()
        summary = self.summary()
        data_keys = {
            name: {"source": "symdenoise", "dtype": "integer", "shape": []}
            for name in ("frames_received", "frames_published", "frames_dropped",
                         "frames_invalid", "frames_unreadable")
        } | {"provenance": {"source": "symdenoise", "dtype": "string", "shape": []}}
        values = {
            "frames_received": summary["received"], "frames_published": summary["published"],
            "frames_dropped": summary["dropped"], "frames_invalid": summary["invalid"],
            "frames_unreadable": summary["unreadable"],
            "provenance": json.dumps(summary, default=str)}
        self.publisher.add_stream("summary", data_keys)
        self.publisher.add_event("summary", values)
        exit_status = (raw_stop or {}).get("exit_status", "fail")
        text = (raw_stop or {}).get("reason", "") if reason is None else reason
        if self.failure:
            exit_status = "fail"
            text = (text + "; " if text else "") + f"symdenoise: {self.failure}"
        if summary["dropped"]:
            text = (text + "; " if text else "") + (
                f"symdenoise: {summary['dropped']} frames dropped (queue full)")
        self.publisher.finish(exit_status=exit_status, reason=text)
        self.source.close()

    def summary(self) -> dict[str, Any]:
        record: dict[str, Any] = {k: int(self.counts[k]) for k in
                                  ("received", "published", "dropped", "invalid",
                                   "unreadable", "failed")}
        record["served_by"] = {k[3:]: int(v) for k, v in self.counts.items()
                               if k.startswith("by:")}
        record["method"] = self.method
        record["network"] = self.network_note
        record["batches"] = {str(size): n for size, n in sorted(self.batches.items())}
        record["iq_check"] = {
            by: dict(zip(("full", "sector"), (c.summary() for c in checks), strict=False))
            for by, checks in self.iq_checks.items()}
        if self.iq_checks:
            record["iq_check_seconds"] = round(self.iq_seconds, 2)
        record["warnings"] = list(self.warnings)
        if self.denoiser is not None:
            training = self.denoiser.training
            record["training"] = training.as_dict() if training is not None else None
            from ..denoise.models import model_hash

            record["model_hash"] = (model_hash(self.denoiser.model)
                                    if self.denoiser.model is not None else None)
            record["model"] = self.denoiser.model_origin
            # Device/batch fallbacks (out of memory) of training and inference.
            record["engine_events"] = list(self.denoiser.events) + (
                list(self.interim.events) if self.interim is not None else [])
        analysis = self.analysis
        if analysis is not None and analysis.symmetry is not None:
            record["symmetry"] = analysis.symmetry.summary()
            if analysis.isotropy is not None:
                record["isotropy"] = analysis.isotropy.summary()
        else:
            record["symmetry"] = "not tested: no beam centre (or no frame analysed)"
        if self.latencies:
            record["latency_s"] = {"p50": float(np.percentile(self.latencies, 50)),
                                   "p95": float(np.percentile(self.latencies, 95))}
        return json.loads(json.dumps(record, default=str))


def _numeric(frame: np.ndarray) -> bool:
    """Real numbers (bool, integer or float): what can be read as counts."""
    return frame.dtype.kind in "biuf"


class _Cancelled(Exception):
    pass
