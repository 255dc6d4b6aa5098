"""Row 3: missing or wrong geometry gives one clear message, symmetry-free denoising and a
record in the derived run's provenance; the scan and the derived run carry on."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from bluesky import plans as bp
from ophyd.sim import DirectImage

CASES = {
    "none": ({}, "no geometry"),
    "centre-off-detector": ({"center": (400.0, -300.0)}, "lies off the (64, 64) detector"),
    "mask-wrong-shape": ({"mask": np.zeros((32, 32), bool)}, "mask shape (32, 32)"),
    "poni-missing-file": ({"poni": "/nonexistent/calib.poni"}, "geometry unusable"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_wrong_geometry_falls_back_without_symmetry(harness, scene, frames, caplog, case):
    kwargs, message = CASES[case]
    if case == "mask-wrong-shape":
        kwargs = {**kwargs, "center": scene.geometry.center}
    harness.plugin("det_img", budget_s=0, **kwargs)
    with caplog.at_level(logging.WARNING, logger="bluesky_symdenoise"):
        harness.RE(bp.count([DirectImage(func=frames, name="det")], num=6))
        (stop,) = harness.finish().values()
    assert stop["exit_status"] == "success"
    provenance = harness.derived.of("start")[0]["symdenoise"]
    warned = [w for w in provenance["warnings"] if message in w]
    assert len(warned) == 1, provenance["warnings"]
    assert "symmetry-free" in warned[0]
    logged = [r for r in caplog.records if message in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in caplog.records]
    # The fallback: no geometry, no symmetry used, no I(q); every frame still published.
    assert provenance["geometry"] is None
    assert provenance["engine"]["symmetry"] is None, provenance["engine"].get("symmetry")
    assert harness.derived.stream("integrated") == []
    assert len(harness.derived.stream("denoised")) == 6
    summary = json.loads(harness.derived.stream("summary")[0]["data"]["provenance"])
    assert warned[0] in summary["warnings"]
    assert harness.sd.errors == []
