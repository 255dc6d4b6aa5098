"""Partner maps, centre refinement and the local symmetry test."""

import numpy as np
import pytest

from bluesky_symdenoise.denoise.symmetry import (
    RingEquivalence,
    mirror,
    refine_center,
    rotation180,
    symmetry_validity,
)
from bluesky_symdenoise.simulate import scenes

GENERIC = (60.37, 71.81)


@pytest.mark.parametrize("partner", [rotation180((128, 140), GENERIC),
                                     mirror((128, 140), GENERIC, 0.0),
                                     mirror((128, 140), GENERIC, 37.0)])
def test_partner_of_partner_is_identity(partner):
    rows, cols = np.indices(partner.shape, dtype=float)
    r1, c1 = partner.map_points(rows, cols)
    assert not np.allclose(r1, rows) or not np.allclose(c1, cols)
    r2, c2 = partner.map_points(r1, c1)
    np.testing.assert_allclose(r2, rows, atol=1e-9)
    np.testing.assert_allclose(c2, cols, atol=1e-9)


def test_rotation_partner_of_a_symmetric_pattern_matches_it_at_a_generic_centre():
    rows, cols = np.indices((128, 140), dtype=float)
    radius = np.hypot(rows - GENERIC[0], cols - GENERIC[1])
    image = 5 + 3 * np.cos(radius / 4.0)
    sample = rotation180(image.shape, GENERIC).sample(image)
    inner = sample.valid & (radius < 50)
    assert inner.sum() > 5000
    np.testing.assert_allclose(sample.values[inner], image[inner], rtol=0.03)
    # Bilinear resampling of a generic centre averages neighbours: variance factor < 1.
    assert 0.25 <= sample.weight_sq[inner].min() and sample.weight_sq[inner].max() < 1


def test_half_integer_centre_gives_exact_pixel_partners():
    image = np.random.default_rng(0).random((64, 64))
    sample = rotation180(image.shape, (31.5, 32.0)).sample(image)
    assert np.allclose(sample.weight_sq[sample.valid], 1.0)
    assert sample.values[10, 10] == pytest.approx(image[53, 54])


def test_masked_partners_are_invalid():
    image = np.ones((64, 64))
    mask = np.zeros((64, 64), bool)
    mask[10, 20] = True
    values, valid = rotation180(image.shape, (31.5, 31.5)).apply(image, mask)
    assert not valid[53, 43] and valid[53, 44]


def test_ring_partner_mean_excludes_the_pixel_itself():
    image = np.zeros((64, 64))
    image[32, 40] = 100.0
    mean, others = RingEquivalence((64, 64), (32.0, 32.0)).partner_mean(image)
    assert mean[32, 40] == 0.0 and others[32, 40] > 10
    assert mean[32, 24] > 0


def test_centre_refinement_recovers_a_known_centre_within_a_tenth_of_a_pixel():
    scene = scenes.make_scene("powder", shape=(192, 192), seed=3)
    rng = np.random.default_rng(1)
    total = sum(scene.expose(20.0, rng) for _ in range(2)).astype(float)
    true = scene.geometry.center
    start = (true[0] + 1.3, true[1] - 0.8)
    refined = refine_center(total, start, scene.mask | scene.defects.bad)
    assert abs(refined[0] - true[0]) < 0.1 and abs(refined[1] - true[1]) < 0.1


def test_broken_symmetry_is_flagged_and_symmetric_scenes_are_not():
    rng = np.random.default_rng(2)
    one_sided = scenes.make_scene("lattice_one_sided", shape=(192, 192), seed=5)
    frames = np.stack([one_sided.expose(1.0, rng) for _ in range(3)]).sum(0)
    bad = one_sided.mask | one_sided.defects.bad
    report = symmetry_validity(frames, one_sided.geometry.center, bad)
    feature = one_sided.regions["one_sided_feature"] & ~bad
    assert report.violation[feature].mean() > 0.5
    symmetric = scenes.make_scene("lattice", shape=(192, 192), seed=5)
    frames = np.stack([symmetric.expose(1.0, rng) for _ in range(3)]).sum(0)
    clean = symmetry_validity(frames, symmetric.geometry.center,
                              symmetric.mask | symmetric.defects.bad)
    assert clean.fraction_violated < 0.01
    assert clean.fraction_violated < report.fraction_violated


def test_ring_profile_reproduces_a_radial_pattern_at_a_generic_centre():
    from bluesky_symdenoise.denoise.symmetry import ring_profile

    rows, cols = np.indices((128, 140), dtype=float)
    radius = np.hypot(rows - GENERIC[0], cols - GENERIC[1])
    image = 2 + 10 * np.exp(-0.5 * ((radius - 40) / 1.5) ** 2)  # a sharp ring, FWHM 3.5 px
    good = np.ones(image.shape, bool)
    whole, support = ring_profile(image.shape, GENERIC, 1).mean(image, good)
    arcs, _ = ring_profile(image.shape, GENERIC, 16).mean(image, good)
    inner = (radius > 5) & (radius < 55)
    for mean in (whole, arcs):
        # sub-pixel splitting keeps a sharp ring's height to a few per cent
        assert np.max(np.abs(mean[inner] - image[inner]) / image[inner]) < 0.06
    assert support[inner].min() > 10


def test_isotropy_test_flags_texture_and_spots_not_rings():
    from bluesky_symdenoise.denoise.preprocess import prepare_frames
    from bluesky_symdenoise.denoise.symmetry import isotropy_validity

    fractions = {}
    for kind in ("powder", "textured", "lattice"):
        scene = scenes.make_scene(kind, shape=(192, 192), seed=21)
        rng = np.random.default_rng(2)
        prepared = prepare_frames(np.stack([scene.expose(2.0, rng) for _ in range(3)]),
                                  scene.mask, bad_pixels="mask")
        for sectors in (1, 16):
            report = isotropy_validity(prepared.frames.sum(0), scene.geometry.center,
                                       prepared.bad, sectors=sectors)
            fractions[kind, sectors] = report.fraction_violated
    assert fractions["powder", 1] < 0.02 and fractions["powder", 16] < 0.02
    # texture breaks whole rings; 22.5° arcs follow it where it is slow
    assert fractions["textured", 1] > 0.3 > fractions["textured", 16], fractions
    assert fractions["lattice", 1] > 0.5 and fractions["lattice", 16] > 0.5, fractions


def test_the_local_tests_of_a_large_detector_in_float32_bands_match_the_whole_frame(
        monkeypatch):
    """Above ``TAPS_KEPT_UP_TO`` pixels the 180° and isotropy tests run in float32, in bands
    of rows with a halo: the same verdicts as the whole frame in float64."""
    from bluesky_symdenoise.denoise import symmetry
    from bluesky_symdenoise.simulate.scenes import make_scene

    scene = make_scene("textured", shape=(300, 280), seed=3)
    image = scene.expose(20.0, np.random.default_rng(3))
    center = scene.geometry.center
    whole = (symmetry.symmetry_validity(image, center, scene.mask),
             symmetry.isotropy_validity(image, center, scene.mask, sectors=16))
    monkeypatch.setattr(symmetry, "TAPS_KEPT_UP_TO", 1000)
    monkeypatch.setattr(symmetry, "BAND_ROWS", 40)
    banded = (symmetry.symmetry_validity(image, center, scene.mask),
              symmetry.isotropy_validity(image, center, scene.mask, sectors=16))
    for full, band in zip(whole, banded, strict=True):
        assert band.z_max.dtype == np.float32
        np.testing.assert_allclose(band.z_max, full.z_max, rtol=1e-4, atol=1e-4)
        assert (band.valid != full.valid).mean() < 1e-4
        assert full.violation.any()  # the texture is found, in both
        assert band.fraction_violated == pytest.approx(full.fraction_violated, abs=1e-4)
