"""The GPU code path (bf16 autocast, channels-last, batched inference) run on the CPU.

No GPU is needed: :class:`ComputePlan` is what differs between devices, and torch runs bf16
autocast and channels-last tensors on the CPU too, so the same lines a GPU runs are tested.
"""

import threading

import numpy as np
import torch

from bluesky_symdenoise.denoise.channels import N_CHANNELS, ChannelContext, input_channels
from bluesky_symdenoise.denoise.device import ComputePlan, compute_plan
from bluesky_symdenoise.denoise.inference import predict_rates
from bluesky_symdenoise.denoise.models import new_model
from bluesky_symdenoise.denoise.targets import ThinningPairs
from bluesky_symdenoise.denoise.training import fit

CPU = torch.device("cpu")
GPU_PLAN_ON_CPU = ComputePlan(bf16=True, channels_last=True, inference_batch=8)


def _frames(seed=0, n=3, shape=(64, 80), level=4.0):
    rng = np.random.default_rng(seed)
    rows, cols = np.indices(shape)
    expectation = level * (1 + np.cos(np.hypot(rows - 30.3, cols - 41.7) / 3.0))
    return rng.poisson(expectation, size=(n, *shape)).astype(np.float32), expectation


def test_plans_per_device():
    cpu = compute_plan(CPU)
    assert not cpu.bf16 and cpu.channels_last and cpu.inference_batch == 1
    cuda = compute_plan(torch.device("cuda"))
    assert cuda.channels_last and cuda.inference_batch > cpu.inference_batch
    # bf16 only where the GPU supports it, and never when mixed precision is switched off
    assert not compute_plan(torch.device("cuda"), mixed_precision=False).bf16


def test_gpu_plan_trains_and_predicts_like_float32():
    frames, expectation = _frames()
    good = np.ones(frames.shape[1:], bool)
    ctx = ChannelContext.without_symmetry(good)
    model = new_model(8, 2)
    log = fit(model, ThinningPairs(frames, ctx, seed=1), seconds=30, max_steps=25,
              learning_rate=1e-3, batch_size=4, patch=32, device=CPU, plan=GPU_PLAN_ON_CPU)
    assert log.steps == 25 and np.isfinite(log.last_loss)
    assert log.last_loss < log.first_loss
    # the model was trained in channels-last memory, as on a GPU
    assert next(p for p in model.parameters() if p.ndim == 4).is_contiguous(
        memory_format=torch.channels_last)
    inputs, levels = zip(*(input_channels(f, ctx) for f in frames), strict=True)
    assert inputs[0].shape[0] == N_CHANNELS
    bf16 = predict_rates(model, list(inputs), list(levels), device=CPU, flips=2,
                         plan=GPU_PLAN_ON_CPU)
    fp32 = predict_rates(model, list(inputs), list(levels), device=CPU, flips=2,
                         plan=compute_plan(CPU))
    assert bf16.dtype == np.float32 and np.all(np.isfinite(bf16))
    # bf16 keeps ~3 significant digits: the two agree to about 1 % of the level
    assert np.abs(bf16 - fp32).mean() < 0.02 * fp32.mean()
    assert abs(bf16.sum() / fp32.sum() - 1) < 0.01


def test_batched_inference_equals_frame_by_frame():
    frames, _ = _frames(seed=3, n=5)
    ctx = ChannelContext.without_symmetry(np.ones(frames.shape[1:], bool))
    model = new_model(8, 2)
    inputs, levels = zip(*(input_channels(f, ctx) for f in frames), strict=True)
    batched = predict_rates(model, list(inputs), list(levels), device=CPU, batch_size=5)
    single = np.stack([predict_rates(model, [x], [lv], device=CPU, batch_size=1)[0]
                       for x, lv in zip(inputs, levels, strict=True)])
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)


def test_live_cpu_settings_pick_the_narrow_shipped_network_unless_asked():
    """Live on a CPU: one pass per frame through the narrower shipped network, unless the
    caller set either; no narrow network without its pre-trained weights."""
    from bluesky_symdenoise.denoise.live import LIVE_CPU_WIDTH, live_cpu_settings
    from bluesky_symdenoise.denoise.models import BASE_MODEL_NAMES, load_base_model

    assert live_cpu_settings({}) == {"test_time_flips": 1, "width": LIVE_CPU_WIDTH}
    assert live_cpu_settings({"width": 16, "test_time_flips": 2}) == {}
    assert live_cpu_settings({"use_pretrained": False}) == {"test_time_flips": 1}
    assert live_cpu_settings({"depth": 2}) == {"test_time_flips": 1}
    model, why = load_base_model(LIVE_CPU_WIDTH, 3)
    assert model is not None and model.width == LIVE_CPU_WIDTH
    assert BASE_MODEL_NAMES[LIVE_CPU_WIDTH] in why
    # Half the multiply-adds of the default width (channels squared): that is the point.
    default, _ = load_base_model(16, 3)
    n_live = sum(p.numel() for p in model.parameters())
    n_default = sum(p.numel() for p in default.parameters())
    assert n_live < 0.6 * n_default


def test_batches_drawn_on_background_threads_train_as_the_trainers_own_do():
    """A GPU's trainer draws its batches on sampler threads (none by default on a CPU); the
    model learns the same way, the threads are gone afterwards, and the log says so."""
    from bluesky_symdenoise.denoise.training import sampler_threads

    assert sampler_threads(CPU) == 0 and sampler_threads(CPU, 3) == 3
    assert 0 <= sampler_threads(torch.device("cuda")) <= 4
    # each draw of a 1 Mpx frame holds ~240 MB: a quarter of a 1.5 GB budget holds one
    assert sampler_threads(CPU, 4, per_thread_bytes=240 << 20, spare_bytes=384 << 20) == 1
    assert sampler_threads(CPU, 4, per_thread_bytes=240 << 20, spare_bytes=0) == 0
    frames, _ = _frames()
    ctx = ChannelContext.without_symmetry(np.ones(frames.shape[1:], bool))
    logs = {}
    for threads in (0, 2):
        model = new_model(8, 2)
        logs[threads] = fit(model, ThinningPairs(frames, ctx, seed=1), seconds=30,
                            max_steps=25, learning_rate=1e-3, batch_size=4, patch=32,
                            device=CPU, threads=threads)
    for log in logs.values():
        assert log.steps == 25 and log.last_loss < log.first_loss
    assert logs[2].as_dict()["sampler_threads"] == 2 and "sampler_threads" not in logs[
        0].as_dict()
    assert not [t for t in threading.enumerate() if t.name.startswith("symdenoise-sampler")]


def test_a_batch_drawn_ahead_at_the_old_size_is_cut_after_the_batch_is_halved():
    from bluesky_symdenoise.denoise.training import _BatchPrefetcher

    frames, _ = _frames()
    ctx = ChannelContext.without_symmetry(np.ones(frames.shape[1:], bool))
    prefetcher = _BatchPrefetcher(ThinningPairs(frames, ctx, seed=2), 2, 32)
    try:
        assert prefetcher.next(4).inputs.shape[0] == 4
        halved = prefetcher.next(2)  # drawn ahead at 4
        assert [getattr(halved, n).shape[0] for n in ("inputs", "target", "copies",
                                                       "scale")] == [2] * 4
    finally:
        prefetcher.close()
