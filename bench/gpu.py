"""What the code does on a CUDA device, measured there, each figure beside its CPU baseline.

Run on a machine with a GPU (``torch.cuda.is_available()``); every section also runs on a
CPU-only machine with ``--device cpu`` (small sizes, to check the script itself):

1. ``network``: the network alone (:func:`~bluesky_symdenoise.denoise.inference.
   predict_rates`, the base model of width 16, 2 test-time flips, the device's compute plan
   and tile as the plugin uses them) on frames of 256 x 256, a Pilatus 1M (1043 x 981) and an
   Eiger2 4M (2162 x 2068): frames/s on the GPU in bf16 and in float32, and on the CPU of
   the same machine with 2 torch threads (the baseline), device-to-host copy included.
2. ``precision``: one scan (powder, 256 x 256, 4 frames, 1 count/pixel) denoised by
   :func:`~bluesky_symdenoise.denoise.api.denoise_scan` with the same seed, each run
   (``--runs``, :data:`RUNS`) on a device, in bf16 or float32, for a number of training
   steps (a budget long enough that steps, not time, end the training) or the device's
   default fine-tuning budget, with the default number of threads drawing the training
   batches or none: PSNR and full-ring I(q) error against the noise-free truth, the total
   counts, the steps trained and the wall time.
3. ``out_of_memory``: the out-of-memory fallback on a real CUDA allocator. The GPU's memory
   for this process is capped (``torch.cuda.set_per_process_memory_fraction``) at 2.5 x the
   peak of one whole Eiger2 4M frame's forward pass: a batch of 8 whole frames then runs out
   of memory for real and the batch halves until it fits; capped at half that peak, batch 1
   fails too and the work moves to the CPU. Each time the events recorded and the largest
   difference from the uncapped result.

The results are printed as one Markdown section and written as JSON lines (``--out``).
Timings only, no assertions: ``tests/unit/test_cuda.py`` holds the checks that run where
CUDA is present.

    python -m bench.gpu --out bench/results/gpu.md
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: Frame shapes of the network section: a small detector, a Pilatus 1M, an Eiger2 4M.
SHAPES = {"256x256": (256, 256), "Pilatus1M": (1043, 981), "Eiger2_4M": (2162, 2068)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _facts(device: torch.device) -> dict[str, Any]:
    facts: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                             "device": str(device), "cpu threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update({"gpu": props.name, "gpu memory (GiB)": round(props.total_memory / 2**30, 1),
                      "bf16 supported": torch.cuda.is_bf16_supported(),
                      "cuda": torch.version.cuda})
    return facts


def _frames_per_second(model: torch.nn.Module, x: np.ndarray, n_frames: int,
                       device: torch.device, *, bf16: bool, seconds: float) -> float:
    from bluesky_symdenoise.denoise.device import compute_plan
    from bluesky_symdenoise.denoise.inference import predict_rates
    from bluesky_symdenoise.denoise.memory import device_tile

    plan = compute_plan(device, mixed_precision=bf16)
    tile = device_tile(device.type, 1.5, 16)
    frames = [x] * n_frames

    def once() -> None:
        predict_rates(model, frames, [1.0] * n_frames, device=device, flips=2, plan=plan,
                      tile=tile)

    once()  # warm-up: cuDNN's algorithm choice, the allocator's pools
    _sync(device)
    done, start = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - start < seconds:
        once()
        done += n_frames
    _sync(device)
    return done / (time.perf_counter() - start)


def network_section(device: torch.device, shapes: dict[str, tuple[int, int]],
                    seconds: float) -> list[dict[str, Any]]:
    """Frames/s of the network alone per frame shape: GPU bf16, GPU float32, CPU."""
    from bluesky_symdenoise.denoise.channels import N_CHANNELS
    from bluesky_symdenoise.denoise.models import load_base_model

    base, _ = load_base_model(16, 3)
    rows = []
    for name, shape in shapes.items():
        x = np.random.default_rng(0).random((N_CHANNELS, *shape), dtype=np.float32)
        row: dict[str, Any] = {"frame": name, "pixels": shape[0] * shape[1]}
        batch = 8 if device.type == "cuda" else 1
        if device.type == "cuda":
            for bf16 in (True, False):
                model = copy.deepcopy(base)
                row[f"{device.type} {'bf16' if bf16 else 'float32'} frames/s"] = round(
                    _frames_per_second(model, x, batch, device, bf16=bf16,
                                       seconds=seconds), 2)
            row["cuda peak memory (GiB)"] = round(torch.cuda.max_memory_allocated() / 2**30,
                                                  2)
            torch.cuda.reset_peak_memory_stats()
        threads = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            row["cpu (2 threads) frames/s"] = round(_frames_per_second(
                copy.deepcopy(base), x, 1, torch.device("cpu"), bf16=False,
                seconds=seconds), 3)
        finally:
            torch.set_num_threads(threads)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


#: The precision section's runs: ``device/precision/steps/sampler threads``, ``steps``
#: ``default`` for the device's default fine-tuning budget, threads ``auto`` for the
#: default (:func:`~bluesky_symdenoise.denoise.training.sampler_threads`).
RUNS = ("cuda/bf16/300/auto", "cuda/float32/300/auto", "cpu/float32/300/auto",
        "cuda/bf16/300/0", "cuda/bf16/default/auto", "cuda/bf16/default/0")


def precision_section(device: torch.device, runs: list[str], seed: int,
                      shape: int = 256) -> list[dict[str, Any]]:
    """One scan denoised with the same seed, by each of ``runs`` (:data:`RUNS`)."""
    from bench.metrics import iq_relative_error, psnr
    from bluesky_symdenoise.denoise.api import denoise_scan
    from bluesky_symdenoise.simulate.scenes import make_scene

    scene = make_scene("powder", shape=(shape, shape), seed=seed)
    rng = np.random.default_rng(seed)
    counts = 1.0
    frames = np.stack([scene.expose(counts, rng) for _ in range(4)])
    truth, usable = scene.scaled(counts), scene.usable
    rows = []
    for run in runs:
        where, precision, steps, sampler = run.split("/")
        if where == "cuda" and device.type != "cuda":
            continue
        threads = torch.get_num_threads()
        if where == "cpu":
            torch.set_num_threads(2)
        start = time.perf_counter()
        try:
            result = denoise_scan(
                frames, mask=scene.mask, center=scene.geometry.center, method="symmetry",
                device=where, mixed_precision=precision == "bf16",
                budget_s=None if steps == "default" else 600.0, seed=seed,
                max_steps=20000 if steps == "default" else int(steps),
                sampler_threads=None if sampler == "auto" else int(sampler))
        finally:
            torch.set_num_threads(threads)
        wall = time.perf_counter() - start
        den = result.denoised
        training = result.provenance.get("training") or {}
        row = {
            "run": f"{where} {precision}, " + (f"{steps} steps" if steps != "default"
                                                  else "default budget"),
            "sampler threads": training.get("sampler_threads", 0),
            "training steps": training.get("steps"),
            "training (s)": training.get("seconds"),
            "wall (s)": round(wall, 1),
            "PSNR raw (dB)": round(float(np.mean([psnr(f, truth, usable) for f in frames])),
                                   2),
            "PSNR denoised (dB)": round(float(np.mean([psnr(f, truth, usable)
                                                       for f in den])), 2),
            "I(q) err raw": round(float(np.mean([iq_relative_error(
                np.where(usable, f, 0), truth, scene.geometry, ~usable) for f in frames])), 4),
            "I(q) err denoised": round(float(np.mean([iq_relative_error(
                f, truth, scene.geometry, ~usable) for f in den])), 4),
            "total denoised / raw": round(float(den[:, usable].sum() / frames[:, usable].sum()),
                                          5),
            "device recorded": result.provenance.get("device"),
            "events": (training.get("events") or [])[:3],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def out_of_memory_section(device: torch.device, shape: tuple[int, int]) -> list[dict]:
    """The fallback under a real memory cap: halve the batch, then move to the CPU."""
    if device.type != "cuda":
        return [{"skipped": "no CUDA device: the allocator's cap needs one"}]
    from bluesky_symdenoise.denoise.channels import N_CHANNELS
    from bluesky_symdenoise.denoise.device import compute_plan
    from bluesky_symdenoise.denoise.inference import predict_rates
    from bluesky_symdenoise.denoise.models import load_base_model

    base, _ = load_base_model(16, 3)
    x = np.random.default_rng(1).random((N_CHANNELS, *shape), dtype=np.float32)
    plan = compute_plan(device)
    total = torch.cuda.get_device_properties(device).total_memory
    index = device.index if device.index is not None else torch.cuda.current_device()

    def run(n: int, batch: int) -> tuple[np.ndarray, list[str]]:
        events: list[str] = []
        out = predict_rates(copy.deepcopy(base), [x] * n, [1.0] * n, device=device,
                            flips=1, plan=plan, batch_size=batch, tile=None, events=events)
        return out, events

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    reference, _ = run(1, 1)
    peak = torch.cuda.max_memory_allocated()
    rows = [{"case": "uncapped, batch 1", "peak (GiB)": round(peak / 2**30, 2)}]
    for factor, n, label in ((2.5, 8, "cap 2.5 x one frame's peak, 8 frames at batch 8"),
                             (0.5, 1, "cap 0.5 x one frame's peak, 1 frame")):
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, factor * peak / total), index)
        start = time.perf_counter()
        try:
            out, events = run(n, 8)
            diff = float(np.max(np.abs(out - reference[0]) / (np.abs(reference[0]) + 1e-3)))
            rows.append({"case": label, "events": events, "frames out": len(out),
                         "max relative difference from uncapped": round(diff, 4),
                         "wall (s)": round(time.perf_counter() - start, 2)})
        except Exception as exc:  # a failure is a finding: print it, go on
            rows.append({"case": label, "raised": f"{type(exc).__name__}: {exc}"[:300]})
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, index)
            torch.cuda.empty_cache()
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _markdown(command: str, facts: dict, sections: dict[str, list[dict]]) -> str:
    lines = [f"# On a GPU (`{command}`)", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()) + ".", ""]
    for name, rows in sections.items():
        lines += [f"## {name}", ""]
        columns: list[str] = []
        for row in rows:
            columns += [c for c in row if c not in columns]
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        for row in rows:
            lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="'auto' (CUDA if present), 'cpu'")
    parser.add_argument("--sections", nargs="+",
                        default=["network", "precision", "out_of_memory"])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="timed seconds per network measurement")
    parser.add_argument("--runs", nargs="+", default=list(RUNS),
                        help="precision runs: device/precision/steps/threads")
    parser.add_argument("--seed", type=int, default=20261204)
    parser.add_argument("--out", type=Path, default=None, help="append the Markdown here")
    args = parser.parse_args(argv)
    from bluesky_symdenoise.denoise.device import select_device

    device = select_device(args.device)
    facts = _facts(device)
    print(json.dumps(facts), flush=True)
    sections: dict[str, list[dict]] = {}
    shapes = {name: SHAPES[name] for name in args.shapes}
    for name in args.sections:
        try:
            if name == "network":
                sections[name] = network_section(device, shapes, args.seconds)
            elif name == "precision":
                sections[name] = precision_section(device, args.runs, args.seed)
            elif name == "out_of_memory":
                sections[name] = out_of_memory_section(device, SHAPES["Eiger2_4M"])
        except Exception as exc:  # one section's failure must not lose the others
            traceback.print_exc()
            sections[name] = [{"raised": f"{type(exc).__name__}: {exc}"[:300]}]
    command = "python -m bench.gpu " + " ".join(shlex.quote(a) for a in (
        sys.argv[1:] if argv is None else argv))
    text = _markdown(command.strip(), facts, sections)
    print(text)
    if args.out:
        with args.out.open("a") as handle:
            handle.write(text + "\n")
    return sections


if __name__ == "__main__":
    main()
