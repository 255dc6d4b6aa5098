"""One raw run, processed live on the worker thread: the documents, the warm-up and the
publishing. Every denoising rule is the engine's (:class:`~..denoise.live.LiveDenoiser`).

Life of a run:

1. *warm-up*: the first ``warmup_frames`` frames are held; then the engine analyses them
   (bad pixels, beam centre, local 180° symmetry) and chooses the method. The derived run's
   start document is emitted now, so it carries the symmetry report and the method.
2. *fine-tuning*: a trainer thread runs the engine's fine-tuning for ``budget_s`` seconds
   while every frame is served by the interim mode (``denoised_by`` says which); the engine
   switches the network on only if it passes its held-out check.
3. *stop*: the fine-tuning is cancelled, a ``summary`` event and the stop document are
   emitted; the stop mirrors the raw ``exit_status``.

The engine module imports torch: it is imported here when a run's first frames are
analysed, not when the plugin is imported or built.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from event_model.documents import EventDescriptor, RunStart, RunStop

from ..integrate.azimuthal import integrator_for
from .background import lower_thread_priority
from .darks import DarkFrames
from .frames import FRAME_DOCUMENTS, FrameSource
from .options import LiveOptions
from .publisher import (
    CAKE_AZIMUTHAL_BINS,
    SUMMARY_COUNTS,
    DerivedRunPublisher,
    Emit,
    cake_data_keys,
    default_npt,
    denoised_data_keys,
    integrated_data_keys,
    summary_data_keys,
    symmetry_data_keys,
)

if TYPE_CHECKING:
    from ..denoise.live import LiveDenoiser, ServedFrame
    from ..geometry import DetectorGeometry

__all__ = ["MAX_LIVE_BATCH", "START_KEYS", "DerivedRun", "LiveScan"]

logger = logging.getLogger(__name__)

#: Start-document keys read when the callback was given no geometry.
START_KEYS = {"poni": "pyFAI PONI file path or PONI dict",
              "beam_center": "[row, col] in pixels",
              "mask": "path of a .npy bool array, True on bad pixels"}
#: Most frames a worker that has fallen behind denoises in one call.
MAX_LIVE_BATCH = 8
#: How the derived run's I(q) sigmas are made (its provenance).
_IQ_SIGMA = ("raw: Poisson, each pixel's variance its denoised value (the counts around it, "
             "a 0.7 px Gaussian, for a frame passed through raw); "
             "denoised: calibrated per q block on held-out binomial splits of the warm-up "
             "frames, once per serving mode (integrate.heldout); where the denoised I(q) is "
             "worse than raw beyond the check's noise it falls back to raw "
             "(<field>_iq_fallback), see the summary's iq_check")


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("bluesky-symdenoise", "torch", "pyFAI", "numpy", "event-model", "bluesky"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _load_mask(value: Any) -> np.ndarray:
    if isinstance(value, str | Path):
        return np.load(Path(value)).astype(bool)
    return np.asarray(value).astype(bool)


def _new_engine(options: LiveOptions, raw_start: Mapping[str, Any] | None = None,
                warn: Callable[[str], None] | None = None,
                pedestal: float | None = None) -> LiveDenoiser:
    """The scan's engine; an integrating detector's noise model comes from the plugin's
    options, else from the raw start document's ``detector_noise`` key. Frames
    dark-subtracted upstream (bluesky-darkframes, ``pedestal`` not None) are an
    integrating detector's whose offset is the pedestal, unless the user gave one."""
    from ..denoise.detector_noise import DetectorNoise
    from ..denoise.live import LiveDenoiser  # torch: imported with the first scan's engine

    config, asked = options.denoise, options.asked
    stated = (raw_start or {}).get("detector_noise")
    if stated is not None and "detector" not in asked:
        try:
            config = config.model_copy(update={"detector": DetectorNoise.model_validate(
                stated)})
            asked = (*asked, "detector")
        except Exception as exc:  # noqa: BLE001 - user metadata: say so, count photons
            if warn is not None:
                warn(f"start['detector_noise'] ignored ({exc}): frames taken as photon "
                     "counts")
    detector = config.detector
    if pedestal is not None and not (detector.integrating and detector.offset):
        config = config.model_copy(update={"detector": detector.model_copy(
            update={"kind": "integrating", "offset": pedestal})})
        asked = (*dict.fromkeys((*asked, "detector")),)
        if warn is not None and not detector.integrating:
            warn(f"frames dark-subtracted upstream (bluesky-darkframes, pedestal "
                 f"{pedestal:g}): taken as an integrating detector's ADU")
    return LiveDenoiser(config, asked=asked, budget_s=options.budget_s,
                        min_training_steps=options.min_training_steps)


@dataclass(frozen=True)
class _Integration:
    """How the derived run's frames are integrated (only with a geometry): I(q) in ``npt``
    bins over the full ring and the optional ``sector``, and the cake's bins if asked."""

    geometry: DetectorGeometry
    npt: int
    sector: tuple[float, float] | None
    cake_bins: tuple[int, int] | None


class DerivedRun:
    """What exists only from a scan's warm-up on: the engine serving its frames, the
    publisher of its derived run, how its frames are integrated and the fine-tuning thread.

    Parameters
    ----------
    engine
        The engine, after its warm-up (or built without frames, for an empty derived run).
    publisher
        The derived run's publisher; its start document is out.
    field
        The data key of the frames denoised.
    integration
        How frames are integrated; None: no geometry, so no ``integrated`` or ``cake``
        stream.
    """

    def __init__(self, engine: LiveDenoiser, publisher: DerivedRunPublisher, field: str,
                 integration: _Integration | None = None) -> None:
        self.engine = engine
        self.publisher = publisher
        self.field = field
        self.integration = integration
        self.cancel = threading.Event()
        self.trainer: threading.Thread | None = None
        #: Frames taken but not yet served (see :meth:`LiveScan.serve_pending`):
        #: ``(seq_num, frame, received)``.
        self.pending: list[tuple[int, np.ndarray, float]] = []


class LiveScan:
    """The worker-thread state of one raw run and its derived run.

    Until the warm-up it holds the first frames (:attr:`held`); the warm-up builds
    :attr:`derived`, everything the derived run needs from then on.

    Parameters
    ----------
    raw_start
        The raw run's start document (a deep copy, never changed).
    options
        The plugin's settings.
    emit
        Where the derived documents go.
    """

    def __init__(self, raw_start: RunStart, options: LiveOptions, emit: Emit) -> None:
        self.raw_start = raw_start
        self.options = options
        self._emit = emit
        #: Why processing failed (a document, publishing): the derived stop is then
        #: ``fail`` with this reason, whatever the raw exit status (the engine's own
        #: failures, training or denoising, count too).
        self.failure: str | None = None
        self.source = FrameSource([options.field] if options.field else None)
        self.field: str | None = options.field
        #: The frames' shape, from the first frame taken.
        self.shape: tuple[int, int] | None = None
        self.warnings: list[str] = []
        self.counts: collections.Counter = collections.Counter()
        #: Frames held for the warm-up: ``(seq_num, frame, received)``.
        self.held: list[tuple[int, np.ndarray, float]] = []
        #: The derived run, from the warm-up on (None before).
        self.derived: DerivedRun | None = None
        #: How many batches of each size were served (a worker behind serves larger ones).
        self.batches: collections.Counter = collections.Counter()
        #: Frames waiting behind the document being handled (the worker's queue).
        self._backlog = 0
        self.latencies: list[float] = []
        self.stopped = False
        self._streamed: dict[str, set[str]] = {}
        #: Dark frames of the run, and which frames were dark-subtracted upstream.
        self.darks = DarkFrames()
        stated = raw_start.get("detector_noise")
        stated = stated if isinstance(stated, dict) else {}
        detector = options.denoise.detector
        #: Whether the plugin subtracts the run's dark frames: an integrating detector's
        #: frames whose offset nobody gave (a given offset is the user's dark model).
        self.subtract_darks = ((detector.integrating and not detector.offset)
                               or ("detector" not in options.asked
                                   and stated.get("kind") == "integrating"
                                   and not stated.get("offset")))

    # -- what the engine decided -------------------------------------------------------------
    @property
    def method(self) -> str:
        """The method serving the run (``"none"`` before the warm-up)."""
        return self.derived.engine.method if self.derived is not None else "none"

    def status(self) -> dict[str, Any]:
        """Method, which denoiser serves frames now, counts: a snapshot for a status line."""
        engine = self.derived.engine if self.derived is not None else None
        return {"method": self.method,
                "network_ready": bool(engine is not None and engine.network_ready),
                "network": engine.network_note if engine is not None else "not trained yet",
                "published": int(self.counts["published"]),
                "dropped": int(self.counts["dropped"])}

    # -- documents ---------------------------------------------------------------------------
    def handle(self, name: str, doc: dict[str, Any], received: float, *,
               backlog: int = 0) -> None:
        """Process one raw document.

        ``backlog`` is how many frames wait behind this document: frames are batched while
        it is above 0 (see :meth:`serve_pending`).
        """
        self._backlog = backlog
        if name not in FRAME_DOCUMENTS:
            self.serve_pending()
        if name == "descriptor":
            list(self.source.frames(name, doc))
            self.darks.descriptor(doc)
            self._pick_field()
            descriptor = cast(EventDescriptor, doc)
            # Keys whose frames come in StreamDatum documents, never in events.
            self._streamed[descriptor["uid"]] = {
                k for k, v in descriptor.get("data_keys", {}).items()
                if str(v.get("external", "")).startswith("STREAM:")}
            return
        if name == "stop":
            self.end_run(cast(RunStop, doc))
            return
        try:
            frames = list(self.source.frames(name, doc))
        except Exception as exc:  # noqa: BLE001 - a bad reference must not end the run
            self.counts["unreadable"] += 1
            self._warn(f"could not read a frame from a {name} document: {exc}")
            return
        taken = 0
        descriptor_uid = doc.get("descriptor")
        for key, seq_num, frame, _timestamp in frames:
            if key != self.field:
                continue
            taken += 1
            if self.darks.is_dark(descriptor_uid):  # a dark frame, not one of the scan's
                self.darks.keep(frame)
            else:
                self.take(seq_num, self.darks.light(descriptor_uid, frame,
                                                    subtract=self.subtract_darks), received)
        if backlog == 0:
            self.serve_pending()
        if name == "event" and not taken:
            descriptor_uid = doc["descriptor"]
            if (self.field in self.source.keys_for(descriptor_uid)
                    and self.field not in self._streamed.get(descriptor_uid, ())):
                self.counts["unreadable"] += 1
                self._warn(f"an event (seq_num {doc.get('seq_num')}) carries no "
                           f"{self.field!r}")

    def _pick_field(self) -> None:
        keys = self.source.all_keys
        if self.field is None and keys:
            self.field = sorted(keys)[0]
            others = sorted(k for k in keys if k != self.field)
            if others:
                self._warn(f"several 2-D fields {sorted(keys)}: denoising {self.field!r} "
                           "only; pass field= to choose (one SymDenoise per field)")

    def _warn(self, message: str | None) -> None:
        if message and message not in self.warnings:
            logger.warning("symdenoise: %s", message)
            self.warnings.append(message)

    # -- warm-up -----------------------------------------------------------------------------
    def take(self, seq_num: int, frame: np.ndarray, received: float) -> None:
        """Take one frame of the field: held until the warm-up, then queued for serving."""
        self.counts["received"] += 1
        if self.shape is None:
            self.shape = (frame.shape[0], frame.shape[1])
        if self.derived is None:
            self.held.append((seq_num, frame, received))
            if len(self.held) >= self.options.warmup_frames:
                self._warm_up()
            return
        self._serve(self.derived, seq_num, frame, received)

    def end_warm_up(self) -> None:
        """Analyse now with the frames held so far (``SymDenoise.flush``)."""
        if self.derived is None and self.held and not self.stopped:
            self._warm_up()
        self.serve_pending()

    def _resolve_geometry(self, shape: tuple[int, int], notes: list[str]
                          ) -> tuple[DetectorGeometry | None, np.ndarray | None, str]:
        """The geometry, the user's mask and where the geometry came from: from the plugin's
        arguments, else the raw start document's :data:`START_KEYS`. A PONI that names a
        detector of pyFAI's registry (``Detector: Pilatus1M``) adds its module gaps to the
        mask, and ``notes`` say how many."""
        from ..denoise.engine import scan_geometry
        from ..geometry import with_detector_mask

        opts = self.options
        # User metadata: any JSON value; scan_geometry and _load_mask check it.
        start: Mapping[str, Any] = self.raw_start
        mask = opts.mask if opts.mask is not None else start.get("mask")
        user_mask = None
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
                    return None, None, "none"
                user_mask = mask
                notes.append("mask from " + ("arguments" if opts.mask is not None
                                             else "start['mask']"))
        poni, center, source = opts.poni, opts.center, "arguments"
        if poni is None and center is None:
            poni, center, source = start.get("poni"), start.get("beam_center"), "start document"
        try:
            geometry = scan_geometry(shape, center=center, poni=poni)
        except Exception as exc:  # noqa: BLE001
            self._warn(f"geometry unusable ({exc}): symmetry-free denoising, no I(q)")
            geometry = None
        if geometry is not None:
            try:
                user_mask, gap_note = with_detector_mask(geometry, user_mask)
            except Exception as exc:  # noqa: BLE001 - a mask of another shape: warned
                self._warn(f"module gaps not masked: {exc}")
            else:
                if gap_note is not None:
                    notes.append(gap_note)
            return geometry, user_mask, (
                f"PONI from {source}" if poni is not None else
                f"beam centre from {source}; pixel size, distance and wavelength are defaults "
                "(pass poni= for a true q)")
        if not any("geometry" in w for w in self.warnings):
            self._warn("no geometry (poni=, center= or start keys "
                       f"{sorted(START_KEYS)}): symmetry-free denoising, no I(q)")
        return None, user_mask, "none"

    def _warm_up(self) -> DerivedRun:
        """Let the engine analyse the held frames and load what serves them until the
        network is ready, emit the derived start and streams, start the fine-tuning, serve
        the held frames."""
        field, shape = self.field, self.shape
        if field is None or shape is None:
            raise RuntimeError("warm-up before any frame of a 2-D field was taken")
        notes: list[str] = []
        geometry, user_mask, geometry_source = self._resolve_geometry(shape, notes)
        if (self.darks.darks_seen and not self.subtract_darks
                and self.darks.pedestal is None):
            self._warn("the run has dark frames, not subtracted: the detector was not "
                       "declared integrating (detector='integrating'), or its offset was "
                       "given")
        engine = _new_engine(self.options, self.raw_start, self._warn, self.darks.pedestal)
        self._warn(engine.warm_up(
            [frame for _, frame, _ in self.held], shape=shape, mask=user_mask,
            center=geometry.center if geometry is not None else None))
        # Before the start document: its provenance says what serves the interim frames.
        self._warn(engine.start_interim())
        publisher = DerivedRunPublisher(self._emit, self.raw_start, self._provenance(
            engine, notes, geometry=geometry, geometry_source=geometry_source))
        integration = None
        if geometry is not None:
            cake = self.options.cake
            npt = self.options.npt or default_npt(shape)
            integration = _Integration(
                geometry, npt, self.options.sector,
                None if not cake else cake if isinstance(cake, tuple)
                else (npt, CAKE_AZIMUTHAL_BINS))
        self.derived = run = DerivedRun(engine, publisher, field, integration)
        self._declare_streams(run, shape)
        # The held-out I(q) check before the fine-tuning starts: the two never hold their
        # memory at once (the memory budget, :mod:`..denoise.memory`).
        self._warn(engine.check_iq(engine.serving))
        if engine.wants_training:
            run.trainer = threading.Thread(target=self._train, args=(run,),
                                           name="symdenoise-trainer", daemon=True)
            run.trainer.start()
        held, self.held = self.held, []
        for seq_num, frame, received in held:
            self._serve(run, seq_num, frame, received)
        return run

    @staticmethod
    def _train(run: DerivedRun) -> None:
        lower_thread_priority()
        run.engine.fine_tune(run.cancel)

    def _provenance(self, engine: LiveDenoiser, notes: list[str], *,
                    geometry: DetectorGeometry | None = None,
                    geometry_source: str = "none") -> dict[str, Any]:
        opts = self.options
        record: dict[str, Any] = {
            "field": self.field, "method": engine.method, "reason": engine.reason,
            "interim_mode": engine.interim_mode,
            "budget_s": opts.budget_s, "warmup_frames": opts.warmup_frames,
            "geometry": geometry.as_metadata() if geometry else None,
            "geometry_source": geometry_source, "warnings": list(self.warnings),
            "notes": notes, "versions": _versions(), "iq_sigma": _IQ_SIGMA,
            "darks": self.darks.summary(),
        }
        engine_record = engine.provenance()
        if engine_record is not None:
            record["engine"] = engine_record
        return json.loads(json.dumps(record, default=str))

    def _declare_streams(self, run: DerivedRun, shape: tuple[int, int]) -> None:
        from .derived_files import frame_goes_to_file, open_derived_file

        publisher, field, integration = run.publisher, run.field, run.integration
        units = "ADU" if run.engine.noise.integrating else "counts"
        frames_file, where = None, ""
        if frame_goes_to_file(shape, self.options.inline_limit_bytes):
            # The raw frames' files, beside which the derived file may go (FrameSource
            # keeps every Resource path and StreamResource seen).
            raw_references = [path for _, path in self.source._resources.values()] + [
                str(doc.get("uri", "")) for doc in self.source._stream_resources.values()]
            try:
                frames_file, where = open_derived_file(
                    self.options.derived_files, raw_references, publisher.start["uid"],
                    shape, units)
                logger.info("symdenoise: denoised frames of run %s go to %s (%s)",
                            publisher.start["uid"][:8], frames_file.path, where)
            except Exception as exc:  # noqa: BLE001 - inline frames rather than none
                self._warn(f"denoised frames published inline: their file could not be "
                           f"created ({exc})")
        keys = denoised_data_keys(field, shape, units=units,
                                  file_uri=None if frames_file is None else frames_file.uri,
                                  file_directory_reason=where)
        try:
            publisher.add_stream("denoised", keys, object_keys={"symdenoise": list(keys)})
            if frames_file is not None:
                publisher.reference_file("denoised", f"{field}_denoised", frames_file)
        except BaseException:
            if frames_file is not None:  # never left open
                frames_file.close()
            raise
        self._publish_symmetry(run)
        if integration is not None:
            sector = integration.sector
            keys = integrated_data_keys(field, integration.npt, with_sector=sector is not None,
                                        units=units)
            publisher.add_stream("integrated", keys, object_keys={"symdenoise": sorted(keys)})
            run.engine.set_iq_integration(integration.geometry, integration.npt,
                                          [None] if sector is None else [None, sector])
            if integration.cake_bins is not None:
                keys = cake_data_keys(field, *integration.cake_bins, units=units)
                publisher.add_stream("cake", keys, object_keys={"symdenoise": sorted(keys)})

    @staticmethod
    def _publish_symmetry(run: DerivedRun) -> None:
        """The ``symmetry`` stream: once per scan, at warm-up, what the engine found and used
        (a live view outlines the map; a catalog keeps it with the derived frames)."""
        report = run.engine.symmetry_report()
        if report is None:
            return
        usage, violation = report
        keys = symmetry_data_keys(None if violation is None else violation.shape)
        run.publisher.add_stream("symmetry", keys, object_keys={"symdenoise": sorted(keys)})
        values: dict[str, Any] = {"symmetry_report": json.dumps(usage)}
        if violation is not None:
            values["symmetry_violation"] = violation
        run.publisher.add_event("symmetry", values)

    # -- serving -----------------------------------------------------------------------------
    def _serve(self, run: DerivedRun, seq_num: int, frame: np.ndarray,
               received: float) -> None:
        """Take a frame for the next batch (see :meth:`serve_pending`)."""
        run.pending.append((seq_num, frame, received))
        if len(run.pending) >= MAX_LIVE_BATCH:
            self.serve_pending()

    def serve_pending(self) -> None:
        """Let the engine denoise the frames taken since the last call, as one batch, and
        publish them.

        The worker calls this when no other frame is waiting, so one frame is served at once
        with full test-time averaging; a worker that has fallen behind serves up to
        :data:`MAX_LIVE_BATCH` frames in one call, one flip each, to catch up.
        """
        run = self.derived
        if run is None:  # before the warm-up frames are held, not served
            return
        batch, run.pending = run.pending, []
        if not batch:
            return
        # Live, a worker far behind passes frames raw rather than let the queue drop them;
        # lossless (replay) it never does: nothing is lost by waiting.
        keep_pace = (not self.options.lossless
                     and self._backlog >= max(2, self.options.max_queue // 2))
        served = run.engine.serve([frame for _, frame, _ in batch],
                                  behind=self._backlog if keep_pace else 0)
        valid = [s for s in served if not s.skipped]
        self.batches[len(valid)] += 1
        self.counts["invalid"] += len(served) - len(valid)
        for (seq_num, _, received), frame in zip(batch, served, strict=True):
            if frame.failure is not None:
                self.counts["failed"] += 1
                self.failure = self.failure or frame.failure
            try:
                self._publish(run, seq_num, received, frame)
            except Exception as exc:  # noqa: BLE001 - the rest of the batch goes on
                logger.exception("symdenoise: publishing frame %s failed", seq_num)
                self.failure = self.failure or f"publishing frame {seq_num} failed: {exc!r}"

    def _publish(self, run: DerivedRun, seq_num: int, received: float,
                 frame: ServedFrame) -> None:
        key = run.field
        self.counts[f"by:{frame.denoised_by}"] += 1
        noise = run.engine.noise  # an integrating detector's frames go back to its units
        denoised = (noise.to_detector(frame.denoised, keep=None if frame.bad is None
                                      else ~frame.bad) if noise.integrating
                    else frame.denoised)
        run.publisher.add_event("denoised", {
            f"{key}_denoised": denoised, f"{key}_denoised_by": frame.denoised_by,
            f"{key}_flags": "; ".join(frame.flags), "raw_seq_num": int(seq_num),
            "frames_dropped": int(self.counts["dropped"])})
        if run.integration is not None:
            self._integrate(run, run.integration, seq_num, frame)
            if run.integration.cake_bins is not None:
                self._integrate_cake(run, run.integration.geometry, run.integration.cake_bins,
                                     seq_num, frame)
        self.counts["published"] += 1
        self.latencies.append(time.perf_counter() - received)

    def _integrate(self, run: DerivedRun, integration: _Integration, seq_num: int,
                   frame: ServedFrame) -> None:
        key, npt, sector = run.field, integration.npt, integration.sector
        nan = np.full(npt, np.nan)
        prefixes = ("iq",) if sector is None else ("iq", "iq_sector")
        values: dict[str, Any] = {"q": nan}
        for prefix in prefixes:
            for which in ("raw", "raw_sigma", "denoised", "denoised_sigma"):
                values[f"{key}_{prefix}_{which}"] = nan
            values[f"{key}_{prefix}_fallback"] = np.zeros(npt, bool)
        counts, bad = frame.counts, frame.bad
        if counts is not None and bad is not None:  # not a skipped frame
            try:
                ai = integrator_for(integration.geometry, bad)
                rate = np.maximum(frame.denoised, 0)
                # Raw's own sigma is Poisson at the denoised rate (den.sigma below) where
                # the frame was denoised: the counts around a pixel are a noisy rate at low
                # counts (a bin that drew few counts gets a small sigma, and the 1σ coverage
                # falls to ~0.5 at 0.1 c/px).
                rate_known = _rate_known(frame)
                for profile, (prefix, sec) in enumerate(zip(prefixes, (None, sector),
                                                            strict=False)):
                    raw = ai.integrate(counts, npt=npt, sector=sec,
                                       error_model=None if rate_known else "poisson")
                    # Raw's error at the denoised rate; the check scales it (IqCheck.apply).
                    den = ai.integrate(frame.denoised, npt=npt, sector=sec, variance=rate)
                    if rate_known:
                        raw = dataclasses.replace(raw, sigma=den.sigma)
                    intensity, sigma, fallback = run.engine.published_iq(
                        frame.denoised_by, profile, raw, den)
                    raw_intensity, raw_sigma = raw.intensity, raw.sigma
                    noise = run.engine.noise
                    if noise.integrating:  # back to ADU: I = g·I' + I(offset - g·r²)
                        level = ai.integrate(np.full(counts.shape, noise.offset - noise.gain
                                                     * noise.shift, np.float32),
                                             npt=npt, sector=sec).intensity
                        raw_intensity = noise.gain * raw_intensity + level
                        intensity = noise.gain * intensity + level
                        raw_sigma = None if raw_sigma is None else noise.gain * raw_sigma
                        sigma = noise.gain * sigma
                    values.update({"q": raw.q_nm if profile == 0 else values["q"],
                                   f"{key}_{prefix}_raw": raw_intensity,
                                   f"{key}_{prefix}_raw_sigma": raw_sigma,
                                   f"{key}_{prefix}_denoised": intensity,
                                   f"{key}_{prefix}_denoised_sigma": sigma,
                                   f"{key}_{prefix}_fallback": fallback})
            except Exception as exc:  # noqa: BLE001
                self._warn(f"integration failed: {exc}")
        values["raw_seq_num"] = int(seq_num)
        run.publisher.add_event("integrated", values)

    def _integrate_cake(self, run: DerivedRun, geometry: DetectorGeometry,
                        bins: tuple[int, int], seq_num: int, frame: ServedFrame) -> None:
        key, (npt_rad, npt_azim) = run.field, bins
        values: dict[str, Any] = {
            "q": np.full(npt_rad, np.nan), "chi": np.full(npt_azim, np.nan),
            f"{key}_cake_raw": np.full((npt_azim, npt_rad), np.nan, np.float32),
            f"{key}_cake_denoised": np.full((npt_azim, npt_rad), np.nan, np.float32)}
        counts, bad = frame.counts, frame.bad
        if counts is not None and bad is not None:  # not a skipped frame
            try:
                ai = integrator_for(geometry, bad)
                raw = ai.cake(counts, npt_rad, npt_azim)
                den = ai.cake(frame.denoised, npt_rad, npt_azim)
                raw_cake, den_cake = raw.intensity, den.intensity
                noise = run.engine.noise
                if noise.integrating:  # back to ADU, as the I(q)
                    level = ai.cake(np.full(counts.shape, noise.offset - noise.gain
                                            * noise.shift, np.float32),
                                    npt_rad, npt_azim).intensity
                    raw_cake = noise.gain * raw_cake + level
                    den_cake = noise.gain * den_cake + level
                values.update({"q": raw.q_nm, "chi": raw.chi_deg,
                               f"{key}_cake_raw": raw_cake.astype(np.float32),
                               f"{key}_cake_denoised": den_cake.astype(np.float32)})
            except Exception as exc:  # noqa: BLE001
                self._warn(f"cake integration failed: {exc}")
        values["raw_seq_num"] = int(seq_num)
        run.publisher.add_event("cake", values)

    # -- end ---------------------------------------------------------------------------------
    def end_run(self, raw_stop: RunStop | None, *, reason: str | None = None) -> None:
        """End the derived run: cancel the fine-tuning, emit the summary and the stop
        (which mirrors the raw exit status; ``raw_stop`` None: the raw run never stopped,
        ``reason`` says why)."""
        if self.stopped:
            return
        self.stopped = True
        run = self.derived
        if run is None:
            field = self.field
            if self.held:
                run = self._warm_up()
            elif not self.source.all_keys or field is None:
                # The run never declared a 2-D field (a scalar scan, or one that failed
                # before its first reading): there is nothing to derive, so no derived run.
                self.source.close()
                return
            else:
                # A 2-D field was declared but no frame could be read: still publish a
                # linked, empty derived run, so the failure is on record.
                self._warn("no frames of a 2-D field arrived")
                engine = _new_engine(self.options)
                publisher = DerivedRunPublisher(self._emit, self.raw_start,
                                                self._provenance(engine, []))
                self.derived = run = DerivedRun(engine, publisher, field)
        self.serve_pending()
        run.cancel.set()
        if run.trainer is not None:
            run.trainer.join()
        summary = self.summary()
        values = {f"frames_{name}": summary[name] for name in SUMMARY_COUNTS}
        values["provenance"] = json.dumps(summary, default=str)
        run.publisher.add_stream("summary", summary_data_keys())
        run.publisher.add_event("summary", values)
        if raw_stop:
            exit_status, raw_reason = raw_stop.get("exit_status", "fail"), raw_stop.get(
                "reason", "")
        else:
            exit_status, raw_reason = "fail", ""
        text = raw_reason if reason is None else reason
        failure = self.failure or run.engine.failure
        if failure:
            exit_status = "fail"
            text = (text + "; " if text else "") + f"symdenoise: {failure}"
        if summary["dropped"]:
            text = (text + "; " if text else "") + (
                f"symdenoise: {summary['dropped']} frames dropped (queue full)")
        run.publisher.finish(exit_status=exit_status, reason=text)
        self.source.close()

    def summary(self) -> dict[str, Any]:
        """JSON-safe record of the run: counters, how frames were served, the engine's
        record (method, network, I(q) checks, training, model, symmetry), latencies."""
        if self.derived is None:
            raise RuntimeError("summary() before the derived run exists (warm-up)")
        record: dict[str, Any] = {k: int(self.counts[k]) for k in
                                  ("received", "published", "dropped", "invalid",
                                   "unreadable", "failed")}
        record["served_by"] = {k[3:]: int(v) for k, v in self.counts.items()
                               if k.startswith("by:")}
        engine = self.derived.engine.summary()
        record["method"], record["network"] = engine.pop("method"), engine.pop("network")
        record["batches"] = {str(size): n for size, n in sorted(self.batches.items())}
        record["iq_check"] = engine.pop("iq_check")
        if "iq_check_seconds" in engine:
            record["iq_check_seconds"] = engine.pop("iq_check_seconds")
        record["warnings"] = list(self.warnings)
        record["darks"] = self.darks.summary()
        record.update(engine)
        if self.latencies:
            record["latency_s"] = {"p50": float(np.percentile(self.latencies, 50)),
                                   "p95": float(np.percentile(self.latencies, 95))}
        return json.loads(json.dumps(record, default=str))


def _rate_known(frame: ServedFrame) -> bool:
    """Whether a served frame's denoised values estimate each pixel's Poisson rate (not a
    raw pass-through or a failure's copy of the counts)."""
    return frame.failure is None and not frame.denoised_by.startswith("none")
