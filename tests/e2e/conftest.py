"""End-to-end tests: the IPython profile and the demo CLI, each in a subprocess, loopback only."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bluesky_symdenoise.detector.loopback import loopback_env

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def e2e_env(tmp_path):
    """Environment for the subprocesses: CA on loopback, headless, HOME in tmp_path."""
    env = loopback_env()
    env.update({"HOME": str(tmp_path / "home"), "MPLBACKEND": "Agg",
                "SYMDENOISE_HEADLESS": "1", "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"})
    env.pop("DISPLAY", None)
    (tmp_path / "home").mkdir()
    return env


def executable(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return found


def run(argv: list[str], *, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` in a session of its own; on timeout the whole group (the IOC the
    child started included) gets SIGINT, then SIGKILL, so no IOC is left behind."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGINT, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                stdout, stderr = proc.communicate(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
        raise AssertionError(f"{argv[:2]} timed out after {timeout} s") from None
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
