"""SymDenoise's settings: one validated object built at construction, so a typo fails in the
user's own line; and building the plugin costs no torch import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bluesky_symdenoise.stream.callback import SymDenoise

ROOT = Path(__file__).resolve().parents[2]


def test_a_typo_in_the_method_fails_at_construction_naming_the_choices():
    with pytest.raises(ValueError, match="'auto', 'symmetry', 'thinning'"):
        SymDenoise("det", method="symetry")


def test_an_unknown_config_field_fails_at_construction_with_a_suggestion():
    with pytest.raises(ValueError, match=r"'widht' is not a DenoiseConfig field \(did you "
                                         r"mean 'width'\?\); the fields are method, device"):
        SymDenoise("det", config={"widht": 8})


@pytest.mark.parametrize("kwargs, match", [
    ({"config": {"width": 2}}, "greater than or equal to 4"),
    ({"device": "gpu"}, "device must be one of 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ({"budget_s": -1}, "budget_s"),
    ({"max_queue": 0}, "max_queue"),
    ({"warmup_frames": 0}, "warmup_frames"),
    ({"center": (1.0, float("nan"))}, "two finite numbers"),
    ({"sector": (10.0,)}, "two finite numbers"),
    ({"config": {"method": "thinning"}, "method": "symmetry"}, "pass method='thinning'"),
])
def test_out_of_range_settings_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SymDenoise("det", **kwargs)


def test_the_settings_hold_the_denoiser_configuration():
    sd = SymDenoise("det", method="symmetry", device="cpu", budget_s=5,
                    config={"width": 8, "test_time_flips": 2}, center=[10, 12.5])
    options = sd.options
    assert options.denoise.method == "symmetry" and options.denoise.device == "cpu"
    assert options.denoise.width == 8 and options.denoise.test_time_flips == 2
    assert options.asked == ("width", "test_time_flips")
    assert options.center == (10.0, 12.5) and options.budget_s == 5
    with pytest.raises(ValueError):  # frozen: settings are changed by building a new plugin
        options.budget_s = 1
    sd.close()


def test_importing_and_building_the_plugin_does_not_import_torch():
    """``stream/*`` imports no torch at module level; the engine (and torch) comes with the
    first scan's warm-up. The package ``__init__`` is bypassed here: what it imports is
    checked where it is defined."""
    code = (
        "import sys, types\n"
        "package = types.ModuleType('bluesky_symdenoise')\n"
        f"package.__path__ = [{str(ROOT / 'bluesky_symdenoise')!r}]\n"
        "sys.modules['bluesky_symdenoise'] = package\n"
        "from bluesky_symdenoise.stream.callback import SymDenoise\n"
        "sd = SymDenoise('det', method='symmetry', config={'width': 8})\n"
        "sd.close()\n"
        "print('torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=120, check=True)
    assert result.stdout.strip() == "False", result.stdout + result.stderr
