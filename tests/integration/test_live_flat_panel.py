"""A flat panel (an integrating detector, frames in ADU) through bluesky-darkframes into the
live plugin, all real: the beamline IOC in flat-panel mode (a caproto subprocess on
loopback), ophyd devices, a RunEngine whose ``DarkFramePreprocessor`` takes a dark frame with
the shutter closed, and ``DarkSubtraction`` upstream of ``SymDenoise(detector="integrating")``:

    RE -> RunRouter -> (per run) DarkSubtraction -> SymDenoise -> derived run

the wiring bluesky-darkframes documents (a ``RunRouter`` factory makes one subtraction per
run, since it holds that run's dark frame); the plugin, like any live subscriber, outlives
the runs.

Every stream reaches the plugin, the run's ``dark`` stream too (the dark frame, not
subtracted, under the same data key): the plugin sets it aside and never subtracts twice.
Stock ``DarkSubtraction`` leaves a pedestal in the frames, which the plugin reads from the
descriptor as the detector's offset; a signed variant (pedestal 0) keeps negative values.
"""

from __future__ import annotations

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from bluesky.utils import short_uid
from event_model import RunRouter, unpack_event_page

from bluesky_symdenoise.detector.launch import start_beamline_ioc
from bluesky_symdenoise.detector.loopback import pin_ca_to_loopback
from bluesky_symdenoise.stream.callback import SymDenoise
from tests.helpers import DocumentCollector, ca_read, count_and_drain

bluesky_darkframes = pytest.importorskip(
    "bluesky_darkframes", reason="bluesky-darkframes is not installed (pip install -e '.[test]')")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

#: The flat panel: ADU per photon, readout noise (ADU rms), dark level (ADU). Chosen so the
#: dark-subtracted frames hold negative values in the scene's dim pixels (about 1 % of them)
#: and the scan's photon transfer curve is well defined (~7 photons in the median pixel).
GAIN, READ_NOISE, DARK_OFFSET = 4.0, 3.0, 1000.0
#: What stock DarkSubtraction leaves in the frames (its default).
PEDESTAL = 100.0
SHAPE = (128, 128)
COUNTS_PER_SECOND = 400.0
EXPOSURE = 0.05
N_FRAMES = 8
FIELD = "det_image"


class SignedDarkSubtraction(bluesky_darkframes.DarkSubtraction):
    """``DarkSubtraction`` that keeps the sign: ``light - dark``.

    The stock ``subtract`` clips the result at 0 (and adds a pedestal to keep it above);
    for an integrating detector the dark-subtracted value of a dim pixel is readout noise
    around a few photons, negative about as often as positive, and clipping it would bias
    every total upwards. The frames are int32, so the difference keeps its sign.
    """

    def subtract(self, light, dark):
        return (np.asarray(light) - dark).astype(light.dtype)


@pytest.fixture(scope="module")
def flat_panel_ioc():
    pin_ca_to_loopback()
    ioc = start_beamline_ioc(scene="powder", shape=SHAPE, seed=2,
                             counts_per_second=COUNTS_PER_SECOND, gain=GAIN,
                             read_noise=READ_NOISE, dark_offset=DARK_OFFSET)
    try:
        yield ioc
    finally:
        ioc.stop()
        assert not ioc.running


def dark_frame_preprocessor(det, shutter):
    """Take a dark frame (shutter closed) before the first frame of each run."""

    def dark_plan(detector):
        yield from bps.mv(shutter, "Close")
        # A group under bluesky-darkframes' prefix: the preprocessor does not wrap this
        # trigger in another dark frame.
        group = short_uid(bluesky_darkframes.GROUP_PREFIX)
        yield from bps.trigger(detector, group=group)
        yield from bps.wait(group=group)
        snapshot = bluesky_darkframes.SnapshotDevice(detector)
        yield from bps.mv(shutter, "Open")
        return snapshot

    return bluesky_darkframes.DarkFramePreprocessor(
        dark_plan=dark_plan, detector=det, max_age=600, locked_signals=[det.cam.acquire_time])


def test_flat_panel_pvs(flat_panel_ioc):
    def read(suffix):
        return ca_read(flat_panel_ioc.pv(suffix)).data

    assert bytes(read("det:DetectorKind_RBV")[0]).decode() == "integrating"
    assert (read("det:Gain_RBV")[0], read("det:ReadNoise_RBV")[0],
            read("det:DarkOffset_RBV")[0]) == (GAIN, READ_NOISE, DARK_OFFSET)


@pytest.mark.parametrize("subtraction", ["stock", "signed"])
def test_dark_subtracted_flat_panel_frames_are_denoised_in_adu(flat_panel_ioc, RE, collector,
                                                               derived, subtraction):
    from bluesky_symdenoise.detector.devices import make_beamline_devices

    det, _, shutter = make_beamline_devices(flat_panel_ioc.prefix)
    RE(bps.mv(det.cam.acquire_time, EXPOSURE, shutter, "Open"))
    RE.preprocessors.append(dark_frame_preprocessor(det, shutter))

    sd = SymDenoise(FIELD, poni=str(flat_panel_ioc.poni_path),
                    mask=str(flat_panel_ioc.mask_path), detector="integrating", budget_s=0)
    sd.subscribe(derived)
    subtracted = DocumentCollector()  # what SymDenoise receives

    pedestal = PEDESTAL if subtraction == "stock" else 0.0

    def dark_subtraction_then_symdenoise(name, start):
        # Stock: light - (dark - pedestal), clipped at 0; signed: light - dark.
        router = (bluesky_darkframes.DarkSubtraction(FIELD, pedestal=int(PEDESTAL))
                  if subtraction == "stock" else SignedDarkSubtraction(FIELD, pedestal=0))

        def route(name, doc):  # every stream: the plugin sets the dark stream aside
            name, doc = router(name, doc)
            subtracted(name, doc)
            sd(name, doc)

        return [route], []

    RE.subscribe(collector)
    RE.subscribe(RunRouter([dark_subtraction_then_symdenoise]))
    uid = count_and_drain(RE, det, sd, N_FRAMES)
    assert collector.unchanged(), "a raw document was changed"

    # The raw run: one dark frame (shutter closed), then the light frames, in ADU.
    (raw_stop,) = collector.of("stop")
    assert raw_stop["exit_status"] == "success"
    assert raw_stop["num_events"] == {"dark": 1, "primary": N_FRAMES}
    assert shutter.is_open
    mask = np.load(flat_panel_ioc.mask_path)
    (dark_event,) = collector.stream("dark")
    dark = np.asarray(dark_event["data"][FIELD], np.float64)
    readout = dark[~mask]
    readout = readout[np.abs(readout - np.median(readout)) < 10 * READ_NOISE]  # no hot pixels
    assert readout.size > 0.99 * (~mask).sum()
    assert readout.mean() == pytest.approx(DARK_OFFSET, abs=0.2)
    assert readout.std() == pytest.approx(READ_NOISE, rel=0.05)

    # What DarkSubtraction handed on: the light frames minus the dark, marked as such.
    (light_descriptor,) = [d for d in subtracted.of("descriptor") if d["name"] == "primary"]
    assert f"{FIELD}_is_background_subtracted" in light_descriptor["data_keys"]
    # (A RunRouter hands events on as event pages.)
    light = [event for page in subtracted.of("event_page")
             if page["descriptor"] == light_descriptor["uid"]
             for event in unpack_event_page(page)]
    assert len(light) == N_FRAMES
    assert all(e["data"][f"{FIELD}_is_background_subtracted"] for e in light)
    raw_light = np.stack([np.asarray(e["data"][FIELD]) for e in collector.stream("primary")])
    frames = np.stack([np.asarray(e["data"][FIELD]) for e in light]).astype(np.float64)
    if subtraction == "stock":
        np.testing.assert_array_equal(
            frames, np.clip(raw_light - np.clip(dark - PEDESTAL, 0, None), 0, None))
    else:
        np.testing.assert_array_equal(frames, raw_light - dark)
        negative = int((frames[:, ~mask] < 0).sum())
        assert negative > 100, "no negative dark-subtracted values: the test proves nothing"

    # The derived run: complete, one frame per light frame, the scan's own gain found, in
    # ADU with the totals kept.
    (start,) = derived.of("start")
    assert start["original_run_uid"] == uid
    (stop,) = derived.of("stop")
    assert stop["exit_status"] == "success", stop.get("reason")
    denoised = derived.stream("denoised")
    assert [e["data"]["raw_seq_num"] for e in denoised] == list(range(1, N_FRAMES + 1))
    noise = start["symdenoise"]["engine"]["detector_noise"]
    assert noise["kind"] == "integrating" and noise["source"]
    assert noise["offset"] == pedestal  # the pedestal DarkSubtraction left in the frames
    assert start["symdenoise"]["darks"]["frames_subtracted_here"] == 0  # never twice
    assert noise["gain"] == pytest.approx(GAIN, rel=0.15), noise
    (descriptor,) = [d for d in derived.of("descriptor") if d["name"] == "denoised"]
    assert descriptor["data_keys"][f"{FIELD}_denoised"]["units"] == "ADU"
    out = np.stack([np.asarray(e["data"][f"{FIELD}_denoised"], np.float64) for e in denoised])
    assert out.shape == (N_FRAMES, *SHAPE)
    raw_totals = frames[:, ~mask].sum(axis=1)
    out_totals = out[:, ~mask].sum(axis=1)
    np.testing.assert_allclose(out_totals, raw_totals, rtol=0.01)
    derived.validate()
