"""Each IOC module also runs alone (``python -m sim_iocs.<name>``)."""

from __future__ import annotations

import time

import pytest

from bluesky_symdenoise.detector.launch import random_prefix, start_ioc
from tests.helpers import ca_read as read
from tests.helpers import ca_write as write

pytestmark = pytest.mark.timeout(60)


def test_sample_environment_ramps_alone():
    prefix = random_prefix()
    with start_ioc("sim_iocs.sample_environment", ["--temperature", "310", "--ramp-rate", "200"],
                   prefix=prefix, ready_pv="Temperature_RBV") as ioc:
        assert read(prefix + "Temperature_RBV").data[0] == 310.0
        write(prefix + "Temperature", 330.0, notify=True)
        assert read(prefix + "Moving_RBV").data[0] == 1
        deadline = time.monotonic() + 5
        while read(prefix + "Moving_RBV").data[0] == 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert read(prefix + "Temperature_RBV").data[0] == 330.0
    assert not ioc.running
