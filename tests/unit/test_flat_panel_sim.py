"""Integrating detectors (flat panels, CCD/CMOS): ADU = gain × blurred photons + offset +
readout noise, dark subtracted; the moments the denoiser's noise model relies on."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_symdenoise.simulate.noise import (
    blur_psf,
    expose_integrating,
    measure_dark,
    psf_noise_factor,
)
from bluesky_symdenoise.simulate.scenes import make_scene

#: Flat expectation (photons/px), frames x rows x cols: enough pixels for 2 % on moments.
LAMBDA = 2.0
STACK = (64, 64, 64)
#: Pixels this far from the edge see the whole kernel (the edges reflect it).
EDGE = 6


def _temporal_moments(frames: np.ndarray) -> tuple[float, float]:
    """Mean and per-pixel variance over frames (one dark is shared by the stack, so its
    fixed pattern drops out of the variance), averaged over interior pixels."""
    inner = frames[:, EDGE:-EDGE, EDGE:-EDGE].astype(np.float64)
    return float(inner.mean()), float(inner.var(axis=0, ddof=1).mean())


@pytest.mark.parametrize("gain,read_noise,psf_sigma", [(3.0, 2.0, 0.0), (9.0, 5.0, 0.0),
                                                        (3.0, 2.0, 0.8), (15.0, 1.5, 1.6)])
def test_mean_is_gain_times_photons_and_variance_is_blurred_poisson_plus_read(
        gain, read_noise, psf_sigma):
    rng = np.random.default_rng(31)
    frames = expose_integrating(np.full(STACK, LAMBDA), rng=rng, gain=gain,
                                read_noise=read_noise, offset=100.0, psf_sigma=psf_sigma)
    mean, variance = _temporal_moments(frames)
    expected = gain**2 * LAMBDA * psf_noise_factor(psf_sigma) + read_noise**2
    assert mean == pytest.approx(gain * LAMBDA, rel=0.015)
    assert variance == pytest.approx(expected, rel=0.04)


def test_the_dark_adds_its_own_noise_once_per_pixel():
    """Across pixels of one frame, the measured dark's read²/n adds to the variance."""
    rng = np.random.default_rng(32)
    gain, read_noise, n = 4.0, 6.0, 4
    frame = expose_integrating(np.full((256, 256), LAMBDA), rng=rng, gain=gain,
                               read_noise=read_noise, dark_frames=n)
    expected = gain**2 * LAMBDA + read_noise**2 * (1.0 + 1.0 / n)
    assert float(frame.var(ddof=1)) == pytest.approx(expected, rel=0.03)


def test_psf_noise_factor_matches_a_continuous_gaussian_when_wide():
    # Σk² of a 2-D Gaussian of σ px is 1 / (4πσ²) once σ spans a few pixels.
    assert psf_noise_factor(2.5) == pytest.approx(1.0 / (4.0 * np.pi * 2.5**2), rel=0.01)
    assert psf_noise_factor(0.0) == 1.0
    assert 0.0 < psf_noise_factor(0.7) < psf_noise_factor(0.5) < 1.0


def test_psf_keeps_the_total_and_blurs_only_the_image_axes():
    rng = np.random.default_rng(33)
    image = rng.uniform(0.0, 5.0, size=(3, 20, 30))
    blurred = blur_psf(image, 0.9)
    assert blurred.shape == image.shape
    np.testing.assert_allclose(blurred.sum(axis=(1, 2)), image.sum(axis=(1, 2)), rtol=1e-10)
    # Frames stay separate: blurring each alone gives the same.
    np.testing.assert_allclose(blurred[1], blur_psf(image[1], 0.9))
    np.testing.assert_array_equal(blur_psf(image, 0.0), image)


def test_dark_subtracted_frames_are_float32_with_ordinary_negatives():
    rng = np.random.default_rng(34)
    lam = np.full((2, 40, 40), 0.5)
    frames = expose_integrating(lam, rng=rng, gain=5.0, read_noise=3.0, offset=250.0)
    assert frames.dtype == np.float32 and frames.shape == lam.shape
    assert (frames < 0).mean() > 0.2
    raw = expose_integrating(lam, rng=rng, gain=5.0, read_noise=3.0, offset=250.0,
                             dark_subtracted=False)
    assert raw.dtype == np.float32
    assert raw.min() > 200.0  # the offset is kept: no negatives before the dark goes
    assert float(raw.mean()) == pytest.approx(250.0 + 5.0 * 0.5, abs=0.5)


def test_a_passed_dark_is_subtracted_as_given():
    shape = (32, 32)
    dark = measure_dark(shape, rng=np.random.default_rng(35), read_noise=4.0, offset=80.0,
                        dark_frames=16)
    assert dark.shape == shape
    assert float(dark.mean()) == pytest.approx(80.0, abs=0.2)
    assert float(dark.std()) == pytest.approx(4.0 / 4.0, rel=0.1)
    lam = np.full(shape, 1.5)
    raw = expose_integrating(lam, rng=np.random.default_rng(36), gain=3.0, read_noise=4.0,
                             offset=80.0, dark_subtracted=False)
    subtracted = expose_integrating(lam, rng=np.random.default_rng(36), gain=3.0,
                                    read_noise=4.0, offset=80.0, dark=dark)
    np.testing.assert_allclose(subtracted, raw - dark, atol=1e-4)


def test_saturation_clips_raw_adu_before_the_dark():
    rng = np.random.default_rng(37)
    dark = np.full((16, 16), 40.0)
    lam = np.full((16, 16), 50.0)
    raw = expose_integrating(lam, rng=rng, gain=10.0, read_noise=2.0, offset=40.0,
                             dark_subtracted=False, saturation=400.0)
    frame = expose_integrating(lam, rng=rng, gain=10.0, read_noise=2.0, offset=40.0,
                               dark=dark, saturation=400.0)
    assert raw.max() == pytest.approx(400.0)
    assert frame.max() == pytest.approx(400.0 - 40.0)


@pytest.mark.parametrize("options", [{"gain": 0.0, "read_noise": 1.0},
                                     {"gain": 2.0, "read_noise": -1.0},
                                     {"gain": 2.0, "read_noise": 1.0, "psf_sigma": -0.5},
                                     {"gain": 2.0, "read_noise": 1.0, "dark_frames": 0},
                                     {"gain": 2.0, "read_noise": 1.0,
                                      "dark": np.zeros((3, 3))}])
def test_invalid_detector_parameters_are_refused(options):
    with pytest.raises(ValueError):
        expose_integrating(np.ones((8, 8)), rng=np.random.default_rng(38), **options)


def test_scene_exposes_an_integrating_frame_with_its_mask_and_defects():
    scene = make_scene("powder", shape=(64, 64), seed=39, detector="Perkin")
    rng = np.random.default_rng(40)
    frame = scene.expose_integrating(1.0, rng, gain=6.0, read_noise=3.0, psf_sigma=0.6)
    assert frame.dtype == np.float32 and frame.shape == (64, 64)
    assert np.all(frame[scene.mask] == 0)
    assert np.all(frame[scene.defects.dead] == 0)
    assert np.all(frame[scene.defects.hot & ~scene.mask] > 6.0 * 20)
    ok = scene.usable
    truth = 6.0 * blur_psf(scene.scaled(1.0), 0.6)
    assert float(frame[ok].mean()) == pytest.approx(float(truth[ok].mean()), rel=0.05)
    assert (frame[ok] < 0).any()
