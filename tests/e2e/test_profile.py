"""The IPython profile starts the beamline, runs a scan, and the catalog holds both runs."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from .conftest import REPO, executable, run

SCRIPT = """
uid, = RE(bp.count([det], num=3))
assert sd.flush(timeout=120), 'denoiser did not finish'
print('SCAN_UID', uid)
print('SD_ERRORS', sd.errors)
"""


def run_profile(tmp_path, env: dict[str, str], script: str, *, timeout: float):
    """``ipython -c script`` with a copy of the shipped profile (IPython writes history and
    security files into the profile directory), a 64×64 detector and budget 0."""
    profile = tmp_path / "profile_symdenoise"
    shutil.copytree(REPO / "profiles" / "profile_symdenoise", profile,
                    ignore=shutil.ignore_patterns("__pycache__", "*.sqlite", "pid", "log",
                                                  "security", "db"))
    env = dict(env, SYMDENOISE_CATALOG=str(tmp_path / "catalog"), SYMDENOISE_SIZE="64",
               SYMDENOISE_BUDGET="0")
    env.pop("SYMDENOISE_IOC_PREFIX", None)
    proc = run(
        [executable("ipython"), f"--profile-dir={profile}", "--no-banner", "--colors=nocolor",
         "--HistoryManager.enabled=False", "-c", script],
        env=env, cwd=tmp_path, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output
    return proc, output


def test_profile_runs_a_scan_into_the_catalog(tmp_path, e2e_env):
    catalog_dir = tmp_path / "catalog"
    proc, output = run_profile(
        tmp_path, dict(e2e_env, SYMDENOISE_SNAPSHOTS=str(tmp_path / "snapshots")), SCRIPT,
        timeout=150)
    uid = next(line.split()[1] for line in proc.stdout.splitlines()
               if line.startswith("SCAN_UID"))
    assert "SD_ERRORS []" in proc.stdout, output

    from tiled.client import from_uri
    from tiled.server import SimpleTiledServer

    with SimpleTiledServer(directory=catalog_dir) as server:
        client = from_uri(server.uri)
        try:
            raw = client[uid]
            frames = raw["primary"]["det_image"].read()
            assert frames.shape == (3, 64, 64)
            derived = [client[key] for key in client
                       if client[key].metadata["start"].get("original_run_uid") == uid]
            assert len(derived) == 1
            assert derived[0].metadata["stop"]["exit_status"] == "success"
            denoised = derived[0]["denoised"]["det_image_denoised"].read()
            assert denoised.shape == (3, 64, 64)
            assert np.all(np.isfinite(denoised))
        finally:
            client.context.close()
    assert list((tmp_path / "snapshots").glob("*.png"))


QT_SCRIPT = """
import time
import matplotlib
import matplotlib.pyplot as plt
times = {'draw': [], 'stop': []}
view.figure.canvas.mpl_connect('draw_event', lambda e: times['draw'].append(time.monotonic()))
RE.subscribe(lambda name, doc: times['stop'].append(time.monotonic()) if name == 'stop' else None)
uid, = RE(bp.count([det], num=8, delay=0.3))
assert sd.flush(timeout=120), 'denoiser did not finish'
deadline = time.monotonic() + 20
while not view.finished() and time.monotonic() < deadline:
    plt.pause(0.1)
print('BACKEND', matplotlib.get_backend())
print('CANVAS', type(view.figure.canvas).__name__)
print('SHOWN', view.figure.number in plt.get_fignums())
print('FINISHED', view.finished())
print('DRAWS_DURING_SCAN', sum(t < times['stop'][0] for t in times['draw']))
print('VIEW_ERRORS', view.errors)
print('SD_ERRORS', sd.errors)
"""


def test_profile_live_view_is_a_qt_window(tmp_path, e2e_env, qt_display):
    if not qt_display.get("DISPLAY"):
        pytest.skip("IPython's %matplotlib qt needs an X server (install xvfb)")
    env = dict(e2e_env, SYMDENOISE_HEADLESS="0", **qt_display)
    env.pop("MPLBACKEND", None)
    proc, output = run_profile(tmp_path, env, QT_SCRIPT, timeout=180)
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert lines["BACKEND"].lower() == "qtagg", output
    assert lines["CANVAS"] == "FigureCanvasQTAgg" and lines["SHOWN"] == "True", output
    assert lines["FINISHED"] == "True", output
    assert int(lines["DRAWS_DURING_SCAN"]) >= 1, output
    assert lines["VIEW_ERRORS"] == "[]" and lines["SD_ERRORS"] == "[]", output
    assert not (tmp_path / "catalog").parent.joinpath("snapshots").exists()  # no PNG mode
