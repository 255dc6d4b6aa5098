"""What publishing the derived documents costs per live frame, with and without checking
every event against event-model's JSON schema.

The live plugin emits two events per frame: ``denoised`` (the frame, its source, flags) and
``integrated`` (q and the raw and denoised I(q) with their errors, ``npt`` points each). The
same streams are declared here as ``SymDenoise`` declares them, and ``--events`` events of
each are composed:

* ``schema on every event``: ``compose_event(validate=True)`` each time (the code before
  ``DerivedRunPublisher`` checked only the first event of a stream);
* ``DerivedRunPublisher``: the schema on the first event of a stream, the data keys on the
  later ones (what the plugin does).

Timings only, no assertions. ``bench/results/documents.md`` came from:

    python -m bench.documents --shape 256 --events 50
    python -m bench.documents --shape 1024 --events 20
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import event_model
import numpy as np

from bluesky_symdenoise.stream.publisher import (
    DerivedRunPublisher,
    default_npt,
    denoised_data_keys,
    integrated_data_keys,
)


def _streams(shape: int, npt: int) -> dict[str, tuple[dict, dict]]:
    """``{stream: (data_keys, one event's data)}`` as the live plugin declares and fills them."""
    rng = np.random.default_rng(0)
    key = "det_img"
    denoised = {f"{key}_denoised": rng.random((shape, shape), dtype=np.float32),
                f"{key}_denoised_by": "network:symmetry", f"{key}_flags": "",
                "raw_seq_num": 1, "frames_dropped": 0}
    integrated_keys = integrated_data_keys(key, npt)
    integrated = {name: rng.random(npt) for name in integrated_keys if name != "raw_seq_num"}
    integrated["raw_seq_num"] = 1
    return {"denoised": (denoised_data_keys(key, (shape, shape)), denoised),
            "integrated": (integrated_keys, integrated)}


def _ms_per_event(compose, events: int) -> float:
    start = time.perf_counter()
    for _ in range(events):
        compose()
    return 1000.0 * (time.perf_counter() - start) / events


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, default=256, help="frame side (pixels)")
    parser.add_argument("--events", type=int, default=50, help="events per stream and way")
    parser.add_argument("--npt", type=int, default=None,
                        help="I(q) points (default: the plugin's, shape // 2)")
    args = parser.parse_args(argv)
    npt = args.npt or default_npt((args.shape, args.shape))
    command = "python -m bench.documents " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    print(f"`{command}` ({args.shape}x{args.shape} frames, I(q) of {npt} points)\n")
    print("| stream | schema on every event (ms/event) | DerivedRunPublisher (ms/event) |")
    print("|---|---|---|")
    rows: dict[str, dict[str, float]] = {}
    for stream, (data_keys, data) in _streams(args.shape, npt).items():
        bundle = event_model.compose_run().compose_descriptor(name=stream, data_keys=data_keys)
        stamps = dict.fromkeys(data, 0.0)
        every = _ms_per_event(lambda b=bundle, d=data, t=stamps: b.compose_event(
            data=d, timestamps=t, validate=True), args.events)
        publisher = DerivedRunPublisher(lambda name, doc: None,
                                        event_model.compose_run().start_doc, {})
        publisher.add_stream(stream, data_keys)
        ours = _ms_per_event(lambda p=publisher, s=stream, d=data: p.add_event(s, d),
                             args.events)
        rows[stream] = {"schema on every event": every, "DerivedRunPublisher": ours}
        print(f"| {stream} | {every:.2f} | {ours:.2f} |")
    total = {way: sum(row[way] for row in rows.values())
             for way in ("schema on every event", "DerivedRunPublisher")}
    print(f"| both (one frame) | {total['schema on every event']:.2f} | "
          f"{total['DerivedRunPublisher']:.2f} |")
    return rows


if __name__ == "__main__":
    main()
