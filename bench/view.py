"""What one redraw of the live view costs, updating its artists against rebuilding the figure.

A raw run and its derived run (``denoised``, ``integrated`` and ``symmetry`` streams, as
``SymDenoise`` declares them) are composed for a simulated scene, fed to a
``LiveDenoiseView`` that draws nothing by itself, and after each frame the view is drawn
on an Agg canvas of the window's size:

* ``update``: what the live window does (artists updated in place, layout solved once);
* ``rebuild``: the figure cleared and built anew at every draw (the view before it kept its
  artists).

Timings only, no assertions. ``bench/results/view.md`` came from:

    python -m bench.view --shapes 256 1024 --frames 8
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from event_model import compose_run  # noqa: E402

from bluesky_symdenoise.simulate.scenes import make_scene  # noqa: E402
from bluesky_symdenoise.stream.publisher import (  # noqa: E402
    default_npt,
    denoised_data_keys,
    integrated_data_keys,
    symmetry_data_keys,
)
from bluesky_symdenoise.view.live import LiveDenoiseView  # noqa: E402


def _documents(shape: int, frames: int, seed: int = 0):
    """Yield ``(name, doc, is_frame_end)`` of a raw run and its derived run, interleaved as
    the live plugin publishes them."""
    scene = make_scene("textured", shape=(shape, shape), seed=seed)
    rng = np.random.default_rng(seed)
    key, npt = "det_img", default_npt((shape, shape))
    raw = compose_run(metadata={"scan_id": 1})
    yield "start", raw.start_doc, False
    raw_desc = raw.compose_descriptor(name="primary", data_keys={
        key: {"source": "sim", "dtype": "array", "shape": [shape, shape]}})
    yield "descriptor", raw_desc.descriptor_doc, False
    derived = compose_run(metadata={"original_run_uid": raw.start_doc["uid"],
                                    "symdenoise": {"field": key, "method": "symmetry"}})
    yield "start", derived.start_doc, False
    streams = {"denoised": denoised_data_keys(key, (shape, shape)),
               "integrated": integrated_data_keys(key, npt),
               "symmetry": symmetry_data_keys((shape, shape))}
    desc = {name: derived.compose_descriptor(name=name, data_keys=keys)
            for name, keys in streams.items()}
    for bundle in desc.values():
        yield "descriptor", bundle.descriptor_doc, False
    yield "event", _event(desc["symmetry"], 1, {
        "symmetry_report": json.dumps({"rotation_180": {"tested": True, "used": True,
                                                        "text": "180° symmetry used"}}),
        "symmetry_violation": np.zeros((shape, shape), np.uint8)}), False
    q = np.linspace(1.0, 30.0, npt)
    for seq in range(1, frames + 1):
        frame = scene.expose(1.0, rng).astype(np.float32)
        yield "event", _event(raw_desc, seq, {key: frame}), False
        yield "event", _event(desc["denoised"], seq, {
            f"{key}_denoised": scene.scaled(1.0).astype(np.float32),
            f"{key}_denoised_by": "network:symmetry", f"{key}_flags": "",
            "raw_seq_num": seq, "frames_dropped": 0}), False
        iq = 1 + np.exp(-((q - 10) / 0.3) ** 2) + 0.05 * rng.standard_normal(npt)
        yield "event", _event(desc["integrated"], seq, {
            "q": q, f"{key}_iq_raw": iq, f"{key}_iq_raw_sigma": 0.05 + 0 * q,
            f"{key}_iq_denoised": iq, f"{key}_iq_denoised_sigma": 0.03 + 0 * q,
            f"{key}_iq_fallback": np.zeros(npt, bool), "raw_seq_num": seq}), True


def _event(bundle, seq: int, data: dict) -> dict:
    return bundle.compose_event(data=data, timestamps={k: time.time() for k in data},
                                seq_num=seq)


def measure(shape: int, frames: int) -> dict[str, float]:
    """Median seconds per draw, updating and rebuilding, after the first (layout) draw."""
    out = {}
    for how in ("update", "rebuild"):
        view = LiveDenoiseView(use_teleporter=False)  # Agg: draws only when asked
        seconds = []
        for name, doc, frame_end in _documents(shape, frames):
            view(name, doc)
            if frame_end:
                if how == "rebuild":
                    view._panels = None  # what every draw did before the view kept artists
                began = time.perf_counter()
                view.snapshot()
                seconds.append(time.perf_counter() - began)
        if view.errors:
            raise RuntimeError(view.errors)
        out[how] = float(np.median(seconds[1:]))
        out[f"{how}_first"] = seconds[0]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--frames", type=int, default=8)
    args = parser.parse_args(argv)
    print(f"`python -m bench.view {shlex.join(sys.argv[1:] if argv is None else argv)}`; "
          "figure 14 × 8 in at 100 dpi, Agg\n")
    print("| frames | first draw (layout) | redraw, artists updated | redraw, figure rebuilt |")
    print("|---|---|---|---|")
    for shape in args.shapes:
        result = measure(shape, args.frames)
        print(f"| {shape}² | {result['update_first']:.2f} s | {result['update']:.2f} s | "
              f"{result['rebuild']:.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
