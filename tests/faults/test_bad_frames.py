"""Row 2: bad frames never raise into the RunEngine; each is passed through flagged or
skipped and counted, and the derived run still validates."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from bluesky import plans as bp
from ophyd.sim import DirectImage

from bluesky_symdenoise.stream.callback import SymDenoise

N, BAD = 7, 5  # frame BAD (0-based) is broken; frames 0-3 are the warm-up


def _broken(kind: str, good: np.ndarray):
    frame = good.astype(np.float32)
    if kind == "nan-inf-negative":
        frame[3:5, 3:5] = np.nan
        frame[10, 10:13] = np.inf
        frame[20, 20:24] = -7
        return frame
    if kind == "saturated":
        frame = good.astype(np.uint32)
        frame[:, 30:34] = np.iinfo(np.uint32).max
        return frame
    if kind == "all-zero":
        return np.zeros_like(frame)
    if kind == "all-negative":
        return -np.ones_like(frame)
    if kind == "wrong-shape":
        return np.ones((64, 65), np.float32)
    if kind == "wrong-ndim":
        return np.ones((2, 64, 64), np.float32)
    if kind == "complex-dtype":
        return frame.astype(np.complex64)
    if kind == "string-dtype":
        return np.full(frame.shape, "x")
    raise AssertionError(kind)


# What the per-event flag of the broken frame must say, and the summary counter it bumps.
EXPECT = {
    "nan-inf-negative": ("NaN/inf/negative pixels masked", None),
    "saturated": ("saturated pixels masked", None),
    "all-zero": ("", None),
    "all-negative": ("NaN/inf/negative pixels masked", None),
    "wrong-shape": ("skipped: frame shape (64, 65)", "frames_invalid"),
    "wrong-ndim": ("", "frames_unreadable"),
    "complex-dtype": ("skipped: frame dtype complex64 is not real numbers", "frames_invalid"),
    "string-dtype": ("skipped: frame dtype <U1", "frames_invalid"),
}


@pytest.mark.parametrize("kind", sorted(EXPECT))
def test_bad_frame_is_flagged_or_counted(harness, scene, frames, kind):
    seq = iter(range(100))

    def frame():
        good = frames()
        return _broken(kind, good) if next(seq) == BAD else good

    harness.plugin("det_img", center=scene.geometry.center, mask=scene.mask, budget_s=0)
    harness.RE(bp.count([DirectImage(func=frame, name="det")], num=N))
    (stop,) = harness.finish().values()
    assert stop["exit_status"] == "success"
    flag, counter = EXPECT[kind]
    events = harness.derived.stream("denoised")
    summary = harness.derived.stream("summary")[0]["data"]
    by_seq = {e["data"]["raw_seq_num"]: e for e in events}
    if counter == "frames_unreadable":
        assert BAD + 1 not in by_seq and len(events) == N - 1
    else:
        assert len(events) == N
        bad = by_seq[BAD + 1]["data"]
        assert flag in bad["det_img_flags"]
        if flag:
            assert bad["det_img_flags"]
        assert np.all(np.isfinite(bad["det_img_denoised"]))
        assert bad["det_img_denoised"].dtype == np.float32
    for name in ("frames_invalid", "frames_unreadable"):
        assert summary[name] == (1 if name == counter else 0), (name, summary)
    # The good frames around it are untouched by the fault.
    assert all(by_seq[s]["data"]["det_img_flags"] == "" for s in (1, 2, 3, 4, N))
    assert harness.sd.errors == []


def test_event_without_its_frame_is_counted(RE, scene, frames, collector, derived):
    """An event of the image stream that lacks the frame (a broken document; the RunEngine
    would not produce it, so a real run's documents are replayed with the key removed)."""
    RE.subscribe(collector)
    RE(bp.count([DirectImage(func=frames, name="det")], num=N))
    sd = SymDenoise("det_img", center=scene.geometry.center, mask=scene.mask, budget_s=0)
    sd.subscribe(derived)
    events = 0
    for name, doc in collector.docs:
        if name == "event":
            events += 1
            if events == BAD + 1:
                doc = copy.deepcopy(doc)
                del doc["data"]["det_img"], doc["timestamps"]["det_img"]
        assert sd(name, doc) == (name, doc)
    assert sd.flush(60) and sd.close(60)
    from .conftest import check_derived_runs

    (stop,) = check_derived_runs(derived).values()
    assert stop["exit_status"] == "success"
    summary = derived.stream("summary")[0]["data"]
    assert summary["frames_unreadable"] == 1 and summary["frames_published"] == N - 1
    assert len(derived.stream("denoised")) == N - 1
    assert collector.unchanged()
