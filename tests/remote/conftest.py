"""Subprocess fixtures for the serve worker: a bluesky 0MQ proxy and a NATS JetStream server
on 127.0.0.1, and the ``bluesky-symdenoise serve`` process itself. Every subprocess is
polled until ready (never a fixed sleep) and always stopped."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float, what: str,
              interval: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


class Process:
    """A subprocess whose merged output is collected line by line by a reader thread."""

    def __init__(self, args: list[str]) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.args = args
        self.popen = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, env=env)
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout: float) -> None:
        def seen():
            if self.popen.poll() is not None and not any(text in x for x in self.lines):
                raise RuntimeError(f"{self.args[:3]} exited ({self.popen.returncode}):\n"
                                   f"{self.output}")
            return any(text in line for line in self.lines)

        wait_for(seen, timeout, f"{text!r} from {self.args[:3]}")

    def signal(self, signum: int, timeout: float = 60) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)
        code = self.popen.wait(timeout)
        self._close_output()
        return code

    def _close_output(self) -> None:
        self._reader.join(5)
        if self.popen.stdout is not None and not self._reader.is_alive():
            self.popen.stdout.close()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._close_output()


@pytest.fixture
def processes():
    """Start subprocesses with ``processes(args)``; all are stopped at teardown."""
    started: list[Process] = []

    def start(args: list[str]) -> Process:
        process = Process(args)
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()


@pytest.fixture
def zmq_proxy(processes):
    """(in address, out address) of a ``bluesky-0MQ-proxy`` bound to 127.0.0.1 only."""
    pytest.importorskip("zmq")
    exe = shutil.which("bluesky-0MQ-proxy") or str(Path(sys.executable).with_name(
        "bluesky-0MQ-proxy"))
    in_port, out_port = free_port(), free_port()
    proxy = processes([exe, "--in-address", f"tcp://{HOST}:{in_port}",
                       "--out-address", f"tcp://{HOST}:{out_port}"])
    wait_for(lambda: port_open(in_port) and port_open(out_port), 30, "the 0MQ proxy")
    assert proxy.popen.poll() is None, proxy.output
    return f"tcp://{HOST}:{in_port}", f"tcp://{HOST}:{out_port}"


@pytest.fixture
def nats_server(processes, tmp_path):
    """URL of a nats-server with JetStream on 127.0.0.1, its store in a temporary folder,
    holding a stream ``bluesky`` on ``events.>``."""
    pytest.importorskip("bluesky_nats")
    exe = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None)
    if exe is None:
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    port = free_port()
    server = processes([exe, "-a", HOST, "-p", str(port), "-js", "-sd",
                        str(tmp_path / "jetstream")])
    wait_for(lambda: port_open(port), 30, "nats-server")
    assert server.popen.poll() is None, server.output
    url = f"nats://{HOST}:{port}"

    import asyncio

    import nats

    async def add_stream() -> None:
        client = await nats.connect(url)
        try:
            await client.jetstream().add_stream(name="bluesky", subjects=["events.>"])
        finally:
            await client.close()

    asyncio.run(add_stream())
    return url


@pytest.fixture
def serve(processes):
    """Start ``bluesky-symdenoise serve ARGS`` and wait until it says it is ready."""

    def start(*args: str) -> Process:
        worker = processes([sys.executable, "-m", "bluesky_symdenoise.cli", "serve", *args,
                            "--budget", "0", "--device", "cpu"])
        worker.wait_for_line("serve: ready", timeout=120)
        return worker

    return start


__all__ = ["HOST", "Process", "free_port", "signal", "wait_for"]


# The PostgreSQL-backed Tiled server, for the worker group's end-to-end test.
from tests.catalog.conftest import postgres_cluster, postgres_tiled, postgres_url  # noqa: E402, F401
