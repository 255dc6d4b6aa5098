"""``bluesky-symdenoise serve --nats URL --subject S`` against a real nats-server (JetStream)."""

from __future__ import annotations

import asyncio
import signal

import numpy as np
import pytest

from bluesky_symdenoise.simulate.scenes import make_scene

from .conftest import wait_for

pytest.importorskip("bluesky_nats")

SHAPE = (64, 64)
SUBJECT = "events.volatile"


def read_stream(url: str) -> list[tuple[str, dict]]:
    """Every document in the ``bluesky`` stream so far, in order."""
    import nats
    from ormsgpack import unpackb

    async def read() -> list[tuple[str, dict]]:
        client = await nats.connect(url)
        try:
            js = client.jetstream()
            info = await js.stream_info("bluesky")
            sub = await js.subscribe("events.>", stream="bluesky", ordered_consumer=True)
            docs = []
            for _ in range(info.state.messages):
                msg = await sub.next_msg(timeout=5)
                docs.append((msg.subject.rsplit(".", 1)[-1], unpackb(msg.data)))
            await sub.unsubscribe()
            return docs
        finally:
            await client.close()

    return asyncio.run(read())


def test_serve_over_nats_jetstream(nats_server, serve):
    import nats
    from bluesky import RunEngine
    from bluesky import plans as bp
    from bluesky_nats.nats_publisher import NATSPublisher
    from bluesky_nats.nats_runtime import NatsRuntime
    from bluesky_nats.outbox import Delivery, Outbox
    from ophyd.sim import DirectImage

    worker = serve("--nats", nats_server, "--subject", SUBJECT)
    runtime = NatsRuntime("nats-io-test")
    try:
        client = runtime.connect(nats.connect(nats_server))
        publisher = NATSPublisher(Outbox(runtime, client, delivery=Delivery.CRITICAL),
                                  client.jetstream(), SUBJECT)
        scene = make_scene("powder", shape=SHAPE, seed=3)
        rng = np.random.default_rng(0)
        RE = RunEngine({})
        RE.subscribe(publisher)
        (uid,) = RE(bp.count([DirectImage(func=lambda: scene.expose(2.0, rng), name="det")],
                             num=3))
        assert publisher.flush()
    finally:
        runtime.close()

    def derived_stop():
        docs = read_stream(nats_server)
        starts = [d for n, d in docs if n == "start" and d.get("original_run_uid") == uid]
        stops = [d for n, d in docs if n == "stop" and starts
                 and d["run_start"] == starts[0]["uid"]]
        return (docs, starts, stops[0]) if stops else None

    docs, starts, stop = wait_for(derived_stop, 90, "the derived run on NATS", interval=0.5)
    assert len(starts) == 1  # one derived run, and no derived run of a derived run
    assert not [d for n, d in docs if n == "start"
                and d.get("original_run_uid") == starts[0]["uid"]]
    assert stop["exit_status"] == "success"
    descriptors = {d["uid"] for n, d in docs if n == "descriptor"
                   and d["run_start"] == starts[0]["uid"] and d["name"] == "denoised"}
    events = [d for n, d in docs if n == "event" and d["descriptor"] in descriptors]
    assert len(events) == 3
    assert np.asarray(events[0]["data"]["det_img_denoised"]).shape == SHAPE
    assert worker.signal(signal.SIGINT) == 0, worker.output
    assert "max_payload" in worker.output
