"""The simulated detector's HDF5 file plugin (``det:HDF1:``), over Channel Access with
caproto's sync client: file names, capture counts, the three write modes, bad paths."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.helpers import ca_read, ca_write

from .conftest import SHAPE

pytestmark = [pytest.mark.timeout(60)]

IMAGE_MODES = {"Single": 0, "Multiple": 1}
WRITE_MODES = {"Single": 0, "Capture": 1, "Stream": 2}


@pytest.fixture(scope="module")
def pv(beamline_ioc):
    def name(suffix: str) -> str:
        return beamline_ioc.pv("det:" + suffix)

    put(name("cam1:AcquireTime"), 0.01)
    put(name("HDF1:EnableCallbacks"), 1)
    return name


def get(pvname: str):
    value = ca_read(pvname).data
    if getattr(value, "dtype", None) == np.uint8:  # a CHAR waveform: a string
        return bytes(value).split(b"\0", 1)[0].decode()
    value = value[0]
    return value.decode() if isinstance(value, bytes) else value  # enums read as their name


def put(pvname: str, value) -> None:
    if isinstance(value, str):
        value = value.encode() + b"\0"
    ca_write(pvname, value, notify=True)


def acquire(pv, n_frames: int) -> list[np.ndarray]:
    """Take ``n_frames`` (one Acquire each, put-completion) and return them as image1 saw
    them; the file plugin has them before each Acquire completes."""
    frames = []
    put(pv("cam1:ImageMode"), IMAGE_MODES["Single"])
    for _ in range(n_frames):
        put(pv("cam1:Acquire"), 1)
        frames.append(ca_read(pv("image1:ArrayData")).data[: SHAPE[0] * SHAPE[1]]
                      .reshape(SHAPE).copy())
    return frames


def configure(pv, directory: Path, *, name: str, mode: str, num_capture: int = 0,
              number: int = 0) -> None:
    put(pv("HDF1:Capture"), 0)  # each test starts from a closed file, whatever the last left
    put(pv("HDF1:FilePath"), str(directory))
    put(pv("HDF1:FileName"), name)
    put(pv("HDF1:FileTemplate"), "%s%s_%4.4d.h5")
    put(pv("HDF1:FileNumber"), number)
    put(pv("HDF1:AutoIncrement"), 1)
    put(pv("HDF1:FileWriteMode"), WRITE_MODES[mode])
    put(pv("HDF1:NumCapture"), num_capture)


def stored(path: str) -> np.ndarray:
    with h5py.File(path, "r") as handle:
        dataset = handle["/entry/data/data"]
        assert dataset.dtype == np.int32 and dataset.chunks == (1, *SHAPE)
        assert dataset.maxshape == (None, *SHAPE)
        return dataset[()]


def test_plugin_identifies_itself_as_ndfilehdf5(pv):
    assert get(pv("HDF1:PluginType_RBV")) == "NDFileHDF5"
    assert (get(pv("HDF1:ArraySize1_RBV")), get(pv("HDF1:ArraySize0_RBV"))) == SHAPE


def test_stream_mode_appends_each_frame_and_stops_at_num_capture(pv, tmp_path):
    configure(pv, tmp_path, name="scan", mode="Stream", num_capture=3, number=7)
    assert get(pv("HDF1:FilePath_RBV")) == f"{tmp_path}/"  # the separator added, as AD does
    assert get(pv("HDF1:FilePathExists_RBV")) == "Yes"
    put(pv("HDF1:Capture"), 1)
    assert get(pv("HDF1:Capture_RBV")) == "Capture"
    full = get(pv("HDF1:FullFileName_RBV"))
    template = "%s%s_%4.4d.h5"  # areaDetector's C format, applied as C (and Python) do
    assert full == template % (f"{tmp_path}/", "scan", 7) == f"{tmp_path}/scan_0007.h5"
    assert get(pv("HDF1:FileNumber_RBV")) == 8  # AutoIncrement: the next file's number

    frames = []
    for n in (1, 2):
        frames += acquire(pv, 1)
        assert get(pv("HDF1:NumCaptured_RBV")) == n
        # Flushed before Acquire completed: a reader sees it while the file is still open.
        np.testing.assert_array_equal(stored(full), np.stack(frames))
    assert get(pv("HDF1:Capture_RBV")) == "Capture"
    frames += acquire(pv, 1)
    assert get(pv("HDF1:NumCaptured_RBV")) == 3
    assert (get(pv("HDF1:Capture")), get(pv("HDF1:Capture_RBV"))) == ("Done", "Done")  # closed
    acquire(pv, 1)  # not capturing any more: not written
    np.testing.assert_array_equal(stored(full), np.stack(frames))
    assert len({f.tobytes() for f in frames}) == 3  # three exposures, not one repeated


def test_stream_mode_without_a_limit_closes_on_capture_0(pv, tmp_path):
    configure(pv, tmp_path, name="open", mode="Stream", num_capture=0)
    put(pv("HDF1:Capture"), 1)
    frames = acquire(pv, 2)
    assert get(pv("HDF1:Capture_RBV")) == "Capture"
    put(pv("HDF1:Capture"), 0)
    assert get(pv("HDF1:Capture_RBV")) == "Done"
    np.testing.assert_array_equal(stored(f"{tmp_path}/open_0000.h5"), np.stack(frames))


def test_capture_mode_writes_the_buffered_frames_at_num_capture(pv, tmp_path):
    configure(pv, tmp_path, name="buffered", mode="Capture", num_capture=2)
    put(pv("HDF1:Capture"), 1)
    first = acquire(pv, 1)
    assert not (tmp_path / "buffered_0000.h5").exists()  # held in memory until the end
    second = acquire(pv, 1)
    assert get(pv("HDF1:Capture_RBV")) == "Done"
    np.testing.assert_array_equal(stored(f"{tmp_path}/buffered_0000.h5"),
                                  np.stack(first + second))


def test_single_mode_with_auto_save_writes_one_file_per_frame(pv, tmp_path):
    configure(pv, tmp_path, name="single", mode="Single", number=1)
    put(pv("HDF1:AutoSave"), 1)
    try:
        frames = acquire(pv, 2)
    finally:
        put(pv("HDF1:AutoSave"), 0)
    for number, frame in zip((1, 2), frames, strict=True):
        np.testing.assert_array_equal(stored(f"{tmp_path}/single_{number:04d}.h5"), frame[None])
    assert get(pv("HDF1:FullFileName_RBV")) == f"{tmp_path}/single_0002.h5"
    put(pv("HDF1:Capture"), 1)  # Capture has no meaning in Single mode
    assert get(pv("HDF1:Capture_RBV")) == "Done"
    assert "Single mode" in get(pv("HDF1:WriteMessage"))


def test_bad_file_path_is_reported_and_create_directory_creates_it(pv, tmp_path):
    missing = tmp_path / "a" / "b"
    put(pv("HDF1:CreateDirectory"), 0)
    configure(pv, missing, name="x", mode="Stream", num_capture=1)
    assert get(pv("HDF1:FilePathExists_RBV")) == "No"
    assert get(pv("HDF1:WriteStatus")) == "Write error"
    message = get(pv("HDF1:WriteMessage"))
    assert str(missing) in message and "does not exist" in message
    put(pv("HDF1:Capture"), 1)  # no file can be opened there
    assert get(pv("HDF1:Capture_RBV")) == "Done"
    assert not missing.exists()

    put(pv("HDF1:CreateDirectory"), -1)  # at most one missing level: not enough
    put(pv("HDF1:FilePath"), str(missing))
    assert get(pv("HDF1:FilePathExists_RBV")) == "No"
    assert "at most 1" in get(pv("HDF1:WriteMessage"))

    put(pv("HDF1:CreateDirectory"), -2)
    put(pv("HDF1:FilePath"), str(missing))
    assert missing.is_dir() and get(pv("HDF1:FilePathExists_RBV")) == "Yes"
    assert (get(pv("HDF1:WriteStatus")), get(pv("HDF1:WriteMessage"))) == ("Write OK", "")
    put(pv("HDF1:CreateDirectory"), 0)
