"""Start the simulated beamline IOC as a subprocess, on loopback, and wait until it serves.

This follows caproto's own test fixture (``run_example_ioc``): a random PV prefix, a
subprocess, a readiness poll by reading a PV (never a fixed sleep), and a stop that always
runs (SIGINT, then terminate, then kill).
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .loopback import (
    add_ca_address,
    free_loopback_port,
    loopback_env,
    pin_ca_to_loopback,
    remove_ca_address,
)

__all__ = ["IOCStartError", "RunningIOC", "random_prefix", "start_beamline_ioc", "start_ioc",
           "wait_for_pv"]

#: The PV polled for readiness, relative to the beamline prefix.
READY_PV = "det:cam1:ArraySizeX_RBV"


class IOCStartError(RuntimeError):
    """The IOC process exited, or did not answer in time."""


def random_prefix(stem: str = "bsd") -> str:
    """A PV prefix no other IOC on this host uses, e.g. ``bsd3f9a1c2e:``."""
    return f"{stem}{secrets.token_hex(4)}:"


@dataclass
class RunningIOC:
    """An IOC subprocess. Use as a context manager, or call :meth:`stop`."""

    prefix: str
    process: subprocess.Popen
    args: list[str]
    port: int
    poni_dir: Path | None = None
    log_path: Path | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)
    _tmpdir: Any = field(default=None, repr=False)

    @property
    def poni_path(self) -> Path | None:
        return None if self.poni_dir is None else self.poni_dir / "detector.poni"

    @property
    def mask_path(self) -> Path | None:
        return None if self.poni_dir is None else self.poni_dir / "mask.npy"

    @property
    def ca_address(self) -> str:
        """``127.0.0.1:PORT``: where this IOC answers searches (in ``EPICS_CA_ADDR_LIST``)."""
        return f"127.0.0.1:{self.port}"

    def pv(self, suffix: str) -> str:
        return self.prefix + suffix

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        """What the IOC printed so far (stdout and stderr)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 3.0) -> int | None:
        """Stop the IOC: SIGINT (a clean caproto shutdown), then terminate, then kill."""
        process = self.process
        if process.poll() is None:
            for action in (lambda: process.send_signal(signal.SIGINT), process.terminate,
                           process.kill):
                action()
                try:
                    process.wait(timeout=timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
        remove_ca_address(self.ca_address)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
        return process.returncode

    def __enter__(self) -> RunningIOC:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for_pv(pvname: str, *, timeout: float = 30.0, process: subprocess.Popen | None = None,
                attempt_timeout: float = 1.0) -> Any:
    """Read ``pvname`` with caproto's client until it answers; fail fast if ``process`` dies."""
    from caproto.sync.client import read

    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise IOCStartError(f"IOC exited with code {process.returncode} before serving "
                                f"{pvname}")
        try:
            return read(pvname, timeout=attempt_timeout, repeater=False)
        except (TimeoutError, ConnectionRefusedError) as exc:
            if time.monotonic() > deadline:
                raise IOCStartError(f"{pvname} did not answer within {timeout} s") from exc


def start_ioc(module: str, args: list[str], *, prefix: str, ready_pv: str,
              timeout: float = 60.0, poni_dir: Path | None = None,
              tmpdir: Any = None) -> RunningIOC:
    """Run ``python -m module --prefix prefix *args`` on loopback and wait for ``ready_pv``.

    The IOC serves on a free port of its own; that address is added to this process's
    ``EPICS_CA_ADDR_LIST`` (removed again by :meth:`RunningIOC.stop`), so clients here find
    it even when other IOCs run on the host.
    """
    pin_ca_to_loopback()
    port = free_loopback_port()
    env = loopback_env()
    env["EPICS_CA_SERVER_PORT"] = env["EPICS_CAS_SERVER_PORT"] = str(port)
    env["PYTHONUNBUFFERED"] = "1"
    log_dir = Path(tmpdir.name) if tmpdir is not None else Path(tempfile.mkdtemp())
    log_path = log_dir / f"{module.rsplit('.', 1)[-1]}-{prefix.rstrip(':')}.log"
    log = open(log_path, "wb")
    # The IOC imports the module as this interpreter would (the installed package, or the
    # checkout on PYTHONPATH); run from the log folder, it cannot pick up a stray module
    # from the caller's working directory.
    argv = [sys.executable, "-m", module, "--prefix", prefix, "--interfaces", "127.0.0.1",
            *args]
    process = subprocess.Popen(argv, env=env, cwd=str(log_dir), stdout=log,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    ioc = RunningIOC(prefix=prefix, process=process, args=argv, port=port, poni_dir=poni_dir,
                     log_path=log_path, _log=log, _tmpdir=tmpdir)
    add_ca_address(ioc.ca_address)
    try:
        wait_for_pv(prefix + ready_pv, timeout=timeout, process=process)
    except BaseException as exc:
        text = ioc.log()[-3000:]
        ioc.stop()
        if isinstance(exc, IOCStartError):
            raise IOCStartError(f"{exc}\n--- IOC output ---\n{text}") from None
        raise
    return ioc


def start_beamline_ioc(prefix: str | None = None, *, scene: str = "powder",
                       shape: int | tuple[int, int] = 256, seed: int = 0,
                       counts_per_second: float = 10.0, insitu_change: str = "ring_drift",
                       temperature_range: tuple[float, float] = (300.0, 600.0),
                       temperature: float | None = None, ramp_rate: float = 10.0,
                       shutter_open: bool = True, poni_dir: str | Path | None = None,
                       timeout: float = 60.0, gain: float | None = None,
                       read_noise: float | None = None,
                       dark_offset: float | None = None) -> RunningIOC:
    """Start :mod:`sim_iocs.beamline` (detector, sample environment, shutter).

    Parameters
    ----------
    prefix
        PV prefix; default a random ``bsd<hex>:``.
    scene
        ``powder``, ``textured``, ``saxs``, ``lattice``, ``lattice_one_sided``, or an in situ
        scene following the temperature: ``insitu`` (powder), ``insitu_lattice``.
    shape
        Detector size, N or (rows, cols).
    seed, counts_per_second
        Scene seed; mean counts per valid pixel per second of ``AcquireTime``.
    insitu_change
        ``ring_drift``, ``lattice_expansion`` or ``phase_appearing``.
    temperature_range
        K at the first and last state of the in situ series.
    temperature, ramp_rate
        Initial temperature (default: low end of the range), ramp rate in K/s.
    shutter_open
        Shutter state at start-up.
    poni_dir
        Where the IOC writes ``detector.poni`` and ``mask.npy``; default a temporary
        directory removed by :meth:`RunningIOC.stop`.
    timeout
        Seconds to wait for the IOC to serve.
    gain, read_noise, dark_offset
        A flat panel (integrating detector) instead of photon counting: frames in ADU =
        ``gain`` (ADU/photon) × photons + ``dark_offset`` (ADU) + Gaussian readout noise of
        ``read_noise`` (ADU rms), rounded and clipped to 0..65535. ``gain`` switches the mode
        on; the other two default to 0 and need it.

    Returns
    -------
    RunningIOC
        Stop it with :meth:`RunningIOC.stop` or a ``with`` block.
    """
    if gain is None and (read_noise is not None or dark_offset is not None):
        raise ValueError("read_noise and dark_offset describe a flat panel: give gain= "
                         "(ADU per photon) too")
    prefix = prefix or random_prefix()
    rows, cols = (shape, shape) if isinstance(shape, int) else shape
    tmpdir = tempfile.TemporaryDirectory(prefix="bsd_ioc_")
    poni_dir = Path(poni_dir) if poni_dir is not None else Path(tmpdir.name) / "calibration"
    args = ["--scene", scene, "--shape", str(rows), str(cols), "--seed", str(seed),
            "--counts-per-second", repr(float(counts_per_second)),
            "--insitu-change", insitu_change,
            "--temperature-range", *(repr(float(t)) for t in temperature_range),
            "--ramp-rate", repr(float(ramp_rate)),
            "--shutter", "open" if shutter_open else "closed",
            "--poni-dir", str(poni_dir)]
    if temperature is not None:
        args += ["--temperature", repr(float(temperature))]
    for option, value in (("--gain", gain), ("--read-noise", read_noise),
                          ("--dark-offset", dark_offset)):
        if value is not None:
            args += [option, repr(float(value))]
    return start_ioc("sim_iocs.beamline", args, prefix=prefix, ready_pv=READY_PV,
                     timeout=timeout, poni_dir=poni_dir, tmpdir=tmpdir)
