"""Where does the denoised I(q) error come from? Each stage of the pipeline, switched off.

On one scan per seed and count level (default: the sharp, mildly textured rings), the
middle frame is denoised step by step and its I(q) scored against the truth's, as a ratio
to the raw frame's error (full ring and 30° sector, q axis, one bin per pixel), with the
strongest peak's biases minus raw's on the same frame (``bench.iq``; its highest bin, then
its height and FWHM fitted as a Gaussian on a line, ``bench.iq.fitted_peak_bias``):

* the network alone (no raw consistency, no total-count rescale), fine-tuned with all its
  input channels (``all``), without the 180° partner channel, without the ring/arc-mean
  channels, without both (``none``), and the base model without fine-tuning (``base``);
* the same held to the raw counts (``consistency.py``), with the default 1 px ring bins
  and with finer ones (``--ring-bins``);
* the total-count rescale and the classical mix (``BlendWeights``) on top: the whole
  pipeline as ``denoise`` runs it (its holds pooled over the neighbouring frames, its
  per-shell angular model); and the same without the classical mix, without the angular
  model, and without either; with ``--spot-passes``, the whole pipeline with its spot
  holds in other numbers of scaling passes (``consistency.FEATURE_MATCH_PASSES``);
* the classical mode (180° average + Anscombe + BM3D, and BM3D alone), unheld and held;
* the same scene with the beam centre moved to the nearest half-integer (exact 180°
  partners, no bilinear resampling);
* a control: the mean of the scan's raw frames (unbiased, less noisy: what the pipeline's
  pooled holds rest on), paired with the one raw frame like every stage.

With several ``--seeds``, a summary follows: per count level and stage, the mean full-ring
error over raw's and the strongest peak's biases minus raw's, mean ± standard error over
the seeds (a single scan's peak is as noisy as raw's own).

    python -m bench.iq_ablation --counts 1 0.25 --seeds 1 --steps 150
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

from bluesky_symdenoise.denoise import consistency as consistency_module
from bluesky_symdenoise.denoise.channels import ChannelContext
from bluesky_symdenoise.denoise.classical import bm3d_poisson, classical_denoise
from bluesky_symdenoise.denoise.consistency import RawConsistency
from bluesky_symdenoise.denoise.engine import ScanDenoiser, held_spots, keep_total_counts
from bluesky_symdenoise.simulate import scenes

from .iq import FIT_KEYS, FRAMES_MEAN, PEAK_KEYS, Estimate, _mean_pm, _paired, score_scan
from .quality import BenchScan


def make_scan(kind: str, counts: float, *, size: int, n_frames: int, seed: int,
              half_integer: bool = False) -> BenchScan:
    """As :func:`bench.quality.make_scan` (static scenes), optionally with the scene's own
    beam centre rounded to the nearest half-integer."""
    scene = scenes.make_scene(kind, shape=(size, size), seed=seed)
    if half_integer:
        center = tuple(np.round(np.asarray(scene.geometry.center) * 2) / 2)
        # .0 would also give exact partners; keep .5 (a pixel corner) like real detectors.
        center = tuple(c + 0.5 if c == np.floor(c) else c for c in center)
        scene = scenes.make_scene(kind, shape=(size, size), seed=seed, center=center)
    rng = np.random.default_rng(seed)
    frames = np.stack([scene.expose(counts, rng) for _ in range(n_frames)])
    return BenchScan(kind, frames, scene.scaled(counts), scene.mask, scene.geometry,
                     scene.regions, scene.defects.bad)


def _context(ctx: ChannelContext, channels: str) -> ChannelContext:
    if channels in ("all", "base"):
        return ctx
    if channels == "no-partner":
        return ctx.without_partner()
    no_rings = dataclasses.replace(ctx, rings=None, ring_valid=None, arcs=None,
                                   arc_valid=None)
    if channels == "no-rings":
        return no_rings
    return no_rings.without_partner()  # "none"


def _network(scan: BenchScan, channels: str, steps: int, seconds: float):
    """A denoiser fine-tuned with the given input channels, and its scan analysis."""
    denoiser = ScanDenoiser(method="symmetry", max_steps=max(steps, 0))
    analysis = denoiser.analyse(scan.frames, mask=scan.mask, center=scan.geometry.center,
                                bad_pixels="mask")
    analysis = dataclasses.replace(analysis, context=_context(analysis.context, channels))
    start = time.perf_counter()
    if steps > 0 and channels != "base":
        denoiser.fit(analysis, method="symmetry", seconds=seconds)
    else:
        denoiser.use_pretrained()
    return denoiser, analysis, time.perf_counter() - start


def _unheld(denoiser: ScanDenoiser, analysis, scan: BenchScan) -> np.ndarray:
    bare = dataclasses.replace(analysis, consistency=None)
    frames = bare.prepared.frames
    from bluesky_symdenoise.denoise.targets import neighbour_mean

    i = scan.index
    return denoiser.denoise_frames(bare, method="symmetry", frames=[frames[i]],
                                   neighbours=[neighbour_mean(frames, i)])[0]


def _consistency(analysis, scan: BenchScan, ring_bins: str) -> RawConsistency:
    """The scan's raw consistency with ring means held in the given radial bins (px,
    comma-separated, coarse to fine)."""
    old = consistency_module.RING_BINS_PX
    consistency_module.RING_BINS_PX = tuple(float(b) for b in ring_bins.split(","))
    try:
        prepared = analysis.prepared
        return RawConsistency.for_scan(prepared.frames.sum(0), prepared.good, analysis.center,
                                       ring_valid=analysis.context.ring_valid
                                       if analysis.context.ring_valid is not None else None,
                                       frames=len(prepared.frames))
    finally:
        consistency_module.RING_BINS_PX = old


def _total(frame: np.ndarray, raw: np.ndarray, good: np.ndarray,
           spots: np.ndarray | None) -> np.ndarray:
    """``frame`` scaled to the raw frame's total as the engine does (its held spots kept)."""
    out = keep_total_counts(frame[None], raw[None], good, spots=spots)[0]
    return np.where(good, out, 0.0)


def _pipelines(denoiser: ScanDenoiser, analysis, scan: BenchScan,
               spot_passes: Sequence[int] = ()) -> dict[str, np.ndarray]:
    """The scan's middle frame as ``denoise`` serves it from this trained network (the
    holds pooled over the neighbouring frames, the angular model, the classical mix, the
    total), and the same without the classical mix, without the angular model and without
    either; then the whole pipeline with its spot holds in each of ``spot_passes`` scaling
    passes (``consistency.FEATURE_MATCH_PASSES``)."""
    found = {}
    angular = denoiser.angular
    rows = [("pipeline (hold + mix + total)", True, True, None),
            ("pipeline without the classical mix", True, False, None),
            ("pipeline without the angular model", False, True, None),
            ("pipeline without either", False, False, None),
            *((f"pipeline, spot holds in {n} passes", True, True, n) for n in spot_passes)]
    default_passes = consistency_module.FEATURE_MATCH_PASSES
    for label, use_angular, use_mix, passes in rows:
        # (Where the scan has no angular model or no mix, a row is the whole pipeline.)
        denoiser.angular = angular if use_angular else None
        consistency_module.FEATURE_MATCH_PASSES = passes or default_passes
        try:
            predicted = denoiser.predict(analysis, method="symmetry")
            if use_mix and denoiser.blend is not None and not denoiser.blend.first_only:
                predicted = denoiser._mix_with_classical(analysis, predicted, denoiser.blend)
        finally:
            denoiser.angular = angular
            consistency_module.FEATURE_MATCH_PASSES = default_passes
        found[label] = denoiser._finish(predicted, analysis,
                                        "symmetry")[scan.index].astype(np.float64)
    return found


def variants(scan: BenchScan, args) -> dict[str, np.ndarray]:
    """Every stage's estimate of the scan's middle frame."""
    found: dict[str, np.ndarray] = {}
    raw = scan.frames[scan.index].astype(np.float64)
    found["raw"] = raw
    # A control: unbiased, with the noise of all the scan's frames (what the pipeline's
    # holds, pooled over the neighbouring frames, rest on).
    found[FRAMES_MEAN] = scan.frames.mean(0).astype(np.float64)
    for channels in args.channels:
        denoiser, analysis, seconds = _network(scan, channels, args.steps, args.seconds)
        good = analysis.prepared.good
        net = _unheld(denoiser, analysis, scan).astype(np.float64)
        steps = denoiser.training.steps if denoiser.training else 0
        print(f"  net[{channels}]: {steps} steps in {seconds:.0f} s", flush=True)
        found[f"net[{channels}]"] = net
        for ring_bin in args.ring_bins:
            held = _consistency(analysis, scan, ring_bin).apply(raw, net)
            found[f"net[{channels}] + hold {ring_bin}px"] = held
            if ring_bin == args.ring_bins[0]:
                found[f"net[{channels}] + hold {ring_bin}px + total"] = _total(
                    held.astype(np.float64), raw, good,
                    held_spots(analysis, "symmetry"))
        if channels == "all":
            # The whole pipeline as ``denoise`` runs it on this trained network.
            # Then the same without its classical mix, and without its angular model.
            _, reason = denoiser._check_against_classical(analysis, "symmetry", "")
            found.update(_pipelines(denoiser, analysis, scan, args.spot_passes))
            print(f"  pipeline: {reason.strip('; ')}", flush=True)
        if channels == args.channels[0] and not args.no_classical:
            validity = analysis.symmetry.valid
            bad = analysis.prepared.bad
            c_sym = classical_denoise(raw, mask=bad, center=analysis.center,
                                      validity=validity).astype(np.float64)
            c_plain = bm3d_poisson(raw, bad).astype(np.float64)
            cons = _consistency(analysis, scan, args.ring_bins[0])
            found["sym180+bm3d"] = c_sym
            found["sym180+bm3d + hold"] = cons.apply(raw, c_sym)
            found["bm3d"] = c_plain
            found["bm3d + hold"] = cons.apply(raw, c_plain)
    return found


def _rows(kind, counts, seed, label, scored) -> list[str]:
    raw = scored["raw"]
    lines = []
    for name, row in scored.items():
        paired = " / ".join(f"{row['full'][k] - raw['full'][k]:+.1%}"
                            for k in PEAK_KEYS + FIT_KEYS)
        lines.append(f"| {kind} {label} | {counts:g} | {seed} | {name} | "
                     f"{row['full']['err']:.2%} | {row['full']['err'] / raw['full']['err']:.2f}"
                     f" | {row['sector']['err'] / raw['sector']['err']:.2f} | "
                     f"{row['worst_ratio']:.2f} | {paired} | {row['psnr']:.2f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scene", default="sharp_textured")
    parser.add_argument("--counts", nargs="+", type=float, default=[1.0, 0.25])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--steps", type=int, default=150, help="fine-tuning steps per net")
    parser.add_argument("--seconds", type=float, default=120.0, help="cap per net")
    parser.add_argument("--channels", nargs="+", default=["all", "no-partner", "no-rings",
                                                          "none"])
    parser.add_argument("--ring-bins", nargs="+", default=["1", "0.5", "4,2,1,0.5"],
                        help="radial bins (px) of the ring hold, comma-separated coarse to "
                             "fine for a multi-scale hold")
    parser.add_argument("--spot-passes", nargs="*", type=int, default=[],
                        help="also the whole pipeline with its spot holds in each of these "
                             "numbers of scaling passes")
    parser.add_argument("--half-integer", action="store_true",
                        help="also the same scene with a half-integer beam centre")
    parser.add_argument("--no-classical", action="store_true")
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--npt-factors", nargs="+", type=float, default=[0.5, 1.0, 2.0])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    words = sys.argv[1:] if argv is None else argv
    print(f"# python -m bench.iq_ablation {' '.join(words)}".rstrip())
    print("| scan | c/px | seed | stage | I(q) err full | / raw | 30° / raw | worst / raw | "
          "peak area / height / breadth / position; fitted height / FWHM, minus raw | "
          "PSNR dB |")
    print("|---" * 10 + "|", flush=True)
    paired: dict[tuple[float, str], list[dict[str, float]]] = {}
    for counts in args.counts:
        for seed in args.seeds:
            for half in ([False, True] if args.half_integer else [False]):
                scan = make_scan(args.scene, counts, size=args.size, n_frames=args.frames,
                                 seed=seed, half_integer=half)
                label = ("centre " + ", ".join(f"{c:.2f}" for c in scan.geometry.center))
                found = variants(scan, args)
                scored = score_scan(scan, {k: Estimate(v, np.maximum(v, 0))
                                           if k != "raw" else Estimate(v, None)
                                           for k, v in found.items()}, args.npt_factors)
                print("\n".join(_rows(args.scene, counts, seed, label, scored)), flush=True)
                if not half:
                    for name, row in scored.items():
                        paired.setdefault((counts, name), []).append(
                            {k: row["full"][k] - scored["raw"]["full"][k]
                             for k in PEAK_KEYS + FIT_KEYS}
                            | {"ratio": row["full"]["err"] / scored["raw"]["full"]["err"]})
    if len(args.seeds) > 1:
        print("\n".join(["", *_summary(args.scene, paired)]), flush=True)
    return 0


def _summary(scene: str, paired: dict[tuple[float, str], list[dict[str, float]]]
             ) -> list[str]:
    """Per count level and stage, over the seeds: the full-ring error over raw's (mean) and
    the strongest peak's biases minus raw's on the same frame (mean ± standard error)."""
    lines = [f"{scene}, over the seeds (the beam centre as drawn): mean ± standard error",
             "", "| c/px | stage | scans | full ring / raw | peak area / height / breadth / "
             "position; fitted height / FWHM, minus raw | fitted height / FWHM, minus the "
             "control's |", "|---|---|---|---|---|---|"]
    for (counts, name), rows in paired.items():
        peak = " / ".join(_mean_pm([r[k] for r in rows]) for k in PEAK_KEYS + FIT_KEYS)
        # Paired scan by scan with the control (the mean of the scan's raw frames).
        control = paired.get((counts, FRAMES_MEAN), [])
        minus_control = (_paired(rows, control, FIT_KEYS) if len(control) == len(rows)
                         else "—")
        ratio = float(np.mean([r["ratio"] for r in rows]))
        lines.append(f"| {counts:g} | {name} | {len(rows)} | {ratio:.2f} | {peak} | "
                     f"{minus_control} |")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
