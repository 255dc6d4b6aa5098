"""The live plugin on a whole Pilatus1M (pyFAI's registry): int32 frames with -1 in the
module gaps and -2 on flagged pixels, geometry from a PONI that names the detector."""

from __future__ import annotations

import numpy as np
import pytest
from bluesky import plans as bp
from ophyd.sim import DirectImage

from bluesky_symdenoise.geometry import detector_mask
from bluesky_symdenoise.simulate.detectors import simulate_detector_scan
from bluesky_symdenoise.stream.callback import SymDenoise

N_FRAMES = 3


@pytest.fixture(scope="module")
def pilatus():
    return simulate_detector_scan("Pilatus1M", scene="powder", counts=2.0,
                                  frames=N_FRAMES, seed=5)


def test_pilatus1m_gaps_come_from_the_poni_and_read_zero(RE, pilatus, collector, derived):
    assert pilatus.poni["detector"] == "Pilatus1M"
    frames = iter(pilatus.frames)
    detector = DirectImage(func=lambda: next(frames), name="det")
    # The PONI's centre is exact: refining it costs ~25 s on 1 Mpx with 2 shared cores.
    sd = SymDenoise("det_img", poni=pilatus.poni, budget_s=0, inline_limit_bytes=8_000_000,
                    config={"refine_center": False})
    RE.subscribe(collector)
    RE.subscribe(sd)
    sd.subscribe(derived)
    RE(bp.count([detector], num=N_FRAMES))
    assert sd.flush(timeout=120)
    sd.close()
    assert sd.errors == []

    (start,) = derived.of("start")
    provenance = start["symdenoise"]
    assert provenance["geometry"]["detector_name"] == "Pilatus1M"
    assert provenance["geometry"]["shape"] == [1043, 981]
    n_gaps = int(detector_mask("Pilatus1M").sum())
    assert n_gaps == int(pilatus.mask.sum()) > 0
    assert f"Pilatus1M: {n_gaps} module-gap pixels masked" in " ".join(provenance["notes"])
    # The flagged pixels (-2) are the detector's markers: masked, not refused as negative.
    engine_notes = " ".join(provenance["engine"]["notes"])
    assert f"masked {int(pilatus.flagged.sum())} pixels holding the detector's" in engine_notes
    assert not any("negative" in w for w in provenance["warnings"])

    events = derived.stream("denoised")
    assert len(events) == N_FRAMES
    good = ~pilatus.mask & ~pilatus.flagged
    counting = good & ~pilatus.scene.defects.hot  # hot pixels are repaired, not kept
    for event, raw in zip(events, pilatus.frames, strict=True):
        out = np.asarray(event["data"]["det_img_denoised"])
        assert out.shape == (1043, 981) and out.dtype == np.float32
        assert np.all(out[pilatus.mask] == 0) and np.all(out[pilatus.flagged] == 0)
        assert np.all(np.isfinite(out)) and out[good].min() >= 0
        # Total counts kept over the pixels that count the scene.
        assert abs(out[counting].sum() / raw[counting].sum() - 1) < 0.01
        # No pixel was refused or skipped: gaps and markers are in the scan's mask.
        assert "skipped" not in event["data"]["det_img_flags"]
    # Denoised frames are closer to the truth than raw ones (hot pixels aside).
    raw_err = np.mean([(f[counting] - pilatus.truth[counting]) ** 2 for f in pilatus.frames])
    out_err = np.mean([(np.asarray(e["data"]["det_img_denoised"])[counting]
                        - pilatus.truth[counting]) ** 2 for e in events])
    assert out_err < 0.5 * raw_err
    assert len(derived.stream("integrated")) == N_FRAMES
    derived.validate()
    assert collector.unchanged()
