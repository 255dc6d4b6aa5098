"""The live plugin on an integrating detector's dark-subtracted ADU frames (a real RunEngine,
frames inline in events): negative values pass, totals and units are the detector's."""

from __future__ import annotations

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
