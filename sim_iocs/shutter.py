"""A simulated beam shutter.

PVs (under the IOC prefix)::

    Cmd           Close/Open; put-completes when the blade has moved
    Status_RBV    Closed/Open

While closed, the beamline's detector sees dark frames (hot pixels only).
Run alone: ``python -m sim_iocs.shutter --prefix bsd:shutter:``.
"""

from __future__ import annotations

import argparse
import asyncio

from caproto import ChannelType
from caproto.server import PVGroup, pvproperty

from sim_iocs._run import set_before_serving

__all__ = ["ShutterIOC", "add_shutter_arguments"]

MOVE_TIME = 0.05  # s the blade takes


class ShutterIOC(PVGroup):
    """Open/close command with a readback that follows after the blade moved."""

    cmd = pvproperty(name="Cmd", dtype=ChannelType.ENUM, enum_strings=["Close", "Open"],
                     value="Open", doc="Close (0) or open (1) the shutter")
    status = pvproperty(name="Status_RBV", dtype=ChannelType.ENUM,
                        enum_strings=["Closed", "Open"], value="Open", read_only=True)

    def __init__(self, *args, open: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.configure(open=open)

    def configure(self, *, open: bool) -> None:
        """State at start-up; before the server starts."""
        set_before_serving({self.cmd: "Open" if open else "Close",
                            self.status: "Open" if open else "Closed"})

    @property
    def is_open(self) -> bool:
        return self.status.value == "Open"

    @cmd.putter
    async def cmd(self, instance, value):
        target = "Open" if value in ("Open", 1) else "Closed"
        if self.status.value != target:
            await asyncio.sleep(MOVE_TIME)
            await self.status.write(target)
        return "Open" if target == "Open" else "Close"


def add_shutter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument_group("shutter").add_argument(
        "--shutter", choices=["open", "closed"], default="open", help="state at start-up")


def main(argv: list[str] | None = None) -> None:
    from sim_iocs._run import parse_ioc_args, run_ioc

    args, ioc_options, run_options = parse_ioc_args(
        "Simulated beam shutter.", "bsd:shutter:", add_shutter_arguments, argv)
    run_ioc(ShutterIOC(open=args.shutter == "open", **ioc_options), run_options)


if __name__ == "__main__":
    main()
