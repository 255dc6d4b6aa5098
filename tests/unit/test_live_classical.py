"""The live classical fast mode holds its frames to the raw counts, as the network's are:
its full-ring I(q) is never worse than the raw frame's, where the bare classical denoiser's
is (real engine, real pyFAI)."""

from __future__ import annotations

import numpy as np

from bench.metrics import iq_relative_error
from bluesky_symdenoise.denoise.config import DenoiseConfig
from bluesky_symdenoise.denoise.live import LiveDenoiser
from bluesky_symdenoise.simulate.scenes import make_scene


def test_live_classical_frames_keep_the_full_ring_iq_of_the_raw_counts():
    scene = make_scene("powder", shape=(256, 256), seed=21)
    rng = np.random.default_rng(21)
    frames = [scene.expose(1.0, rng) for _ in range(5)]
    engine = LiveDenoiser(DenoiseConfig(), budget_s=0)
    assert engine.warm_up(frames[:4], shape=(256, 256), mask=scene.mask,
                          center=scene.geometry.center) is None
    assert engine.method == "classical-nlm"
    [served] = engine.serve([frames[4]])
    assert served.denoised_by == "classical-nlm"
    truth, geometry, bad = scene.scaled(1.0), scene.geometry, served.bad
    raw = np.where(bad, 0.0, frames[4])
    bare = engine.denoiser.classical_frame(engine.analysis, raw.astype(np.float32),
                                           engine="nlm", bad=bad)
    errors = {name: iq_relative_error(image, truth, geometry, bad)
              for name, image in (("raw", raw), ("served", served.denoised),
                                  ("bare", bare))}
    assert errors["served"] <= errors["raw"], errors
    assert errors["bare"] > errors["served"], errors  # what the hold repairs
