"""Denoised frames too large to travel inline: one HDF5 file per derived run.

A 1024 × 1024 float32 frame is 4 MiB; inline in an event it is over a NATS message's default
1 MiB limit and heavy on any bus. Above ``inline_limit_bytes`` the derived run's ``denoised``
frames are written here, one chunk per frame, compressed with Bitshuffle + LZ4 from
``hdf5plugin``, and referenced by StreamResource/StreamDatum documents (see
:meth:`~bluesky_symdenoise.stream.publisher.DerivedRunPublisher.reference_file`), so
``TiledWriter`` registers the file and the documents stay small.

Readers need the filter: ``import hdf5plugin`` before h5py opens the file (tiled's HDF5
adapter and :mod:`~bluesky_symdenoise.stream.frames` do).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

__all__ = ["DATA_DIR_ENV", "DERIVED_DATASET", "DerivedFrameFile", "default_directory",
           "derived_directory", "frame_goes_to_file", "open_derived_file"]

#: Path of the denoised frames inside each derived file: (frames, H, W) float32.
DERIVED_DATASET = "/entry/data/denoised"
#: Environment variable naming the directory of derived files when none is given.
DATA_DIR_ENV = "BLUESKY_SYMDENOISE_DATA"


def frame_goes_to_file(shape: tuple[int, ...], inline_limit_bytes: int) -> bool:
    """Whether a denoised frame of ``shape`` (float32) is over ``inline_limit_bytes``."""
    return int(np.prod(shape)) * np.dtype(np.float32).itemsize > inline_limit_bytes


def default_directory() -> Path:
    """Where derived files go when neither the user nor the raw run says:
    ``$BLUESKY_SYMDENOISE_DATA``, else ``$XDG_DATA_HOME/bluesky-symdenoise/derived``
    (``~/.local/share/...``)."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "bluesky-symdenoise" / "derived"


def _reference_directory(reference: str) -> Path | None:
    """The directory of a raw Resource path or StreamResource URI (``file://`` or a plain
    path); None for another scheme."""
    parsed = urlparse(reference)
    if parsed.scheme not in ("", "file"):
        return None
    path = Path(parsed.path if parsed.scheme else reference)
    return path.parent if path.is_absolute() else None


def derived_directory(given: str | Path | None, raw_references: Iterable[str] = ()
                      ) -> tuple[Path, str]:
    """The directory of a derived run's file and why it was chosen.

    In order: ``given`` (``SymDenoise(derived_files=...)``); beside the raw frames, the
    directory of the first raw Resource path or StreamResource URI that can be written to
    (a catalog serving the raw files can usually read there too); else
    :func:`default_directory`. The directory is created.

    Parameters
    ----------
    given
        The user's directory, or None.
    raw_references
        Paths of the raw run's Resources (``root/resource_path``) and URIs of its
        StreamResources.

    Returns
    -------
    tuple of (Path, str)
        The directory and a short reason (recorded in the derived run).

    Raises
    ------
    OSError
        If the chosen directory cannot be created.
    """
    if given is not None:
        directory = Path(given).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        return directory, "derived_files="
    for reference in raw_references:
        raw_directory = _reference_directory(reference)
        if (raw_directory is not None and raw_directory.is_dir()
                and os.access(raw_directory, os.W_OK)):
            return raw_directory, "beside the raw frames"
    directory = default_directory()
    directory.mkdir(parents=True, exist_ok=True)
    source = f"${DATA_DIR_ENV}" if os.environ.get(DATA_DIR_ENV) else "default directory"
    return directory, source


def _close_quietly(handle: Any) -> None:
    try:
        handle.close()
    except Exception:  # noqa: BLE001 - a finaliser must not raise
        pass


class DerivedFrameFile:
    """The HDF5 file of one derived run's denoised frames, written one frame at a time.

    The dataset :data:`DERIVED_DATASET` grows by one (1, H, W) chunk per frame, compressed
    with Bitshuffle + LZ4 (``hdf5plugin``). The file is in SWMR mode and flushed after every
    frame, so a reader (tiled, a replay) sees each frame once its StreamDatum is out. It is
    closed by :meth:`close`, and if forgotten, when the object is garbage collected.

    Parameters
    ----------
    path
        The file to create (an existing one is refused).
    shape
        (H, W) of the frames.
    units
        The frames' units, kept as the dataset's ``units`` attribute (``counts`` or
        ``ADU``).

    Raises
    ------
    OSError
        If the file exists or cannot be created.
    """

    def __init__(self, path: Path, shape: tuple[int, int], units: str = "counts") -> None:
        import h5py
        import hdf5plugin

        self.path = Path(path)
        self.shape = (int(shape[0]), int(shape[1]))
        #: Frames written so far (the next frame's index in the dataset).
        self.frames = 0
        # "w-": never overwrite; libver "latest": required for SWMR.
        self._file = h5py.File(self.path, "w-", libver="latest")
        try:
            self._dataset = self._file.create_dataset(
                DERIVED_DATASET, shape=(0, *self.shape), maxshape=(None, *self.shape),
                chunks=(1, *self.shape), dtype=np.float32,
                **hdf5plugin.Bitshuffle(cname="lz4"))
            self._dataset.attrs["units"] = units  # attributes are fixed once in SWMR mode
            self._file.swmr_mode = True
        except Exception:
            self._file.close()
            raise
        self._finalizer = weakref.finalize(self, _close_quietly, self._file)

    @property
    def uri(self) -> str:
        """``file://`` URI of the file (a StreamResource's ``uri``)."""
        return self.path.resolve().as_uri()

    @property
    def closed(self) -> bool:
        """Whether the file was closed."""
        return not self._finalizer.alive

    def append(self, frame: np.ndarray) -> int:
        """Write one frame and flush it; returns its index in the dataset.

        Raises
        ------
        ValueError
            If the file is closed or the frame's shape is not :attr:`shape`.
        """
        if self.closed:
            raise ValueError(f"{self.path} is closed")
        array = np.asarray(frame, dtype=np.float32)
        if array.shape != self.shape:
            raise ValueError(f"frame of shape {array.shape}, the file holds {self.shape}")
        index = self.frames
        self._dataset.resize(index + 1, axis=0)
        self._dataset[index] = array
        self._dataset.flush()
        self.frames = index + 1
        return index

    def close(self) -> None:
        """Close the file (idempotent)."""
        self._finalizer()


def open_derived_file(given: str | Path | None, raw_references: Iterable[str], run_uid: str,
                      shape: tuple[int, int], units: str = "counts"
                      ) -> tuple[DerivedFrameFile, str]:
    """Create the file of the derived run ``run_uid``: ``<run_uid>.h5`` in the directory
    :func:`derived_directory` picks; returns it and why that directory.

    Raises
    ------
    OSError
        If the directory or the file cannot be created.
    """
    directory, reason = derived_directory(given, raw_references)
    return DerivedFrameFile(directory / f"{run_uid}.h5", shape, units), reason
