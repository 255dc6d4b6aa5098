"""Pre-train the base model shipped in ``bluesky_symdenoise/models`` on simulated scenes.

Run ``python -m bluesky_symdenoise.denoise.pretrain --steps 3000`` to reproduce it: the scenes,
noise and batches are seeded and the learning-rate schedule runs over a fixed number of
steps, so the same steps give the same model on any machine (up to floating-point order on
other hardware). Scenes of every kind the simulator knows are drawn
at random sizes, beam centres and count levels (0.05-300 counts/pixel), as single frames or
short scans; the network is trained on them against the noise-free expectation with the
Poisson loss, inputs built exactly as at inference (symmetry test on the noisy scan sum,
symmetry dropped for a third of the scans so the thinning mode is learnt too).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..simulate import scenes
from .channels import ChannelContext, input_channels
from .inference import predict_rates
from .models import base_model_path, new_model, save_model
from .preprocess import prepare_frames
from .targets import Batch, TruthPairs, neighbour_mean
from .training import poisson_loss

__all__ = ["make_training_scan", "pretrain"]

_STATIC_KINDS = ("powder", "textured", "saxs", "lattice", "lattice_one_sided")
_SHAPES = ((128, 128), (160, 192), (192, 160), (192, 192), (256, 256))


def make_training_scan(rng: np.random.Generator, *, shape: tuple[int, int] | None = None,
                       counts: float | None = None) -> TruthPairs:
    """One simulated scan as truth pairs, its context built as the engine builds it."""
    if shape is None:
        shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
    seed = int(rng.integers(2**31))
    n_frames = int(rng.integers(1, 4))
    if rng.random() < 0.3:
        series = scenes.insitu_series(
            str(rng.choice(["powder", "lattice"])), n_frames=max(n_frames, 2),
            change=str(rng.choice(["ring_drift", "lattice_expansion", "phase_appearing"])),
            shape=shape, seed=seed)
        truth_unit, mask, geometry = series.expectations, series.mask, series.geometry
        expose = series.expose
    else:
        scene = scenes.make_scene(str(rng.choice(_STATIC_KINDS)), shape=shape, seed=seed)
        truth_unit = np.repeat(scene.expectation[None], n_frames, axis=0)
        mask, geometry = scene.mask, scene.geometry

        def expose(level, generator, readout_sigma=0.0):
            return np.stack([scene.expose(level, generator, readout_sigma)
                             for _ in range(n_frames)])
    if counts is None:
        counts = float(np.exp(rng.uniform(np.log(0.05), np.log(300.0))))
    readout = float(rng.uniform(0.5, 2.0)) if rng.random() < 0.15 else 0.0
    noisy = expose(counts, rng, readout_sigma=readout)
    prepared = prepare_frames(noisy, mask, bad_pixels="mask")
    if rng.random() < 0.67:
        ctx, _, _ = ChannelContext.from_scan_sum(prepared.frames.sum(0), prepared.good,
                                                 geometry.center, z_threshold=5.5)
    else:
        ctx = ChannelContext.without_symmetry(prepared.good)
    return TruthPairs(prepared.frames, truth_unit * counts, ctx,
                      use_neighbours=bool(rng.random() < 0.8), seed=seed)


class _MixedPool:
    """A rolling pool of simulated scans; one is replaced every ``refresh`` batches."""

    def __init__(self, rng: np.random.Generator, size: int = 24, refresh: int = 4) -> None:
        self.rng = rng
        self.scans = [make_training_scan(rng) for _ in range(size)]
        self.refresh = refresh
        self.calls = 0

    def sample(self, batch_size: int, patch: int):
        self.calls += 1
        if self.calls % self.refresh == 0:
            self.scans[int(self.rng.integers(len(self.scans)))] = make_training_scan(self.rng)
        picks = self.rng.integers(len(self.scans), size=batch_size // 2)
        batches = [self.scans[i].sample(2, patch) for i in picks]
        return Batch(*(np.concatenate([getattr(b, name) for b in batches])
                       for name in ("inputs", "target", "copies", "scale")))


def _validation_psnr(model: torch.nn.Module, scans: list[TruthPairs]) -> float:
    values = []
    for scan in scans:
        channels, level = input_channels(scan.noisy[0], scan.ctx,
                                         neighbour_mean(scan.noisy, 0)
                                         if scan.use_neighbours else None)
        rate = predict_rates(model, [channels], [level], device=torch.device("cpu"),
                             flips=1)[0]
        good = scan.ctx.good
        truth = scan.truth[0]
        mse = float(np.mean((rate[good] - truth[good]) ** 2))
        values.append(10 * math.log10(truth[good].max() ** 2 / max(mse, 1e-12)))
    return float(np.mean(values))


def pretrain(steps: int, out: Path, *, seed: int = 0, width: int = 16, depth: int = 3,
             batch_size: int = 16, patch: int = 96) -> dict:
    """Train the base model for ``steps`` batches and save it to ``out``.

    Returns the model card (also written beside the weights).
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = new_model(width, depth)
    validation = [make_training_scan(np.random.default_rng(10_000 + i), shape=(192, 192),
                                     counts=c) for i, c in enumerate((0.1, 0.3, 1, 3, 10, 100))]
    before = _validation_psnr(model, validation)
    pool = _MixedPool(rng)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    losses: list[float] = []
    model.train()
    for step in range(1, steps + 1):
        elapsed = time.perf_counter() - start
        lr = 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * (step - 1) / steps))
        for group in optimiser.param_groups:
            group["lr"] = lr
        batch = pool.sample(batch_size, patch)
        tensors = {name: torch.from_numpy(getattr(batch, name))
                   for name in ("inputs", "target", "copies", "scale")}
        loss = poisson_loss(model(tensors["inputs"]), tensors)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        losses.append(float(loss.detach()))
        if step % 200 == 0:
            print(f"step {step:6d}  {elapsed:7.0f} s  loss {np.mean(losses[-200:]):.4f}  "
                  f"lr {lr:.2e}", flush=True)
    model.eval()
    after = _validation_psnr(model, validation)
    minutes = (time.perf_counter() - start) / 60.0
    card = {"name": out.stem, "seed": seed, "steps": steps, "minutes": round(minutes, 1),
            "batch_size": batch_size, "patch": patch,
            "validation_psnr_db": {"before": round(before, 2), "after": round(after, 2)},
            "trained_by": f"python -m bluesky_symdenoise.denoise.pretrain --steps {steps} "
                          f"--seed {seed}" + (f" --width {width}" if width != 16 else ""),
            "torch_version": torch.__version__}
    save_model(model, out, card)
    print(f"saved {out}: {steps} steps, validation PSNR {before:.2f} -> {after:.2f} dB")
    return card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=None,
                        help="default: the package's model file for --width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--width", type=int, default=16,
                        help="channels at full resolution (16: base model, 12: live CPU model)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or base_model_path(args.width)
    pretrain(args.steps, out, seed=args.seed, width=args.width)


if __name__ == "__main__":
    main()
