"""``bluesky-symdenoise serve --from OUT --to IN`` on a real ``bluesky-0MQ-proxy``."""

from __future__ import annotations

import asyncio
import signal
import threading

import event_model
import numpy as np
import pytest

from bluesky_symdenoise.simulate.scenes import make_scene

from .conftest import wait_for

pytest.importorskip("zmq")

SHAPE = (64, 64)


class BusListener:
    """A ``RemoteDispatcher`` on the proxy's out address, in a thread, recording all."""

    def __init__(self, address: str) -> None:
        from bluesky.callbacks.zmq import RemoteDispatcher

        self.docs: list[tuple[str, dict]] = []
        self.dispatcher = RemoteDispatcher(address)
        self.dispatcher.subscribe(lambda name, doc: self.docs.append((name, doc)))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.dispatcher.start()
        except asyncio.CancelledError:
            pass

    def close(self) -> None:
        loop = self.dispatcher.loop

        def cancel() -> None:
            for task in asyncio.all_tasks(loop):
                task.cancel()

        loop.call_soon_threadsafe(cancel)
        self.thread.join(10)

    def derived_of(self, raw_uid: str) -> list[dict]:
        return [d for n, d in self.docs
                if n == "start" and d.get("original_run_uid") == raw_uid]

    def stop_of(self, run_uid: str) -> dict | None:
        return next((d for n, d in self.docs if n == "stop" and d["run_start"] == run_uid),
                    None)

    def events_of(self, run_uid: str, stream: str) -> list[dict]:
        descriptors = {d["uid"] for n, d in self.docs if n == "descriptor"
                       and d["run_start"] == run_uid and d["name"] == stream}
        return [d for n, d in self.docs if n == "event" and d["descriptor"] in descriptors]


@pytest.fixture
def bus(zmq_proxy):
    from bluesky.callbacks.zmq import Publisher

    in_address, out_address = zmq_proxy
    listener = BusListener(out_address)
    publisher = Publisher(in_address)
    yield publisher, listener
    listener.close()
    publisher.close()


def probe_until_ready(publisher, listener, worker) -> None:
    """0MQ subscriptions take effect asynchronously: publish a tiny *derived* run until both
    the worker (which must ignore it) and the listener have seen one."""
    def probe():
        bundle = event_model.compose_run(metadata={"original_run_uid": "probe"})
        publisher("start", bundle.start_doc)
        publisher("stop", bundle.compose_stop())
        return "ignoring derived run" in worker.output and listener.derived_of("probe")

    wait_for(probe, 60, "the serve worker and the listener to subscribe", interval=0.3)


def test_serve_publishes_derived_runs_and_aborts_open_ones_on_sigterm(bus, zmq_proxy, serve):
    from bluesky import RunEngine
    from bluesky import plans as bp
    from ophyd.sim import DirectImage

    publisher, listener = bus
    in_address, out_address = zmq_proxy
    worker = serve("--from", out_address, "--to", in_address)
    probe_until_ready(publisher, listener, worker)

    scene = make_scene("powder", shape=SHAPE, seed=3)
    rng = np.random.default_rng(0)
    RE = RunEngine({})
    RE.subscribe(publisher)
    (uid,) = RE(bp.count([DirectImage(func=lambda: scene.expose(2.0, rng), name="det")],
                         num=5))

    (derived,) = wait_for(lambda: listener.derived_of(uid), 90, "the derived start")
    stop = wait_for(lambda: listener.stop_of(derived["uid"]), 90, "the derived stop")
    assert stop["exit_status"] == "success"
    assert len(listener.events_of(derived["uid"], "denoised")) == 5
    frame = listener.events_of(derived["uid"], "denoised")[0]["data"]["det_img_denoised"]
    assert np.asarray(frame).shape == SHAPE
    # its own derived run came back over the bus and was not denoised again
    assert not listener.derived_of(derived["uid"])

    # a raw run still open when the worker is stopped: its derived run ends "abort"
    bundle = event_model.compose_run()
    publisher("start", bundle.start_doc)
    desc = bundle.compose_descriptor(name="primary", data_keys={
        "det_img": {"source": "sim", "dtype": "array", "shape": list(SHAPE)}})
    publisher("descriptor", desc.descriptor_doc)
    for seq in range(1, 6):
        publisher("event", desc.compose_event(data={"det_img": scene.expose(2.0, rng)},
                                              timestamps={"det_img": 0.0}, seq_num=seq))
    (open_derived,) = wait_for(lambda: listener.derived_of(bundle.start_doc["uid"]), 90,
                               "the derived start of the open run")
    assert worker.signal(signal.SIGTERM) == 0, worker.output
    stop = wait_for(lambda: listener.stop_of(open_derived["uid"]), 30,
                    "the derived stop of the open run")
    assert stop["exit_status"] == "abort"
    assert "SIGTERM" in stop["reason"]
