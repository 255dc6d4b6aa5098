"""Simulated detectors for the live-plugin tests: real ophyd devices, frames from scenes."""

from __future__ import annotations

import itertools
import uuid
from collections import deque
from pathlib import Path

import h5py
import numpy as np
from event_model import compose_resource
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.sim import NullStatus


class HDF5AreaDetector(Device):
    """Writes each frame to an areaDetector-layout HDF5 file (``/entry/data/data``) and
    emits AD_HDF5 Resource/Datum documents, like ophyd's ``HDF5Plugin`` with
    ``FileStoreHDF5``."""

    image = Cpt(Signal, kind="hinted")

    def __init__(self, func, directory: Path, *, name: str, **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self._func = func
        self._directory = Path(directory)
        self._assets: deque = deque()
        self._file: h5py.File | None = None
        self._bundle = None
        self._points = itertools.count()

    def stage(self):
        path = self._directory / f"{uuid.uuid4()}.h5"
        self._file = h5py.File(path, "w")
        self._bundle = compose_resource(spec="AD_HDF5", root=str(self._directory),
                                        resource_path=path.name,
                                        resource_kwargs={"frame_per_point": 1})
        self._assets.append(("resource", self._bundle.resource_doc))
        self._points = itertools.count()
        return super().stage()

    def unstage(self):
        if self._file is not None:
            self._file.close()
            self._file = None
        return super().unstage()

    def trigger(self):
        frame = np.asarray(self._func())
        point = next(self._points)
        if "entry/data/data" not in self._file:
            self._file.create_dataset("entry/data/data", shape=(0, *frame.shape),
                                      maxshape=(None, *frame.shape), dtype=frame.dtype,
                                      chunks=(1, *frame.shape))
        data = self._file["entry/data/data"]
        data.resize(point + 1, axis=0)
        data[point] = frame
        self._file.flush()
        datum = self._bundle.compose_datum(datum_kwargs={"point_number": point})
        self._assets.append(("datum", datum))
        self.image.put(datum["datum_id"])
        self._shape = frame.shape
        return NullStatus()

    def describe(self):
        description = super().describe()
        description[self.image.name].update(
            external="FILESTORE:", dtype="array", shape=list(getattr(self, "_shape", (0, 0))))
        return description

    def collect_asset_docs(self):
        while self._assets:
            yield self._assets.popleft()
