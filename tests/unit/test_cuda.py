"""What only a CUDA device can show: the device chosen, bf16 on a GPU, the real allocator
running out of memory, the live plugin on a GPU.

Skipped where ``torch.cuda.is_available()`` is False (CI has no GPU); the CPU tests
(test_compute.py, test_out_of_memory.py, test_denoise.py) run the same code paths there.
``bench/gpu.py`` measures speed and quality on the GPU; run both where one is lent:

    python -m pytest tests/unit/test_cuda.py -W default
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


@pytest.fixture
def capped_gpu():
    """Cap this process's share of the GPU for one test (``cap(bytes)``), then lift it."""
    total = torch.cuda.get_device_properties(CUDA).total_memory
    index = torch.cuda.current_device()  # the cap takes a device's index

    def cap(nbytes: float) -> None:
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, nbytes / total), index)

    yield cap
    torch.cuda.set_per_process_memory_fraction(1.0, index)
    torch.cuda.empty_cache()


def _base_and_input(shape: tuple[int, int]):
    from bluesky_symdenoise.denoise.channels import N_CHANNELS
    from bluesky_symdenoise.denoise.models import load_base_model

    base, _ = load_base_model(16, 3)
    return base, np.random.default_rng(0).random((N_CHANNELS, *shape), dtype=np.float32)


def _agree(a: np.ndarray, b: np.ndarray) -> bool:
    """Expected counts equal to bf16's precision: mean |a - b| within 2 % of the mean level,
    totals within 1 %."""
    return bool(np.abs(a - b).mean() < 0.02 * np.abs(b).mean()
                and abs(a.sum() / b.sum() - 1) < 0.01)


def test_auto_takes_the_gpu_and_its_plan_is_bf16_channels_last_batches_of_8():
    from bluesky_symdenoise.denoise.device import compute_plan, select_device

    device = select_device("auto")
    assert device.type == "cuda"
    plan = compute_plan(device)
    assert plan.channels_last and plan.inference_batch == 8
    assert plan.bf16 == torch.cuda.is_bf16_supported()


def test_bf16_on_the_gpu_predicts_what_float32_on_the_cpu_does():
    from bluesky_symdenoise.denoise.inference import predict_rates

    base, x = _base_and_input((512, 512))
    gpu = predict_rates(copy.deepcopy(base), [x], [3.0], device=CUDA, flips=2)
    cpu = predict_rates(copy.deepcopy(base), [x], [3.0], device=torch.device("cpu"), flips=2)
    assert gpu.dtype == np.float32 and gpu.shape == cpu.shape
    # bf16 keeps ~3 significant digits: the two agree to about 1 % of the level (as the
    # CUDA plan run on the CPU does, test_compute.py)
    assert _agree(gpu, cpu)


def test_the_tile_on_a_gpu_comes_from_its_free_memory():
    from bluesky_symdenoise.denoise.memory import device_tile

    free, _ = torch.cuda.mem_get_info()
    assert device_tile("cuda", 1.5, 16) == device_tile("cuda", 1.5, 16, free_bytes=free)
    assert device_tile("cuda", 1.5, 16) >= device_tile("cpu", 1.5, 16)


def test_a_real_out_of_memory_halves_the_batch_then_moves_to_the_cpu(capped_gpu):
    from bluesky_symdenoise.denoise.inference import predict_rates

    base, x = _base_and_input((1024, 1024))
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    reference = predict_rates(copy.deepcopy(base), [x], [1.0], device=CUDA, flips=1,
                              batch_size=1)
    peak = torch.cuda.max_memory_allocated()

    capped_gpu(2.5 * peak)  # 8 frames at once cannot fit; 2 can
    events: list[str] = []
    out = predict_rates(copy.deepcopy(base), [x] * 8, [1.0] * 8, device=CUDA, flips=1,
                        batch_size=8, events=events)
    assert events[:2] == ["out of memory during inference on cuda: batch 4",
                          "out of memory during inference on cuda: batch 2"]
    assert not any("moved to cpu" in e for e in events)
    assert out.shape[0] == 8 and all(_agree(frame, reference[0]) for frame in out)

    capped_gpu(0.5 * peak)  # not even one frame fits: the work moves to the CPU
    events = []
    out = predict_rates(copy.deepcopy(base), [x], [1.0], device=CUDA, flips=1,
                        batch_size=1, events=events)
    assert events == ["out of memory during inference at batch 1: moved to cpu"]
    assert _agree(out, reference)


def test_denoise_on_the_gpu_matches_the_cpu_and_records_the_device():
    from bluesky_symdenoise.denoise.api import denoise_scan
    from bluesky_symdenoise.simulate.scenes import make_scene

    scene = make_scene("powder", shape=(128, 128), seed=5)
    rng = np.random.default_rng(5)
    frames = np.stack([scene.expose(1.0, rng) for _ in range(3)])
    truth, usable = scene.scaled(1.0), scene.usable
    results = {where: denoise_scan(frames, mask=scene.mask, center=scene.geometry.center,
                                   method="symmetry", device=where, budget_s=300,
                                   max_steps=100, seed=5) for where in ("cuda", "cpu")}
    assert results["cuda"].provenance["device"].startswith("cuda")

    def error(out: np.ndarray) -> float:
        return float(np.sqrt(np.mean((out[:, usable] - truth[usable]) ** 2)))

    raw_error = error(frames.astype(np.float64))
    gpu_error, cpu_error = error(results["cuda"].denoised), error(results["cpu"].denoised)
    assert gpu_error < 0.5 * raw_error
    assert gpu_error < 1.25 * cpu_error  # same seed and steps; bf16 and cuDNN may differ
    for result in results.values():
        total = result.denoised[:, usable].sum() / frames[:, usable].sum()
        assert abs(total - 1) < 0.01


def test_a_scan_on_a_gpu_with_almost_no_memory_still_returns_its_frames(capped_gpu):
    """Training and inference run out of memory for real: the frames still come back,
    from the CPU, with the fallbacks recorded."""
    from bluesky_symdenoise.denoise.api import denoise_scan
    from bluesky_symdenoise.simulate.scenes import make_scene

    scene = make_scene("powder", shape=(128, 128), seed=6)
    rng = np.random.default_rng(6)
    frames = np.stack([scene.expose(1.0, rng) for _ in range(2)])
    capped_gpu(4 << 20)  # 4 MiB: the model's weights, hardly a batch
    result = denoise_scan(frames, mask=scene.mask, center=scene.geometry.center,
                          method="symmetry", device="cuda", budget_s=300, max_steps=20,
                          seed=6)
    assert result.denoised.shape == frames.shape and np.all(np.isfinite(result.denoised))
    events = " ".join(result.provenance["events"])
    assert "moved to cpu" in events


def test_the_live_plugin_serves_frames_from_the_gpu(RE):
    from bluesky import plan_stubs as bps
    from ophyd.sim import DirectImage

    from bluesky_symdenoise import SymDenoise
    from bluesky_symdenoise.simulate.scenes import make_scene

    scene = make_scene("powder", shape=(128, 128), seed=7)
    rng = np.random.default_rng(7)
    det = DirectImage(func=lambda: scene.expose(1.0, rng), name="det")
    det.img.exposure_time = 0
    sd = SymDenoise("det_img", center=scene.geometry.center, mask=scene.mask, budget_s=5,
                    device="auto", lossless=True, max_queue=64)
    served: list[str] = []
    provenance: list[str] = []

    def collect(name: str, doc: dict) -> None:
        if name == "event" and "det_img_denoised_by" in doc["data"]:
            served.append(str(doc["data"]["det_img_denoised_by"]))
        if name == "event" and "provenance" in doc["data"]:
            provenance.append(doc["data"]["provenance"])

    sd.subscribe(collect)

    def plan():
        yield from bps.open_run()
        for _ in range(sd.options.warmup_frames):
            yield from bps.trigger_and_read([det])
        for _ in range(100):  # until the fine-tuned network serves
            if any(s["network_ready"] for s in sd.status().values()):
                break
            yield from bps.sleep(0.2)
        for _ in range(4):
            yield from bps.trigger_and_read([det])
        yield from bps.close_run()

    RE.subscribe(sd)
    RE(plan())
    sd.flush(timeout=120)
    sd.close()
    assert len(served) == sd.options.warmup_frames + 4
    assert any(s.startswith("network:symmetry") for s in served[-4:]), served
    assert provenance and json.loads(provenance[-1])["device"].startswith("cuda")


def test_a_live_scans_memory_guard_does_not_count_the_gpus_libraries():
    """The CUDA context and cuDNN/cuBLAS (about 1 GB of host memory, once per process) are
    loaded before the guard's baseline, so the scan's growth is its own: in a fresh process,
    where nothing has touched the GPU yet."""
    script = """
import copy, numpy as np, torch
from bluesky_symdenoise.denoise.channels import N_CHANNELS
from bluesky_symdenoise.denoise.config import DenoiseConfig
from bluesky_symdenoise.denoise.inference import predict_rates
from bluesky_symdenoise.denoise.live import LiveDenoiser
from bluesky_symdenoise.denoise.models import load_base_model
base, _ = load_base_model(16, 3)
x = np.ones((N_CHANNELS, 256, 256), np.float32)
engine = LiveDenoiser(DenoiseConfig(device="cuda"))
predict_rates(base, [x], [1.0], device=torch.device("cuda"), flips=1)
print(engine.guard.growth() / 2**30)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=240, check=True)
    assert float(done.stdout.split()[-1]) < 0.3, done.stdout
