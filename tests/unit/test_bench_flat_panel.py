"""The flat-panel bench's counting twin: the same photons counted, like for like."""

from __future__ import annotations

import numpy as np
import pytest

from bench.flat_panel import DETECTOR, counting_twin, make_flat_scan
from bluesky_symdenoise.simulate import scenes


@pytest.mark.fast
def test_a_counting_twin_counts_the_integrating_scans_photons():
    scene = scenes.make_scene("lattice_one_sided", shape=(96, 96), seed=7, detector=DETECTOR)
    scan = make_flat_scan(scene, 1.0, gain=7.0, read_noise=4.0, psf_sigma=0.5, n_frames=3,
                          seed=8)
    twin = counting_twin(scan, seed=9)
    assert twin.shape == scan.frames.shape
    assert np.issubdtype(twin.dtype, np.integer) and twin.min() >= 0
    assert np.all(twin[:, scene.mask] == 0)
    # Poisson of the blurred truth: on the usable pixels its total is the truth's within a
    # few Poisson sigmas, and so is the integrating scan's in photons.
    usable = scan.scored
    expected = 3 * float(scan.truth[usable].sum())
    for total in (float(twin[:, usable].sum()),
                  float(scan.frames[:, usable].astype(np.float64).sum()) / scan.gain):
        assert abs(total - expected) < 5 * np.sqrt(expected) + 0.01 * expected
    # the feature is there, unpaired, in the twin's counts too
    region = scene.regions["one_sided_feature"] & usable
    assert twin[:, region].sum() > 0.9 * 3 * scan.truth[region].sum()
