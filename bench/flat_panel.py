"""Integrating detectors (flat panels, CCD/CMOS): ours and GAT+BM3D on frames in ADU.

Frames are simulated by :func:`bluesky_symdenoise.simulate.noise.expose_integrating`: photons
``~ Poisson`` at ``--counts`` photons/pixel, spread by the scintillator's point spread
(``--psf``, px), ``gain`` ADU per photon, an offset and Gaussian readout noise, and one
measured dark (offset + mean of 16 dark frames) subtracted from every frame of the scan, so
negative values are ordinary. The scenes sit on a PerkinElmer flat panel (pyFAI ``Perkin``,
200 µm pixels, no module gaps), with a beamstop, its arm and unmasked hot and dead pixels.
Each scan is denoised twice, by ``denoise_scan(..., detector="integrating")`` with
``method="auto"`` (ours) and ``method="classical"`` (generalised Anscombe + BM3D), with the
gain and readout noise *not* given (estimated from the scan); the middle frame is scored
against the noise-free truth (the blurred expectation) on valid pixels (not masked, not a hot
or dead pixel). Columns:

* PSNR (dB) of raw, classical and ours, all in photons (ADU over the *true* gain);
* total counts over all frames of classical and ours against the raw total (dark
  subtracted), as a relative difference;
* the strongest ring of the truth's full-ring I(q) (ring scenes): height and integral
  breadth biases against the truth (:func:`bench.iq.peak_bias`), ours / classical / raw (raw
  is unbiased, so its value shows one frame's noise);
* the one-sided feature (``lattice_one_sided``): ``sum(estimate) / sum(truth) - 1`` over it
  (:func:`bench.metrics.region_ratio`, as in :mod:`bench.bias`), ours / classical / raw,
  and the same over it and :data:`AROUND_PX` pixels around it (a spot made broader loses
  intensity from its pixels to its surroundings, and keeps it there);
* full-ring I(q) relative RMS error (:func:`bench.metrics.iq_relative_error`), ours / raw;
* the gain and readout noise the engine estimated (``provenance["detector_noise"]``, ours'
  call) against the true ones, and its noise factor (photon variance over mean) against the
  kernel's ``Σ k²``.

The default grid varies one factor at a time around gain 7 ADU/photon, read noise 4 ADU,
no point spread, plus the hardest corner (lowest gain, highest read noise, widest PSF);
``--design full`` runs every combination. ``--unseen`` swaps in gains, read noises, PSF and
seeds that nothing was tuned on. ``--out`` writes (or replaces) this preset's section of the
result file.

With ``--steps N`` ours fine-tunes for exactly N seeded steps instead of for the budget's
wall time (the budget still caps them): the rows then do not depend on the machine's speed,
and a scan's PSNR can be followed against the length of its training.

``--calibration-sizes 128 2048`` runs the engine's calibration alone
(:func:`~bluesky_symdenoise.denoise.detector_noise.calibrate`, nothing denoised) on the same
grid, scenes and seeds at each frame size: the estimates' error against the frame's size
(2048² is a PerkinElmer XRD 1621's whole frame at 200 µm; at 128² the scans are those of
the denoising table, so its estimates are that table's), with the call's time and its peak
of traced memory (numpy's allocations, ``tracemalloc``) per pixel.

    python -m bench.flat_panel --out bench/results/flat_panel.md              # ~31 min on 2 cores
    python -m bench.flat_panel --unseen --out bench/results/flat_panel.md
    python -m bench.flat_panel --scenes powder --gains 7 --reads 4 --psf 0 --budget 10
    python -m bench.flat_panel --calibration-sizes 128 2048 --out bench/results/flat_panel.md
    python -m bench.flat_panel --counting-twins --scenes lattice_one_sided --out ...

``--counting-twins`` answers "is a one-sided feature kept on an integrating detector as on a
counting one?" like for like: each scan's twin counts the same photons' expectation (Poisson
of the blurred truth, the same defects and mask, no gain, no readout noise), and ours
denoises both (``method="auto"``); the feature's intensity kept is scored over *all* frames
(three times the counts of one), with the share of its pixels the engine found and held as
a spot (:meth:`~bluesky_symdenoise.denoise.consistency.RawConsistency.spots`). A second
twin counts the photons at *matched information* (:func:`matched_scale`): its expectation is
the truth times ``λ / (λ + (σ/g)²)``, ``λ`` the feature's mean photons a pixel, so that the
feature's total is known as well counted as integrated (1 without readout noise): "is the
feature kept as on counting data that hold as much information about it?"
"""

from __future__ import annotations

import argparse
import itertools
import math
import platform
import time
import traceback
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from bluesky_symdenoise.denoise.api import denoise_scan
from bluesky_symdenoise.denoise.detector_noise import READOUT_DOMINATED, DetectorNoise, calibrate
from bluesky_symdenoise.integrate.azimuthal import AzimuthalIntegration
from bluesky_symdenoise.simulate import scenes
from bluesky_symdenoise.simulate.noise import blur_psf, expose, measure_dark, psf_noise_factor

from . import metrics
from .iq import peak_bias

SCENES = ("powder", "sharp_textured", "lattice_one_sided", "saxs")
#: The one-sided feature is also scored over its pixels and this many pixels around them.
AROUND_PX = 3
RING_SCENES = ("powder", "sharp_textured")
#: A monolithic flat panel (pyFAI ``Perkin``: PerkinElmer XRD, 200 µm, no module gaps).
DETECTOR = "Perkin"
OFFSET_ADU = 100.0
DARK_FRAMES = 16


@dataclass(frozen=True)
class Preset:
    """A named grid of detectors, scenes and seeds."""

    title: str
    gains: tuple[float, ...]
    reads: tuple[float, ...]
    psfs: tuple[float, ...]
    counts: tuple[float, ...]
    seed: int
    design: str


PRESETS = {
    "default": Preset("Default grid", gains=(2.0, 7.0, 20.0), reads=(1.0, 4.0, 10.0),
                      psfs=(0.0, 0.7), counts=(1.0,), seed=4100, design="star"),
    "unseen": Preset("Unseen detectors (gains, read noises, PSF and seeds not tuned on)",
                     gains=(3.0, 12.0), reads=(2.0, 6.0), psfs=(0.5,), counts=(1.0,),
                     seed=8300, design="full"),
}


def detector_grid(gains, reads, psfs, design: str) -> list[tuple[float, float, float]]:
    """(gain, read noise, PSF σ) combinations.

    ``"full"``: every combination. ``"star"``: one factor at a time around the centre
    (middle gain, middle read noise, first PSF), plus the hardest corner (lowest gain,
    highest read noise, widest PSF).
    """
    if design == "full":
        return list(itertools.product(gains, reads, psfs))
    centre = (gains[len(gains) // 2], reads[len(reads) // 2], psfs[0])
    grid = [(g, centre[1], centre[2]) for g in gains]
    grid += [(centre[0], r, centre[2]) for r in reads]
    grid += [(centre[0], centre[1], p) for p in psfs]
    grid.append((min(gains), max(reads), max(psfs)))
    unique: list[tuple[float, float, float]] = []
    for point in grid:
        if point not in unique:
            unique.append(point)
    return unique


@dataclass
class FlatScan:
    """A simulated flat-panel scan (ADU) and its truth in photons."""

    scene: scenes.Scene
    frames: np.ndarray
    truth: np.ndarray
    gain: float
    read_noise: float
    psf_sigma: float

    @property
    def index(self) -> int:
        return len(self.frames) // 2

    @property
    def scored(self) -> np.ndarray:
        return self.scene.usable


def make_flat_scan(scene: scenes.Scene, counts: float, *, gain: float, read_noise: float,
                   psf_sigma: float, n_frames: int, seed: int) -> FlatScan:
    """``n_frames`` dark-subtracted frames sharing one measured dark."""
    rng = np.random.default_rng(seed)
    dark = measure_dark(scene.expectation.shape, rng=rng, read_noise=read_noise,
                        offset=OFFSET_ADU, dark_frames=DARK_FRAMES)
    frames = np.stack([scene.expose_integrating(counts, rng, gain=gain,
                                                read_noise=read_noise, offset=OFFSET_ADU,
                                                psf_sigma=psf_sigma, dark=dark)
                       for _ in range(n_frames)])
    truth = blur_psf(scene.scaled(counts), psf_sigma)
    return FlatScan(scene, frames, truth, gain, read_noise, psf_sigma)


def grid_scans(kinds, counts, grid, *, seeds: int, seed0: int, sizes: tuple[int, ...],
               frames: int):
    """``(case, scan)`` over the grid, in the result file's order: per seed ``k``, scene
    ``i`` (scene seed ``seed0 + 1000 k + 100 i``), frame size, count level and detector
    (noise seed: the scene seed + 1 + 10 × the count level's index + the grid index)."""
    for k in range(seeds):
        for i, kind in enumerate(kinds):
            scene_seed = seed0 + 1000 * k + 100 * i
            for size in sizes:
                scene = scenes.make_scene(kind, shape=(size, size), seed=scene_seed,
                                          detector=DETECTOR)
                for c_index, c in enumerate(counts):
                    for j, (gain, read, psf) in enumerate(grid):
                        noise_seed = scene_seed + 1 + 10 * c_index + j
                        case = {"scene": kind, "gain": gain, "read": read, "psf": psf,
                                "counts": c, "size": size, "seed": scene_seed,
                                "noise_seed": noise_seed}
                        yield case, make_flat_scan(scene, c, gain=gain, read_noise=read,
                                                   psf_sigma=psf, n_frames=frames,
                                                   seed=noise_seed)


def _denoise(scan: FlatScan, method: str, budget: float, steps: int | None = None
             ) -> tuple[Any, float]:
    """One denoise call and its wall time; ``steps``: fine-tune for exactly that many
    seeded steps (the budget still caps them), not for the budget's wall time."""
    fixed = {"max_steps": steps, "seed": 0} if steps else {}
    start = time.perf_counter()
    result = denoise_scan(scan.frames, mask=scan.scene.mask,
                          center=scan.scene.geometry.center, method=method, budget_s=budget,
                          detector="integrating", **fixed)
    return result, time.perf_counter() - start


def score_row(scan: FlatScan, ours: Any, classical: Any) -> dict[str, Any]:
    """Every column of one row; estimates are converted to photons with the true gain."""
    scene, mid, valid = scan.scene, scan.index, scan.scored
    estimates = {"raw": scan.frames[mid] / scan.gain,
                 "classical": classical.denoised[mid] / scan.gain,
                 "ours": ours.denoised[mid] / scan.gain}
    estimates = {k: np.asarray(v, dtype=np.float64) for k, v in estimates.items()}
    row: dict[str, Any] = {"method": ours.method}
    row["psnr"] = {k: metrics.psnr(v, scan.truth, valid) for k, v in estimates.items()}
    raw_total = float(scan.frames[:, valid].astype(np.float64).sum())
    row["total"] = {k: float(r.denoised[:, valid].astype(np.float64).sum()) / raw_total - 1.0
                    for k, r in (("classical", classical), ("ours", ours))}
    if scene.name in RING_SCENES:
        integ = AzimuthalIntegration(scene.geometry, ~valid)
        npt = metrics.default_npt(scene.geometry)
        ref = integ.integrate(scan.truth, npt=npt)
        row["peak"] = {k: peak_bias(ref.q_nm, integ.integrate(v, npt=npt).intensity,
                                    ref.intensity) for k, v in estimates.items()}
    if "one_sided_feature" in scene.regions:
        region = scene.regions["one_sided_feature"]
        around = ndimage.binary_dilation(region, iterations=AROUND_PX) & valid
        row["one_sided_around"] = {k: metrics.region_ratio(v, scan.truth, around) - 1.0
                                   for k, v in estimates.items()}
        row["one_sided"] = {k: metrics.region_ratio(v, scan.truth, region) - 1.0
                            for k, v in estimates.items()}
    row["iq_err"] = {k: metrics.iq_relative_error(estimates[k], scan.truth, scene.geometry,
                                                  ~valid) for k in ("ours", "raw")}
    noise = ours.provenance.get("detector_noise") or {}
    row["noise"] = noise
    row["gain_err"] = _relative(noise.get("gain"), scan.gain)
    row["read_err"] = _relative(noise.get("read_noise"), scan.read_noise)
    # The engine's own standard errors, on the same relative scale.
    row["gain_sigma"] = _relative(noise.get("gain_error"), scan.gain) + 1.0
    row["read_sigma"] = _relative(noise.get("read_noise_error"), scan.read_noise) + 1.0
    row["noise_factor"] = (noise.get("noise_factor"), psf_noise_factor(scan.psf_sigma))
    classical_noise = classical.provenance.get("detector_noise") or {}
    row["classical_gain_err"] = _relative(classical_noise.get("gain"), scan.gain)
    return row


def _relative(estimate: Any, true: float) -> float:
    if estimate is None or true == 0:
        return math.nan
    return float(estimate) / true - 1.0


def _f(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return format(value, spec)


def _triple(values: dict[str, float] | None, spec: str, keys=("ours", "classical", "raw"),
            get=lambda v: v) -> str:
    if not values:
        return "—"
    return " / ".join(_f(get(values[k]), spec) for k in keys)


HEADER = ("| scene | gain | read | PSF σ | c/px | ours ran | PSNR dB raw / classical / ours "
          "| total Δ classical / ours | ring height ours / classical / raw | ring breadth "
          "ours / classical / raw | one-sided ours / classical / raw | I(q) err ours / raw "
          "| gain est Δ ± σ | read est Δ ± σ | noise factor est / true | s ours / classical |")
SEPARATOR = "|---" * 16 + "|"


def _row_head(case: dict[str, Any]) -> str:
    """A table row's first five cells: scene, gain, readout noise, PSF and count level."""
    return (f"| {case['scene']} | {case['gain']:g} | {case['read']:g} | {case['psf']:g} | "
            f"{case['counts']:g} | ")


def format_row(case: dict[str, Any], row: dict[str, Any]) -> str:
    head = _row_head(case)
    if "error" in row:
        return head + f"**{row['error']}** |" + " |" * 10
    psnr = row["psnr"]
    nf_est, nf_true = row["noise_factor"]
    peak = row.get("peak")
    return head + " | ".join([
        row["method"],
        f"{psnr['raw']:.2f} / {psnr['classical']:.2f} / {psnr['ours']:.2f}",
        f"{row['total']['classical']:+.2%} / {row['total']['ours']:+.2%}",
        _triple(peak, "+.1%", get=lambda p: p["height"]),
        _triple(peak, "+.1%", get=lambda p: p["breadth"]),
        _triple(row.get("one_sided"), "+.1%") + (
            f"; ±{AROUND_PX} px: {_triple(row['one_sided_around'], '+.1%')}"
            if "one_sided_around" in row else ""),
        _triple(row["iq_err"], ".2%", keys=("ours", "raw")),
        f"{_f(row['gain_err'], '+.1%')} ± {_f(row['gain_sigma'], '.1%')}",
        f"{_f(row['read_err'], '+.1%')} ± {_f(row['read_sigma'], '.1%')}",
        f"{_f(nf_est, '.3f')} / {nf_true:.3f}",
        f"{row['seconds']:.0f} / {row['seconds_classical']:.0f}",
    ]) + " |"


def problems(case: dict[str, Any], row: dict[str, Any]) -> list[str]:
    """What the brief calls a clear bug: an exception, totals off by more than 1 %, a gain
    estimate off by more than 10 %."""
    where = (f"{case['scene']} gain {case['gain']:g} read {case['read']:g} psf "
             f"{case['psf']:g} c/px {case['counts']:g} seed {case['seed']}")
    if "error" in row:
        return [f"{where}: {row['error']}"]
    found = [f"{where}: total counts of {k} {v:+.2%} vs raw"
             for k, v in row["total"].items() if abs(v) > 0.01]
    if not abs(row["gain_err"]) <= 0.10:
        found.append(f"{where}: gain estimate {row['noise'].get('gain')!r} vs true "
                     f"{case['gain']:g} ({_f(row['gain_err'], '+.1%')})")
    return found


def summary(rows: list[tuple[dict, dict]]) -> list[str]:
    ok = [r for _, r in rows if "error" not in r]
    if not ok:
        return ["No row ran."]
    gain_c = [r["psnr"]["classical"] - r["psnr"]["raw"] for r in ok]
    gain_o = [r["psnr"]["ours"] - r["psnr"]["raw"] for r in ok]
    wins = sum(r["psnr"]["ours"] > r["psnr"]["classical"] for r in ok)
    gain_errs = [abs(r["gain_err"]) for r in ok if math.isfinite(r["gain_err"])]
    read_errs = [abs(r["read_err"]) for r in ok if math.isfinite(r["read_err"])]
    lines = [f"Over {len(ok)} rows: PSNR gain over raw, mean classical {np.mean(gain_c):+.2f} "
             f"dB, ours {np.mean(gain_o):+.2f} dB; ours above classical in {wins} of "
             f"{len(ok)} rows."]
    if gain_errs:
        lines.append(f"Gain estimate |Δ|: median {np.median(gain_errs):.1%}, largest "
                     f"{max(gain_errs):.1%}; read noise |Δ|: median "
                     f"{np.median(read_errs):.1%}, largest {max(read_errs):.1%}.")
    return lines


CALIBRATION_HEADER = ("| scene | gain | read | PSF σ | size | gain est Δ ± σ | read est Δ ± σ "
                      "| noise factor est / true | flagged | s | peak MB (B/px) |")


def calibration_row(scan: FlatScan) -> dict[str, Any]:
    """The engine's calibration of ``scan`` (gain and readout noise not given), timed, with
    the peak of numpy's traced allocations during the call."""
    good = ~scan.scene.mask & np.all(np.isfinite(scan.frames), axis=0)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        found = calibrate(scan.frames, good, DetectorNoise(kind="integrating"))
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    flagged = []
    if found.gain_lower_bound:
        flagged.append("lower bound")
    if "gain" in found.imprecise:
        flagged.append("gain imprecise")
    if "read_noise" in found.imprecise:
        flagged.append("read imprecise")
    return {"gain_err": found.gain / scan.gain - 1.0, "gain_sigma": found.gain_error / scan.gain,
            "read_err": found.read_noise / scan.read_noise - 1.0,
            "read_sigma": found.read_noise_error / scan.read_noise,
            "noise_factor": (found.noise_factor, psf_noise_factor(scan.psf_sigma)),
            "flagged": flagged, "seconds": seconds, "peak": peak,
            "pixels": int(scan.frames[0].size)}


def format_calibration_row(case: dict[str, Any], row: dict[str, Any]) -> str:
    nf_est, nf_true = row["noise_factor"]
    return (f"| {case['scene']} | {case['gain']:g} | {case['read']:g} | {case['psf']:g} | "
            f"{case['size']}² | {row['gain_err']:+.1%} ± {row['gain_sigma']:.1%} | "
            f"{row['read_err']:+.1%} ± {row['read_sigma']:.1%} | {nf_est:.3f} / {nf_true:.3f} | "
            f"{', '.join(row['flagged']) or '—'} | {row['seconds']:.1f} | "
            f"{row['peak'] / 1e6:.0f} ({row['peak'] / row['pixels']:.0f}) |")


def calibration_summary(rows: list[tuple[dict, dict]], sizes: tuple[int, ...]) -> list[str]:
    """Per size: estimates within 10 %, misses the engine flagged, and errors beyond 3 σ."""
    lines = []
    for size in sizes:
        at = [r for c, r in rows if c["size"] == size]
        if not at:
            continue
        n = len(at)
        gain_ok = sum(abs(r["gain_err"]) <= 0.10 for r in at)
        read_ok = sum(abs(r["read_err"]) <= 0.10 for r in at)
        unflagged = sum(abs(r["gain_err"]) > 0.10
                        and not {"lower bound", "gain imprecise"} & set(r["flagged"])
                        for r in at)
        read_unflagged = sum(abs(r["read_err"]) > 0.10 and "read imprecise" not in r["flagged"]
                             for r in at)
        imprecise = [sum(f in r["flagged"] for r in at)
                     for f in ("gain imprecise", "read imprecise")]
        beyond = sum(abs(r["gain_err"]) > 3 * r["gain_sigma"] for r in at)
        lines.append(
            f"- {size}²: gain within 10 % in {gain_ok} of {n} (largest |Δ| "
            f"{max(abs(r['gain_err']) for r in at):.1%}; misses not flagged: {unflagged}), "
            f"readout noise within 10 % in {read_ok} of {n} (largest "
            f"{max(abs(r['read_err']) for r in at):.1%}; misses not flagged: "
            f"{read_unflagged}); flagged imprecise (± over 5 %): gain {imprecise[0]}, "
            f"readout noise {imprecise[1]}; gain off by more than 3 of its σ in "
            f"{beyond}; {max(r['seconds'] for r in at):.1f} s and "
            f"{max(r['peak'] / r['pixels'] for r in at):.0f} B/px at most.")
    return lines


def run_calibration(args: argparse.Namespace, grid: list[tuple[float, float, float]],
                    counts: tuple[float, ...], seed0: int, command: str) -> list[str]:
    """The calibration alone over the grid at each ``--calibration-sizes``; the section's
    lines."""
    sizes = tuple(args.calibration_sizes)
    lines = [f"`{command}`", "",
             f"{platform.machine()}; {DETECTOR} frames of each size (2048²: a PerkinElmer XRD "
             f"1621's whole frame), {args.frames} frames per scan, offset {OFFSET_ADU:g} ADU, "
             f"dark of {DARK_FRAMES} frames subtracted; the engine's calibration alone "
             "(nothing denoised). Seeds as the denoising grid's, so the 128² scans are its "
             "scans.", "", CALIBRATION_HEADER, "|---" * 11 + "|"]
    print("\n".join(lines), flush=True)
    rows: list[tuple[dict, dict]] = []
    start = time.perf_counter()
    for case, scan in grid_scans(args.scenes, counts, grid, seeds=args.seeds, seed0=seed0,
                                 sizes=sizes, frames=args.frames):
        row = calibration_row(scan)
        rows.append((case, row))
        lines.append(format_calibration_row(case, row))
        print(lines[-1], flush=True)
    notes = ["", *calibration_summary(rows, sizes), "",
             "Gain / read est Δ: the estimate over the true value − 1, ± the engine's own "
             "standard error on that scale; flagged: the engine's own flags (a gain that is "
             "only a lower bound; 'imprecise', a gain or readout noise whose standard error is "
             "over 5 % of it, so that a 10 % miss is within two of them); peak MB: numpy's "
             "traced allocations during the call (B/px: per pixel of one frame). Wall time "
             f"{(time.perf_counter() - start) / 60:.1f} min."]
    print("\n".join(notes), flush=True)
    return lines + notes


TWIN_HEADER = ("| scene | gain | read | PSF σ | c/px | ours ran, integrating / counted "
               "| one-sided kept − 1, integrating: ours / raw | counted: ours / raw "
               "| ours − raw, integrating / counted | ±3 px ours − raw, integrating / counted "
               "| feature found, integrating / counted | readout dominance "
               "| matched information: photon share, ours ran "
               "| matched: ours − raw, ±3 px, found |")


def counting_twin(scan: FlatScan, seed: int, scale: float = 1.0) -> np.ndarray:
    """The scan's photons counted: Poisson of its truth (the blurred expectation) times
    ``scale``, with the scene's defects and mask, no gain and no readout noise."""
    rng = np.random.default_rng(seed)
    frames = np.stack([expose(scale * scan.truth, rng=rng, defects=scan.scene.defects)
                       for _ in range(len(scan.frames))])
    frames[:, scan.scene.mask] = 0
    return frames


def matched_scale(scan: FlatScan) -> float:
    """The share of a photon a counting detector would need to count to know the one-sided
    feature's intensity as well as the integrating scan does.

    The feature is scored by its total: over its ``n`` pixels of mean ``λ`` photons, the
    integrating scan's total has a photon variance of ``n·λ`` (a point spread moves photons
    between its pixels but keeps their sum's Poisson noise, bar its edges) and a readout
    variance of ``n·(σ/g)²`` (``σ``: readout noise, ``g``: gain), so a signal-to-noise ratio
    squared of ``n·λ² / (λ + (σ/g)²)``; counted, ``s·λ`` photons a pixel give ``n·s·λ``.
    They are equal at ``s = λ / (λ + (σ/g)²)``: 1 without readout noise, never above it.
    """
    region = scan.scene.regions["one_sided_feature"] & scan.scored
    level = float(scan.truth[region].mean())
    return level / (level + (scan.read_noise / scan.gain) ** 2)


def twin_row(scan: FlatScan, noise_seed: int, budget: float) -> dict[str, Any]:
    """Ours on the integrating scan, on its counting twin (noise seed ``noise_seed + 500``)
    and on its twin counted at matched information (:func:`matched_scale`, ``+ 700``): the
    one-sided feature's intensity kept over all frames, against the truth and raw's, and
    the share of the feature's pixels the engine held as a spot."""
    scene, valid = scan.scene, scan.scored
    region = scene.regions["one_sided_feature"] & valid
    around = ndimage.binary_dilation(region, iterations=AROUND_PX) & valid
    scale = matched_scale(scan)
    row: dict[str, Any] = {"scale": scale}
    for name, frames, gain, detector in (
            ("integrating", scan.frames, scan.gain, "integrating"),
            ("counted", counting_twin(scan, noise_seed + 500), 1.0, None),
            ("matched", counting_twin(scan, noise_seed + 700, scale), scale, None)):
        result = denoise_scan(frames, mask=scene.mask, center=scene.geometry.center,
                              method="auto", budget_s=budget, detector=detector)
        consistency = result.analysis.consistency
        spots = (consistency.spots() if consistency is not None
                 else np.zeros_like(region))
        # Summed over the frames: the truth's expectation as many times.
        ours = np.asarray(result.denoised, np.float64).sum(axis=0) / gain
        raw = np.asarray(frames, np.float64).sum(axis=0) / gain
        truth = scan.truth * len(frames)

        def kept(estimate: np.ndarray, where: np.ndarray, truth: np.ndarray = truth) -> float:
            return metrics.region_ratio(estimate, truth, where) - 1.0

        row[name] = {"method": result.method, "ours": kept(ours, region),
                     "raw": kept(raw, region),
                     "around": kept(ours, around) - kept(raw, around),
                     "found": float(spots[region].mean()) if region.any() else math.nan,
                     "dominance": result.analysis.noise.readout_dominance,
                     "flagged": result.analysis.noise.readout_dominated}
    return row


def format_twin_row(case: dict[str, Any], row: dict[str, Any]) -> str:
    head = _row_head(case)
    if "error" in row:
        return head + f"**{row['error']}** |" + " |" * 8
    i, c, m = row["integrating"], row["counted"], row["matched"]
    return head + " | ".join([
        f"{i['method']} / {c['method']}",
        f"{i['ours']:+.1%} / {i['raw']:+.1%}",
        f"{c['ours']:+.1%} / {c['raw']:+.1%}",
        f"{i['ours'] - i['raw']:+.1%} / {c['ours'] - c['raw']:+.1%}",
        f"{i['around']:+.1%} / {c['around']:+.1%}",
        f"{i['found']:.2f} / {c['found']:.2f}",
        f"{i['dominance']:.3g}" + (" (flagged)" if i["flagged"] else ""),
        f"{row['scale']:.3g}, {m['method']}",
        f"{m['ours'] - m['raw']:+.1%}, {m['around']:+.1%}, {m['found']:.2f}"]) + " |"


def twin_summary(rows: list[tuple[dict, dict]]) -> list[str]:
    ok = [r for _, r in rows if "error" not in r]
    if not ok:
        return ["No row ran."]
    kinds = ("integrating", "counted", "matched")
    own = {k: [r[k]["ours"] - r[k]["raw"] for r in ok] for k in kinds}
    near = {k: [r[k]["around"] for r in ok] for k in kinds}
    found = [r["integrating"]["found"] for r in ok]

    def spread(kind: str) -> str:
        return f"{min(own[kind]):+.1%} to {max(own[kind]):+.1%}"

    return [f"Over {len(ok)} scans: ours − raw on the feature's own pixels, mean "
            f"{np.mean(own['integrating']):+.1%} integrating against "
            f"{np.mean(own['counted']):+.1%} counted and {np.mean(own['matched']):+.1%} "
            f"counted at matched information (range {spread('integrating')} against "
            f"{spread('counted')} and {spread('matched')}); over them and {AROUND_PX} px "
            f"around, {np.mean(near['integrating']):+.1%} against "
            f"{np.mean(near['counted']):+.1%} and {np.mean(near['matched']):+.1%}. "
            f"Feature found on the integrating scans: {min(found):.2f} to {max(found):.2f} "
            "of its pixels.", "", *dominance_summary(ok)]


def dominance_summary(rows: list[dict]) -> list[str]:
    """Ours − raw on the feature's own pixels, for the integrating scans the engine flags
    as readout-dominated and for the others."""
    lines = []
    for label, flagged in (("flagged readout-dominated", True), ("not flagged", False)):
        group = [r for r in rows if r["integrating"]["flagged"] == flagged]
        own = [r["integrating"]["ours"] - r["integrating"]["raw"] for r in group]
        matched = [r["matched"]["ours"] - r["matched"]["raw"] for r in group]
        lines.append(f"- Integrating scans {label} (readout dominance "
                     f"{'>' if flagged else '≤'} {READOUT_DOMINATED:g}): {len(own)}"
                     + (f"; ours − raw on the feature's own pixels {min(own):+.1%} to "
                        f"{max(own):+.1%}, mean {np.mean(own):+.1%} (counted at matched "
                        f"information: {min(matched):+.1%} to {max(matched):+.1%}, mean "
                        f"{np.mean(matched):+.1%})" if own else "") + ".")
    return lines


def run_twins(args: argparse.Namespace, grid: list[tuple[float, float, float]],
              counts: tuple[float, ...], seed0: int, command: str) -> list[str]:
    """The ``--counting-twins`` table (its lines, printed as they come)."""
    import torch

    lines = [f"`{command}`", "",
             f"{platform.machine()}, torch {torch.__version__}, {args.threads} thread(s); "
             f"{args.size}² {DETECTOR} crops, {args.frames} frames per scan (all scored), "
             f"fine-tuning budget {args.budget:g} s per call; twin noise seed: the scan's "
             "+ 500, its twin at matched information's + 700.", "", TWIN_HEADER,
             "|---" * 14 + "|"]
    print("\n".join(lines), flush=True)
    rows: list[tuple[dict, dict]] = []
    start = time.perf_counter()
    for case, scan in grid_scans(args.scenes, counts, grid, seeds=args.seeds, seed0=seed0,
                                 sizes=(args.size,), frames=args.frames):
        if "one_sided_feature" not in scan.scene.regions:
            continue
        try:
            row = twin_row(scan, case["noise_seed"], args.budget)
        except Exception as error:  # report the row and go on with the grid
            row = {"error": f"{type(error).__name__}: {error}"}
            print(traceback.format_exc(), flush=True)
        rows.append((case, row))
        lines.append(format_twin_row(case, row))
        print(lines[-1], flush=True)
    notes = ["", *twin_summary(rows), "",
             "One-sided kept − 1: the estimate's sum over the feature's valid pixels in all "
             "frames over the truth's; ours − raw: the same frames' difference (raw is "
             f"unbiased, so this is ours' own bias plus less noise); ±{AROUND_PX} px: over the "
             f"feature and {AROUND_PX} px around it (a spot made broader keeps its intensity "
             "there); feature found: the share of the feature's pixels the engine held as a "
             "spot; readout dominance: the engine's readout variance over the typical pixel's "
             "photon count (flagged in the provenance above 1). Counted: the same photons' "
             "expectation counted (Poisson of the blurred truth, no gain, no readout noise). "
             "Matched information: the same counted at the photon share that makes the "
             "feature's total as well known counted as integrated (λ / (λ + (σ/g)²), λ the "
             "feature's mean photons a pixel; 1 without readout noise), scored in photons "
             "(its counts over that share). Wall time "
             f"{(time.perf_counter() - start) / 60:.1f} min."]
    print("\n".join(notes), flush=True)
    return lines + notes


def write_section(path: Path, title: str, body: list[str]) -> None:
    """Write ``## title`` and ``body`` into ``path``, replacing a section of that title."""
    head = ["# bench.flat_panel: integrating detectors", "",
            "Written by `python -m bench.flat_panel`; one section per preset (see its "
            "`--help` and docs/detectors.md).", ""]
    sections: dict[str, list[str]] = {}
    if path.exists():
        current = None
        for line in path.read_text().splitlines():
            if line.startswith("## "):
                current = line[3:].strip()
                sections[current] = []
            elif current is not None:
                sections[current].append(line)
    sections[title] = ["", *body, ""]
    lines = list(head)
    for name, content in sections.items():
        while content and not content[-1].strip():
            content = content[:-1]
        lines += [f"## {name}", *content, ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def _floats(values: tuple[float, ...]) -> str:
    return " ".join(f"{v:g}" for v in values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.split("\n")[1:]))
    parser.add_argument("--unseen", action="store_true",
                        help="the preset of detectors and seeds nothing was tuned on")
    parser.add_argument("--scenes", nargs="+", default=list(SCENES),
                        choices=sorted(scenes.SCENES))
    parser.add_argument("--gains", nargs="+", type=float, help="ADU per photon")
    parser.add_argument("--reads", nargs="+", type=float, help="readout noise, ADU")
    parser.add_argument("--psf", nargs="+", type=float, help="point spread σ, px")
    parser.add_argument("--counts", nargs="+", type=float, help="photons per pixel")
    parser.add_argument("--design", choices=("star", "full"),
                        help="one factor at a time (star) or every combination (full)")
    parser.add_argument("--seeds", type=int, default=1, help="scans per grid point")
    parser.add_argument("--seed", type=int, help="first seed")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds of each denoise call (ours and classical)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--steps", type=int, default=None,
                        help="fine-tune ours for this many steps (seeded), not for the budget")
    parser.add_argument("--out", type=Path, default=None,
                        help="result file; this preset's section is written or replaced")
    parser.add_argument("--calibration-sizes", nargs="+", type=int, default=None,
                        help="run the calibration alone (nothing denoised) at these frame "
                        "sizes, e.g. 128 2048")
    parser.add_argument("--counting-twins", action="store_true",
                        help="the one-sided feature on each scan and on its counting twin "
                        "(the same photons counted), ours only")
    args = parser.parse_args(argv)
    if args.steps and (args.calibration_sizes or args.counting_twins):
        parser.error("--steps applies to the denoising table only")
    preset = PRESETS["unseen" if args.unseen else "default"]
    gains = tuple(args.gains or preset.gains)
    reads = tuple(args.reads or preset.reads)
    psfs = tuple(args.psf if args.psf is not None else preset.psfs)
    counts = tuple(args.counts or preset.counts)
    design = args.design or preset.design
    seed0 = preset.seed if args.seed is None else args.seed

    import torch

    torch.set_num_threads(args.threads)
    command = (f"python -m bench.flat_panel{' --unseen' if args.unseen else ''} --scenes "
               f"{' '.join(args.scenes)} --gains {_floats(gains)} --reads {_floats(reads)} "
               f"--psf {_floats(psfs)} --counts {_floats(counts)} --design {design} "
               f"--seeds {args.seeds} --seed {seed0} --size {args.size} --frames "
               f"{args.frames} --budget {args.budget:g} --threads {args.threads}"
               + (f" --steps {args.steps}" if args.steps else ""))
    as_preset = (not args.steps and tuple(args.scenes) == SCENES
                 and (gains, reads, psfs, counts, design, seed0)
                 == (preset.gains, preset.reads, preset.psfs, preset.counts, preset.design,
                     preset.seed))
    grid = detector_grid(gains, reads, psfs, design)
    if args.calibration_sizes:
        command = command.split(" --budget")[0].replace("--size " + str(args.size) + " ", "")
        command += " --calibration-sizes " + " ".join(map(str, args.calibration_sizes))
        body = run_calibration(args, grid, counts, seed0, command)
        if args.out is not None:
            title = f"Calibration alone by frame size: {preset.title[0].lower()}{preset.title[1:]}"
            write_section(args.out, title if as_preset else "Custom calibration grid", body)
            print(f"\nwritten to {args.out}")
        return 0
    if args.counting_twins:
        command += " --counting-twins"
        body = run_twins(args, grid, counts, seed0, command)
        if args.out is not None:
            title = f"One-sided features beside counting twins: {preset.title[0].lower()}" \
                    f"{preset.title[1:]}"
            write_section(args.out, title, body)
            print(f"\nwritten to {args.out}")
        return 0
    lines = [f"`{command}`", "",
             f"{platform.machine()}, torch {torch.__version__}, {args.threads} thread(s); "
             f"{args.size}² {DETECTOR} crops, {args.frames} frames per scan, offset "
             f"{OFFSET_ADU:g} ADU, dark of {DARK_FRAMES} frames subtracted; the gain and "
             "readout noise are estimated by the engine (not given).", "", HEADER, SEPARATOR]
    print("\n".join(lines), flush=True)
    rows: list[tuple[dict, dict]] = []
    start = time.perf_counter()
    for case, scan in grid_scans(args.scenes, counts, grid, seeds=args.seeds, seed0=seed0,
                                 sizes=(args.size,), frames=args.frames):
        try:
            ours, seconds = _denoise(scan, "auto", args.budget, args.steps)
            classical, seconds_c = _denoise(scan, "classical", args.budget)
            row = score_row(scan, ours, classical)
            row.update(seconds=seconds, seconds_classical=seconds_c)
        except Exception as error:  # report the row and go on with the grid
            row = {"error": f"{type(error).__name__}: {error}",
                   "traceback": traceback.format_exc()}
            print(row["traceback"], flush=True)
        rows.append((case, row))
        text = format_row(case, row)
        lines.append(text)
        print(text, flush=True)
    notes = ["", *summary(rows), "",
             "PSNR on valid pixels against the blurred expectation, in photons (ADU over the "
             "true gain) for all three. Total Δ: sum over all frames and valid pixels, over "
             "raw's. Ring height / breadth: strongest ring of the full-ring I(q), bias against "
             "the truth. One-sided: intensity kept − 1 over the feature's pixels, and "
             f"(±{AROUND_PX} px) over them and {AROUND_PX} px around them. Gain / read est "
             "Δ: the engine's "
             "estimate (ours' call) over the true value − 1, ± the engine's own standard "
             "error on that scale; noise factor: photon variance over mean, true = Σ k² of "
             "the PSF kernel.",
             f"Scene seeds {seed0} + 100 per scene (+ 1000 per --seeds); noise seed: scene "
             "seed + 1 + grid index. Wall time "
             f"{(time.perf_counter() - start) / 60:.1f} min."]
    found = [p for case, row in rows for p in problems(case, row)]
    if found:
        notes += ["", "Flagged (exception, total off > 1 %, gain off > 10 %):",
                  *(f"- {p}" for p in found)]
    print("\n".join(notes), flush=True)
    for case, row in rows:
        if "traceback" in row:
            print(f"\n{case}:\n{row['traceback']}")
    if args.out is not None:
        write_section(args.out, preset.title if as_preset else "Custom grid", lines + notes)
        print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
