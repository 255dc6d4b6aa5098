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
    python -m bench.sharp_bins --crests

``--crests``: the same for the 0.5 px bins within half a pixel of a ring's crest
(:func:`~bluesky_symdenoise.denoise.consistency.crest_half_pixel_bins`), which the holds keep
outright where a frame's expected counts in the bin are below
:data:`~bluesky_symdenoise.denoise.consistency.CREST_OUTRIGHT_COUNTS`: per scan with
crests, how many of them are held outright and the largest per-frame counts of a crest
bin. Where all are held, the engine holds that scan as one that held every crest bin
outright; with the scans of the sections measured at 0.1 counts/pixel on 128² scans
(``bench.bias --scene sharp_textured --counts 0.1 --size 128 --seed 7``, ``bench.iq
--seed 7``).

``--narrow``: per scan with crests, how many of its rings' crests are narrow
(:func:`~bluesky_symdenoise.denoise.consistency.narrow_crest_bins`: a ring narrower than
the angular model's spline follows, whose shells the model's mix keeps in quarters rather
than halves) among the crests found; with the same 0.1 counts/pixel scans as ``--crests``.
On a scan with none, the denoised frames are as before that rule.

    python -m bench.sharp_bins --narrow
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import numpy as np
from scipy import ndimage

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


def _low_count_scans() -> Iterator[Scan]:
    """The scans of the sections measured at 0.1 counts/pixel on 128² scans of three
    frames (``bench.bias ... --size 128 --seed 7``; ``bench.iq --seed 7``)."""
    for k in range(8):
        scan = make_scan("sharp_textured", 0.1, size=128, n_frames=3, seed=7 + k)
        yield (f"bias: sharp_textured 0.1 128² seed {7 + k}", scan.frames, scan.mask,
               scan.geometry.center, False)
    for i, kind in enumerate(("powder", "sharp_textured", "saxs")):
        for k in range(8):
            seed = 7 + 1000 * k + 100 * i
            scan = make_scan(kind, 0.1, size=128, n_frames=3, seed=seed)
            yield (f"iq --seed 7: {kind} 0.1 seed {seed}", scan.frames, scan.mask,
                   scan.geometry.center, False)
    for k in range(8):
        scan = make_scan("powder", 0.1, size=256, n_frames=6, seed=450726 + k)
        yield (f"bias: powder 0.1 seed {450726 + k}", scan.frames, scan.mask,
               scan.geometry.center, False)


def _analysis(frames: np.ndarray, mask: np.ndarray, center: tuple[float, float],
              integrating: bool):
    from bluesky_symdenoise.denoise.api import detector_noise
    from bluesky_symdenoise.denoise.engine import ScanDenoiser

    options = {"detector": detector_noise("integrating")} if integrating else {}
    return ScanDenoiser(None, **options).analyse(frames, mask=mask, center=center,
                                                 bad_pixels="mask")


def count_sharp_bins(frames: np.ndarray, mask: np.ndarray, center: tuple[float, float],
                     integrating: bool = False) -> int:
    """The number of 0.5 px bins the engine's analysis of one scan holds outright."""
    consistency = _analysis(frames, mask, center, integrating).consistency
    if consistency is None or consistency.sharp_bins is None:
        return 0
    return int(consistency.sharp_bins.sum())


def count_crest_bins(frames: np.ndarray, mask: np.ndarray, center: tuple[float, float],
                     integrating: bool = False) -> tuple[int, int, float]:
    """Of one scan's 0.5 px bins across a ring's crest (with pixels): how many are held
    outright, how many there are, and the largest expected counts of one in a frame."""
    from bluesky_symdenoise.denoise.consistency import (
        crest_half_pixel_bins,
        half_pixel_frame_counts,
    )

    analysis = _analysis(frames, mask, center, integrating)
    consistency = analysis.consistency
    if consistency is None or consistency.ring_crests is None:
        return 0, 0, 0.0
    prepared = analysis.prepared
    found = half_pixel_frame_counts(prepared.frames.sum(0), prepared.good,
                                    consistency.ring_levels, frames=len(prepared.frames))
    if found is None:
        return 0, 0, 0.0
    per_frame, pixels = found
    across = crest_half_pixel_bins(consistency.ring_crests, per_frame.size) & (pixels > 0)
    held = consistency.crest_half_bins
    return (0 if held is None else int((held & across).sum()), int(across.sum()),
            float(per_frame[across].max()) if across.any() else 0.0)


def count_narrow_crests(frames: np.ndarray, mask: np.ndarray, center: tuple[float, float],
                        integrating: bool = False) -> tuple[int, int]:
    """Of one scan's rings' crests (runs of crest bins): how many are narrow, and how many
    there are."""
    consistency = _analysis(frames, mask, center, integrating).consistency
    if consistency is None or consistency.ring_crests is None:
        return 0, 0
    crests = ndimage.label(consistency.ring_crests)[1]
    narrow = consistency.narrow_crests
    return (0 if narrow is None else ndimage.label(narrow)[1]), crests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--crests", action="store_true",
                        help="the crests' half-pixel bins held outright, not the sharp bins")
    parser.add_argument("--narrow", action="store_true",
                        help="the narrow rings' crests, not the sharp bins")
    args = parser.parse_args(argv)
    n_scans = n_found = n_narrow = 0
    scans = (*kept_result_scans(), *_more_scans())
    if args.crests or args.narrow:
        scans = (*scans, *_low_count_scans())
    for label, frames, mask, center, integrating in scans:
        n_scans += 1
        if args.narrow:
            narrow, crests = count_narrow_crests(frames, mask, center, integrating)
            if crests:
                n_found += 1
                n_narrow += narrow > 0
                print(f"- {label}: {narrow} of {crests} crests narrow", flush=True)
            continue
        if args.crests:
            held, across, most = count_crest_bins(frames, mask, center, integrating)
            if across:
                n_found += 1
                print(f"- {label}: {held} of {across} crest bins held outright (a crest "
                      f"bin's counts per frame up to {most:.0f})", flush=True)
            continue
        n_bins = count_sharp_bins(frames, mask, center, integrating)
        if n_bins:
            n_found += 1
            print(f"- {label}: {n_bins} bins", flush=True)
    if args.narrow:
        print(f"\nCrests found on {n_found} of {n_scans} scans, narrow ones on {n_narrow}.")
        return 0
    what = "Crests' half-pixel bins found" if args.crests else "Half-pixel bins held outright"
    print(f"\n{what} on {n_found} of {n_scans} scans.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
