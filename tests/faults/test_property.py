"""Row 8: random document sequences and frame contents fed straight to the callback: it never
raises, never changes what it is given, and everything it emits validates."""

from __future__ import annotations

import pickle
import threading

import event_model
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bluesky_symdenoise.stream.callback import SymDenoise
from tests.helpers import DocumentCollector

from .conftest import check_derived_runs

SIDES = st.sampled_from([16, 20, 24])  # >= 16: the engine denoises, not passes through
DTYPES = st.sampled_from([np.float32, np.float64, np.int32, np.uint16, np.uint8, np.bool_,
                          np.complex64])


@st.composite
def frames(draw, shape):
    if draw(st.integers(0, 5)) == 0:  # another shape than the descriptor says
        shape = (draw(SIDES), draw(SIDES))
    dtype = np.dtype(draw(DTYPES))
    if dtype.kind == "f":
        elements = st.floats(-5, 1e6, width=dtype.itemsize * 8) | st.sampled_from(
            [np.nan, np.inf, -np.inf, 0.0])
    elif dtype.kind == "c":
        elements = st.complex_numbers(max_magnitude=10, width=dtype.itemsize * 8)
    else:
        elements = None
    base = draw(st.sampled_from(["poisson", "constant", "random"]))
    if base == "random":
        return draw(hnp.arrays(dtype, shape, elements=elements))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    frame = rng.poisson(draw(st.floats(0, 20)), shape) if base == "poisson" else \
        np.full(shape, draw(st.integers(-3, 70000)))
    with np.errstate(all="ignore"):
        return frame.astype(dtype)


@st.composite
def documents(draw):
    """A sequence of (name, doc): runs that may lack descriptors, events or stops, events of
    several streams, broken events, runs inside runs."""
    out: list[tuple[str, dict]] = []
    bundle = None
    descriptors: list[tuple[object, tuple[int, int] | None]] = []
    for _ in range(draw(st.integers(1, 20))):
        action = draw(st.sampled_from(["start", "descriptor", "event", "event", "event",
                                       "stop", "page"]))
        if action == "start" or bundle is None:
            metadata = {"poni": "/nonexistent.poni"} if draw(st.booleans()) else {}
            bundle = event_model.compose_run(metadata=metadata)
            descriptors = []
            out.append(("start", bundle.start_doc))
            continue
        if action == "descriptor":
            image = draw(st.booleans())
            shape = (draw(SIDES), draw(SIDES)) if image else None
            key = {"img": {"source": "sim", "dtype": "array", "shape": list(shape)}} if image \
                else {"x": {"source": "sim", "dtype": "number", "shape": []}}
            d = bundle.compose_descriptor(name=f"s{len(descriptors)}", data_keys=key)
            descriptors.append((d, shape))
            out.append(("descriptor", d.descriptor_doc))
        elif action in ("event", "page") and descriptors:
            d, shape = draw(st.sampled_from(descriptors))
            if shape is None:
                data = {"x": draw(st.floats(allow_nan=True))}
            elif draw(st.integers(0, 7)) == 0:
                data = {}  # the frame is missing
            else:
                data = {"img": draw(frames(shape))}
            event = d.compose_event(data=data, timestamps=dict.fromkeys(data, 0.0),
                                    validate=bool(data))
            if action == "page":
                out.append(("event_page", event_model.pack_event_page(event)))
            else:
                out.append(("event", event))
        elif action == "stop":
            status = draw(st.sampled_from(["success", "abort", "fail"]))
            out.append(("stop", bundle.compose_stop(exit_status=status, reason=status)))
            bundle, descriptors = None, []
    return out


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=documents(), field=st.sampled_from([None, "img"]),
       center=st.sampled_from([None, (9.0, 10.5), (100.0, 100.0)]),
       warmup=st.integers(1, 3), max_queue=st.integers(1, 4))
def test_random_documents(docs, field, center, warmup, max_queue):
    derived = DocumentCollector()
    sd = SymDenoise(field, center=center, budget_s=0, warmup_frames=warmup,
                    max_queue=max_queue)
    sd.subscribe(derived)
    try:
        for name, doc in docs:
            before = pickle.dumps(doc)
            assert sd(name, doc) == (name, doc)
            assert pickle.dumps(doc) == before, f"the {name} document was changed"
        assert sd.flush(60)
    finally:
        assert sd.close(60)
    assert not [t for t in threading.enumerate() if t.name.startswith("symdenoise")]
    assert sd.errors == [], sd.errors
    stops = check_derived_runs(derived)
    assert all(stop is not None for stop in stops.values()), "a derived run was left open"
    for start in derived.of("start"):
        assert start["original_run_uid"] in {d["uid"] for n, d in docs if n == "start"}
