"""Command line: ``bluesky-symdenoise demo | denoise | replay | serve``.

``demo`` starts the simulated beamline IOCs, runs an in situ temperature-ramp scan with
short exposures, denoises it live into an embedded Tiled catalog, writes live-view PNGs and
prints the gain against the simulator's truth.
``denoise`` denoises frames stored in ``.npy``, HDF5 (``file.h5:/path``, NeXus, Eiger master
files), CBF, EDF or TIFF files (one, a glob pattern or a directory) and writes ``.npy`` or a
NeXus file with the provenance.
``replay`` denoises archived runs of a Tiled catalog and writes the derived runs back.
``serve`` runs the live denoiser out of process on a 0MQ proxy or NATS JetStream.

Each verb imports what it needs when it runs, so ``--help`` and a mistyped option answer
without loading torch.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .denoise.config import DEVICE_PATTERN, DEVICES, METHODS, DenoiseConfig

if TYPE_CHECKING:
    import numpy as np

__all__ = ["main"]


def _device(value: str) -> str:
    """``--device``: a name of :data:`DEVICES` or ``cuda:N``, checked as the config checks it."""
    if re.fullmatch(DEVICE_PATTERN, value) is None:
        raise argparse.ArgumentTypeError(
            f"invalid device {value!r} (choose from {', '.join(map(repr, DEVICES))} "
            "or 'cuda:N')")
    return value


def _add_method_and_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", default="auto", choices=METHODS)
    parser.add_argument("--device", default="auto", type=_device,
                        metavar="{" + ",".join(DEVICES) + ",cuda:N}")


def _load_array(spec: str | list[str]) -> np.ndarray:
    """Frames (or a mask) from one file spec or several files (a shell-expanded pattern)."""
    from .store.files import read_frame_files, read_frames

    if isinstance(spec, str):
        return read_frames(spec)
    return read_frames(spec[0]) if len(spec) == 1 else read_frame_files(spec)


def _cmd_denoise(args: argparse.Namespace) -> int:
    from .denoise.api import denoise_scan
    from .store.files import output_format, write_frames

    kind = output_format(args.out)  # a wrong suffix fails before any denoising
    frames = _load_array(args.frames)
    mask = _load_array(args.mask).astype(bool) if args.mask else None
    result = denoise_scan(frames, mask=mask, center=tuple(args.center) if args.center else None,
                          poni=args.poni, method=args.method, budget_s=args.budget,
                          device=args.device, bad_pixels="mask" if args.mask_bad else "raise")
    out = write_frames(args.out, result.denoised, provenance=result.provenance,
                       raw_spec=" ".join(args.frames), mask=mask)
    where = ("provenance beside it (.json)" if kind == "npy"
             else "NeXus /entry/data/data, provenance in /entry/process/provenance")
    print(f"{out}: {result.method} ({result.reason}); {where}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(out=Path(args.out), scene=args.scene, frames=args.frames,
                    counts=args.counts, budget_s=args.budget, size=args.size, seed=args.seed,
                    inline=args.inline)


#: ``--full-network``: the configuration's default network and test-time averaging, where the
#: plugin on a CPU would take the narrower live network and one pass per frame
#: (``live_cpu_settings``).
FULL_NETWORK_CONFIG = {name: DenoiseConfig.model_fields[name].default
                       for name in ("width", "test_time_flips")}


class _OptionError(ValueError):
    """A command-line option the plugin refuses (argparse cannot check it)."""


#: The command-line option of each plugin setting (for messages).
_OPTION_NAMES = {"field": "--field", "poni": "--poni", "center": "--center", "mask": "--mask",
                 "method": "--method", "device": "--device", "budget_s": "--budget",
                 "max_queue": "--max-queue", "config": "--full-network"}


def _option_problem(exc: ValueError) -> str:
    """One line naming each refused option and why (pydantic's message is several)."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    problems = []
    for error in exc.errors():
        loc = error["loc"]
        name = _OPTION_NAMES.get(str(loc[0]), ".".join(map(str, loc))) if loc else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"argument {name}: {message}" if name else message)
    return "; ".join(problems)


def _denoiser_options(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """The plugin's options from the command line, validated as ``SymDenoise`` validates
    them, so a bad value stops the command here (before any catalog or bus is opened) rather
    than failing every run."""
    from .stream.options import LiveOptions

    options = {"field": args.field, "poni": args.poni,
               "center": tuple(args.center) if args.center else None, "mask": args.mask,
               "method": args.method, "device": args.device, "budget_s": args.budget,
               "config": ({**(FULL_NETWORK_CONFIG if args.full_network else {}),
                           **({"max_memory_gb": args.max_memory_gb}
                              if args.max_memory_gb else {})} or None)} | extra
    try:
        LiveOptions.model_validate(options)
    except ValueError as exc:  # pydantic's ValidationError is one
        raise _OptionError(_option_problem(exc)) from exc
    return options


def _add_denoiser_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--field", help="data key of the frames (default: first 2-D key)")
    parser.add_argument("--poni", help="pyFAI PONI file (else the run's start['poni'])")
    parser.add_argument("--center", type=float, nargs=2, metavar=("ROW", "COL"),
                        help="beam centre in pixels (else the run's start['beam_center'])")
    parser.add_argument("--mask", help="mask .npy, True on bad pixels (else start['mask'])")
    _add_method_and_device(parser)
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of fine-tuning per run (0: classical fast mode)")
    parser.add_argument("--max-memory-gb", type=float, default=None,
                        help="how much resident memory a scan may add (default: 1.5 GB or a "
                             "quarter of the available memory); above it frames pass raw, "
                             "flagged")
    parser.add_argument("--full-network", action="store_true",
                        help="on a CPU too, the default width-16 network with 4 test-time "
                             "flips (slower per frame; default on a CPU: the width-12 live "
                             "network, one pass per frame)")


def _cmd_replay(args: argparse.Namespace) -> int:
    from .store import replay

    outcomes = replay(args.catalog, args.uids, to=args.to, api_key=args.api_key,
                      to_api_key=args.to_api_key, plan=args.plan, since=args.since,
                      until=args.until, force=args.force, progress=not args.no_progress,
                      readable_storage=args.readable_storage, **_denoiser_options(args))
    if not outcomes:
        print("bluesky-symdenoise: no run matched", file=sys.stderr)
    for outcome in outcomes:
        for warning in dict.fromkeys(outcome.warnings):
            print(f"warning: {warning}", file=sys.stderr)
        for error in outcome.errors:
            print(f"error: {error}", file=sys.stderr)
        print(f"{outcome.status}: {outcome.message}")
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    options = _denoiser_options(args, max_queue=args.max_queue)

    def ready() -> None:
        print("bluesky-symdenoise serve: ready", flush=True)

    if args.nats:
        if args.from_address or args.to_address:
            raise ValueError("give either --nats or --from/--to, not both")
        if not args.subject:
            raise ValueError("--nats needs --subject (the RunEngine publisher's subject)")
        if args.group:
            from .remote.group import GroupSettings, serve_nats_group

            settings = GroupSettings(args.group, ack_wait=args.ack_wait)
            return serve_nats_group(args.nats, args.subject, settings, stream=args.stream,
                                    derived_subject=args.derived_subject,
                                    lossless=args.lossless, ready=ready, **options)
        from .remote.jetstream import serve_nats

        return serve_nats(args.nats, args.subject, stream=args.stream,
                          derived_subject=args.derived_subject, lossless=args.lossless,
                          ready=ready, **options)
    if args.group:
        raise ValueError("--group needs --nats (a worker group shares runs over JetStream)")
    if not (args.from_address and args.to_address):
        raise ValueError("give --from and --to (the 0MQ proxy's out and in addresses), "
                         "or --nats URL --subject SUBJECT")
    from .remote.zeromq import serve_zmq

    return serve_zmq(args.from_address, args.to_address, prefix=args.prefix.encode(),
                     lossless=args.lossless, ready=ready, **options)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bluesky-symdenoise`` console script."""
    parser = argparse.ArgumentParser(prog="bluesky-symdenoise", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="beamline in a box: live denoised in situ scan on "
                          "simulated IOCs, stored in an embedded Tiled catalog")
    demo.add_argument("--out", default="out/demo",
                      help="folder for the catalog, PNG snapshots and the summary")
    demo.add_argument("--scene", default="insitu",
                      help="IOC scene: insitu (powder ring drift), insitu_lattice, powder, "
                           "textured, saxs, lattice, lattice_one_sided")
    demo.add_argument("--frames", type=int, default=24, help="temperature points (frames)")
    demo.add_argument("--counts", type=float, default=1.0, help="mean counts per pixel")
    demo.add_argument("--budget", type=float, default=30.0,
                      help="seconds of network fine-tuning (the scan is paced to outlast it)")
    demo.add_argument("--size", type=int, default=256)
    demo.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    demo.add_argument("--inline", action="store_true",
                      help="frames inline in the events (default: through the detector's "
                           "HDF5 file plugin into OUT/frames, read back by Resource/Datum)")
    demo.set_defaults(func=_cmd_demo)

    den = sub.add_parser("denoise", help="denoise frames from .npy, HDF5 (NeXus, Eiger), "
                         "CBF, EDF or TIFF files; write .npy or NeXus")
    den.add_argument("frames", nargs="+",
                     help="frames.npy; file.h5:/entry/data/data, or file.h5 / an Eiger "
                          "*_master.h5 (frames found); a CBF/EDF/TIFF file, a quoted glob "
                          "'scan_*.cbf' (sorted naturally), a directory of them, or several "
                          "files (stacked in the order given). (N, H, W) or (H, W)")
    den.add_argument("--out", required=True,
                     help="output .npy (provenance beside it: same name .json) or .nxs/.h5/"
                          ".hdf5 (NeXus NXdata, Bitshuffle-LZ4, provenance in "
                          "/entry/process)")
    den.add_argument("--mask", help="mask: .npy, file.h5:/path, CBF/EDF/TIFF "
                                    "(nonzero = bad pixel)")
    den.add_argument("--center", type=float, nargs=2, metavar=("ROW", "COL"))
    den.add_argument("--poni", help="pyFAI PONI file")
    _add_method_and_device(den)
    den.add_argument("--budget", type=float, default=None)
    den.add_argument("--mask-bad", action="store_true",
                     help="mask NaN/negative pixels instead of refusing the input "
                          "(saturated integer pixels, e.g. 2**32-1, are always masked)")
    den.set_defaults(func=_cmd_denoise)

    rep = sub.add_parser("replay", help="denoise archived runs of a Tiled catalog")
    rep.add_argument("uids", nargs="*", metavar="UID", help="raw run uids")
    rep.add_argument("--catalog", required=True,
                     help="Tiled URI, or a directory written by SimpleTiledServer(directory=)")
    rep.add_argument("--api-key", help="Tiled API key (default: $TILED_API_KEY)")
    rep.add_argument("--to", help="catalog for the derived runs (default: --catalog)")
    rep.add_argument("--to-api-key", help="API key of --to (default: --api-key)")
    rep.add_argument("--plan", help="search: runs of this plan_name")
    rep.add_argument("--since", help="search: runs started at/after (ISO date or epoch s)")
    rep.add_argument("--until", help="search: runs started at/before (ISO date or epoch s)")
    rep.add_argument("--force", action="store_true",
                     help="replay runs that already have a derived run (writes another)")
    rep.add_argument("--no-progress", action="store_true", help="no progress bar")
    rep.add_argument("--readable-storage", action="append", metavar="DIR",
                     help="for a catalog directory: one more directory its server may read "
                          "registered files from (repeatable; the directories of the files "
                          "the catalog registered are readable without it)")
    _add_denoiser_arguments(rep)
    rep.set_defaults(func=_cmd_replay)

    srv = sub.add_parser("serve", help="denoise live runs from a 0MQ proxy or NATS JetStream")
    srv.add_argument("--from", dest="from_address",
                     help="0MQ proxy out address, e.g. tcp://127.0.0.1:5578")
    srv.add_argument("--to", dest="to_address",
                     help="0MQ proxy in address, e.g. tcp://127.0.0.1:5577")
    srv.add_argument("--prefix", default="", help="0MQ message prefix (default: none)")
    srv.add_argument("--nats", metavar="URL", help="NATS server, e.g. nats://127.0.0.1:4222")
    srv.add_argument("--subject", help="NATS subject prefix of the raw documents")
    srv.add_argument("--derived-subject", help="NATS subject prefix of derived documents "
                     "(default: --subject)")
    srv.add_argument("--stream", default="bluesky", help="JetStream stream name")
    srv.add_argument("--max-queue", type=int, default=64,
                     help="frames waiting for the denoiser before new ones are dropped")
    srv.add_argument("--lossless", action="store_true",
                     help="never drop a frame: wait for the denoiser instead (the backlog "
                          "grows in the bus, and latency with it)")
    srv.add_argument("--group", metavar="NAME",
                     help="NATS: serve as a member of the worker group NAME; members share "
                          "the raw runs (each run denoised by one member) and take over the "
                          "runs of a member that dies")
    srv.add_argument("--ack-wait", type=float, default=30.0, metavar="S",
                     help="with --group: seconds without a heartbeat before a member's run "
                          "is taken over (default 30; set when the group is first created)")
    _add_denoiser_arguments(srv)
    srv.set_defaults(func=_cmd_serve)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except _OptionError as exc:  # as argparse words a bad option: one line, status 2
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"bluesky-symdenoise: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
