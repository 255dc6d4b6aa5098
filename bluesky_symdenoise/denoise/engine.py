"""The per-scan denoiser: analyse a scan, pick a method, fine-tune within a budget, predict.

:class:`ScanDenoiser` is the object API behind :func:`bluesky_symdenoise.denoise`; the live
plugin uses the same pieces frame by frame (``analyse``, ``fit``, ``predict``).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..geometry import DetectorGeometry, GeometryError
from ..integrate.azimuthal import AzimuthalIntegration
from ..integrate.heldout import IqCheck, held_out_iq
from .angular import (
    MAX_SHELL_PARTS,
    AngularBlend,
    ScanAngularModel,
    angular_model,
    held_out_band_weights,
    misfit,
    mix_within_shells,
    polar_maps,
)
from .channels import ChannelContext, input_channels
from .config import DenoiseConfig
from .consistency import RawConsistency
from .detector_noise import DetectorNoise, NoiseCalibration, calibrate, readout_dominance
from .device import select_device
from .inference import predict_rates
from .memory import default_memory_budget_gb, device_tile
from .models import load_base_model, model_hash, new_model
from .orientation import OrientationHold, RawHarmonics
from .preprocess import (
    ARC_RATIO,
    InputError,
    PreparedScan,
    find_ring_defects,
    prepare_frames,
    sharp_ring_pixels,
)
from .selection import (
    BlendWeights,
    binomial_split,
    held_out_blend,
    mean_squared_error,
    poisson_deviance,
)
from .symmetry import VIOLATION_BITS, SymmetryReport, refine_center
from .targets import (
    SUBSAMPLING_CHANNELS,
    FramePairs,
    SubsamplingPairs,
    SupervisedPairs,
    ThinningPairs,
    neighbour_frames,
    neighbour_mean,
    random_cell_keep,
    subsampled_channels,
)
from .training import SAMPLER_BYTES_PER_PIXEL, PairSource, TrainingLog, fit, sampler_threads

__all__ = ["VIOLATION_BITS", "DenoiseResult", "ScanAnalysis", "ScanDenoiser",
           "classical_engine", "frame_targets", "held_out_analysis", "held_spots",
           "keep_total_counts",
           "next_frame_split", "scale_to_raw_counts", "scan_geometry", "symmetry_usage",
           "uses_partners", "violation_map"]

logger = logging.getLogger(__name__)

#: Below this many counts in a scan's sum per pixel the centre is not refined.
_MIN_COUNTS_FOR_REFINEMENT = 2.0
#: A frame's pool for the anisotropy hold: the raw harmonics of the frames before it and
#: after it, nearest first, and its own (None: made by the hold)
#: (:meth:`~.orientation.OrientationHold.apply`).
OrientationPool = tuple[list[RawHarmonics | None], list[RawHarmonics | None],
                        RawHarmonics | None]


@dataclass
class ScanAnalysis:
    """Everything learnt about a scan before any training.

    Attributes
    ----------
    prepared
        Validated frames and bad-pixel maps.
    center
        Beam centre used for symmetry (refined), or None.
    symmetry
        Local 180° symmetry test on the scan sum, or None without a centre.
    context
        The network's channel context.
    notes
        Decisions and repairs, for provenance.
    isotropy
        Local azimuthal-isotropy (arc) test on the scan sum, or None without a centre.
    consistency
        Where denoised frames (network or classical) are held to the raw counts (rings,
        features without a partner); None when switched off.
    noise
        The detector's noise model the frames were converted with (photon counting: none).
    orientation
        The angular harmonics the scan's raw counts show, which denoised frames are held to
        (:mod:`.orientation`); None: none shown, no centre, or switched off.
    """

    prepared: PreparedScan
    center: tuple[float, float] | None
    symmetry: SymmetryReport | None
    context: ChannelContext
    notes: list[str] = field(default_factory=list)
    isotropy: SymmetryReport | None = None
    consistency: RawConsistency | None = None
    noise: NoiseCalibration = field(default_factory=NoiseCalibration)
    orientation: OrientationHold | None = None


def held_out_analysis(analysis: ScanAnalysis, frame: np.ndarray,
                      half: np.ndarray) -> ScanAnalysis:
    """The analysis one held-out half of the scan's ``frame`` is denoised with: its holds to
    the raw counts rest on the scan's counts with ``frame`` replaced by ``half``
    (:meth:`~.consistency.RawConsistency.with_frame_replaced`), so that the denoised half
    shares no counts with the other half it is scored against."""
    if analysis.consistency is None:
        return analysis
    return replace(analysis, consistency=analysis.consistency.with_frame_replaced(frame, half))


@dataclass
class DenoiseResult:
    """Denoised frames with how they were made.

    Attributes
    ----------
    denoised
        Float32 expected counts, same shape as the input; 0 on masked pixels.
    method
        The method that ran.
    reason
        Why ``method`` was chosen (``method="auto"``) or that it was asked for.
    provenance
        JSON-safe record: configuration, device, model hash, symmetry report, training log,
        repairs and fallbacks, timings.
    analysis
        The scan analysis (bad pixels, symmetry maps).
    """

    denoised: np.ndarray
    method: str
    reason: str
    provenance: dict[str, Any]
    analysis: ScanAnalysis


class ScanDenoiser:
    """Denoise one scan: the object behind :func:`bluesky_symdenoise.denoise`.

    Parameters
    ----------
    config
        A :class:`DenoiseConfig`; keyword overrides are applied on top.

    Examples
    --------
    >>> denoiser = ScanDenoiser(method="symmetry", budget_s=30)      # doctest: +SKIP
    >>> result = denoiser.run(frames, mask=mask, center=(511.3, 498.7))  # doctest: +SKIP
    >>> result.denoised.shape == frames.shape                        # doctest: +SKIP
    """

    def __init__(self, config: DenoiseConfig | None = None, **overrides: Any) -> None:
        base = config.model_dump() if config is not None else {}
        self.config = DenoiseConfig(**{**base, **overrides})
        self.device = select_device(self.config.device)
        self.model: torch.nn.Module | None = None
        self.model_origin = "none"
        self.analysis: ScanAnalysis | None = None
        self.training: TrainingLog | None = None
        #: Network weight per intensity band in a mix with the classical mode (``auto``).
        self.blend: BlendWeights | None = None
        #: Weight of the per-shell angular model per radial band (``auto``; None: unused).
        self.angular: AngularBlend | None = None
        #: The blend the fitter serves, and its structures per band chosen once per dose.
        self._angular_fitter: tuple[AngularBlend, ScanAngularModel] | None = None
        self._polar: tuple[tuple[float, float], np.ndarray, np.ndarray] | None = None
        self.events: list[str] = []
        #: The scan's memory budget (GB) and the network's tile core that fits it.
        self.memory_budget_gb = self.config.max_memory_gb or default_memory_budget_gb()
        self.tile = device_tile(self.device.type, self.memory_budget_gb, self.config.width)

    # -- analysis ---------------------------------------------------------------------------
    def analyse(self, frames: np.ndarray, *, mask: np.ndarray | None = None,
                center: tuple[float, float] | None = None,
                poni: str | Path | dict | None = None,
                bad_pixels: Literal["raise", "mask"] = "raise") -> ScanAnalysis:
        """Validate frames, find bad pixels, settle the beam centre and test symmetry.

        An integrating detector's frames (``config.detector``) are first calibrated (gain
        and readout noise from the scan where not given) and converted to shifted
        photon-equivalent frames (:mod:`.detector_noise`); everything after works on those.
        """
        noise = NoiseCalibration()
        if self.config.detector.integrating:
            frames, mask, noise = _photon_equivalent(frames, mask, self.config.detector)
        prepared = prepare_frames(frames, mask, bad_pixels=bad_pixels,
                                  integrating=noise.integrating)
        shape = prepared.frames.shape[1:]
        notes = list(prepared.notes)
        if noise.integrating:
            notes.append(f"integrating detector: gain {noise.gain:.4g} ± {noise.gain_error:.2g} "
                         f"ADU/photon, readout noise {noise.read_noise:.4g} ± "
                         f"{noise.read_noise_error:.2g} ADU, offset {noise.offset:g} ADU "
                         f"({noise.source})")
            noise = replace(noise, readout_dominance=readout_dominance(
                noise, prepared.frames, prepared.good))
            if noise.readout_dominated:
                notes.append(
                    f"readout-dominated: the readout variance is {noise.readout_dominance:.3g}"
                    " times the typical pixel's photon count, so faint one-sided features "
                    "(spots without a 180° partner) are hard to tell from the noise and may "
                    "come out weaker on their own pixels (most of their intensity stays within "
                    "3 px); a longer exposure or a higher gain setting avoids it")
        center = _resolve_center(shape, center, poni, notes)
        if center is not None:
            # Pixels of a ring about 1 px wide that the neighbour test took for hot (their
            # neighbours are off the ring) are data: their arc shows it.
            note = prepared.restore(sharp_ring_pixels(prepared, frames, center), frames,
                                    f"on a sharp ring (within {ARC_RATIO:g}× their arc's median)")
            if note:
                notes.append(note)
        scan_sum = prepared.frames.sum(axis=0)
        if center is not None:
            # Hot pixels on a steep profile, which only their ring can show (the centre is
            # refined below on the sum without them).
            found = find_ring_defects(scan_sum, prepared.good, center)
            note = prepared.add_defects(found, "far above their own ring")
            if note:
                notes.append(note)
                scan_sum[found] = 0.0  # as the frames, zeroed there
        symmetry = isotropy = None
        if center is not None:
            mean_sum = float(scan_sum[prepared.good].mean()) if prepared.good.any() else 0.0
            if self.config.refine_center and mean_sum >= _MIN_COUNTS_FOR_REFINEMENT:
                refined = refine_center(scan_sum, center, prepared.bad, search_px=2.0)
                shift = float(np.hypot(refined[0] - center[0], refined[1] - center[1]))
                notes.append(f"beam centre refined from ({center[0]:.2f}, {center[1]:.2f}) to "
                             f"({refined[0]:.2f}, {refined[1]:.2f}), shift {shift:.2f} px")
                center = refined
            context, symmetry, isotropy = ChannelContext.from_scan_sum(
                scan_sum, prepared.good, center, z_threshold=self.config.symmetry_z_threshold)
            if symmetry.fraction_violated > 0:
                notes.append(f"symmetry broken on {100 * symmetry.fraction_violated:.2f} % of "
                             "paired pixels: partners not used there")
            if isotropy.fraction_violated > 0:
                notes.append(f"azimuthal isotropy broken on "
                             f"{100 * isotropy.fraction_violated:.2f} % of ring pixels: ring "
                             "means not used there")
        else:
            context = ChannelContext.without_symmetry(prepared.good)
        consistency = None
        if self.config.keep_raw_consistency:
            consistency = RawConsistency.for_scan(
                scan_sum, prepared.good, center, ring_valid=context.ring_valid,
                z_threshold=self.config.feature_z_threshold,
                isotropy_z_threshold=self.config.symmetry_z_threshold,
                readout_dominated=noise.readout_dominated, frames=len(prepared.frames))
        self.analysis = ScanAnalysis(prepared=prepared, center=center, symmetry=symmetry,
                                     context=context, notes=notes, isotropy=isotropy,
                                     consistency=consistency, noise=noise)
        self.analysis.orientation = self._orientation_hold(self.analysis, scan_sum)
        return self.analysis

    def _orientation_hold(self, analysis: ScanAnalysis, scan_sum: np.ndarray
                          ) -> OrientationHold | None:
        """The scan's :class:`~.orientation.OrientationHold` (None: no order shown, no
        centre, switched off, or it failed: said in the notes, the frames served without)."""
        consistency = analysis.consistency
        if (consistency is None or analysis.center is None
                or not self.config.hold_orientation):
            return None
        try:
            hold = OrientationHold.for_scan(scan_sum, analysis.prepared.good, analysis.center,
                                            spots=consistency.spots(),
                                            shell_parts=_shell_parts(analysis),
                                            polar=self._polar_maps(analysis))
        except Exception as exc:  # noqa: BLE001 - the frames are served without it
            analysis.notes.append(f"anisotropy hold skipped ({type(exc).__name__}: {exc})")
            return None
        if hold is not None:
            orders = ", ".join(str(m) for m in hold.orders)
            analysis.notes.append(f"anisotropy held to the raw counts: harmonic orders "
                                  f"{orders} shown by the scan's counts")
        return hold

    # -- method choice ----------------------------------------------------------------------
    def choose_method(self, analysis: ScanAnalysis, *, budget_s: float | None,
                      have_pairs: bool) -> tuple[str, str]:
        """Return ``(method, reason)`` for ``method="auto"`` (or echo the asked method)."""
        asked = self.config.method
        if asked != "auto":
            return asked, f"method={asked!r} asked for"
        if have_pairs:
            return "supervised", "paired low/high-count frames given"
        base, _ = load_base_model(self.config.width, self.config.depth)
        if budget_s is not None and budget_s < 5:
            return "classical", f"budget {budget_s:g} s too short for the network"
        if base is None and (budget_s is not None and budget_s < 30):
            return "classical", "no pre-trained model and a budget under 30 s"
        if analysis.center is None:
            return "thinning", "no beam centre: symmetry-free targets (thinning, frames)"
        sym = analysis.symmetry
        if sym is None or sym.fraction_paired < 0.1:
            return "thinning", "too few pixels have a 180° partner on the detector"
        if sym.fraction_violated > self.config.max_symmetry_violation:
            return "thinning", (f"180° symmetry rejected on {100 * sym.fraction_violated:.1f} % "
                                "of paired pixels: features without a partner are common, so "
                                "symmetry-free targets")
        return "symmetry", (f"beam centre known, {100 * sym.fraction_paired:.0f} % of pixels "
                            "paired, 180° symmetry violated on "
                            f"{100 * sym.fraction_violated:.2f} % of them (at most "
                            f"{100 * self.config.max_symmetry_violation:g} % allowed)")

    # -- network ----------------------------------------------------------------------------
    def _start_model(self) -> torch.nn.Module:
        if self.config.use_pretrained:
            base, why = load_base_model(self.config.width, self.config.depth)
            if base is not None:
                self.model_origin = why
                return copy.deepcopy(base)
            self.events.append(why)
        self.model_origin = "random initialisation"
        return new_model(self.config.width, self.config.depth)

    def use_pretrained(self) -> bool:
        """Load the shipped base model without fine-tuning; False if none is installed.

        The live plugin serves frames with it while the per-scan fine-tuning runs.
        """
        self.model = self._start_model()
        return self.model_origin.startswith("pre-trained")

    def fit(self, analysis: ScanAnalysis, *, method: str, seconds: float,
            pairs: tuple[np.ndarray, np.ndarray] | None = None,
            cancel: threading.Event | None = None, threads: int | None = None
            ) -> TrainingLog:
        """Fine-tune (or train) the network for this scan for at most ``seconds``, or until
        ``cancel`` is set (the log then says ``cancelled``). ``threads`` draw the training
        batches (None: :func:`~.training.sampler_threads` of the device, as many as a
        quarter of the memory budget holds at :data:`SAMPLER_BYTES_PER_PIXEL` each)."""
        cfg = self.config
        frames = analysis.prepared.frames
        if method == "noise2sr":
            self.model = new_model(cfg.width, cfg.depth, in_channels=SUBSAMPLING_CHANNELS,
                                   residual=True)
            self.model_origin = "random initialisation (zero-shot)"
            source: PairSource = SubsamplingPairs(frames, analysis.context.good, seed=cfg.seed)
        else:
            self.model = self._start_model()
            context = _context_for(analysis, method)
            if method == "supervised":
                if pairs is None:
                    raise InputError("method='supervised' needs pairs=(low, high) frames")
                low = prepare_frames(pairs[0], ~context.good, detect_defects=False).frames
                high = prepare_frames(pairs[1], ~context.good, detect_defects=False).frames
                source = SupervisedPairs(low, high, context, seed=cfg.seed)
            elif frame_targets(analysis):
                source = FramePairs(frames, context, use_neighbours=cfg.use_neighbour_frames,
                                    seed=cfg.seed)
            else:
                source = ThinningPairs(frames, context, p_range=cfg.thinning_p,
                                       use_neighbours=cfg.use_neighbour_frames, seed=cfg.seed)
        patch = min(cfg.patch_size, *_padded(frames.shape[1:], 2 ** cfg.depth))
        self.training = fit(self.model, source, seconds=seconds, max_steps=cfg.max_steps,
                            learning_rate=cfg.learning_rate if method != "noise2sr"
                            else 1e-3, batch_size=cfg.batch_size, patch=patch,
                            device=self.device, mixed_precision=cfg.mixed_precision,
                            seed=cfg.seed, cancel=cancel,
                            threads=threads if threads is not None else sampler_threads(
                                self.device, cfg.sampler_threads,
                                per_thread_bytes=SAMPLER_BYTES_PER_PIXEL * frames[0].size,
                                spare_bytes=int(self.memory_budget_gb * (1 << 30) / 4)))
        self.events += self.training.events
        self.device = torch.device(self.training.device)
        return self.training

    def predict(self, analysis: ScanAnalysis, *, method: str,
                frames: np.ndarray | None = None) -> np.ndarray:
        """Expected counts for the scan's frames (or other frames of the same detector)."""
        cfg = self.config
        if self.model is None:
            raise RuntimeError("predict() before fit(): no model")
        frames = analysis.prepared.frames if frames is None else frames
        good = analysis.context.good
        inputs, levels = [], []
        if method == "noise2sr":
            rng = np.random.default_rng(cfg.seed + 1)
            # MMSE over several random sub-samplings of every frame.
            for frame in frames:
                level = max(float(frame[good].mean()), 1e-3)
                for _ in range(cfg.noise2sr_passes):
                    keep = random_cell_keep(frame.shape, rng)
                    inputs.append(subsampled_channels(frame, good, keep, level))
                    levels.append(level)
            rates = predict_rates(self.model, inputs, levels, device=self.device, flips=1,
                                  batch_size=cfg.inference_batch, tile=self.tile,
                                  mixed_precision=cfg.mixed_precision, events=self.events)
            rates = rates.reshape(len(frames), cfg.noise2sr_passes, *frames.shape[1:]).mean(1)
            return self._hold_to_raw(analysis, frames, rates,
                                     partners_used=uses_partners(analysis, method))
        return self.denoise_frames(
            analysis, method=method, frames=frames,
            neighbours=[neighbour_mean(frames, index) for index in range(len(frames))],
            ring_neighbours=_each_frames_neighbours(frames))

    def _hold_to_raw(self, analysis: ScanAnalysis, frames: np.ndarray, rates: np.ndarray, *,
                     partners_used: bool = True,
                     ring_neighbours: Sequence[Sequence[np.ndarray]] | None = None,
                     pools: list[OrientationPool] | None = None
                     ) -> np.ndarray:
        """Denoised frames (network or classical) held to the raw counts (see
        :mod:`.consistency`; and the anisotropy the scan shows, :mod:`.orientation`): the
        physics does not depend on which denoiser won.
        ``partners_used``: whether the denoiser averaged 180° partners. ``ring_neighbours``:
        per frame, its neighbouring raw frames, whose ring means are pooled with the
        frame's where the rings did not change (``config.pool_neighbour_rings``).
        ``pools``: per frame, the raw harmonics its anisotropy hold pools (default:
        :meth:`_orientation_pools` of these frames)."""
        if analysis.consistency is None:
            return rates
        if ring_neighbours is None or not self.config.pool_neighbour_rings:
            ring_neighbours = [()] * len(frames)
        if pools is None:
            pools = self._orientation_pools(analysis, frames, ring_neighbours)
        held = []
        for index, (frame, rate, near) in enumerate(
                zip(frames, rates, ring_neighbours, strict=True)):
            out = analysis.consistency.apply(frame, rate, partners_used=partners_used,
                                             neighbours=near)
            if analysis.orientation is not None:
                out = self._held_orientation(analysis.orientation, frame, out, pools[index])
            held.append(out)
        return np.stack(held)

    def _orientation_pools(self, analysis: ScanAnalysis,
                           frames: Sequence[np.ndarray] | np.ndarray,
                           ring_neighbours: Sequence[Sequence[np.ndarray]],
                           earlier: Sequence[RawHarmonics | None] | None = None,
                           harmonics: Sequence[RawHarmonics | None] | None = None
                           ) -> list[OrientationPool]:
        """Per frame, the raw harmonics its anisotropy hold may pool (before it and after
        it, nearest first; :meth:`~.orientation.OrientationHold.apply`): the other frames
        of the call (a scan offline, a live batch), then ``earlier`` (the frames served
        before them, live); a single frame given without ``earlier`` (a held-out half)
        pools its ``ring_neighbours``. Empty where there is no hold or pooling is off
        (``config.pool_neighbour_rings``). ``harmonics``: those of ``frames``, where
        already made (live)."""
        hold = analysis.orientation
        if hold is None or not self.config.pool_neighbour_rings:
            return [([], [], None)] * len(frames)
        if len(frames) == 1 and earlier is None:
            return [([hold.harmonics(near) for near in ring_neighbours[0]], [], None)]
        own = (list(harmonics) if harmonics is not None
               else [hold.harmonics(frame) for frame in frames])
        before = list(earlier or ())
        return [(own[:index][::-1] + before, own[index + 1:], own[index])
                for index in range(len(own))]

    def _held_orientation(self, hold: OrientationHold, frame: np.ndarray, denoised: np.ndarray,
                          pool: OrientationPool) -> np.ndarray:
        """``denoised`` with the scan's anisotropy held to the raw counts (:mod:`.orientation`),
        pooled with ``pool``; as it was where that fails (recorded in :attr:`events`)."""
        earlier, later, own = pool
        try:
            return hold.apply(frame, denoised, earlier, later, own=own)
        except Exception as exc:  # noqa: BLE001 - the frame is served without the hold
            self.events.append(f"anisotropy hold skipped on a frame: {exc!r}")
            return denoised

    def denoise_frame(self, analysis: ScanAnalysis, *, method: str, frame: np.ndarray,
                      neighbours: np.ndarray | None = None) -> np.ndarray:
        """Expected counts of one new frame of the scan (the live path).

        Parameters
        ----------
        frame
            ``(H, W)`` counts with the scan's bad pixels zeroed.
        neighbours
            Mean of the neighbouring frames available (live: the previous one), or None.
        """
        return self.denoise_frames(analysis, method=method, frames=[frame],
                                   neighbours=[neighbours])[0]

    def denoise_frames(self, analysis: ScanAnalysis, *, method: str,
                       frames: Sequence[np.ndarray] | np.ndarray,
                       neighbours: Sequence[np.ndarray | None],
                       flips: int | None = None,
                       ring_neighbours: Sequence[Sequence[np.ndarray]] | None = None,
                       earlier: Sequence[RawHarmonics | None] | None = None,
                       harmonics: Sequence[RawHarmonics | None] | None = None
                       ) -> np.ndarray:
        """Expected counts of frames of the scan, in one call (the live path's batches).

        A live worker that has fallen behind passes the frames waiting together, with one
        flip each: the saving is in the flips; on a 2-core CPU a batch is not cheaper per
        frame than single frames (``bench/throughput.py``), on a GPU it is.

        Parameters
        ----------
        frames
            ``(H, W)`` counts with the scan's bad pixels zeroed.
        neighbours
            For each frame, the mean of its neighbouring frames available, or None.
        flips
            Test-time flips (default: the configuration's ``test_time_flips``).
        ring_neighbours
            For each frame, its neighbouring raw frames one by one, for the pooling of the
            ring means (:meth:`~.consistency.RawConsistency.apply`); default: each frame's
            ``neighbours`` as one frame (the live path's previous frame).
        earlier
            The raw harmonics (:meth:`~.orientation.OrientationHold.harmonics`) of the
            frames served before these, nearest first, pooled by the anisotropy hold with
            the frames of the call (the live path); None: a single frame pools its
            ``ring_neighbours``.
        harmonics
            The raw harmonics of ``frames``, where already made (the live path keeps them
            for the frames after); None: made here.

        Returns
        -------
        numpy.ndarray
            ``(N, H, W)`` float32.
        """
        if self.model is None:
            raise RuntimeError("denoise_frames() before fit(): no model")
        stack = np.stack([np.asarray(f, np.float32) for f in frames])
        if method == "noise2sr":
            return self.predict(analysis, method=method, frames=stack)
        context = _context_for(analysis, method)
        inputs, levels = [], []
        for frame, near in zip(stack, neighbours, strict=True):
            channels, level = input_channels(
                frame, context, near if self.config.use_neighbour_frames else None)
            inputs.append(channels)
            levels.append(level)
        rates = predict_rates(self.model, inputs, levels, device=self.device,
                              flips=flips or self.config.test_time_flips,
                              batch_size=self.config.inference_batch, tile=self.tile,
                              mixed_precision=self.config.mixed_precision, events=self.events)
        raw_neighbours = _ring_neighbours(neighbours, ring_neighbours)
        pools = self._orientation_pools(analysis, stack, raw_neighbours, earlier, harmonics)
        held = self._hold_to_raw(analysis, stack, rates,
                                 partners_used=uses_partners(analysis, method),
                                 ring_neighbours=raw_neighbours, pools=pools)
        return self.with_angular_model(analysis, stack, held, raw_neighbours, pools)

    # -- the whole job ----------------------------------------------------------------------
    def run(self, frames: np.ndarray, *, mask: np.ndarray | None = None,
            center: tuple[float, float] | None = None, poni: str | Path | dict | None = None,
            pairs: tuple[np.ndarray, np.ndarray] | None = None,
            bad_pixels: Literal["raise", "mask"] = "raise") -> DenoiseResult:
        """Analyse, choose a method, fine-tune within the budget and denoise every frame."""
        start = time.perf_counter()
        cfg = self.config
        analysis = self.analyse(frames, mask=mask, center=center, poni=poni,
                                bad_pixels=bad_pixels)
        method, reason = self.choose_method(analysis, budget_s=cfg.budget_s,
                                            have_pairs=pairs is not None)
        prepared = analysis.prepared
        if method in ("classical", "classical-nlm"):
            denoised = self._classical(analysis, engine=classical_engine(method))
        else:
            seconds = self._training_seconds(analysis, method, start)
            self.fit(analysis, method=method, seconds=seconds, pairs=pairs)
            if cfg.method == "auto" and method in ("symmetry", "thinning"):
                method, reason = self._check_against_classical(analysis, method, reason)
            if method == "classical":
                denoised = self._classical(analysis, engine="bm3d")
            else:
                denoised = self.predict(analysis, method=method)
                if self.blend is not None and not self.blend.first_only:
                    denoised = self._mix_with_classical(analysis, denoised, self.blend)
        denoised = analysis.noise.to_detector(self._finish(denoised, analysis, method),
                                              keep=~prepared.user_mask)
        elapsed = time.perf_counter() - start
        provenance = self.provenance(analysis, method, reason, elapsed)
        result_array = denoised[0] if prepared.single_frame else denoised
        return DenoiseResult(denoised=result_array, method=method, reason=reason,
                             provenance=provenance, analysis=analysis)

    def serve_frames(self, analysis: ScanAnalysis, *, method: str,
                     frames: Sequence[np.ndarray],
                     neighbours: Sequence[np.ndarray | None],
                     ring_neighbours: Sequence[Sequence[np.ndarray]] | None = None
                     ) -> np.ndarray:
        """Frames of the scan's detector denoised as :meth:`run` serves its own: the method
        that ran (network, mixed with the classical mode where :attr:`blend` says so, or
        the classical mode), each frame's total counts kept."""
        stack = np.stack([np.asarray(f, np.float32) for f in frames])
        if method in ("classical", "classical-nlm"):
            out = self._classical_frames(analysis, stack, classical_engine(method),
                                         ring_neighbours=_ring_neighbours(
                                             neighbours, ring_neighbours))
        elif method in _NO_DENOISER:
            out = stack.copy()
        else:
            out = self.denoise_frames(analysis, method=method, frames=stack,
                                      neighbours=neighbours,
                                      ring_neighbours=ring_neighbours)
            blend = self.blend
            if blend is not None and not blend.first_only:
                classical = self._classical_frames(
                    analysis, stack,
                    ring_neighbours=_ring_neighbours(neighbours, ring_neighbours))
                out = self._mixed(analysis, out, classical, blend)
        return keep_total_counts(out, stack, analysis.prepared.good,
                                 self.config.preserve_total_counts,
                                 spots=held_spots(analysis, method))

    def iq_check(self, analysis: ScanAnalysis, *, method: str,
                 integration: AzimuthalIntegration, npt: int,
                 sectors: Sequence[tuple[float, float] | None] = (None,),
                 serve: Callable[[np.ndarray, int, int], np.ndarray] | None = None,
                 frames: np.ndarray | None = None, max_frames: int = 4,
                 ring_prior: bool = True) -> list[IqCheck]:
        """Held-out check of this scan's denoised I(q) (:func:`~..integrate.heldout.
        held_out_iq`): calibrated sigmas and the q ranges that fall back to raw.

        Each of up to ``max_frames`` frames (default: the scan's analysed frames) is split
        in two; each half is denoised as the frames served are (``serve(half, index,
        which)``, default :meth:`serve_frames` with the neighbours thinned like the frame,
        half ``which`` of each: see :func:`~..integrate.heldout.held_out_iq`) and its
        I(q) scored against the other half's, raw and denoised, for the full ring (None)
        and each sector in ``sectors``, a sector's squared bias shrunk towards the full
        ring's (``ring_prior``). Once per scan: two denoising passes per frame. ``frames``
        must be among the analysed ones: each half is held to the scan's counts with its
        frame swapped for it (:func:`held_out_analysis`).
        """
        frames = analysis.prepared.frames if frames is None else np.asarray(frames)
        if len(frames) > max_frames:  # spread over the scan
            frames = frames[np.linspace(0, len(frames) - 1, max_frames).round().astype(int)]

        def by_engine(half: np.ndarray, index: int, which: int) -> np.ndarray:
            halves = thinned_neighbours(frames, index, seed=index, which=which)
            near = np.mean(halves, axis=0).astype(np.float32) if halves else None
            return self.serve_frames(held_out_analysis(analysis, frames[index], half),
                                     method=method, frames=[half], neighbours=[near],
                                     ring_neighbours=[halves])[0]

        return held_out_iq(serve or by_engine, list(frames), integration, npt=npt,
                           sectors=sectors, ring_prior=ring_prior)

    def _check_against_classical(self, analysis: ScanAnalysis, method: str,
                                 reason: str) -> tuple[str, str]:
        """Keep the network only if it beats the classical mode on a held-out split, and
        find where a mix of the two does better still.

        Scored on the middle frame of the scan: the network and the classical mode denoise
        one half of a binomial split; the Poisson deviance against the other half picks the
        winner (see :func:`~.selection.held_out_deviance`); if it is the network, the
        squared error against the other half, band by band of intensity, gives the weight of
        the network in a mix with the classical mode (:func:`~.selection.held_out_blend`):
        where both are about as good, their average is better than either. The scores and
        weights are recorded in the reason.
        """
        self.blend = None
        prepared = analysis.prepared
        if not prepared.countlike:
            return method, reason + "; held-out check skipped (non-integer counts)"
        frames, good = prepared.frames, prepared.good
        index = len(frames) // 2
        if frame_targets(analysis):
            # Neighbouring pixels share noise: a binomial half shares it with the other
            # half, a neighbouring frame does not. The frame is denoised with its other
            # neighbour only and scored against the next frame.
            half, rest, halves = next_frame_split(frames, index)
            score: Callable[[np.ndarray, np.ndarray], float] = mean_squared_error
            scored_by = "held-out squared error against the next frame"
        else:
            # The neighbours are thinned like the frame, so both denoisers see one dose.
            halves = thinned_neighbours(frames, index, seed=1, which=0)
            half_counts, rest = binomial_split(frames[index], seed=1)
            half = half_counts.astype(np.float32)
            score, scored_by = poisson_deviance, "held-out deviance"
        halved = np.mean(halves, axis=0).astype(np.float32) if halves else None
        self.angular = None
        by_network = np.asarray(self.denoise_frames(
            analysis, method=method, frames=[half], neighbours=[halved],
            ring_neighbours=[halves])[0], np.float64)
        # The network with the angular model mixed in where the split favours it: what is
        # then compared with (and mixed with) the classical mode.
        angular = self.check_angular_model(analysis, half, halves, by_network, rest)
        if self.angular is not None:
            by_network = self.with_angular_model(analysis, half[None], by_network[None],
                                                  [halves])[0].astype(np.float64)
        by_classical = self._classical_frames(analysis, half[None], ring_neighbours=[halves]
                                              )[0].astype(np.float64)
        network = score(by_network[good], rest[good])
        classical = score(by_classical[good], rest[good])
        scores = f"{scored_by}: network {network:.4f}, classical {classical:.4f}"
        if classical < network:
            self.angular = None
            return "classical", f"{reason}; but the classical mode won the {scores}"
        # The held spots keep the network's frame whole (:meth:`_mixed`): the weights are
        # fitted on the pixels they will mix.
        spots = held_spots(analysis, method)
        self.blend = held_out_blend(by_network, by_classical, rest, good,
                                    scored=None if spots is None else ~spots)
        if self.blend.first_only:
            return method, f"{reason}; {scores}{angular}"
        weights = ", ".join(f"{w:.2f}" for w in self.blend.weights)
        return method, (f"{reason}; {scores}; mixed with the classical mode by intensity band "
                        f"(edges {list(self.blend.edges)} x mean, network weights {weights}: "
                        f"held-out squared error){angular}")

    def check_angular_model(self, analysis: ScanAnalysis, half: np.ndarray,
                            halves: Sequence[np.ndarray], estimate: np.ndarray,
                            rest: np.ndarray) -> str:
        """How much of the per-shell angular model (:mod:`.angular`) to mix into the
        network's frames, band by band of radius, from a held-out split: ``estimate`` (the
        network's, without the model) and the model both see ``half`` (and the neighbours'
        halves ``halves``), and the squared error against ``rest`` sets each band's weight.
        Sets :attr:`angular` (used from then on by :meth:`denoise_frames`); returns a
        clause for the reason."""
        self.angular = None
        if not self.config.angular_model or analysis.center is None:
            return ""
        good = analysis.prepared.good
        try:
            by_model = self._angular_estimate(analysis, half, halves)
            if by_model is None:
                return ""
            radius, _ = self._polar_maps(analysis)
            fitted, summary = by_model
            blend = held_out_band_weights(fitted, np.asarray(estimate, np.float64), rest,
                                          good, radius, summary["orders"])
        except Exception as exc:  # noqa: BLE001 - the network serves without it
            self.events.append(f"per-shell angular model skipped: {exc!r}")
            return f"; per-shell angular model skipped ({type(exc).__name__}: {exc})"
        if blend.unused:
            return "; per-shell angular model not used (held-out squared error)"
        self.angular = blend
        used = sum(w > 0 for w in blend.weights)
        return (f"; per-shell angular model mixed in on {used} of {len(blend.weights)} bands "
                f"of {summary['band_px']} px (held-out squared error)")

    def _angular_estimate(self, analysis: ScanAnalysis, frame: np.ndarray,
                          neighbours: Sequence[np.ndarray],
                          fitter: ScanAngularModel | None = None
                          ) -> tuple[np.ndarray, dict[str, Any]] | None:
        """The angular model of ``frame`` pooled with its ``neighbours`` (per frame), with
        the pixels where it misfits set to NaN; None without a beam centre. With a
        ``fitter``, its bands and the structure it chose on an earlier frame."""
        if analysis.center is None:
            return None
        good = analysis.prepared.good
        pooled = np.asarray(frame, np.float64) + sum(
            (np.asarray(n, np.float64) for n in neighbours), np.zeros(frame.shape))
        radius, azimuth = self._polar_maps(analysis)
        if fitter is None:
            model, summary = angular_model(pooled, good, radius, azimuth)
        else:
            model, summary = fitter.fit(pooled, good, radius, azimuth)
        left_alone = misfit(pooled, model, good) | _spots_left_to_the_hold(analysis)
        model = np.where(left_alone, np.nan, model) / (1 + len(neighbours))
        return model, summary

    def _polar_maps(self, analysis: ScanAnalysis) -> tuple[np.ndarray, np.ndarray]:
        """Radius and azimuth of every pixel about the scan's beam centre (made once)."""
        center = analysis.center
        if center is None:
            raise ValueError("polar maps need a beam centre")
        key = (float(center[0]), float(center[1]))
        if self._polar is None or self._polar[0] != key:
            radius, azimuth = polar_maps(analysis.prepared.good.shape, key)
            self._polar = (key, radius, azimuth)
        return self._polar[1], self._polar[2]

    def with_angular_model(self, analysis: ScanAnalysis, frames: np.ndarray,
                            denoised: np.ndarray,
                            neighbours: Sequence[Sequence[np.ndarray]],
                            pools: list[OrientationPool] | None = None
                            ) -> np.ndarray:
        """``denoised`` mixed with each frame's angular model where :attr:`angular` says
        so, each 1 px shell keeping its total, each half of one across a ring's crest and
        each quarter across a narrow ring's (see :func:`~.angular.mix_within_shells`,
        :func:`_shell_parts`).
        A frame whose model fails is served without it (recorded in :attr:`events`).
        ``pools``: as :meth:`_hold_to_raw`'s, for the anisotropy hold after the mix."""
        blend = self.angular
        if blend is None or analysis.center is None:
            return denoised
        good = analysis.prepared.good
        radius, _ = self._polar_maps(analysis)
        weight = blend.band_weight(radius)
        if self._angular_fitter is None or self._angular_fitter[0] is not blend:
            self._angular_fitter = (blend, ScanAngularModel(
                bands=[b for b, w in enumerate(blend.weights) if w > 0]))
        fitter = self._angular_fitter[1]
        parts = _shell_parts(analysis)
        if pools is None:
            pools = self._orientation_pools(analysis, frames, neighbours)
        out = []
        for frame, estimate, near, pool in zip(frames, denoised, neighbours, pools,
                                               strict=True):
            try:
                fitted = self._angular_estimate(analysis, frame, near, fitter)
                mixed = (estimate if fitted is None else
                         mix_within_shells(estimate, fitted[0], weight, good, radius,
                                           shell_parts=parts))
                if fitted is not None and analysis.orientation is not None:
                    # The model of a frame pooled with fewer neighbours rests on fewer
                    # counts, and its bands may lack an order the scan shows: mixed in,
                    # it flattens the anisotropy the hold had kept (bench.bias, SAXS).
                    mixed = self._held_orientation(analysis.orientation, frame, mixed, pool)
            except Exception as exc:  # noqa: BLE001 - the network's frame is served
                self.events.append(f"per-shell angular model skipped on a frame: {exc!r}")
                mixed = estimate
            out.append(mixed)
        return np.stack(out).astype(np.float32)

    def _mix_with_classical(self, analysis: ScanAnalysis, denoised: np.ndarray,
                            blend: BlendWeights) -> np.ndarray:
        """The network's frames mixed with the classical mode's by ``blend`` (the scan's
        :attr:`blend`)."""
        frames = analysis.prepared.frames
        classical = self._classical_frames(
            analysis, frames,
            ring_neighbours=_each_frames_neighbours(frames))
        self.model_origin = f"{self.model_origin}, mixed with classical (bm3d)"
        return self._mixed(analysis, denoised, classical, blend).astype(np.float32)

    def _mixed(self, analysis: ScanAnalysis, network: np.ndarray, classical: np.ndarray,
               blend: BlendWeights) -> np.ndarray:
        """Each network frame mixed with its classical one by ``blend``, in the network's
        share of a pixel only: the angular model's share (its weight, :attr:`angular`) is
        left as it is. The model pools a whole shell and the neighbouring frames; a single
        frame's classical estimate mixed into it brings back that frame's noise (next to a
        SAXS beamstop, where the held-out split's few bright pixels give the classical mode
        a weight: ``bench/heldout.py``). The band weights are fitted on the whole mix:
        fitted on the network's share alone, at the split's half dose, they take in more
        of the classical mode than serves the full-dose frames.

        The spots held to the raw counts (:func:`held_spots`) keep the network's frame
        whole: both frames are held there to the same raw spot sums, so the mix would only
        change a spot's shape, and the classical mode's is broader (BM3D smooths a weak
        spot into its surroundings): mixed in, it lowered the lattice's strongest
        full-ring peak and the frame's PSNR (``bench.iq_ablation``, lattice)."""
        kept = self._kept_share(analysis)
        good = analysis.prepared.good
        return np.stack([blend.mix(net, cla, good, kept)
                         for net, cla in zip(network, classical, strict=True)])

    def _kept_share(self, analysis: ScanAnalysis) -> np.ndarray | None:
        """Per pixel, the share of the network's frame the classical mix leaves as it is:
        the angular model's weight, and the whole of a held spot (:meth:`_mixed`)."""
        kept = self._angular_share(analysis)
        if analysis.consistency is None:
            return kept
        spots = analysis.consistency.spots()
        if not spots.any():
            return kept
        return np.where(spots, 1.0, 0.0 if kept is None else kept)

    def _angular_share(self, analysis: ScanAnalysis) -> np.ndarray | None:
        """Per pixel, the angular model's weight (:attr:`angular`), or None without it."""
        if self.angular is None or analysis.center is None:
            return None
        radius, _ = self._polar_maps(analysis)
        return self.angular.band_weight(radius)

    def _training_seconds(self, analysis: ScanAnalysis, method: str, start: float) -> float:
        cfg = self.config
        if cfg.budget_s is None:
            return cfg.fine_tune_seconds(self.device.type)
        n_frames, height, width = analysis.prepared.frames.shape
        passes = cfg.noise2sr_passes if method == "noise2sr" else cfg.test_time_flips
        # Rough inference cost: a width-16 U-Net takes ~1 µs per pixel per pass on 2 CPU cores.
        per_pixel = 1.2e-6 if self.device.type == "cpu" else 2e-8
        inference = n_frames * height * width * passes * per_pixel * (cfg.width / 16) ** 2
        if cfg.method == "auto":  # the held-out check, and the classical mode if it wins
            # BM3D: ~40 µs per pixel on 2 CPU cores, and at least ~1 s a frame.
            inference += (n_frames + 1) * max(1.0, height * width * 4e-5)
        remaining = cfg.budget_s - (time.perf_counter() - start) - 1.3 * inference - 1.0
        return max(0.0, remaining)

    def _classical(self, analysis: ScanAnalysis, engine: Literal["bm3d", "nlm"]
                   ) -> np.ndarray:
        """The scan's frames denoised by the classical mode (the method that ran)."""
        self.model_origin = f"classical ({engine})"
        frames = analysis.prepared.frames
        return self._classical_frames(
            analysis, frames, engine,
            ring_neighbours=_each_frames_neighbours(frames))

    def _classical_frames(self, analysis: ScanAnalysis, frames: np.ndarray,
                          engine: Literal["bm3d", "nlm"] = "bm3d", *,
                          ring_neighbours: Sequence[Sequence[np.ndarray]] | None = None
                          ) -> np.ndarray:
        """Frames of the scan's detector denoised by the classical mode, held to their raw
        counts like the network's."""
        out = np.stack([self.classical_frame(analysis, frame, engine=engine)
                        for frame in frames])
        return self._hold_to_raw(analysis, frames, out,
                                 ring_neighbours=ring_neighbours).astype(np.float32)

    def classical_frames_held(self, analysis: ScanAnalysis, frames: Sequence[np.ndarray],
                              bads: Sequence[np.ndarray], *,
                              engine: Literal["bm3d", "nlm"] = "nlm",
                              ring_neighbours: Sequence[Sequence[np.ndarray]] | None = None
                              ) -> np.ndarray:
        """New frames of the scan (the live path) denoised by the classical mode, each
        with its own bad pixels, then held to their raw counts like the network's (rings,
        arcs, spots: :mod:`.consistency`).

        Parameters
        ----------
        frames
            ``(H, W)`` counts with their bad pixels zeroed.
        bads
            Each frame's bad pixels.
        ring_neighbours
            Per frame, neighbouring raw frames whose ring means may be pooled with its own.

        Returns
        -------
        numpy.ndarray
            ``(N, H, W)`` float32.
        """
        stack = np.stack([np.asarray(f, np.float32) for f in frames])
        out = np.stack([self.classical_frame(analysis, frame, engine=engine, bad=bad)
                        for frame, bad in zip(stack, bads, strict=True)])
        return self._hold_to_raw(analysis, stack, out,
                                 ring_neighbours=ring_neighbours).astype(np.float32)

    def classical_frame(self, analysis: ScanAnalysis, frame: np.ndarray, *,
                        engine: Literal["bm3d", "nlm"] = "bm3d",
                        bad: np.ndarray | None = None) -> np.ndarray:
        """One frame denoised by the classical mode (180° average where the scan's symmetry
        test holds, then Anscombe + ``engine``), not held to the raw counts.

        Parameters
        ----------
        frame
            ``(H, W)`` counts with the bad pixels zeroed.
        engine
            ``"bm3d"`` or ``"nlm"`` (:func:`classical_engine` of the method).
        bad
            The frame's bad pixels (default: the scan's).
        """
        from .classical import classical_denoise

        validity = analysis.symmetry.valid if analysis.symmetry is not None else None
        return classical_denoise(frame, mask=analysis.prepared.bad if bad is None else bad,
                                 center=analysis.center, validity=validity, engine=engine)

    def _finish(self, denoised: np.ndarray, analysis: ScanAnalysis, method: str
                ) -> np.ndarray:
        """Keep each frame's total counts (its held spots as they are) and zero the pixels
        the user masked."""
        prepared = analysis.prepared
        return scale_to_raw_counts(denoised, prepared.frames, prepared.good,
                                   zeroed=prepared.user_mask,
                                   preserve=self.config.preserve_total_counts,
                                   spots=held_spots(analysis, method))

    def provenance(self, analysis: ScanAnalysis, method: str, reason: str,
                   elapsed: float) -> dict[str, Any]:
        """JSON-safe record of how a result was made."""
        from .. import __version__

        record: dict[str, Any] = {
            "package": "bluesky-symdenoise",
            "version": __version__,
            "torch_version": torch.__version__,
            "method": method,
            "reason": reason,
            "config": self.config.model_dump(mode="json"),
            "device": str(self.device),
            "model": self.model_origin,
            "model_hash": model_hash(self.model) if self.model is not None else None,
            "beam_center": list(analysis.center) if analysis.center is not None else None,
            "symmetry": analysis.symmetry.summary() if analysis.symmetry else None,
            "isotropy": analysis.isotropy.summary() if analysis.isotropy else None,
            "symmetry_usage": symmetry_usage(analysis, method, self.config)["text"],
            "raw_consistency": (analysis.consistency.summary() if analysis.consistency
                                else "off"),
            "orientation_hold": (analysis.orientation.summary() if analysis.orientation
                                 else None),
            "notes": analysis.notes,
            "events": self.events,
            "n_defects": int(analysis.prepared.defects.sum()),
            "detector_noise": analysis.noise.as_dict(),
            "memory": {"budget_gb": round(self.memory_budget_gb, 3),
                       "inference_tile_px": self.tile},
            "seconds": round(elapsed, 2),
        }
        if self.training is not None:
            record["training"] = self.training.as_dict()
        if self.blend is not None and method not in ("classical", "classical-nlm"):
            record["classical_mix"] = self.blend.summary()
        if self.angular is not None:
            record["angular_model"] = self.angular.summary()
        return record


#: The pixels off the spots carry a frame's total-count difference only while their
#: factor stays within this ratio of 1 (else the whole frame is scaled, as without spots).
MAX_OFF_SPOT_FACTOR = 2.0


def keep_total_counts(denoised: np.ndarray, frames: np.ndarray, good: np.ndarray,
                      preserve: bool = True, *, spots: np.ndarray | None = None
                      ) -> np.ndarray:
    """Denoised frames (a float32 copy) scaled to their raw frames' total counts over
    ``good`` (frames of fewer than 50 counts are left alone).

    ``spots``: pixels already held to their raw counts spot by spot
    (:meth:`.consistency.RawConsistency.spots`). They keep their values and the other good
    pixels carry the whole difference: the difference comes from the denoiser's level off
    the spots (its background), and one factor over the frame would scale every spot's
    integrated intensity by it, away from its raw counts (``bench.iq_ablation``, a
    lattice's spots). Where the factor for the other pixels would fall outside
    ``1 / MAX_OFF_SPOT_FACTOR`` to :data:`MAX_OFF_SPOT_FACTOR` (spots that hold most of
    the frame's counts), the frame is scaled whole, as without spots.
    """
    denoised = np.asarray(denoised, np.float32).copy()
    if not preserve:
        return denoised
    held = good & spots if spots is not None else None
    off = good & ~spots if spots is not None else None
    for raw, out in zip(frames, denoised, strict=True):
        raw_total, out_total = float(raw[good].sum()), float(out[good].sum())
        if raw_total < 50 or out_total <= 0:
            continue
        if held is not None and off is not None and held.any():
            off_total = float(out[off].sum())
            factor = ((raw_total - float(out[held].sum())) / off_total if off_total > 0
                      else 0.0)
            if 1.0 / MAX_OFF_SPOT_FACTOR <= factor <= MAX_OFF_SPOT_FACTOR:
                out[off] *= np.float32(factor)
                continue
        out *= np.float32(raw_total / out_total)
    return denoised


def scale_to_raw_counts(denoised: np.ndarray, frames: np.ndarray, good: np.ndarray, *,
                        zeroed: np.ndarray, preserve: bool = True,
                        spots: np.ndarray | None = None) -> np.ndarray:
    """The last step of every denoised frame, offline and live: NaN set to 0, each frame's
    total counts over ``good`` kept (:func:`keep_total_counts`), ``zeroed`` pixels set to 0.

    Parameters
    ----------
    denoised, frames
        ``(N, H, W)`` denoised frames and the raw counts they came from.
    good
        Pixels whose counts are kept.
    zeroed
        Pixels set to 0 in the output: offline the user's mask (hot and dead pixels keep
        the denoiser's estimate), live every bad pixel of the frame.
    preserve
        ``DenoiseConfig.preserve_total_counts``.
    spots
        Pixels held to their raw counts spot by spot, kept as they are
        (:func:`keep_total_counts`, :func:`held_spots`); None: the whole frame is scaled.
    """
    out = keep_total_counts(np.nan_to_num(np.asarray(denoised, np.float32)), frames, good,
                            preserve, spots=spots)
    out[:, zeroed] = 0.0
    return out


def classical_engine(method: str) -> Literal["bm3d", "nlm"]:
    """The classical denoiser of ``method``: BM3D for ``"classical"``, NLM (about 10 times
    faster) for ``"classical-nlm"`` and the live interim mode of the network methods."""
    return "bm3d" if method == "classical" else "nlm"


def _context_for(analysis: ScanAnalysis, method: str) -> ChannelContext:
    """The scan's channel context, without symmetry for the symmetry-free method."""
    if method == "thinning":
        return ChannelContext.without_symmetry(analysis.context.good)
    return analysis.context


def _shell_parts(analysis: ScanAnalysis) -> np.ndarray | None:
    """Per 1 px shell about the beam centre (``floor(radius)``), into how many parts the
    angular model's mix splits it, each keeping its own total
    (:func:`~.angular.mix_within_shells`): 2 for the shells touching a 1 px ring bin at a
    ring's crest (:attr:`~.consistency.RawConsistency.ring_crests`), 4 where that ring is
    narrower than the model's spline follows (``narrow_crests``), 1 elsewhere. Bin ``k`` is
    centred on radius ``k`` and shares each pixel with the next bin, so shell ``k``
    touches bins ``k`` and ``k+1``."""
    consistency = analysis.consistency
    if consistency is None or consistency.ring_crests is None \
            or not consistency.ring_crests.any():
        return None
    crests = consistency.ring_crests

    def touching(bins: np.ndarray) -> np.ndarray:
        bins = np.asarray(bins, bool)
        return bins | np.concatenate([bins[1:], [False]])

    parts = np.where(touching(crests), 2, 1)
    narrow = consistency.narrow_crests
    if narrow is not None:
        parts[touching(narrow)] = MAX_SHELL_PARTS
    return parts


def _spots_left_to_the_hold(analysis: ScanAnalysis) -> np.ndarray | bool:
    """Pixels the per-shell angular model leaves to the engine's own estimate besides its
    misfits: on a readout-dominated scan, the spots held to the raw counts
    (:meth:`~.consistency.RawConsistency.spots`). The misfit test (a Poisson z of
    :data:`~.angular.MISFIT_Z`) lacks the power there to find a faint one-sided feature, and
    the model, mixed in after the holds, then spread it around its shell (``bench.flat_panel
    --counting-twins``). On counts the misfit test finds such spots itself; False there
    (nothing added)."""
    consistency = analysis.consistency
    if consistency is None or not consistency.readout_dominated:
        return False
    return consistency.spots()


def uses_partners(analysis: ScanAnalysis, method: str) -> bool:
    """Whether ``method`` averages 180° partners anywhere on this scan (then the raw
    consistency leaves spots with a partner alone, see :mod:`.consistency`)."""
    if method in _NO_DENOISER or method == "noise2sr":
        return False
    context = _context_for(analysis, method)
    return bool(context.symmetric is not None and context.symmetric.any())


def held_spots(analysis: ScanAnalysis | None, method: str) -> np.ndarray | None:
    """The pixels ``method``'s frames hold to the raw counts spot by spot on this scan
    (:meth:`.consistency.RawConsistency.spots`), which the total-count rescale leaves as
    they are (:func:`keep_total_counts`); None without a raw consistency or a denoiser."""
    if analysis is None or analysis.consistency is None or method in _NO_DENOISER:
        return None
    return analysis.consistency.spots()


#: Methods that serve frames without any denoiser (the live plugin's last resort).
_NO_DENOISER = ("passthrough", "none")


def violation_map(analysis: ScanAnalysis, method: str) -> np.ndarray | None:
    """Where the scan broke the symmetries the engine tests, as a ``uint8`` bit map
    (:data:`VIOLATION_BITS`), or None when nothing was tested (no beam centre)."""
    if analysis.symmetry is None:
        return None
    out = analysis.symmetry.violation.astype(np.uint8)
    if analysis.isotropy is not None:
        out |= analysis.isotropy.violation.astype(np.uint8) << 1
    if analysis.consistency is not None:
        spots = analysis.consistency.spots()
        out |= spots.astype(np.uint8) << 2
    return out


def symmetry_usage(analysis: ScanAnalysis, method: str,
                   config: DenoiseConfig | None = None) -> dict[str, Any]:
    """Which symmetries ``method`` relies on for this scan, and why, in numbers and words.

    What a view or a provenance record says about symmetry comes from here, so it always
    agrees with what the engine did. JSON-safe.

    Returns
    -------
    dict
        ``rotation_180`` and ``azimuthal``, each ``{"tested", "used", "fraction_violated",
        "text"}`` (``rotation_180`` adds ``fraction_paired``), and ``text``, one line for
        both.
    """
    limit = (config or DenoiseConfig()).max_symmetry_violation
    sym, iso = analysis.symmetry, analysis.isotropy
    partners = uses_partners(analysis, method)
    rings = (method not in _NO_DENOISER and not method.startswith("classical")
             and method not in ("thinning", "noise2sr")
             and _context_for(analysis, method).rings is not None)
    rotation: dict[str, Any]
    azimuthal: dict[str, Any]
    if sym is None:
        why = ("no beam centre" if analysis.center is None else "not tested")
        rotation = {"tested": False, "used": False, "fraction_paired": None,
                    "fraction_violated": None, "text": f"180° symmetry not used: {why}"}
        azimuthal = {"tested": False, "used": False, "fraction_violated": None,
                     "text": f"ring symmetry not used: {why}"}
    else:
        paired, violated = 100 * sym.fraction_paired, 100 * sym.fraction_violated
        if partners and violated == 0:
            text = (f"180° symmetry used on every paired pixel ({paired:.0f} % of pixels "
                    "paired; the local test found no violation)")
        elif partners:
            text = (f"180° symmetry used, except on {violated:.2f} % of paired pixels where "
                    f"the local test rejected it ({paired:.0f} % of pixels paired)")
        elif method == "thinning" and sym.fraction_violated > limit:
            text = (f"180° symmetry not used: rejected on {violated:.2f} % of paired pixels "
                    f"(more than {100 * limit:g} %), so symmetry-free targets")
        else:
            text = (f"180° symmetry not used by method {method!r} (local test: rejected on "
                    f"{violated:.2f} % of paired pixels)")
        rotation = {"tested": True, "used": partners,
                    "fraction_paired": round(sym.fraction_paired, 4),
                    "fraction_violated": round(sym.fraction_violated, 5), "text": text}
        iso_violated = iso.fraction_violated if iso is not None else None
        if iso_violated is None:
            iso_text = "ring symmetry not tested"
        elif rings:
            iso_text = (f"ring symmetry used (ring and arc means), except on "
                        f"{100 * iso_violated:.2f} % of pixels where the local test rejected "
                        "it")
        else:
            iso_text = (f"ring symmetry not used by method {method!r} (local test: rejected "
                        f"on {100 * iso_violated:.2f} % of pixels)")
        azimuthal = {"tested": iso is not None, "used": bool(rings),
                     "fraction_violated": (round(iso_violated, 5) if iso_violated is not None
                                           else None), "text": iso_text}
    rotation["limit"] = limit
    return {"method": method, "rotation_180": rotation, "azimuthal": azimuthal,
            "text": f"{rotation['text']}; {azimuthal['text']}"}


def _padded(shape: Sequence[int], multiple: int) -> tuple[int, ...]:
    return tuple(-(-s // multiple) * multiple for s in shape)


def frame_targets(analysis: ScanAnalysis) -> bool:
    """Whether the scan's independent copies are its frames, not thinned halves: where
    neighbouring pixels share noise (an integrating detector's point spread, measured by
    :func:`~.detector_noise.calibrate`) and the scan has more than one frame."""
    return analysis.noise.correlated and len(analysis.prepared.frames) >= 2


def next_frame_split(frames: np.ndarray, index: int
                     ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The held-out split of ``frames[index]`` where neighbouring pixels share noise
    (:func:`frame_targets`): the frame itself (float32), the next frame (the previous one
    for the last frame) as the independent copy it is scored against (float64), and its
    other neighbouring frames, the ones it may be denoised with (float32)."""
    target = index + 1 if index + 1 < len(frames) else index - 1
    others = [np.asarray(frames[i], np.float32) for i in (index - 1, index + 1)
              if 0 <= i < len(frames) and i != target]
    return np.asarray(frames[index], np.float32), np.asarray(frames[target], np.float64), others


def thinned_neighbours(frames: np.ndarray, index: int, *, seed: int,
                       which: int = 0) -> list[np.ndarray]:
    """The neighbours of ``frames[index]`` at half dose, for a held-out check of a split
    frame: half ``which`` (0 or 1) of a binomial split of each neighbouring frame,
    independent of the frame's own split (the frame's half ``which`` takes its neighbours'
    halves ``which``, so the two denoised halves share no counts)."""
    picks = [i for i in (index - 1, index + 1) if 0 <= i < len(frames)]
    return [binomial_split(frames[i], seed=seed + 7919 * (i + 1))[which].astype(np.float32)
            for i in picks]


def _each_frames_neighbours(frames: np.ndarray) -> list[list[np.ndarray]]:
    """For each frame of a scan, its neighbouring frames one by one (offline: both)."""
    return [neighbour_frames(frames, index) for index in range(len(frames))]


def _ring_neighbours(neighbours: Sequence[np.ndarray | None],
                     ring_neighbours: Sequence[Sequence[np.ndarray]] | None
                     ) -> Sequence[Sequence[np.ndarray]]:
    """Per frame, the raw neighbours its ring means are pooled with: as given, or each
    frame's ``neighbours`` taken as one frame."""
    if ring_neighbours is not None:
        return ring_neighbours
    return [[] if near is None else [near] for near in neighbours]


def scan_geometry(shape: tuple[int, int], *, center: tuple[float, float] | None = None,
                  poni: str | Path | dict | None = None) -> DetectorGeometry | None:
    """The detector geometry of a scan: from a PONI when given (its own centre, which may
    lie off the detector), else from a beam centre ``(row, col)`` (which must lie on it;
    pixel size, distance and wavelength are then defaults); None without either.

    Raises
    ------
    GeometryError
        An unreadable PONI, or a centre off the detector or not finite.
    """
    if poni is not None:
        return DetectorGeometry.from_poni(poni, shape=shape)
    if center is not None:
        return DetectorGeometry.from_center(shape, center)
    return None


def _resolve_center(shape: tuple[int, int], center: tuple[float, float] | None,
                    poni: str | Path | dict | None, notes: list[str]
                    ) -> tuple[float, float] | None:
    """Beam centre from ``center`` or a PONI; raise if it is off the detector."""
    if center is not None:
        try:
            row, col = (float(v) for v in center)
        except (TypeError, ValueError) as exc:
            raise InputError(f"center must be (row, col) in pixels, got {center!r}") from exc
        try:
            geometry = DetectorGeometry.from_center(shape, (row, col))
        except GeometryError as exc:
            raise InputError(str(exc)) from exc
        return geometry.center
    if poni is not None:
        try:
            geometry = DetectorGeometry.from_poni(poni, shape=shape)
            geometry.check_center_on_detector()
        except GeometryError as exc:
            raise InputError(str(exc)) from exc
        notes.append(f"beam centre from PONI: ({geometry.center[0]:.2f}, "
                     f"{geometry.center[1]:.2f})")
        return geometry.center
    notes.append("no beam centre given: symmetry not used")
    return None


def _photon_equivalent(frames: np.ndarray, mask: np.ndarray | None, noise: DetectorNoise
                       ) -> tuple[np.ndarray, np.ndarray | None, NoiseCalibration]:
    """An integrating detector's frames calibrated (:func:`.detector_noise.calibrate`) and
    converted to shifted photon-equivalent frames; saturated pixels (at the integer dtype's
    maximum) join the mask, as they would in :func:`~.preprocess.prepare_frames` (the
    conversion to float loses the dtype). Frames of a shape the checks reject are passed
    on unchanged for :func:`~.preprocess.prepare_frames` to reject."""
    array = np.asarray(frames)
    if array.ndim not in (2, 3) or not np.issubdtype(array.dtype, np.number) \
            or np.iscomplexobj(array):
        return frames, mask, NoiseCalibration()
    stack = array if array.ndim == 3 else array[None]
    bad = np.zeros(stack.shape[1:], bool) if mask is None else np.asarray(mask, bool)
    if bad.shape != stack.shape[1:]:
        return frames, mask, NoiseCalibration()
    if np.issubdtype(stack.dtype, np.integer):
        saturated = np.any(stack == np.iinfo(stack.dtype).max, axis=0)
        if saturated.any():
            bad = bad | saturated
            mask = bad
    good = ~bad & np.all(np.isfinite(stack), axis=0)
    try:
        calibration = calibrate(stack, good, noise)
    except ValueError as exc:
        raise InputError(f"integrating detector: {exc}") from exc
    return calibration.to_photons(array), mask, calibration
