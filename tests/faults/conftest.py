"""Fixtures shared by the fault matrix: the integration fixtures (RunEngine, scene, frames,
collectors, the thread-leak check) plus :class:`Harness`, which wires a ``SymDenoise`` between
two raw subscribers and checks the invariants every fault test must keep (row 7):

* raw documents byte-identical for the subscribers before and after the plugin, and never
  changed after the fact;
* every derived document passes event_model's ``schema_validators``, and every derived run
  has one start, at most one stop (after its start) and no event after its stop;
* no thread left running after ``close()`` (``no_thread_left_behind``, autouse);
* no network traffic beyond loopback (``loopback_only``, autouse).
"""

from __future__ import annotations

import ipaddress
import socket
import threading

import pytest

from bluesky_symdenoise.denoise.engine import ScanDenoiser
from bluesky_symdenoise.stream.callback import SymDenoise
from tests.helpers import DocumentCollector


def _is_loopback(address) -> bool:
    if not isinstance(address, tuple) or not address:
        return True  # AF_UNIX paths and the like never leave the host
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: resolving it would already be traffic


class Traffic:
    """Destinations of socket connects/sends during a test."""

    def __init__(self) -> None:
        self.seen: list[object] = []
        self.offences: list[str] = []


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Fail any socket connect/send to a non-loopback address (EPICS CA is pinned)."""
    traffic = Traffic()
    for method in ("connect", "connect_ex", "sendto"):
        original = getattr(socket.socket, method)

        def guarded(self, *args, _original=original, _method=method):
            address = args[-1]
            traffic.seen.append(address)
            if not _is_loopback(address):
                traffic.offences.append(f"{_method} to {address!r}")
                raise OSError(f"fault tests allow loopback traffic only, not {address!r}")
            return _original(self, *args)

        monkeypatch.setattr(socket.socket, method, guarded)
    yield traffic
    assert not traffic.offences, f"traffic beyond loopback: {traffic.offences}"


def check_derived_runs(derived: DocumentCollector) -> dict[str, dict]:
    """Schema-valid documents; per derived run one start, at most one stop, no event after
    it; returns {derived start uid: stop or None}."""
    derived.validate()
    stops: dict[str, dict | None] = {}
    descriptors: dict[str, str] = {}
    for name, doc in derived.docs:
        if name == "start":
            assert doc["uid"] not in stops, "derived start emitted twice"
            stops[doc["uid"]] = None
        elif name == "descriptor":
            assert doc["run_start"] in stops, "descriptor before its start"
            assert stops[doc["run_start"]] is None, "descriptor after the stop"
            descriptors[doc["uid"]] = doc["run_start"]
        elif name == "event":
            run = descriptors[doc["descriptor"]]
            assert stops[run] is None, "derived event after the derived stop"
        elif name == "stop":
            assert doc["run_start"] in stops, "derived stop for a run never started"
            assert stops[doc["run_start"]] is None, "second derived stop"
            stops[doc["run_start"]] = doc
    return stops


class Harness:
    """A RunEngine with ``before`` -> ``sd`` -> ``after`` subscribed, in that order."""

    def __init__(self, RE, before: DocumentCollector, derived: DocumentCollector) -> None:
        self.RE, self.before, self.derived = RE, before, derived
        self.after = DocumentCollector()
        self.sd: SymDenoise | None = None

    def plugin(self, *args, **kwargs) -> SymDenoise:
        self.sd = SymDenoise(*args, **kwargs)
        self.sd.subscribe(self.derived)
        self.RE.subscribe(self.before)
        self.RE.subscribe(self.sd)
        self.RE.subscribe(self.after)
        return self.sd

    def finish(self, timeout: float = 60) -> dict[str, dict]:
        """Flush and close the plugin, then check the invariants; returns derived stops."""
        assert self.sd.flush(timeout), "the worker did not drain its queue"
        assert self.sd.close(timeout), "the worker thread did not end"
        return self.check()

    def check(self) -> dict[str, dict]:
        assert self.before.unchanged(), "a raw document changed after it was received"
        assert self.after.unchanged()
        assert [n for n, _ in self.before.docs] == [n for n, _ in self.after.docs]
        assert self.before.snapshots == self.after.snapshots, \
            "subscribers after the plugin saw different raw documents"
        self.before.validate()
        return check_derived_runs(self.derived)

    def derived_stop(self) -> dict:
        (stop,) = self.derived.of("stop")
        return stop

    def raw_stop(self) -> dict:
        (stop,) = self.before.of("stop")
        return stop


@pytest.fixture
def harness(RE, collector, derived):
    return Harness(RE, collector, derived)



@pytest.fixture
def training_done(monkeypatch):
    """An Event set when a per-scan fine-tuning (``ScanDenoiser.fit``) returns or raises.

    On a loaded CPU the (low-priority) trainer may not even start before a short scan ends;
    a detector waiting on this event keeps the scan open until training is over."""
    import torch

    # The first optimiser of a process costs seconds of lazy imports (torch._dynamo), which
    # ``fit`` counts against the budget: pay it here, not inside a 2 s budget.
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    done = threading.Event()
    original = ScanDenoiser.fit

    def fit(self, *args, **kwargs):
        try:
            return original(self, *args, **kwargs)
        finally:
            done.set()

    monkeypatch.setattr(ScanDenoiser, "fit", fit)
    return done


def waiting_frames(source, event: threading.Event, at: int = 5, timeout: float = 60):
    """Frames from ``source()``; the ``at``-th call (0-based) first waits for ``event``."""
    calls = iter(range(10**9))

    def frame():
        if next(calls) == at:
            assert event.wait(timeout), "training never ended"
        return source()
    return frame
