"""The Channel Access environment keeps servers and clients on loopback."""

from __future__ import annotations

import socket
import sys

import pytest

from bluesky_symdenoise.detector.loopback import (
    LOOPBACK_CA_ENV,
    add_ca_address,
    ephemeral_port_range,
    free_loopback_port,
    loopback_env,
    pin_ca_to_loopback,
    remove_ca_address,
)


def test_environment_is_loopback_only():
    assert LOOPBACK_CA_ENV["EPICS_CA_AUTO_ADDR_LIST"] == "NO"
    assert LOOPBACK_CA_ENV["EPICS_CA_ADDR_LIST"] == "127.0.0.1"
    assert LOOPBACK_CA_ENV["EPICS_CAS_INTF_ADDR_LIST"] == "127.0.0.1"
    assert LOOPBACK_CA_ENV["EPICS_CAS_AUTO_BEACON_ADDR_LIST"] == "NO"
    assert LOOPBACK_CA_ENV["EPICS_CAS_BEACON_ADDR_LIST"].startswith("127.")
    assert int(LOOPBACK_CA_ENV["EPICS_CA_MAX_ARRAY_BYTES"]) >= 4 * 2048 * 2048


def test_pin_keeps_loopback_addresses_and_drops_others():
    env = {"EPICS_CA_ADDR_LIST": "10.0.0.255 127.0.0.1:5100", "EPICS_CA_AUTO_ADDR_LIST": "YES"}
    previous = pin_ca_to_loopback(env)
    assert previous["EPICS_CA_AUTO_ADDR_LIST"] == "YES"
    assert env["EPICS_CA_ADDR_LIST"].split() == ["127.0.0.1", "127.0.0.1:5100"]
    assert env["EPICS_CA_AUTO_ADDR_LIST"] == "NO"
    add_ca_address("127.0.0.1:5200", env)
    add_ca_address("127.0.0.1:5200", env)
    remove_ca_address("127.0.0.1:5100", env)
    assert env["EPICS_CA_ADDR_LIST"].split() == ["127.0.0.1", "127.0.0.1:5200"]


def test_subprocess_env_and_free_port():
    env = loopback_env({"PATH": "/bin", "EPICS_CA_AUTO_ADDR_LIST": "YES"})
    assert env["PATH"] == "/bin" and env["EPICS_CA_AUTO_ADDR_LIST"] == "NO"
    low, high = ephemeral_port_range()
    assert 1024 <= low <= high <= 65535
    for _ in range(20):
        port = free_loopback_port()
        assert 1024 <= port < low  # never one the kernel hands a client's bind(port 0)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", port))  # and really free


@pytest.mark.skipif(sys.platform != "linux", reason="Linux's choice among sockets sharing a port")
def test_a_client_socket_on_an_iocs_port_never_hears_the_iocs_answer():
    """Why IOC ports are kept out of the ephemeral range: sockets bound as caproto binds
    them (the IOC's with SO_REUSEADDR and SO_REUSEPORT on 127.0.0.1, a client's with
    SO_REUSEADDR on all interfaces) may share a port, and then the IOC's answer to the
    client lands on the IOC's own, more specific socket."""
    ioc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with ioc, client:
        for sock in (ioc, client):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.settimeout(0.5)
        ioc.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        ioc.bind(("127.0.0.1", free_loopback_port()))
        port = ioc.getsockname()[1]
        client.bind(("", port))  # allowed: the kernel does not count the IOC's port as taken
        ioc.sendto(b"answer", ("127.0.0.1", port))
        assert ioc.recvfrom(16)[0] == b"answer"
        with pytest.raises(TimeoutError):
            client.recvfrom(16)
