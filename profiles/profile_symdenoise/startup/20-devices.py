"""symdenoise profile, 20: the beamline devices ``det``, ``temperature``, ``shutter``.

Environment:
    SYMDENOISE_IOC_PREFIX   PV prefix of a running beamline IOC (``python -m
                            sim_iocs.beamline --prefix bsd: --interfaces 127.0.0.1``); add its
                            address to EPICS_CA_ADDR_LIST if it serves on its own port.
                            Unset: a simulated beamline IOC is started here and stopped at exit.
    SYMDENOISE_SCENE        scene of a started IOC (default ``insitu``: drifting powder rings)
    SYMDENOISE_SIZE         detector size N of a started IOC (default 256)
    SYMDENOISE_COUNTS_PER_SECOND   default 10 (with the 0.1 s exposure set here: ~1 count/pixel)
"""

import os

from bluesky_symdenoise.detector.devices import make_beamline_devices
from bluesky_symdenoise.detector.launch import start_beamline_ioc

beamline_ioc = None
if os.environ.get("SYMDENOISE_IOC_PREFIX"):
    _prefix = os.environ["SYMDENOISE_IOC_PREFIX"]
else:
    beamline_ioc = start_beamline_ioc(
        scene=os.environ.get("SYMDENOISE_SCENE", "insitu"),
        shape=int(os.environ.get("SYMDENOISE_SIZE", "256")),
        counts_per_second=float(os.environ.get("SYMDENOISE_COUNTS_PER_SECOND", "10")),
        ramp_rate=float(os.environ.get("SYMDENOISE_RAMP_RATE", "50")))
    symdenoise_at_exit(beamline_ioc.stop)  # noqa: F821 - 00-base.py
    _prefix = beamline_ioc.prefix

det, temperature, shutter = make_beamline_devices(_prefix)
if beamline_ioc is not None:
    det.cam.acquire_time.put(0.1, wait=True)
print(f"symdenoise: beamline {_prefix} ({'started here' if beamline_ioc else 'external'}): "
      f"det {det.frame_shape}, temperature {temperature.position:.1f} K, "
      f"shutter {shutter.status.get()}")
