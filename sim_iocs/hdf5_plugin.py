"""A simulated areaDetector HDF5 file plugin (NDFileHDF5), serving its PV names.

PVs (under the plugin prefix, ``HDF1:`` in the detector IOC; ``_RBV`` readbacks as in
areaDetector)::

    PluginType_RBV (NDFileHDF5), PortName_RBV, NDArrayPort[_RBV]
    EnableCallbacks[_RBV]       Disable/Enable: the plugin takes the camera's frames
    BlockingCallbacks[_RBV]     No/Yes (frames are always written before Acquire completes)
    ArrayCounter[_RBV], UniqueId_RBV, TimeStamp_RBV, DroppedArrays[_RBV]
    ArraySize0_RBV (cols), ArraySize1_RBV (rows), ArraySize2_RBV, NDimensions_RBV
    DataType_RBV (Int32), ColorMode_RBV (Mono)
    FilePath[_RBV], FilePathExists_RBV (No/Yes), CreateDirectory[_RBV]
    FileName[_RBV], FileNumber[_RBV], FileTemplate[_RBV], FullFileName_RBV
    AutoIncrement[_RBV], AutoSave[_RBV] (No/Yes)
    FileWriteMode[_RBV]         Single/Capture/Stream
    Capture[_RBV]               Done/Capture
    NumCapture[_RBV], NumCaptured_RBV
    WriteStatus (Write OK/Write error), WriteMessage

Files are laid out as areaDetector writes them: ``/entry/data/data``, ``(frames, rows,
cols)`` in the detector's data type, chunked one frame per chunk, resizable along axis 0.

- ``Single``: with ``AutoSave`` = Yes, every frame goes to a file of its own.
- ``Capture``: ``Capture`` = 1 buffers frames in memory; ``Capture`` = 0, or ``NumCapture``
  frames, writes them all to one file.
- ``Stream``: ``Capture`` = 1 opens the file; each frame is appended and flushed before the
  camera's Acquire completes; ``Capture`` = 0, or ``NumCapture`` frames (0: no limit), closes
  it.

A file's name is ``FileTemplate % (FilePath, FileName, FileNumber)`` (``FullFileName_RBV``);
``AutoIncrement`` = Yes then adds 1 to ``FileNumber``. ``FilePath`` is a directory on this
machine (the IOC runs locally). Where it does not exist, ``CreateDirectory`` says whether it
may be created, as in areaDetector: 0 no; N < 0 at most -N missing directories at the end of
the path; N > 0 the first N directories of the path must exist. It is tried when
``FilePath`` is put and again when a file is opened. A missing path reads
``FilePathExists_RBV`` = 0, and ``WriteStatus``/``WriteMessage`` say why.

Files are written without an HDF5 file lock and without SWMR, flushed after each frame:
areaDetector's ``AD_HDF5`` readers (``area_detector_handlers``) open them plainly, and can do
so while the file is still being written (SWMR files would need SWMR readers; HDF5's lock
would refuse them).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from caproto import ChannelType
from caproto.server import PVGroup, get_pv_pair_wrapper, pvproperty

__all__ = ["HDF5PluginGroup", "create_directory"]

pvproperty_with_rbv = get_pv_pair_wrapper(setpoint_suffix="", readback_suffix="_RBV")

#: Length of areaDetector's path and name waveforms.
MAX_PATH = 256
WRITE_MODES = ["Single", "Capture", "Stream"]
DATASET = "/entry/data/data"


def _enum_pair(name: str, strings: list[str], value: str, doc: str):
    return pvproperty_with_rbv(name=name, dtype=ChannelType.ENUM, enum_strings=strings,
                               value=value, doc=doc)


def _text_pair(name: str, value: str, doc: str):
    return pvproperty_with_rbv(name=name, dtype=ChannelType.CHAR, max_length=MAX_PATH,
                               value=value, doc=doc)


def _text(value: Any) -> str:
    """A CHAR waveform's value as a str (caproto may hand over bytes or a list)."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    elif not isinstance(value, str):
        value = bytes(int(v) for v in value).decode(errors="replace")
    return value.split("\0", 1)[0]


def create_directory(path: str | Path, depth: int) -> str | None:
    """Create ``path`` as areaDetector's ``CreateDirectory`` = ``depth`` allows.

    Returns None when the directory exists afterwards, else why it does not.
    """
    path = Path(path)
    if path.is_dir():
        return None
    if depth == 0:
        return f"FilePath {path} does not exist (CreateDirectory is 0: not created)"
    parts = path.parts[1:] if path.is_absolute() else path.parts
    existing = Path(path.anchor)
    n_existing = 0
    for part in parts:
        if not (existing / part).is_dir():
            break
        existing = existing / part
        n_existing += 1
    missing = len(parts) - n_existing
    if depth < 0 and missing > -depth:
        return (f"FilePath {path}: {missing} missing directories, CreateDirectory={depth} "
                f"allows at most {-depth}")
    if depth > 0 and n_existing < depth:
        return (f"FilePath {path}: CreateDirectory={depth} needs the first {depth} "
                f"directories to exist, only {n_existing} do")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        return f"FilePath {path} could not be created: {exc}"
    return None


class HDF5PluginGroup(PVGroup):
    """``HDF1:``: areaDetector's NDFileHDF5 plugin; see the module docstring."""

    plugin_type = pvproperty(name="PluginType_RBV", value="NDFileHDF5", read_only=True,
                             dtype=ChannelType.STRING)
    port_name = pvproperty(name="PortName_RBV", value="FileHDF1", read_only=True,
                           dtype=ChannelType.STRING)
    nd_array_port = pvproperty_with_rbv(name="NDArrayPort", value="SIM1",
                                        dtype=ChannelType.STRING)
    enable = _enum_pair("EnableCallbacks", ["Disable", "Enable"], "Disable",
                        "Take frames from the camera")
    blocking_callbacks = _enum_pair("BlockingCallbacks", ["No", "Yes"], "No",
                                    "Frames are written in the camera's thread")
    array_counter = pvproperty_with_rbv(name="ArrayCounter", value=0, dtype=int,
                                        doc="Frames received; writable to reset")
    unique_id = pvproperty(name="UniqueId_RBV", value=0, read_only=True)
    time_stamp = pvproperty(name="TimeStamp_RBV", value=0.0, read_only=True)
    dropped_arrays = pvproperty_with_rbv(name="DroppedArrays", value=0, dtype=int)
    array_size0 = pvproperty(name="ArraySize0_RBV", value=0, read_only=True, doc="cols")
    array_size1 = pvproperty(name="ArraySize1_RBV", value=0, read_only=True, doc="rows")
    array_size2 = pvproperty(name="ArraySize2_RBV", value=0, read_only=True)
    ndimensions = pvproperty(name="NDimensions_RBV", value=2, read_only=True)
    data_type = pvproperty(name="DataType_RBV", dtype=ChannelType.ENUM,
                           enum_strings=["Int8", "UInt8", "Int16", "UInt16", "Int32",
                                         "UInt32", "Int64", "UInt64", "Float32", "Float64"],
                           value="Int32", read_only=True)
    color_mode = pvproperty(name="ColorMode_RBV", dtype=ChannelType.ENUM,
                            enum_strings=["Mono"], value="Mono", read_only=True)

    file_path = _text_pair("FilePath", "", "Directory the files go to (on the IOC's host)")
    file_path_exists = pvproperty(name="FilePathExists_RBV", dtype=ChannelType.ENUM,
                                  enum_strings=["No", "Yes"], value="No", read_only=True)
    create_directory = pvproperty_with_rbv(name="CreateDirectory", value=0, dtype=int,
                                           doc="0: never; <0: create up to -N levels; "
                                               ">0: first N levels must exist")
    file_name = _text_pair("FileName", "", "File name stem")
    file_number = pvproperty_with_rbv(name="FileNumber", value=0, dtype=int,
                                      doc="Number of the next file")
    file_template = _text_pair("FileTemplate", "%s%s_%3.3d.h5",
                               "C format of (FilePath, FileName, FileNumber)")
    full_file_name = pvproperty(name="FullFileName_RBV", value="", read_only=True,
                                dtype=ChannelType.CHAR, max_length=MAX_PATH,
                                doc="The last file opened")
    auto_increment = _enum_pair("AutoIncrement", ["No", "Yes"], "No",
                                "Add 1 to FileNumber after each file")
    auto_save = _enum_pair("AutoSave", ["No", "Yes"], "No", "Single mode: save each frame")
    file_write_mode = _enum_pair("FileWriteMode", WRITE_MODES, "Single",
                                 "One file per frame, buffered, or streamed")
    capture = _enum_pair("Capture", ["Done", "Capture"], "Done",
                         "Start (1) or stop (0) capturing (Capture and Stream modes)")
    num_capture = pvproperty_with_rbv(name="NumCapture", value=1, dtype=int,
                                      doc="Frames per file; 0: until Capture = 0 (Stream)")
    num_captured = pvproperty(name="NumCaptured_RBV", value=0, read_only=True)
    write_status = pvproperty(name="WriteStatus", dtype=ChannelType.ENUM,
                              enum_strings=["Write OK", "Write error"], value="Write OK")
    write_message = pvproperty(name="WriteMessage", value="", dtype=ChannelType.CHAR,
                               max_length=MAX_PATH, doc="Why the last write failed")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._file: Any = None  # the h5py.File being streamed to
        self._buffer: list[np.ndarray] = []  # frames held in Capture mode
        self._capturing = False

    # -- paths -------------------------------------------------------------------------------
    async def _fail(self, message: str) -> None:
        await self.write_status.write("Write error")
        await self.write_message.write(message[:MAX_PATH - 1])

    async def _check_path(self) -> bool:
        """Whether FilePath exists (created first if CreateDirectory allows); says so."""
        path = _text(self.file_path.readback.value)
        why = ("FilePath is empty" if not path
               else create_directory(path, int(self.create_directory.readback.value)))
        await self.file_path_exists.write("No" if why else "Yes")
        if why:
            await self._fail(why)
            return False
        if self.write_status.value == "Write error":
            await self.write_status.write("Write OK")
            await self.write_message.write("")
        return True

    @file_path.setpoint.putter
    async def file_path(obj, instance, value):
        path = _text(value)
        if path and not path.endswith("/"):
            path += "/"  # areaDetector adds the separator
        await obj.readback.write(path)
        await obj.parent._check_path()
        return path

    # -- files -------------------------------------------------------------------------------
    async def _next_file_name(self) -> str | None:
        template = _text(self.file_template.readback.value)
        number = int(self.file_number.readback.value)
        try:
            name = template % (_text(self.file_path.readback.value),
                               _text(self.file_name.readback.value), number)
        except (TypeError, ValueError) as exc:
            await self._fail(f"FileTemplate {template!r} is not a (path, name, number) "
                             f"format: {exc}")
            return None
        await self.full_file_name.write(name)
        if self.auto_increment.readback.value == "Yes":
            await self.file_number.setpoint.write(number + 1, verify_value=False)
            await self.file_number.readback.write(number + 1)
        return name

    def _frame_shape(self) -> tuple[int, int]:
        return int(self.array_size1.value), int(self.array_size0.value)

    async def _open(self) -> Any:
        """A new file with an empty, resizable ``/entry/data/data``; None on failure."""
        import h5py

        if not await self._check_path():
            return None
        name = await self._next_file_name()
        if name is None:
            return None
        rows, cols = self._frame_shape()
        try:
            handle = h5py.File(name, "w", locking=False)
            entry = handle.create_group("entry")
            entry.attrs["NX_class"] = "NXentry"
            data = entry.create_group("data")
            data.attrs["NX_class"] = "NXdata"
            data.attrs["signal"] = "data"
            data.create_dataset("data", shape=(0, rows, cols), maxshape=(None, rows, cols),
                                chunks=(1, rows, cols), dtype=np.int32)
            handle.flush()
        except OSError as exc:
            await self._fail(f"cannot open {name}: {exc}")
            return None
        return handle

    @staticmethod
    def _append(handle: Any, frames: list[np.ndarray]) -> None:
        dataset = handle[DATASET]
        n = dataset.shape[0]
        dataset.resize(n + len(frames), axis=0)
        dataset[n:] = np.stack(frames).astype(np.int32, copy=False)
        handle.flush()

    async def _write_file(self, frames: list[np.ndarray]) -> bool:
        """One file holding ``frames`` (Single and Capture modes)."""
        handle = await self._open()
        if handle is None:
            return False
        try:
            self._append(handle, frames)
        except OSError as exc:
            await self._fail(f"cannot write {handle.filename}: {exc}")
            return False
        finally:
            handle.close()
        return True

    async def _end_capture(self) -> None:
        """Close the streamed file, or write the buffered frames; Capture back to 0."""
        self._capturing = False
        if self._file is not None:
            handle, self._file = self._file, None
            handle.close()
        if self._buffer:
            frames, self._buffer = self._buffer, []
            await self._write_file(frames)
        await self.capture.readback.write("Done")

    @capture.setpoint.putter
    async def capture(obj, instance, value):
        group = obj.parent
        if value not in ("Capture", 1):
            if group._capturing:
                await group._end_capture()
            await obj.readback.write("Done")
            return "Done"
        if group._capturing:
            return "Capture"
        mode = group.file_write_mode.readback.value
        if mode == "Single":
            await group._fail("Capture does not apply in Single mode (use AutoSave)")
            return "Done"
        await group.num_captured.write(0)
        if mode == "Stream":
            group._file = await group._open()
            if group._file is None:
                return "Done"
        group._buffer = []
        group._capturing = True
        await obj.readback.write("Capture")
        return "Capture"

    # -- frames ------------------------------------------------------------------------------
    async def take_frame(self, frame: np.ndarray, unique_id: int) -> None:
        """A frame from the camera (callbacks enabled); written before this returns."""
        if self.enable.readback.value != "Enable":
            return
        rows, cols = frame.shape
        if (rows, cols) != self._frame_shape():
            await self.array_size0.write(cols)
            await self.array_size1.write(rows)
        counter = int(self.array_counter.readback.value) + 1
        await self.array_counter.readback.write(counter)
        await self.unique_id.write(unique_id)
        await self.time_stamp.write(time.time())
        mode = self.file_write_mode.readback.value
        if mode == "Single":
            if self.auto_save.readback.value == "Yes":
                await self._write_file([frame])
            return
        if not self._capturing:
            return
        if mode == "Stream" and self._file is not None:
            try:
                self._append(self._file, [frame])
            except OSError as exc:
                await self._fail(f"cannot write {self._file.filename}: {exc}")
                await self._end_capture()
                return
        else:
            self._buffer.append(np.array(frame, dtype=np.int32))
        captured = int(self.num_captured.value) + 1
        await self.num_captured.write(captured)
        limit = int(self.num_capture.readback.value)
        if limit > 0 and captured >= limit:
            await self._end_capture()
            await self.capture.setpoint.write("Done", verify_value=False)

    def prime(self, rows: int, cols: int, values: dict) -> None:
        """Add the frame size to ``values`` (set before serving): areaDetector plugins need to
        have seen a frame before ophyd stages them; this one knows its camera's size."""
        values.update({self.array_size0: cols, self.array_size1: rows})
