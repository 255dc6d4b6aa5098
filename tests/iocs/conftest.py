"""Fixtures for the simulated-IOC tests: one beamline IOC per module, on loopback only.

The IOC runs as a subprocess with a random PV prefix and a port of its own; the fixture
polls a PV until it answers (caproto's ``run_example_ioc`` pattern) and always stops it.
"""

from __future__ import annotations

import pytest

from bluesky_symdenoise.detector.loopback import pin_ca_to_loopback

# Before any CA client (caproto's sync client, ophyd's control layer) searches.
pin_ca_to_loopback()

SHAPE = (128, 128)
COUNTS_PER_SECOND = 10.0
TEMPERATURE_RANGE = (300.0, 600.0)

@pytest.fixture(scope="module")
def beamline_ioc():
    from bluesky_symdenoise.detector.launch import start_beamline_ioc

    ioc = start_beamline_ioc(scene="insitu", shape=SHAPE, seed=1,
                             counts_per_second=COUNTS_PER_SECOND,
                             insitu_change="ring_drift", temperature_range=TEMPERATURE_RANGE,
                             ramp_rate=1000.0)
    try:
        yield ioc
    finally:
        ioc.stop()
        assert not ioc.running


@pytest.fixture(scope="module")
def beamline(beamline_ioc):
    """(detector, temperature, shutter) ophyd devices, connected."""
    from bluesky_symdenoise.detector.devices import make_beamline_devices

    return make_beamline_devices(beamline_ioc.prefix)

