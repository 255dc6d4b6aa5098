"""The IPython profile starts the beamline, runs a scan, and the catalog holds both runs."""

from __future__ import annotations

import shutil

import numpy as np

from .conftest import REPO, executable, run

SCRIPT = """
uid, = RE(bp.count([det], num=3))
assert sd.flush(timeout=120), 'denoiser did not finish'
print('SCAN_UID', uid)
print('SD_ERRORS', sd.errors)
"""


def test_profile_runs_a_scan_into_the_catalog(tmp_path, e2e_env):
    # A copy: IPython writes history and security files into the profile directory.
    profile = tmp_path / "profile_symdenoise"
    shutil.copytree(REPO / "profiles" / "profile_symdenoise", profile,
                    ignore=shutil.ignore_patterns("__pycache__", "*.sqlite", "pid", "log",
                                                  "security", "db"))
    catalog_dir = tmp_path / "catalog"
    env = dict(e2e_env, SYMDENOISE_CATALOG=str(catalog_dir), SYMDENOISE_SIZE="64",
               SYMDENOISE_BUDGET="0", SYMDENOISE_SNAPSHOTS=str(tmp_path / "snapshots"))
    env.pop("SYMDENOISE_IOC_PREFIX", None)
    proc = run(
        [executable("ipython"), f"--profile-dir={profile}", "--no-banner", "--colors=nocolor",
         "--HistoryManager.enabled=False", "-c", SCRIPT],
        env=env, cwd=tmp_path, timeout=150)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output
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
