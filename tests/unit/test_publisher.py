"""The derived run's publisher: event-model documents, checked without slowing each event."""

from __future__ import annotations

import event_model
import numpy as np
import pytest

from bluesky_symdenoise.stream.publisher import DerivedRunPublisher


def test_events_are_valid_and_wrong_keys_are_refused_after_the_first():
    docs: list[tuple[str, dict]] = []
    raw_start = event_model.compose_run(metadata={"scan_id": 7, "sample": "LaB6"}).start_doc
    publisher = DerivedRunPublisher(lambda name, doc: docs.append((name, doc)), raw_start,
                                    {"method": "symmetry"})
    keys = {"q": {"source": "symdenoise", "dtype": "array", "shape": [50]},
            "raw_seq_num": {"source": "symdenoise", "dtype": "integer", "shape": []}}
    publisher.add_stream("integrated", keys)
    q = np.linspace(0.1, 5.0, 50)
    publisher.add_event("integrated", {"q": q, "raw_seq_num": 1})
    publisher.add_event("integrated", {"q": q, "raw_seq_num": 2})
    with pytest.raises(event_model.EventModelValidationError, match="data keys"):
        publisher.add_event("integrated", {"q": q})
    publisher.add_event("integrated", {"q": q, "raw_seq_num": 3})
    publisher.finish("success")

    events = [doc for name, doc in docs if name == "event"]
    assert [e["seq_num"] for e in events] == [1, 2, 3]  # the refused event took no number
    assert [e["data"]["raw_seq_num"] for e in events] == [1, 2, 3]
    start = docs[0][1]
    assert start["original_run_uid"] == raw_start["uid"] and start["original_scan_id"] == 7
    assert "scan_id" not in start and start["sample"] == "LaB6"
    assert docs[-1][1]["num_events"] == {"integrated": 3}
    for name, doc in docs:  # every document, later events included, passes the schema
        event_model.schema_validators[event_model.DocumentNames[name]].validate(doc)
