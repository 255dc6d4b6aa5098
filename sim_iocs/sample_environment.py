"""A simulated sample environment: a furnace whose temperature ramps to its setpoint.

PVs (under the IOC prefix)::

    Temperature          setpoint (K); put returns at once, the readback ramps towards it
    Temperature_RBV      sample temperature (K), updated every ``UpdatePeriod`` s
    RampRate             K/s (> 0)
    Moving_RBV           1 while the readback is more than ``Tolerance`` from the setpoint
    Tolerance            K

In the beamline IOC (:mod:`sim_iocs.beamline`) the readback drives an in situ detector
scene. Run alone: ``python -m sim_iocs.sample_environment --prefix bsd:sample:``.
"""

from __future__ import annotations

import argparse

from caproto.server import PVGroup, pvproperty

from sim_iocs._run import set_before_serving

__all__ = ["SampleEnvironmentIOC", "add_sample_arguments"]

UPDATE_PERIOD = 0.05  # s between readback updates while ramping


class SampleEnvironmentIOC(PVGroup):
    """A temperature controller with a linear ramp."""

    setpoint = pvproperty(name="Temperature", value=300.0, precision=2, units="K",
                          doc="Target temperature")
    readback = pvproperty(name="Temperature_RBV", value=300.0, precision=2, units="K",
                          read_only=True, doc="Sample temperature")
    ramp_rate = pvproperty(name="RampRate", value=10.0, precision=2, units="K/s",
                           doc="Ramp rate towards the setpoint")
    moving = pvproperty(name="Moving_RBV", value=0, read_only=True,
                        doc="1 while ramping")
    tolerance = pvproperty(name="Tolerance", value=0.05, precision=3, units="K",
                           doc="Readback within this of the setpoint counts as arrived")

    def __init__(self, *args, temperature: float = 300.0, ramp_rate: float = 10.0,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.configure(temperature=temperature, ramp_rate=ramp_rate)

    def configure(self, *, temperature: float, ramp_rate: float) -> None:
        """Initial temperature (K, at rest) and ramp rate (K/s); before the server starts."""
        set_before_serving({self.setpoint: float(temperature),
                            self.readback: float(temperature),
                            self.ramp_rate: float(ramp_rate)})
        self._target = float(temperature)

    @property
    def temperature(self) -> float:
        return float(self.readback.value)

    @setpoint.putter
    async def setpoint(self, instance, value):
        value = float(value)
        self._target = value  # before any await: the ramp loop may run in between
        if abs(value - self.readback.value) > self.tolerance.value:
            # Moving goes to 1 before the put returns, so a client that sees the put
            # complete and then waits for Moving == 0 cannot miss the motion.
            await self.moving.write(1)
        return value

    @ramp_rate.putter
    async def ramp_rate(self, instance, value):
        if float(value) <= 0:
            raise ValueError("RampRate must be > 0")
        return float(value)

    @readback.scan(period=UPDATE_PERIOD, use_scan_field=False)
    async def readback(self, instance, async_lib):
        target, current = self._target, float(instance.value)
        step = float(self.ramp_rate.value) * UPDATE_PERIOD
        if abs(target - current) <= self.tolerance.value:
            if self.moving.value:
                await instance.write(target)
                await self.moving.write(0)
            return
        new = current + max(-step, min(step, target - current))
        await instance.write(new)
        if self.moving.value != 1:
            await self.moving.write(1)


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sample environment")
    group.add_argument("--temperature", type=float, default=None,
                       help="initial temperature, K (default: low end of the range)")
    group.add_argument("--ramp-rate", type=float, default=10.0, help="K/s")


def main(argv: list[str] | None = None) -> None:
    from sim_iocs._run import parse_ioc_args, run_ioc

    args, ioc_options, run_options = parse_ioc_args(
        "Simulated sample environment (temperature ramp).", "bsd:sample:",
        add_sample_arguments, argv)
    temperature = 300.0 if args.temperature is None else args.temperature
    run_ioc(SampleEnvironmentIOC(temperature=temperature, ramp_rate=args.ramp_rate,
                                 **ioc_options), run_options)


if __name__ == "__main__":
    main()
