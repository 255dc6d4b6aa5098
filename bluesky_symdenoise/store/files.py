"""Frames from the files facilities write, and denoised frames back to a file.

Read (:func:`read_frames`):

* ``.npy``;
* HDF5 (``.h5``, ``.hdf5``, ``.nxs``, ...): ``file.h5:/path/to/dataset``, or the file alone:
  the NeXus default NXdata's ``signal``, an Eiger master file's ``/entry/data/data_000001``,
  ``data_000002``... (external links to its data files, concatenated in order),
  ``/entry/data/data``, or the file's only 2-D/3-D dataset. Bitshuffle/LZ4, LZ4 and Blosc
  chunks decode through ``hdf5plugin``;
* CBF, EDF and TIFF through ``fabio``: one file (several frames if it holds several), a glob
  pattern (``scan_*.cbf``, sorted naturally: ``scan_2`` before ``scan_10``) or a directory.

Integer data keep their dtype: the engine masks a counter's saturated value (the dtype's
maximum, e.g. an Eiger's ``2**32 - 1`` on gaps and overflows) only while it can see it.

Write (:func:`write_frames`): ``.npy`` with the provenance in a ``.json`` beside it, or a
NeXus file (``.nxs``, ``.h5``, ``.hdf5``) with the provenance inside.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import h5py
import hdf5plugin
import numpy as np

__all__ = ["HDF5_SUFFIXES", "IMAGE_SUFFIXES", "NEXUS_SUFFIXES", "output_format",
           "read_frame_files", "read_frames", "write_frames"]

#: Single-image formats read through fabio (a directory is searched for these).
IMAGE_SUFFIXES = (".cbf", ".edf", ".tif", ".tiff")
#: Suffixes read as HDF5 (any other file that is HDF5 is too).
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".cxi")
#: Output suffixes written as NeXus.
NEXUS_SUFFIXES = (".nxs", ".h5", ".hdf5")

_EIGER_BLOCK = re.compile(r"data_\d+")
_GLOB_CHARS = re.compile(r"[*?[]")


# -- reading ----------------------------------------------------------------------------------
def read_frames(spec: str | Path) -> np.ndarray:
    """Read raw frames (or a mask) from a file, a glob pattern or a directory.

    Parameters
    ----------
    spec
        ``frames.npy``; ``file.h5:/entry/data/data`` (an HDF5 dataset) or ``file.h5`` (the
        frames found as the module docstring says); ``frame.cbf`` / ``.edf`` / ``.tif``
        (one or several frames); ``dir/scan_*.cbf`` (a glob pattern, sorted naturally); a
        directory of CBF/EDF/TIFF files (sorted naturally).

    Returns
    -------
    numpy.ndarray
        ``(N, H, W)`` or ``(H, W)`` as stored (a pattern or a directory always gives
        ``(N, H, W)``), dtype as stored (uint16, uint32 and int32 counts stay integers).

    Raises
    ------
    FileNotFoundError
        No such file, nothing matches the pattern, or an Eiger data file is missing.
    ValueError
        An unknown format, no frames dataset in an HDF5 file, or frames of different
        shapes; the message names the file and what was expected.
    """
    text = str(spec)
    path, dataset = _split_dataset(text)
    if dataset is not None:
        return _read_hdf5(Path(path), dataset)
    source = Path(path)
    if source.is_dir():
        files = [f for f in source.iterdir() if f.is_file() and _is_image(f)]
        if not files:
            raise FileNotFoundError(f"no {'/'.join(s[1:].upper() for s in IMAGE_SUFFIXES)} "
                                    f"files in directory {source}; for HDF5 give the file "
                                    "(an Eiger master file: the *_master.h5)")
        return read_frame_files(sorted(files, key=_natural_key))
    if not source.exists() and _GLOB_CHARS.search(text):
        matches = sorted((f for f in source.parent.glob(source.name) if f.is_file()),
                         key=_natural_key)
        if not matches:
            raise FileNotFoundError(f"no file matches {text!r}")
        return read_frame_files(matches)
    return _read_file(source)


def read_frame_files(paths: Sequence[str | Path]) -> np.ndarray:
    """Stack the frames of several files, in the order given.

    Parameters
    ----------
    paths
        Files :func:`read_frames` reads (no ``:/dataset`` part), each one frame or several.

    Returns
    -------
    numpy.ndarray
        ``(N, H, W)``: every frame of the first file, then of the second, ...

    Raises
    ------
    FileNotFoundError, ValueError
        As for :func:`read_frames`; also when two files hold frames of different shapes.
    """
    if not paths:
        raise ValueError("no frame files given")
    stacks: list[np.ndarray] = []
    for path in paths:
        frames = _read_file(Path(path))
        stack = frames[None] if frames.ndim == 2 else frames
        if stacks and stack.shape[1:] != stacks[0].shape[1:]:
            raise ValueError(f"{path}: frames of shape {stack.shape[1:]}, but {paths[0]} has "
                             f"{stacks[0].shape[1:]}; every file must hold frames of one shape")
        stacks.append(stack)
    return np.concatenate(stacks)


def _split_dataset(spec: str) -> tuple[str, str | None]:
    """``file.h5:/path`` -> ``("file.h5", "/path")``; a name that exists, or has no colon,
    is a file name."""
    if ":" not in spec or Path(spec).exists():
        return spec, None
    for index, char in enumerate(spec):  # the first colon after an existing file's name
        if char == ":" and Path(spec[:index]).is_file():
            return spec[:index], spec[index + 1:] or None
    path, dataset = spec.split(":", 1)  # no such file: reading it says so
    return path, dataset or None


def _natural_key(path: str | Path) -> tuple[Any, ...]:
    """Sort key putting ``scan_2`` before ``scan_10``."""
    parts = re.split(r"(\d+)", str(path))
    return tuple(int(part) if i % 2 else part for i, part in enumerate(parts))


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _read_file(path: Path) -> np.ndarray:
    """Frames of one file, by its suffix (or its content, for HDF5)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file" if not path.exists()
                                else f"{path}: not a file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix in HDF5_SUFFIXES or h5py.is_hdf5(path):
        return _read_hdf5(path, None)
    if suffix in IMAGE_SUFFIXES:
        return _read_image(path)
    raise ValueError(f"{path}: unknown format {suffix or '(no suffix)'!r}; give .npy, HDF5 "
                     f"({', '.join(HDF5_SUFFIXES)}) or {', '.join(IMAGE_SUFFIXES)}")


def _read_image(path: Path) -> np.ndarray:
    """A CBF/EDF/TIFF file's frames through fabio: ``(H, W)``, or ``(N, H, W)`` for several."""
    import fabio  # type: ignore[import-untyped]  # no stubs, no py.typed

    try:
        with fabio.open(str(path)) as image:
            if image.nframes <= 1:
                return np.array(image.data)
            return np.stack([np.asarray(image.getframe(i).data) for i in range(image.nframes)])
    except Exception as exc:  # fabio's parsers fail on a corrupt file with any error type
        raise ValueError(f"{path}: not a readable {path.suffix.lstrip('.').upper()} "
                         f"image ({exc})") from exc


def _read_hdf5(path: Path, dataset: str | None) -> np.ndarray:
    """The frames of an HDF5 file: ``dataset``, or found (see the module docstring)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not an HDF5 file ({exc})") from exc
    with handle:
        if dataset is not None:
            node = handle.get(dataset)
            if isinstance(node, h5py.Group):  # an NXdata group: its signal
                node = _signal_of(node)
            if not isinstance(node, h5py.Dataset):
                raise ValueError(f"no dataset {dataset!r} in {path}; 2-D/3-D datasets there: "
                                 f"{_candidates(handle)}")
            return _load(node, path, dataset)
        signal = _nexus_signal(handle)
        if signal is not None:
            return _load(signal, path, signal.name)
        blocks = _eiger_blocks(handle, path)
        if blocks is not None:
            return blocks
        node = handle.get("/entry/data/data")
        if isinstance(node, h5py.Dataset):
            return _load(node, path, "/entry/data/data")
        found = _frame_datasets(handle)
        if len(found) == 1:
            return _load(handle[found[0]], path, found[0])
        raise ValueError(
            f"no frames dataset found in {path}: looked for the NeXus default NXdata's "
            "'signal', Eiger /entry/data/data_000001..., /entry/data/data and a single "
            f"2-D/3-D dataset (2-D/3-D datasets there: {_candidates(handle)}); give "
            f"{path}:/path/to/frames")


def _load(node: h5py.Dataset, path: Path, name: str | None) -> np.ndarray:
    """A dataset's values as stored (dtype kept); a filter that cannot decode says so."""
    try:
        return np.asarray(node[()])
    except OSError as exc:
        raise ValueError(f"{path}:{name}: cannot read the dataset ({exc}); a compression "
                         f"filter may be missing (hdf5plugin {hdf5plugin.version} decodes "
                         "Bitshuffle, LZ4, Blosc, Zstd)") from exc


def _attr(node: h5py.HLObject, name: str) -> str | None:
    value = node.attrs.get(name)
    if value is None:
        return None
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    return value.decode() if isinstance(value, bytes) else str(value)


def _signal_of(group: h5py.Group) -> h5py.Dataset | None:
    signal = _attr(group, "signal")
    node = group.get(signal) if signal else None
    return node if isinstance(node, h5py.Dataset) else None


def _nexus_signal(handle: h5py.File) -> h5py.Dataset | None:
    """The dataset the NeXus ``default`` attributes lead to, else the first NXentry's first
    NXdata with a ``signal``."""
    entry_name = _attr(handle, "default")
    entry = handle.get(entry_name) if entry_name else None
    if isinstance(entry, h5py.Group):
        data_name = _attr(entry, "default")
        data = entry.get(data_name) if data_name else None
        if isinstance(data, h5py.Group) and _signal_of(data) is not None:
            return _signal_of(data)
    for entry in handle.values():
        if not (isinstance(entry, h5py.Group) and _attr(entry, "NX_class") == "NXentry"):
            continue
        for data in entry.values():
            if isinstance(data, h5py.Group) and _attr(data, "NX_class") == "NXdata":
                signal = _signal_of(data)
                if signal is not None:
                    return signal
    return None


def _eiger_blocks(handle: h5py.File, path: Path) -> np.ndarray | None:
    """An Eiger master file's ``/entry/data/data_NNNNNN`` concatenated in order, or None."""
    group = handle.get("/entry/data")
    if not isinstance(group, h5py.Group):
        return None
    names = sorted((name for name in group if _EIGER_BLOCK.fullmatch(name)),
                   key=lambda name: int(name[5:]))
    if not names:
        return None
    blocks = []
    for name in names:
        link = group.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            target = Path(link.filename)
            if not target.is_absolute():
                target = path.parent / target
            if not target.is_file():
                raise FileNotFoundError(f"{path}: /entry/data/{name} links to {link.filename}, "
                                        f"which is not in {target.parent}")
        try:
            node = group[name]
        except KeyError as exc:
            raise ValueError(f"{path}: cannot open /entry/data/{name} ({exc})") from exc
        block = _load(node, path, f"/entry/data/{name}")
        blocks.append(block[None] if block.ndim == 2 else block)
    return np.concatenate(blocks)


def _frame_datasets(handle: h5py.File) -> list[str]:
    """Names of the file's numeric 2-D and 3-D datasets (external links not followed)."""
    found: list[str] = []

    def visit(name: str, node: Any) -> None:
        if (isinstance(node, h5py.Dataset) and node.ndim in (2, 3)
                and node.dtype.kind in "biuf"):
            found.append("/" + name)

    handle.visititems(visit)
    return found


def _candidates(handle: h5py.File) -> str:
    names = _frame_datasets(handle)
    if not names:
        return "none"
    shown = [f"{name} {handle[name].shape} {handle[name].dtype}" for name in names[:6]]
    return ", ".join(shown) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


# -- writing ----------------------------------------------------------------------------------
def output_format(path: str | Path) -> Literal["npy", "nexus"]:
    """The format :func:`write_frames` writes to ``path``, by its suffix.

    Raises
    ------
    ValueError
        A suffix other than ``.npy``, ``.nxs``, ``.h5``, ``.hdf5`` (checked before any
        denoising, so a typo costs nothing).
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        return "npy"
    if suffix in NEXUS_SUFFIXES:
        return "nexus"
    raise ValueError(f"{path}: cannot write {suffix or 'a file without suffix'!r}; give .npy "
                     f"(provenance beside it, .json) or {', '.join(NEXUS_SUFFIXES)} (NeXus, "
                     "provenance inside)")


def write_frames(path: str | Path, denoised: np.ndarray, *, provenance: dict[str, Any],
                 raw_spec: str | None = None, mask: np.ndarray | None = None) -> Path:
    """Write denoised frames and how they were made.

    ``.npy``: the array, and the provenance (with ``raw_source``) as JSON in the ``.json``
    file of the same name. ``.nxs`` / ``.h5`` / ``.hdf5``: one NeXus file::

        /entry                     NXentry (default="data")
          data                     NXdata (signal="data")
            data                   float32 (N, H, W) or (H, W), one frame per chunk,
                                   Bitshuffle + LZ4, interpretation="image"
            mask                   uint8 (H, W), 1 on the pixels masked (if ``mask``)
          process                  NXprocess
            program                "bluesky-symdenoise"
            version, date          package version, ISO 8601 UTC time of writing
            provenance             the provenance, a JSON string
            raw_source             ``raw_spec`` (if given)
            note                   NXnote (type="application/json", data -> provenance)

    Bitshuffle + LZ4 is the compression Eiger detectors write, so every program that reads
    facility HDF5 (h5py + hdf5plugin, silx, DIALS, XDS's Neggia plugin, Albula) already
    decodes it; it is fast both ways and compresses float32 well (the exponent bytes shuffle
    into long runs). Blosc compresses a little better but fewer readers carry its filter.

    Parameters
    ----------
    path
        Output file; its suffix picks the format (:func:`output_format`). Parent folders
        are created.
    denoised
        ``(N, H, W)`` or ``(H, W)`` denoised frames (written as float32).
    provenance
        JSON-safe record (``DenoiseResult.provenance``); not modified.
    raw_spec
        Where the raw frames came from (file, ``file.h5:/dataset``, pattern).
    mask
        ``(H, W)`` pixels masked in the input (True = bad), stored with the frames (NeXus).

    Returns
    -------
    pathlib.Path
        The file written (for ``.npy`` the ``.json`` lies beside it).

    Raises
    ------
    ValueError
        An unknown suffix, or a mask whose shape does not match the frames.
    """
    path = Path(path)
    kind = output_format(path)
    frames = np.asarray(denoised, np.float32)
    if mask is not None and np.shape(mask) != frames.shape[-2:]:
        raise ValueError(f"mask shape {np.shape(mask)} does not match frames "
                         f"{frames.shape[-2:]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "npy":
        np.save(path, frames)
        record = {**provenance, "raw_source": raw_spec} if raw_spec else provenance
        path.with_suffix(".json").write_text(json.dumps(record, indent=2))
        return path
    _write_nexus(path, frames, provenance=provenance, raw_spec=raw_spec, mask=mask)
    return path


def _write_nexus(path: Path, frames: np.ndarray, *, provenance: dict[str, Any],
                 raw_spec: str | None, mask: np.ndarray | None) -> None:
    from .. import __version__

    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    with h5py.File(path, "w") as handle:
        handle.attrs.update({"NX_class": "NXroot", "default": "entry", "file_name": path.name,
                             "file_time": now, "creator": f"bluesky-symdenoise {__version__}"})
        entry = handle.create_group("entry")
        entry.attrs.update({"NX_class": "NXentry", "default": "data"})
        data = entry.create_group("data")
        data.attrs.update({"NX_class": "NXdata", "signal": "data"})
        chunks = (1, *frames.shape[1:]) if frames.ndim == 3 else frames.shape
        signal = data.create_dataset("data", data=frames, chunks=chunks,
                                     **hdf5plugin.Bitshuffle(cname="lz4"))
        signal.attrs.update({"interpretation": "image",
                             "long_name": "denoised counts (expected value per pixel)"})
        if mask is not None:
            stored = data.create_dataset("mask", data=np.asarray(mask, bool).astype(np.uint8),
                                         compression="gzip")
            stored.attrs["long_name"] = "mask: 1 on pixels masked in the input (output 0)"
        process = entry.create_group("process")
        process.attrs["NX_class"] = "NXprocess"
        process["program"] = "bluesky-symdenoise"
        process["version"] = __version__
        process["date"] = now
        process["provenance"] = json.dumps(provenance, indent=2)
        process["provenance"].attrs["content_type"] = "application/json"
        if raw_spec is not None:
            process["raw_source"] = raw_spec
        note = process.create_group("note")
        note.attrs["NX_class"] = "NXnote"
        note["type"] = "application/json"
        note["description"] = "provenance: configuration, method, device, model, symmetry"
        note["data"] = h5py.SoftLink(process["provenance"].name)
