"""Fingerprints of the engine's output on fixed inputs: does a refactor change any result?

Each row denoises one simulated scan (96², 3 frames, fixed seeds) with one method for a
fixed number of training steps (``--steps``, not a time budget, so the result does not
depend on the machine's speed). ``--save FILE`` keeps the denoised frames; ``--compare
FILE``, run on another commit, prints the largest absolute difference from them per row. On
a CPU the runs are deterministic; BM3D's float rounding differs by ~1e-6 between processes.

    git switch --detach OLD && python -m bench.fingerprint --save /tmp/before.npz
    git switch - && python -m bench.fingerprint --compare /tmp/before.npz
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bluesky_symdenoise.denoise.engine import ScanDenoiser
from bluesky_symdenoise.simulate import scenes

#: (scene, counts per pixel, method): one scan per denoising path of the engine.
CASES: tuple[tuple[str, float, str], ...] = (
    ("powder", 1.0, "symmetry"),
    ("lattice_one_sided", 0.25, "thinning"),
    ("textured", 0.25, "classical"),
    ("saxs", 1.0, "noise2sr"),
)


def fingerprint(kind: str, counts: float, method: str, *,
                steps: int) -> tuple[str, np.ndarray]:
    """(method that served, the denoised frames)."""
    scene = scenes.make_scene(kind, shape=(96, 96), seed=7)
    rng = np.random.default_rng(7)
    frames = np.stack([scene.expose(counts, rng) for _ in range(3)])
    torch.manual_seed(0)
    denoiser = ScanDenoiser(method=method, max_steps=steps, budget_s=600, seed=0,
                            device="cpu")
    result = denoiser.run(frames, mask=scene.mask, center=scene.geometry.center,
                          bad_pixels="mask")
    return result.method, result.denoised


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=25, help="training steps per scan")
    parser.add_argument("--save", help="write the denoised frames to this .npz")
    parser.add_argument("--compare", help="a --save file of another commit to compare with")
    args = parser.parse_args(argv)
    before = np.load(args.compare) if args.compare else None
    print("| scene | c/px | asked | served | mean | max abs difference |")
    print("|---|---|---|---|---|---|")
    saved = {}
    for kind, counts, method in CASES:
        served, frames = fingerprint(kind, counts, method, steps=args.steps)
        key = f"{kind}-{counts:g}-{method}"
        saved[key] = frames
        diff = ("—" if before is None
                else f"{float(np.abs(frames - before[key]).max()):.2g}")
        print(f"| {kind} | {counts:g} | {method} | {served} | {float(frames.mean()):.6f} | "
              f"{diff} |", flush=True)
    if args.save:
        np.savez_compressed(args.save, **saved)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
