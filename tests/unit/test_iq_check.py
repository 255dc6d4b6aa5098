"""The held-out I(q) check: calibrated sigmas and the fall-back to raw (integrate.heldout)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from bluesky_symdenoise.geometry import DetectorGeometry
from bluesky_symdenoise.integrate.azimuthal import AzimuthalIntegration
from bluesky_symdenoise.integrate.heldout import held_out_iq

SECTOR = (-15.0, 15.0)
NPT = 90


@pytest.fixture(scope="module")
def scene():
    """A 128² powder pattern, 1 count/pixel on average, two sharp rings and a slope."""
    geometry = DetectorGeometry.from_center((128, 128), (60.5, 63.3))
    q = geometry.q_map()
    truth = 0.3 + 0.5 * np.exp(-q / 1.5)
    for q0, height in ((0.9, 6.0), (1.6, 3.0)):
        truth = truth + height * np.exp(-0.5 * ((q - q0) / 0.02) ** 2)
    mask = np.zeros(geometry.shape, bool)
    mask[55:66, 58:69] = True  # beamstop
    return geometry, truth, mask


def _frames(truth, mask, n, seed):
    rng = np.random.default_rng(seed)
    return [np.where(mask, 0, rng.poisson(truth)).astype(np.float64) for _ in range(n)]


def test_raw_poisson_sigma_is_calibrated(scene):
    geometry, truth, mask = scene
    integ = AzimuthalIntegration(geometry, mask)
    covered = []
    for frame in _frames(truth, mask, 4, seed=3):
        for sector in (None, SECTOR):
            ref = integ.integrate(truth, npt=NPT, sector=sector)
            raw = integ.integrate(frame, npt=NPT, sector=sector, error_model="poisson")
            keep = ref.intensity > 0
            covered.append(np.abs(raw.intensity - ref.intensity)[keep] <= raw.sigma[keep])
    assert 0.60 <= np.mean(np.concatenate(covered)) <= 0.76


def test_denoised_sigma_is_calibrated(scene):
    """A denoiser of known error: the half frame averaged with an independent Poisson draw
    of the same expectation (variance halved, no bias): the check must find a ratio near
    0.5 and the published sigma must cover about 68 % of the bins of new frames."""
    geometry, truth, mask = scene
    integ = AzimuthalIntegration(geometry, mask)
    rng = np.random.default_rng(11)

    def average_with_a_twin(frame, scale):
        return 0.5 * (frame + np.where(mask, 0, rng.poisson(scale * truth)))

    checks = held_out_iq(lambda half, _, __: average_with_a_twin(half, 0.5),
                         _frames(truth, mask, 4, seed=5), integ, npt=NPT,
                         sectors=(None, SECTOR))
    for check in checks:
        assert 0.3 <= np.nanmedian(check.ratio) <= 0.8
        assert not check.fallback.any()
    covered = []
    for frame in _frames(truth, mask, 4, seed=7):
        denoised = average_with_a_twin(frame, 1.0)
        for check, sector in zip(checks, (None, SECTOR), strict=True):
            ref = integ.integrate(truth, npt=NPT, sector=sector)
            raw = integ.integrate(frame, npt=NPT, sector=sector, error_model="poisson")
            den = integ.integrate(denoised, npt=NPT, sector=sector, variance=denoised)
            intensity, sigma = check.apply(raw, den)
            keep = ref.intensity > 0
            covered.append(np.abs(intensity - ref.intensity)[keep] <= sigma[keep])
    assert 0.60 <= np.mean(np.concatenate(covered)) <= 0.76


def test_a_biased_denoiser_keeps_its_error_at_full_dose(scene):
    """A denoiser whose only error is a bias (the expectation scaled by 1.1): its error does
    not shrink with dose, so the full-dose ratio must come out twice the half-dose one (the
    split tells the bias from the variance)."""
    geometry, truth, mask = scene
    integ = AzimuthalIntegration(geometry, mask)
    frames = _frames(truth, mask, 4, seed=21)

    def biased(frame, _, __):
        return 1.1 * truth * frame.sum() / truth[~mask].sum()

    (check,) = held_out_iq(biased, frames, integ, npt=NPT)
    ref = integ.integrate(truth, npt=NPT)
    raw = integ.integrate(frames[0], npt=NPT, error_model="poisson")
    served = biased(frames[0], 0, 0)
    den = integ.integrate(served, npt=NPT, variance=served)
    _, sigma = check.apply(raw, den)
    keep = ref.intensity > 0
    error = np.abs(den.intensity - ref.intensity)[keep]
    # Bias only: the typical bin's sigma is its bias (carrying the half-dose ratio over to
    # full dose would make it sqrt(2) too small: error / sigma ~ 1.4).
    assert 0.75 <= np.median(error / sigma[keep]) <= 1.25


def test_a_denoiser_that_broadens_rings_falls_back_there(scene):
    geometry, truth, mask = scene
    integ = AzimuthalIntegration(geometry, mask)
    good = (~mask).astype(float)

    def blurred(half, _, __):  # an over-smoothing denoiser: rings 3 px wider
        out = gaussian_filter(half, 3.0) / np.maximum(gaussian_filter(good, 3.0), 1e-6)
        return np.where(mask, 0, out)

    (check,) = held_out_iq(blurred, _frames(truth, mask, 4, seed=9), integ, npt=NPT)
    q = check.q_nm
    for q0 in (0.9, 1.6):
        near = np.abs(q - q0) < 0.05
        assert check.fallback[near].any(), f"ring at {q0} nm^-1 not caught"
    far = (np.abs(q - 0.9) > 0.25) & (np.abs(q - 1.6) > 0.25)
    assert check.fallback[far].mean() <= 0.2
    assert check.ranges() and check.summary()["fallback_fraction"] > 0
    frame = _frames(truth, mask, 1, seed=1)[0]
    raw = integ.integrate(frame, npt=NPT, error_model="poisson")
    served = blurred(frame, 0, 0)
    den = integ.integrate(served, npt=NPT, variance=served)
    intensity, sigma = check.apply(raw, den)
    assert np.array_equal(intensity[check.fallback], raw.intensity[check.fallback])
    assert np.array_equal(sigma[check.fallback], raw.sigma[check.fallback])


def test_no_fall_back_at_the_boundary_beyond_the_false_alarm_rate(scene):
    """A 'denoiser' exactly as good as raw (an independent Poisson draw of the half's
    expectation) is the worst case that must not fall back: over 8 scans, the fraction of
    bins that do is the false-alarm rate (z_alarm 3 per block of 6 bins)."""
    geometry, truth, mask = scene
    integ = AzimuthalIntegration(geometry, mask)
    rng = np.random.default_rng(13)
    flagged = []
    for scan in range(8):
        checks = held_out_iq(lambda half, _, __: np.where(mask, 0, rng.poisson(0.5 * truth)),
                             _frames(truth, mask, 4, seed=100 + scan), integ, npt=NPT,
                             sectors=(None, SECTOR))
        flagged += [c.fallback[np.isfinite(c.ratio)].mean() for c in checks]
    print(f"false-alarm fraction of bins {np.mean(flagged):.4f}")
    assert np.mean(flagged) <= 0.05


#: The published 30° sector's rotations by multiples of 30° inside pyFAI's (-180°, 180°).
ROTATED = [(-15.0 + 30.0 * k, 15.0 + 30.0 * k) for k in range(-5, 6)]


def test_a_sector_borrows_the_full_rings_bias_on_an_isotropic_pattern(scene):
    """An unbiased denoiser of known error (the half averaged with four independent draws
    of its expectation: ratio 0.2 everywhere). A 30° sector's own squared bias is noise as
    large as that ratio; shrunk towards the full ring's (12 times the pixels), its sigma
    ratio must scatter less about 0.2 over the 11 sectors, and keep little of its own."""
    geometry, truth, mask = scene
    integ = AzimuthalIntegration(geometry, mask)

    def with_four_twins(half, index, which):  # the same draws with and without the prior
        rng = np.random.default_rng(1000 * index + which)
        return np.where(mask, 0, (half + sum(rng.poisson(0.5 * truth) for _ in range(4))) / 5)

    frames = _frames(truth, mask, 4, seed=5)
    deviation = {}
    for prior in (False, True):
        checks = held_out_iq(with_four_twins, frames, integ, npt=NPT, sectors=ROTATED,
                             ring_prior=prior)
        assert len(checks) == len(ROTATED)  # the full ring is checked, not returned
        deviation[prior] = np.mean([np.nanmean(np.abs(np.log(c.ratio / 0.2)))
                                    for c in checks])
        kept = [c.noise.get("bias_kept") for c in checks]
    print(f"mean |log(ratio / 0.2)| over 11 sectors: own {deviation[False]:.3f}, "
          f"towards the ring {deviation[True]:.3f}")
    assert deviation[True] < 0.8 * deviation[False]
    assert all(k is not None for k in kept) and np.mean(kept) < 0.5


def test_a_sector_keeps_its_own_bias_where_the_denoiser_smooths_an_anisotropy():
    """A denoiser that takes 30 % of an anisotropic pattern's azimuthal modulation away:
    the full ring's I(q) is unbiased, a sector's is not. The ring's prior must not hide
    that bias: the sector keeps most of its own squared bias, and its sigma ratio stays
    well above the ring's."""
    geometry = DetectorGeometry.from_center((128, 128), (60.5, 63.3))
    q, chi = geometry.q_map(), geometry.chi_map()
    truth = (0.3 + 2.0 * np.exp(-q / 1.0)) * (1 + 0.6 * np.cos(2 * chi))
    mask = np.zeros(geometry.shape, bool)
    mask[55:66, 58:69] = True
    integ = AzimuthalIntegration(geometry, mask)
    radius = np.rint(geometry.radius_map()).astype(int)[~mask]
    ring_mean = (np.bincount(radius, truth[~mask]) / np.maximum(np.bincount(radius), 1))
    flattened = np.zeros_like(truth)
    flattened[~mask] = 0.7 * truth[~mask] + 0.3 * ring_mean[radius]

    def smoothing_the_anisotropy(half, index, which):
        rng = np.random.default_rng(1000 * index + which)
        return np.where(mask, 0, sum(rng.poisson(0.5 * flattened) for _ in range(4)) / 4)

    frames = _frames(truth, mask, 4, seed=5)
    ratios = {}
    for prior in (False, True):
        ring, sector = held_out_iq(smoothing_the_anisotropy, frames, integ, npt=NPT,
                                   sectors=(None, SECTOR), ring_prior=prior)
        ratios[prior] = float(np.nanmedian(sector.ratio))
    print(f"median ratio: ring {np.nanmedian(ring.ratio):.3f}, sector own "
          f"{ratios[False]:.3f}, towards the ring {ratios[True]:.3f}, kept "
          f"{sector.noise['bias_kept']:.2f}")
    assert sector.noise["bias_kept"] >= 0.7
    assert ratios[True] >= 0.8 * ratios[False]
    assert ratios[True] >= 3.0 * np.nanmedian(ring.ratio)
