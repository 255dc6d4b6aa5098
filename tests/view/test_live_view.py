"""LiveDenoiseView fed by a real RunEngine and SymDenoise (classical mode, small frames)."""

from __future__ import annotations

import numpy as np
import pytest
from bluesky import plans as bp
from event_model import compose_run
from ophyd.sim import DirectImage

from bluesky_symdenoise.simulate.scenes import make_scene
from bluesky_symdenoise.stream.callback import SymDenoise
from bluesky_symdenoise.view.live import LiveDenoiseView

SHAPE = (96, 96)


@pytest.fixture(scope="module")
def scene():
    return make_scene("lattice_one_sided", shape=SHAPE, seed=3)


@pytest.fixture
def detector(scene):
    rng = np.random.default_rng(0)
    count = iter(range(1, 10_000))
    row, col = np.argwhere(scene.usable)[len(np.argwhere(scene.usable)) // 3]

    def frame():
        image = scene.expose(4.0, rng).astype(np.float32)
        if next(count) == 3:  # the derived run flags this frame
            image[row, col] = np.nan
        return image

    return DirectImage(func=frame, name="det")


def run_scans(RE, detector, scene, view, nums):
    sd = SymDenoise(field="det_img", center=scene.geometry.center, mask=scene.mask,
                    budget_s=0, warmup_frames=2)
    RE.subscribe(view)
    RE.subscribe(sd)
    sd.subscribe(view)
    uids = []
    try:
        for num in nums:
            (uid,) = RE(bp.count([detector], num=num))
            assert sd.flush(timeout=60)
            uids.append(uid)
    finally:
        sd.close()
    assert sd.errors == []
    return uids


def test_headless_snapshots_and_waterfall(RE, detector, scene, tmp_path):
    view = LiveDenoiseView(out_dir=tmp_path, every=2, mask=scene.mask)
    run_scans(RE, detector, scene, view, [5])
    assert view.errors == []
    scan_id = view.scan_id
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == [f"live_{scan_id}_0002.png", f"live_{scan_id}_0004.png",
                     f"live_{scan_id}_final.png"]
    assert all(p.stat().st_size > 10_000 for p in tmp_path.glob("*.png"))
    seq, q, rows = view.waterfall("denoised")
    assert list(seq) == [1, 2, 3, 4, 5] and rows.shape == (5, q.size)
    assert np.all(np.diff(q) > 0) and np.isfinite(rows).mean() > 0.5
    assert list(view.flagged()) == [3] and "NaN" in view.flagged()[3]
    _, _, raw_rows = view.waterfall("raw")
    assert raw_rows.shape == rows.shape
    figure = view.figure
    assert figure.get_size_inches().tolist() == [14.0, 8.0]
    titles = [ax.get_title() for ax in figure.axes]
    assert "I(q) waterfall, raw" in titles and "I(q) waterfall, denoised" in titles
    # snapshot() is public and works after the scan
    assert view.snapshot(tmp_path / "again.png") == tmp_path / "again.png"


def test_new_scan_resets_state(RE, detector, scene, tmp_path):
    view = LiveDenoiseView(out_dir=tmp_path, every=100)
    run_scans(RE, detector, scene, view, [4, 3])
    assert view.errors == []
    seq, _, rows = view.waterfall()
    assert list(seq) == [1, 2, 3] and rows.shape[0] == 3
    assert len(list(tmp_path.glob("live_*_final.png"))) == 2  # one per scan
    first = view.scan_id - 1
    assert view.waterfall(scan_id=first)[2].shape[0] == 4  # the previous scan is kept apart


def test_odd_documents_never_raise(scene, tmp_path):
    view = LiveDenoiseView(out_dir=tmp_path)
    # garbage and documents with missing keys
    view("start", {})
    view("descriptor", {"uid": "d"})
    view("event", {"descriptor": "nope"})
    view("event", {})
    view("stop", {})
    view("event_page", {"bogus": 1})
    view("resource", {})
    # a derived run with no raw run and no 'integrated' stream, events missing keys
    raw = compose_run(metadata={"scan_id": 7})
    derived = compose_run(metadata={"original_run_uid": raw.start_doc["uid"],
                                    "original_scan_id": 7,
                                    "symdenoise": {"field": "det_img", "method": "x"}})
    view("start", derived.start_doc)
    desc = derived.compose_descriptor(name="denoised", data_keys={
        "det_img_denoised": {"source": "s", "dtype": "array", "shape": list(SHAPE)},
        "raw_seq_num": {"source": "s", "dtype": "integer", "shape": []}})
    view("descriptor", desc.descriptor_doc)
    frame = np.ones(SHAPE, np.float32)
    view("event", desc.compose_event(data={"det_img_denoised": frame, "raw_seq_num": 1},
                                     timestamps={"det_img_denoised": 0, "raw_seq_num": 0},
                                     seq_num=1))
    # events a schema would reject: built by hand on purpose
    uid = desc.descriptor_doc["uid"]
    view("event", {"descriptor": uid, "data": {}, "seq_num": 2})
    view("event", {"descriptor": uid, "data": {"det_img_denoised": "not an image",
                                               "raw_seq_num": "x"}})
    view("event", {"descriptor": uid, "data": None})
    view("stop", derived.compose_stop())
    assert (tmp_path / "live_7_final.png").exists()
    assert view.waterfall()[2].shape[0] == 0
    # a snapshot with nothing to show, and one into an unwritable place
    assert LiveDenoiseView().snapshot(tmp_path / "none.png") is None
    assert view.snapshot("/proc/forbidden/x.png") is None
    assert view.errors  # the failed write was recorded, not raised


@pytest.mark.parametrize(("backend", "interactive"), [
    ("QtAgg", True), ("qt5agg", True), ("TkAgg", True), ("GTK4Agg", True), ("WebAgg", True),
    ("nbAgg", True), ("module://ipympl.backend_nbagg", True), ("agg", False),
    ("pdf", False), ("svg", False), ("module://matplotlib_inline.backend_inline", False)])
def test_every_interactive_backend_is_a_window(backend, interactive):
    """Agg-based GUI backends (QtAgg, TkAgg, ...) draw windows; only Agg & co. are headless."""
    from bluesky_symdenoise.view.live import _interactive_backend

    assert _interactive_backend(backend) is interactive


def test_without_a_gui_or_out_dir_nothing_is_drawn_until_asked(RE, detector, scene, tmp_path):
    view = LiveDenoiseView()
    assert view.mode == "off"
    run_scans(RE, detector, scene, view, [3])
    assert view.figure is None and view.draws == 0 and view.finished()
    assert view.snapshot(tmp_path / "now.png") == tmp_path / "now.png"
    assert view.draws == 1 and view.errors == []
    # the derived run's symmetry map reached the view (one-sided lattice: features marked)
    violation = view.violation()
    assert violation is not None and violation.shape == SHAPE and (violation & 1).any()
