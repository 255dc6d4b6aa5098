"""FrameSource reads referenced frames again when a file is caught mid-write, and only then."""

from __future__ import annotations

import numpy as np
import pytest
from event_model import UndefinedAssetSpecification

from bluesky_symdenoise.stream.frames import FrameSource, FrameSourceError


class FlakyFiller:
    """Stands in for event_model's Filler: fails ``failures`` times with ``error``, then
    fills."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or ValueError("Chunks do not add up to shape")  # a file mid-resize
        self.calls = self.cleared = 0

    def fill_event(self, doc, include=None):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return dict(doc, data={"img": np.ones((4, 4))}, filled={"img": "datum-1"})

    def clear_handler_cache(self):
        self.cleared += 1


def _source(filler: FlakyFiller) -> FrameSource:
    source = FrameSource(["img"])
    list(source.frames("descriptor", {  # a descriptor whose img values are Datum ids
        "uid": "d", "run_start": "r", "time": 0.0, "name": "primary",
        "data_keys": {"img": {"source": "SIM:det", "dtype": "array", "shape": [4, 4],
                              "external": "FILESTORE:"}}}))
    source._filler = filler
    return source


def _event():
    return {"descriptor": "d", "seq_num": 1, "time": 0.0, "data": {"img": "datum-1"},
            "timestamps": {"img": 0.0}, "filled": {"img": False}}


def test_a_frame_caught_mid_write_is_read_again():
    source = _source(FlakyFiller(failures=2))
    ((key, seq, frame, _),) = list(source.frames("event", _event()))
    assert key == "img" and seq == 1 and frame.shape == (4, 4)
    assert source._filler.calls == 3 and source._filler.cleared == 2


def test_a_frame_that_stays_unreadable_raises(monkeypatch):
    monkeypatch.setattr("bluesky_symdenoise.stream.frames._REFILL_WAITS_S", (0.0, 0.0, 0.0))
    source = _source(FlakyFiller(failures=99))
    with pytest.raises(FrameSourceError, match="Chunks.*tried 4 times"):
        list(source.frames("event", _event()))
    assert source._filler.calls == 4  # at once, then three retries


def test_a_spec_without_a_handler_fails_at_once():
    source = _source(FlakyFiller(failures=99, error=UndefinedAssetSpecification("XYZ")))
    with pytest.raises(FrameSourceError, match="no handler for its spec"):
        list(source.frames("event", _event()))
    assert source._filler.calls == 1 and source._filler.cleared == 0
