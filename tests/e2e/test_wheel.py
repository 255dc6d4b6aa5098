"""The wheel, installed in a fresh virtual environment, runs ``bluesky-symdenoise demo``
outside the checkout: the package, its models, ``py.typed`` and the IOCs are all in it.

No network here: the wheel is built without build isolation, and the new environment sees
the shared environment's dependencies through a ``.pth`` line. A directory listed in a
``.pth`` file is appended to ``sys.path`` but its own ``.pth`` files are not processed, so
the editable install that maps ``bluesky_symdenoise`` onto a checkout stays out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from bluesky_symdenoise.detector.loopback import loopback_env

from .conftest import REPO, run

#: What ``pip wheel`` must not copy from the checkout (build outputs, caches, local runs).
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                     "__pycache__", "*.pyc", ".pytest_cache", ".hypothesis",
                                     "out")


def _pip(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check",
                           "--no-input", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=180)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the checkout (setuptools writes ``build/`` and
    ``*.egg-info`` into the source folder; the checkout stays as it is)."""
    pytest.importorskip("setuptools", minversion="64",
                        reason="building the wheel without network needs setuptools>=64 "
                               "(the build backend) installed in this environment")
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCES)
    built = _pip("wheel", "--no-index", "--no-deps", "--no-build-isolation", "-w",
                 str(base / "dist"), str(source), cwd=base)
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = (base / "dist").glob("bluesky_symdenoise-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A new virtual environment with the wheel installed and the shared dependencies."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True,
                   timeout=60)
    python = root / "bin" / "python"
    installed = _pip("--python", str(python), "install", "--no-index", "--no-deps", str(wheel),
                     cwd=root)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    site = subprocess.run([str(python), "-c", "import sysconfig; "
                           "print(sysconfig.get_path('purelib'))"], capture_output=True,
                          text=True, check=True, timeout=30).stdout.strip()
    (Path(site) / "shared_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return root


@pytest.fixture
def outside_env(tmp_path, venv) -> dict[str, str]:
    """Loopback CA, headless, no PYTHONPATH or user site: only the new environment."""
    env = loopback_env()
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "DISPLAY"):
        env.pop(name, None)
    (tmp_path / "home").mkdir()
    env.update({"HOME": str(tmp_path / "home"), "PYTHONNOUSERSITE": "1", "MPLBACKEND": "Agg",
                "SYMDENOISE_HEADLESS": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
                "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"})
    return env


def test_wheel_ships_models_types_and_iocs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {"bluesky_symdenoise/py.typed", "bluesky_symdenoise/models/base_v2.pt",
               "bluesky_symdenoise/models/base_v2.json", "sim_iocs/beamline.py",
               "sim_iocs/scene_source.py"}
    assert shipped <= names, sorted(shipped - names)
    models = sorted(p.name for p in (REPO / "bluesky_symdenoise" / "models").iterdir()
                    if p.suffix in {".pt", ".json"})
    assert {f"bluesky_symdenoise/models/{name}" for name in models} <= names
    assert not any(name.startswith(("tests/", "bench/")) for name in names)


def test_demo_runs_from_the_installed_wheel(tmp_path, venv, outside_env):
    where = run([str(venv / "bin" / "python"), "-c",
                 "import json, bluesky_symdenoise, sim_iocs; "
                 "print(json.dumps([bluesky_symdenoise.__file__, sim_iocs.__file__]))"],
                env=outside_env, cwd=tmp_path, timeout=60)
    assert where.returncode == 0, where.stderr
    for path in json.loads(where.stdout):
        assert Path(path).is_relative_to(venv), path

    out = tmp_path / "demo"
    proc = run([str(venv / "bin" / "bluesky-symdenoise"), "demo", "--out", str(out),
                "--frames", "4", "--size", "128", "--budget", "2"],
               env=outside_env, cwd=tmp_path, timeout=150)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["catalog"]["denoised_frames"] == [4, 128, 128]
    assert summary["catalog"]["derived_exit_status"] == "success"
    # Every frame came from a network: the shipped base model loaded from the installed
    # package (without it the interim frames would be "classical-nlm (interim)").
    assert all(by.startswith("network:") for by in summary["denoised_by"]), summary
