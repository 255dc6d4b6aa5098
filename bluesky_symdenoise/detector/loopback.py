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
two IOCs on the default port a client finds only one. A port per IOC avoids that; it is
taken below the kernel's ephemeral range (:func:`free_loopback_port`), so no client socket is
ever given the same port.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Mapping, MutableMapping
from pathlib import Path

__all__ = ["LOOPBACK_CA_ENV", "add_ca_address", "ephemeral_port_range", "free_loopback_port",
           "loopback_env", "pin_ca_to_loopback", "remove_ca_address"]

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


def ephemeral_port_range() -> tuple[int, int]:
    """The ports the kernel hands out for ``bind(port 0)``: Linux's
    ``ip_local_port_range``, elsewhere the IANA dynamic range (49152-65535)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535


def free_loopback_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 right now, below the ephemeral range.

    An IOC's UDP search socket is bound with ``SO_REUSEADDR`` (as caproto binds it), and so
    is every CA client's own UDP socket, bound to port 0. Linux does not count a port whose
    sockets all allow reuse as taken when it picks an ephemeral one, so a client can be given
    the IOC's own port; the IOC's answer to that client's search then goes to the IOC's
    more specific 127.0.0.1 socket, and the search times out (an IOC test's 10 s timeout in
    CI). A port outside the ephemeral range is never handed to a client.
    """
    low, _ = ephemeral_port_range()
    candidates = range(max(1024, low - 10000), max(1025, low))
    rng = random.SystemRandom()  # two launchers at once rarely try the same ports
    for _ in range(50):
        port = rng.choice(candidates)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                tcp.bind(("127.0.0.1", port))
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError("no free loopback port for TCP and UDP")
