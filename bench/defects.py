"""How many of the simulator's hot pixels the engine finds, and which it takes wrongly.

Each scan (``--frames`` frames of a ``--size``² bench scene, :func:`.quality.make_scan`)
goes through the engine's own checks: :func:`~bluesky_symdenoise.denoise.preprocess.
prepare_frames` (hot pixels against their neighbours, dead pixels), then, with the beam
centre, :func:`~bluesky_symdenoise.denoise.preprocess.sharp_ring_pixels` (the neighbour
test's hot pixels no brighter than three times their own 22.5° arc's median are taken back
as a sharp ring's pixels) and :func:`~bluesky_symdenoise.denoise.preprocess.find_ring_defects` (hot
pixels against their own ring). The simulator knows its hot pixels (``scene.defects.hot``),
so per scene and count level the table counts:

* the hot pixels outside the mask, how many the neighbour test finds, and how many of
  those the arc rule takes back (hot pixels lost again);
* how many of the rest the ring test finds (its recall on what the first test missed);
* pixels each test takes that are not hot or dead in the simulator (false defects: a spot or
  ring pixel repaired from its neighbourhood, its counts lost), and how many of the
  neighbour test's the arc rule takes back;
* how far the neighbour test's finds stand above their own 22.5° arc (scan sum over the
  arc's median, :func:`~bluesky_symdenoise.denoise.preprocess.over_own_arc`): the least of
  the true hot pixels' and the most of the false defects' (the arc rule's threshold,
  :data:`~bluesky_symdenoise.denoise.preprocess.ARC_RATIO`, lies between them).

A hot pixel both tests miss is one whose counts stay within a few times its ring's level
(the simulator draws a hot pixel's rate log-uniformly in 50-500 counts per frame, whatever
the scene, so on a bright ring it can be close to the ring's own level).

    python -m bench.defects --seeds 5
    python -m bench.defects --bench-scans       # which kept bench results' scans it changes

``--bench-scans`` runs the engine's analysis (:meth:`~bluesky_symdenoise.denoise.engine.
ScanDenoiser.analyse`, nothing trained) on every offline scan of the kept results
(``bench/results``: heldout, iq, bias, iq_transition, flat_panel) and on the warm-up frames
of the live ones (throughput, large_frames), and lists those where the ring test found a
pixel or the arc rule took one back: only their rows can change with them.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import numpy as np

from bluesky_symdenoise.denoise.preprocess import (
    find_ring_defects,
    over_own_arc,
    prepare_frames,
    sharp_ring_pixels,
)
from bluesky_symdenoise.simulate import scenes

from .quality import make_scan

KINDS = ("powder", "textured", "sharp_textured", "saxs", "fibre", "lattice",
         "lattice_one_sided")
COUNTS = (0.1, 0.25, 1.0, 10.0)


def count_defects(kind: str, counts: float, *, size: int, frames: int,
                  seed: int) -> dict[str, float]:
    """One scan's hot pixels (unmasked), found by each test, and false defects (counts);
    the least of the hot pixels' and the most of the false defects' scan sum over their
    arc's median, among the neighbour test's finds."""
    scan = make_scan(kind, counts, size=size, n_frames=frames, seed=seed)
    truth = scenes.make_scene(kind, shape=(size, size), seed=seed).defects
    center = scan.geometry.center
    prepared = prepare_frames(scan.frames, scan.mask, bad_pixels="mask")
    by_neighbours = prepared.defects.copy()
    # As ScanDenoiser.analyse: the arc rule first, then the ring test on what is left.
    taken_back = sharp_ring_pixels(prepared, scan.frames, center)
    prepared.restore(taken_back, scan.frames, "on a sharp ring")
    by_ring = find_ring_defects(prepared.frames.sum(axis=0), prepared.good, center)
    hot = truth.hot & ~scan.mask
    # Each neighbour-test find's raw scan sum over its 22.5° arc's median (the other good
    # pixels at its radius and azimuth): how far a false defect stands above its own arc.
    total = scan.frames.sum(axis=0, dtype=np.float64)
    over_arc = np.zeros(total.shape)
    over_arc[by_neighbours] = over_own_arc(total, ~scan.mask & ~by_neighbours, center,
                                           by_neighbours)
    found_hot = by_neighbours & truth.hot
    found_false = by_neighbours & ~truth.bad
    return {"hot": int(hot.sum()),
            "hot_over_arc_min": float(over_arc[found_hot].min()) if found_hot.any() else np.inf,
            "false_over_arc_max": (float(over_arc[found_false].max()) if found_false.any()
                                   else 0.0),
            "neighbours": int((by_neighbours & hot).sum()),
            "hot_taken_back": int((taken_back & hot).sum()),
            "ring": int((by_ring & hot).sum()),
            "false_neighbours": int(found_false.sum()),
            "false_taken_back": int((taken_back & ~truth.bad).sum()),
            "false_ring": int((by_ring & ~truth.bad).sum())}


def _found_by_ring(frames: np.ndarray, mask: np.ndarray, center: tuple[float, float],
                   integrating: bool = False) -> list[str]:
    from bluesky_symdenoise.denoise.api import detector_noise
    from bluesky_symdenoise.denoise.engine import ScanDenoiser

    options = {"detector": detector_noise("integrating")} if integrating else {}
    analysis = ScanDenoiser(None, **options).analyse(frames, mask=mask, center=center,
                                                     bad_pixels="mask")
    return [note for note in analysis.notes
            if "far above their own ring" in note or "on a sharp ring" in note]


#: One kept result's scan: its label, frames, mask, beam centre and whether it is integrating.
Scan = tuple[str, np.ndarray, np.ndarray, tuple[float, float], bool]


def kept_result_scans() -> Iterator[Scan]:
    """(label, frames, mask, centre, integrating) of every scan the kept results measured
    (their commands are in bench/results)."""
    from bluesky_symdenoise.simulate.scenes import insitu_series

    from . import flat_panel
    from .large_frames import _scan

    for seed0, kinds in ((469895, ("powder", "textured", "lattice", "lattice_one_sided",
                                    "insitu_drift", "saxs", "fibre")),
                         (212357, ("saxs", "fibre")), (5281, ("saxs", "fibre"))):
        for i, kind in enumerate(kinds):
            for j, counts in enumerate((1.0, 0.25)):
                scan = make_scan(kind, counts, size=256, n_frames=3, seed=seed0 + 100 * i + j)
                yield (f"heldout --seed {seed0}: {kind} {counts:g}", scan.frames, scan.mask,
                       scan.geometry.center, False)
    for kinds in (("powder", "textured", "sharp_textured"), ("saxs", "lattice", "insitu_drift")):
        for i, kind in enumerate(kinds):
            for j, counts in enumerate((0.1, 0.25, 1.0, 10.0)):
                for k in range(3):
                    seed = 1 + 1000 * k + 100 * i + j
                    scan = make_scan(kind, counts, size=128, n_frames=3, seed=seed)
                    yield (f"iq: {kind} {counts:g} seed {seed}", scan.frames, scan.mask,
                           scan.geometry.center, False)
    for kind, counts, n_scans, n_frames, seed0 in (("lattice_one_sided", 0.25, 4, 3, 451001),
                                                  ("powder", 0.1, 8, 6, 450726)):
        for k in range(n_scans):
            scan = make_scan(kind, counts, size=256, n_frames=n_frames, seed=seed0 + k)
            yield (f"bias: {kind} seed {seed0 + k}", scan.frames, scan.mask,
                   scan.geometry.center, False)
    for j, counts in enumerate((0.25, 1.0, 10.0)):
        for change in ("phase_flash", "phase_appearing"):
            series = insitu_series("powder", n_frames=7, change=change, shape=(128, 128),
                                   seed=1 + j)
            raw = series.expose(counts, np.random.default_rng(1 + j)).astype(np.float32)
            yield (f"iq_transition: {change} {counts:g}", raw, series.mask,
                   series.geometry.center, False)
    for name, kinds, gains, reads, psfs, design, seed0, n_frames in (
            ("default grid", flat_panel.SCENES, (2, 7, 20), (1, 4, 10), (0, 0.7), "star",
             4100, 3),
            ("unseen", flat_panel.SCENES, (3, 12), (2, 6), (0.5,), "full", 8300, 3),
            ("9 frames", ("sharp_textured", "lattice_one_sided"), (3, 12), (2, 6), (0.5,),
             "full", 8300, 9)):
        grid = flat_panel.detector_grid(gains, reads, psfs, design)
        for i, kind in enumerate(kinds):
            scene_seed = seed0 + 100 * i
            scene = scenes.make_scene(kind, shape=(128, 128), seed=scene_seed,
                                      detector=flat_panel.DETECTOR)
            for j, (gain, read, psf) in enumerate(grid):
                scan = flat_panel.make_flat_scan(scene, 1.0, gain=gain, read_noise=read,
                                                 psf_sigma=psf, n_frames=n_frames,
                                                 seed=scene_seed + 1 + j)
                yield (f"flat_panel {name}: {kind} gain {gain:g} read {read:g} psf {psf:g}",
                       scan.frames, scene.mask, scene.geometry.center, True)
    scene = scenes.make_scene("powder", shape=(256, 256), seed=474001)
    rng = np.random.default_rng(474001)
    yield ("throughput (warm-up)", np.stack([scene.expose(1.0, rng) for _ in range(4)]),
           scene.mask, scene.geometry.center, False)
    for detector, kind, seed in (("256x256", "powder", 20261201),
                                 ("Pilatus1M", "powder", 20261201),
                                 ("Eiger2_4M", "powder", 20261201),
                                 ("Pilatus2M", "textured", 7), ("Eiger2_4M", "textured", 7),
                                 ("Pilatus6M", "textured", 7)):
        raw, _, mask, geometry, _ = _scan(detector, kind, 1.0, 4, seed)
        yield (f"large_frames (warm-up): {detector} {kind}", np.stack(raw), mask,
               geometry.center, False)


def list_bench_scans() -> int:
    n_scans = n_found = 0
    for label, frames, mask, center, integrating in kept_result_scans():
        n_scans += 1
        notes = _found_by_ring(frames, mask, center, integrating)
        if notes:
            n_found += 1
            print(f"- {label}: {'; '.join(notes)}", flush=True)
    print(f"\nThe ring test found a pixel, or the arc rule took one back, on {n_found} of "
          f"{n_scans} scans.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", nargs="+", default=list(KINDS))
    parser.add_argument("--counts", nargs="+", type=float, default=list(COUNTS))
    parser.add_argument("--seeds", type=int, default=5, help="scans per cell")
    parser.add_argument("--seed", type=int, default=1000, help="first seed")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--bench-scans", action="store_true",
                        help="list the kept bench results' scans the ring test changes")
    args = parser.parse_args(argv)
    if args.bench_scans:
        return list_bench_scans()
    print(f"`python -m bench.defects --scenes {' '.join(args.scenes)} --counts "
          f"{' '.join(f'{c:g}' for c in args.counts)} --seeds {args.seeds} --seed {args.seed} "
          f"--size {args.size} --frames {args.frames}`")
    print()
    print(f"Seeds `seed + 7 k`, k < {args.seeds}, the same scene for each count level.")
    print()
    print("| scene | c/px | hot pixels | found by neighbours | of those taken back | missed "
          "| of those found by ring | false defects: neighbours, of those taken back / ring "
          "| over their arc: hot found, least / false, most |")
    print("|---|---|---|---|---|---|---|---|---|")
    counted = ("hot", "neighbours", "hot_taken_back", "ring", "false_neighbours",
               "false_taken_back", "false_ring")
    total = dict.fromkeys(counted, 0)
    least_hot, most_false = np.inf, 0.0
    for kind in args.scenes:
        for counts in args.counts:
            cell = dict.fromkeys(counted, 0)
            cell_hot, cell_false = np.inf, 0.0
            for k in range(args.seeds):
                found = count_defects(kind, counts, size=args.size, frames=args.frames,
                                      seed=args.seed + 7 * k)
                for key in counted:
                    cell[key] += int(found[key])
                cell_hot = min(cell_hot, found["hot_over_arc_min"])
                cell_false = max(cell_false, found["false_over_arc_max"])
            for key, value in cell.items():
                total[key] += value
            least_hot, most_false = min(least_hot, cell_hot), max(most_false, cell_false)
            missed = cell["hot"] - cell["neighbours"]
            print(f"| {kind} | {counts:g} | {cell['hot']} | {cell['neighbours']} | "
                  f"{cell['hot_taken_back']} | {missed} | {cell['ring']} | "
                  f"{cell['false_neighbours']}, {cell['false_taken_back']} / "
                  f"{cell['false_ring']} | {cell_hot:.2f} / {cell_false:.2f} |", flush=True)
    missed = total["hot"] - total["neighbours"]
    print()
    print(f"All: {total['hot']} hot pixels; the neighbour test found {total['neighbours']} "
          f"(the arc rule took {total['hot_taken_back']} of them back), the ring test "
          f"{total['ring']} of the {missed} it missed; false defects: "
          f"{total['false_neighbours']} by the neighbour test, of which the arc rule took "
          f"{total['false_taken_back']} back, and {total['false_ring']} by the ring test. The "
          f"neighbour test's finds over their 22.5° arc's median: hot pixels at least "
          f"{least_hot:.2f}, false defects at most {most_false:.2f} (0: none).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
