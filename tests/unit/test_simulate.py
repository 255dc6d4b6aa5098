"""Synthetic physics: detector masks, counting noise, scenes with a known truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from bluesky_symdenoise.simulate.defects import (
    DetectorDefects,
    beamstop_mask,
    detector_mask,
    make_defects,
)
from bluesky_symdenoise.simulate.noise import binomial_thin, expose
from bluesky_symdenoise.simulate.scenes import (
    SCENES,
    Scene,
    SceneSeries,
    insitu_series,
    make_scene,
)

SYMMETRIC_KINDS = ["powder", "textured", "saxs", "fibre", "lattice"]


@pytest.fixture(scope="module")
def scenes() -> dict[str, Scene]:
    return {kind: make_scene(kind, seed=3) for kind in SCENES}


def rotate_180(image: np.ndarray, center: tuple[float, float]) -> np.ndarray:
    """Bilinear resampling of ``image`` at the 180°-rotated position; NaN outside."""
    rows, cols = np.indices(image.shape, dtype=np.float64)
    return map_coordinates(image.astype(np.float64), [2 * center[0] - rows,
                                                      2 * center[1] - cols],
                           order=1, mode="constant", cval=np.nan)


def symmetry_error(scene: Scene, region: np.ndarray | None = None) -> float:
    """Relative L1 difference between the expectation and its 180° rotation."""
    center = scene.geometry.center
    rotated = rotate_180(scene.expectation, center)
    partner_masked = rotate_180(scene.mask.astype(float), center)
    ok = ~scene.mask & (partner_masked == 0) & np.isfinite(rotated)
    if region is not None:
        ok &= region
    assert ok.sum() > 50
    diff = np.abs(scene.expectation - rotated)[ok].sum()
    return float(diff / scene.expectation[ok].sum())


# -- detector -----------------------------------------------------------------------------
def test_detector_mask_crop_contains_real_gaps():
    mask = detector_mask((256, 256))
    assert mask.dtype == bool and mask.shape == (256, 256)
    assert mask.all(axis=1).any(), "no horizontal module gap in the crop"
    assert mask.all(axis=0).any(), "no vertical module gap in the crop"
    assert 0.02 < mask.mean() < 0.3


def test_detector_mask_tiles_past_the_detector_edge():
    mask = detector_mask((300, 300), detector="Pilatus1M", offset=(1000, 900))
    assert mask.shape == (300, 300)
    assert mask.any()


def test_beamstop_disc_and_arm_break_the_mask_symmetry():
    center = (100.37, 120.71)
    shadow = beamstop_mask((256, 256), center, radius=8.0, arm_angle_deg=0.0, arm_width=4.0)
    assert shadow[100, 120] and shadow[100, 255], "disc and arm to the +col edge"
    assert not shadow[100, 0], "the partner side of the arm stays valid"
    assert not shadow[0, 120]
    no_arm = beamstop_mask((256, 256), center, arm_width=0.0)
    assert no_arm.sum() == pytest.approx(np.pi * 64, rel=0.1)


def test_make_defects_counts_and_no_overlap():
    defects = make_defects((256, 256), rng=np.random.default_rng(0))
    assert defects.hot.sum() == round(2e-4 * 256 ** 2)
    assert defects.dead.sum() == round(5e-4 * 256 ** 2)
    assert not (defects.hot & defects.dead).any()
    assert 50 <= defects.hot_rate <= 500


# -- noise --------------------------------------------------------------------------------
def test_expose_photon_counting_and_integrating():
    rng = np.random.default_rng(1)
    lam = np.full((200, 200), 4.0)
    counts = expose(lam, rng=rng)
    assert counts.dtype == np.int32
    assert counts.mean() == pytest.approx(4.0, rel=0.02)
    assert counts.var() == pytest.approx(4.0, rel=0.05)
    frame = expose(lam, rng=rng, readout_sigma=1.5)
    assert frame.dtype == np.float32
    assert frame.var() == pytest.approx(4.0 + 1.5 ** 2, rel=0.05)
    assert expose(lam, rng=rng, saturation=5).max() == 5


def test_expose_applies_hot_and_dead_pixels_regardless_of_scene():
    shape = (50, 50)
    hot = np.zeros(shape, bool)
    dead = np.zeros(shape, bool)
    hot[::5, ::5] = True
    dead[1::5, 1::5] = True
    defects = DetectorDefects(hot=hot, dead=dead, hot_rate=200.0)
    frames = expose(np.zeros((20, *shape)), rng=np.random.default_rng(2), defects=defects)
    assert frames.shape == (20, *shape)
    assert frames[:, hot].mean() == pytest.approx(200.0, rel=0.05)
    assert (frames[:, dead] == 0).all()
    assert (frames[:, ~hot] == 0).all()


def test_binomial_thinning_gives_independent_poisson_halves():
    rng = np.random.default_rng(3)
    lam, p = 3.0, 0.3
    counts = rng.poisson(lam, size=100_000).astype(np.int32)
    part, rest = binomial_thin(counts, p, rng)
    assert part.dtype == np.int32
    np.testing.assert_array_equal(part + rest, counts)
    assert abs(np.corrcoef(part, rest)[0, 1]) < 0.015
    for half, mean in ((part, p * lam), (rest, (1 - p) * lam)):
        assert half.mean() == pytest.approx(mean, rel=0.02)
        assert half.var() == pytest.approx(mean, rel=0.04)  # Poisson: var == mean


def test_binomial_thinning_rounds_float_input():
    part, rest = binomial_thin(np.array([2.6, -1.2, 0.4]), 0.5, np.random.default_rng(0))
    np.testing.assert_array_equal(part + rest, [3, 0, 0])
    with pytest.raises(ValueError):
        binomial_thin(np.ones(3), 1.5, np.random.default_rng(0))


# -- scenes -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(SCENES))
def test_scene_contract(scenes, kind):
    scene = scenes[kind]
    assert scene.name == kind
    assert scene.expectation.shape == (256, 256) and scene.expectation.dtype == np.float64
    assert scene.mask.dtype == bool
    assert scene.expectation[~scene.mask].mean() == pytest.approx(1.0, rel=1e-9)
    assert (scene.expectation > 0).all()
    assert scene.mask.all(axis=0).any() or scene.mask.all(axis=1).any(), "a module gap"
    row, col = (int(round(c)) for c in scene.geometry.center)
    assert scene.mask[row, col], "the beamstop covers the beam centre"
    assert scene.defects.hot.any() and scene.defects.dead.any()
    frac = np.mod(2 * np.asarray(scene.geometry.center), 1.0)
    assert np.all(np.abs(frac - np.rint(frac)) > 0.05), "default centre is generic"
    json.dumps(scene.info)
    for region in scene.regions.values():
        assert region.any() and not (region & scene.mask).any()
    frame = scene.expose(1.0, np.random.default_rng(0))
    assert frame.dtype == np.int32 and (frame[scene.mask] == 0).all()
    assert scene.expose(1.0, np.random.default_rng(0), readout_sigma=1.0).dtype == np.float32


def test_scene_dynamic_range_is_realistic(scenes):
    for kind in ("powder", "lattice"):
        e = scenes[kind].expectation[~scenes[kind].mask]
        assert 10 < e.max() / np.median(e) < 300


def test_scenes_are_reproducible_from_the_seed():
    a = make_scene("lattice", seed=7)
    b = make_scene("lattice", seed=7)
    np.testing.assert_array_equal(a.expectation, b.expectation)
    assert not np.array_equal(a.expectation, make_scene("lattice", seed=8).expectation)


@pytest.mark.parametrize("kind", SYMMETRIC_KINDS)
def test_expectation_is_symmetric_under_180_rotation(scenes, kind):
    # Generic centre: bilinear resampling of 1.5-2 px features costs a few per cent.
    assert symmetry_error(scenes[kind]) < 0.08
    # Integer 2·centre: the rotation maps pixels onto pixels, so symmetry is exact.
    exact = make_scene(kind, seed=3, center=(127.5, 130.0))
    assert symmetry_error(exact) < 1e-6  # pyFAI maps are float32 in places


def test_one_sided_feature_breaks_the_symmetry_only_in_its_region(scenes):
    scene = scenes["lattice_one_sided"]
    region = scene.regions["one_sided_feature"]
    assert symmetry_error(scene, region) > 0.4
    assert symmetry_error(scene, scene.regions["satellites"] & ~region) < 0.08
    per_spot = scene.info["one_sided_integrated"] / scene.info["one_sided_n_spots"]
    assert 30 <= per_spot <= 100


def test_satellites_are_weak_and_present(scenes):
    scene = scenes["lattice"]
    assert scene.info["satellite_ratio"] == pytest.approx(0.01)
    sat = scene.expectation[scene.regions["satellites"]].mean()
    spots = scene.expectation[scene.regions["bragg_spots"]].mean()
    assert sat < spots


@pytest.mark.parametrize("kind", ["powder", "textured", "sharp_textured"])
def test_rings_land_where_pyfai_integrates_them(scenes, kind):
    scene = scenes[kind]
    result = scene.geometry.integrator().integrate1d(
        scene.expectation, 400, unit="q_nm^-1", mask=scene.mask.astype(np.int8))
    q, intensity = np.asarray(result.radial), np.asarray(result.intensity)
    bin_width = q[1] - q[0]
    assert abs(q[np.argmax(intensity)] - scene.info["q_strongest_nm"]) <= 2 * bin_width


def test_sharp_textured_rings_are_about_a_pixel_wide_and_symmetric():
    widths = [make_scene("sharp_textured", seed=seed).info["ring_fwhm_px"]
              for seed in range(6)]
    assert all(0.8 <= w <= 1.5 for w in widths) and np.ptp(widths) > 0.1
    # Integer 2·centre: exact partners, so the expectation is exactly 180°-symmetric.
    exact = make_scene("sharp_textured", seed=3, center=(127.5, 130.0))
    assert symmetry_error(exact) < 1e-6
    # Mild texture: the strongest ring varies by well under a factor 2 around the ring.
    scene = make_scene("sharp_textured", seed=3)
    ring = scene.regions["strongest_ring"]
    cake = scene.geometry.integrator().integrate2d(
        scene.expectation, 100, 36, unit="q_nm^-1", mask=scene.mask.astype(np.int8))
    column = np.asarray(cake.intensity)[:, np.argmax(np.asarray(cake.intensity).sum(0))]
    low, high = np.percentile(column[column > 0], [10, 90])  # past gaps and the arm
    assert ring.any() and 1.05 < high / low < 1.6


def test_powder_512_normalised():
    scene = make_scene("powder", shape=(512, 512), seed=1)
    assert scene.expectation.shape == (512, 512)
    assert scene.expectation[~scene.mask].mean() == pytest.approx(1.0)


def test_make_scene_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown scene kind"):
        make_scene("quasicrystal")


# -- in situ series -----------------------------------------------------------------------
@pytest.mark.parametrize("kind,change", [("powder", "ring_drift"),
                                         ("powder", "lattice_expansion"),
                                         ("powder", "phase_appearing"),
                                         ("lattice", "lattice_expansion")])
def test_insitu_series_changes_frame_to_frame(kind, change):
    series = insitu_series(kind, n_frames=4, change=change, seed=2)
    assert isinstance(series, SceneSeries) and len(series) == 4
    stack = series.expectations
    assert stack.shape == (4, 256, 256)
    assert stack[:, ~series.mask].mean() == pytest.approx(1.0)
    assert len(series.regions) == 4
    steps = [np.abs(stack[i + 1] - stack[i])[~series.mask].mean() for i in range(3)]
    assert min(steps) > 1e-3
    frames = series.expose(1.0, np.random.default_rng(0))
    assert frames.shape == stack.shape and frames.dtype == np.int32
    json.dumps(series.info)


def test_ring_drift_moves_the_strongest_ring_by_the_amount():
    series = insitu_series("powder", n_frames=3, change="ring_drift", amount=0.8)
    radii = np.asarray(series.info["radius_strongest_px"])
    np.testing.assert_allclose(np.diff(radii), 0.8, rtol=1e-6)


def test_phase_appearing_fades_in():
    series = insitu_series("powder", n_frames=4, change="phase_appearing")
    region = series.regions[-1]["new_phase_rings"]
    level = [frame[region].mean() for frame in series.expectations]
    assert np.all(np.diff(level) > 0)


def test_phase_flash_is_in_one_frame_only():
    series = insitu_series("powder", n_frames=5, change="phase_flash")
    k = series.info["flash_frame"]
    assert k == 2
    region = series.regions[k]["new_phase_rings"]
    level = np.array([frame[region].mean() for frame in series.expectations])
    others = np.delete(level, k)
    np.testing.assert_allclose(others, others[0], rtol=1e-9)
    assert level[k] > 1.5 * others[0]
