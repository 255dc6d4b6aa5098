"""bench.iq's worst binning (the expected ratio of each binning, beside the noisiest scan)
and its strongest peak's columns."""

from __future__ import annotations

import numpy as np
import pytest

from bench.iq import _mean_pm, peak_bias, worst_mean_ratio


@pytest.mark.fast
def test_the_worst_binning_is_the_largest_mean_over_the_seeds():
    full, sector = (1.0, "q_nm^-1", False), (2.0, "2th_deg", True)
    # One scan's full ring is worse than raw (a noisy corner bin), the others' better; the
    # sector is a little worse than raw's on average.
    rows = [{"ratios": {full: 1.30, sector: 0.95}, "worst_ratio": 1.30},
            {"ratios": {full: 0.50, sector: 1.05}, "worst_ratio": 1.05},
            {"ratios": {full: 0.60, sector: 1.03}, "worst_ratio": 1.03}]
    mean, where = worst_mean_ratio(rows)
    assert mean == pytest.approx((0.95 + 1.05 + 1.03) / 3)
    assert where == "2x npt, 2th, sector"
    assert max(r["worst_ratio"] for r in rows) == pytest.approx(1.30)


@pytest.mark.fast
def test_a_rise_by_the_beamstop_is_scored_as_its_intensity_not_as_a_peak():
    q = np.linspace(0.04, 0.7, 100)
    # SAXS: the maximum is the first bins, the half maximum reached a few bins out.
    saxs = 5.0 * np.exp(-(q / 0.05) ** 2) + 0.05
    # 10 % more intensity by the beamstop is 10 % more "area", not a difference of the rise's
    # curvature against a line through the cut window's ends.
    edge = peak_bias(q, saxs * 1.1, saxs)
    assert edge["area"] == pytest.approx(0.1) and edge["height"] == pytest.approx(0.1)
    assert edge["breadth"] == pytest.approx(0.0, abs=1e-9)
    shifted = saxs + 0.02 * np.exp(-0.5 * ((q - 0.06) / 0.01) ** 2)
    assert abs(peak_bias(q, shifted, saxs)["area"]) < 0.05
    # A ring inside the profile keeps its background line: an offset does not change it.
    ring = 0.1 + np.exp(-0.5 * ((q - 0.3) / 0.01) ** 2)
    inside = peak_bias(q, ring + 0.05, ring)
    assert inside["area"] == pytest.approx(0.0, abs=1e-9)
    assert inside["height"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.fast
def test_a_paired_difference_carries_its_standard_error():
    assert _mean_pm([0.01, 0.03, float("nan")]) == "+2.0% ± 1.0%"
    assert _mean_pm([0.05]) == "+5.0%"
    assert _mean_pm([float("nan")]) == "—"


@pytest.mark.fast
def test_the_runs_shape_ablation_keeps_the_denoised_shape_in_a_run(monkeypatch):
    from bench.iq import _denoised_runs_shape
    from bluesky_symdenoise.denoise import consistency

    # Registered first, so the ablation's replacement is undone after the test.
    monkeypatch.setattr(consistency, "_shape_in_runs", consistency._shape_in_runs)
    pixels = np.array([4.0, 4, 3, 3, 2, 2, 1, 1])
    den = np.full(pixels.size, 0.05)
    counts = 10 * np.array([2.0, 2, 1.5, 1.5, 1, 1, 0, 0])  # none in the last two bins

    def levels():
        merged = consistency._merge_sparse_bins(den, den.copy(), 3 * pixels,
                                                scan_counts=counts, scan_pixels=pixels)
        assert merged is not None
        return merged[0] / merged[1]

    assert np.all(levels()[-2:] < 0.5)  # the scan's counts share the run's level
    _denoised_runs_shape()
    np.testing.assert_allclose(levels(), 1.0)  # the denoised shape alone


@pytest.mark.fast
def test_a_fitted_peak_reads_the_height_and_width_not_the_highest_bin():
    from bench.iq import fitted_peak_bias

    q = np.linspace(1.0, 3.0, 200)
    ring = 0.2 + 0.05 * q + np.exp(-0.5 * ((q - 2.0) / 0.03) ** 2)
    same = fitted_peak_bias(q, ring, ring)
    assert same["fit_height"] == pytest.approx(0.0, abs=1e-6)
    assert same["fit_fwhm"] == pytest.approx(0.0, abs=1e-6)
    # 5 % broader at the same area: the FWHM 5 % wider, the height 1/1.05 of the truth's.
    broad = 0.2 + 0.05 * q + np.exp(-0.5 * ((q - 2.0) / 0.0315) ** 2) / 1.05
    fitted = fitted_peak_bias(q, broad, ring)
    assert fitted["fit_fwhm"] == pytest.approx(0.05, abs=1e-3)
    assert fitted["fit_height"] == pytest.approx(1 / 1.05 - 1, abs=1e-3)
    # Noise lifts the highest bin on average; the fit's height stays unbiased.
    rng = np.random.default_rng(3)
    lifted, fits = [], []
    for _ in range(200):
        noisy = ring + rng.normal(0.0, 0.1, q.size)
        lifted.append(peak_bias(q, noisy, ring)["height"])
        fits.append(fitted_peak_bias(q, noisy, ring)["fit_height"])
    assert np.mean(lifted) > 0.05
    assert abs(np.nanmean(fits)) < 0.02
    # No peak (a window cut by the profile's end): not fitted.
    saxs = 5.0 * np.exp(-(q / 1.05) ** 8) + 0.05
    assert np.isnan(fitted_peak_bias(q, saxs, saxs)["fit_height"])


@pytest.mark.fast
def test_one_scene_under_fresh_noise():
    from bench.quality import make_scan

    scan = make_scan("powder", 0.1, size=64, n_frames=2, seed=3007)
    again = make_scan("powder", 0.1, size=64, n_frames=2, seed=3007, noise_seed=3007)
    other = make_scan("powder", 0.1, size=64, n_frames=2, seed=3007, noise_seed=7)
    np.testing.assert_array_equal(again.frames, scan.frames)
    np.testing.assert_array_equal(other.truth, scan.truth)
    assert not np.array_equal(other.frames, scan.frames)
    # The same expectation: the two scans' totals agree within their Poisson noise.
    total, other_total = scan.frames.sum(), other.frames.sum()
    assert abs(int(total) - int(other_total)) < 5 * np.sqrt(total + other_total)


@pytest.mark.fast
def test_ours_fitted_width_is_paired_with_the_controls_on_the_same_scans():
    """Ours' row carries its fitted FWHM minus the control's (the mean of the scan's raw
    frames) scan by scan, with the standard error of that difference: here ours is 3 %
    wider on every scan, while each alone scatters by 1 % from raw's."""
    import bench.iq as iq

    def scored(fwhm: float) -> dict:
        full = {"err": 0.1, "coverage": 0.7, "z_rms": 1.0, "coverage_rate": 0.7,
                "fallback": 0.0, "err_published": 0.1, "area": 0.0, "height": 0.0,
                "breadth": 0.0, "position": 0.0, "fit_height": 0.0, "fit_fwhm": fwhm}
        return {"full": full, "sector": dict(full, coverage_11=0.7, z_rms_11=1.0),
                "worst_ratio": 1.0, "worst_where": "1x npt, q, full", "psnr": 1.0,
                "ratios": {(1.0, "q_nm^-1", False): 1.0}}

    per_seed = [{"raw": scored(0.0), "ours": scored(0.03 + 0.01 * k),
                 "classical": scored(0.0), iq.FRAMES_MEAN: scored(0.01 * k)}
                for k in range(3)]
    ours = next(line for line in iq.format_cell("lattice", 0.1, per_seed, iq.METHODS)
                if "| ours |" in line)
    fitted = ours.split("|")[12]
    assert "minus the control +0.0% ± 0.0% / +3.0% ± 0.0%" in fitted
    assert "; +0.0% ± 0.0% / +4.0% ± 0.6%" in fitted  # against raw, as before
