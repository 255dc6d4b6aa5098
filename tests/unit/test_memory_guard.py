"""The memory budget of a live scan: measured resident memory, claims by the stages running,
and the live plugin's degradation (network -> classical fast mode -> raw), each frame
flagged with why. Real RSS, a real engine; the pressure comes from claims held by the test,
as a concurrent stage (the trainer) would hold them."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_symdenoise.denoise.config import DenoiseConfig
from bluesky_symdenoise.denoise.memory import HEADROOM, MemoryGuard, release_free_memory

_MB = 1 << 20


def test_a_claim_is_reserved_while_its_stage_runs_and_refuses_what_would_not_fit():
    guard = MemoryGuard(budget_gb=1.0)
    with guard.claim(600 * _MB) as first:
        assert first is None and guard.reserved == 600 * _MB
        with guard.claim(600 * _MB) as second:
            assert second is not None
            assert "0.59 GB reserved by stages running" in second
            assert "0.59 GB needed" in second and "max_memory_gb=1.00" in second
            assert guard.reserved == 600 * _MB  # a refused claim reserves nothing
    assert guard.reserved == 0


def test_the_growth_is_the_resident_memory_the_scan_added():
    release_free_memory()
    guard = MemoryGuard(budget_gb=0.05)
    assert guard.check() is None
    block = np.ones(100 * _MB, np.uint8)  # touched: resident
    over = guard.check()
    assert over is not None and "resident memory grew 0.1" in over
    assert guard.peak_growth >= 95 * _MB
    del block
    assert guard.growth() < 50 * _MB  # freed pages handed back, not counted


@pytest.fixture(scope="module")
def warmed_up():
    """A live engine warmed up on a 512 x 512 powder scan, serving through the shipped
    pre-trained network (the interim model) until fine-tuning, which is not run here."""
    from bluesky_symdenoise.denoise.live import LiveDenoiser
    from bluesky_symdenoise.simulate.scenes import make_scene

    scene = make_scene("powder", shape=(512, 512), seed=11)
    rng = np.random.default_rng(11)
    frames = [scene.expose(2.0, rng) for _ in range(4)]
    engine = LiveDenoiser(DenoiseConfig(method="symmetry"), asked=("method",), budget_s=5)
    assert engine.warm_up(frames, shape=(512, 512), mask=scene.mask,
                          center=scene.geometry.center) is None
    assert engine.start_interim() is None
    if engine.interim is None:
        pytest.skip("no pre-trained base model installed")
    return engine, scene.expose(2.0, rng)


def _pressed(engine, free_bytes: int) -> MemoryGuard:
    """A fresh guard on ``engine`` with only ``free_bytes`` of its budget left."""
    release_free_memory()  # the baseline as the guard's own samples see it
    engine.guard = guard = MemoryGuard(budget_gb=1.0)
    guard.reserved = int((1.0 - HEADROOM) * guard.budget_bytes) - free_bytes
    return guard


def test_the_network_serves_when_its_transients_fit(warmed_up):
    engine, frame = warmed_up
    _pressed(engine, 700 * _MB)
    [served] = engine.serve([frame])
    assert served.denoised_by == "network:base (interim)" and not served.flags


def test_a_frame_the_network_cannot_serve_within_the_budget_goes_classical_flagged(
        warmed_up):
    from bluesky_symdenoise.denoise.live import _SERVE_CLASSICAL_BYTES_PER_PIXEL

    engine, frame = warmed_up
    _pressed(engine, 0)
    network = engine._network_bytes(1)  # with the pressed guard's budget
    classical = frame.size * _SERVE_CLASSICAL_BYTES_PER_PIXEL
    assert network > 2 * classical
    _pressed(engine, (network + classical) // 2)
    [served] = engine.serve([frame])
    assert served.denoised_by == "classical-nlm (memory budget)"
    assert any("classical fast mode instead of the network" in f and "max_memory_gb" in f
               for f in served.flags)
    good = ~engine.analysis.prepared.bad
    assert np.isfinite(served.denoised).all()
    assert served.denoised[good].std() < frame[good].std()  # denoised, not raw


def test_a_batch_the_network_cannot_take_at_once_goes_through_it_frame_by_frame(warmed_up):
    engine, frame = warmed_up
    _pressed(engine, 0)
    one, two = engine._network_bytes(1), engine._network_bytes(2)
    _pressed(engine, (one + two) // 2)
    served = engine.serve([frame, frame.copy()])
    assert [s.denoised_by for s in served] == ["network:base (interim)"] * 2
    assert not any(s.flags for s in served)


def test_a_frame_nothing_can_serve_within_the_budget_passes_raw_flagged(warmed_up):
    engine, frame = warmed_up
    _pressed(engine, 1 * _MB)
    [served] = engine.serve([frame])
    assert served.denoised_by == "none (memory budget)"
    assert any("memory budget" in f and "raw passed through" in f for f in served.flags)
    good = ~engine.analysis.prepared.bad
    np.testing.assert_allclose(served.denoised[good], frame[good])


def test_fine_tuning_that_would_not_fit_is_skipped_and_says_why(warmed_up):
    import threading

    engine, _ = warmed_up
    _pressed(engine, 1 * _MB)
    engine.fine_tune(threading.Event())
    assert engine.network_note.startswith("not trained (memory budget:")
    assert not engine.network_ready


def test_the_network_tile_comes_from_the_budget_on_a_cpu_and_free_memory_on_a_gpu():
    from bluesky_symdenoise.denoise.memory import device_tile, inference_tile

    assert device_tile("cpu", 1.5, 12) == inference_tile(1.5, 12)
    small, large = (device_tile("cuda", 1.5, 12, free_bytes=gb << 30) for gb in (2, 80))
    assert small < large  # a larger free GPU memory, larger tiles
    assert large > 2162 + 128  # an Eiger2 4M frame in one tile on an 80 GB GPU
    assert small >= 128


def test_a_scan_whose_analysis_would_not_fit_passes_every_frame_raw_flagged():
    from bluesky_symdenoise.denoise.live import LiveDenoiser
    from bluesky_symdenoise.simulate.scenes import make_scene

    scene = make_scene("powder", shape=(512, 512), seed=12)
    rng = np.random.default_rng(12)
    frames = [scene.expose(2.0, rng) for _ in range(3)]
    engine = LiveDenoiser(DenoiseConfig(max_memory_gb=0.05), budget_s=0)
    warning = engine.warm_up(frames, shape=(512, 512), mask=scene.mask,
                             center=scene.geometry.center)
    assert warning is not None and "max_memory_gb=0.05" in warning
    assert engine.method == "passthrough" and engine.analysis is None
    assert engine.network_note.startswith("no network: memory budget")
    [served] = engine.serve([frames[-1]])
    assert served.denoised_by == "none (memory budget)"
    assert any("raw passed through" in flag for flag in served.flags)
    good = ~scene.mask
    np.testing.assert_allclose(served.denoised[good], frames[-1][good])


def _flat_panel_frames(seed: int, size: int, n: int = 4):
    """Dark-subtracted flat-panel frames in ADU (a third of the pixels negative)."""
    from bluesky_symdenoise.simulate.noise import measure_dark
    from bluesky_symdenoise.simulate.scenes import make_scene

    scene = make_scene("powder", shape=(size, size), seed=seed, detector="Perkin")
    rng = np.random.default_rng(seed)
    dark = measure_dark(scene.expectation.shape, rng=rng, read_noise=4.0, offset=100.0)
    frames = [scene.expose_integrating(1.0, rng, gain=7.0, read_noise=4.0, offset=100.0,
                                       dark=dark) for _ in range(n)]
    return scene, frames


def _served_in_adu(engine, frame):
    [served] = engine.serve([frame])
    assert served.denoised_by == "none (memory budget)"
    assert not any("negative" in flag for flag in served.flags), served.flags
    return engine.noise.to_detector(served.denoised, keep=~served.bad)


@pytest.mark.fast
def test_an_integrating_scan_whose_analysis_would_not_fit_passes_its_adu_as_they_came():
    """Negative ADU are data: raw frames passed through for memory keep them (they were
    once masked as broken pixels, a third of a weak flat-panel frame lost)."""
    from bluesky_symdenoise.denoise.detector_noise import DetectorNoise
    from bluesky_symdenoise.denoise.live import LiveDenoiser

    scene, frames = _flat_panel_frames(21, 512)
    good = ~scene.mask
    assert (frames[-1][good] < 0).mean() > 0.1
    engine = LiveDenoiser(DenoiseConfig(max_memory_gb=0.05,
                                        detector=DetectorNoise(kind="integrating")), budget_s=0)
    warning = engine.warm_up(frames[:3], shape=(512, 512), mask=scene.mask,
                             center=scene.geometry.center)
    assert warning is not None and engine.analysis is None
    assert engine.noise.integrating and "not calibrated" in engine.noise.source
    out = _served_in_adu(engine, frames[-1])
    np.testing.assert_allclose(out[good], frames[-1][good], atol=1e-3)


@pytest.mark.fast
def test_an_integrating_scan_let_go_after_its_analysis_keeps_its_calibration():
    """The analysis fits, then nothing else does (a concurrent stage holds the rest): the
    analysis is let go, the calibration is kept, and raw frames pass in ADU, negatives
    included."""
    from bluesky_symdenoise.denoise.detector_noise import DetectorNoise
    from bluesky_symdenoise.denoise.live import LiveDenoiser

    class RoomForTheAnalysisOnly(MemoryGuard):
        """Grants the first claim (the analysis), refuses every later one, as a guard with
        a concurrent stage's claim taking the rest of the budget would."""

        checks = 0

        def check(self, needed_bytes: int = 0) -> str | None:
            self.checks += 1
            if self.checks == 1:
                return None
            return "memory budget: the rest is held by a concurrent stage"

    scene, frames = _flat_panel_frames(22, 256)
    engine = LiveDenoiser(DenoiseConfig(detector=DetectorNoise(kind="integrating")),
                          budget_s=0)
    engine.guard = RoomForTheAnalysisOnly(budget_gb=1.0)
    warning = engine.warm_up(frames[:3], shape=(256, 256), mask=scene.mask,
                             center=scene.geometry.center)
    assert warning is not None and engine.analysis is None
    assert engine.noise.integrating and abs(engine.noise.gain / 7.0 - 1) < 0.15
    assert engine.provenance() == {"detector_noise": engine.noise.as_dict()}
    good = ~scene.mask
    out = _served_in_adu(engine, frames[-1])
    np.testing.assert_allclose(out[good], frames[-1][good], atol=1e-2)
