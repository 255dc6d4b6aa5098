"""Simulated beamline hardware for sessions, demos and tests.

- :mod:`.loopback`: the Channel Access environment that keeps every IOC and client on
  127.0.0.1 (one place, used by the launcher, the IOCs and the tests);
- :mod:`.launch`: start the caproto IOCs of ``sim_iocs`` as subprocesses;
- :mod:`.devices`: ophyd devices for them.
"""

from .loopback import LOOPBACK_CA_ENV, loopback_env, pin_ca_to_loopback

__all__ = ["LOOPBACK_CA_ENV", "loopback_env", "pin_ca_to_loopback"]
