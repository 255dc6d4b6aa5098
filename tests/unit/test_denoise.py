"""The engine: input checks, methods, fallbacks, and that it denoises without bias."""

import time

import numpy as np
import pytest
import torch

from bluesky_symdenoise import DenoiseConfig, InputError, ScanDenoiser, denoise, denoise_scan
from bluesky_symdenoise.denoise.channels import ChannelContext
from bluesky_symdenoise.denoise.device import select_device
from bluesky_symdenoise.denoise.targets import ThinningPairs
from bluesky_symdenoise.simulate import scenes


def psnr(estimate, truth, valid):
    mse = np.mean((estimate[valid] - truth[valid]) ** 2)
    return 10 * np.log10(truth[valid].max() ** 2 / mse)


@pytest.fixture(scope="module")
def scan():
    scene = scenes.make_scene("textured", shape=(128, 128), seed=11)
    rng = np.random.default_rng(4)
    frames = np.stack([scene.expose(1.0, rng) for _ in range(3)])
    return scene, frames


def test_thinning_halves_are_independent_poisson_copies():
    counts = np.random.default_rng(0).poisson(3.0, size=(1, 256, 256))
    good = np.ones((256, 256), bool)
    pairs = ThinningPairs(counts, ChannelContext.without_symmetry(good), p_range=(0.5, 0.5),
                          use_neighbours=False, seed=1)
    batch = pairs.sample(2, 256)
    x1 = batch.inputs[0, 0] * (counts.mean() * 0.5)  # undo the level normalisation (≈)
    x2 = batch.target[0, 0]
    assert abs(np.corrcoef(x1.ravel(), x2.ravel())[0, 1]) < 0.02
    assert x2.mean() == pytest.approx(1.5, rel=0.03) and x2.var() == pytest.approx(1.5, rel=0.05)
    assert batch.scale[0, 0, 0, 0] == pytest.approx(x1.mean(), rel=0.05)


def test_denoise_beats_raw_without_bias(scan):
    scene, frames = scan
    start = time.perf_counter()
    result = denoise_scan(frames, mask=scene.mask, center=scene.geometry.center,
                          budget_s=14)
    elapsed = time.perf_counter() - start
    # the budget bounds the whole call (analysis, fine-tuning, held-out check, inference)
    assert elapsed < 14 * 1.25 + 2, f"budget 14 s, took {elapsed:.1f} s"
    out = result.denoised
    assert out.shape == frames.shape and out.dtype == np.float32
    valid = scene.usable
    truth = scene.expectation
    gain = psnr(out[1], truth, valid) - psnr(frames[1].astype(float), truth, valid)
    assert gain > 6.0, f"gain {gain:.1f} dB"
    bias = out[:, valid].sum() / (truth[valid].sum() * len(frames)) - 1
    assert abs(bias) < 0.02
    assert np.all(out[:, scene.mask] == 0)
    prov = result.provenance
    # auto fine-tuned the symmetry network, then kept it or the classical mode, whichever won
    # the held-out binomial check, and says so.
    assert prov["training"]["steps"] > 0 and "held-out deviance" in prov["reason"]
    assert prov["method"] in ("symmetry", "classical")
    assert prov["symmetry"]["fraction_paired"] > 0.5 and prov["model_hash"]


def test_a_held_out_mix_with_the_classical_mode_follows_its_band_weights(scan):
    from bluesky_symdenoise.denoise.selection import BlendWeights

    scene, frames = scan
    denoiser = ScanDenoiser(method="symmetry", budget_s=10)
    analysis = denoiser.analyse(frames, mask=scene.mask, center=scene.geometry.center)
    denoiser.fit(analysis, method="symmetry", seconds=1.0)
    method, reason = denoiser._check_against_classical(analysis, "symmetry", "asked")
    assert "held-out deviance" in reason
    network = denoiser.predict(analysis, method="symmetry")
    classical = denoiser._classical(analysis, engine="bm3d")
    # Network alone below 4x the mean level, classical alone above: each pixel takes one,
    # except the angular model's share of a pixel and the spots held to the raw counts,
    # which the classical mode never replaces.
    denoiser.blend = blend = BlendWeights(edges=(4.0,), weights=(1.0, 0.0), pixels=(0, 0))
    mixed = denoiser._mix_with_classical(analysis, network, blend)
    good = analysis.prepared.good
    level = 0.5 * (network[1] + classical[1])
    bright = good & (level > 4.0 * level[good].mean())
    assert bright.any() and (good & ~bright).any()
    angular = denoiser._angular_share(analysis)
    kept = np.zeros(good.shape) if angular is None else angular.copy()
    spots = analysis.consistency.spots()
    assert (good & spots).any()
    kept[spots] = 1.0
    expected = kept * network[1] + (1.0 - kept) * classical[1]
    np.testing.assert_allclose(mixed[1][bright], expected[bright], rtol=1e-5)
    # Classical alone in every band: the held spots still keep the network's values.
    everywhere = denoiser._mix_with_classical(
        analysis, network, BlendWeights(edges=(4.0,), weights=(0.0, 0.0), pixels=(0, 0)))
    np.testing.assert_allclose(everywhere[1][good], expected[good], rtol=1e-5)
    np.testing.assert_allclose(everywhere[1][spots & good], network[1][spots & good],
                               rtol=1e-5)
    np.testing.assert_allclose(mixed[1][good & ~bright], network[1][good & ~bright],
                               rtol=1e-5)
    assert "mixed with classical" in denoiser.model_origin
    record = denoiser.provenance(analysis, "symmetry", reason, 0.0)
    assert record["classical_mix"]["weights"] == [1.0, 0.0]


def test_single_frame_in_single_frame_out(scan):
    scene, frames = scan
    out = denoise(frames[0], mask=scene.mask, method="thinning", budget_s=3)
    assert out.shape == frames[0].shape and np.all(np.isfinite(out))


@pytest.mark.parametrize("method", ["noise2sr", "classical-nlm"])
def test_other_methods_beat_raw(scan, method):
    scene, frames = scan
    out = denoise(frames, mask=scene.mask, center=scene.geometry.center, method=method,
                  budget_s=8)
    valid = scene.usable
    assert psnr(out[1], scene.expectation, valid) > psnr(frames[1].astype(float),
                                                         scene.expectation, valid) + 3


def test_supervised_pairs_train_on_low_high_exposures(scan):
    scene, frames = scan
    rng = np.random.default_rng(9)
    low = np.stack([scene.expose(1.0, rng) for _ in range(2)])
    high = np.stack([scene.expose(20.0, rng) for _ in range(2)])
    result = denoise_scan(frames, mask=scene.mask, pairs=(low, high), budget_s=6)
    assert result.method == "supervised" and "paired" in result.reason
    valid = scene.usable
    assert psnr(result.denoised[1], scene.expectation, valid) > psnr(
        frames[1].astype(float), scene.expectation, valid) + 3


def test_auto_records_why(scan):
    scene, frames = scan
    short = denoise_scan(frames, mask=scene.mask, center=scene.geometry.center, budget_s=2)
    assert short.method == "classical" and "budget" in short.reason
    analysis = ScanDenoiser().analyse(frames, mask=scene.mask)
    method, reason = ScanDenoiser().choose_method(analysis, budget_s=60, have_pairs=False)
    assert method == "thinning" and "no beam centre" in reason


def test_hot_pixels_are_found_and_repaired(scan):
    scene, frames = scan
    result = denoise_scan(frames, mask=scene.mask, method="classical-nlm")
    hot = scene.defects.hot & ~scene.mask
    assert hot.any()
    assert result.analysis.prepared.defects[hot].all()
    assert np.all(result.denoised[:, hot] < 20 * scene.expectation.max())


@pytest.mark.parametrize("bad, message", [
    (lambda f, m: (f[0, 0], m), "shape"),
    (lambda f, m: (f, m[:-1]), "mask shape"),
    (lambda f, m: (np.where(~m & (np.indices(m.shape)[0] == 70), np.nan, f), m), "NaN"),
    (lambda f, m: (f - 5, m), "negative"),
    (lambda f, m: (f.astype(complex), m), "real"),
])
def test_bad_input_raises_a_clear_error(scan, bad, message):
    scene, frames = scan
    f, m = bad(frames.astype(float), scene.mask)
    with pytest.raises(InputError, match=message):
        denoise(f, mask=m, method="classical-nlm")


def test_nan_pixels_can_be_masked_instead(scan):
    scene, frames = scan
    f = frames.astype(float)
    row, col = np.argwhere(~scene.mask)[500]
    f[:, row, col] = np.nan
    result = denoise_scan(f, mask=scene.mask, method="classical-nlm", bad_pixels="mask")
    assert result.analysis.prepared.bad[row, col]
    assert any("NaN" in note for note in result.provenance["notes"])
    assert np.all(np.isfinite(result.denoised))


def test_centre_off_the_detector_raises(scan):
    scene, frames = scan
    with pytest.raises(InputError, match="off the"):
        denoise(frames, center=(500.0, 20.0), method="classical-nlm")


def test_device_choice_is_made_in_one_place():
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda")


def test_out_of_memory_falls_back_to_smaller_batches(scan, monkeypatch):
    from bluesky_symdenoise.denoise import inference, training

    scene, frames = scan
    # batches of 4 frames at inference, as on a GPU (a CPU's own choice is 1)
    denoiser = ScanDenoiser(method="thinning", budget_s=4, batch_size=8, inference_batch=4)
    calls = {"train": 0, "infer": 0}

    def oom_twice(kind, step):
        def patched(*args, **kwargs):
            calls[kind] += 1
            if calls[kind] <= 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
            return step(*args, **kwargs)
        return patched

    monkeypatch.setattr(training, "_step", oom_twice("train", training._step))
    monkeypatch.setattr(inference, "_forward", oom_twice("infer", inference._forward))
    result = denoiser.run(frames, mask=scene.mask)
    events = result.provenance["events"]
    assert any("training" in e and "batch 4" in e for e in events)
    assert any("inference" in e for e in events)
    assert result.provenance["training"]["batch_size"] == 2
    assert np.all(np.isfinite(result.denoised))


def test_config_is_validated():
    with pytest.raises(ValueError):
        DenoiseConfig(method="magic")
    with pytest.raises(ValueError):
        DenoiseConfig(budget_s=-1)
    assert DenoiseConfig(budget_s=5).model_dump()["budget_s"] == 5


def test_a_cluster_of_hot_pixels_is_found():
    from bluesky_symdenoise.denoise.preprocess import find_defects

    frames = np.random.default_rng(0).poisson(0.5, size=(3, 64, 64)).astype(float)
    frames[:, 20, 30] = frames[:, 21, 30] = frames[:, 21, 31] = 60.0  # three hot neighbours
    found = find_defects(frames, np.zeros((64, 64), bool))
    assert found[20, 30] and found[21, 30] and found[21, 31]
    assert found.sum() == 3


def test_the_edge_of_a_beamstop_next_to_the_direct_beam_is_not_hot():
    from bluesky_symdenoise.denoise.preprocess import find_defects

    rows, cols = np.indices((64, 64))
    radius = np.hypot(rows - 31.6, cols - 32.3)
    beamstop = radius < 8
    # A SAXS-like curve that falls tenfold within 2 px of the beamstop's pixelated edge.
    rate = 400.0 * np.exp(-(radius - 8) * 1.2) + 0.5
    frames = np.random.default_rng(1).poisson(rate, size=(3, 64, 64)).astype(float)
    frames[:, beamstop] = 0
    frames[:, 50, 50] = 200.0  # one true hot pixel
    frames[:, 5, 40] = 200.0  # ... and one next to a module gap
    bad = beamstop.copy()
    bad[:, 41:44] = True
    found = find_defects(frames, bad)
    assert found[50, 50] and found[5, 40]
    assert found.sum() == 2


def _steep_saxs_scan(seed: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float],
                                          np.ndarray]:
    """Three frames of a SAXS curve falling steeply from a beamstop, and its expectation."""
    rows, cols = np.indices((96, 96))
    center = (47.6, 48.3)
    radius = np.hypot(rows - center[0], cols - center[1])
    beamstop = radius < 6
    rate = 300.0 * (radius / 6.0) ** -4.0 + 0.3
    rate[beamstop] = 0.0
    frames = np.random.default_rng(seed).poisson(rate, size=(3, 96, 96)).astype(float)
    return frames, beamstop, center, rate


def test_a_hot_pixel_on_a_steep_curve_is_found_against_its_own_ring():
    from bluesky_symdenoise.denoise.preprocess import find_defects, find_ring_defects

    frames, beamstop, center, rate = _steep_saxs_scan(3)
    hot = (52, 57)  # 10 px from the centre, where the curve halves within 2 px
    frames[:, hot[0], hot[1]] = np.random.default_rng(4).poisson(3.5 * rate[hot], size=3)
    # A sharp one-sided spot (sigma 0.6 px, no partner) on the same curve is data.
    rows, cols = np.indices(rate.shape)
    spot = 40.0 * np.exp(-((rows - 30.2) ** 2 + (cols - 70.4) ** 2) / (2 * 0.6 ** 2))
    frames += np.random.default_rng(5).poisson(spot, size=frames.shape)
    assert not find_defects(frames, beamstop)[hot]  # its neighbours are bright themselves
    found = find_ring_defects(frames.sum(axis=0), ~beamstop, center)
    assert found[hot] and found.sum() == 1

    analysis = ScanDenoiser().analyse(frames, mask=beamstop, center=center)
    assert analysis.prepared.defects[hot] and analysis.prepared.bad[hot]
    assert not analysis.prepared.frames[:, hot[0], hot[1]].any()
    assert any("far above their own ring" in note for note in analysis.notes)


def test_textured_rings_and_lattices_hold_no_ring_defects():
    from bluesky_symdenoise.denoise.preprocess import find_ring_defects, prepare_frames

    for kind in ("sharp_textured", "lattice_one_sided", "fibre"):
        scene = scenes.make_scene(kind, shape=(128, 128), seed=11)
        rng = np.random.default_rng(12)
        frames = np.stack([scene.expose(10.0, rng) for _ in range(3)])
        prepared = prepare_frames(frames, scene.mask, bad_pixels="mask")
        found = find_ring_defects(prepared.frames.sum(axis=0), prepared.good,
                                  scene.geometry.center)
        assert not (found & ~scene.defects.hot).any(), kind


def test_pixels_of_a_sharp_ring_the_neighbour_test_took_for_hot_are_taken_back():
    """Rings about 1 px wide at 10 counts/pixel: a ring pixel's neighbours are off the ring,
    so the neighbour test takes dozens of them for hot, and their counts would be lost.
    Against the median of their own 22.5° arc they are ordinary; the simulator's hot pixels
    are not."""
    from bluesky_symdenoise.denoise.preprocess import ARC_RATIO, over_own_arc, prepare_frames

    scene = scenes.make_scene("sharp_textured", shape=(256, 256), seed=1007)
    rng = np.random.default_rng(1007)
    frames = np.stack([scene.expose(10.0, rng) for _ in range(3)])
    center = scene.geometry.center
    by_neighbours = prepare_frames(frames, scene.mask, bad_pixels="mask").defects
    false = by_neighbours & ~scene.defects.bad
    true = by_neighbours & scene.defects.hot
    assert false.sum() >= 20 and true.sum() >= 3  # the weakness, and real hot pixels
    total = frames.sum(axis=0, dtype=np.float64)
    ratio = over_own_arc(total, ~scene.mask & ~by_neighbours, center, by_neighbours)
    assert ratio[false[by_neighbours]].max() < ARC_RATIO < ratio[true[by_neighbours]].min()

    analysis = ScanDenoiser().analyse(frames, mask=scene.mask, center=center)
    prepared = analysis.prepared
    assert not (prepared.defects & false).any() and not (prepared.bad & false).any()
    np.testing.assert_array_equal(prepared.frames[:, false], frames[:, false])
    assert (prepared.defects & true).sum() == true.sum()
    assert any(f"took {int(false.sum())} pixels back" in note and "sharp ring" in note
               for note in analysis.notes), analysis.notes


def test_fine_tuning_defaults_to_60_s_on_cpu_and_20_s_on_gpu():
    config = DenoiseConfig()
    assert config.budget_s is None
    assert config.fine_tune_seconds("cpu") == 60 and config.fine_tune_seconds("cuda") == 20
    scene = scenes.make_scene("powder", shape=(64, 64), seed=1)
    frames = scene.expose(1.0, np.random.default_rng(0))[None]
    denoiser = ScanDenoiser(device="cpu")
    analysis = denoiser.analyse(frames, mask=scene.mask, bad_pixels="mask")
    assert denoiser._training_seconds(analysis, "thinning", time.perf_counter()) == 60


def test_symmetry_usage_says_what_each_method_used(scan):
    from bluesky_symdenoise.denoise.engine import symmetry_usage, violation_map

    scene, frames = scan
    denoiser = ScanDenoiser()
    analysis = denoiser.analyse(frames, mask=scene.mask, center=scene.geometry.center)
    used = symmetry_usage(analysis, "symmetry", denoiser.config)
    assert used["rotation_180"]["used"] and used["azimuthal"]["used"]
    assert used["rotation_180"]["text"].startswith("180° symmetry used")
    assert used["rotation_180"]["fraction_violated"] == pytest.approx(
        analysis.symmetry.fraction_violated, abs=1e-5)
    free = symmetry_usage(analysis, "thinning", denoiser.config)
    assert not free["rotation_180"]["used"] and not free["azimuthal"]["used"]
    assert "not used" in free["text"]
    assert not symmetry_usage(analysis, "passthrough")["rotation_180"]["used"]
    # the map is the analysis' own: 180° bit where the local test rejected symmetry
    bits = violation_map(analysis, "symmetry")
    assert np.array_equal((bits & 1).astype(bool), analysis.symmetry.violation)
    # no beam centre: nothing tested, and it says why
    blind = denoiser.analyse(frames, mask=scene.mask)
    assert violation_map(blind, "thinning") is None
    report = symmetry_usage(blind, "thinning")
    assert not report["rotation_180"]["tested"] and "no beam centre" in report["text"]


def test_rings_rest_on_the_neighbouring_frames_except_where_the_sample_changed():
    """Offline, a frame's rings are held to ring means pooled with its neighbours' where
    these agree: on static frames the full-ring I(q) beats the frame's own raw counts; the
    rings of a phase present in one frame only stay in that frame."""
    from bluesky_symdenoise.integrate.azimuthal import AzimuthalIntegration

    series = scenes.insitu_series("powder", n_frames=5, change="phase_flash",
                                  shape=(112, 112), seed=6)
    frames = series.expose(2.0, np.random.default_rng(6))
    truth = series.scaled(2.0)
    k = series.info["flash_frame"]
    integ = AzimuthalIntegration(series.geometry, series.mask | series.defects.bad)

    # Bins whose rings are whole on the detector (the corners' few pixels are held to raw's
    # own mean, which no pooling of a handful of pixels beats by much).
    qmap = series.geometry.q_map()
    q_whole = min(qmap[0].min(), qmap[-1].min(), qmap[:, 0].min(), qmap[:, -1].min())
    whole = integ.integrate(truth[0], npt=60).q_nm < q_whole

    def iq(image):
        return integ.integrate(image, npt=60).intensity[whole]

    served = {pooled: ScanDenoiser(method="classical", pool_neighbour_rings=pooled).run(
        frames, mask=series.mask, center=series.geometry.center, bad_pixels="mask").denoised
        for pooled in (True, False)}

    def error(images, j):
        return float(np.mean((iq(images[j]) - iq(truth[j])) ** 2))

    static = (0, 4)  # not next to the flash
    pooled = np.mean([error(served[True], j) for j in static])
    alone = np.mean([error(served[False], j) for j in static])
    raw = np.mean([error(frames, j) for j in static])
    assert pooled < 0.8 * min(alone, raw)
    new = iq(truth[k]) - iq(truth[k - 1])
    rings = new > 0.2 * new.max()
    kept = (iq(served[True][k]) - iq(truth[k - 1]))[rings].sum() / new[rings].sum()
    ghost = (iq(served[True][k - 1]) - iq(truth[k - 1]))[rings].sum() / new[rings].sum()
    assert kept > 0.9
    assert abs(ghost) < 0.1
