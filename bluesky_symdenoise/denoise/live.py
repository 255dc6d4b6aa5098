"""The engine for a scan whose frames arrive one by one (the live plugin, replay, the bus
worker): every denoising rule of the live path, behind a small incremental interface.

:class:`LiveDenoiser` wraps :class:`~.engine.ScanDenoiser`:

1. :meth:`~LiveDenoiser.warm_up` analyses the first frames (bad pixels, beam centre, local
   symmetry) and chooses the method; :meth:`~LiveDenoiser.start_interim` loads the
   pre-trained base model that serves frames until the per-scan model is ready.
2. :meth:`~LiveDenoiser.fine_tune` fits the per-scan network (on a thread of the caller's;
   a :class:`threading.Event` cancels it) and switches it on only if it beats the interim
   mode on a held-out binomial split of a warm-up frame.
3. :meth:`~LiveDenoiser.serve` denoises a batch of new frames: per-frame bad pixels, the
   mode serving now, the total counts kept; it returns each frame with its flags.
4. :meth:`~LiveDenoiser.check_iq` calibrates the denoised I(q) of a serving mode on held-out
   splits of the warm-up frames; :meth:`~LiveDenoiser.published_iq` applies it.

The caller keeps the documents; nothing here knows about them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..geometry import DetectorGeometry
from ..integrate.azimuthal import IntegrationResult, integrator_for
from ..integrate.heldout import IqCheck
from .config import DenoiseConfig
from .detector_noise import NoiseCalibration
from .device import select_device, warm_up
from .engine import (
    ScanAnalysis,
    ScanDenoiser,
    classical_engine,
    frame_targets,
    held_out_analysis,
    held_spots,
    next_frame_split,
    scale_to_raw_counts,
    symmetry_usage,
    thinned_neighbours,
    violation_map,
)
from .memory import INFERENCE_SHARE, MemoryGuard, default_memory_budget_gb
from .models import load_base_model, model_hash
from .orientation import POOL_FRAMES, RawHarmonics
from .preprocess import unusable_pixels
from .selection import binomial_split, mean_squared_error, poisson_deviance
from .symmetry import TAPS_KEPT_UP_TO
from .training import SAMPLER_BYTES_PER_PIXEL, sampler_threads

__all__ = ["LIVE_CPU_WIDTH", "NETWORK_METHODS", "LiveDenoiser", "ServedFrame",
           "live_cpu_settings"]

logger = logging.getLogger(__name__)

#: Methods that fine-tune a network per scan (served by an interim mode meanwhile).
NETWORK_METHODS = ("symmetry", "thinning", "noise2sr")
#: Width of the network the live plugin fine-tunes on a CPU (see :func:`live_cpu_settings`).
LIVE_CPU_WIDTH = 12
#: ``denoised_by`` of frames passed through raw because the scan could not be analysed.
PASSTHROUGH = "none (passthrough)"
#: ``denoised_by`` of frames passed through raw because the memory budget was reached.
PASSTHROUGH_MEMORY = "none (memory budget)"
#: ``denoised_by`` of frames passed through raw so that a worker behind catches up.
PASSTHROUGH_BEHIND = "none (keeping pace)"
#: Transient memory of the stages, measured as the peak RSS over the scan's held state on
#: Pilatus 1M and Eiger2 4M frames (``docs/real_detectors.md``); the memory guard claims
#: it before each stage (:meth:`~.memory.MemoryGuard.claim`). Serving through the network:
#: the tiles' activations (a share of the budget, :func:`~.memory.inference_tile`), plus
#: bytes per pixel of the first frame of a batch (channels, outputs, the hold to the raw
#: counts) and of each further one.
_SERVE_BYTES_PER_PIXEL = 170
_SERVE_MORE_BYTES_PER_PIXEL = 100
#: Serving through the classical fast mode (one frame at a time), bytes per pixel.
_SERVE_CLASSICAL_BYTES_PER_PIXEL = 120
#: Fine-tuning: bytes, plus bytes per pixel (full-frame targets and channels).
_TRAINING_BYTES = 200 << 20
_TRAINING_BYTES_PER_PIXEL = 240
#: The warm-up analysis's peak (4 frames: bad pixels, centre, symmetry and isotropy
#: tests, the holds to the raw counts): on a detector up to ``TAPS_KEPT_UP_TO`` pixels,
#: which keeps its ring profiles' taps and works in float64 (Pilatus 1M), and above it.
_ANALYSIS_BYTES_PER_PIXEL = {False: 620, True: 280}
#: The held-out I(q) check's (a frame's halves denoised, then integrated full ring and
#: sector): classical (False) and network (True).
_IQ_CHECK_BYTES_PER_PIXEL = {False: 260, True: 400}
#: pyFAI's integration engines for the frames' I(q) (full ring and sector): held, and the
#: transient of their build.
_INTEGRATION_BYTES_PER_PIXEL = 190
#: The held-out I(q) check splits up to 4 warm-up frames, fewer on a detector above
#: ``_IQ_CHECK_PIXELS / 4`` pixels: frames checked x pixels <= this, at least one frame.
_IQ_CHECK_PIXELS = 1 << 21


def live_cpu_settings(asked: dict[str, Any]) -> dict[str, Any]:
    """Denoiser settings the live plugin uses on a CPU, where the caller did not set them.

    To keep pace with the detector (``bench/throughput.py`` measures it) a frame gets one
    forward pass, not an average over flips (twice the time for a small gain), through the
    narrower shipped network (:data:`LIVE_CPU_WIDTH`: less forward time than the default
    width, a little lower PSNR on some scenes), when its pre-trained weights are installed.
    A GPU keeps the defaults.
    """
    settings: dict[str, Any] = {}
    if "test_time_flips" not in asked:
        settings["test_time_flips"] = 1
    if ("width" not in asked and asked.get("use_pretrained", True)
            and load_base_model(LIVE_CPU_WIDTH, asked.get("depth", 3))[0] is not None):
        settings["width"] = LIVE_CPU_WIDTH
    return settings


@dataclass(frozen=True)
class ServedFrame:
    """One frame as :meth:`LiveDenoiser.serve` returns it.

    Attributes
    ----------
    denoised
        Float32 expected counts, total counts kept, 0 on bad pixels; zeros for a skipped
        frame.
    denoised_by
        Which mode made it (``"network:symmetry"``, ``"classical-nlm (interim)"``, ...).
    flags
        What happened to this frame (pixels masked, skipped, denoising failed).
    counts
        The raw counts with the frame's bad pixels zeroed; None for a skipped frame.
    bad
        The frame's bad pixels; None for a skipped frame.
    failure
        Why denoising failed (the raw counts were copied), or None.
    """

    denoised: np.ndarray
    denoised_by: str
    flags: tuple[str, ...]
    counts: np.ndarray | None
    bad: np.ndarray | None
    failure: str | None = None

    @property
    def skipped(self) -> bool:
        return self.counts is None


class LiveDenoiser:
    """The engine's incremental interface for one live scan.

    Parameters
    ----------
    config
        The denoiser's configuration (its ``method`` may be ``"auto"``); on a CPU the live
        settings (:func:`live_cpu_settings`) fill what ``asked`` does not set.
    asked
        The configuration fields the user set (the rest are defaults).
    budget_s
        Seconds of fine-tuning; None: the configuration's default for the device; 0:
        the classical fast mode only.
    min_training_steps
        Fewer fine-tuning steps than this within the budget: the network is not used.

    Attributes
    ----------
    method, reason
        The method serving the scan and why (``"none"`` before :meth:`warm_up`).
    network_ready, network_note
        Whether the fine-tuned network serves frames now, and why (not).
    failure
        The first failure of fine-tuning (the derived run then ends with ``fail``).
    """

    def __init__(self, config: DenoiseConfig, *, asked: Sequence[str] = (),
                 budget_s: float | None = None, min_training_steps: int = 10) -> None:
        self.config = config
        self.asked = frozenset(asked)
        self.budget_s = budget_s
        self.min_training_steps = min_training_steps
        self.denoiser: ScanDenoiser | None = None
        #: Pre-trained base model serving frames while the per-scan model trains.
        self.interim: ScanDenoiser | None = None
        self.analysis: ScanAnalysis | None = None
        #: The noise model the warm-up found; kept when the analysis is let go for memory
        #: (raw frames passed through are still an integrating detector's ADU).
        self._calibration: NoiseCalibration | None = None
        self.user_mask: np.ndarray | None = None
        self.shape: tuple[int, int] | None = None
        self.method = "none"
        self.reason = ""
        self.network_ready = False
        self.network_note = "not trained yet"
        self.failure: str | None = None
        #: Held-out I(q) checks (full ring, then each sector) per serving mode.
        self.iq_checks: dict[str, list[IqCheck]] = {}
        self.iq_seconds = 0.0
        self._iq_setup: tuple[DetectorGeometry, int, list] | None = None
        self._previous: np.ndarray | None = None
        #: The raw harmonics of the frames served, latest first, that the anisotropy hold
        #: pools (:mod:`.orientation`).
        self._harmonics: deque[RawHarmonics | None] = deque(maxlen=POOL_FRAMES)
        # A GPU's context and libraries are the process's, not the scan's: loaded before
        # the guard's baseline (a no-op on a CPU and after the first scan).
        try:
            warm_up(select_device(config.device))
        except ValueError:  # CUDA asked for and absent: the scan's analysis says so
            pass
        #: The scan's memory budget, against the resident memory at the scan's start.
        self.guard = MemoryGuard(config.max_memory_gb or default_memory_budget_gb())

    def _analysed(self) -> tuple[ScanDenoiser, ScanAnalysis]:
        """The scan's denoiser and analysis; a network or classical method is chosen only
        once both exist (a failed analysis passes frames through)."""
        if self.denoiser is None or self.analysis is None:
            raise RuntimeError(f"method {self.method!r}: the scan was not analysed "
                               "(warm_up() first; it failed or was not called)")
        return self.denoiser, self.analysis

    # -- warm-up -----------------------------------------------------------------------------
    def _new_denoiser(self) -> ScanDenoiser:
        """A :class:`ScanDenoiser` of the configuration, with the live CPU settings where
        the user set nothing. Its own method is ``auto``: the live rules
        (:meth:`_choose_method`) apply the user's."""
        asked = self.config.model_dump(include=set(self.asked) | {"device"})
        settings = self.config.model_dump()
        if select_device(self.config.device).type == "cpu":
            settings.update(live_cpu_settings(asked))
        settings.update(asked, method="auto")
        return ScanDenoiser(**settings)

    def warm_up(self, frames: Sequence[np.ndarray], *, shape: tuple[int, int],
                mask: np.ndarray | None = None,
                center: tuple[float, float] | None = None) -> str | None:
        """Analyse the warm-up frames and choose the method.

        Parameters
        ----------
        frames
            The frames held so far; those not of ``shape`` or not real numbers are left out.
        shape
            The scan's frame shape.
        mask
            The user's bad-pixel mask, or None.
        center
            Beam centre ``(row, col)``, or None (symmetry-free).

        Returns
        -------
        str or None
            A warning when the frames cannot be denoised: they are then passed through raw.
        """
        self.shape, self.user_mask = (shape[0], shape[1]), mask
        lean = shape[0] * shape[1] > TAPS_KEPT_UP_TO
        with self.guard.claim(self._frame_bytes(_ANALYSIS_BYTES_PER_PIXEL[lean])) as over:
            if over is not None:  # the analysis itself would pass the budget
                self.method, self.reason = "passthrough", over
                self.network_note = f"no network: {over}"
                return f"{over}: raw frames passed through"
            warning = self._warm_up(frames, mask, center)
        if warning is not None:
            return warning
        # Room left for the lightest denoising (the classical fast mode), beside what the
        # I(q) of the frames will take (pyFAI's engines, held, and their build) when the
        # scan has a geometry? If not, the analysis is let go and frames pass raw.
        need = self._frame_bytes(_SERVE_CLASSICAL_BYTES_PER_PIXEL + (
            _INTEGRATION_BYTES_PER_PIXEL if center is not None else 0))
        over = self.guard.check(need)
        if over is not None:  # what the analysis holds leaves no room to serve frames
            self.denoiser = self.analysis = None
            self.method, self.reason = "passthrough", over
            self.network_note = f"no network: {over}"
            return f"{over}: raw frames passed through"
        if self.method not in NETWORK_METHODS:
            self.network_note = f"no network: {self.reason}"
        return None

    def _warm_up(self, frames: Sequence[np.ndarray], mask: np.ndarray | None,
                 center: tuple[float, float] | None) -> str | None:
        try:
            self.denoiser = denoiser = self._new_denoiser()
            stack = np.stack([f for f in frames if f.shape == self.shape and _numeric(f)])
            self.analysis = analysis = denoiser.analyse(stack, mask=mask, center=center,
                                                        bad_pixels="mask")
            self._harmonics.clear()  # another analysis: another hold's bands and terms
            self._calibration = analysis.noise
            self.method, self.reason = self._choose_method(denoiser, analysis)
        except Exception as exc:  # noqa: BLE001 - the scan goes on, raw
            self.method, self.reason = "passthrough", f"analysis failed: {exc}"
            return f"frames cannot be denoised ({exc}): raw frames passed through"
        return None

    def _choose_method(self, denoiser: ScanDenoiser, analysis: ScanAnalysis
                       ) -> tuple[str, str]:
        asked = self.config.method
        if asked == "auto":
            if self.budget_s is not None and self.budget_s <= 0:
                return "classical-nlm", "budget 0: classical fast mode only"
            return denoiser.choose_method(analysis, budget_s=None, have_pairs=False)
        if asked == "supervised":
            return "thinning", "supervised needs paired frames: not live"
        return asked, f"method={asked!r} asked for"

    def start_interim(self) -> str | None:
        """Load the pre-trained base model to serve frames until the fine-tuned one is
        ready (methods ``symmetry`` and ``thinning``); returns a warning if it is unusable.
        Without one installed the classical fast mode serves meanwhile."""
        if self.method not in ("symmetry", "thinning"):
            return None
        try:
            interim = self._new_denoiser()
            if interim.use_pretrained():
                self.interim = interim
        except Exception as exc:  # noqa: BLE001
            return f"pre-trained base model unusable ({exc}): classical interim mode"
        return None

    @property
    def wants_training(self) -> bool:
        """Whether :meth:`fine_tune` has work to do for this scan."""
        return self.method in NETWORK_METHODS

    @property
    def interim_mode(self) -> str:
        """What serves frames until the network is ready, in words (for provenance)."""
        if self.interim is not None:
            return "pre-trained base model until the fine-tuned one is ready"
        return "classical-nlm (Anscombe + NLM) until the network is ready"

    @property
    def serving(self) -> str:
        """``denoised_by`` of the frames served now."""
        return self._mode(self.network_ready)

    def _mode(self, network_ready: bool) -> str:
        if self.method == "passthrough":
            return (PASSTHROUGH_MEMORY if self.reason.startswith("memory budget")
                    else PASSTHROUGH)
        if network_ready:
            return f"network:{self.method}"
        if self.interim is not None:
            return "network:base (interim)"
        suffix = " (interim)" if self.method in NETWORK_METHODS else ""
        return f"classical-{classical_engine(self.method)}{suffix}"

    # -- fine-tuning -------------------------------------------------------------------------
    def fine_tune(self, cancel: threading.Event) -> None:
        """Fit the per-scan network within the budget (blocking: run it on a thread), then
        switch it on if it passes the held-out check; ``cancel`` stops it early.

        Never raises: a failure is recorded in :attr:`failure` and :attr:`network_note`, and
        the interim mode keeps serving.
        """
        need = _TRAINING_BYTES + self._frame_bytes(_TRAINING_BYTES_PER_PIXEL)
        # Threads drawing batches ahead (a GPU's) each hold a draw: as many as fit.
        per_thread = self._frame_bytes(SAMPLER_BYTES_PER_PIXEL)
        try:
            threads = sampler_threads(select_device(self.config.device),
                                      self.config.sampler_threads)
        except ValueError:  # CUDA asked for and absent: the training says so
            threads = 0
        while threads > 0 and self.guard.check(need + threads * per_thread) is not None:
            threads -= 1
        with self.guard.claim(need + threads * per_thread) as over:
            if over is not None:
                self.network_note = f"not trained ({over}): interim mode kept"
                return
            trained = self._fine_tune(cancel, threads)
        if not trained:
            return
        # The check serves a held-out frame through the network and through the interim
        # mode: it needs what serving needs, claimed once training has let go of its own.
        with self.guard.claim(self._network_bytes(2)) as over:
            if over is not None:
                self.network_note = f"network not checked ({over}): interim mode kept"
                return
            try:
                passed, note = self._validate_network()
            except Exception as exc:  # noqa: BLE001
                self.network_note = f"network check failed ({exc}): interim mode kept"
                return
        if passed:
            self.check_iq(f"network:{self.method}")
            self.network_ready = True
        self.network_note = note

    def _fine_tune(self, cancel: threading.Event, threads: int = 0) -> bool:
        """Fit the network; True when it trained long enough to be checked."""
        try:
            denoiser, analysis = self._analysed()
            seconds = self.budget_s
            if seconds is None:
                seconds = denoiser.config.fine_tune_seconds(denoiser.device.type)
            log = denoiser.fit(analysis, method=self.method, seconds=float(seconds),
                               cancel=cancel, threads=threads)
        except Exception as exc:  # noqa: BLE001
            self.network_note = (f"training failed ({type(exc).__name__}: {exc}): "
                                 "interim mode kept")
            self.failure = self.failure or f"training failed: {exc!r}"
            logger.warning("symdenoise: %s", self.network_note)
            return False
        if log.cancelled:
            self.network_note = (f"training cut short (stopped at step {log.steps}: the raw "
                                 "run ended): interim mode kept")
            return False
        if log.steps < self.min_training_steps:
            self.network_note = (f"only {log.steps} training steps in {log.seconds:.1f} s "
                                 f"(< {self.min_training_steps}): interim mode kept")
            return False
        return True

    def _validate_network(self) -> tuple[bool, str]:
        """Whether the network beats the interim mode on a held-out binomial split of the
        last warm-up frame (:func:`~.selection.held_out_deviance`), and why; on the same
        split, how much of the per-shell angular model its frames get
        (:meth:`~.engine.ScanDenoiser.check_angular_model`)."""
        denoiser, analysis = self._analysed()
        prepared = analysis.prepared
        if not prepared.countlike:
            return True, "network used (non-integer counts: held-out check skipped)"
        good = prepared.good
        if frame_targets(analysis):
            # Neighbouring pixels share noise (a point spread): the next-to-last warm-up
            # frame is scored against the last, which shares no noise with it.
            score: Callable[[np.ndarray, np.ndarray], float] = mean_squared_error
            scored_by = "held-out squared error"
            half32, rest, others = next_frame_split(prepared.frames, len(prepared.frames) - 2)
            previous = others[0] if others else None
        else:
            # One split: the network's half without the angular model sets the model's
            # weights, and the two together (what would be served) are scored against the
            # other half. The neighbour is thinned like the frame (half of its counts).
            score, scored_by = poisson_deviance, "held-out deviance"
            half, rest = binomial_split(prepared.frames[-1], seed=1)
            half32 = half.astype(np.float32)
            previous = prepared.frames[-2] * 0.5 if len(prepared.frames) > 1 else None
        near = [] if previous is None else [previous]
        denoiser.angular = None
        estimate = denoiser.denoise_frames(analysis, method=self.method, frames=[half32],
                                           neighbours=[previous], ring_neighbours=[near])
        angular = denoiser.check_angular_model(analysis, half32, near,
                                               np.asarray(estimate[0], np.float64), rest)
        served = denoiser.with_angular_model(analysis, half32[None], estimate, [near])[0]
        net = score(np.asarray(served, np.float64)[good], rest[good])
        interim = self.interim
        if interim is not None:
            name = "base model"
            reference = interim.denoise_frame(analysis, method=self.method, frame=half32,
                                              neighbours=previous)
        else:
            name = "NLM"
            reference = denoiser.classical_frame(analysis, half32, engine="nlm",
                                                 bad=prepared.bad)
        ref = score(np.asarray(reference, np.float64)[good], rest[good])
        if net < ref:
            return True, (f"network used: {scored_by} {net:.4f} < {name} {ref:.4f}"
                          f"{angular}")
        return False, (f"fine-tuned network not used: {scored_by} {net:.4f} >= {name} "
                       f"{ref:.4f} (budget too short?)")

    # -- serving -----------------------------------------------------------------------------
    def _network_bytes(self, n_frames: int) -> int:
        """Transient memory of serving ``n_frames`` through the network, in one batch."""
        return (int(INFERENCE_SHARE * self.guard.budget_bytes)
                + self._frame_bytes(_SERVE_BYTES_PER_PIXEL)
                + (n_frames - 1) * self._frame_bytes(_SERVE_MORE_BYTES_PER_PIXEL))

    def _frame_bytes(self, per_pixel: int) -> int:
        height, width = self.shape or (0, 0)
        return height * width * per_pixel

    def _shape(self) -> tuple[int, int]:
        if self.shape is None:
            raise RuntimeError("frames served before warm_up(): the scan's shape is unknown")
        return self.shape

    @property
    def noise(self) -> NoiseCalibration:
        """The detector's noise model found at the warm-up, kept when the analysis is let go
        for memory. Before the warm-up, or where it did not calibrate an integrating
        detector's frames (the analysis did not fit the memory budget, or failed), photon
        counting, or for an integrating detector the identity in its own units: negative
        values stay data, and raw frames pass through as they came, in ADU."""
        if self._calibration is not None:
            return self._calibration
        detector = self.config.detector
        if detector.integrating:
            return NoiseCalibration(kind="integrating", offset=float(detector.offset or 0.0),
                                    source="not calibrated (no analysis of the scan): frames "
                                           "passed through in ADU")
        return NoiseCalibration()

    def prepare_frame(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """A new frame's counts with its bad pixels zeroed: the scan's (or the user's mask
        before the analysis), plus this frame's NaN/inf/negative and saturated pixels
        (:func:`~.preprocess.unusable_pixels`; an integrating detector's negative values
        are data, and its frame is converted to the shifted photon-equivalent frame the
        engine works on, :attr:`noise`). Returns counts, bad pixels and flags."""
        if self.analysis is not None:
            bad = self.analysis.prepared.bad.copy()
        elif self.user_mask is not None:
            bad = self.user_mask.copy()
        else:
            bad = np.zeros(self._shape(), bool)
        data = np.array(frame, np.float32)  # a copy, converted once
        unusable = unusable_pixels(frame[None], data[None], bad)
        flags: list[str] = []
        noise = self.noise
        # An integrating detector's negative values are data (readout noise after the dark).
        markers = unusable.markers if not noise.integrating else None
        if markers is not None and markers.any():  # a Pilatus's -1 (gap) and -2 (bad)
            flags.append(f"{int(markers.sum())} detector-marker pixels (-1 gap, -2 bad) "
                         "masked")
            bad |= markers
        broken = unusable.nonfinite | (unusable.negative & ~markers
                                       if markers is not None else False)
        if broken.any():
            flags.append(f"{int(broken.sum())} NaN/inf/negative pixels masked"
                         if not noise.integrating else
                         f"{int(broken.sum())} NaN/inf pixels masked")
            bad |= broken
        if noise.integrating:
            data = noise.to_photons(data)
        if unusable.saturated.any():
            flags.append(f"{int(unusable.saturated.sum())} saturated pixels masked")
            bad |= unusable.saturated
        data[bad] = 0.0
        return data, bad, flags

    def serve(self, frames: Sequence[np.ndarray], *, behind: int = 0) -> list[ServedFrame]:
        """Denoise new frames of the scan, in order, as one batch.

        ``behind`` > 0: so many frames wait behind these that the caller must catch up
        (live, a full queue drops frames): the batch is passed through raw, each frame
        flagged, instead of losing frames.

        One frame gets the configured test-time averaging; a batch of several (a worker
        behind) one flip each. A frame of another shape, or not of real numbers, is skipped
        (zeros, flagged). If the denoiser raises, the raw counts are served instead and
        each frame says why (:attr:`ServedFrame.failure`).
        """
        shape = self._shape()
        #: Per frame: its counts and bad pixels (None: skipped), and its flags.
        prepared: list[tuple[tuple[np.ndarray, np.ndarray] | None, list[str]]] = []
        for frame in frames:
            if frame.shape != shape or not _numeric(frame):
                prepared.append((None, [
                    f"skipped: frame shape {frame.shape} != {shape}"
                    if frame.shape != shape else
                    f"skipped: frame dtype {frame.dtype} is not real numbers"]))
            else:
                data, bad, flags = self.prepare_frame(frame)
                prepared.append(((data, bad), flags))
        valid = [pair for pair, _ in prepared if pair is not None]
        counts, bads = [c for c, _ in valid], [b for _, b in valid]
        results = iter(self._serve_within_budget(counts, bads, behind))
        spots = held_spots(self.analysis, self.method)  # kept as held by the total rescale
        served = []
        for pair, flags in prepared:
            if pair is None:
                served.append(ServedFrame(np.zeros(shape, np.float32), "none",
                                          tuple(flags), None, None))
                continue
            raw, bad = pair
            output, by, failure, flag = next(results)
            denoised = scale_to_raw_counts(output[None], raw[None], ~bad,
                                           zeroed=bad,
                                           preserve=self.config.preserve_total_counts,
                                           spots=None if by.startswith("none") else spots)[0]
            served.append(ServedFrame(denoised, by, tuple(flags + [flag] if flag else flags),
                                      raw, bad, failure))
        return served

    def _serve_within_budget(self, counts: list[np.ndarray], bads: list[np.ndarray],
                             behind: int) -> list[tuple[np.ndarray, str, str | None, str | None]]:
        """Per prepared frame: its output, ``denoised_by``, failure and flag.

        The memory budget is claimed for a batch's transients while it is served (the
        trainer thread counts them): the whole batch through the network, else its frames
        one at a time, else the classical fast mode, else raw. A worker behind passes raw
        and needs none.
        """
        def each(batch: tuple[list[np.ndarray], str, str | None, str | None]
                 ) -> list[tuple[np.ndarray, str, str | None, str | None]]:
            outputs, by, failure, flag = batch
            return [(output, by, failure, flag) for output in outputs]

        flips = None if len(counts) <= 1 else 1  # a batch: the worker is catching up
        if not counts or self.method == "passthrough" or behind > 0:
            return each(self._serve_batch(counts, bads, behind, None, flips=flips))
        classical_need = self._frame_bytes(_SERVE_CLASSICAL_BYTES_PER_PIXEL)
        if not self._serves_network():  # (the trainer may switch the network on meanwhile)
            with self.guard.claim(classical_need) as over:
                return each(self._serve_batch(counts, bads, behind, over, flips=flips))
        over = None
        for size in (len(counts), 1) if len(counts) > 1 else (1,):
            with self.guard.claim(self._network_bytes(size)) as over:
                if over is None:
                    served: list[tuple[np.ndarray, str, str | None, str | None]] = []
                    for start in range(0, len(counts), size):
                        served += each(self._serve_batch(
                            counts[start:start + size], bads[start:start + size], behind,
                            None, flips=flips))
                    return served
        with self.guard.claim(classical_need) as still_over:  # the fast mode may still fit
            outputs, by, failure, flag = self._serve_batch(counts, bads, behind, still_over,
                                                           classical=True)
        if still_over is None and failure is None:
            flag = f"{over}: classical fast mode instead of the network"
        return each((outputs, by, failure, flag))

    def _serves_network(self) -> bool:
        """Whether frames served now go through a network (fine-tuned or interim)."""
        return self.network_ready or self.interim is not None

    def _serve_batch(self, counts: list[np.ndarray], bads: list[np.ndarray], behind: int,
                     over: str | None, *, classical: bool = False, flips: int | None = None
                     ) -> tuple[list[np.ndarray], str, str | None, str | None]:
        """Outputs, ``denoised_by``, failure and flag of a batch of prepared frames: raw if
        the memory budget is reached (``over``) or the worker is ``behind``, else denoised
        (``classical``: by the classical fast mode, whatever serves now; raw if the
        denoiser raises; ``flips``: the network's test-time flips, None for the
        configuration's)."""
        if not counts:
            return [], "none", None, None
        if over is not None:  # raw served, flagged: never more than the budget
            return ([c.copy() for c in counts], PASSTHROUGH_MEMORY, None,
                    f"{over}: raw passed through")
        if behind > 0 and self.method != "passthrough":
            return ([c.copy() for c in counts], PASSTHROUGH_BEHIND, None,
                    f"{behind} frames waiting (worker behind the detector): raw passed "
                    "through to keep pace")
        try:
            outputs, by = self._denoise(counts, bads, flips, classical=classical)
        except Exception as exc:  # noqa: BLE001 - raw is served instead
            return ([c.copy() for c in counts], "none", f"denoising failed: {exc!r}",
                    f"denoising failed ({type(exc).__name__}: {exc}): raw copied")
        if by == PASSTHROUGH_MEMORY:  # the whole scan: its analysis did not fit
            return outputs, by, None, f"{self.reason}: raw passed through"
        return outputs, by, None, None

    def _denoise(self, frames: list[np.ndarray], bads: list[np.ndarray],
                 flips: int | None, *, classical: bool = False
                 ) -> tuple[list[np.ndarray], str]:
        """Denoise prepared frames by the mode serving now, or the classical fast mode
        (the previous frame is each one's neighbour); returns the outputs and who made
        them."""
        ready = self.network_ready  # the trainer thread may switch it on meanwhile
        by = self._mode(ready)
        if self.method == "passthrough":
            return [f.copy() for f in frames], by
        denoiser, analysis = self._analysed()
        previous, self._previous = self._previous, frames[-1]
        engine = None if classical else denoiser if ready else self.interim
        if classical:
            by = f"classical-{classical_engine(self.method)} (memory budget)"
        # The anisotropy hold pools the raw harmonics of the frames served before these
        # (none yet: the previous frame, as the ring means).
        earlier = list(self._harmonics) or None
        harmonics = None
        if analysis.orientation is not None:
            harmonics = [analysis.orientation.harmonics(frame) for frame in frames]
            self._harmonics.extendleft(harmonics)
        if engine is not None:
            out = engine.denoise_frames(analysis, method=self.method, frames=frames,
                                        neighbours=[previous, *frames[:-1]], flips=flips,
                                        earlier=earlier, harmonics=harmonics)
            return [np.asarray(o, np.float32) for o in out], by
        out = denoiser.classical_frames_held(
            analysis, frames, bads, engine=classical_engine(self.method),
            ring_neighbours=[[n] if n is not None else []
                             for n in [previous, *frames[:-1]]])
        return list(out), by

    # -- the held-out I(q) check -------------------------------------------------------------
    def set_iq_integration(self, geometry: DetectorGeometry, npt: int,
                           sectors: Sequence[tuple[float, float] | None]) -> None:
        """How :meth:`check_iq` integrates: the scan's geometry, bins and sectors (None:
        the full ring)."""
        self._iq_setup = (geometry, int(npt), list(sectors))

    def check_iq(self, by: str) -> str | None:
        """Calibrate the denoised I(q)'s sigma and find where it falls back to raw, for the
        serving mode ``by``, on held-out splits of the warm-up frames (the engine's
        :meth:`~.engine.ScanDenoiser.iq_check`; once per mode and scan). Returns a warning
        if the check failed (the sigmas then stay the Poisson upper bound)."""
        denoiser, analysis = self.denoiser, self.analysis
        if (self._iq_setup is None or denoiser is None or analysis is None
                or self.method == "passthrough" or not analysis.prepared.countlike):
            return None
        geometry, npt, sectors = self._iq_setup
        prepared = analysis.prepared
        frames, bad = prepared.frames, prepared.bad
        engine = (denoiser if by == f"network:{self.method}" else self.interim)

        def serve(half: np.ndarray, index: int, which: int) -> np.ndarray:
            # The previous frame at half dose (half ``which`` of its own split), as the
            # frames served see theirs: live, a frame's only neighbour is the previous one.
            halves = thinned_neighbours(frames[:index + 1], index, seed=index, which=which)
            previous = halves[0] if halves else None
            held_out = held_out_analysis(analysis, frames[index], half)
            if engine is not None:
                out = engine.denoise_frame(held_out, method=self.method, frame=half,
                                           neighbours=previous)
            else:
                out = denoiser.classical_frames_held(
                    held_out, [half], [bad], engine=classical_engine(self.method),
                    ring_neighbours=[halves[:1]])[0]
            return scale_to_raw_counts(np.asarray(out)[None], half[None], ~bad, zeroed=bad,
                                       preserve=self.config.preserve_total_counts,
                                       spots=held_spots(held_out, self.method))[0]

        per_pixel = _IQ_CHECK_BYTES_PER_PIXEL[by.startswith("network")]
        with self.guard.claim(self._frame_bytes(per_pixel)) as over:
            if over is not None:
                return (f"held-out I(q) check skipped for {by} ({over}): denoised sigma is "
                        "the Poisson error at the denoised rate, no fallback")
            return self._check_iq(by, serve, frames, bad, geometry, npt, sectors)

    def _check_iq(self, by: str, serve: Callable[[np.ndarray, int, int], np.ndarray],
                  frames: np.ndarray, bad: np.ndarray, geometry: DetectorGeometry, npt: int,
                  sectors: list) -> str | None:
        denoiser, analysis = self._analysed()
        # Two denoising passes per frame checked: at most about two frames' worth on a
        # large detector, so that the check costs the scan's start what serving does.
        max_frames = int(np.clip(_IQ_CHECK_PIXELS // max(frames[0].size, 1), 1, 4))
        try:
            start = time.perf_counter()
            checks = denoiser.iq_check(analysis, method=self.method,
                                       integration=integrator_for(geometry, bad), npt=npt,
                                       sectors=sectors, serve=serve,
                                       frames=frames[:max_frames], max_frames=max_frames)
            self.iq_seconds += time.perf_counter() - start
            self.iq_checks[by] = checks
        except Exception as exc:  # noqa: BLE001
            return (f"held-out I(q) check failed for {by} ({exc}): denoised sigma is the "
                    "Poisson error at the denoised rate, no fallback")
        return None

    def published_iq(self, by: str, which: int, raw: IntegrationResult,
                     den: IntegrationResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Denoised I(q), its sigma and the fallback flags of profile ``which`` (0: full
        ring, 1: the sector) of a frame served by ``by``, as its held-out check says."""
        checks = self.iq_checks.get(by)
        if checks is not None and len(checks) > which:
            check = checks[which]
            if len(check.q_nm) == len(raw.q_nm) and np.allclose(check.q_nm, raw.q_nm):
                intensity, sigma = check.apply(raw, den)
                return intensity, sigma, check.fallback.copy()
        if den.sigma is None:
            raise ValueError("the denoised I(q) has no sigma: integrate it with a variance")
        return den.intensity, den.sigma, np.zeros(len(raw.q_nm), bool)

    # -- records -----------------------------------------------------------------------------
    def symmetry_report(self) -> tuple[dict[str, Any], np.ndarray | None] | None:
        """What the scan's symmetry tests found and the method uses (JSON-safe), and the
        violation bit map (None without a beam centre); None before the analysis."""
        if self.analysis is None:
            return None
        usage = symmetry_usage(self.analysis, self.method,
                               self.denoiser.config if self.denoiser else None)
        return usage, violation_map(self.analysis, self.method)

    def provenance(self) -> dict[str, Any] | None:
        """The engine's record of the scan (configuration, device, model, symmetry), or None
        before the analysis; an integrating detector's without one (let go for memory, or
        not run) still records its noise model (``detector_noise``)."""
        if self.denoiser is None or self.analysis is None:
            return {"detector_noise": self.noise.as_dict()} if self.noise.integrating else None
        record = self.denoiser.provenance(self.analysis, self.method, self.reason, 0.0)
        record.pop("seconds", None)
        return record

    def summary(self) -> dict[str, Any]:
        """JSON-safe record for the end of the scan: method, network, I(q) checks, training,
        model, fallbacks, symmetry scores."""
        record: dict[str, Any] = {"method": self.method, "network": self.network_note}
        record["iq_check"] = {
            by: dict(zip(("full", "sector"), (c.summary() for c in checks), strict=False))
            for by, checks in self.iq_checks.items()}
        if self.iq_checks:
            record["iq_check_seconds"] = round(self.iq_seconds, 2)
        if self.denoiser is not None:
            training = self.denoiser.training
            record["training"] = training.as_dict() if training is not None else None
            record["model_hash"] = (model_hash(self.denoiser.model)
                                    if self.denoiser.model is not None else None)
            record["model"] = self.denoiser.model_origin
            record["device"] = str(self.denoiser.device)  # where the network ran
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
        return json.loads(json.dumps(record, default=str))


def _numeric(frame: np.ndarray) -> bool:
    """Real numbers (bool, integer or float): what can be read as counts."""
    return frame.dtype.kind in "biuf"
