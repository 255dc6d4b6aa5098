"""The live view in a real Qt window (QtAgg), during a real scan, in a process of its own.

Each case runs ``tests/view/qt_scan.py``: a RunEngine with ``SymDenoise`` and
``LiveDenoiseView()`` subscribed as the shipped profile does, 12 frames at 0.3 s each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_qt_scan(scene: str, out: Path, display: dict[str, str]) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **display)
    env.pop("MPLBACKEND", None)
    proc = subprocess.run([sys.executable, "-m", "tests.view.qt_scan", scene, str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((out / "result.json").read_text())


@pytest.fixture(scope="module")
def symmetric(tmp_path_factory, qt_display):
    out = tmp_path_factory.mktemp("qt_textured")
    return run_qt_scan("textured", out, qt_display), out


def test_window_is_a_qt_canvas_redrawn_during_the_scan(symmetric):
    result, out = symmetric
    assert result["view_errors"] == [] and result["sd_errors"] == [] and result["flushed"]
    # pyplot shows the view's figure on a Qt canvas, the same figure all along
    assert result["canvas"] == "FigureCanvasQTAgg"
    assert result["number"] in result["fignums"] and result["figure_same"]
    assert result["visible"]
    # redrawn on the Qt canvas while the RunEngine was still scanning, then at the end
    assert result["draws_during_scan"] >= 1, result
    assert result["draws"] > result["draws_during_scan"], result
    assert "[derived run success]" in result["title"]
    assert (out / "window.png").stat().st_size > 20_000  # the grabbed window


def test_symmetric_scene_outlines_nothing_and_says_symmetry_used(symmetric):
    result, _ = symmetric
    assert result["rejected_180"] is not None
    assert result["rejected_180"] <= 0.005 * result["usable"], result
    lines = "\n".join(result["panel_text"]).splitlines()
    rotation = next(line for line in lines if line.startswith("180°"))
    assert rotation.startswith("180° symmetry used"), lines
    assert "outline: none (no symmetry violation found)" in lines


def test_one_sided_feature_is_outlined_from_the_derived_run(tmp_path, qt_display):
    result = run_qt_scan("lattice_one_sided", tmp_path, qt_display)
    assert result["view_errors"] == [] and result["sd_errors"] == []
    # the map drawn is the engine's (the derived run's ``symmetry`` stream), and it marks
    # most of the one-sided feature
    assert result["feature_marked"] >= 0.5, result
    assert "outline: 180° symmetry rejected" in "\n".join(result["panel_text"])
