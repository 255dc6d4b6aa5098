"""``denoise`` on the files facilities write: CBF stacks and Eiger HDF5 (Bitshuffle-LZ4) in,
NeXus and ``.npy`` out, EDF and TIFF read as written, and one-line errors for what is not
there. Real fabio, h5py and hdf5plugin files; the classical NLM mode on tiny frames (BM3D
takes seconds even there)."""

from __future__ import annotations

import json

import fabio.cbfimage
import fabio.edfimage
import fabio.tifimage
import h5py
import hdf5plugin
import numpy as np
import pytest

from bluesky_symdenoise.cli import main
from bluesky_symdenoise.store.files import read_frames

SHAPE = (48, 64)
CENTER = (23.5, 31.5)
BITSHUFFLE_FILTER = "32008"  # the HDF5 filter id of Bitshuffle
OVERFLOW = 2**32 - 1


def _ring_counts(n: int, seed: int, dtype: type, scale: tuple[float, ...] | None = None):
    """``n`` Poisson frames of a centred ring (about 2 counts/pixel), frame i scaled by
    ``scale[i]`` so that the frames' order can be told from their totals."""
    rows, cols = np.indices(SHAPE)
    radius = np.hypot(rows - CENTER[0], cols - CENTER[1])
    rate = 1.2 + 6.0 * np.exp(-0.5 * ((radius - 14.0) / 2.0) ** 2)
    scale = scale or (1.0,) * n
    rng = np.random.default_rng(seed)
    return np.stack([rng.poisson(rate * s) for s in scale]).astype(dtype)


def _denoise(frames_spec: str, out, capsys, *extra: str) -> str:
    status = main(["denoise", frames_spec, "--out", str(out), "--method", "classical-nlm",
                   "--center", str(CENTER[0]), str(CENTER[1]), *extra])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return captured.out


def test_a_cbf_stack_round_trips_through_nexus(tmp_path, capsys):
    """A glob of CBF files is stacked in natural order (scan_2 before scan_10) and comes back
    as NeXus: float frames of the same shape, each frame's total counts kept, provenance
    inside."""
    raw = _ring_counts(3, seed=11, dtype=np.int32, scale=(0.6, 1.0, 1.6))
    for index, frame in zip((1, 2, 10), raw, strict=True):
        fabio.cbfimage.CbfImage(data=frame).write(str(tmp_path / f"scan_{index}.cbf"))
    assert read_frames(tmp_path / "scan_*.cbf").dtype == np.int32

    out = tmp_path / "out" / "denoised.nxs"
    printed = _denoise(str(tmp_path / "scan_*.cbf"), out, capsys)
    assert str(out) in printed and "/entry/process/provenance" in printed

    with h5py.File(out, "r") as handle:
        assert handle.attrs["default"] == "entry"
        assert handle["entry"].attrs["NX_class"] == "NXentry"
        nxdata = handle["entry/data"]
        assert nxdata.attrs["NX_class"] == "NXdata" and nxdata.attrs["signal"] == "data"
        data = nxdata["data"]
        assert data.shape == raw.shape and data.dtype == np.float32
        assert data.chunks == (1, *SHAPE)
        assert BITSHUFFLE_FILTER in data._filters
        denoised = data[()]
        process = handle["entry/process"]
        assert process.attrs["NX_class"] == "NXprocess"
        assert process["program"].asstr()[()] == "bluesky-symdenoise"
        provenance = json.loads(process["provenance"].asstr()[()])
        assert json.loads(process["note/data"].asstr()[()]) == provenance
        assert process["raw_source"].asstr()[()] == str(tmp_path / "scan_*.cbf")
    assert provenance["method"] == "classical-nlm"
    assert np.all(np.isfinite(denoised))
    assert not np.allclose(denoised, raw)  # something was denoised
    # The engine keeps each frame's total counts over its good pixels; no pixel is masked
    # here, so the totals hold frame by frame, in the files' natural order.
    np.testing.assert_allclose(denoised.sum(axis=(1, 2)), raw.sum(axis=(1, 2)), rtol=0.01)
    np.testing.assert_array_equal(read_frames(out), denoised)  # the NeXus signal, found


def _write_eiger(folder, blocks: list[np.ndarray]):
    """An Eiger-style master file whose /entry/data/data_00000k link to Bitshuffle-LZ4
    compressed data files, as DECTRIS detectors write them."""
    master = folder / "series_master.h5"
    with h5py.File(master, "w") as handle:
        entry = handle.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        handle["entry/instrument/detector/detectorSpecific/pixel_mask"] = np.zeros(
            SHAPE, np.uint32)
        handle["entry/instrument/detector/detectorSpecific/flatfield"] = np.ones(
            SHAPE, np.float32)
        for number, block in enumerate(blocks, start=1):
            name = f"series_data_{number:06d}.h5"
            with h5py.File(folder / name, "w") as data_file:
                data_file.create_dataset("entry/data/data", data=block,
                                         chunks=(1, *SHAPE),
                                         **hdf5plugin.Bitshuffle(cname="lz4"))
            handle[f"entry/data/data_{number:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
    return master


def test_an_eiger_master_file_with_overflow_round_trips(tmp_path, capsys):
    """Bitshuffle-LZ4 uint32 blocks behind external links are read in order with their
    dtype kept, so the engine masks the overflow value (2**32-1) as saturated instead of
    taking it for counts; ``.npy`` and NeXus outputs agree."""
    raw = _ring_counts(3, seed=5, dtype=np.uint32, scale=(1.0, 1.4, 0.7))
    overflow = [(3, 4), (20, 40), (40, 10)]
    for row, col in overflow:
        raw[:, row, col] = OVERFLOW
    master = _write_eiger(tmp_path, [raw[:2], raw[2:]])
    with h5py.File(tmp_path / "series_data_000001.h5", "r") as handle:
        assert BITSHUFFLE_FILTER in handle["entry/data/data"]._filters

    frames = read_frames(master)
    assert frames.dtype == np.uint32
    np.testing.assert_array_equal(frames, raw)
    np.testing.assert_array_equal(  # the explicit dataset syntax still reads one block
        read_frames(f"{tmp_path / 'series_data_000002.h5'}:/entry/data/data"), raw[2:])

    npy, nxs = tmp_path / "denoised.npy", tmp_path / "denoised.nxs"
    _denoise(str(master), npy, capsys)
    _denoise(str(master), nxs, capsys)
    from_npy = np.load(npy)
    provenance = json.loads(npy.with_suffix(".json").read_text())
    assert provenance["raw_source"] == str(master)
    assert any(f"masked {len(overflow)} saturated pixels" in n for n in provenance["notes"])
    with h5py.File(nxs, "r") as handle:
        from_nxs = handle["entry/data/data"][()]
    np.testing.assert_allclose(from_npy, from_nxs, rtol=1e-4, atol=1e-5)
    assert from_npy.shape == raw.shape and np.all(np.isfinite(from_npy))
    # the overflow pixels hold the neighbourhood's estimate, not 4e9 counts
    good = np.ones(SHAPE, bool)
    for row, col in overflow:
        good[row, col] = False
        assert 0 <= from_npy[:, row, col].max() < 50
    np.testing.assert_allclose(from_npy[:, good].sum(axis=1),
                               raw[:, good].astype(float).sum(axis=1), rtol=0.01)


def test_a_missing_eiger_data_file_is_named(tmp_path):
    raw = _ring_counts(2, seed=1, dtype=np.uint32)
    master = _write_eiger(tmp_path, [raw[:1], raw[1:]])
    (tmp_path / "series_data_000002.h5").unlink()
    with pytest.raises(FileNotFoundError, match="data_000002 links to series_data_000002.h5"):
        read_frames(master)


def test_edf_and_tiff_read_as_written(tmp_path):
    """Single EDF and TIFF files come back with their values and integer dtype; a
    two-frame EDF is a stack; a directory is stacked in natural order."""
    frames = _ring_counts(2, seed=3, dtype=np.uint16)
    fabio.edfimage.EdfImage(data=frames[0]).write(str(tmp_path / "one.edf"))
    counts32 = frames[1].astype(np.uint32) * 70000
    fabio.tifimage.TifImage(data=counts32).write(str(tmp_path / "one.tif"))
    edf, tif = read_frames(tmp_path / "one.edf"), read_frames(str(tmp_path / "one.tif"))
    assert edf.dtype == np.uint16 and tif.dtype == np.uint32
    np.testing.assert_array_equal(edf, frames[0])
    np.testing.assert_array_equal(tif, counts32)

    stack = fabio.edfimage.EdfImage(data=frames[0])
    stack.append_frame(data=frames[1])
    stack.write(str(tmp_path / "two.edf"))
    np.testing.assert_array_equal(read_frames(tmp_path / "two.edf"), frames)

    folder = tmp_path / "series"
    folder.mkdir()
    for index in (10, 9):  # written out of order: read back as frame_9, frame_10
        image = frames[0] if index == 9 else frames[1]
        fabio.edfimage.EdfImage(data=image).write(str(folder / f"frame_{index}.edf"))
    np.testing.assert_array_equal(read_frames(folder), frames)


def _error_line(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    return captured.err


def test_missing_files_and_datasets_are_one_line_errors(tmp_path, capsys):
    out = str(tmp_path / "d.nxs")
    err = _error_line(["denoise", str(tmp_path / "absent.cbf"), "--out", out], capsys)
    assert "absent.cbf: no such file" in err
    err = _error_line(["denoise", str(tmp_path / "scan_*.cbf"), "--out", out], capsys)
    assert "no file matches" in err and "scan_*.cbf" in err

    (tmp_path / "corrupt.cbf").write_text("not a CBF image\n")
    err = _error_line(["denoise", str(tmp_path / "corrupt.cbf"), "--out", out], capsys)
    assert "corrupt.cbf: not a readable CBF image" in err

    two = tmp_path / "two.h5"
    with h5py.File(two, "w") as handle:
        handle["a"] = np.zeros(SHAPE)
        handle["b"] = np.zeros(SHAPE)
    err = _error_line(["denoise", str(two), "--out", out], capsys)
    assert f"no frames dataset found in {two}" in err and "/a (48, 64)" in err
    assert f"give {two}:/path/to/frames" in err
    err = _error_line(["denoise", f"{two}:/entry/data/data", "--out", out], capsys)
    assert "no dataset '/entry/data/data'" in err

    np.save(tmp_path / "f.npy", _ring_counts(1, seed=0, dtype=np.int32))
    err = _error_line(["denoise", str(tmp_path / "f.npy"), "--out", str(tmp_path / "d.tif")],
                      capsys)
    assert "cannot write '.tif'" in err and not (tmp_path / "d.tif").exists()


def test_the_nexus_output_is_the_default_image_stack_for_silx(tmp_path):
    """NeXus readers find the frames the way silx does: the default NXdata's signal, an
    image stack; the mask rides beside it."""
    nxdata = pytest.importorskip("silx.io.nxdata")  # silx is no dependency of the package
    import silx.io

    from bluesky_symdenoise.store.files import write_frames

    frames = _ring_counts(2, seed=2, dtype=np.float32)
    mask = np.zeros(SHAPE, bool)
    mask[:4] = True
    out = write_frames(tmp_path / "d.h5", frames, provenance={"method": "test"},
                       raw_spec="raw.h5:/entry/data/data", mask=mask)
    with silx.io.open(str(out)) as handle:
        default = nxdata.get_default(handle)
        assert default is not None and default.is_valid and default.is_image
        assert default.signal_is_3d and default.interpretation == "image"
        np.testing.assert_array_equal(default.signal[()], frames)
        np.testing.assert_array_equal(handle["entry/data/mask"][()].astype(bool), mask)
