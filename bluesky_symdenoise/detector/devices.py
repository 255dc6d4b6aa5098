"""ophyd devices for the simulated beamline IOC (:mod:`sim_iocs.beamline`).

- :class:`SimXrayDetector`: ophyd's areaDetector ``SingleTrigger`` + ``DetectorBase`` with
  lean ``cam1:``/``image1:`` classes (the PVs the IOC serves; ophyd's ``SimDetectorCam`` and
  ``ImagePlugin`` would connect to dozens more). ``trigger()`` uses put-completion on
  ``cam1:Acquire``: the status finishes when the IOC has published the frame. The frame is
  read inline as a 2-D array under the data key ``<name>_image``.
- :class:`SimXrayDetectorHDF5`: the same detector with frames through files, as
  areaDetector writes them: ophyd's own ``HDF5Plugin_V34`` + ``FileStoreHDF5IterativeWrite``
  on ``HDF1:`` (Stream mode, one file per run under the directory the caller gives). Events
  carry Datum ids under ``<name>_image``; Resource (spec ``AD_HDF5``) and Datum documents
  say where the frames are (fill them with :class:`event_model.Filler`).
- :class:`TemperatureController`: a movable; ``set(T)`` finishes when the ramp arrives.
- :class:`Shutter`: ``set("Open" | "Close")``, finishing when the blade has moved.

:func:`make_beamline_devices` builds all three for a prefix, after pinning Channel Access to
loopback and selecting ophyd's caproto control layer; with ``frames_dir`` the detector is
the file-writing one.
"""

from __future__ import annotations

import time as ttime
from pathlib import Path
from typing import Any

import numpy as np
import ophyd
from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO, Kind, Signal
from ophyd.areadetector import ADComponent as ADCpt
from ophyd.areadetector import DetectorBase, EpicsSignalWithRBV, SingleTrigger
from ophyd.areadetector.filestore_mixins import FileStoreHDF5IterativeWrite
from ophyd.areadetector.plugins import HDF5Plugin_V34
from ophyd.device import Staged
from ophyd.status import DeviceStatus

from .loopback import pin_ca_to_loopback

__all__ = ["Shutter", "SimXrayDetector", "SimXrayDetectorHDF5", "TemperatureController",
           "XrayCam", "XrayHDF5Plugin", "XrayImagePlugin", "make_beamline_devices",
           "use_caproto_control_layer"]

#: Where file-mode frames go under ``frames_dir``: a folder per day, as beamlines do
#: (strftime fields; the IOC creates the folders, ``CreateDirectory`` = -3).
FRAMES_SUBDIR_TEMPLATE = "%Y/%m/%d/"


def use_caproto_control_layer() -> None:
    """Pin CA to loopback and make ophyd talk CA through caproto (no libca needed).

    Call before any ophyd EPICS signal is created; it changes ophyd's process-wide control
    layer only if another one was selected.
    """
    pin_ca_to_loopback()
    if ophyd.cl.name != "caproto":
        ophyd.set_cl("caproto")


class XrayCam(Device):
    """``cam1:``: the subset of areaDetector's ADDriver PVs the simulated IOC serves."""

    acquire = ADCpt(EpicsSignal, "Acquire", put_complete=True, kind="omitted")
    acquire_rbv = ADCpt(EpicsSignalRO, "Acquire_RBV", kind="omitted")
    acquire_time = ADCpt(EpicsSignalWithRBV, "AcquireTime", kind="config")
    acquire_period = ADCpt(EpicsSignalWithRBV, "AcquirePeriod", kind="config")
    image_mode = ADCpt(EpicsSignalWithRBV, "ImageMode", kind="config")
    num_images = ADCpt(EpicsSignalWithRBV, "NumImages", kind="config")
    num_exposures = ADCpt(EpicsSignalWithRBV, "NumExposures", kind="omitted")
    trigger_mode = ADCpt(EpicsSignalWithRBV, "TriggerMode", kind="config")
    array_counter = ADCpt(EpicsSignalWithRBV, "ArrayCounter", kind="omitted")
    array_callbacks = ADCpt(EpicsSignalWithRBV, "ArrayCallbacks", kind="omitted")
    data_type = ADCpt(EpicsSignalWithRBV, "DataType", kind="omitted")
    detector_state = ADCpt(EpicsSignalRO, "DetectorState_RBV", kind="omitted")
    num_images_counter = ADCpt(EpicsSignalRO, "NumImagesCounter_RBV", kind="omitted")
    array_size_x = ADCpt(EpicsSignalRO, "ArraySizeX_RBV", kind="omitted")
    array_size_y = ADCpt(EpicsSignalRO, "ArraySizeY_RBV", kind="omitted")
    manufacturer = ADCpt(EpicsSignalRO, "Manufacturer_RBV", string=True, kind="config")
    model = ADCpt(EpicsSignalRO, "Model_RBV", string=True, kind="config")


class XrayImagePlugin(Device):
    """``image1:``: the frame waveform (NDPluginStdArrays PV names)."""

    # Not monitored: a read after the trigger's put-completion fetches the new frame.
    array_data = ADCpt(EpicsSignalRO, "ArrayData", auto_monitor=False, kind="omitted")
    array_size0 = ADCpt(EpicsSignalRO, "ArraySize0_RBV", kind="omitted")
    array_size1 = ADCpt(EpicsSignalRO, "ArraySize1_RBV", kind="omitted")
    array_counter = ADCpt(EpicsSignalRO, "ArrayCounter_RBV", kind="omitted")
    unique_id = ADCpt(EpicsSignalRO, "UniqueId_RBV", kind="omitted")
    enable = ADCpt(EpicsSignalWithRBV, "EnableCallbacks", string=True, kind="omitted")


class FrameSignal(Signal):
    """The last frame as a 2-D int32 array ``(rows, cols)``, read from ``image1:ArrayData``."""

    def __init__(self, *args, plugin: str = "image1", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._plugin_attr = plugin
        self._shape: tuple[int, int] | None = None

    @property
    def plugin(self) -> XrayImagePlugin:
        return getattr(self.parent, self._plugin_attr)

    @property
    def shape(self) -> tuple[int, int]:
        if self._shape is None:
            plugin = self.plugin
            self._shape = (int(plugin.array_size1.get()), int(plugin.array_size0.get()))
        return self._shape

    def get(self, **kwargs: Any) -> np.ndarray:
        flat = np.asarray(self.plugin.array_data.get(**kwargs))
        rows, cols = self.shape
        frame = flat[: rows * cols].astype(np.int32, copy=False).reshape(rows, cols)
        self._readback = frame
        self._metadata["timestamp"] = self.plugin.array_data.timestamp or ttime.time()
        return frame

    def put(self, value, **kwargs):
        raise ophyd.utils.ReadOnlyError(f"{self.name} is read-only")

    def describe(self) -> dict[str, dict[str, Any]]:
        return {self.name: {"source": f"PV:{self.plugin.array_data.pvname}", "dtype": "array",
                            "dtype_numpy": np.dtype(np.int32).str, "shape": list(self.shape)}}


class _SimXrayDetectorBase(SingleTrigger, DetectorBase):
    """What both detector modes share: the camera, the geometry PVs, the trigger."""

    cam = ADCpt(XrayCam, "cam1:")
    poni_path = Cpt(EpicsSignalRO, "PoniPath", string=True, kind="config")
    mask_path = Cpt(EpicsSignalRO, "MaskPath", string=True, kind="config")
    beam_center_x = Cpt(EpicsSignalRO, "BeamCenterX_RBV", kind="config")
    beam_center_y = Cpt(EpicsSignalRO, "BeamCenterY_RBV", kind="config")
    counts_per_second = Cpt(EpicsSignal, "CountsPerSecond", kind="config")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # ADBase marks every component omitted by default; say what is read.
        self.cam.kind = Kind.config
        for signal in (self.poni_path, self.mask_path, self.beam_center_x,
                       self.beam_center_y, self.counts_per_second):
            signal.kind = Kind.config
        # One frame per trigger; SingleTrigger sets ImageMode, areaDetector-style.
        self.stage_sigs.update([("cam.image_mode", "Single"), ("cam.num_images", 1)])

    def trigger(self):
        """Acquire one frame; the status finishes when the IOC has published it (and, in
        file mode, written and flushed it to the file)."""
        if self._staged != Staged.yes:
            raise RuntimeError(f"{self.name} is not staged; stage() before trigger()")
        status = self.cam.acquire.set(1)
        self.generate_datum(self._image_name, ttime.time(), {})
        return status

    @property
    def frame_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of one frame."""
        return int(self.cam.array_size_y.get()), int(self.cam.array_size_x.get())

    def geometry(self):
        """The detector geometry from the PONI file the IOC wrote."""
        from bluesky_symdenoise.geometry import DetectorGeometry

        return DetectorGeometry.from_poni(self.poni_path.get())

    def mask(self) -> np.ndarray:
        """bool mask (True on gaps and beamstop) from the file the IOC wrote."""
        return np.load(self.mask_path.get())


class SimXrayDetector(_SimXrayDetectorBase):
    """The simulated X-ray detector; frames arrive inline in events as ``<name>_image``.

    Configuration read with each run: exposure time, period, image mode, counts, model.
    """

    image1 = ADCpt(XrayImagePlugin, "image1:")
    image = Cpt(FrameSignal, kind="hinted")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.image.kind = Kind.hinted

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.image.shape


class XrayHDF5Plugin(HDF5Plugin_V34, FileStoreHDF5IterativeWrite):
    """``HDF1:``: ophyd's areaDetector HDF5 plugin with its Resource/Datum mixin.

    Staging puts the write path, a new file name, ``FileNumber`` 0, ``CreateDirectory`` -3,
    ``FileWriteMode`` Stream and ``Capture`` 1 (the IOC opens the file), and emits a Resource
    (spec ``AD_HDF5``, ``frame_per_point`` 1); each trigger adds a Datum (``point_number``).
    Unstaging puts ``Capture`` back to 0 (the IOC closes the file).
    """

    # ophyd's PluginBase adds its source plugin's configuration, found by asyn port among
    # the detector's ADBase parts. The source here is the lean camera (a plain Device, read
    # as the detector's ``cam`` configuration already), so there is nothing to add.
    def read_configuration(self) -> dict[str, Any]:
        return Device.read_configuration(self)

    def describe_configuration(self) -> dict[str, Any]:
        return Device.describe_configuration(self)


class SimXrayDetectorHDF5(_SimXrayDetectorBase):
    """The simulated X-ray detector writing its frames to HDF5 files (areaDetector style).

    Events carry a Datum id under ``<name>_image``; the frame is row ``point_number`` of
    ``/entry/data/data`` in the run's file, named by a Resource document (spec ``AD_HDF5``).
    The IOC runs on this machine, so it writes where this process reads.

    Parameters
    ----------
    prefix
        The detector's PV prefix (``<beamline prefix>det:``).
    frames_dir
        Directory the files go under (``frames_dir/YYYY/MM/DD/<uid>_000000.h5``): the
        Resource's ``root``, which a Tiled server must list in ``readable_storage``.
    **kwargs
        ``name`` and the rest, as for any ophyd device.
    """

    hdf5 = ADCpt(XrayHDF5Plugin, "HDF1:", write_path_template=FRAMES_SUBDIR_TEMPLATE)

    def __init__(self, prefix: str, *, frames_dir: str | Path, **kwargs: Any) -> None:
        super().__init__(prefix, **kwargs)
        frames_dir = Path(frames_dir).resolve()
        frames_dir.mkdir(parents=True, exist_ok=True)
        self.frames_dir = frames_dir
        self.hdf5.reg_root = str(frames_dir)
        self.hdf5.write_path_template = FRAMES_SUBDIR_TEMPLATE
        # Read with each event: the Datum id its FileStore mixin adds; its own PVs are not.
        self.hdf5.kind = Kind.normal

    def make_data_key(self) -> dict[str, Any]:
        """The data key of ``<name>_image``: one frame's shape and dtype, stored externally.

        (ophyd's ``DetectorBase.make_data_key`` reads ``cam.array_size`` and
        ``cam.data_type_disabled``, which this lean camera does not have, and would prepend
        NumImages.)
        """
        data_type = str(self.cam.data_type.get(as_string=True))
        return {"source": f"PV:{self.hdf5.prefix}", "dtype": "array",
                "shape": list(self.frame_shape), "external": "FILESTORE:",
                "dtype_numpy": np.dtype(data_type.lower()).str}


class TemperatureController(Device):
    """The furnace: ``set(T)`` ramps at ``ramp_rate`` and finishes on arrival.

    Reads as ``<name>`` (the readback), like ophyd's motors.
    """

    setpoint = Cpt(EpicsSignal, "Temperature", kind="normal")
    readback = Cpt(EpicsSignalRO, "Temperature_RBV", auto_monitor=True, kind="hinted")
    moving = Cpt(EpicsSignalRO, "Moving_RBV", auto_monitor=True, kind="omitted")
    ramp_rate = Cpt(EpicsSignal, "RampRate", kind="config")
    tolerance = Cpt(EpicsSignal, "Tolerance", kind="config")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.readback.name = self.name

    @property
    def position(self) -> float:
        return float(self.readback.get())

    def set(self, value: float, *, timeout: float | None = None) -> DeviceStatus:
        """Ramp to ``value`` K; the status finishes when the readback is within tolerance
        of it and ``Moving_RBV`` is 0 (an arrival, not a pass-through)."""
        target = float(value)
        tolerance = float(self.tolerance.get())
        status = DeviceStatus(self, timeout=timeout)
        latest: dict[str, float] = {}

        def check(*, value, obj, **kwargs) -> None:
            latest[obj.name] = float(value)
            if status.done or len(latest) < 2:
                return
            if (abs(latest[self.readback.name] - target) <= tolerance
                    and latest[self.moving.name] == 0):
                status.set_finished()

        # The IOC raises Moving before this put completes; a stale Moving == 0 cannot end
        # the move early because the readback must also be at the target.
        self.setpoint.put(target, wait=True)
        tokens = [(signal, signal.subscribe(check, run=True))
                  for signal in (self.readback, self.moving)]
        status.add_callback(lambda st: [sig.unsubscribe(token) for sig, token in tokens])
        return status

    def stop(self, *, success: bool = False) -> None:
        self.setpoint.put(self.readback.get(), wait=False)


class Shutter(Device):
    """``set("Open")`` / ``set("Close")`` (or 1 / 0); finishes when the blade has moved."""

    cmd = Cpt(EpicsSignal, "Cmd", string=True, put_complete=True, kind="omitted")
    status = Cpt(EpicsSignalRO, "Status_RBV", string=True, kind="normal")

    def set(self, value: str | int, **kwargs: Any):
        command = {1: "Open", 0: "Close", "open": "Open", "close": "Close",
                   "closed": "Close"}.get(value.lower() if isinstance(value, str) else value,
                                           value)
        if command not in ("Open", "Close"):
            raise ValueError(f"shutter command must be 'Open' or 'Close', got {value!r}")
        return self.cmd.set(command, **kwargs)

    def open(self):
        return self.set("Open")

    def close(self):
        return self.set("Close")

    @property
    def is_open(self) -> bool:
        return self.status.get() == "Open"


def make_beamline_devices(prefix: str, *, detector_name: str = "det",
                          temperature_name: str = "temperature",
                          shutter_name: str = "shutter", connection_timeout: float = 10.0,
                          frames_dir: str | Path | None = None
                          ) -> tuple[SimXrayDetector | SimXrayDetectorHDF5,
                                     TemperatureController, Shutter]:
    """The detector, furnace and shutter of a beamline IOC serving ``prefix``, connected.

    ``frames_dir`` None (default): a :class:`SimXrayDetector`, frames inline in events.
    Given: a :class:`SimXrayDetectorHDF5` writing its frames to HDF5 files under it.
    """
    use_caproto_control_layer()
    detector: SimXrayDetector | SimXrayDetectorHDF5
    if frames_dir is None:
        detector = SimXrayDetector(f"{prefix}det:", name=detector_name)
    else:
        detector = SimXrayDetectorHDF5(f"{prefix}det:", frames_dir=frames_dir,
                                       name=detector_name)
    temperature = TemperatureController(f"{prefix}sample:", name=temperature_name)
    shutter = Shutter(f"{prefix}shutter:", name=shutter_name)
    for device in (detector, temperature, shutter):
        device.wait_for_connection(timeout=connection_timeout)
    return detector, temperature, shutter
