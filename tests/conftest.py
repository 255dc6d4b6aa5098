"""Fixtures shared by every test folder: a real RunEngine, and a check that no symdenoise
worker or trainer thread outlives its test."""

from __future__ import annotations

import threading
import time

import pytest


@pytest.fixture
def RE():
    from bluesky import RunEngine

    engine = RunEngine({})
    yield engine
    if engine.state != "idle":
        engine.halt()


@pytest.fixture(autouse=True)
def no_thread_left_behind():
    """Fail a test that leaves a symdenoise worker or trainer thread running."""
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        left = [t for t in threading.enumerate() if t.name.startswith("symdenoise")]
        if not left:
            return
        time.sleep(0.05)
    pytest.fail(f"threads left running: {left}")
