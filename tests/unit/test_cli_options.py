"""``--method`` and ``--device`` take their choices from the configuration: a typo fails in
argparse, naming what would have worked."""

from __future__ import annotations

import pytest

from bluesky_symdenoise.cli import main
from bluesky_symdenoise.denoise.config import DEVICES, METHODS


def _usage_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_misspelt_method_names_the_choices(tmp_path, capsys):
    err = _usage_error(["denoise", str(tmp_path / "f.npy"), "--out", str(tmp_path / "d.npy"),
                        "--method", "symetry"], capsys)
    assert "argument --method: invalid choice: 'symetry'" in err
    assert all(repr(method) in err for method in METHODS)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda1", "CPU"])
def test_bad_device_names_the_choices(device, tmp_path, capsys):
    err = _usage_error(["replay", "--catalog", str(tmp_path), "--device", device], capsys)
    assert f"argument --device: invalid device {device!r}" in err
    assert all(repr(name) in err for name in DEVICES) and "cuda:N" in err


def test_numbered_gpu_passes_the_parser(tmp_path, capsys):
    """``cuda:1`` is accepted; the run then stops on the missing input file, not the option."""
    assert main(["denoise", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "d.npy"),
                 "--device", "cuda:1"]) == 2
    err = capsys.readouterr().err
    assert "missing.npy" in err and "--device" not in err


@pytest.mark.parametrize(("argv", "problem"), [
    (["replay", "run-1", "--budget", "-1"],
     "argument --budget: Input should be greater than or equal to 0"),
    (["replay", "run-1", "--center", "nan", "5"],
     "argument --center: must be two finite numbers"),
    (["serve", "--from", "tcp://127.0.0.1:1", "--to", "tcp://127.0.0.1:2", "--max-queue", "0"],
     "argument --max-queue: Input should be greater than or equal to 1"),
])
def test_an_option_the_plugin_refuses_stops_the_command_in_one_line(argv, problem, tmp_path,
                                                                   capsys):
    """What argparse cannot check, the plugin's options (LiveOptions) do, before a catalog
    or a bus is opened: status 2 and one line naming the option, like argparse, no
    traceback."""
    if argv[0] == "replay":
        argv = [*argv, "--catalog", str(tmp_path / "no-catalog")]
    assert main(argv) == 2
    captured = capsys.readouterr()
    command = argv[0]
    assert captured.err.startswith(f"bluesky-symdenoise {command}: error: {problem}")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.out == ""
    assert not (tmp_path / "no-catalog").exists()
