"""Live speed after per-scan fine-tuning: frames/s and latency, per device found.

For each device this machine has (CPU always, CUDA when present), in one process:

1. a real RunEngine runs a ``count`` of an ophyd.sim 2-D detector (a fresh ``--scene``,
   powder by default, ``--counts`` per pixel) with ``SymDenoise`` subscribed: once with
   frames as fast as the RunEngine can make them (lossless mode: the worker's capacity),
   then with the detector paced at each ``--rate`` in live mode (does it keep pace:
   frames dropped, latency);
   after the warm-up frames the plan waits until the per-scan fine-tuned network has passed
   its held-out check (``SymDenoise.status()``), then reads ``--frames`` frames as fast as
   the RunEngine can;
2. throughput = those frames / (first frame read -> last derived event out), and the
   frame-in -> derived-event-out latency p50/p95 of the same frames, with denoising, I(q)
   of raw and denoised frames and the event-model documents all included;
3. quality of the same served frames: PSNR of the raw and of the derived (denoised) frame
   against the noise-free expectation, on usable pixels, averaged over the timed frames, so
   a faster live network is seen with what it costs;
4. the network alone (``predict_rates``) on the same device, for each shipped base model
   width: frames/s at batch 1 and 4 with 1 and 2 test-time flips (bf16 autocast and
   channels-last on CUDA).

``--width`` fixes the live network's width (default: the plugin's own choice, which on a CPU
is the narrower live model); running once with ``--width 16`` gives the side-by-side
baseline.

Timings only, no assertions. ``bench/results/throughput.md`` came from:

    python -m bench.throughput --shape 256 --frames 100 --budget 60 --rate 10 --seed 474001
    python -m bench.throughput --shape 256 --frames 100 --budget 60 --rate 10 --seed 474001 \
        --width 16
    python -m bench.throughput --shape 256 --frames 100 --budget 60 --rate 10 --seed 474202
    python -m bench.throughput --shape 256 --frames 60 --budget 60 --rate --scene saxs \
        --width 12 --seed 474101    # and --width 16, and --scene lattice_one_sided
    # and --scene textured, --scene lattice, each with --width 12 and 16, --seed 474303
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time

import numpy as np
import torch

from bluesky_symdenoise.denoise.models import BASE_MODEL_NAMES


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _live(device: str, shape: int, frames: int, budget: float, counts: float,
          seed: int, rate: float = 0.0, width: int | None = None,
          scene_kind: str = "powder") -> dict:
    """One scan; ``rate`` > 0 paces the detector at that many frames/s in live mode (a full
    queue drops frames), 0 reads frames as fast as possible in lossless mode."""
    from bluesky import RunEngine
    from bluesky import plan_stubs as bps
    from ophyd.sim import DirectImage

    from bench.metrics import psnr
    from bluesky_symdenoise import SymDenoise
    from bluesky_symdenoise.simulate.scenes import make_scene

    scene = make_scene(scene_kind, shape=(shape, shape), seed=seed)
    rng = np.random.default_rng(seed)
    det = DirectImage(func=lambda: scene.expose(counts, rng), name="det")
    det.img.exposure_time = 0
    sd = SymDenoise("det_img", center=scene.geometry.center, mask=scene.mask,
                    budget_s=budget, device=device, lossless=rate <= 0,
                    max_queue=frames + 16 if rate <= 0 else 64,
                    config={"width": width} if width else None)
    warmup = sd.options.warmup_frames
    out_times: dict[int, float] = {}
    summary: list[dict] = []
    raw_frames: dict[int, np.ndarray] = {}
    served: dict[int, np.ndarray] = {}  # scored after the run, not on the worker's time

    def collect(name: str, doc: dict) -> None:
        if name == "event" and "raw_seq_num" in doc["data"] and "det_img_denoised" in doc[
                "data"]:
            seq = int(doc["data"]["raw_seq_num"])
            out_times[seq] = time.perf_counter()
            if seq > warmup:
                served[seq] = doc["data"]["det_img_denoised"]
        if name == "event" and "provenance" in doc["data"]:
            summary.append(json.loads(doc["data"]["provenance"]))

    def keep_raw(name: str, doc: dict) -> None:
        if name == "event" and "det_img" in doc["data"]:
            raw_frames[int(doc["seq_num"])] = np.asarray(doc["data"]["det_img"])

    sd.subscribe(collect)
    marks: dict[str, float] = {}

    def plan():
        yield from bps.open_run()
        for _ in range(warmup):
            yield from bps.trigger_and_read([det])
        waited = time.perf_counter()
        deadline = waited + budget + 120
        while time.perf_counter() < deadline and not any(
                s["network_ready"] for s in sd.status().values()):
            yield from bps.sleep(0.2)
        marks["waited"] = time.perf_counter() - waited
        marks["start"] = time.perf_counter()
        for k in range(frames):
            if rate > 0:  # the detector's own frame rate
                wait = marks["start"] + k / rate - time.perf_counter()
                if wait > 0:
                    yield from bps.sleep(wait)
            yield from bps.trigger_and_read([det])
        yield from bps.close_run()

    RE = RunEngine({})
    raw_token = RE.subscribe(keep_raw)
    token = RE.subscribe(sd)
    RE(plan())
    RE.unsubscribe(token)
    RE.unsubscribe(raw_token)
    sd.flush(timeout=600)
    sd.close()
    timed = [t for seq, t in out_times.items() if seq > warmup]
    truth, usable = scene.scaled(counts), scene.usable
    psnr_raw = [psnr(raw_frames[seq], truth, usable) for seq in served]
    psnr_out = [psnr(frame, truth, usable) for frame in served.values()]
    latencies = list(sd.latencies)[-frames:]
    info = summary[-1] if summary else {}
    return {
        "device": device,
        "scene": scene_kind,
        "detector": f"paced at {rate:g} frames/s, live mode" if rate > 0
                    else "as fast as possible, lossless",
        "frames dropped": sd.dropped,
        "fine-tuning wait (s)": round(marks.get("waited", float("nan")), 1),
        "training steps": (info.get("training") or {}).get("steps"),
        "frames/s live (network, I(q), documents)":
            round(len(timed) / (max(timed) - marks["start"]), 1) if timed else float("nan"),
        "latency p50 (s)": round(float(np.percentile(latencies, 50)), 3),
        "latency p95 (s)": round(float(np.percentile(latencies, 95)), 3),
        "served by": info.get("served_by"),
        "batches (size: count)": info.get("batches"),
        "network": info.get("network"),
        "model": info.get("model"),
        "PSNR raw / served (dB)": f"{np.mean(psnr_raw):.2f} / {np.mean(psnr_out):.2f}"
                                   if psnr_out else "n/a",
    }


def _network_alone(device: str, shape: int, width: int) -> dict:
    from bluesky_symdenoise.denoise.channels import N_CHANNELS
    from bluesky_symdenoise.denoise.inference import predict_rates
    from bluesky_symdenoise.denoise.models import load_base_model

    model, _ = load_base_model(width, 3)
    if model is None:
        return {"not installed": width}
    dev = torch.device(device)
    model = copy.deepcopy(model).to(dev)
    x = np.random.default_rng(0).random((N_CHANNELS, shape, shape), dtype=np.float32)
    out = {}
    for flips in (1, 2):
        for batch in (1, 4):
            predict_rates(model, [x] * batch, [1.0] * batch, device=dev, flips=flips,
                          batch_size=batch)
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < 3.0:
                predict_rates(model, [x] * batch, [1.0] * batch, device=dev, flips=flips,
                              batch_size=batch)
                n += batch
            out[f"flips {flips}, batch {batch}"] = round(n / (time.perf_counter() - start), 1)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, default=256)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--budget", type=float, default=60.0, help="fine-tuning seconds")
    parser.add_argument("--counts", type=float, default=1.0, help="counts per pixel")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 1_000_000)
    parser.add_argument("--rate", type=float, nargs="*", default=[10.0],
                        help="detector frame rates (frames/s) to test in live mode")
    parser.add_argument("--scene", default="powder",
                        help="simulated scene kind (simulate.scenes.make_scene)")
    parser.add_argument("--width", type=int, default=None,
                        help="live network width (default: the plugin's choice)")
    args = parser.parse_args(argv)
    command = "python -m bench.throughput " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    print(f"`{command}` (seed {args.seed}, torch threads {torch.get_num_threads()})\n")
    rows = []
    for device in _devices():
        for rate in (0.0, *args.rate):
            row = _live(device, args.shape, args.frames, args.budget, args.counts, args.seed,
                        rate, args.width, args.scene)
            if rate == 0:
                for width in BASE_MODEL_NAMES:
                    row[f"network alone, width {width} (frames/s)"] = _network_alone(
                        device, args.shape, width)
            rows.append(row)
            print(f"### {device}, {row['detector']}\n\n| quantity | value |\n|---|---|")
            for name, value in row.items():
                if isinstance(value, dict):
                    value = ", ".join(f"{k}: {v}" for k, v in value.items())
                print(f"| {name} | {value} |")
            print(flush=True)
    return rows


if __name__ == "__main__":
    main()
