"""Detectors of pyFAI's registry: geometry by name, their gap masks, PONI round trips, the
markers and overflow values their frames carry, and simulated scans of them."""

from __future__ import annotations

import numpy as np
import pytest
from pyFAI.detectors import detector_factory

from bluesky_symdenoise.denoise.api import denoise_scan
from bluesky_symdenoise.denoise.preprocess import InputError, prepare_frames, unusable_pixels
from bluesky_symdenoise.geometry import (
    DetectorGeometry,
    GeometryError,
    detector_mask,
    with_detector_mask,
)
from bluesky_symdenoise.simulate.detectors import simulate_detector_scan


@pytest.mark.parametrize("name, canonical, shape, pixel", [
    ("Pilatus1M", "Pilatus1M", (1043, 981), 172e-6),
    ("pilatus 1m", "Pilatus1M", (1043, 981), 172e-6),
    ("Eiger2_4M", "Eiger2_4M", (2162, 2068), 75e-6),
    ("eiger2 4m", "Eiger2_4M", (2162, 2068), 75e-6),
])
def test_from_detector_takes_shape_and_pixel_from_pyfai(name, canonical, shape, pixel):
    geometry = DetectorGeometry.from_detector(name, distance=0.3, wavelength=0.7e-10)
    assert geometry.detector_name == canonical
    assert geometry.shape == shape and geometry.shape[0] != geometry.shape[1]
    assert geometry.pixel_size == pytest.approx(pixel)
    assert geometry.center == ((shape[0] - 1) / 2, (shape[1] - 1) / 2)
    assert (geometry.distance, geometry.wavelength) == (0.3, 0.7e-10)
    metadata = geometry.as_metadata()
    assert metadata["detector_name"] == canonical and metadata["shape"] == list(shape)
    off_centre = DetectorGeometry.from_detector(name, center=(100.25, 30.5), rot1=0.01)
    assert off_centre.center == (100.25, 30.5) and off_centre.rot1 == 0.01


@pytest.mark.parametrize("name, expected", [("Pilatus1Mx", "Pilatus1M"),
                                            ("Eigr2_4M", "Eiger2_4M")])
def test_unknown_name_lists_close_registry_names(name, expected):
    with pytest.raises(GeometryError, match=f"unknown detector '{name}'.*{expected}"):
        DetectorGeometry.from_detector(name)
    with pytest.raises(GeometryError, match="unknown detector"):
        detector_mask(name)


def test_centre_off_the_detector_is_refused():
    with pytest.raises(GeometryError, match="off the"):
        DetectorGeometry.from_detector("Pilatus1M", center=(2000.0, 10.0))


@pytest.mark.parametrize("name", ["Pilatus1M", "Eiger2_4M"])
def test_gap_mask_is_pyfais_mask(name):
    reference = np.asarray(detector_factory(name).mask).astype(bool)
    mask = detector_mask(name)
    assert mask is not None and mask.dtype == bool
    assert mask.shape == reference.shape
    assert int(mask.sum()) == int(reference.sum()) > 10_000
    assert np.array_equal(mask, reference)
    # Whole module-gap lines: some rows and columns are masked from edge to edge.
    assert mask.all(axis=1).any() and mask.all(axis=0).any()
    geometry = DetectorGeometry.from_detector(name)
    assert np.array_equal(detector_mask(geometry), reference)
    mask[:] = False  # a copy: the cached mask is not changed
    assert np.array_equal(detector_mask(name), reference)


def test_generic_geometry_has_no_gap_mask_and_a_crop_needs_its_own():
    generic = DetectorGeometry.from_center((64, 80), (31.5, 40.2))
    assert generic.detector_name is None and detector_mask(generic) is None
    assert with_detector_mask(generic, None) == (None, None)
    cropped = DetectorGeometry.from_poni(
        DetectorGeometry.from_detector("Pilatus1M").poni_dict(), shape=(256, 256))
    assert cropped.detector_name == "Pilatus1M"
    with pytest.raises(GeometryError, match="binned or cropped"):
        detector_mask(cropped)


def test_user_mask_and_gap_mask_are_merged_and_counted():
    geometry = DetectorGeometry.from_detector("Pilatus1M")
    gaps = detector_mask(geometry)
    user = np.zeros(geometry.shape, bool)
    user[:40, :40] = True  # a beamstop in a corner, off the gaps there
    user[gaps.nonzero()[0][0], gaps.nonzero()[1][0]] = True  # and one gap pixel
    merged, note = with_detector_mask(geometry, user)
    assert np.array_equal(merged, user | gaps)
    assert not user[gaps].all()  # the user's mask was not changed
    assert note == (f"Pilatus1M: {int(gaps.sum())} module-gap pixels masked (pyFAI's "
                    f"detector mask, {int(gaps.sum()) - 1} of them not in the user's mask)")


def test_poni_round_trip_keeps_the_detector_name(tmp_path):
    geometry = DetectorGeometry.from_detector("Eiger2_4M", center=(1000.3, 900.7),
                                              distance=0.15, wavelength=0.8e-10)
    poni = geometry.poni_dict()
    assert poni["detector"] == "Eiger2_4M"
    for source in (poni, geometry.write_poni(tmp_path / "eiger.poni")):
        back = DetectorGeometry.from_poni(source)
        assert back.detector_name == "Eiger2_4M" and back.shape == (2162, 2068)
        assert back.center == pytest.approx(geometry.center, abs=1e-9)
        assert back.pixel_size == pytest.approx(75e-6)
        assert (back.distance, back.wavelength) == pytest.approx((0.15, 0.8e-10))
    assert "Detector: Eiger2_4M" in (tmp_path / "eiger.poni").read_text()
    generic = DetectorGeometry.from_center((64, 64), (30.2, 33.9))
    assert generic.poni_dict()["detector"] == "Detector"
    assert DetectorGeometry.from_poni(generic.poni_dict()).detector_name is None


def _counts(shape, dtype, seed=0):
    return np.random.default_rng(seed).poisson(3.0, size=shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_unsigned_overflow_is_masked_and_counted_per_frame(dtype):
    frames = _counts((3, 32, 48), dtype)
    top = np.iinfo(dtype).max
    frames[1, 3, 4] = frames[1, 20, 30] = top          # frame 1: 2 overflows
    frames[2, 5, 5] = frames[2, 6, 5] = frames[2, 7, 5] = top  # frame 2: 3
    mask = np.zeros((32, 48), bool)
    mask[10, :] = True
    frames[:, 10, :] = top  # a masked gap row at the maximum: not counted
    prepared = prepare_frames(frames, mask)
    overflow = [(3, 4), (20, 30), (5, 5), (6, 5), (7, 5)]
    assert all(prepared.bad[p] for p in overflow) and prepared.frames[:, 3, 4].max() == 0
    assert (f"masked 5 saturated pixels (at the {np.dtype(dtype)} maximum {top}) "
            "(per frame: 0, 2, 3)") in prepared.notes
    unusable = unusable_pixels(frames, frames.astype(np.float32), mask)
    assert list(unusable.saturated_per_frame) == [0, 2, 3]
    # Live, one frame at a time: its own count.
    single = unusable_pixels(frames[2:3], frames[2:3].astype(np.float32), mask)
    assert int(single.saturated.sum()) == 3 and not single.markers.any()


def test_int32_gap_and_bad_markers_are_masked_not_refused():
    frames = _counts((2, 32, 48), np.int32, seed=1)
    frames[:, 16, :] = -1       # an unmasked gap row
    frames[:, 3, 7] = -2        # a flagged bad pixel
    frames[1, 30, 40] = -2      # flagged in frame 1 only
    prepared = prepare_frames(frames)  # bad_pixels="raise": markers are not refused
    assert prepared.bad[16].all() and prepared.bad[3, 7] and prepared.bad[30, 40]
    assert int(prepared.bad.sum()) >= 48 + 2
    assert ("masked 50 pixels holding the detector's gap/bad-pixel markers (-1, -2 in int32 "
            "frames) (per frame: 49, 50)") in prepared.notes
    assert np.all(prepared.frames[:, 16] == 0)
    # Any other negative value still is an error ...
    frames[0, 1, 1] = -5
    with pytest.raises(InputError, match="negative"):
        prepare_frames(frames)
    # ... and an integrating detector's negative values are data, markers included.
    prepared = prepare_frames(frames, integrating=True, detect_defects=False)
    assert not prepared.bad.any()


def test_simulated_pilatus_and_eiger_frames_carry_their_markers():
    pilatus = simulate_detector_scan("Pilatus300kw", frames=2, seed=4, center=(60.4, 300.7))
    assert pilatus.frames.dtype == np.int32 and pilatus.frames.shape == (2, 195, 1475)
    assert np.array_equal(pilatus.mask, detector_mask("Pilatus300kw"))
    assert np.all(pilatus.frames[:, pilatus.mask] == -1)
    assert pilatus.flagged.any() and np.all(pilatus.frames[:, pilatus.flagged] == -2)
    counting = ~pilatus.mask & ~pilatus.flagged
    assert pilatus.frames[:, counting].min() >= 0
    assert pilatus.truth.dtype == np.float32 and np.all(pilatus.truth[pilatus.mask] == 0)
    assert pilatus.truth[counting].mean() == pytest.approx(1.0, rel=0.02)
    assert pilatus.poni["detector"] == "Pilatus300kw"
    assert DetectorGeometry.from_poni(pilatus.poni).center == pytest.approx((60.4, 300.7))

    eiger = simulate_detector_scan("ImXPadS10", frames=2, seed=4, dtype="uint16",
                                   counts=50.0)
    top = np.iinfo(np.uint16).max
    assert eiger.frames.dtype == np.uint16 and eiger.frames.shape == (2, 120, 80)
    assert np.all(eiger.frames[:, eiger.mask] == top)
    assert np.all(eiger.frames[:, eiger.flagged] == top)
    with pytest.raises(ValueError, match="integer"):
        simulate_detector_scan("ImXPadS10", dtype="float32")


def test_non_square_named_detector_through_classical_denoise():
    """A small registry detector (ImXPadS10, 120 x 80), unsigned frames, an off-centre
    beam; its PONI names it, so its gaps are masked without a mask argument."""
    scan = simulate_detector_scan("ImXPadS10", frames=2, counts=5.0, seed=2,
                                  center=(40.3, 50.6))
    assert scan.frames.dtype == np.uint32
    result = denoise_scan(scan.frames, poni=scan.poni, method="classical")
    out = result.denoised
    assert out.shape == (2, 120, 80) and out.dtype == np.float32
    assert np.all(out[:, scan.mask] == 0) and np.all(out[:, scan.flagged] == 0)
    notes = result.provenance["notes"]
    assert notes[0] == (f"ImXPadS10: {int(scan.mask.sum())} module-gap pixels masked "
                        "(pyFAI's detector mask)")
    n_flagged = int(scan.flagged.sum())
    assert f"masked {n_flagged} saturated pixels (at the uint32 maximum 4294967295) " \
        f"(per frame: {n_flagged}, {n_flagged})" in notes
    assert result.provenance["beam_center"] == pytest.approx([40.3, 50.6], abs=0.5)
    counting = ~scan.mask & ~scan.flagged & ~scan.scene.defects.hot
    raw_err = np.mean((scan.frames[:, counting] - scan.truth[counting]) ** 2)
    out_err = np.mean((out[:, counting] - scan.truth[counting]) ** 2)
    assert out_err < 0.5 * raw_err
