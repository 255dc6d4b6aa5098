"""FrameSource reads referenced frames again when a file is caught mid-write."""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_symdenoise.stream.frames import FrameSource


class FlakyFiller:
    """Stands in for event_model's Filler: fails ``failures`` times, then fills."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = self.cleared = 0

    def __call__(self, name, doc):
        self.calls += 1
        if self.calls <= self.failures:
            raise ValueError("Chunks do not add up to shape")  # a file mid-resize
        return name, dict(doc, data={"img": np.ones((4, 4))}, filled={"img": True})

    def clear_handler_cache(self):
        self.cleared += 1


def _event():
    return {"descriptor": "d", "seq_num": 1, "time": 0.0, "data": {"img": "datum-1"},
            "timestamps": {"img": 0.0}, "filled": {"img": False}}


def test_a_frame_caught_mid_write_is_read_again():
    source = FrameSource(["img"])
    source._keys["d"] = {"img": (4, 4)}
    source._filler = FlakyFiller(failures=2)
    ((key, seq, frame, _),) = list(source._event_frames(_event()))
    assert key == "img" and seq == 1 and frame.shape == (4, 4)
    assert source._filler.calls == 3 and source._filler.cleared == 2


def test_a_frame_that_stays_unreadable_raises():
    source = FrameSource(["img"])
    source._keys["d"] = {"img": (4, 4)}
    source._filler = FlakyFiller(failures=99)
    with pytest.raises(ValueError, match="Chunks"):
        list(source._event_frames(_event()))
    assert source._filler.calls == 4  # at once, then three retries
