"""Frame pooling and drifting rings: the whole-profile drift test (denoise/ring_drift.py)."""

import sys

import numpy as np
import pytest
from scipy import ndimage

from bluesky_symdenoise.denoise.channels import ChannelContext
from bluesky_symdenoise.denoise.consistency import (
    POOL_WINDOW_BINS,
    RawConsistency,
    pooled_ring_means,
)
from bluesky_symdenoise.denoise.ring_drift import DRIFT_Z, moved_bins, radial_drift
from bluesky_symdenoise.denoise.symmetry import ring_profile
from bluesky_symdenoise.simulate import scenes


def _drift_series(counts, seed, amount):
    """Three frames of a powder whose rings move outwards by ``amount`` px per frame at the
    strongest ring (every ring scaling with it)."""
    series = scenes.insitu_series("powder", n_frames=3, change="ring_drift",
                                  shape=(128, 128), seed=seed, amount=amount)
    rng = np.random.default_rng(seed)
    frames = series.expose(counts, rng).astype(np.float64)
    good = ~series.mask & ~series.defects.bad
    return series, series.scaled(counts), frames, good


def test_the_drift_of_a_neighbours_rings_is_measured_with_an_honest_error():
    # Static frames: the measured scale is noise, within its stated error.
    z_static = []
    for seed in range(6):
        series, _, frames, good = _drift_series(1.0, seed=40 + seed, amount=0.0)
        profile = ring_profile(good.shape, series.geometry.center, 1, 1.0)
        drift = radial_drift(profile, good, frames[1], frames[0])
        z_static.append(drift.scale / drift.error)
        assert not drift.significant
    assert np.sqrt(np.mean(np.square(z_static))) < 2.5, z_static
    # Rings moving outwards by 0.7 px a frame at the strongest ring: the next frame's
    # rings lie further out, the previous frame's further in, both far beyond the noise.
    series, _, frames, good = _drift_series(1.0, seed=50, amount=0.7)
    profile = ring_profile(good.shape, series.geometry.center, 1, 1.0)
    after = radial_drift(profile, good, frames[1], frames[2])
    before = radial_drift(profile, good, frames[1], frames[0])
    assert after.significant and before.significant
    assert after.scale > DRIFT_Z * after.error and before.scale < -DRIFT_Z * before.error
    # The scale is the size of the move: the d-spacings' scale between the frames (small
    # angles: radius ∝ 1 / d).
    scales = series.info["real_space_scale"]
    expected = scales[1] / scales[2] - 1.0
    assert 0.5 * expected < after.scale < 1.5 * expected, (after.scale, expected)


def test_a_drifting_ring_is_not_pooled_where_it_moved_and_the_rest_still_is():
    series, truth, frames, good = _drift_series(1.0, seed=51, amount=0.7)
    profile = ring_profile(good.shape, series.geometry.center, 1, 1.0)
    true_means, weight = profile.bin_means(truth[1], good)
    # The change is predicted from the frame's expected profile (the engine's: its
    # denoised frame's; here the truth's).
    _, _, pooled = pooled_ring_means(profile, good, frames[1], [frames[0], frames[2]],
                                     expected=true_means)
    noise = np.sqrt(np.maximum(true_means, 0.0) / np.maximum(weight, 1e-12))
    change = np.maximum(*(np.abs(profile.bin_means(truth[k], good)[0] - true_means)
                          for k in (0, 2)))
    counted = weight > 20
    moved = counted & (change > 2.0 * noise)  # the rings' flanks, moved beyond the noise
    # Between the rings, nothing moved (nor within the change test's window of a move).
    still = counted & ~ndimage.binary_dilation(change >= 0.1 * noise,
                                               iterations=POOL_WINDOW_BINS)
    assert moved.sum() >= 10 and still.sum() >= 10
    # Where the rings moved, the frame keeps its own means (the local test alone pooled
    # some of them: the drift moves little per bin in the corners) ...
    assert np.mean(pooled[moved] == 1) > 0.9, pooled[moved]
    # ... where nothing moved, the three frames are still pooled.
    assert np.mean(pooled[still] == 3) > 0.9, pooled[still]
    # Without an expected profile, the raw frames' mean (noisier) stops more of the pooling,
    # never less.
    _, _, noisy = pooled_ring_means(profile, good, frames[1], [frames[0], frames[2]])
    assert np.mean(noisy[moved] == 1) > 0.9 and np.all(noisy[counted] <= pooled[counted])
    # The moved bins are those the drift changes, predicted from the expected profile, at
    # any binning.
    drift = radial_drift(profile, good, frames[1], frames[2])
    marked = moved_bins(drift, profile, true_means, weight)
    towards_next = np.abs(profile.bin_means(truth[2], good)[0] - true_means) > 2.0 * noise
    assert marked[counted & towards_next].mean() > 0.9 and marked[still].mean() < 0.1
    coarse = ring_profile(good.shape, series.geometry.center, 1, 4.0)
    assert moved_bins(drift, coarse, *coarse.bin_means(truth[1], good)).any()


def test_a_neighbours_outermost_bins_are_moved_where_its_rings_came_from_beyond_the_corner():
    """Rings moving inwards bring what lay beyond the detector's last radius into a
    neighbour's outermost bins. The frame's profile, read flat beyond its end, cannot
    predict it (a ring just outside the corner), so those bins do not take that neighbour;
    rings moving outwards leave them predictable."""
    from bluesky_symdenoise.denoise.ring_drift import RadialDrift

    profile = ring_profile((128, 128), (64.0, 64.0), 1, 1.0)
    n_bins = profile.bin_means(np.zeros((128, 128)), np.ones((128, 128), bool))[0].size
    weight = np.zeros(n_bins)
    weight[:90] = 40.0  # pixels out to radius 89 (the corner); none beyond
    expected = np.full(n_bins, 0.05)  # flat: nothing the prediction sees moving
    inwards = RadialDrift(scale=-0.015, error=0.001)  # its rings at 0.985 r
    marked = moved_bins(inwards, profile, expected, weight)
    # 89 / 0.985 = 90.4 > 89: the last radii, out to 89 * 0.985 = 87.7, hold what came in.
    assert marked[88:90].all() and not marked[:88].any() and not marked[90:].any()
    outwards = RadialDrift(scale=0.015, error=0.001)
    assert not moved_bins(outwards, profile, expected, weight).any()
    # Not significant: nothing moved, at the edge either.
    assert not moved_bins(RadialDrift(scale=-0.015, error=0.01), profile, expected,
                          weight).any()


def test_pooling_of_static_frames_is_unchanged_by_the_drift_test(monkeypatch):
    series, truth, frames, good = _drift_series(1.0, seed=52, amount=0.0)
    profile = ring_profile(good.shape, series.geometry.center, 1, 1.0)
    target, _, pooled = pooled_ring_means(profile, good, frames[1], [frames[0], frames[2]])
    _, weight = profile.bin_means(truth[1], good)
    assert np.mean(pooled[weight > 20] == 3) > 0.9
    # No drift is seen, so the targets are exactly those of the local change test alone.
    monkeypatch.setattr(sys.modules["bluesky_symdenoise.denoise.ring_drift"], "DRIFT_Z",
                        np.inf)
    target_alone, _, pooled_alone = pooled_ring_means(profile, good, frames[1],
                                                      [frames[0], frames[2]])
    np.testing.assert_array_equal(pooled, pooled_alone)
    np.testing.assert_array_equal(target, target_alone)


@pytest.mark.parametrize("counts", [1.0, 0.25])
def test_a_held_frame_of_a_drifting_scan_is_not_smeared_by_its_neighbours(counts,
                                                                           monkeypatch):
    series, truth, frames, good = _drift_series(counts, seed=53, amount=0.7)
    scan_sum = np.where(good, frames.sum(0), 0.0)
    context, _, _ = ChannelContext.from_scan_sum(scan_sum, good, series.geometry.center,
                                                 z_threshold=5.5)
    consistency = RawConsistency.for_scan(scan_sum, good, series.geometry.center,
                                          ring_valid=context.ring_valid)

    def bias_in_noise(width):
        """Bias of the held frame's full-ring means in ``width`` px bins, in units of the
        frame's Poisson noise on each bin: RMS and largest. Noise-free frames (the expected
        counts) stand for the raw ones, with a perfect denoiser, so what is left is the
        bias of the means the frame is held to (the change tests still take their
        Poisson variance at these means)."""
        profile = ring_profile(good.shape, series.geometry.center, 1, width)
        true_means, weight = profile.bin_means(truth[1], good)
        counted = (weight > 20) & (true_means > 0)
        held = consistency.apply(truth[1], truth[1], neighbours=[truth[0], truth[2]])
        error = ((profile.bin_means(held, good)[0] - true_means)[counted]
                 / np.sqrt(true_means[counted] / weight[counted]))
        return float(np.sqrt(np.mean(error ** 2))), float(np.abs(error).max())

    guarded = [bias_in_noise(width) for width in (2.0, 4.0)]
    monkeypatch.setattr(sys.modules["bluesky_symdenoise.denoise.ring_drift"], "DRIFT_Z",
                        np.inf)
    unguarded = [bias_in_noise(width) for width in (2.0, 4.0)]
    # The local change test alone pools rings that moved by less than it can see per bin:
    # at coarser bins the smear is about a sigma of the frame's own noise; the drift test
    # keeps it to a fraction of that.
    for (rms, largest), (rms_before, largest_before) in zip(guarded, unguarded, strict=True):
        assert rms_before > 0.15 and largest_before > 0.9, unguarded
        assert rms < 0.06 and largest < 0.3, guarded
