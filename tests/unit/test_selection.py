"""Choosing and mixing denoisers on a held-out binomial split (no ground truth)."""

import numpy as np

from bluesky_symdenoise.denoise.selection import (
    BlendWeights,
    binomial_split,
    held_out_blend,
)


def _scene():
    """A dim half and a bright half, with two estimates each good on one of them."""
    rows, cols = np.indices((128, 128))
    truth = np.where(cols < 64, 0.5, 200.0) * (1 + 0.2 * np.sin(rows / 7.0))
    rng = np.random.default_rng(3)
    frame = rng.poisson(truth).astype(np.float64)
    half, rest = binomial_split(frame, seed=1)
    target = 0.5 * truth
    noise = rng.normal(size=truth.shape)
    # "first": exact on the dim half, 10 % noisy on the bright half; "second" the reverse.
    first = target + np.where(cols < 64, 0.0, 0.1 * target * noise)
    second = target + np.where(cols < 64, 0.5 * target * noise, 0.0)
    return truth, half, rest, first, second


def test_binomial_halves_are_independent_with_half_the_expectation():
    truth, half, rest, *_ = _scene()
    assert abs(half.mean() / (0.5 * truth.mean()) - 1) < 0.01
    assert abs(np.corrcoef((half - rest).ravel(), (half + rest).ravel())[0, 1]) < 0.05


def test_held_out_blend_weights_each_estimate_where_it_is_better():
    truth, half, rest, first, second = _scene()
    good = np.ones(truth.shape, bool)
    blend = held_out_blend(first, second, rest, good, edges=(1.0,))  # mean ~ 50
    dim, bright = blend.weights
    assert dim == 1.0  # first is exact there (and the weight snaps to 1)
    assert bright < 0.1  # second is exact there
    mixed = blend.mix(first, second, good)
    error = np.mean((mixed - 0.5 * truth) ** 2)
    assert error < 0.1 * min(np.mean((first - 0.5 * truth) ** 2),
                             np.mean((second - 0.5 * truth) ** 2))
    assert blend.summary()["pixels"] == [64 * 128, 64 * 128]


def test_two_equally_good_independent_estimates_are_averaged():
    rng = np.random.default_rng(5)
    truth = np.full((128, 128), 20.0)
    half, rest = binomial_split(rng.poisson(truth).astype(np.float64), seed=2)
    first = 10.0 + rng.normal(0, 1.0, truth.shape)
    second = 10.0 + rng.normal(0, 1.0, truth.shape)
    blend = held_out_blend(first, second, rest, np.ones(truth.shape, bool), edges=())
    assert 0.35 < blend.weights[0] < 0.65



def test_a_kept_share_of_the_first_estimate_is_not_mixed():
    """``kept`` (the engine's angular model's weight) is the share of the first estimate
    that the second does not replace: w + (1 - w)·kept of the first."""
    rng = np.random.default_rng(5)
    first = rng.normal(20.0, 3.0, (32, 64))
    second = rng.normal(20.0, 1.0, (32, 64))
    kept = np.zeros(first.shape)
    kept[:, 32:] = 1.0
    kept[:8, :32] = 0.5
    good = np.ones(first.shape, bool)
    blend = BlendWeights(edges=(), weights=(0.25,), pixels=(first.size,))
    mixed = blend.mix(first, second, good, kept)
    np.testing.assert_allclose(mixed[:, 32:], first[:, 32:])
    np.testing.assert_allclose(mixed[8:, :32], 0.25 * first[8:, :32] + 0.75 * second[8:, :32])
    w = 0.25 + 0.75 * 0.5
    np.testing.assert_allclose(mixed[:8, :32], w * first[:8, :32] + (1 - w) * second[:8, :32])


def test_the_blend_is_fitted_on_the_pixels_it_mixes_only():
    """Pixels the mix leaves alone (the engine's held spots) do not fit its weights; the
    band edges still scale with the mean level over all good pixels."""
    rng = np.random.default_rng(8)
    truth = np.full((64, 64), 10.0)
    rest = rng.poisson(truth).astype(float)
    first = truth + rng.normal(0.0, 2.0, truth.shape)  # the better estimate ...
    second = truth + rng.normal(0.0, 0.5, truth.shape)
    left_alone = np.zeros(truth.shape, bool)
    left_alone[:, :32] = True
    second[left_alone] = truth[left_alone] + 5.0  # ... but there the second is far off
    good = np.ones(truth.shape, bool)
    everywhere = held_out_blend(first, second, rest, good, edges=(), snap=1.1)
    mixed_only = held_out_blend(first, second, rest, good, edges=(), snap=1.1,
                                scored=~left_alone)
    assert mixed_only.pixels == (32 * 64,) and everywhere.pixels == (64 * 64,)
    # Scored where it mixes, the better second estimate takes most of the weight.
    assert mixed_only.weights[0] < 0.2 < 0.5 < everywhere.weights[0]
