"""One IOC process for a small beamline: detector, sample environment and shutter.

PV prefixes under the IOC prefix ``P``::

    P det:       the detector (:mod:`sim_iocs.xray_detector`): det:cam1:..., det:image1:...,
                 det:PoniPath, det:BeamCenterX_RBV, ...
    P sample:    the furnace (:mod:`sim_iocs.sample_environment`): sample:Temperature, ...
    P shutter:   the shutter (:mod:`sim_iocs.shutter`): shutter:Cmd, shutter:Status_RBV

Serving them from one process lets the sample temperature and the shutter drive the
detector's scene directly: with ``--scene insitu`` the frame at temperature T shows the
sample at T (an in situ experiment); with the shutter closed frames are dark.

Run: ``python -m sim_iocs.beamline --prefix bsd: --scene insitu --shape 256``; or use
:func:`bluesky_symdenoise.detector.launch.start_beamline_ioc`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from caproto.server import PVGroup, SubGroup

from sim_iocs.sample_environment import SampleEnvironmentIOC, add_sample_arguments
from sim_iocs.scene_source import SceneSource
from sim_iocs.shutter import ShutterIOC, add_shutter_arguments
from sim_iocs.xray_detector import XrayDetectorIOC, add_detector_arguments, scene_source_from_args

__all__ = ["BeamlineIOC"]


class BeamlineIOC(PVGroup):
    """Detector, sample environment and shutter; see the module docstring for the PVs."""

    det = SubGroup(XrayDetectorIOC, prefix="det:")
    sample = SubGroup(SampleEnvironmentIOC, prefix="sample:")
    shutter = SubGroup(ShutterIOC, prefix="shutter:")

    def __init__(self, *args, source: SceneSource, calibration_dir: str | Path | None = None,
                 temperature: float | None = None, ramp_rate: float = 10.0,
                 shutter_open: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.det.attach(source, sample_state=self.sample_state,
                        calibration_dir=calibration_dir)
        self.sample.configure(temperature=(source.temperature_range[0] if temperature is None
                                           else temperature), ramp_rate=ramp_rate)
        self.shutter.configure(open=shutter_open)

    def sample_state(self) -> tuple[float, bool]:
        """Temperature and beam at the moment of exposure."""
        return self.sample.temperature, self.shutter.is_open


def add_beamline_arguments(parser: argparse.ArgumentParser) -> None:
    add_detector_arguments(parser)
    add_sample_arguments(parser)
    add_shutter_arguments(parser)


def main(argv: list[str] | None = None) -> None:
    from sim_iocs._run import parse_ioc_args, run_ioc

    args, ioc_options, run_options = parse_ioc_args(
        "Simulated beamline: X-ray detector, sample environment, shutter.", "bsd:",
        add_beamline_arguments, argv)
    run_ioc(BeamlineIOC(source=scene_source_from_args(args), calibration_dir=args.poni_dir,
                        temperature=args.temperature, ramp_rate=args.ramp_rate,
                        shutter_open=args.shutter == "open", **ioc_options), run_options)


if __name__ == "__main__":
    main()
