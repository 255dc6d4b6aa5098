"""Keep Channel Access on the loopback interface, in one place.

This machine (and many CI runners) has a non-loopback interface: an IOC started with CA's
defaults would announce itself, and a client would search, on the site network. Everything
that starts a simulated IOC or connects to one goes through this module:

- the launcher passes :func:`loopback_env` as the IOC subprocess environment;
- the IOC modules call :func:`pin_ca_to_loopback` before parsing their arguments, so an IOC
  started by hand (``python -m sim_iocs.beamline``) stays local too;
- clients (tests, the demo, the IPython profile) call :func:`pin_ca_to_loopback` before the
  control layer opens its first channel; caproto reads these variables at search time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

__all__ = ["LOOPBACK_CA_ENV", "loopback_env", "pin_ca_to_loopback"]

#: Channel Access environment for loopback-only servers and clients. The search goes to the
#: loopback broadcast address as well as 127.0.0.1: a unicast search reaches only one of
#: several servers sharing UDP port 5064 on a host (the last to bind), the broadcast reaches
#: all of them, so IOCs started by parallel test sessions do not hide each other.
LOOPBACK_CA_ENV: dict[str, str] = {
    "EPICS_CA_AUTO_ADDR_LIST": "NO",
    "EPICS_CA_ADDR_LIST": "127.0.0.1 127.255.255.255",
    "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
    "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
    "EPICS_CAS_BEACON_ADDR_LIST": "127.255.255.255",
    # One 2048x2048 int32 frame is 16 MiB; CA's default limit is 16 kB.
    "EPICS_CA_MAX_ARRAY_BYTES": "20000000",
}


def loopback_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default: ``os.environ``) with CA pinned to loopback."""
    env = dict(os.environ if base is None else base)
    env.update(LOOPBACK_CA_ENV)
    return env


def pin_ca_to_loopback(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the loopback CA variables in ``environ`` (default: ``os.environ``).

    Call it before the first CA connection of the process. Returns the previous values
    (None where unset) so a caller can restore them.
    """
    environ = os.environ if environ is None else environ
    previous = {key: environ.get(key) for key in LOOPBACK_CA_ENV}
    environ.update(LOOPBACK_CA_ENV)
    return previous
