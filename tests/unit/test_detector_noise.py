"""Integrating detectors: the noise model, its calibration from the scan, and the denoiser
on dark-subtracted ADU frames (negative values are data)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import ndimage

from bluesky_symdenoise.denoise.api import denoise, denoise_scan
from bluesky_symdenoise.denoise.detector_noise import (
    READOUT_DOMINATED,
    DetectorNoise,
    NoiseCalibration,
    calibrate,
    detector_noise,
    readout_dominance,
)
from bluesky_symdenoise.denoise.preprocess import InputError
from bluesky_symdenoise.simulate.scenes import make_scene


def flat_panel_frames(scene, *, gain: float, read_noise: float, n: int = 4,
                      psf_sigma: float = 0.0, photons: float = 1.0, seed: int = 0,
                      tail: tuple[float, float] | None = None) -> np.ndarray:
    """Dark-subtracted ADU frames: gain × photons (spread by a Gaussian point spread of
    ``psf_sigma``, plus a share ``tail[0]`` of them by a wider one of ``tail[1]`` px) +
    readout."""
    rng = np.random.default_rng(seed)
    expectation = scene.scaled(photons)
    frames = []
    for _ in range(n):
        detected = rng.poisson(expectation).astype(np.float64)
        if tail:
            share, wide = tail
            detected = ((1.0 - share) * ndimage.gaussian_filter(detected, psf_sigma)
                        + share * ndimage.gaussian_filter(detected, wide))
        elif psf_sigma:
            detected = ndimage.gaussian_filter(detected, psf_sigma)
        frames.append(gain * detected + rng.normal(0.0, read_noise, expectation.shape))
    stack = np.stack(frames).astype(np.float32)
    stack[:, scene.mask] = 0.0
    return stack


@pytest.fixture(scope="module")
def powder():
    return make_scene("powder", shape=(128, 128), seed=41)


@pytest.mark.fast
def test_the_ways_to_say_the_detector_agree():
    assert detector_noise(None) == DetectorNoise()
    assert detector_noise("integrating").integrating
    assert detector_noise(gain=7.0) == DetectorNoise(kind="integrating", gain=7.0)
    assert detector_noise({"kind": "integrating", "read_noise": 3.0}, gain=2.0).gain == 2.0
    with pytest.raises(ValueError):
        DetectorNoise(kind="integrating", gain=-1.0)


@pytest.mark.fast
def test_conversion_keeps_the_mean_and_goes_back_exactly():
    noise = NoiseCalibration(kind="integrating", gain=7.0, read_noise=4.0, offset=100.0)
    adu = np.array([[93.0, 100.0, 114.0]], np.float32)
    photons = noise.to_photons(adu)
    # (x - offset) / gain + (read / gain)²: mean equals variance for Poisson + readout.
    np.testing.assert_allclose(photons, (adu - 100.0) / 7.0 + (4.0 / 7.0) ** 2, rtol=1e-6)
    np.testing.assert_allclose(noise.to_detector(photons), adu, rtol=1e-6)
    counting = NoiseCalibration()
    assert counting.to_photons(adu) is not None and counting.shift == 0.0


@pytest.mark.fast
@pytest.mark.parametrize(("gain", "read_noise"), [(7.0, 4.0), (2.0, 1.0), (20.0, 10.0)])
def test_gain_and_readout_noise_found_from_the_frames(powder, gain, read_noise):
    frames = flat_panel_frames(powder, gain=gain, read_noise=read_noise, n=5, seed=3)
    found = calibrate(frames, powder.usable, DetectorNoise(kind="integrating"))
    assert abs(found.gain / gain - 1) < 0.10
    assert abs(found.read_noise / read_noise - 1) < 0.10
    assert found.noise_factor == 1.0 and abs(found.correlation) < 0.02
    # The errors it reports are of the size of its actual error (not 0, not huge).
    assert 0 < found.gain_error < 0.1 * gain


@pytest.mark.fast
def test_a_point_spread_is_measured_and_the_gain_still_found(powder):
    frames = flat_panel_frames(powder, gain=7.0, read_noise=4.0, n=6, psf_sigma=0.7, seed=5)
    found = calibrate(frames, powder.usable, DetectorNoise(kind="integrating"))
    assert found.correlation > 0.1  # neighbouring pixels share photons
    # Σk² of a 0.7 px Gaussian spread is about 1 / (4π 0.7²) ≈ 0.16 (on the pixel grid ~0.18)
    assert 0.1 < found.noise_factor < 0.3
    assert abs(found.gain / 7.0 - 1) < 0.15
    assert abs(found.read_noise / 4.0 - 1) < 0.10


@pytest.mark.fast
def test_dead_and_hot_pixels_are_left_out_of_the_calibration(powder):
    """Pixels that do not follow the transfer curve (a dead one reads the same in every
    frame, a hot one counts its own photons) must not bend it: with 40 of each among the
    good pixels the gain is found as on a clean detector, and the source counts them."""
    frames = flat_panel_frames(powder, gain=7.0, read_noise=4.0, n=5, seed=3)
    rng = np.random.default_rng(11)
    rows, cols = np.nonzero(powder.usable)
    pick = rng.choice(len(rows), 80, replace=False)
    dead, hot = pick[:40], pick[40:]
    frames[:, rows[dead], cols[dead]] = 0.0
    frames[:, rows[hot], cols[hot]] = 7.0 * rng.poisson(400.0, (len(frames), 40))
    # (the same hot and dead pixels made the gain 13 % high before they were left out)
    found = calibrate(frames, powder.usable, DetectorNoise(kind="integrating"))
    assert abs(found.gain / 7.0 - 1) < 0.10 and abs(found.read_noise / 4.0 - 1) < 0.10
    left_out = re.search(r"(\d+) dead, saturated or hot pixel\(s\) left out", found.source)
    # (two hot pixels side by side hide each other; a few of 40 may)
    assert left_out and 72 <= int(left_out.group(1)) <= 82, found.source


@pytest.mark.fast
def test_a_spread_hidden_under_the_readout_noise_makes_the_gain_a_lower_bound(powder):
    """Gain 2 ADU/photon under 10 ADU of readout noise, spread by 0.7 px: the photon noise is
    under 1 % of the variance and its correlations cannot be seen, so the per-pixel slope
    (gain × Σk², about a sixth of the gain) is reported as what it is: a lower bound."""
    frames = flat_panel_frames(powder, gain=2.0, read_noise=10.0, n=4, psf_sigma=0.7, seed=6)
    found = calibrate(frames, powder.usable, DetectorNoise(kind="integrating"))
    assert found.gain_lower_bound and found.gain < 2.0
    assert found.gain_error >= found.gain and "lower bound" in found.source
    # Another draw of it shows no photon noise at all (the slope comes out below 0): the
    # frames are still calibrated, with the readout noise, and the gain is flagged.
    frames = flat_panel_frames(powder, gain=2.0, read_noise=10.0, n=4, psf_sigma=0.7, seed=5)
    found = calibrate(frames, powder.usable, DetectorNoise(kind="integrating"))
    assert found.gain_lower_bound and 0 < found.gain < 2.0
    assert "no photon noise measurable" in found.source
    assert abs(found.read_noise / 10.0 - 1) < 0.05
    # The same detector without a spread and with more photon noise is measured as usual.
    clear = calibrate(flat_panel_frames(powder, gain=7.0, read_noise=4.0, n=3, seed=5),
                      powder.usable, DetectorNoise(kind="integrating"))
    assert not clear.gain_lower_bound and abs(clear.gain / 7.0 - 1) < 0.10


@pytest.mark.fast
def test_a_spread_under_a_large_readout_noise_is_measured_with_honest_errors(powder):
    """A gain of 3 ADU/photon under 6 ADU of readout noise, spread by 0.5 px: the photon
    noise is a tenth of the variance, and the per-pixel slope alone (gain × Σk², Σk² =
    0.41) would be 2.4 times too low. The neighbours' covariance against the level finds
    the spread, and over independent draws of a short scan (3 frames) the gain's stated
    error is its actual error; so it is under a small readout noise (12 ADU/photon, 2 ADU)."""
    for gain, read_noise in ((3.0, 6.0), (12.0, 2.0)):
        z = []
        for seed in range(8):
            frames = flat_panel_frames(powder, gain=gain, read_noise=read_noise, n=3,
                                       psf_sigma=0.5, seed=100 + seed)
            found = calibrate(frames, powder.usable, DetectorNoise(kind="integrating"))
            assert found.correlated and not found.gain_lower_bound, found.source
            assert 0.3 < found.noise_factor < 0.55  # Σk² of the kernel: 0.41
            assert found.gain_error < 0.2 * gain
            z.append((found.gain - gain) / found.gain_error)
        assert np.sqrt(np.mean(np.square(z))) < 1.6 and np.max(np.abs(z)) < 3.5, z


@pytest.mark.fast
def test_an_estimate_less_precise_than_five_percent_is_flagged_imprecise(powder):
    """A 10 % error is two standard errors of an estimate flagged at 5 %: the gain of a
    3 ADU/photon panel under 6 ADU of readout noise and a 0.5 px spread, from 3 frames of
    128², is known to about ±11 % and flagged; with the same frames, given, nothing is."""
    frames = flat_panel_frames(powder, gain=3.0, read_noise=6.0, n=3, psf_sigma=0.5, seed=100)
    found = calibrate(frames, powder.usable, DetectorNoise(kind="integrating"))
    assert found.gain_error > 0.05 * found.gain
    assert "imprecise: gain ±" in found.source and "pass gain=" in found.source
    assert "gain" in found.imprecise and found.as_dict()["imprecise"] == list(found.imprecise)
    given = calibrate(frames, powder.usable,
                      DetectorNoise(kind="integrating", gain=3.0, read_noise=6.0))
    assert "imprecise" not in given.source and given.imprecise == ()
    # Many photons per pixel and little readout noise: both known to a few per cent.
    precise = calibrate(flat_panel_frames(powder, gain=7.0, read_noise=4.0, n=5, seed=3,
                                          photons=4.0),
                        powder.usable, DetectorNoise(kind="integrating"))
    assert precise.gain_error < 0.05 * precise.gain, precise
    assert precise.read_noise_error < 0.05 * precise.read_noise, precise
    assert "imprecise" not in precise.source and precise.imprecise == ()


@pytest.mark.fast
def test_a_spread_wider_than_a_gaussian_is_seen_and_summed(powder):
    """Half the light spread by 0.5 px and half by 1.5 px (a scintillator's long tail):
    a Gaussian spread with the same lag-1 correlation would have a larger Σk², and the
    gain from it would be too low. The covariances two pixels out and at the diagonals
    show the wider tail, and the gain then comes from the covariances summed over ±4 px."""
    frames = flat_panel_frames(powder, gain=7.0, read_noise=4.0, n=6, psf_sigma=0.5,
                               tail=(0.5, 1.5), seed=3)
    found = calibrate(frames, powder.usable, DetectorNoise(kind="integrating"))
    assert "wider than a Gaussian" in found.source, found.source
    assert abs(found.gain / 7.0 - 1) < 0.2 and abs(found.gain - 7.0) < 3 * found.gain_error
    assert 0.11 < found.noise_factor < 0.19  # Σk² of that kernel: 0.144
    # A Gaussian spread is not taken for a wide one.
    gaussian = calibrate(flat_panel_frames(powder, gain=7.0, read_noise=4.0, n=6,
                                           psf_sigma=0.7, seed=3),
                         powder.usable, DetectorNoise(kind="integrating"))
    assert "wider than" not in gaussian.source
    assert abs(gaussian.gain - 7.0) < 3 * gaussian.gain_error


@pytest.mark.fast
def test_the_calibration_holds_a_few_frame_sized_arrays_at_once():
    """A flat panel's frame is 4 Mpx: the calibration works one frame pair at a time, so
    its peak is a few frame-sized arrays plus a float32 copy of the frames, however many
    frames it is given (it once held every pair's arrays at once, 1200 bytes a pixel on 9
    frames). Measured on numpy's traced allocations, with a spread wider than a Gaussian's
    (the path that sums the covariances over ±4 px, the heaviest)."""
    import tracemalloc

    scene = make_scene("powder", shape=(256, 256), seed=43, detector="Perkin")
    frames = flat_panel_frames(scene, gain=7.0, read_noise=4.0, n=9, psf_sigma=0.5,
                               tail=(0.5, 1.5), seed=2)
    tracemalloc.start()
    try:
        found = calibrate(frames, scene.usable, DetectorNoise(kind="integrating"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "wider than a Gaussian" in found.source, found.source
    assert abs(found.gain / 7.0 - 1) < 0.15
    per_pixel = peak / frames[0].size
    assert per_pixel < 4 * len(frames) + 160, per_pixel


@pytest.mark.fast
def test_given_values_are_used_and_one_frame_needs_them(powder):
    frames = flat_panel_frames(powder, gain=7.0, read_noise=4.0, n=1)
    with pytest.raises(ValueError, match="at least two frames"):
        calibrate(frames, powder.usable, DetectorNoise(kind="integrating"))
    given = calibrate(frames, powder.usable,
                      DetectorNoise(kind="integrating", gain=7.0, read_noise=4.0))
    assert (given.gain, given.read_noise, given.source) == (7.0, 4.0, "given")


@pytest.mark.fast
def test_negative_adu_raise_a_message_that_names_the_integrating_mode(powder):
    frames = flat_panel_frames(powder, gain=7.0, read_noise=4.0, n=2)
    with pytest.raises(InputError, match="detector='integrating'"):
        denoise(frames, mask=powder.mask, center=powder.geometry.center, method="classical")


@pytest.mark.fast
def test_integrating_frames_are_denoised_in_adu_with_their_totals(powder):
    frames = flat_panel_frames(powder, gain=7.0, read_noise=4.0, n=3, seed=8)
    good = powder.usable
    assert (frames[:, good] < 0).mean() > 0.1  # dark-subtracted: negatives are data
    result = denoise_scan(frames, mask=powder.mask, center=powder.geometry.center,
                          method="classical", detector="integrating")
    out = result.denoised
    assert out.shape == frames.shape and out.dtype == np.float32
    for raw, den in zip(frames, out, strict=True):
        assert abs(den[good].sum() / raw[good].sum() - 1) < 0.01
    assert np.all(out[:, powder.mask] == 0)
    record = result.provenance["detector_noise"]
    assert record["kind"] == "integrating" and abs(record["gain"] / 7.0 - 1) < 0.10
    truth = 7.0 * powder.scaled(1.0)
    error_raw = np.mean((frames[:, good] - truth[good]) ** 2)
    error_out = np.mean((out[:, good] - truth[good]) ** 2)
    assert error_out < 0.2 * error_raw  # > 7 dB better than raw


@pytest.mark.fast
def test_readout_dominance_is_the_readout_variance_over_the_typical_photon_count():
    good = np.ones((64, 64), bool)
    good[:4] = False  # left out of the median
    level = np.full((3, 64, 64), 2.0, np.float32)  # photons per pixel
    level[:, :4] = 500.0
    for gain, read_noise in ((2.0, 10.0), (20.0, 2.0)):
        noise = NoiseCalibration(kind="integrating", gain=gain, read_noise=read_noise)
        photons = level + np.float32(noise.shift)  # the shifted photon-equivalent frames
        expected = (read_noise / gain) ** 2 / 2.0
        assert readout_dominance(noise, photons, good) == pytest.approx(expected, rel=1e-5)
    assert readout_dominance(NoiseCalibration(), level, good) == 0.0  # counting
    dark = NoiseCalibration(kind="integrating", gain=2.0, read_noise=10.0)
    assert readout_dominance(dark, np.full((2, 8, 8), dark.shift, np.float32),
                             np.ones((8, 8), bool)) == 1e6  # no photons: fully dominated


@pytest.mark.fast
@pytest.mark.parametrize(("gain", "read_noise", "dominated"),
                         [(2.0, 10.0, True), (20.0, 2.0, False)])
def test_a_readout_dominated_scan_is_flagged_in_the_provenance(powder, gain, read_noise,
                                                                dominated):
    frames = flat_panel_frames(powder, gain=gain, read_noise=read_noise, n=3, seed=5)
    result = denoise_scan(frames, mask=powder.mask, center=powder.geometry.center,
                          method="classical", detector="integrating")
    record = result.provenance["detector_noise"]
    # The powder's median pixel holds about 0.4 photons at 1 photon/pixel on average:
    # (10 / 2)² / 0.4 ≈ 60 (at 2 ADU/photon under 10 ADU the gain is only a lower bound,
    # which raises it), (2 / 20)² / 0.4 ≈ 0.025.
    assert record["readout_dominance"] > 10.0 if dominated else \
        record["readout_dominance"] < 0.1
    assert record["readout_dominated"] is dominated
    assert (record["readout_dominance"] > READOUT_DOMINATED) is dominated
    assert any(n.startswith("readout-dominated") for n in result.provenance["notes"]) \
        is dominated


@pytest.mark.slow
def test_the_network_serves_integrating_frames_without_bias(powder):
    frames = flat_panel_frames(powder, gain=5.0, read_noise=6.0, n=3, seed=12)
    good = powder.usable
    result = denoise_scan(frames, mask=powder.mask, center=powder.geometry.center,
                          method="symmetry", budget_s=8, detector="integrating",
                          gain=5.0, read_noise=6.0)
    out = result.denoised
    truth = 5.0 * powder.scaled(1.0)
    for raw, den in zip(frames, out, strict=True):
        assert abs(den[good].sum() / raw[good].sum() - 1) < 0.01
    # The background (no ring) is not lifted by the clipped negative values.
    ring = powder.regions["strongest_ring"]
    quiet = good & ~ndimage.binary_dilation(truth > 2.0 * np.median(truth[good]), iterations=2)
    assert abs(out[:, quiet].mean() / truth[quiet].mean() - 1) < 0.1
    assert abs(out[:, ring].sum() / (3 * truth[ring].sum()) - 1) < 0.05
    assert result.provenance["detector_noise"]["source"] == "given"


def _lag_correlations(batch) -> tuple[float, float]:
    """Correlation of the input's noise with the target's, at the same pixel and one pixel
    apart (a flat field: the noise is the deviation from each patch's mean)."""
    x = batch.inputs[:, 0] * batch.scale[:, 0]
    t = batch.target[:, 0] / np.maximum(batch.copies[:, 0], 1)
    x = x - x.mean(axis=(1, 2), keepdims=True)
    t = t - t.mean(axis=(1, 2), keepdims=True)
    same = np.corrcoef(x.ravel(), t.ravel())[0, 1]
    next_pixel = np.corrcoef(x[:, :, 1:].ravel(), t[:, :, :-1].ravel())[0, 1]
    return float(same), float(next_pixel)


@pytest.mark.fast
def test_under_a_point_spread_the_targets_are_neighbouring_frames_with_independent_noise():
    """A point spread puts one photon into neighbouring pixels: a thinned half's target
    then shares noise with its input (and the network learns to keep it); a neighbouring
    frame's does not, so the engine trains on frames there."""
    from bluesky_symdenoise.denoise.engine import ScanDenoiser, frame_targets
    from bluesky_symdenoise.denoise.targets import FramePairs, ThinningPairs

    rng = np.random.default_rng(2)
    shape = (96, 96)
    frames = np.stack([7.0 * ndimage.gaussian_filter(rng.poisson(4.0, shape).astype(float),
                                                     0.7) + rng.normal(0, 2.0, shape)
                       for _ in range(3)]).astype(np.float32)
    denoiser = ScanDenoiser(detector={"kind": "integrating"})
    analysis = denoiser.analyse(frames, center=(47.5, 47.5))
    assert analysis.noise.correlated and frame_targets(analysis)
    frames_same, frames_next = _lag_correlations(
        FramePairs(analysis.prepared.frames, analysis.context, seed=0).sample(16, 96))
    thinned_same, thinned_next = _lag_correlations(
        ThinningPairs(analysis.prepared.frames, analysis.context, seed=0).sample(16, 96))
    assert abs(frames_same) < 0.03 and abs(frames_next) < 0.03
    assert abs(thinned_same) > 0.2 and thinned_next > 0.04
    # Without a spread the thinned halves are independent, and thinning is kept.
    plain = np.stack([7.0 * rng.poisson(4.0, shape) + rng.normal(0, 2.0, shape)
                      for _ in range(3)]).astype(np.float32)
    assert not frame_targets(denoiser.analyse(plain, center=(47.5, 47.5)))


@pytest.mark.slow
def test_under_a_point_spread_the_network_is_checked_against_the_next_frame(powder):
    frames = flat_panel_frames(powder, gain=7.0, read_noise=4.0, n=3, psf_sigma=0.7, seed=9)
    good = powder.usable
    truth = 7.0 * ndimage.gaussian_filter(powder.scaled(1.0), 0.7)
    ours = denoise_scan(frames, mask=powder.mask, center=powder.geometry.center,
                        budget_s=20, detector="integrating")
    assert "held-out squared error against the next frame" in ours.reason, ours.reason
    assert ours.provenance["detector_noise"]["correlated"]
    classical = denoise_scan(frames, mask=powder.mask, center=powder.geometry.center,
                             method="classical", detector="integrating")
    error = {name: np.mean((r.denoised[1][good] - truth[good]) ** 2)
             for name, r in (("ours", ours), ("classical", classical))}
    raw = np.mean((frames[1][good] - truth[good]) ** 2)
    assert error["ours"] < error["classical"] < raw, (error, raw)
    for raw_frame, den in zip(frames, ours.denoised, strict=True):
        assert abs(den[good].sum() / raw_frame[good].sum() - 1) < 0.01


@pytest.mark.fast
def test_the_next_frame_split_scores_a_frame_against_an_exposure_it_does_not_see():
    from bluesky_symdenoise.denoise.engine import next_frame_split

    frames = np.arange(4)[:, None, None] * np.ones((4, 2, 2), np.float32)
    frame, rest, others = next_frame_split(frames, 1)  # the offline check: the middle frame
    assert frame[0, 0] == 1 and rest[0, 0] == 2 and [o[0, 0] for o in others] == [0]
    frame, rest, others = next_frame_split(frames, 3)  # the last frame: the previous one
    assert frame[0, 0] == 3 and rest[0, 0] == 2 and others == []
    assert rest.dtype == np.float64 and frame.dtype == np.float32


@pytest.mark.fast
def test_the_angular_model_leaves_a_readout_dominated_scans_held_spots_alone():
    """Mixed in after the raw-count holds, the per-shell angular model spread a faint
    one-sided feature of a readout-dominated scan around its shell (its misfit test, a
    Poisson z, has too little power under the readout noise to find it). It now leaves the
    spots that scan holds to the raw counts to the engine's own estimate; on counts nothing
    changes."""
    from bluesky_symdenoise.denoise import engine
    from bluesky_symdenoise.denoise.detector_noise import detector_noise
    from bluesky_symdenoise.denoise.engine import ScanDenoiser

    scene = make_scene("lattice_one_sided", shape=(128, 128), seed=4)
    feature = scene.regions["one_sided_feature"] & scene.usable
    frames = flat_panel_frames(scene, gain=3.0, read_noise=6.0, n=3, seed=4)
    denoiser = ScanDenoiser(method="symmetry", budget_s=0,
                            detector=detector_noise("integrating"))
    analysis = denoiser.analyse(frames, mask=scene.mask, center=scene.geometry.center)
    assert analysis.noise.readout_dominated and analysis.consistency is not None
    held = analysis.consistency.spots()
    assert held[feature].mean() > 0.9
    photons = analysis.prepared.frames

    def modelled(on: np.ndarray) -> float:
        estimate = denoiser._angular_estimate(analysis, photons[1], [photons[0], photons[2]])
        assert estimate is not None
        return float(np.isfinite(estimate[0])[on].mean())

    left = modelled(feature)
    assert modelled(held) == 0.0
    assert left <= 1.0 - held[feature].mean() + 1e-9  # the feature's pixels not found
    # Without the rule the misfit test alone leaves much of the feature to the model.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "_spots_left_to_the_hold", lambda analysis: False)
        misfit_alone = modelled(feature)
    print(f"feature pixels the angular model may take: {misfit_alone:.2f} by the misfit "
          f"test alone, {left:.2f} with the held spots left alone")
    assert misfit_alone > 0.2
    # On counts (the same photons counted) the rule adds nothing.
    counted = ScanDenoiser(method="symmetry", budget_s=0).analyse(
        np.random.default_rng(4).poisson(scene.scaled(1.0), size=(3, 128, 128)).astype(
            np.float32), mask=scene.mask, center=scene.geometry.center)
    assert engine._spots_left_to_the_hold(counted) is False
