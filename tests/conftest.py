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


@pytest.fixture(scope="module")
def qt_display():
    """Environment for a subprocess that opens Qt windows: a private Xvfb X server (local
    socket only, no reset between clients) when Xvfb is installed, else Qt's ``offscreen``
    platform. Skips when no Qt binding is installed."""
    import importlib.util
    import os
    import select
    import shutil
    import subprocess

    if importlib.util.find_spec("PyQt5") is None:
        pytest.skip("PyQt5 is not installed (pip install -e '.[test]')")
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        yield {"QT_QPA_PLATFORM": "offscreen", "DISPLAY": ""}
        return
    read_fd, write_fd = os.pipe()
    server = subprocess.Popen([xvfb, "-displayfd", str(write_fd), "-screen", "0",
                               "1600x1000x24", "-nolisten", "tcp", "-noreset"],
                              pass_fds=(write_fd,),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    try:
        ready, _, _ = select.select([read_fd], [], [], 20)
        number = os.read(read_fd, 32).decode().strip() if ready else ""
        if not number:
            pytest.fail("Xvfb did not report a display within 20 s")
        yield {"DISPLAY": f":{number}", "QT_QPA_PLATFORM": "xcb"}
    finally:
        os.close(read_fd)
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
