"""Fingerprints of the engine's output on fixed inputs: does a refactor change any result?

Each row denoises one simulated scan (96², 3 frames, fixed seeds) with one method for a
fixed number of training steps (``--steps``, not a time budget, so the result does not
depend on the machine's speed) and prints a digest of the denoised frames. Run it on two
commits and compare the tables: equal digests mean equal outputs (to ``--decimals``). On a
CPU the runs are deterministic; BM3D's float rounding differs by ~1e-6 between processes,
hence the rounding.

    python -m bench.fingerprint                      # prints the table
    git stash; python -m bench.fingerprint; git stash pop; python -m bench.fingerprint
"""

from __future__ import annotations

import argparse
import hashlib

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


def fingerprint(kind: str, counts: float, method: str, *, steps: int,
                decimals: int) -> tuple[str, float, str]:
    """(method that served, mean of the denoised frames, digest of them rounded)."""
    scene = scenes.make_scene(kind, shape=(96, 96), seed=7)
    rng = np.random.default_rng(7)
    frames = np.stack([scene.expose(counts, rng) for _ in range(3)])
    torch.manual_seed(0)
    denoiser = ScanDenoiser(method=method, max_steps=steps, budget_s=600, seed=0,
                            device="cpu")
    result = denoiser.run(frames, mask=scene.mask, center=scene.geometry.center,
                          bad_pixels="mask")
    rounded = np.round(result.denoised.astype(np.float64), decimals)
    digest = hashlib.sha256(np.ascontiguousarray(rounded).tobytes()).hexdigest()[:16]
    return result.method, float(result.denoised.mean()), digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=25, help="training steps per scan")
    parser.add_argument("--decimals", type=int, default=4,
                        help="decimals the frames are rounded to before the digest")
    args = parser.parse_args(argv)
    print("| scene | c/px | asked | served | mean | digest |")
    print("|---|---|---|---|---|---|")
    for kind, counts, method in CASES:
        served, mean, digest = fingerprint(kind, counts, method, steps=args.steps,
                                           decimals=args.decimals)
        print(f"| {kind} | {counts:g} | {method} | {served} | {mean:.6f} | {digest} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
