"""Fixtures shared by every test folder: a real RunEngine, a small scene and its noisy
exposures, document collectors for the raw and the derived documents, a Qt display for
window tests, and a check that no symdenoise worker or trainer thread outlives its test."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.helpers import SHAPE, DocumentCollector, FrameMaker

_HERE = Path(__file__).parent

#: Unit tests over ~2 s each (``pytest tests/unit --durations=0``, 2 CPU cores): marked
#: ``slow``; every other test under tests/unit is marked ``fast`` (``bash run.sh test -m fast``).
SLOW_UNIT_TESTS = frozenset({
    "unit/test_angular.py::test_the_engine_mixes_the_model_in_where_the_split_favours_it_and_it_pays_off",
    "unit/test_classical.py::test_bm3d_poisson_gains_over_raw",
    "unit/test_classical.py::test_zs_noise2noise_improves_and_is_deterministic",
    "unit/test_compute.py::test_batched_inference_equals_frame_by_frame",
    "unit/test_compute.py::test_gpu_plan_trains_and_predicts_like_float32",
    "unit/test_denoise.py::test_a_held_out_mix_with_the_classical_mode_follows_its_band_weights",
    "unit/test_denoise.py::test_auto_records_why",
    "unit/test_denoise.py::test_denoise_beats_raw_without_bias",
    "unit/test_denoise.py::test_other_methods_beat_raw[noise2sr]",
    "unit/test_denoise.py::test_out_of_memory_falls_back_to_smaller_batches",
    "unit/test_denoise.py::test_rings_rest_on_the_neighbouring_frames_except_where_the_sample_changed",
    "unit/test_denoise.py::test_single_frame_in_single_frame_out",
    "unit/test_denoise.py::test_supervised_pairs_train_on_low_high_exposures",
    "unit/test_iq_check.py::test_no_fall_back_at_the_boundary_beyond_the_false_alarm_rate",
})


def pytest_collection_modifyitems(config, items):
    for item in items:
        try:
            relative = item.path.relative_to(_HERE).as_posix()
        except ValueError:
            continue
        if not relative.startswith("unit/"):
            continue
        marker = pytest.mark.slow if f"{relative}::{item.name}" in SLOW_UNIT_TESTS else \
            pytest.mark.fast
        item.add_marker(marker)


@pytest.fixture
def RE():
    from bluesky import RunEngine

    engine = RunEngine({})
    yield engine
    if engine.state != "idle":
        engine.halt()


@pytest.fixture(scope="session")
def scene():
    """A small isotropic powder pattern with gaps, beamstop and hot/dead pixels."""
    from bluesky_symdenoise.simulate.scenes import make_scene

    return make_scene("powder", shape=SHAPE, seed=3)


@pytest.fixture
def frames(scene):
    """Noisy exposures of ``scene`` (call it for the next frame; ``.truth``: the clean one)."""
    return FrameMaker(scene)


@pytest.fixture
def collector():
    """Collects raw documents (subscribe it to the RunEngine)."""
    return DocumentCollector()


@pytest.fixture
def derived():
    """Collects derived documents (subscribe it to the plugin)."""
    return DocumentCollector()


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
