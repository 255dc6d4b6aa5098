"""The flat-panel bench: its counting twins (the same photons counted, like for like, and
counted at matched information) and its fixed training length (``--steps``)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.flat_panel import DETECTOR, _denoise, counting_twin, make_flat_scan, matched_scale
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


@pytest.mark.fast
def test_a_twin_at_matched_information_knows_the_features_total_as_well_as_the_scan():
    scene = scenes.make_scene("lattice_one_sided", shape=(96, 96), seed=7, detector=DETECTOR)
    plain = make_flat_scan(scene, 1.0, gain=7.0, read_noise=0.0, psf_sigma=0.5, n_frames=2,
                           seed=8)
    assert matched_scale(plain) == pytest.approx(1.0)
    # Readout-dominated, with a spread: the feature's total over many frames gives its
    # signal-to-noise ratio.
    scan = make_flat_scan(scene, 1.0, gain=3.0, read_noise=6.0, psf_sigma=0.5, n_frames=80,
                          seed=8)
    scale = matched_scale(scan)
    assert 0.0 < scale < 0.5
    region = scene.regions["one_sided_feature"] & scan.scored

    def snr_squared(frames: np.ndarray) -> float:
        totals = frames[:, region].astype(np.float64).sum(axis=1)
        return float(totals.mean() ** 2 / totals.var(ddof=1))

    integrated = snr_squared(scan.frames)
    assert snr_squared(counting_twin(scan, seed=9, scale=scale)) == pytest.approx(
        integrated, rel=0.3)
    # the plain twin knows it several times better: readout noise of 2 photons rms a pixel
    # next to a feature of about 2 photons a pixel
    assert snr_squared(counting_twin(scan, seed=9)) > 2.5 * integrated


def test_steps_fix_ours_training_length_not_the_budget():
    scene = scenes.make_scene("powder", shape=(64, 64), seed=3, detector=DETECTOR)
    scan = make_flat_scan(scene, 1.0, gain=7.0, read_noise=4.0, psf_sigma=0.0, n_frames=3,
                          seed=4)
    result, _ = _denoise(scan, "symmetry", budget=120.0, steps=3)
    assert result.provenance["training"]["steps"] == 3
    again, _ = _denoise(scan, "symmetry", budget=120.0, steps=3)
    np.testing.assert_array_equal(again.denoised, result.denoised)  # seeded: the same network
