"""The live plugin on a real RunEngine with frames inline in events (ophyd.sim DirectImage)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from bluesky import plans as bp
from ophyd.sim import DirectImage

from bluesky_symdenoise.stream.callback import SymDenoise
from tests.helpers import psnr

N_FRAMES = 8


@pytest.fixture
def detector(frames):
    return DirectImage(func=frames, name="det")


def run_scan(RE, detector, collector, derived, sd, num=N_FRAMES):
    RE.subscribe(collector)
    RE.subscribe(sd)
    sd.subscribe(derived)
    (uid,) = RE(bp.count([detector], num=num))
    assert sd.flush(timeout=120)
    sd.close()
    return uid


def test_derived_run_links_validates_and_denoises(RE, detector, frames, scene, collector,
                                                  derived):
    sd = SymDenoise(field="det_img", center=scene.geometry.center, mask=scene.mask,
                    budget_s=1.0)
    uid = run_scan(RE, detector, collector, derived, sd)

    (start,) = derived.of("start")
    assert start["original_run_uid"] == uid
    assert start["detectors"] == ["det"]  # raw metadata copied
    assert start["symdenoise"]["method"] in ("symmetry", "thinning")
    assert start["symdenoise"]["versions"]["pyFAI"]
    derived.validate()

    denoised = derived.stream("denoised")
    assert len(denoised) == N_FRAMES
    assert [e["data"]["raw_seq_num"] for e in denoised] == list(range(1, N_FRAMES + 1))
    (descriptor,) = [d for d in derived.of("descriptor") if d["name"] == "denoised"]
    key = descriptor["data_keys"]["det_img_denoised"]
    assert key["shape"] == list(scene.mask.shape) and key["dtype_numpy"] == "<f4"
    assert key["units"] == "counts"

    integrated = derived.stream("integrated")
    assert len(integrated) == N_FRAMES
    data = integrated[0]["data"]
    assert np.all(np.diff(data["q"]) > 0)
    ok = np.isfinite(data["det_img_iq_raw_sigma"]) & (data["det_img_iq_raw"] > 0)
    assert ok.sum() > 5 and np.all(data["det_img_iq_raw_sigma"][ok] > 0)

    (stop,) = derived.of("stop")
    assert stop["exit_status"] == "success"
    assert stop["num_events"] == {"denoised": N_FRAMES, "integrated": N_FRAMES, "summary": 1,
                                  "symmetry": 1}
    # Every derived run says, at warm-up, where the scan broke symmetry (a map) and what the
    # engine used; the summary keeps the scores.
    (symmetry,) = derived.stream("symmetry")
    violation = np.asarray(symmetry["data"]["symmetry_violation"])
    assert violation.shape == scene.mask.shape and violation.max() <= 7
    usage = json.loads(symmetry["data"]["symmetry_report"])
    assert usage["method"] == start["symdenoise"]["method"]
    assert usage["rotation_180"]["tested"] and usage["azimuthal"]["tested"]
    order = [d["descriptor"] for n, d in derived.docs if n == "event"]
    assert order[0] == symmetry["descriptor"]  # published before the first frame
    summary = derived.stream("summary")[0]["data"]
    scores = json.loads(summary["provenance"])
    assert 0 <= scores["symmetry"]["fraction_violated"] <= 1
    assert 0 <= scores["isotropy"]["fraction_violated"] <= 1

    raw = np.stack([e["data"]["det_img"] for e in collector.of("event")]).astype(np.float64)
    out = np.stack([e["data"]["det_img_denoised"] for e in denoised])
    valid = scene.usable
    gain = psnr(out, frames.truth, valid) - psnr(raw, frames.truth, valid)
    assert gain >= 3.0, f"denoised beat raw by only {gain:.2f} dB"

    assert collector.unchanged(), "a raw document was mutated"
    collector.validate()
    assert sd.errors == []
    # The RunEngine's thread only copies and enqueues: it never waited.
    assert sd.re_thread_waits == 0


def test_geometry_from_start_document(RE, detector, scene, collector, derived, tmp_path):
    mask_path = tmp_path / "mask.npy"
    np.save(mask_path, scene.mask)
    poni = scene.geometry.poni_dict()
    sd = SymDenoise(budget_s=0)
    RE.md.update({"poni": poni, "mask": str(mask_path)})
    run_scan(RE, detector, collector, derived, sd, num=3)
    (start,) = derived.of("start")
    provenance = start["symdenoise"]
    assert provenance["field"] == "det_img"  # found from the descriptor
    assert provenance["geometry_source"] == "PONI from start document"
    assert provenance["method"] == "classical-nlm"
    assert len(derived.stream("integrated")) == 3
    derived.validate()


def test_no_geometry_warns_and_skips_iq(RE, detector, collector, derived):
    sd = SymDenoise(budget_s=0)
    run_scan(RE, detector, collector, derived, sd, num=2)
    (start,) = derived.of("start")
    assert any("no geometry" in w for w in start["symdenoise"]["warnings"])
    assert len(derived.stream("denoised")) == 2
    assert derived.stream("integrated") == []
    (symmetry,) = derived.stream("symmetry")
    assert "symmetry_violation" not in symmetry["data"]
    usage = json.loads(symmetry["data"]["symmetry_report"])
    assert not usage["rotation_180"]["used"] and "no beam centre" in usage["text"]
    summary = derived.stream("summary")[0]["data"]
    assert "not tested" in json.loads(summary["provenance"])["symmetry"]
    derived.validate()


def test_network_trains_during_the_scan_and_is_checked(RE, frames, scene, collector, derived):
    """A scan longer than the budget: the trainer runs beside the RunEngine, then the
    network is adopted or rejected by the held-out binomial check, and that is recorded."""
    det = DirectImage(func=frames, name="det")
    det.img.exposure_time = 0.25
    sd = SymDenoise("det_img", center=scene.geometry.center, mask=scene.mask, budget_s=2,
                    method="symmetry", min_training_steps=1,
                    config={"batch_size": 4, "patch_size": 64, "test_time_flips": 1})
    run_scan(RE, det, collector, derived, sd, num=24)
    summary = json.loads(derived.stream("summary")[0]["data"]["provenance"])
    assert summary["training"]["steps"] >= 1, summary
    # The pre-trained base, fine-tuned, beats NLM on the held-out split and takes over.
    assert summary["network"].startswith("network used: held-out deviance"), summary
    by = [e["data"]["det_img_denoised_by"] for e in derived.stream("denoised")]
    # Until then the pre-trained base model serves the frames.
    assert by[0] == "network:base (interim)"
    assert by[-1] == "network:symmetry"
    assert summary["model_hash"] and derived.of("stop")[0]["exit_status"] == "success"
    # On a CPU the live plugin fine-tunes the narrower shipped network (keeps pace).
    assert summary["model"].startswith("pre-trained live_w12_v1"), summary["model"]
    derived.validate()


@pytest.mark.parametrize(("use_pretrained", "interim_mode", "denoised_by"), [
    (True, "pre-trained base model until the fine-tuned one is ready",
     "network:base (interim)"),
    (False, "classical-nlm (Anscombe + NLM) until the network is ready",
     "classical-nlm (interim)"),
])
def test_derived_start_says_what_serves_until_the_network_is_ready(
        RE, detector, scene, collector, derived, use_pretrained, interim_mode, denoised_by):
    """The start document is written after the base model was loaded (or found missing),
    so its interim_mode names what served the frames."""
    sd = SymDenoise("det_img", center=scene.geometry.center, mask=scene.mask,
                    method="symmetry", budget_s=0,
                    config={"use_pretrained": use_pretrained, "test_time_flips": 1})
    run_scan(RE, detector, collector, derived, sd, num=4)
    (start,) = derived.of("start")
    assert start["symdenoise"]["interim_mode"] == interim_mode
    assert {e["data"]["det_img_denoised_by"] for e in derived.stream("denoised")} == {
        denoised_by}


def test_flush_publishes_frames_held_for_warm_up(RE, frames, scene, derived):
    """Two frames of a run still open (fewer than warmup_frames): flush() publishes them."""
    from bluesky import plan_stubs as bps
    from bluesky import preprocessors as bpp

    det = DirectImage(func=frames, name="det")
    sd = SymDenoise("det_img", center=scene.geometry.center, mask=scene.mask, budget_s=0)
    sd.subscribe(derived)
    RE.subscribe(sd)
    flushed = []

    @bpp.run_decorator()
    def plan():
        for _ in range(2):
            yield from bps.trigger_and_read([det])
        flushed.append(sd.flush(timeout=60))
        flushed.append(len(derived.stream("denoised")))

    RE(plan())
    assert flushed == [True, 2]
    assert sd.flush(timeout=60)
    sd.close()
    assert derived.of("stop")[0]["num_events"]["denoised"] == 2
    derived.validate()


def test_cake_stream_regroups_raw_and_denoised_frames(RE, detector, scene, collector, derived):
    sd = SymDenoise(field="det_img", center=scene.geometry.center, mask=scene.mask,
                    budget_s=0, cake=(40, 36))
    run_scan(RE, detector, collector, derived, sd, num=3)
    (descriptor,) = [d for d in derived.of("descriptor") if d["name"] == "cake"]
    keys = descriptor["data_keys"]
    assert keys["det_img_cake_denoised"]["shape"] == [36, 40]
    assert keys["chi"]["units"] == "deg" and keys["q"]["units"] == "nm^-1"
    assert "36 chi bins of 10°" in keys["det_img_cake_raw"]["description"]
    cakes = derived.stream("cake")
    assert [e["data"]["raw_seq_num"] for e in cakes] == [1, 2, 3]
    data = cakes[-1]["data"]
    raw, den = np.asarray(data["det_img_cake_raw"]), np.asarray(data["det_img_cake_denoised"])
    assert raw.shape == den.shape == (36, 40)
    # empty bins (gaps, beamstop) are NaN in both, never zero counts
    assert np.isnan(raw).any() and np.array_equal(np.isnan(raw), np.isnan(den))
    # the denoised cake holds the same counts per bin on average as the raw one
    ok = np.isfinite(raw)
    assert np.nanmean(den[ok]) == pytest.approx(np.nanmean(raw[ok]), rel=0.05)
    assert np.all(np.diff(data["chi"]) > 0) and np.all(np.diff(data["q"]) > 0)
    derived.validate()


@pytest.mark.parametrize("cake", [(0, 36), (10,), "yes", (1.5, 2)])
def test_a_bad_cake_binning_fails_at_construction(cake):
    with pytest.raises(ValueError, match="cake must be"):
        SymDenoise(cake=cake)
