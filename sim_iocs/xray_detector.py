"""A simulated X-ray area detector with areaDetector-compatible PV names.

PVs (under the IOC prefix; ``_RBV`` readbacks as in areaDetector)::

    cam1:Acquire, Acquire_RBV                 Done/Acquire; put-completes after the
                                              last frame of the acquisition is published
    cam1:AcquireTime[_RBV], AcquirePeriod[_RBV]   seconds
    cam1:ImageMode[_RBV]                      Single/Multiple/Continuous
    cam1:NumImages[_RBV], NumImagesCounter_RBV, NumExposures[_RBV]
    cam1:TriggerMode[_RBV]                    Internal
    cam1:ArrayCounter[_RBV], ArrayCallbacks[_RBV]
    cam1:DetectorState_RBV, StatusMessage_RBV, TimeRemaining_RBV
    cam1:DataType[_RBV] (Int32), ColorMode[_RBV] (Mono)
    cam1:ArraySizeX_RBV, ArraySizeY_RBV, ArraySizeZ_RBV, MaxSizeX_RBV, MaxSizeY_RBV
    cam1:Manufacturer_RBV, Model_RBV, PortName_RBV
    image1:ArrayData                          int32 waveform, rows*cols, row-major
    image1:ArraySize0_RBV (cols), ArraySize1_RBV (rows), ArraySize2_RBV, NDimensions_RBV
    image1:ArrayCounter_RBV, UniqueId_RBV, TimeStamp_RBV, DataType_RBV, ColorMode_RBV
    image1:EnableCallbacks[_RBV], NDArrayPort[_RBV], PortName_RBV, PluginType_RBV
    HDF1:...                                  areaDetector's NDFileHDF5 file plugin
                                              (:mod:`sim_iocs.hdf5_plugin`): FilePath,
                                              FileName, FileTemplate, FileWriteMode,
                                              Capture, NumCapture, FullFileName_RBV, ...
    PoniPath, MaskPath                        files written at start-up (pyFAI PONI, .npy)
    BeamCenterX_RBV, BeamCenterY_RBV          beam centre in pixels (col, row)
    PixelSize_RBV, Distance_RBV, Wavelength_RBV   metres
    SceneName_RBV, CountsPerSecond            counts per valid pixel per second
    DetectorKind_RBV                          counting (photon counts) or integrating (ADU)
    Gain_RBV, ReadNoise_RBV, DarkOffset_RBV   ADU/photon, ADU rms, ADU (1, 0, 0 if counting)

Frames come from :class:`~sim_iocs.scene_source.SceneSource`: Poisson counts of the scene
expectation times ``CountsPerSecond * AcquireTime``, with hot and dead pixels, gaps and
beamstop reading 0. Acquisition really takes ``AcquireTime`` (wall clock).

Flat-panel mode (``--gain G``, with ``--read-noise`` and ``--dark-offset``): the detector
integrates instead, and each pixel reads ``G × photons + dark offset + N(0, read noise²)`` ADU,
rounded and clipped to 0..65535 (a 16-bit ADC), in the same Int32 waveform; with the shutter
closed the expectation is 0, so a dark frame is the offset plus readout noise (and the hot
pixels). Gaps and beamstop collect no photons but are read out too.

Run alone: ``python -m sim_iocs.xray_detector --prefix bsd:det: --scene powder --shape 256``
(add ``--gain 8 --read-noise 5 --dark-offset 200`` for a flat panel).
The beamline IOC (:mod:`sim_iocs.beamline`) composes it with a sample environment whose
temperature drives in situ scenes, and a shutter.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from caproto import ChannelType
from caproto.server import PVGroup, SubGroup, get_pv_pair_wrapper, pvproperty

from sim_iocs._run import set_before_serving
from sim_iocs.hdf5_plugin import HDF5PluginGroup
from sim_iocs.scene_source import (
    INSITU_CHANGES,
    SCENE_CHOICES,
    FlatPanelReadout,
    SceneSource,
)

__all__ = ["CamGroup", "ImageGroup", "SampleState", "XrayDetectorIOC",
           "add_detector_arguments", "readout_from_args", "scene_source_from_args"]

pvproperty_with_rbv = get_pv_pair_wrapper(setpoint_suffix="", readback_suffix="_RBV")

IMAGE_MODES = ["Single", "Multiple", "Continuous"]
DETECTOR_STATES = ["Idle", "Acquire", "Readout", "Correct", "Saving", "Aborting", "Error",
                   "Waiting", "Initializing", "Disconnected", "Aborted"]
DATA_TYPES = ["Int8", "UInt8", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64",
              "Float32", "Float64"]

#: What the sample and beam look like at the moment of exposure: (temperature K, beam on).
SampleState = Callable[[], tuple[float, bool]]


def _enum_pair(name: str, strings: list[str], value: str, doc: str):
    return pvproperty_with_rbv(name=name, dtype=ChannelType.ENUM, enum_strings=strings,
                               value=value, doc=doc)


class CamGroup(PVGroup):
    """``cam1:``: acquisition control, as areaDetector's ADDriver."""

    _stop_requested = False  # set by Acquire=0 while a Multiple/Continuous run is going

    acquire = pvproperty(name="Acquire", dtype=ChannelType.ENUM,
                         enum_strings=["Done", "Acquire"], value="Done",
                         doc="Start (1) or stop (0) acquiring; put-completes when done")
    acquire_rbv = pvproperty(name="Acquire_RBV", dtype=ChannelType.ENUM,
                             enum_strings=["Done", "Acquire"], value="Done", read_only=True)
    acquire_time = pvproperty_with_rbv(name="AcquireTime", value=0.1, dtype=float,
                                       doc="Exposure time (s); counts scale with it")
    acquire_period = pvproperty_with_rbv(name="AcquirePeriod", value=0.1, dtype=float,
                                         doc="Time between frame starts (s), >= AcquireTime")
    image_mode = _enum_pair("ImageMode", IMAGE_MODES, "Single", "Frames per Acquire")
    num_images = pvproperty_with_rbv(name="NumImages", value=1, dtype=int,
                                     doc="Frames per Acquire in Multiple mode")
    num_exposures = pvproperty_with_rbv(name="NumExposures", value=1, dtype=int)
    trigger_mode = _enum_pair("TriggerMode", ["Internal"], "Internal", "Trigger source")
    array_callbacks = _enum_pair("ArrayCallbacks", ["Disable", "Enable"], "Enable",
                                 "Publish frames to the plugins")
    data_type = _enum_pair("DataType", DATA_TYPES, "Int32", "Pixel type (fixed)")
    color_mode = _enum_pair("ColorMode", ["Mono"], "Mono", "Colour mode (fixed)")
    array_counter = pvproperty_with_rbv(name="ArrayCounter", value=0, dtype=int,
                                        doc="Frames published; writable to reset")
    num_images_counter = pvproperty(name="NumImagesCounter_RBV", value=0, read_only=True)
    detector_state = pvproperty(name="DetectorState_RBV", dtype=ChannelType.ENUM,
                                enum_strings=DETECTOR_STATES, value="Idle", read_only=True)
    status_message = pvproperty(name="StatusMessage_RBV", value="Idle", read_only=True,
                                dtype=ChannelType.CHAR, max_length=256)
    time_remaining = pvproperty(name="TimeRemaining_RBV", value=0.0, read_only=True)
    array_size_x = pvproperty(name="ArraySizeX_RBV", value=0, read_only=True)
    array_size_y = pvproperty(name="ArraySizeY_RBV", value=0, read_only=True)
    array_size_z = pvproperty(name="ArraySizeZ_RBV", value=0, read_only=True)
    max_size_x = pvproperty(name="MaxSizeX_RBV", value=0, read_only=True)
    max_size_y = pvproperty(name="MaxSizeY_RBV", value=0, read_only=True)
    manufacturer = pvproperty(name="Manufacturer_RBV", value="bluesky_symdenoise",
                              read_only=True, dtype=ChannelType.STRING)
    model = pvproperty(name="Model_RBV", value="SimXrayDetector", read_only=True,
                       dtype=ChannelType.STRING)
    port_name = pvproperty(name="PortName_RBV", value="SIM1", read_only=True,
                           dtype=ChannelType.STRING)

    @acquire.putter
    async def acquire(self, instance, value):
        if value not in ("Acquire", 1):
            self._stop_requested = True
            return "Done"
        if self.acquire_rbv.value == "Acquire":
            return "Acquire"  # already running: a second start is a no-op, as in AD
        self._stop_requested = False
        # Publish Acquire=1 now (without re-entering this putter), so monitors see the
        # 1 -> 0 edge ophyd's SingleTrigger waits for; the put completes on return.
        await instance.write("Acquire", verify_value=False)
        await self.acquire_rbv.write("Acquire")
        try:
            await self.parent.acquire_frames(self)
        finally:
            await self.acquire_rbv.write("Done")
            await self.detector_state.write("Idle")
            await self.time_remaining.write(0.0)
        return "Done"

    @acquire_time.setpoint.putter
    async def acquire_time(obj, instance, value):
        value = max(float(value), 0.0)
        await obj.readback.write(value)
        return value

    @acquire_period.setpoint.putter
    async def acquire_period(obj, instance, value):
        value = max(float(value), 0.0)
        await obj.readback.write(value)
        return value

    @num_images.setpoint.putter
    async def num_images(obj, instance, value):
        value = max(int(value), 1)
        await obj.readback.write(value)
        return value

    @data_type.setpoint.putter
    async def data_type(obj, instance, value):
        await obj.readback.write("Int32")
        return "Int32"


class ImageGroup(PVGroup):
    """``image1:``: the frame as a waveform, as areaDetector's NDPluginStdArrays."""

    # The length is set per detector in __init__; this is the upper bound (4096^2 pixels).
    array_data = pvproperty(name="ArrayData", value=[0], dtype=ChannelType.LONG,
                            max_length=4096 * 4096, read_only=True,
                            doc="Last frame, int32, rows*cols in row-major order")
    array_size0 = pvproperty(name="ArraySize0_RBV", value=0, read_only=True, doc="cols")
    array_size1 = pvproperty(name="ArraySize1_RBV", value=0, read_only=True, doc="rows")
    array_size2 = pvproperty(name="ArraySize2_RBV", value=0, read_only=True)
    ndimensions = pvproperty(name="NDimensions_RBV", value=2, read_only=True)
    array_counter = pvproperty(name="ArrayCounter_RBV", value=0, read_only=True)
    unique_id = pvproperty(name="UniqueId_RBV", value=0, read_only=True)
    time_stamp = pvproperty(name="TimeStamp_RBV", value=0.0, read_only=True)
    data_type = pvproperty(name="DataType_RBV", dtype=ChannelType.ENUM,
                           enum_strings=DATA_TYPES, value="Int32", read_only=True)
    color_mode = pvproperty(name="ColorMode_RBV", dtype=ChannelType.ENUM,
                            enum_strings=["Mono"], value="Mono", read_only=True)
    enable = _enum_pair("EnableCallbacks", ["Disable", "Enable"], "Enable",
                        "Publish frames from the camera")
    nd_array_port = pvproperty_with_rbv(name="NDArrayPort", value="SIM1",
                                        dtype=ChannelType.STRING)
    port_name = pvproperty(name="PortName_RBV", value="IMAGE1", read_only=True,
                           dtype=ChannelType.STRING)
    plugin_type = pvproperty(name="PluginType_RBV", value="NDPluginStdArrays",
                             read_only=True, dtype=ChannelType.STRING)


class XrayDetectorIOC(PVGroup):
    """A detector whose frames come from a physics scene.

    Parameters
    ----------
    source
        The scene the detector sees.
    sample_state
        Called at each exposure for ``(temperature K, beam on)``; default: the lowest
        temperature of the source's range, beam on.
    calibration_dir
        Where ``detector.poni`` and ``mask.npy`` are written at start-up (default: a new
        temporary directory).
    """

    cam = SubGroup(CamGroup, prefix="cam1:")
    image = SubGroup(ImageGroup, prefix="image1:")
    hdf5 = SubGroup(HDF5PluginGroup, prefix="HDF1:")

    poni_path = pvproperty(name="PoniPath", value="", read_only=True,
                           dtype=ChannelType.CHAR, max_length=1024,
                           doc="pyFAI PONI file of this detector's geometry")
    mask_path = pvproperty(name="MaskPath", value="", read_only=True,
                           dtype=ChannelType.CHAR, max_length=1024,
                           doc=".npy bool mask, True on gaps and beamstop")
    beam_center_x = pvproperty(name="BeamCenterX_RBV", value=0.0, read_only=True,
                               precision=3, units="px", doc="Beam centre column")
    beam_center_y = pvproperty(name="BeamCenterY_RBV", value=0.0, read_only=True,
                               precision=3, units="px", doc="Beam centre row")
    pixel_size = pvproperty(name="PixelSize_RBV", value=0.0, read_only=True, units="m")
    distance = pvproperty(name="Distance_RBV", value=0.0, read_only=True, units="m")
    wavelength = pvproperty(name="Wavelength_RBV", value=0.0, read_only=True, units="m")
    scene_name = pvproperty(name="SceneName_RBV", value="", read_only=True,
                            dtype=ChannelType.STRING)
    counts_per_second = pvproperty(name="CountsPerSecond", value=10.0, precision=3,
                                   doc="Mean counts per valid pixel per second")
    detector_kind = pvproperty(name="DetectorKind_RBV", value="counting", read_only=True,
                               dtype=ChannelType.STRING,
                               doc="counting (photon counts) or integrating (flat panel, ADU)")
    gain = pvproperty(name="Gain_RBV", value=1.0, read_only=True, precision=4,
                      units="ADU/photon", doc="Flat panel: ADU per photon")
    read_noise = pvproperty(name="ReadNoise_RBV", value=0.0, read_only=True, precision=3,
                            units="ADU", doc="Flat panel: Gaussian readout noise, rms")
    dark_offset = pvproperty(name="DarkOffset_RBV", value=0.0, read_only=True, precision=3,
                             units="ADU", doc="Flat panel: dark level")

    def __init__(self, *args, source: SceneSource | None = None,
                 sample_state: SampleState | None = None,
                 calibration_dir: str | Path | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.source: SceneSource | None = None
        if source is not None:
            self.attach(source, sample_state=sample_state, calibration_dir=calibration_dir)

    def attach(self, source: SceneSource, *, sample_state: SampleState | None = None,
               calibration_dir: str | Path | None = None) -> None:
        """Point the detector at ``source``; call before the server starts.

        (A parent group builds its SubGroups without per-instance arguments, so the
        beamline IOC attaches the scene after construction.)
        """
        self.source = source
        low = source.temperature_range[0]
        self.sample_state = sample_state or (lambda: (low, True))
        if calibration_dir is None:
            calibration_dir = tempfile.mkdtemp(prefix="sim_detector_")
        self.poni_file, self.mask_file = source.write_calibration(calibration_dir)
        rows, cols = source.shape
        geometry = source.geometry
        readout = source.readout
        if readout is not None:
            set_before_serving({
                self.detector_kind: "integrating", self.gain: readout.gain,
                self.read_noise: readout.read_noise, self.dark_offset: readout.dark_offset,
                self.cam.model: "SimFlatPanel"})
        values = {
            self.poni_path: str(self.poni_file), self.mask_path: str(self.mask_file),
            self.beam_center_x: float(geometry.center[1]),
            self.beam_center_y: float(geometry.center[0]),
            self.pixel_size: geometry.pixel_size, self.distance: geometry.distance,
            self.wavelength: geometry.wavelength, self.scene_name: source.name[:39],
            self.counts_per_second: source.counts_per_second,
            self.cam.array_size_x: cols, self.cam.array_size_y: rows,
            self.cam.max_size_x: cols, self.cam.max_size_y: rows,
            self.image.array_size0: cols, self.image.array_size1: rows,
            self.image.array_data: np.zeros(rows * cols, dtype=np.int32),
        }
        self.hdf5.prime(rows, cols, values)
        set_before_serving(values)

    async def acquire_frames(self, cam: CamGroup) -> None:
        """Expose and publish frames until the image mode's count is reached or stopped."""
        mode = cam.image_mode.readback.value
        n_frames = {"Single": 1, "Multiple": int(cam.num_images.readback.value)}.get(mode)
        taken = 0
        await cam.num_images_counter.write(0)
        while not cam._stop_requested and (n_frames is None or taken < n_frames):
            exposure = float(cam.acquire_time.readback.value)
            period = max(float(cam.acquire_period.readback.value), exposure)
            started = time.monotonic()
            await cam.detector_state.write("Acquire")
            await cam.time_remaining.write(exposure)
            await asyncio.sleep(exposure)
            if cam._stop_requested and taken > 0:
                break
            await cam.detector_state.write("Readout")
            temperature, beam_on = self.sample_state()
            source = self.source
            assert source is not None, "attach() a scene before the server starts"
            source.counts_per_second = float(self.counts_per_second.value)
            frame = source.frame(exposure, temperature=temperature, beam_on=beam_on)
            taken += 1
            await self.publish_frame(cam, frame)
            await cam.num_images_counter.write(taken)
            if n_frames is None or taken < n_frames:
                await cam.detector_state.write("Waiting")
                await asyncio.sleep(max(0.0, period - (time.monotonic() - started)))

    async def publish_frame(self, cam: CamGroup, frame: np.ndarray) -> None:
        counter = int(cam.array_counter.readback.value) + 1
        await cam.array_counter.readback.write(counter)
        if cam.array_callbacks.readback.value != "Enable":
            return
        image = self.image
        if image.enable.readback.value == "Enable":
            await image.array_data.write(frame.ravel())
            await image.time_stamp.write(time.time())
            await image.unique_id.write(counter)
            await image.array_counter.write(int(image.array_counter.value) + 1)
        await self.hdf5.take_frame(frame, counter)


def add_detector_arguments(parser: argparse.ArgumentParser) -> None:
    """The scene options shared by the detector and beamline IOCs."""
    group = parser.add_argument_group("detector")
    group.add_argument("--scene", default="powder", choices=SCENE_CHOICES,
                       help="what the detector sees (insitu*: follows the temperature)")
    group.add_argument("--shape", type=int, nargs="+", default=[256],
                       help="detector size: N for N x N, or ROWS COLS")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--counts-per-second", type=float, default=10.0,
                       help="mean counts per valid pixel per second of AcquireTime")
    group.add_argument("--insitu-change", default="ring_drift", choices=INSITU_CHANGES)
    group.add_argument("--temperature-range", type=float, nargs=2, default=[300.0, 600.0],
                       metavar=("LOW", "HIGH"), help="K at the first/last in situ state")
    group.add_argument("--poni-dir", default=None,
                       help="directory for detector.poni and mask.npy (default: a temp dir)")
    flat = parser.add_argument_group(
        "flat panel", "an integrating detector: frames in ADU = gain x photons + dark offset "
        "+ Gaussian readout noise, rounded, clipped to 0..65535 (default: photon counting)")
    flat.add_argument("--gain", type=float, default=None, metavar="ADU_PER_PHOTON",
                      help="ADU per photon; switches the detector to flat-panel mode")
    flat.add_argument("--read-noise", type=float, default=None, metavar="ADU",
                      help="readout noise, ADU rms (default 0; needs --gain)")
    flat.add_argument("--dark-offset", type=float, default=None, metavar="ADU",
                      help="dark level, ADU (default 0; needs --gain)")


def readout_from_args(args: argparse.Namespace) -> FlatPanelReadout | None:
    """The flat-panel readout asked for (``--gain``), or None: photon counting."""
    read_noise = getattr(args, "read_noise", None)
    dark_offset = getattr(args, "dark_offset", None)
    if getattr(args, "gain", None) is None:
        if read_noise is not None or dark_offset is not None:
            raise ValueError("--read-noise and --dark-offset describe a flat panel: give "
                             "--gain (ADU per photon) too")
        return None
    return FlatPanelReadout(gain=args.gain, read_noise=read_noise or 0.0,
                            dark_offset=dark_offset or 0.0)


def scene_source_from_args(args: argparse.Namespace) -> SceneSource:
    shape = args.shape * 2 if len(args.shape) == 1 else args.shape[:2]
    return SceneSource(args.scene, shape=tuple(shape), seed=args.seed,
                       counts_per_second=args.counts_per_second,
                       insitu_change=args.insitu_change,
                       temperature_range=tuple(args.temperature_range),
                       readout=readout_from_args(args))


def main(argv: list[str] | None = None) -> None:
    from sim_iocs._run import parse_ioc_args, run_ioc

    args, ioc_options, run_options = parse_ioc_args(
        "Simulated X-ray area detector (areaDetector PV names).", "bsd:det:",
        add_detector_arguments, argv)
    ioc = XrayDetectorIOC(source=scene_source_from_args(args),
                          calibration_dir=args.poni_dir, **ioc_options)
    run_ioc(ioc, run_options)


if __name__ == "__main__":
    main()
