"""The live plugin's held-out I(q) check: where the denoiser makes I(q) worse than raw, the
published ``integrated`` stream falls back to raw there, and the derived run says so."""

from __future__ import annotations

import json

import numpy as np
from ophyd.sim import DirectImage
from scipy.ndimage import gaussian_filter

from bluesky_symdenoise.denoise import classical as classical_module
from bluesky_symdenoise.denoise.engine import ScanDenoiser
from bluesky_symdenoise.stream.callback import SymDenoise

from .test_live_inline import run_scan

SECTOR = (-15.0, 15.0)


def _integrated(derived, key="det_img"):
    events = derived.stream("integrated")
    return {name: np.array([e["data"][name] for e in events])
            for name in events[0]["data"]} if events else {}


def _scan_with_fast_mode(fast_mode, RE, frames, scene, collector, derived, monkeypatch):
    """A live scan whose classical fast mode serves ``fast_mode``'s frames as they are (not
    held to the raw counts, which would repair the damage the guard is here to catch);
    returns the ``integrated`` stream as arrays and the summary's held-out check of that
    mode."""
    monkeypatch.setattr(classical_module, "classical_denoise", fast_mode)

    def unheld(self, analysis, frames, bads, *, engine="nlm", ring_neighbours=None):
        return np.stack([self.classical_frame(analysis, np.asarray(f, np.float32),
                                              engine=engine, bad=b).astype(np.float32)
                         for f, b in zip(frames, bads, strict=True)])

    monkeypatch.setattr(ScanDenoiser, "classical_frames_held", unheld)
    det = DirectImage(func=frames, name="det")
    sd = SymDenoise("det_img", center=scene.geometry.center, mask=scene.mask, budget_s=0,
                    sector=SECTOR)
    run_scan(RE, det, collector, derived, sd, num=6)
    summary = json.loads(derived.stream("summary")[0]["data"]["provenance"])
    return _integrated(derived), summary["iq_check"]["classical-nlm"]


def test_a_denoiser_that_broadens_rings_falls_back_to_raw(RE, frames, scene, collector,
                                                          derived, monkeypatch):
    """The classical fast mode made to blur (3 px): the rings' q range falls back."""
    classical = classical_module.classical_denoise

    def blurred(frame, **kwargs):
        return gaussian_filter(classical(frame, **kwargs), 3.0)

    data, check = _scan_with_fast_mode(blurred, RE, frames, scene, collector, derived,
                                       monkeypatch)
    fallback = data["det_img_iq_fallback"]
    assert fallback.dtype == bool and fallback.shape == data["q"].shape
    assert fallback[0].any(), "a blurring denoiser must fall back somewhere"
    # Where it falls back the published denoised I(q) and sigma are raw's.
    on = fallback[0]
    assert np.array_equal(data["det_img_iq_denoised"][0][on], data["det_img_iq_raw"][0][on])
    assert np.array_equal(data["det_img_iq_denoised_sigma"][0][on],
                          data["det_img_iq_raw_sigma"][0][on])
    # The strongest ring of the truth is in a range that fell back.
    from bluesky_symdenoise.integrate.azimuthal import AzimuthalIntegration

    truth = AzimuthalIntegration(scene.geometry, scene.mask).integrate(
        frames.truth, npt=len(data["q"][0]))
    ring = int(np.argmax(truth.intensity[4:])) + 4  # past the beamstop
    assert fallback[0][max(ring - 2, 0):ring + 3].any()
    assert check["full"]["fallback_fraction"] > 0 and check["full"]["fallback_q_ranges_nm^-1"]
    assert "sector" in check
    assert "det_img_iq_sector_fallback" in data and "det_img_iq_sector_denoised_sigma" in data
    derived.validate()


def test_a_denoiser_that_does_not_hurt_does_not_fall_back(RE, frames, scene, collector,
                                                          derived, monkeypatch):
    """The fast mode replaced by the noise-free expectation scaled to each frame's counts
    (a denoiser better than raw everywhere): no q range may fall back, and its sigma is
    the smallest the check gives (the ratio floor). The classical fast mode itself does
    fall back on most of this small powder's full-ring q range: there it is worse than raw
    (checked against the truth while building this test: error ratio 1.2-18 per bin)."""
    good = ~scene.mask
    truth = frames.truth

    def ideal(frame, **_):
        return truth * float(frame[good].sum()) / float(truth[good].sum())

    data, check = _scan_with_fast_mode(ideal, RE, frames, scene, collector, derived,
                                       monkeypatch)
    assert check["full"]["frames_split"] == 4
    assert not data["det_img_iq_fallback"].any(), check
    assert not data["det_img_iq_sector_fallback"].any(), check
    raw_sigma, sigma = data["det_img_iq_raw_sigma"], data["det_img_iq_denoised_sigma"]
    ok = np.isfinite(sigma) & (raw_sigma > 0)
    assert np.median(sigma[ok] / raw_sigma[ok]) < 0.6
    # Raw's sigma is Poisson at the denoised rate: here the expectation itself, so it is the
    # exact one (up to the pixels the frame flagged), not one from each bin's own counts.
    from bluesky_symdenoise.integrate.azimuthal import AzimuthalIntegration

    exact = AzimuthalIntegration(scene.geometry, scene.mask).integrate(
        truth, npt=len(data["q"][0]), variance=truth).sigma
    usable = good & ~scene.defects.hot & ~scene.defects.dead
    scale = [float(np.asarray(e["data"]["det_img"])[usable].sum()) / float(truth[usable].sum())
             for e in collector.stream("primary")]
    on = exact > 0
    ratio = raw_sigma[:, on] / (exact[on] * np.sqrt(np.array(scale))[:, None])
    assert np.quantile(np.abs(ratio - 1.0), 0.9) < 0.05, ratio
    derived.validate()
