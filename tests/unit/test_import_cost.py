"""Importing the package, and the command line's ``--help``, do not import torch.

Each check runs in a fresh interpreter: in this one torch is long imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import bluesky_symdenoise


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter that imports this checkout's package."""
    checkout = str(Path(bluesky_symdenoise.__file__).parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (checkout, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("code", [
    "import bluesky_symdenoise",
    "import bluesky_symdenoise.cli",
    "from bluesky_symdenoise.cli import main\n"
    "try:\n    main(['--help'])\nexcept SystemExit as exc:\n    assert exc.code == 0",
    "from bluesky_symdenoise.cli import main\n"
    "try:\n    main(['denoise', '--help'])\nexcept SystemExit as exc:\n    assert exc.code == 0",
], ids=["package", "cli", "help", "denoise-help"])
def test_no_torch_on_import(code):
    proc = _fresh_python(code + "\nimport sys\nassert 'torch' not in sys.modules, 'torch'")
    assert proc.returncode == 0, proc.stderr


def test_public_names_resolve_on_first_use():
    """``denoise`` is the function even once modules of the ``denoise`` subpackage loaded
    (importing a subpackage binds its name in the parent package)."""
    proc = _fresh_python(
        "import bluesky_symdenoise as b\n"
        "import bluesky_symdenoise.cli\n"
        "from bluesky_symdenoise.denoise.config import DenoiseConfig\n"
        "assert callable(b.denoise) and b.denoise.__module__.endswith('denoise.api')\n"
        "assert b.DenoiseConfig is DenoiseConfig\n"
        "assert set(b.__all__) <= set(dir(b))\n"
        "for name in b.__all__:\n    getattr(b, name)\n"
        "from bluesky_symdenoise import *\n"
        "assert denoise is b.denoise and SymDenoise is b.SymDenoise\n")
    assert proc.returncode == 0, proc.stderr


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'denoiser'"):
        bluesky_symdenoise.denoiser  # noqa: B018
