"""The denoiser's configuration: one validated object, serialisable into provenance."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .detector_noise import DetectorNoise

__all__ = ["DEVICES", "DEVICE_PATTERN", "METHODS", "DenoiseConfig", "Method"]

Method = Literal["auto", "symmetry", "thinning", "noise2sr", "supervised", "classical",
                 "classical-nlm"]
METHODS: tuple[str, ...] = ("auto", "symmetry", "thinning", "noise2sr", "supervised",
                            "classical", "classical-nlm")
#: Devices by name; ``"cuda:N"`` picks one GPU of several (:data:`DEVICE_PATTERN`).
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"


class DenoiseConfig(BaseModel):
    """How to denoise one scan.

    Attributes
    ----------
    method
        ``"auto"`` picks per scan and records why. ``"symmetry"``: the network fine-tuned with
        thinning targets, fed with symmetry partners (where the local test holds) and
        neighbouring frames. ``"thinning"``: the same without symmetry. ``"noise2sr"``:
        zero-shot random sub-sampling (Noise2SR). ``"supervised"``: low/high-count pairs
        (Oppliger 2024). ``"classical"``/``"classical-nlm"``: 180° average + Anscombe + BM3D
        or NLM.
    device
        ``"auto"`` (CUDA if present, else CPU), ``"cpu"`` or ``"cuda"``.
    budget_s
        Wall-time budget of one :func:`~bluesky_symdenoise.denoise` call (preparation,
        fine-tuning and inference). ``None``: 60 s of fine-tuning on CPU, 20 s on GPU.
    keep_raw_consistency
        Hold the network's frames to the raw counts where these can prove it wrong: ring
        means rescaled to the raw ones, features without a 180° partner given back their
        raw intensity (see :mod:`~bluesky_symdenoise.denoise.consistency`).
    pool_neighbour_rings
        Where a frame's ring means agree with its neighbouring frames' within the noise,
        hold its rings to the means pooled over them (so its full-ring I(q) rests on two or
        three frames' counts; the live path pools with the previous frame); where a ring
        appeared, vanished or moved, to the frame's own (see
        :func:`~bluesky_symdenoise.denoise.consistency.pooled_ring_means`). The held
        spots' raw sums are pooled the same way, spot by spot
        (:meth:`~bluesky_symdenoise.denoise.consistency.SpotSums.pooled_sums`), and the
        anisotropy hold pools the raw harmonics of the scan's frames where they agree
        (:meth:`~bluesky_symdenoise.denoise.orientation.OrientationHold.apply`).
    hold_orientation
        Hold the low angular harmonics a scan's raw counts show (an aligned SAXS or fibre
        pattern's orientation) in the denoised frames to the raw counts', pooled over
        radius, so that denoising does not flatten the anisotropy (see
        :mod:`~bluesky_symdenoise.denoise.orientation`). Needs ``keep_raw_consistency``.
    angular_model
        ``auto``: after the held-out check, mix in the per-shell angular model
        (:mod:`~bluesky_symdenoise.denoise.angular`) band by band of radius where the
        held-out split favours it, never where it misfits; shells keep their totals.
    feature_z_threshold
        Level of the spot-scale 180° test that marks a feature without a partner.
    sampler_threads
        Background threads drawing the training batches while the network trains; None:
        up to 4 on a GPU (leaving two cores), none on a CPU
        (:func:`~bluesky_symdenoise.denoise.training.sampler_threads`).
    inference_batch
        Frames per forward pass at inference; None: the device's choice (CUDA 8, CPU 1: on
        a CPU a batch is not cheaper per frame). Halved on out-of-memory.
    detector
        What the frames are: photon counts (default) or an integrating detector's ADU with
        its gain, readout noise and offset (estimated from the scan where not given; see
        :mod:`~bluesky_symdenoise.denoise.detector_noise`).
    max_memory_gb
        How much the process's resident memory may grow while a scan is denoised; None:
        :func:`~bluesky_symdenoise.denoise.memory.default_memory_budget_gb` (1.5 GB, or a
        quarter of the memory available, if less). The network runs in tiles that fit it,
        and the live path passes frames through raw, flagged, rather than exceed it
        (:mod:`~bluesky_symdenoise.denoise.memory`).
    max_symmetry_violation
        ``method="auto"`` uses symmetry only if the scan rejects it on at most this fraction
        of paired pixels: where many features lack a partner, fainter ones the test cannot
        see are likely too, and symmetry would halve them.
    """

    model_config = ConfigDict(validate_assignment=True, extra="forbid")

    method: Method = "auto"
    device: str = Field(default="auto", pattern=DEVICE_PATTERN)
    budget_s: float | None = Field(default=None, ge=0)
    refine_center: bool = True
    symmetry_z_threshold: float = Field(default=5.5, gt=0)
    use_neighbour_frames: bool = True
    use_pretrained: bool = True
    width: int = Field(default=16, ge=4, le=128)
    depth: int = Field(default=3, ge=1, le=5)
    patch_size: int = Field(default=96, ge=32)
    batch_size: int = Field(default=8, ge=1)
    learning_rate: float = Field(default=3e-4, gt=0)
    thinning_p: tuple[float, float] = (0.5, 0.9)
    max_steps: int = Field(default=20000, ge=0)
    test_time_flips: int = Field(default=4, ge=1, le=4)
    inference_batch: int | None = Field(default=None, ge=1)
    noise2sr_passes: int = Field(default=8, ge=1)
    preserve_total_counts: bool = True
    keep_raw_consistency: bool = True
    pool_neighbour_rings: bool = True
    hold_orientation: bool = True
    angular_model: bool = True
    feature_z_threshold: float = Field(default=4.0, gt=0)
    max_symmetry_violation: float = Field(default=0.05, ge=0, le=1)
    mixed_precision: bool = True
    sampler_threads: int | None = Field(default=None, ge=0, le=32)
    max_memory_gb: float | None = Field(default=None, gt=0)
    detector: DetectorNoise = DetectorNoise()
    seed: int = 0

    def fine_tune_seconds(self, device_type: str) -> float:
        """Default fine-tuning time when no budget is given."""
        return 60.0 if device_type == "cpu" else 20.0
