"""Azimuthal integration with pyFAI and the benchmark metrics built on it."""

from __future__ import annotations

import numpy as np
import pytest

from bench.metrics import (
    SECTOR_30,
    dose_reduction_factor,
    iq_relative_error,
    mean_bias,
    psnr,
    region_ratio,
    ring_bias,
    ssim,
)
from bluesky_symdenoise.geometry import DetectorGeometry
from bluesky_symdenoise.integrate.azimuthal import AzimuthalIntegration, IntegrationError

Q_RING = 1.0


@pytest.fixture(scope="module")
def scene():
    geometry = DetectorGeometry.from_center((128, 128), (60.5, 63.3))
    q = geometry.q_map()
    truth = 1.0 + 20.0 * np.exp(-0.5 * ((q - Q_RING) / 0.04) ** 2)
    mask = np.zeros(geometry.shape, bool)
    mask[:, 90:93] = True
    mask[55:66, 58:69] = True  # beamstop
    return geometry, truth, mask


def test_ring_found_at_the_right_q(scene):
    geometry, truth, mask = scene
    integ = AzimuthalIntegration(geometry, mask)
    res = integ.integrate(truth, npt=150)
    assert res.sigma is None
    step = res.q_nm[1] - res.q_nm[0]
    assert abs(res.q_nm[np.argmax(res.intensity)] - Q_RING) <= step


def test_poisson_sigma_and_sector(scene):
    geometry, truth, mask = scene
    noisy = np.random.default_rng(0).poisson(truth).astype(np.float64)
    integ = AzimuthalIntegration(geometry, mask)
    full = integ.integrate(noisy, npt=100, error_model="poisson")
    assert full.sigma is not None and full.sigma.shape == full.intensity.shape
    filled = full.intensity > 0
    assert np.all(full.sigma[filled] > 0)
    sector = integ.integrate(noisy, npt=100, sector=SECTOR_30, error_model="poisson")
    step = sector.q_nm[1] - sector.q_nm[0]
    assert abs(sector.q_nm[np.argmax(sector.intensity)] - Q_RING) <= 2 * step
    # a 30° sector sees ~1/12 of the pixels: its errors are ~sqrt(12) larger on the ring
    ring = np.argmin(abs(full.q_nm - Q_RING))
    assert sector.sigma[ring] > 2.0 * full.sigma[ring]


def test_variance_passthrough_and_errors(scene):
    geometry, truth, mask = scene
    integ = AzimuthalIntegration(geometry, mask)
    res = integ.integrate(truth, npt=80, variance=0.25 * truth)
    assert res.sigma is not None and np.all(np.isfinite(res.sigma))
    with pytest.raises(IntegrationError):
        integ.integrate(truth, variance=truth, error_model="poisson")
    with pytest.raises(IntegrationError):
        integ.integrate(truth[:10])
    with pytest.raises(IntegrationError):
        integ.integrate(truth, error_model="gaussian")
    with pytest.raises(IntegrationError):
        integ.integrate(truth, sector=(20, 10))


def test_cake(scene):
    geometry, truth, mask = scene
    integration = AzimuthalIntegration(geometry, mask)
    cake = integration.cake(truth, 60, 36)
    assert cake.intensity.shape == (36, 60)
    assert cake.chi_deg.shape == (36,) and cake.q_nm.shape == (60,)
    # bins no unmasked pixel reaches are NaN, not zero counts; the rest average to I(q)
    empty = np.isnan(cake.intensity)
    assert empty.any() and not empty.all()
    iq = integration.integrate(truth, npt=60)
    full = np.isfinite(cake.intensity).all(axis=0) & (iq.intensity > 0)
    assert np.allclose(np.nanmean(cake.intensity[:, full], axis=0), iq.intensity[full],
                       rtol=0.1)


def test_image_metrics(scene):
    _, truth, mask = scene
    valid = ~mask
    assert psnr(truth, truth, valid) == float("inf")
    assert psnr(truth + 0.1, truth, valid) > 40
    assert ssim(truth, truth, valid) == pytest.approx(1.0)
    assert mean_bias(1.1 * truth, truth, valid) == pytest.approx(0.1)
    region = np.zeros(truth.shape, bool)
    region[:10, :10] = True
    assert region_ratio(0.5 * truth, truth, region) == pytest.approx(0.5)


def test_iq_metrics(scene):
    geometry, truth, mask = scene
    assert iq_relative_error(truth, truth, geometry, mask) == pytest.approx(0.0, abs=1e-6)
    assert iq_relative_error(1.1 * truth, truth, geometry, mask,
                             SECTOR_30) == pytest.approx(0.1, rel=1e-3)
    area, height, shift = ring_bias(truth, truth, geometry, mask)
    assert (area, height, shift) == pytest.approx((0.0, 0.0, 0.0), abs=1e-9)
    area, height, shift = ring_bias(1.2 * truth, truth, geometry, mask)
    assert area == pytest.approx(0.2, rel=1e-3) and height == pytest.approx(0.2, rel=1e-3)
    assert abs(shift) < 1e-6


def test_dose_reduction_factor():
    counts = [0.1, 0.3, 1.0, 3.0, 10.0, 100.0]
    errors = [1 / np.sqrt(c) for c in counts]
    assert dose_reduction_factor(counts, errors, 1 / np.sqrt(8.0)) == pytest.approx(8.0)
    assert dose_reduction_factor(counts, errors, 1 / np.sqrt(8.0),
                                 reference_counts=2.0) == pytest.approx(4.0)
    # beyond the curve: power-law extrapolation
    assert dose_reduction_factor(counts, errors, 1 / np.sqrt(400.0)) == pytest.approx(400.0)
