"""What the live plugin costs a scan, and how fast it keeps up.

In one process, on a real RunEngine with an ophyd.sim 2-D detector (frames from a powder
scene, a fixed exposure time per frame):

1. the scan timed without the plugin, then with ``SymDenoise`` subscribed while its worker
   fine-tunes (interleaved repeats; the ratio of medians is reported);
2. per-frame latency, frame in (RunEngine thread) -> derived event out, p50/p95;
3. sustained throughput: a lossless replay of frames with no exposure time, frames/s until
   every derived event is out.

Prints a markdown table and the command that produced it. Timings only, no assertions.

    python -m bench.overhead --frames 30 --shape 128 --exposure 0.05 --budget 3
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import numpy as np


def _detector(shape: int, exposure: float, seed: int):
    from ophyd.sim import DirectImage

    from bluesky_symdenoise.simulate.scenes import make_scene

    scene = make_scene("powder", shape=(shape, shape), seed=seed)
    rng = np.random.default_rng(seed)
    det = DirectImage(func=lambda: scene.expose(2.0, rng), name="det")
    det.img.exposure_time = exposure
    return scene, det


def _scan(RE, det, frames: int) -> float:
    from bluesky import plans as bp

    start = time.perf_counter()
    RE(bp.count([det], num=frames))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--shape", type=int, default=128)
    parser.add_argument("--exposure", type=float, default=0.05, help="seconds per frame")
    parser.add_argument("--budget", type=float, default=3.0, help="fine-tuning seconds")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    from bluesky import RunEngine

    from bluesky_symdenoise.stream.callback import SymDenoise

    scene, det = _detector(args.shape, args.exposure, seed=1)
    RE = RunEngine({})
    _scan(RE, det, 2)  # warm up ophyd/bluesky caches

    without, with_plugin, latencies, live = [], [], [], []
    for _ in range(args.repeats):
        without.append(_scan(RE, det, args.frames))
        sd = SymDenoise("det_img", center=scene.geometry.center, mask=scene.mask,
                        budget_s=args.budget, device=args.device)
        sd.subscribe(lambda name, doc: live.append(doc) if name == "event" and
                     "provenance" in doc["data"] else None)
        token = RE.subscribe(sd)
        with_plugin.append(_scan(RE, det, args.frames))
        RE.unsubscribe(token)
        sd.flush(timeout=600)
        sd.close()
        latencies += sd.latencies
    # Sustained throughput: lossless, no exposure time: the worker is the bottleneck.
    det.img.exposure_time = 0
    summaries: list[dict] = []
    sd = SymDenoise("det_img", center=scene.geometry.center, mask=scene.mask,
                    budget_s=args.budget, device=args.device, lossless=True, max_queue=8)
    sd.subscribe(lambda name, doc: summaries.append(doc) if name == "event" and
                 "provenance" in doc["data"] else None)
    token = RE.subscribe(sd)
    start = time.perf_counter()
    _scan(RE, det, args.frames)
    sd.flush(timeout=600)
    sustained = args.frames / (time.perf_counter() - start)
    RE.unsubscribe(token)
    sd.close()
    import json

    by = json.loads(summaries[0]["data"]["provenance"])["served_by"] if summaries else {}
    last = json.loads(live[-1]["data"]["provenance"]) if live else {}

    t0, t1 = statistics.median(without), statistics.median(with_plugin)
    rows = {
        "scan without plugin (median, s)": f"{t0:.3f}",
        "scan with plugin (median, s)": f"{t1:.3f}",
        "ratio with/without": f"{t1 / t0:.3f}",
        "latency frame->derived event p50 (s)": f"{np.percentile(latencies, 50):.3f}",
        "latency frame->derived event p95 (s)": f"{np.percentile(latencies, 95):.3f}",
        "sustained throughput, lossless (frames/s)": f"{sustained:.1f}",
        "served by (last timed scan)": ", ".join(f"{k}: {v}" for k, v in
                                                 last.get("served_by", {}).items()),
        "network (last timed scan)": last.get("network", ""),
        "training steps (last timed scan)": str((last.get("training") or {}).get("steps")),
        "served by (throughput run)": ", ".join(f"{k}: {v}" for k, v in by.items()),
    }
    command = "python -m bench.overhead " + " ".join(shlex.quote(a) for a in
                                                     (argv if argv is not None
                                                      else sys.argv[1:]))
    print(f"`{command}`  ({args.frames} frames of {args.shape}x{args.shape}, "
          f"{args.exposure} s exposure, {args.budget} s fine-tuning, {args.repeats} repeats)\n")
    print("| quantity | value |\n|---|---|")
    for name, value in rows.items():
        print(f"| {name} | {value} |")
    return rows


if __name__ == "__main__":
    main()
