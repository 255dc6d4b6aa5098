"""Real detector sizes: frames/s, latency, peak memory growth and quality, live.

For each detector (``--detectors``: ``256x256``, or pyFAI registry names such as
``Pilatus1M`` (1043 x 981) and ``Eiger2_4M`` (2162 x 2068), whose module gaps are masked, or
``Perkin_integrating``: a flat panel's whole 2048 x 2048 frame in ADU,
:data:`FLAT_PANEL_NOISE`, dark subtracted, as :mod:`bench.flat_panel` makes them, the plugin
told ``detector="integrating"``) and each mode (``--modes``: ``network``, the plugin's
default, and ``classical``, its fast mode, ``budget_s=0``), one fresh Python process:

1. simulates a scan on the detector (``--scene``, ``--counts`` per pixel, ``--frames`` frames
   after the plugin's warm-up; :func:`bluesky_symdenoise.simulate.detectors.
   simulate_detector_scan`, in the detector's own dtype with its gap values);
2. records the process's resident memory (RSS) once the RunEngine, the detector and the
   frames exist, then runs a real RunEngine ``count`` of an ophyd.sim ``DirectImage`` with
   ``SymDenoise`` subscribed (lossless: the worker's capacity), after the warm-up waiting
   until its frames are published (the analysis and the held-out I(q) check done) and, in
   the network mode, for the fine-tuned network (at most ``--budget`` + 300 s in all),
   while a thread samples RSS
   every 20 ms: the peak growth is the plugin's extra memory (an upper bound: all the
   process's growth);
3. frames/s = the frames after the warm-up / (first of them read -> last derived event),
   latency p50 of the same frames, who served each frame (``denoised_by``), its flags
   (e.g. the memory budget), frames lost (published + flagged must equal frames read);
4. quality of the served frames against the noise-free expectation: PSNR of raw and
   denoised frames on usable pixels, and the relative RMS I(q) error of raw and denoised
   frames (pyFAI, full ring).

Derived frames go to an HDF5 file per run (``inline_limit_bytes=0``), read back for the
quality figures after the run.

    python -m bench.large_frames --out bench/results/large_frames.md

Timings, no assertions. With 2 torch threads, as the plugin would share a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

DETECTORS = ("256x256", "Pilatus1M", "Eiger2_4M")
MODES = ("network", "classical")
#: An integrating flat panel (pyFAI ``Perkin``, 200 µm) at a PerkinElmer XRD 1621's size.
FLAT_PANEL = "Perkin_integrating"
FLAT_PANEL_SHAPE = (2048, 2048)
#: Its detector: gain (ADU/photon), readout noise (ADU) and point spread (px), the centre of
#: :mod:`bench.flat_panel`'s unseen grid.
FLAT_PANEL_NOISE = {"gain": 7.0, "read_noise": 4.0, "psf_sigma": 0.5}


def _scan(detector: str, scene: str, counts: float, n_frames: int, seed: int):
    """(raw frames, truth, mask, geometry, scored) of a simulated scan on ``detector``;
    ``scored``: the pixels quality is measured on (not masked, not flagged by the simulator
    as dead, hot or overflowing)."""
    if detector == FLAT_PANEL:  # ADU, dark subtracted; the truth in ADU too
        from bench.flat_panel import make_flat_scan
        from bluesky_symdenoise.simulate.scenes import make_scene

        made = make_scene(scene, shape=FLAT_PANEL_SHAPE, seed=seed, detector="Perkin")
        flat = make_flat_scan(made, counts, n_frames=n_frames, seed=seed, **FLAT_PANEL_NOISE)
        return (list(flat.frames), FLAT_PANEL_NOISE["gain"] * flat.truth, made.mask,
                made.geometry, made.usable)
    if "x" in detector and detector.replace("x", "").isdigit():
        from bluesky_symdenoise.simulate.scenes import make_scene

        rows, cols = (int(v) for v in detector.split("x"))
        made = make_scene(scene, shape=(rows, cols), seed=seed)
        rng = np.random.default_rng(seed)
        raw = [made.expose(counts, rng) for _ in range(n_frames)]
        return raw, made.scaled(counts), made.mask, made.geometry, ~made.mask
    from bluesky_symdenoise.simulate.detectors import simulate_detector_scan

    scan = simulate_detector_scan(detector, scene=scene, counts=counts, frames=n_frames,
                                  seed=seed)
    return (list(scan.frames), scan.truth, scan.mask, scan.geometry,
            ~(scan.mask | scan.flagged))


class _RssSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self.running = True
        self.start()

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)


def one_run(detector: str, mode: str, *, scene: str, counts: float, frames: int,
            budget: float, seed: int, max_memory_gb: float | None) -> dict[str, Any]:
    """One detector and mode, in this process (the caller starts a fresh one)."""
    import h5py
    import hdf5plugin  # noqa: F401 - the derived file's filter
    import torch
    from bluesky import RunEngine
    from bluesky import plan_stubs as bps
    from ophyd.sim import DirectImage

    from bench.metrics import iq_relative_error, psnr
    from bluesky_symdenoise import SymDenoise
    from bluesky_symdenoise.denoise.memory import resident_bytes

    torch.set_num_threads(2)
    warmup = 4
    raw, truth, mask, geometry, usable = _scan(detector, scene, counts, warmup + frames,
                                               seed)
    served = iter(raw)
    det = DirectImage(func=lambda: next(served), name="det")
    det.img.exposure_time = 0
    out_dir = Path(tempfile.mkdtemp(prefix="large_frames_"))
    config = {"max_memory_gb": max_memory_gb} if max_memory_gb else None
    sd = SymDenoise("det_img", center=geometry.center, mask=mask, lossless=True,
                    max_queue=frames + warmup + 4, budget_s=0 if mode == "classical" else budget,
                    derived_files=out_dir, inline_limit_bytes=0, config=config,
                    detector="integrating" if detector == FLAT_PANEL else None)
    by: dict[int, str] = {}
    published: list[int] = []
    flags: dict[int, str] = {}
    out_times: dict[int, float] = {}
    iq: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    summary: list[dict] = []

    def collect(name: str, doc: dict) -> None:
        if name != "event":
            return
        data = doc["data"]
        seq = data.get("raw_seq_num")
        if "det_img_denoised_by" in data and seq is not None:
            published.append(int(seq))  # the derived file's rows, in this order
            out_times[int(seq)] = time.perf_counter()
            by[int(seq)] = str(data["det_img_denoised_by"])
            flags[int(seq)] = str(data.get("det_img_flags", ""))
        if "det_img_iq_denoised" in data and seq is not None:
            iq[int(seq)] = (np.asarray(data["det_img_iq_raw"]),
                            np.asarray(data["det_img_iq_denoised"]))
        if "provenance" in data:
            summary.append(json.loads(data["provenance"]))

    sd.subscribe(collect)
    marks: dict[str, float] = {}

    def plan():
        yield from bps.open_run()
        for _ in range(warmup):
            yield from bps.trigger_and_read([det])
        waited = time.perf_counter()

        def settled() -> bool:  # warm-up frames published; the network trained or not
            if len(by) < warmup:
                return False
            return mode != "network" or any(
                s["network_ready"] or s.get("network") not in (None, "not trained yet")
                for s in sd.status().values())

        while time.perf_counter() < waited + budget + 300 and not settled():
            yield from bps.sleep(0.5)
        marks["waited"] = time.perf_counter() - waited
        marks["start"] = time.perf_counter()
        for _ in range(frames):
            yield from bps.trigger_and_read([det])
        yield from bps.close_run()

    RE = RunEngine({})
    RE.subscribe(sd)
    baseline = resident_bytes()
    sampler = _RssSampler()
    sampler.peak = baseline
    began = time.perf_counter()
    RE(plan())
    sd.flush(timeout=3600)
    sampler.running = False
    sd.close()
    wall = time.perf_counter() - began
    growth = (sampler.peak - baseline) / 2**30
    timed = sorted(t for seq, t in out_times.items() if seq > warmup)
    latencies = list(sd.latencies)[-frames:]
    # Quality from the derived file: the frames after the warm-up.
    files = sorted(out_dir.glob("*.h5"))
    psnr_raw, psnr_den, iq_raw, iq_den = [], [], [], []
    if files:
        with h5py.File(files[-1], "r") as handle:
            denoised = handle["/entry/data/denoised"]
            # Row r holds the frame of raw seq_num published[r] (raw frame seq_num - 1).
            rows = {seq: row for row, seq in enumerate(published) if row < len(denoised)}
            for seq in sorted(s for s in rows if s > warmup):
                frame_raw = np.where(usable, raw[seq - 1], 0).astype(np.float64)
                frame_den = np.asarray(denoised[rows[seq]], np.float64)
                psnr_raw.append(psnr(frame_raw, truth, usable))
                psnr_den.append(psnr(frame_den, truth, usable))
                if not iq_raw:  # one frame's I(q): a full integration each
                    iq_raw.append(iq_relative_error(frame_raw, truth, geometry, ~usable))
                    iq_den.append(iq_relative_error(frame_den, truth, geometry, ~usable))
    info = summary[-1] if summary else {}
    served_by: dict[str, int] = {}
    for seq, who in by.items():
        if seq > warmup:
            served_by[who] = served_by.get(who, 0) + 1
    flagged = sorted({f for seq, f in flags.items() if seq > warmup and f})
    return {
        "detector": detector, "shape": "x".join(map(str, truth.shape)),
        "mode": mode, "scene": scene, "frames read": warmup + frames,
        "frames published": len(by), "frames dropped": sd.dropped,
        "frames/s": round(len(timed) / (timed[-1] - marks["start"]), 2) if timed else None,
        "latency p50 (s)": round(float(np.percentile(latencies, 50)), 2) if latencies
        else None,
        "fine-tuning wait (s)": round(marks.get("waited", 0.0), 1),
        "wall (s)": round(wall, 1),
        "peak RSS growth (GB)": round(growth, 2),
        "engine's own peak (GB)": None,
        "served by": served_by, "flags": flagged[:3],
        "network": info.get("network"), "method": info.get("method"),
        "PSNR raw (dB)": round(float(np.mean(psnr_raw)), 2) if psnr_raw else None,
        "PSNR denoised (dB)": round(float(np.mean(psnr_den)), 2) if psnr_den else None,
        "PSNR denoised per frame (dB)": [round(float(v), 2) for v in psnr_den],
        "I(q) err raw": round(iq_raw[0], 4) if iq_raw else None,
        "I(q) err denoised": round(iq_den[0], 4) if iq_den else None,
        "errors": sd.errors[:3],
    }


def _device_name() -> str:
    """Where the network runs: the GPU's name when CUDA is present (the plugin's
    ``device="auto"``), else ``CPU``."""
    import torch

    return (f"GPU ({torch.cuda.get_device_name()}; the analysis, pyFAI and the documents "
            "on the CPU)") if torch.cuda.is_available() else "CPU"


def _table(rows: list[dict]) -> str:
    columns = ["detector", "shape", "mode", "frames read", "frames published", "frames/s",
               "latency p50 (s)", "peak RSS growth (GB)", "PSNR raw (dB)",
               "PSNR denoised (dB)", "I(q) err raw", "I(q) err denoised", "served by"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column)
            if column == "served by" and isinstance(value, dict):
                value = ", ".join(f"{k}: {v}" for k, v in value.items())
            if column.startswith("I(q) err") and isinstance(value, float):
                value = f"{100 * value:.2f} %"
            cells.append("" if value is None else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--scene", default="powder")
    parser.add_argument("--counts", type=float, default=1.0)
    parser.add_argument("--frames", type=int, default=6, help="frames after the warm-up")
    parser.add_argument("--budget", type=float, default=30.0, help="fine-tuning seconds")
    parser.add_argument("--max-memory-gb", type=float, default=None,
                        help="the plugin's memory budget (default: its own)")
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--out", type=Path, default=None, help="write the table here (.md)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process's run (JSON)
    args = parser.parse_args(argv)
    if args.one:
        spec = json.loads(args.one)
        print("RESULT " + json.dumps(one_run(**spec), default=str), flush=True)
        return []
    command = "python -m bench.large_frames " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    rows = []
    for detector in args.detectors:
        for mode in args.modes:
            spec = {"detector": detector, "mode": mode, "scene": args.scene,
                    "counts": args.counts, "frames": args.frames, "budget": args.budget,
                    "seed": args.seed, "max_memory_gb": args.max_memory_gb}
            done = subprocess.run([sys.executable, "-m", "bench.large_frames", "--one",
                                   json.dumps(spec)], capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if not lines:
                row = {"detector": detector, "mode": mode,
                       "served by": {"failed": done.returncode},
                       "errors": done.stderr.strip().splitlines()[-3:]}
            else:
                row = json.loads(lines[-1][len("RESULT "):])
            print(json.dumps(row, default=str), flush=True)
            rows.append(row)
    text = (f"# Real detector sizes, live (`{command}`)\n\n"
            f"Scene {args.scene}, {args.counts:g} counts/pixel, 4 warm-up frames + "
            f"{args.frames}, fine-tuning budget {args.budget:g} s, 2 torch threads, "
            f"{_device_name()}.\n\n"
            + _table(rows) + "\n\nPer run (JSON):\n\n"
            + "\n".join("    " + json.dumps(row, default=str) for row in rows) + "\n")
    print(text)
    if args.out:
        args.out.write_text(text)
    return rows


if __name__ == "__main__":
    main()
