"""What the optional ``cake`` stream costs per live frame, beside the I(q) the plugin always
computes.

Per frame the live plugin integrates the raw and the denoised frame into I(q) (pyFAI
``integrate1d``, ``npt`` = half the frame's size, with error propagation); with
``SymDenoise(cake=True)`` it also regroups both on a (chi, q) grid (``integrate2d``, 72 chi
bins). Both are timed here on a simulated textured-powder frame, as the plugin calls them
(:class:`~bluesky_symdenoise.integrate.azimuthal.AzimuthalIntegration`), median of
``--repeats``. Timings only, no assertions. ``bench/results/cake.md`` came from:

    python -m bench.cake --shapes 256 1024 --repeats 10
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import numpy as np

from bluesky_symdenoise.integrate.azimuthal import AzimuthalIntegration
from bluesky_symdenoise.simulate.scenes import make_scene
from bluesky_symdenoise.stream.publisher import CAKE_AZIMUTHAL_BINS, default_npt


def _median_seconds(func, repeats: int) -> float:
    func()  # pyFAI builds its look-up table on the first call
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        func()
        seconds.append(time.perf_counter() - began)
    return float(np.median(seconds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    print(f"`python -m bench.cake {shlex.join(sys.argv[1:] if argv is None else argv)}`\n")
    print("| frame | I(q), raw + denoised | cake, raw + denoised | cake bins |")
    print("|---|---|---|---|")
    for size in args.shapes:
        scene = make_scene("textured", shape=(size, size), seed=1)
        frame = scene.expose(1.0, np.random.default_rng(0)).astype(np.float32)
        denoised = scene.scaled(1.0).astype(np.float32)
        ai = AzimuthalIntegration(scene.geometry, scene.mask)
        npt = default_npt(frame.shape)

        def iq(ai=ai, frame=frame, denoised=denoised, npt=npt):
            ai.integrate(frame, npt=npt, error_model="poisson")
            ai.integrate(denoised, npt=npt, variance=denoised)

        def cake(ai=ai, frame=frame, denoised=denoised, npt=npt):
            ai.cake(frame, npt, CAKE_AZIMUTHAL_BINS)
            ai.cake(denoised, npt, CAKE_AZIMUTHAL_BINS)

        print(f"| {size}² | {1000 * _median_seconds(iq, args.repeats):.0f} ms | "
              f"{1000 * _median_seconds(cake, args.repeats):.0f} ms | "
              f"{CAKE_AZIMUTHAL_BINS} × {npt} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
