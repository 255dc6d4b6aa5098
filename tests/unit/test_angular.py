"""The per-shell angular model (denoise/angular.py): smooth anisotropic patterns pooled shell
by shell, the order chosen by the data, misfits found, shells keeping their totals."""

from __future__ import annotations

import numpy as np

from bluesky_symdenoise.denoise.angular import (
    BAND_PX,
    KEPT_MIN_PIXELS,
    REFRESH_FRAMES,
    ScanAngularModel,
    angular_model,
    held_out_band_weights,
    misfit,
    mix_within_shells,
    polar_maps,
)

SHAPE = (160, 150)
CENTER = (83.4, 71.8)


def oriented_pattern(anisotropy: float, chi0: float = 0.7, level: float = 40.0) -> np.ndarray:
    """A SAXS-like decay with a 2-fold orientation, in expected counts."""
    radius, azimuth = polar_maps(SHAPE, CENTER)
    decay = level / (1.0 + (radius / 25.0) ** 3) + 0.3
    return decay * (1.0 + anisotropy * np.cos(2.0 * (azimuth - chi0)))


def guinier_behind_a_beamstop(edge_px: float, seed: int):
    """A Guinier decay falling by 2.5 times a pixel from a beamstop of radius ``edge_px``,
    with a weak 2-fold orientation: radius, azimuth, valid pixels, truth and counts."""
    radius, azimuth = polar_maps(SHAPE, CENTER)
    good = radius >= edge_px
    truth = (250.0 * np.exp(-0.9 * (radius - edge_px)) + 0.4) * (
        1.0 + 0.15 * np.cos(2.0 * (azimuth - 0.3)))
    counts = np.where(good, np.random.default_rng(seed).poisson(truth), 0).astype(float)
    return radius, azimuth, good, truth, counts


def test_an_oriented_pattern_is_recovered_far_better_than_raw_and_its_order_found():
    truth = oriented_pattern(0.4)
    good = np.ones(SHAPE, bool)
    good[:, 140:] = False  # a gap
    counts = np.random.default_rng(3).poisson(truth).astype(float)
    radius, azimuth = polar_maps(SHAPE, CENTER)
    model, summary = angular_model(counts, good, radius, azimuth)
    use = good & np.isfinite(model) & (radius > 4)
    raw_error = np.mean((counts - truth)[use] ** 2)
    model_error = np.mean((model - truth)[use] ** 2)
    assert model_error < raw_error / 20  # a shell's hundreds of pixels pooled
    assert np.all(np.isnan(model[~good]))
    inner = summary["orders"][1:5]  # bands with counts enough to see the orientation
    assert all(order >= 2 for order in inner), summary


def test_a_steep_decay_next_to_a_beamstop_is_followed_and_a_weak_orientation_found():
    """Next to a beamstop a Guinier decay falls by 2.5 times a pixel: the radial spline
    (on the log scale) follows it inside each shell, and a weak 2-fold orientation is found
    without the odd orders it does not have."""
    radius, azimuth, good, truth, counts = guinier_behind_a_beamstop(8.0, seed=11)
    model, summary = angular_model(counts, good, radius, azimuth)
    inner = good & (radius < 16)
    raw_error = np.mean((counts - truth)[inner] ** 2)
    model_error = np.mean((model - truth)[inner] ** 2)
    assert model_error < raw_error / 15, (model_error, raw_error)
    assert summary["origin_px"] == 8 and summary["orders"][0] == 2, summary  # shells 8-15


def test_another_frame_refitted_with_a_chosen_structure_is_as_good_as_choosing_again():
    """A scan's frames share each band's knots and terms: refitting only the coefficients
    of another frame gives its model as well as choosing the structure again would."""
    truth = oriented_pattern(0.3, level=10.0)
    good = np.ones(SHAPE, bool)
    good[:, 140:] = False
    radius, azimuth = polar_maps(SHAPE, CENTER)
    rng = np.random.default_rng(21)
    first, second = (rng.poisson(truth).astype(float) for _ in range(2))
    _, chosen = angular_model(first, good, radius, azimuth)
    fresh, summary = angular_model(second, good, radius, azimuth)
    refit, again = angular_model(second, good, radius, azimuth, structure=chosen["structure"],
                                 bands=[1, 2, 3])
    use = good & np.isfinite(refit)
    assert use.any() and not np.isfinite(refit[radius < BAND_PX]).any()  # band 0 not asked
    error = np.mean((refit - truth)[use] ** 2) / np.mean((fresh - truth)[use] ** 2)
    assert 0.8 < error < 1.1, error
    assert again["orders"][1:4] == chosen["orders"][1:4]


def test_the_scan_model_chooses_once_per_dose_and_again_after_a_while(monkeypatch):
    """:class:`ScanAngularModel` chooses the structure on the first frame at a dose, refits
    the next ones, chooses again for a frame at half the dose (a held-out half) and after
    :data:`REFRESH_FRAMES` frames."""
    from bluesky_symdenoise.denoise import angular

    chosen = []
    band_model = angular._band_model
    monkeypatch.setattr(angular, "_band_model",
                        lambda *a, **k: chosen.append(1) or band_model(*a, **k))
    truth = oriented_pattern(0.3, level=10.0)
    good = np.ones(SHAPE, bool)
    radius, azimuth = polar_maps(SHAPE, CENTER)
    rng = np.random.default_rng(22)
    fitter = ScanAngularModel(bands=[2])
    fitter.fit(rng.poisson(truth).astype(float), good, radius, azimuth)
    assert len(chosen) == 1  # one band asked for, chosen once
    for _ in range(REFRESH_FRAMES - 1):
        model, _ = fitter.fit(rng.poisson(truth).astype(float), good, radius, azimuth)
    assert len(chosen) == 1 and np.isfinite(model[(radius >= 16) & (radius < 24)]).all()
    fitter.fit(rng.poisson(truth / 2).astype(float), good, radius, azimuth)
    assert len(chosen) == 2  # another dose
    fitter.fit(rng.poisson(truth).astype(float), good, radius, azimuth)
    assert len(chosen) == 3  # the first dose's structure has served its frames


def test_bands_start_at_the_beamstop_edge_so_its_brightest_pixels_get_the_model():
    """A beamstop whose edge is not on a band boundary (here 7.9 px: a sliver of shell 7
    outside it) must not leave those pixels, the brightest of a SAXS pattern, in a band
    too sparse to fit: the bands start at the innermost shell with data."""
    radius, azimuth, good, truth, counts = guinier_behind_a_beamstop(7.9, seed=12)
    model, summary = angular_model(counts, good, radius, azimuth)
    assert summary["origin_px"] == 7
    edge = good & (radius < 8.0)
    assert edge.any() and np.isfinite(model[edge]).all()
    assert np.all(np.abs(model[edge] / truth[edge] - 1.0) < 0.1)
    # Against an independent draw the model beats the raw counts there: its band has weight.
    rest = np.where(good, np.random.default_rng(13).poisson(truth), 0).astype(float)
    blend = held_out_band_weights(model, counts, rest, good, radius, summary["orders"])
    assert blend.origin == 7 and blend.band_weight(radius)[edge].min() > 0.5


def test_an_isotropic_pattern_gets_no_harmonics():
    truth = oriented_pattern(0.0)
    counts = np.random.default_rng(4).poisson(truth).astype(float)
    radius, azimuth = polar_maps(SHAPE, CENTER)
    _, summary = angular_model(counts, np.ones(SHAPE, bool), radius, azimuth)
    assert sum(order > 0 for order in summary["orders"]) <= 1, summary


def test_a_spot_the_model_cannot_hold_is_found_as_a_misfit():
    truth = oriented_pattern(0.3)
    truth[30:33, 100:103] += 25.0  # a Bragg spot on the smooth pattern
    counts = np.random.default_rng(5).poisson(truth).astype(float)
    good = np.ones(SHAPE, bool)
    radius, azimuth = polar_maps(SHAPE, CENTER)
    model, _ = angular_model(counts, good, radius, azimuth)
    bad = misfit(counts, model, good)
    assert bad[30:33, 100:103].all()
    assert bad[good].mean() < 0.05  # the smooth pattern itself fits


def test_the_mix_keeps_every_shell_total_of_the_estimate():
    rng = np.random.default_rng(6)
    truth = oriented_pattern(0.3)
    estimate = truth * rng.uniform(0.8, 1.2, SHAPE)
    model = truth.copy()
    model[:10] = np.nan
    good = np.ones(SHAPE, bool)
    radius, _ = polar_maps(SHAPE, CENTER)
    weight = np.full(SHAPE, 0.7)
    mixed = mix_within_shells(estimate, model, weight, good, radius)
    shell = np.floor(radius).astype(int)
    # Every shell of KEPT_MIN_PIXELS pixels or more keeps its total (the sparse ones next to
    # the centre and in the corners keep theirs together with the next shells out).
    used = np.isfinite(model)
    full = np.bincount(shell[used], minlength=shell.max() + 1) >= KEPT_MIN_PIXELS
    inner = np.arange(len(full)) >= 5
    kept = full & inner & np.concatenate([[False], full[:-1]])
    np.testing.assert_allclose(np.bincount(shell.ravel(), mixed.ravel())[kept],
                               np.bincount(shell.ravel(), estimate.ravel())[kept], rtol=1e-9)
    np.testing.assert_allclose(mixed.sum(), estimate.sum(), rtol=1e-9)
    np.testing.assert_array_equal(mixed[:10], estimate[:10])  # no model there
    assert np.mean((mixed - truth) ** 2) < np.mean((estimate - truth) ** 2)


def test_split_shells_keep_a_sharp_rings_profile_within_a_shell():
    """Where a shell is split, each part keeps the estimate's total: a ring about a pixel
    wide is not widened by a model that spreads each 1 px shell's total evenly (a radial
    spline with 1-2 px knots does much the same); quarters keep it closer than halves; an
    unsplit shell takes the model's course."""
    radius, _ = polar_maps(SHAPE, CENTER)
    good = np.ones(SHAPE, bool)
    ring = 20.0 + 300.0 * np.exp(-0.5 * ((radius - 18.3) / 0.45) ** 2)
    shell = np.floor(radius).astype(int)
    broad = (np.bincount(shell.ravel(), ring.ravel()) / np.bincount(shell.ravel()))[shell]
    weight = np.ones(SHAPE)

    def split(parts):
        table = np.ones(shell.max() + 1, int)
        table[15:22] = parts
        return mix_within_shells(ring, broad, weight, good, radius, shell_parts=table)

    whole = mix_within_shells(ring, broad, weight, good, radius)
    halves, quarters = split(2), split(4)
    for mixed, parts in ((halves, 2), (quarters, 4)):
        part = np.floor(radius * parts).astype(int)
        on = (part >= 15 * parts) & (part < 22 * parts)
        np.testing.assert_allclose(np.bincount(part[on], mixed[on]),
                                   np.bincount(part[on], ring[on]), rtol=1e-9)
    half = np.floor(radius * 2).astype(int)
    on = (half >= 30) & (half < 44)
    by_half = np.bincount(half[on], ring[on])
    assert np.abs(np.bincount(half[on], whole[on]) - by_half).max() > 0.05 * by_half.max()
    outside = ~on & (shell > 24)
    np.testing.assert_allclose(halves[outside], broad[outside])
    np.testing.assert_allclose(quarters[outside], broad[outside])

    def width(image):  # the ring's second moment about its mean radius
        w = np.clip(image - 20.0, 0, None) * ((radius > 15) & (radius < 22))
        mean = (w * radius).sum() / w.sum()
        return np.sqrt((w * (radius - mean) ** 2).sum() / w.sum())
    assert abs(width(halves) - width(ring)) < 0.3 * abs(width(whole) - width(ring))
    assert abs(width(quarters) - width(ring)) < 0.5 * abs(width(halves) - width(ring))


def test_the_shells_split_are_those_touching_a_crest_bin():
    """A 1 px ring bin ``k`` is centred on radius ``k`` and shares its pixels with bin
    ``k + 1``: shell ``k`` (radii ``k`` to ``k + 1``) is split when bin ``k`` or ``k + 1``
    is a crest, in halves, or in quarters where the crest's ring is narrow."""
    from types import SimpleNamespace

    from bluesky_symdenoise.denoise.engine import _shell_parts

    crests = np.zeros(12, bool)
    crests[[5, 6]] = True
    analysis = SimpleNamespace(consistency=SimpleNamespace(ring_crests=crests,
                                                           narrow_crests=None))
    assert np.flatnonzero(_shell_parts(analysis) == 2).tolist() == [4, 5, 6]
    assert np.flatnonzero(_shell_parts(analysis) > 1).tolist() == [4, 5, 6]
    narrow = np.zeros(12, bool)
    narrow[6] = True
    analysis.consistency.narrow_crests = narrow
    parts = _shell_parts(analysis)
    assert np.flatnonzero(parts == 4).tolist() == [5, 6]
    assert np.flatnonzero(parts == 2).tolist() == [4]
    assert _shell_parts(SimpleNamespace(consistency=SimpleNamespace(ring_crests=None))) is None
    assert _shell_parts(SimpleNamespace(consistency=None)) is None



def test_a_sliver_of_a_shell_outside_the_beamstop_gets_the_model():
    """A shell holding one pixel outside the beamstop does not keep that pixel's own value
    as its total: it shares the total of the next shells out, so the model reaches it."""
    radius, _ = polar_maps(SHAPE, CENTER)
    good = radius >= 7.95
    truth = np.where(good, 400.0 * np.exp(-0.4 * (radius - 7.95)), 0.0)
    estimate = truth * 0.8  # an estimate far off in that corner pixel
    estimate[good & (radius >= 8.0)] = truth[good & (radius >= 8.0)]
    sliver = good & (radius < 8.0)
    assert 0 < sliver.sum() < KEPT_MIN_PIXELS
    mixed = mix_within_shells(estimate, truth, np.ones(SHAPE), good, radius)
    np.testing.assert_allclose(mixed[sliver], truth[sliver], rtol=0.05)


def test_the_held_out_split_weighs_a_right_model_in_and_a_wrong_one_out():
    rng = np.random.default_rng(7)
    truth = oriented_pattern(0.3)
    half = rng.poisson(truth / 2).astype(float)
    rest = rng.poisson(truth / 2).astype(float)
    good = np.ones(SHAPE, bool)
    radius, _ = polar_maps(SHAPE, CENTER)
    noisy = half  # the "other" estimate: the half itself
    right = held_out_band_weights(truth / 2, noisy, rest, good, radius, [2] * 20)
    wrong = held_out_band_weights(truth / 2 * 1.8, noisy, rest, good, radius, [2] * 20)
    n_inner = int(60 // BAND_PX)
    assert min(right.weights[:n_inner]) > 0.8
    assert max(wrong.weights[:n_inner]) < 0.5


def test_the_engine_mixes_the_model_in_where_the_split_favours_it_and_it_pays_off():
    """``denoise_scan`` on an oriented SAXS scan: the held-out split puts the angular model
    in, the provenance says where, the image is better than without it, totals kept."""
    from bluesky_symdenoise.denoise.engine import ScanDenoiser
    from bluesky_symdenoise.simulate.scenes import make_scene

    scene = make_scene("saxs", shape=(128, 128), seed=21)
    rng = np.random.default_rng(21)
    frames = np.stack([scene.expose(1.0, rng) for _ in range(3)])
    truth = scene.scaled(1.0)
    scored = ~scene.mask & ~scene.defects.bad
    errors = {}
    for use in (True, False):
        denoiser = ScanDenoiser(method="auto", budget_s=8, angular_model=use, seed=0)
        result = denoiser.run(frames, mask=scene.mask, center=scene.geometry.center,
                              bad_pixels="mask")
        errors[use] = float(np.mean((result.denoised[1] - truth)[scored] ** 2))
        if use:
            assert "angular model mixed in" in result.reason, result.reason
            assert any(w > 0 for w in result.provenance["angular_model"]["model_weights"])
            kept = result.denoised[:, scored].sum() / frames[:, scored].sum()
            assert abs(kept - 1) < 0.005
        else:
            assert "angular_model" not in result.provenance
    assert errors[True] < 0.7 * errors[False], errors


def test_a_failing_model_is_skipped_and_said_so(monkeypatch):
    """The angular model is an extra: if it fails, the network's frames are served as they
    are and the reason and provenance events say why."""
    from bluesky_symdenoise.denoise import angular, engine
    from bluesky_symdenoise.denoise.engine import ScanDenoiser
    from bluesky_symdenoise.denoise.selection import binomial_split

    truth = oriented_pattern(0.3)
    frames = np.random.default_rng(8).poisson(truth, size=(3, *SHAPE)).astype(np.float32)
    denoiser = ScanDenoiser(method="symmetry", budget_s=0)
    analysis = denoiser.analyse(frames, center=CENTER)
    half, rest = binomial_split(frames[1], seed=1)

    def broken(*args, **kwargs):
        raise FloatingPointError("no fit")

    monkeypatch.setattr(engine, "angular_model", broken)
    monkeypatch.setattr(angular, "angular_model", broken)  # the per-scan fitter's
    clause = denoiser.check_angular_model(analysis, half, [], half.astype(np.float64), rest)
    assert "skipped (FloatingPointError: no fit)" in clause and denoiser.angular is None
    denoiser.angular = engine.AngularBlend(weights=(1.0,) * 20, orders=(0,) * 20)
    served = denoiser.with_angular_model(analysis, frames[:1], frames[:1], [[]])
    np.testing.assert_array_equal(served, frames[:1])
    assert any("angular model skipped on a frame" in e for e in denoiser.events)


def test_a_band_seen_on_a_short_arc_only_is_fitted_without_raising():
    """Harmonics the pixels cannot tell apart (a detector corner, a wedge between gaps)
    once made the normal matrix singular and the frame was served without the model."""
    radius, azimuth = polar_maps(SHAPE, CENTER)
    good = (np.abs(azimuth - 0.5) < 0.2) & (radius > 6)
    truth = oriented_pattern(0.3)
    counts = np.where(good, np.random.default_rng(12).poisson(truth), 0).astype(float)
    model, _ = angular_model(counts, good, radius, azimuth)
    fitted = np.isfinite(model) & good
    assert fitted.sum() > 0.5 * good.sum()
    assert np.mean((model - truth)[fitted] ** 2) < np.mean((counts - truth)[fitted] ** 2)


def test_photon_equivalent_values_below_zero_keep_the_fit_finite():
    """An integrating detector's dark-subtracted photon-equivalent frames hold values below
    0 (readout noise): the deviance stays finite, so the order choice still works."""
    radius, azimuth = polar_maps(SHAPE, CENTER)
    truth = oriented_pattern(0.3)
    rng = np.random.default_rng(13)
    frame = rng.poisson(truth) + rng.normal(0.0, 0.6, SHAPE)
    assert (frame < 0).any()
    good = np.ones(SHAPE, bool)
    model, summary = angular_model(frame, good, radius, azimuth)
    inner = np.isfinite(model) & (radius > 4) & (radius < 60)
    assert np.isfinite(model[inner]).all()
    assert np.mean((model - truth)[inner] ** 2) < np.mean((frame - truth)[inner] ** 2) / 10
    assert all(0 < order <= 4 for order in summary["orders"][1:5]), summary


def _order2_kept(model: np.ndarray, truth: np.ndarray, good: np.ndarray,
                 azimuth: np.ndarray) -> float:
    """The order-2 harmonic of ``model`` over ``truth`` (relative to each one's mean),
    projected on the truth's: 1 keeps its anisotropy, 0 flattens it."""
    use = good & np.isfinite(model)
    basis = np.exp(2j * azimuth[use])

    def harmonic(image: np.ndarray) -> complex:
        return complex(np.sum(image[use] * basis) / np.sum(image[use]))

    reference = harmonic(truth)
    return float((harmonic(model) * np.conj(reference)).real / abs(reference) ** 2)


def test_an_orientation_too_weak_for_one_band_is_kept_when_the_frame_shows_it(monkeypatch):
    """At low counts a 15 % 2-fold orientation is within a band's noise, so no band alone
    keeps a harmonic and the model is the ring mean (flattened); pooled over the bands the
    frame shows it, every band gets the order, and the model keeps the orientation on
    average. An isotropic frame gets no order."""
    from bluesky_symdenoise.denoise import angular

    truth = oriented_pattern(0.15, level=1.0) * 0.4  # 0.1-0.5 counts a pixel
    good = np.ones(SHAPE, bool)
    radius, azimuth = polar_maps(SHAPE, CENTER)
    draws = [np.random.default_rng(seed).poisson(truth).astype(float) for seed in range(6)]
    kept = []
    for counts in draws:
        model, summary = angular_model(counts, good, radius, azimuth)
        assert summary["scan_orders"] == [2], summary
        kept.append(_order2_kept(model, truth, good, azimuth))
    assert abs(np.mean(kept) - 1.0) < 0.15, kept
    # Each band on its own (the model before the frame's orders): flattened.
    monkeypatch.setattr(angular, "scan_orders", lambda starts, *frame: ((), list(starts)))
    alone = [_order2_kept(angular_model(counts, good, radius, azimuth)[0], truth, good,
                          azimuth) for counts in draws]
    assert np.mean(alone) < 0.5, alone
    monkeypatch.undo()
    for seed in range(6):
        flat = np.random.default_rng(100 + seed).poisson(
            oriented_pattern(0.0, level=1.0) * 0.4).astype(float)
        _, summary = angular_model(flat, good, radius, azimuth)
        assert summary["scan_orders"] == [], summary
