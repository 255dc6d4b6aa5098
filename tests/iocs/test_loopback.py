"""The Channel Access environment keeps servers and clients on loopback."""

from __future__ import annotations

from bluesky_symdenoise.detector.loopback import (
    LOOPBACK_CA_ENV,
    add_ca_address,
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
    assert 0 < free_loopback_port() < 65536
