"""Beyond the single frame: full-ring I(q) pooled over neighbouring frames, and transitions.

A frame's rings are held to the raw ring means pooled with its neighbouring frames' where
these agree within the noise, and to its own where a ring appeared, vanished or moved
(``consistency.pooled_ring_means``). Two in situ series (``simulate.scenes.insitu_series``)
test both sides of that rule, each at ``--counts`` per pixel, ``--seeds`` scans of
``--frames`` frames, the scan denoised by ``ScanDenoiser(budget_s=--budget).run``:

* ``phase_flash``: the rings of a second phase (LaB6, 0.6 × the strongest ring) present
  in frame k = frames // 2 only. On the full-ring I(q) (q axis, one bin per pixel) over the
  bins of the new rings: the share of their area frame k keeps (``kept``, should be
  >= 0.9), and the ghost of it in frames k-1 and k+1 (their I(q) minus their truth, summed
  over the same bins, over the new rings' area), next to raw's Poisson noise of that sum
  (``noise``: the ghost must not exceed it);
* ``phase_appearing`` (a slow ramp: the same rings fading in linearly) and the static
  frames of the flash series (those not next to frame k): the full-ring I(q) relative RMS
  error over raw's, the single-frame Poisson limit, with the pooling (``pooled``) and
  without it (``single``: ``pool_neighbour_rings=False`` on the same trained engine).

Offline (``run``: both neighbours) and live (``serve_frames`` with the previous frame
only, as the live plugin serves) are both scored.

    python -m bench.iq_transition --counts 0.25 1 10 --seeds 2 --budget 15 --size 128
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bluesky_symdenoise.denoise.engine import ScanDenoiser
from bluesky_symdenoise.denoise.targets import neighbour_frames, neighbour_mean
from bluesky_symdenoise.integrate.azimuthal import AzimuthalIntegration
from bluesky_symdenoise.simulate.scenes import insitu_series

from . import metrics


def _profiles(integ: AzimuthalIntegration, frames: np.ndarray, npt: int) -> np.ndarray:
    return np.stack([integ.integrate(f, npt=npt).intensity for f in frames])


def _relative_error(estimate: np.ndarray, truth: np.ndarray) -> float:
    keep = truth > 1e-3 * truth.max()
    return float(np.sqrt(np.mean(((estimate[keep] - truth[keep]) / truth[keep]) ** 2)))


def denoised_series(frames: np.ndarray, mask: np.ndarray, center, budget: float
                    ) -> dict[str, np.ndarray]:
    """The series denoised offline and live, pooled and single-frame (one trained engine)."""
    engine = ScanDenoiser(budget_s=budget)
    result = engine.run(frames, mask=mask, center=center, bad_pixels="mask")
    analysis, method = result.analysis, result.method
    prepared = analysis.prepared.frames
    n = len(prepared)
    out = {}
    for pooled in (True, False):
        engine.config.pool_neighbour_rings = pooled
        tag = "pooled" if pooled else "single"
        out[f"offline {tag}"] = engine.serve_frames(
            analysis, method=method, frames=prepared,
            neighbours=[neighbour_mean(prepared, i) for i in range(n)],
            ring_neighbours=[neighbour_frames(prepared, i) for i in range(n)])
        out[f"live {tag}"] = engine.serve_frames(
            analysis, method=method, frames=prepared,
            neighbours=[None, *prepared[:-1]])
    engine.config.pool_neighbour_rings = True
    out["method"] = method
    return out


def score_flash(integ, npt, truth, raw, found, k) -> dict[str, dict[str, float]]:
    """Kept share at frame k and ghosts at k-1, k+1, per estimate (and raw)."""
    i_true = _profiles(integ, truth, npt)
    new = i_true[k] - i_true[k - 1]
    window = new > 0.2 * new.max()
    area = float(new[window].sum())
    sigma = np.stack([integ.integrate(t, npt=npt, variance=t).sigma for t in truth])
    noise = [float(np.sqrt((sigma[j][window] ** 2).sum())) / area for j in (k - 1, k + 1)]
    rows = {}
    for name, frames in {"raw": raw, **found}.items():
        i_est = _profiles(integ, frames, npt)
        kept = float((i_est[k] - i_true[k - 1])[window].sum()) / area
        ghosts = [float((i_est[j] - i_true[j])[window].sum()) / area for j in (k - 1, k + 1)]
        rows[name] = {"kept": kept, "ghost_before": ghosts[0], "ghost_after": ghosts[1],
                      "noise_before": noise[0], "noise_after": noise[1]}
    return rows


def score_static(integ, npt, truth, raw, found, frames_scored) -> dict[str, float]:
    """Full-ring I(q) error over raw's, averaged over ``frames_scored``."""
    i_true = _profiles(integ, truth, npt)
    i_raw = _profiles(integ, raw, npt)
    out = {}
    for name, frames in found.items():
        i_est = _profiles(integ, frames, npt)
        out[name] = float(np.mean([_relative_error(i_est[j], i_true[j])
                                   / _relative_error(i_raw[j], i_true[j])
                                   for j in frames_scored]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", nargs="+", type=float, default=[0.25, 1.0, 10.0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--frames", type=int, default=7)
    parser.add_argument("--budget", type=float, default=15.0)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/iq_transition.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = ["offline pooled", "offline single", "live pooled", "live single"]
    command = (f"python -m bench.iq_transition --counts {' '.join(f'{c:g}' for c in args.counts)}"
               f" --seeds {args.seeds} --seed {args.seed} --frames {args.frames} --budget "
               f"{args.budget:g} --size {args.size}")
    flash_lines = ["| c/px | estimate | kept at k | ghost at k-1 (raw noise) | ghost at k+1 "
                   "(raw noise) |", "|---|---|---|---|---|"]
    static_lines = ["| c/px | series | " + " | ".join(names) + " |",
                    "|---|---|" + "---|" * len(names)]
    notes = []
    for j, counts in enumerate(args.counts):
        flash_rows, static_rows = [], {"flash, static frames": [], "phase_appearing": []}
        for s in range(args.seeds):
            seed = args.seed + 100 * s + j
            for change in ("phase_flash", "phase_appearing"):
                series = insitu_series("powder", n_frames=args.frames, change=change,
                                       shape=(args.size, args.size), seed=seed)
                rng = np.random.default_rng(seed)
                raw = series.expose(counts, rng).astype(np.float32)
                truth = series.scaled(counts)
                invalid = series.mask | series.defects.bad
                integ = AzimuthalIntegration(series.geometry, invalid)
                npt = metrics.default_npt(series.geometry)
                found = denoised_series(raw, series.mask, series.geometry.center, args.budget)
                notes.append(f"{change} {counts:g} seed {seed}: ours ran {found.pop('method')}")
                if change == "phase_flash":
                    k = series.info["flash_frame"]
                    flash_rows.append(score_flash(integ, npt, truth, raw, found, k))
                    far = [i for i in range(args.frames) if abs(i - k) > 1]
                    static_rows["flash, static frames"].append(
                        score_static(integ, npt, truth, raw, found, far))
                else:
                    static_rows["phase_appearing"].append(
                        score_static(integ, npt, truth, raw, found, range(args.frames)))
        for name in ["raw", *names]:
            def m(key, name=name, flash_rows=flash_rows):
                return float(np.mean([r[name][key] for r in flash_rows]))
            flash_lines.append(
                f"| {counts:g} | {name} | {m('kept'):.3f} | {m('ghost_before'):+.3f} "
                f"({m('noise_before'):.3f}) | {m('ghost_after'):+.3f} ({m('noise_after'):.3f}) |")
        for series_name, rows in static_rows.items():
            static_lines.append(f"| {counts:g} | {series_name} | " + " | ".join(
                f"{np.mean([r[n] for r in rows]):.2f}" for n in names) + " |")
        print("\n".join(flash_lines[-5:] + static_lines[-2:]), flush=True)
    text = "\n".join([
        f"`{command}`", "",
        "Transition: a second phase's rings in frame k only. 'kept': share of their "
        "full-ring I(q) area frame k keeps; 'ghost': frames k-1 and k+1, their I(q) minus "
        "their truth over the same bins, as a share of that area, with raw's Poisson noise "
        "of it (1 sigma) in brackets. Means over seeds.", "", *flash_lines, "",
        "Full-ring I(q) relative RMS error over raw's (the single-frame Poisson limit), "
        "means over frames and seeds: 'pooled' holds the rings to the ring means pooled "
        "with the neighbouring frames where they agree, 'single' to the frame's own.", "",
        *static_lines, "", *(f"- {n}" for n in notes)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
