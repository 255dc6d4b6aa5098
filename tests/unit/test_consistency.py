"""Holding the network's frames to the raw counts: rings and features without a partner."""

import numpy as np
import pytest
from scipy import ndimage

from bluesky_symdenoise import ScanDenoiser
from bluesky_symdenoise.denoise.channels import ChannelContext
from bluesky_symdenoise.denoise.consistency import RawConsistency
from bluesky_symdenoise.physics import scenes
from bluesky_symdenoise.physics.symmetry import rotate180


def _scan(kind, counts, seed):
    """A scene, its truth at ``counts`` per pixel, 3 noisy frames and their consistency."""
    scene = scenes.make_scene(kind, shape=(160, 160), seed=seed)
    rng = np.random.default_rng(seed)
    frames = np.stack([scene.expose(counts, rng) for _ in range(3)]).astype(np.float64)
    return scene, scene.scaled(counts), frames, _consistency(frames, scene)


def _consistency(frames, scene):
    good = ~scene.mask
    scan_sum = np.where(good, frames.sum(0), 0.0)
    center = scene.geometry.center
    context, _, _ = ChannelContext.from_scan_sum(scan_sum, good, center, z_threshold=5.5)
    return RawConsistency.for_scan(scan_sum, good, center, rings=context.rings,
                                   ring_valid=context.ring_valid, arc_valid=context.arc_valid)


def _ratio(estimate, truth, region):
    return float(estimate[region].sum() / truth[region].sum())


def test_a_broadened_ring_gets_back_the_raw_ring_intensity():
    scene, truth, frames, consistency = _scan("powder", 4.0, seed=3)
    assert consistency.ring_pixels.mean() > 0.5
    # What a smoothness prior does to a sharp ring: broader and lower.
    smoothed = ndimage.gaussian_filter(truth, 2.0)
    ring = scene.regions["strongest_ring"] & scene.usable
    assert _ratio(smoothed, truth, ring) < 0.85
    held = np.stack([consistency.apply(f, smoothed) for f in frames])
    assert abs(_ratio(held.mean(0), truth, ring) - 1) < 0.03


def test_a_feature_without_partner_keeps_its_raw_intensity():
    scene, truth, frames, consistency = _scan("lattice_one_sided", 2.0, seed=4)
    feature = scene.regions["one_sided_feature"] & scene.usable
    assert feature.any()
    # What a symmetry-averaging denoiser does to it: halves it.
    partner, ok = rotate180(truth, scene.geometry.center, scene.mask)
    averaged = np.where(ok, 0.5 * (truth + partner), truth)
    assert _ratio(averaged, truth, feature) < 0.75
    assert consistency.features[feature].mean() > 0.5
    held = np.stack([consistency.apply(f, averaged) for f in frames])
    assert abs(_ratio(held.mean(0), truth, feature) - 1) < 0.12
    assert np.all(held >= 0)
    # A lattice has no symmetric rings: away from the features nothing changes.
    assert consistency.rings is None
    away = ~ndimage.binary_dilation(consistency.features, iterations=3) & ~scene.mask
    np.testing.assert_allclose(held[0][away], averaged[away], rtol=1e-5)


def test_without_a_beam_centre_nothing_is_changed():
    scene = scenes.make_scene("powder", shape=(64, 64), seed=5)
    frame = scene.expose(1.0, np.random.default_rng(3)).astype(np.float64)
    good = ~scene.mask
    consistency = RawConsistency.for_scan(frame, good, None)
    estimate = ndimage.gaussian_filter(scene.scaled(1.0), 1.5).astype(np.float32)
    np.testing.assert_array_equal(consistency.apply(frame, estimate)[good], estimate[good])
    assert consistency.summary()["feature_pixels_fraction"] == 0


@pytest.mark.parametrize("kind, expected", [("lattice_one_sided", "thinning"),
                                            ("powder", "symmetry")])
def test_auto_avoids_symmetry_where_many_features_lack_a_partner(kind, expected):
    scene = scenes.make_scene(kind, shape=(160, 160), seed=6)
    rng = np.random.default_rng(4)
    frames = np.stack([scene.expose(1.0, rng) for _ in range(3)])
    denoiser = ScanDenoiser(budget_s=60)
    analysis = denoiser.analyse(frames, mask=scene.mask, center=scene.geometry.center,
                                bad_pixels="mask")
    method, reason = denoiser.choose_method(analysis, budget_s=60, have_pairs=False)
    assert method == expected, reason
    record = denoiser.provenance(analysis, method, reason, 0.0)
    assert 0 <= record["raw_consistency"]["feature_pixels_fraction"] <= 1
