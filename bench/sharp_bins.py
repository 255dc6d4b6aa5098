"""Which kept bench results' scans hold half-pixel ring bins outright, and how many.

The ring holds keep a 0.5 px bin outright only where the scan's summed counts show the
radial profile sharper than the 1 px bins hold
(:func:`~bluesky_symdenoise.denoise.consistency.sharp_half_pixel_bins`, decided once per
scan by :meth:`~bluesky_symdenoise.denoise.engine.ScanDenoiser.analyse`; nothing is
trained here). On a scan where it selects no bin, the denoised frames are held exactly as
before that rule existed, so only the result rows of the scans listed here can change with
it. The scans are those of ``python -m bench.defects --bench-scans`` (heldout, iq,
iq_transition, flat_panel, the live benches' warm-up frames, and bench.bias's) plus
bench.bias's sharp rings, bench.iq's seed-2 section, bench.flat_panel's counting twins and
bench.overhead's warm-up frames.

    python -m bench.sharp_bins
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import numpy as np

from bluesky_symdenoise.simulate import scenes

from . import flat_panel
from .defects import Scan, kept_result_scans
from .quality import make_scan


def _more_scans() -> Iterator[Scan]:
    """The kept results' scans that ``bench.defects --bench-scans`` does not list."""
    for counts in (1.0, 0.25):
        for k in range(8):
            scan = make_scan("sharp_textured", counts, size=256, n_frames=6, seed=288871 + k)
            yield (f"bias: sharp_textured {counts:g} seed {288871 + k}", scan.frames,
                   scan.mask, scan.geometry.center, False)
    for i, kind in enumerate(("sharp_textured", "saxs", "lattice")):
        for j, counts in enumerate((0.1, 1.0, 10.0)):
            for k in range(6):
                seed = 2 + 1000 * k + 100 * i + j
                scan = make_scan(kind, counts, size=128, n_frames=3, seed=seed)
                yield (f"iq --seed 2: {kind} {counts:g} seed {seed}", scan.frames, scan.mask,
                       scan.geometry.center, False)
    for name, gains, reads, psfs, design, seed0 in (
            ("default grid", (2, 7, 20), (1, 4, 10), (0, 0.7), "star", 4100),
            ("unseen", (3, 12), (2, 6), (0.5,), "full", 8300)):
        grid = flat_panel.detector_grid(gains, reads, psfs, design)
        for case, scan in flat_panel.grid_scans(("lattice_one_sided",), (1.0,), grid, seeds=1,
                                                seed0=seed0, sizes=(128,), frames=3):
            twin = flat_panel.counting_twin(scan, case["noise_seed"] + 500)
            yield (f"flat_panel counting twin, {name}: gain {case['gain']:g} read "
                   f"{case['read']:g} psf {case['psf']:g}", twin, scan.scene.mask,
                   scan.scene.geometry.center, False)
    scene = scenes.make_scene("powder", shape=(256, 256), seed=1)
    rng = np.random.default_rng(1)
    yield ("overhead (warm-up)", np.stack([scene.expose(2.0, rng) for _ in range(4)]),
           scene.mask, scene.geometry.center, False)


def count_sharp_bins(frames: np.ndarray, mask: np.ndarray, center: tuple[float, float],
                     integrating: bool = False) -> int:
    """The number of 0.5 px bins the engine's analysis of one scan holds outright."""
    from bluesky_symdenoise.denoise.api import detector_noise
    from bluesky_symdenoise.denoise.engine import ScanDenoiser

    options = {"detector": detector_noise("integrating")} if integrating else {}
    analysis = ScanDenoiser(None, **options).analyse(frames, mask=mask, center=center,
                                                     bad_pixels="mask")
    consistency = analysis.consistency
    if consistency is None or consistency.sharp_bins is None:
        return 0
    return int(consistency.sharp_bins.sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.parse_args(argv)
    n_scans = n_found = 0
    for label, frames, mask, center, integrating in (*kept_result_scans(), *_more_scans()):
        n_scans += 1
        n_bins = count_sharp_bins(frames, mask, center, integrating)
        if n_bins:
            n_found += 1
            print(f"- {label}: {n_bins} bins", flush=True)
    print(f"\nHalf-pixel bins held outright on {n_found} of {n_scans} scans.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
