"""The live plugin on an integrating detector's dark-subtracted ADU frames (a real RunEngine,
frames inline in events): negative values pass, totals and units are the detector's."""

from __future__ import annotations

import json

import numpy as np
import pytest
from bluesky import plans as bp
from ophyd.sim import DirectImage

from bluesky_symdenoise.denoise.engine import scan_geometry
from bluesky_symdenoise.integrate.azimuthal import integrator_for
from bluesky_symdenoise.stream.callback import SymDenoise

GAIN, READ_NOISE = 7.0, 4.0
N_FRAMES = 6


class FlatPanelFrames:
    """Dark-subtracted flat-panel frames of a scene: gain × Poisson photons + readout."""

    def __init__(self, scene, seed: int = 0) -> None:
        self.scene, self.rng = scene, np.random.default_rng(seed)

    def __call__(self) -> np.ndarray:
        photons = self.rng.poisson(self.scene.scaled(1.0))
        frame = GAIN * photons + self.rng.normal(0.0, READ_NOISE, photons.shape)
        frame[self.scene.mask] = 0.0
        return frame.astype(np.float32)


def run_scan(RE, detector, collector, derived, sd, md=None):
    RE.subscribe(collector)
    RE.subscribe(sd)
    sd.subscribe(derived)
    RE(bp.count([detector], num=N_FRAMES), **(md or {}))
    assert sd.flush(timeout=120)
    sd.close()


@pytest.mark.slow
def test_flat_panel_frames_are_denoised_in_adu(RE, scene, collector, derived):
    detector = DirectImage(func=FlatPanelFrames(scene, seed=1), name="det")
    sd = SymDenoise(field="det_img", center=scene.geometry.center, mask=scene.mask,
                    budget_s=0, detector="integrating")
    run_scan(RE, detector, collector, derived, sd)
    assert sd.errors == []
    (start,) = derived.of("start")
    record = start["symdenoise"]["engine"]["detector_noise"]
    assert record["kind"] == "integrating"
    assert abs(record["gain"] / GAIN - 1) < 0.10
    assert abs(record["read_noise"] / READ_NOISE - 1) < 0.10
    (stop,) = derived.of("stop")
    assert stop["exit_status"] == "success"

    raw = np.stack([e["data"]["det_img"] for e in collector.of("event")]).astype(np.float64)
    good = scene.usable
    assert (raw[:, good] < 0).mean() > 0.1  # negative values are ordinary data here
    denoised = derived.stream("denoised")
    assert len(denoised) == N_FRAMES
    for event, frame in zip(denoised, raw, strict=True):
        assert "negative" not in event["data"]["det_img_flags"]
        out = np.asarray(event["data"]["det_img_denoised"], np.float64)
        assert abs(out[good].sum() / frame[good].sum() - 1) < 0.01
    (descriptor,) = [d for d in derived.of("descriptor") if d["name"] == "denoised"]
    assert descriptor["data_keys"]["det_img_denoised"]["units"] == "ADU"

    # The raw I(q) published is the raw ADU frame's own integration (same bins, same mask).
    integrated = derived.stream("integrated")[0]["data"]
    (iq_descriptor,) = [d for d in derived.of("descriptor") if d["name"] == "integrated"]
    assert iq_descriptor["data_keys"]["det_img_iq_raw"]["units"] == "ADU/pixel"
    npt = len(integrated["q"])
    bad = ~good
    geometry = scan_geometry(scene.mask.shape, center=scene.geometry.center)
    direct = integrator_for(geometry, bad).integrate(raw[0], npt=npt)
    iq_raw = np.asarray(integrated["det_img_iq_raw"])
    use = np.isfinite(iq_raw) & np.isfinite(direct.intensity) & (direct.intensity != 0)
    assert use.sum() > 10
    # (the plugin's mask also holds the defects it found itself: a few pixels may differ)
    np.testing.assert_allclose(iq_raw[use], direct.intensity[use], rtol=0.02,
                               atol=0.02 * np.abs(direct.intensity[use]).max())


@pytest.mark.slow
def test_the_start_document_can_say_the_detector(RE, scene, collector, derived):
    detector = DirectImage(func=FlatPanelFrames(scene, seed=2), name="det")
    sd = SymDenoise(field="det_img", center=scene.geometry.center, mask=scene.mask,
                    budget_s=0)
    run_scan(RE, detector, collector, derived, sd,
             md={"detector_noise": {"kind": "integrating", "gain": GAIN,
                                    "read_noise": READ_NOISE}})
    assert sd.errors == []
    (start,) = derived.of("start")
    record = start["symdenoise"]["engine"]["detector_noise"]
    assert (record["gain"], record["read_noise"], record["source"]) == (GAIN, READ_NOISE,
                                                                       "given")
    raw = np.stack([e["data"]["det_img"] for e in collector.of("event")]).astype(np.float64)
    good = scene.usable
    for event, frame in zip(derived.stream("denoised"), raw, strict=True):
        out = np.asarray(event["data"]["det_img_denoised"], np.float64)
        assert abs(out[good].sum() / frame[good].sum() - 1) < 0.01


OFFSET, PEDESTAL = 300.0, 100.0


class ShutteredFlatPanel(FlatPanelFrames):
    """Raw (not dark-subtracted) frames with a dark level; dark frames when ``closed``."""

    closed = False

    def __call__(self) -> np.ndarray:
        photons = (np.zeros(self.scene.mask.shape, np.int64) if self.closed
                   else self.rng.poisson(self.scene.scaled(1.0)))
        frame = GAIN * photons + OFFSET + self.rng.normal(0.0, READ_NOISE, photons.shape)
        frame[self.scene.mask] = 0.0
        return frame.astype(np.float32)


def dark_then_light(detector, frames, num=N_FRAMES):
    """One dark (shutter closed) in a 'dark' stream, then ``num`` light frames."""
    from bluesky import plan_stubs as bps
    from bluesky import preprocessors as bpp

    @bpp.stage_decorator([detector])
    @bpp.run_decorator()
    def plan():
        frames.closed = True
        yield from bps.trigger_and_read([detector], name="dark")
        frames.closed = False
        for _ in range(num):
            yield from bps.trigger_and_read([detector])

    return plan()


def run_dark_scan(RE, frames, sd, derived, subscribers):
    """A dark, then light frames, through ``subscribers``; the derived start document."""
    for subscriber in subscribers:
        RE.subscribe(subscriber)
    sd.subscribe(derived)
    RE(dark_then_light(DirectImage(func=frames, name="det"), frames))
    assert sd.flush(timeout=120)
    sd.close()
    assert sd.errors == []
    (start,) = derived.of("start")
    return start


@pytest.mark.slow
def test_the_plugin_subtracts_the_runs_dark_once(RE, scene, collector, derived):
    sd = SymDenoise(field="det_img", center=scene.geometry.center, mask=scene.mask,
                    budget_s=0, detector="integrating")
    start = run_dark_scan(RE, ShutteredFlatPanel(scene, seed=3), sd, derived,
                          [collector, sd])
    assert start["symdenoise"]["darks"]["dark_frames_seen"] == 1
    record = start["symdenoise"]["engine"]["detector_noise"]
    assert record["offset"] == 0.0 and abs(record["gain"] / GAIN - 1) < 0.10
    denoised = derived.stream("denoised")
    assert len(denoised) == N_FRAMES  # the dark is not one of the scan's frames
    (summary,) = derived.stream("summary")
    good = scene.usable
    dark = next(np.asarray(e["data"]["det_img"], np.float64) for e in collector.of("event")
                if e["seq_num"] == 1)
    light = [np.asarray(e["data"]["det_img"], np.float64) for e in collector.of("event")][1:]
    for event, frame in zip(denoised, light, strict=True):
        out = np.asarray(event["data"]["det_img_denoised"], np.float64)
        # dark-subtracted by the plugin: the photons' ADU, not the offset's
        assert abs(out[good].sum() / (frame - dark)[good].sum() - 1) < 0.01
    assert abs(np.mean([np.asarray(e["data"]["det_img_denoised"])[good].mean()
                        for e in denoised]) / (GAIN * scene.scaled(1.0)[good].mean()) - 1) < 0.05
    darks = json.loads(summary["data"]["provenance"])["darks"]
    assert darks["dark_frames_seen"] == 1 and darks["frames_subtracted_here"] == N_FRAMES


@pytest.mark.slow
def test_frames_subtracted_upstream_by_darkframes_are_not_subtracted_again(
        RE, scene, collector, derived):
    bluesky_darkframes = pytest.importorskip("bluesky_darkframes")
    subtraction = bluesky_darkframes.DarkSubtraction("det_img", pedestal=PEDESTAL)
    sd = SymDenoise(field="det_img", center=scene.geometry.center, mask=scene.mask,
                    budget_s=0)  # not told: the DarkSubtraction marker says it
    subtracted = []

    def upstream(name, doc):
        name, doc = subtraction(name, doc)
        subtracted.append((name, doc))
        sd(name, doc)

    start = run_dark_scan(RE, ShutteredFlatPanel(scene, seed=4), sd, derived, [upstream])
    assert start["symdenoise"]["darks"]["subtracted_upstream"]
    assert start["symdenoise"]["darks"]["frames_subtracted_here"] == 0
    assert not [w for w in start["symdenoise"]["warnings"] if "not subtracted" in w]
    record = start["symdenoise"]["engine"]["detector_noise"]
    assert record["kind"] == "integrating" and record["offset"] == PEDESTAL
    assert abs(record["gain"] / GAIN - 1) < 0.10
    assert abs(record["read_noise"] / READ_NOISE - 1) < 0.25  # the dark's own noise adds
    light = [np.asarray(d["data"]["det_img"], np.float64) for n, d in subtracted
             if n == "event" and "det_img_is_background_subtracted" in d["data"]]
    good = scene.usable
    denoised = derived.stream("denoised")
    assert len(denoised) == len(light) == N_FRAMES
    for event, frame in zip(denoised, light, strict=True):
        out = np.asarray(event["data"]["det_img_denoised"], np.float64)
        assert abs(out[good].sum() / frame[good].sum() - 1) < 0.01
