"""Classical fast mode (VST + BM3D/NLM, 180° average) and the zero-shot N2N baseline."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from scipy import ndimage

from bench.metrics import psnr
from bluesky_symdenoise.denoise.classical import (
    ClassicalDenoiseError,
    anscombe,
    bm3d_poisson,
    classical_denoise,
    fill_masked,
    gaussian_smooth,
    inverse_anscombe,
    nlm_poisson,
    symmetry_average,
)
from bluesky_symdenoise.geometry import DetectorGeometry


def _standin_rotate180(image, center, mask=None):
    """Bilinear 180° partner, used only while denoise.symmetry is not available."""
    image = np.asarray(image, dtype=np.float64)
    rows, cols = np.indices(image.shape, dtype=np.float64)
    pr, pc = 2 * center[0] - rows, 2 * center[1] - cols
    inside = (pr >= 0) & (pr <= image.shape[0] - 1) & (pc >= 0) & (pc <= image.shape[1] - 1)
    partner = ndimage.map_coordinates(image, [pr, pc], order=1, mode="nearest")
    valid = inside
    if mask is not None:
        hit = ndimage.map_coordinates(np.asarray(mask, float), [pr, pc], order=1,
                                      mode="nearest")
        valid = valid & (hit == 0)
    return partner, valid


@pytest.fixture
def rotate180(monkeypatch):
    try:
        from bluesky_symdenoise.denoise.symmetry import rotate180 as real
    except ImportError:
        module = types.ModuleType("bluesky_symdenoise.denoise.symmetry")
        module.rotate180 = _standin_rotate180
        monkeypatch.setitem(sys.modules, "bluesky_symdenoise.denoise.symmetry", module)
        return _standin_rotate180
    return real


def _ring_scene(n: int = 128, level: float = 3.0):
    geometry = DetectorGeometry.from_center((n, n), (n / 2 - 0.5, n / 2 - 0.5))
    q = geometry.q_map()
    truth = 0.3 + 0.2 * q / q.max()
    for q0, amp in ((0.6, 1.0), (1.1, 0.6), (1.5, 0.4)):
        truth = truth + amp * np.exp(-0.5 * ((q - q0) / 0.03) ** 2)
    truth = truth * level / truth.mean()
    mask = np.zeros(truth.shape, dtype=bool)
    mask[:, n // 3:n // 3 + 3] = True  # a detector gap
    return geometry, truth, mask


@pytest.mark.parametrize("lam", [1.0, 3.0, 10.0])
def test_inverse_anscombe_is_unbiased(lam):
    rng = np.random.default_rng(1)
    x = rng.poisson(lam, 200_000)
    # an ideal denoiser returns E[anscombe(x)]; the inverse must map it back to lam
    assert inverse_anscombe(anscombe(x).mean()) == pytest.approx(lam, rel=0.02)


def test_generalised_anscombe_stabilises_readout_noise():
    rng = np.random.default_rng(2)
    x = rng.poisson(5.0, 200_000) + rng.normal(0.0, 1.0, 200_000)
    z = anscombe(x, sigma=1.0)
    assert z.std() == pytest.approx(1.0, abs=0.05)
    assert inverse_anscombe(z.mean(), sigma=1.0) == pytest.approx(5.0, rel=0.03)
    assert inverse_anscombe(-3.0) == 0.0


def test_fill_masked_fills_gaps_with_local_values():
    image = np.tile(np.linspace(0, 10, 32), (32, 1))
    mask = np.zeros(image.shape, bool)
    mask[:, 10:13] = True
    mask[:12, :12] = True  # a big hole too
    filled = fill_masked(image, mask)
    assert np.isfinite(filled).all()
    assert np.array_equal(filled[~mask], image[~mask])
    assert np.abs(filled[20:, 10:13] - image[20:, 10:13]).max() < 1.0


def test_bm3d_poisson_gains_over_raw():
    _, truth, mask = _ring_scene(128, level=3.0)
    noisy = np.random.default_rng(3).poisson(truth).astype(np.float64)
    est = bm3d_poisson(noisy, mask)
    assert est.dtype == np.float32
    assert np.all(est[mask] == 0.0)
    valid = ~mask
    gain = psnr(est, truth, valid) - psnr(noisy, truth, valid)
    assert gain > 5.0
    assert abs(est[valid].sum() / truth[valid].sum() - 1) < 0.03


def test_n_copies_keeps_the_scale():
    rng = np.random.default_rng(4)
    lam = 1.0
    average = 0.5 * (rng.poisson(lam, (64, 64)) + rng.poisson(lam, (64, 64)))
    est = nlm_poisson(average, n_copies=2)
    assert est.mean() == pytest.approx(lam, rel=0.05)
    per_pixel = np.ones((64, 64))
    per_pixel[:, 32:] = 2
    mixed = np.where(per_pixel == 2, average, rng.poisson(lam, (64, 64)))
    est = nlm_poisson(mixed, n_copies=per_pixel)
    assert est.mean() == pytest.approx(lam, rel=0.05)
    with pytest.raises(ClassicalDenoiseError):
        nlm_poisson(mixed, n_copies=np.ones((3, 3)))


def test_gaussian_smooth_ignores_masked_pixels():
    image = np.full((32, 32), 4.0)
    mask = np.zeros(image.shape, bool)
    mask[10:20, 10:20] = True
    image[mask] = 1e6
    out = gaussian_smooth(image, mask, sigma=2.0)
    assert np.allclose(out[~mask], 4.0)
    assert np.all(out[mask] == 0.0)


def test_symmetry_average_pairs_only_valid_partners(rotate180):
    rng = np.random.default_rng(5)
    counts = rng.poisson(3.0, (32, 32)).astype(np.float64)
    center = (15.5, 15.5)  # half-integer: every partner is a pixel
    mask = np.zeros(counts.shape, bool)
    mask[2, 3] = True
    validity = np.ones(counts.shape, bool)
    validity[:, :4] = False
    avg, n = symmetry_average(counts, center, mask, validity)
    flipped = counts[::-1, ::-1]
    assert n[10, 10] == 2 and avg[10, 10] == pytest.approx(0.5 * (counts[10, 10]
                                                                  + flipped[10, 10]))
    assert n[2, 3] == 1  # masked pixel
    assert n[31 - 2, 31 - 3] == 1 and avg[29, 28] == counts[29, 28]  # partner masked
    assert np.all(n[:, :4] == 1) and np.array_equal(avg[:, :4], counts[:, :4])
    # off-centre: partners of the far side fall off the detector
    _, n_off = symmetry_average(counts, (8.0, 15.5), None)
    assert np.all(n_off[20:] == 1) and np.all(n_off[:16] == 2)


def test_classical_denoise_with_symmetry(rotate180):
    _, truth, mask = _ring_scene(64, level=3.0)
    noisy = np.random.default_rng(6).poisson(truth).astype(np.float64)
    est = classical_denoise(noisy, mask=mask, center=(31.5, 31.5), engine="nlm")
    assert est.dtype == np.float32 and est.shape == truth.shape
    assert np.all(est[mask] == 0.0)
    assert psnr(est, truth, ~mask) > psnr(noisy, truth, ~mask) + 3.0
    with pytest.raises(ClassicalDenoiseError):
        classical_denoise(noisy, engine="wavelet")


def test_zs_noise2noise_improves_and_is_deterministic():
    from bluesky_symdenoise.denoise.zero_shot import zs_noise2noise

    _, truth, mask = _ring_scene(64, level=3.0)
    noisy = np.random.default_rng(7).poisson(truth).astype(np.float64)
    est = zs_noise2noise(noisy, mask=mask, steps=200, seed=0, num_threads=1)
    assert est.dtype == np.float32
    assert np.all(est[mask] == 0.0)
    assert psnr(est, truth, ~mask) > psnr(noisy, truth, ~mask) + 3.0
    assert abs(est[~mask].sum() / truth[~mask].sum() - 1) < 0.05
    again = zs_noise2noise(noisy, mask=mask, steps=20, seed=1, num_threads=1)
    assert np.array_equal(again, zs_noise2noise(noisy, mask=mask, steps=20, seed=1,
                                                num_threads=1))


def test_a_large_frame_goes_through_the_means_in_bands_with_the_same_result(monkeypatch):
    """Above ``LARGE_FRAME_PIXELS`` the classical fast mode denoises bands of rows with a
    halo: the frame comes out as the whole frame's (masked pixels 0)."""
    from bluesky_symdenoise.denoise import classical
    from bluesky_symdenoise.simulate.scenes import make_scene

    scene = make_scene("powder", shape=(200, 180), seed=8)
    frame = scene.expose(3.0, np.random.default_rng(8))
    center = scene.geometry.center
    whole = classical.classical_denoise(frame, mask=scene.mask, center=center, engine="nlm")
    monkeypatch.setattr(classical, "LARGE_FRAME_PIXELS", 1000)
    monkeypatch.setattr(classical, "BAND_ROWS", 48)
    banded = classical.classical_denoise(frame, mask=scene.mask, center=center,
                                         engine="nlm")
    good = ~scene.mask
    assert banded.dtype == np.float32 and (banded[scene.mask] == 0).all()
    np.testing.assert_allclose(banded[good], whole[good], rtol=1e-4, atol=1e-4)
