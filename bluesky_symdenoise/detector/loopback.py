"""Keep Channel Access on the loopback interface, in one place.

This machine (and many CI runners) has a non-loopback interface: an IOC started with CA's
defaults would announce itself, and a client would search, on the site network. Everything
that starts a simulated IOC or connects to one goes through this module:

- the launcher passes :func:`loopback_env` as the IOC subprocess environment;
- the IOC modules call :func:`pin_ca_to_loopback` before parsing their arguments, so an IOC
  started by hand (``python -m sim_iocs.beamline``) stays local too;
- clients (tests, the demo, the IPython profile) call :func:`pin_ca_to_loopback` before the
  control layer opens its first channel; caproto reads these variables at search time.

Each launched IOC also gets a port of its own (``EPICS_CA_SERVER_PORT``), added to the
client's ``EPICS_CA_ADDR_LIST`` as ``127.0.0.1:PORT`` (:func:`add_ca_address`). CA on
loopback cannot broadcast (``lo`` has no broadcast address), and servers sharing UDP port
5064 share it with ``SO_REUSEPORT``, which hands each unicast search to *one* of them: with
two IOCs on the default port a client finds only one. A port per IOC avoids that.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, MutableMapping

__all__ = ["LOOPBACK_CA_ENV", "add_ca_address", "free_loopback_port", "loopback_env",
           "pin_ca_to_loopback", "remove_ca_address"]

#: Channel Access environment for loopback-only servers and clients.
LOOPBACK_CA_ENV: dict[str, str] = {
    "EPICS_CA_AUTO_ADDR_LIST": "NO",
    "EPICS_CA_ADDR_LIST": "127.0.0.1",
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


def pin_ca_to_loopback(
    environ: MutableMapping[str, str] | None = None,
) -> dict[str, str | None]:
    """Set the loopback CA variables in ``environ`` (default: ``os.environ``).

    Call it before the first CA connection of the process. Loopback addresses already in
    ``EPICS_CA_ADDR_LIST`` (IOCs launched on their own ports) are kept; anything else is
    dropped. Returns the previous values (None where unset) so a caller can restore them.
    """
    environ = os.environ if environ is None else environ
    previous = {key: environ.get(key) for key in LOOPBACK_CA_ENV}
    kept = [a for a in (previous["EPICS_CA_ADDR_LIST"] or "").split() if a.startswith("127.")]
    environ.update(LOOPBACK_CA_ENV)
    for address in kept:
        add_ca_address(address, environ)
    return previous


def add_ca_address(address: str, environ: MutableMapping[str, str] | None = None) -> None:
    """Append ``address`` (``"127.0.0.1:PORT"``) to ``EPICS_CA_ADDR_LIST`` if absent."""
    environ = os.environ if environ is None else environ
    addresses = environ.get("EPICS_CA_ADDR_LIST", "").split()
    if address not in addresses:
        environ["EPICS_CA_ADDR_LIST"] = " ".join([*addresses, address])


def remove_ca_address(address: str, environ: MutableMapping[str, str] | None = None) -> None:
    """Drop ``address`` from ``EPICS_CA_ADDR_LIST`` (an IOC that was stopped)."""
    environ = os.environ if environ is None else environ
    addresses = environ.get("EPICS_CA_ADDR_LIST", "").split()
    environ["EPICS_CA_ADDR_LIST"] = " ".join(a for a in addresses if a != address)


def free_loopback_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 right now."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise OSError("no free loopback port for TCP and UDP")
