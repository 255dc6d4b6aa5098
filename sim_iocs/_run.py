"""Start-up shared by the simulated IOCs: arguments (loopback CA enforced), initial values."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from caproto.server import PVGroup, run, template_arg_parser

from bluesky_symdenoise.detector.loopback import pin_ca_to_loopback


def set_before_serving(values: dict) -> None:
    """Initial values computed at start-up (sizes, paths), set before the server runs.

    Nothing is subscribed yet, so there is nothing to publish; writing the value directly
    means the first client read already sees them (no start-up hook race).
    """
    for channel, value in values.items():
        channel._data["value"] = channel.preprocess_value(value)


def parse_ioc_args(desc: str, default_prefix: str,
                   add_arguments: Callable[[argparse.ArgumentParser], None],
                   argv: list[str] | None = None
                   ) -> tuple[argparse.Namespace, dict[str, Any], dict[str, Any]]:
    """caproto's IOC options plus this IOC's own; CA pinned to loopback first.

    caproto reads ``EPICS_CAS_INTF_ADDR_LIST`` for the default ``--interfaces`` when the
    parser is built, so the environment is pinned before that.
    """
    pin_ca_to_loopback()
    parser, split_args = template_arg_parser(desc=desc, default_prefix=default_prefix,
                                             argv=argv, supported_async_libs=["asyncio"])
    add_arguments(parser)
    args = parser.parse_args(argv)
    loopback = {"127.0.0.1", "localhost"}
    if not set(args.interfaces) <= loopback:
        parser.error(f"--interfaces {args.interfaces}: simulated IOCs serve on loopback only")
    ioc_options, run_options = split_args(args)
    return args, ioc_options, run_options


def run_ioc(ioc: PVGroup, run_options: dict[str, Any]) -> None:
    """Serve ``ioc`` until interrupted (SIGINT/SIGTERM from the launcher)."""
    print(f"serving {len(ioc.pvdb)} PVs with prefix {ioc.prefix!r}", flush=True)
    run(ioc.pvdb, **run_options)
