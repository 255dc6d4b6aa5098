"""bench.bias's standard error: over the scans' means, not over their correlated frames."""

from __future__ import annotations

import numpy as np
import pytest

from bench.bias import scan_mean_and_error


@pytest.mark.fast
def test_the_error_is_over_the_scans_not_their_frames():
    # Four scans of six frames: each scan's frames share an offset (its network's bias) and
    # scatter little around it, so the frames are far from independent.
    rng = np.random.default_rng(0)
    offsets = np.array([-0.04, 0.02, 0.03, -0.01])
    values = (offsets[:, None] + 0.001 * rng.standard_normal((4, 6))).reshape(24, 1)
    mean, error = scan_mean_and_error(values, scans=4)
    assert mean[0] == pytest.approx(values.mean())
    per_scan = values.reshape(4, 6).mean(1)
    assert error[0] == pytest.approx(per_scan.std(ddof=1) / 2.0)
    # Taken over the 24 frames as if independent, the error would be about half as large.
    assert values.std(ddof=1) / np.sqrt(24) < 0.6 * error[0]


@pytest.mark.fast
def test_a_failed_fit_is_left_out_of_the_means_not_spread_over_them():
    # Two scans of two frames, two columns; one frame's second column failed (NaN).
    values = np.array([[0.01, 0.02], [0.03, np.nan], [0.05, 0.06], [0.07, 0.08]])
    mean, error = scan_mean_and_error(values, scans=2)
    assert mean[0] == pytest.approx((0.02 + 0.06) / 2)
    assert mean[1] == pytest.approx((0.02 + 0.07) / 2)
    assert np.all(np.isfinite(error))


@pytest.mark.fast
def test_a_set_option_reads_its_value_as_json_where_it_can():
    from bench.quality import config_option  # bench.bias's and bench.heldout's --set

    assert config_option("angular_model=false") == ("angular_model", False)
    assert config_option("feature_z_threshold=4.5") == ("feature_z_threshold", 4.5)
    assert config_option("method=symmetry") == ("method", "symmetry")
    with pytest.raises(SystemExit):
        config_option("angular_model")


@pytest.mark.fast
def test_the_anisotropy_kept_is_one_for_the_truth_zero_flattened_and_two_doubled():
    from bench import metrics
    from bench.bias import anisotropy_kept
    from bluesky_symdenoise.integrate.azimuthal import AzimuthalIntegration
    from bluesky_symdenoise.simulate import scenes

    oriented = scenes.saxs(shape=(128, 128), seed=3, anisotropy=0.2)
    flat = scenes.saxs(shape=(128, 128), seed=3, anisotropy=0.0)
    doubled = scenes.saxs(shape=(128, 128), seed=3, anisotropy=0.4)
    integ = AzimuthalIntegration(oriented.geometry, oriented.mask)
    npt = metrics.default_npt(oriented.geometry)
    truth = oriented.expectation

    def kept(image):
        return anisotropy_kept(integ, image, truth, npt=npt)

    assert kept(truth) == pytest.approx(1.0)
    assert kept(3.0 * truth) == pytest.approx(1.0)  # a scale is not an anisotropy
    assert abs(kept(flat.expectation)) < 0.05
    assert kept(doubled.expectation) == pytest.approx(2.0, abs=0.1)
    # Poisson counts of the truth (20 a pixel): unbiased, so their mean over draws is near
    # 1 (one draw's spread is about 0.08 here).
    rng = np.random.default_rng(0)
    draws = [kept(rng.poisson(truth * 20.0 / truth.mean()).astype(float)) for _ in range(8)]
    assert np.mean(draws) == pytest.approx(1.0, abs=0.08)
    assert np.isnan(anisotropy_kept(integ, flat.expectation, flat.expectation, npt=npt))


@pytest.mark.fast
def test_every_scene_the_bench_offers_scores_something():
    """A scene with nothing to score ran its scans and then failed on an empty table (the
    lattice did): each scene offered has columns, the lattice its strongest peak's."""
    from bench.bias import STATIC_KINDS, scored_columns

    for scene in STATIC_KINDS:
        assert scored_columns(scene), scene
    assert "fitted FWHM bias" in scored_columns("lattice")
    assert scored_columns("powder")[0] == "ring area bias"
    assert scored_columns("saxs") == ["anisotropy kept − 1"]
