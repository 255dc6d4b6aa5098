"""Fixtures for the simulated-IOC tests: one beamline IOC per module, on loopback only.

The IOC runs as a subprocess with a random PV prefix and a port of its own; the fixture
polls a PV until it answers (caproto's ``run_example_ioc`` pattern) and always stops it.
"""

from __future__ import annotations

import pytest
from caproto.sync import client as ca_client

from bluesky_symdenoise.detector.loopback import pin_ca_to_loopback

# Before any CA client (caproto's sync client, ophyd's control layer) searches.
pin_ca_to_loopback()

SHAPE = (128, 128)
COUNTS_PER_SECOND = 10.0
TEMPERATURE_RANGE = (300.0, 600.0)

# caproto's sync client waits 1-2 s for a search answer or a put completion by default; on a
# loaded 2-core CI machine the IOC (writing an HDF5 file, simulating a frame) can take longer,
# and one missed answer failed two tests in a row. A test that waits is not a test that fails.
CA_TIMEOUT_S = 10.0


# repeater=False: the sync client would otherwise spawn a CA repeater daemon (bound to all
# interfaces, outliving the tests).
def ca_read(pvname: str, **kwargs):
    """caproto's sync ``read`` without a repeater and with :data:`CA_TIMEOUT_S`."""
    kwargs.setdefault("timeout", CA_TIMEOUT_S)
    return ca_client.read(pvname, repeater=False, **kwargs)


def ca_write(pvname: str, value, **kwargs):
    """caproto's sync ``write`` without a repeater and with :data:`CA_TIMEOUT_S`."""
    kwargs.setdefault("timeout", CA_TIMEOUT_S)
    return ca_client.write(pvname, value, repeater=False, **kwargs)


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

