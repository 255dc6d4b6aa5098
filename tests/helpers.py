"""Helpers shared by the test folders: noisy exposures of a scene, a document collector that
proves documents were not changed after the fact, PSNR on valid pixels, and Channel Access
reads and writes for the IOC tests."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import contextmanager

import event_model
import numpy as np
from caproto.sync import client as ca_client

# caproto's sync client waits 1-2 s for a search answer or a put completion by default; on a
# loaded 2-core CI machine the IOC (writing an HDF5 file, simulating a frame) can take longer,
# and one missed answer failed two tests in a row. A test that waits is not a test that fails.
CA_TIMEOUT_S = 10.0


# repeater=False: the sync client would otherwise spawn a CA repeater daemon (bound to all
# interfaces, outliving the tests).
def ca_read(pvname: str, **kwargs):
    """caproto's sync ``read`` without a repeater and with :data:`CA_TIMEOUT_S`."""
    kwargs.setdefault("timeout", CA_TIMEOUT_S)
    return ca_client.read(pvname, repeater=False, **kwargs)


def ca_write(pvname: str, value, **kwargs):
    """caproto's sync ``write`` without a repeater and with :data:`CA_TIMEOUT_S`."""
    kwargs.setdefault("timeout", CA_TIMEOUT_S)
    return ca_client.write(pvname, value, repeater=False, **kwargs)


#: The small scene of the live-plugin tests (:func:`tests.conftest.scene`) and its dose.
SHAPE = (64, 64)
COUNTS = 2.0


class FrameMaker:
    """Noisy exposures of a scene; remembers the clean expectation per frame."""

    def __init__(self, scene, counts: float = COUNTS, seed: int = 0) -> None:
        self.scene, self.counts = scene, counts
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> np.ndarray:
        return self.scene.expose(self.counts, self.rng)

    @property
    def truth(self) -> np.ndarray:
        return self.scene.scaled(self.counts)


class DocumentCollector:
    """Records (name, doc) and a pickle of each doc taken the moment it was received."""

    def __init__(self) -> None:
        self.docs: list[tuple[str, dict]] = []
        self.snapshots: list[bytes] = []

    def __call__(self, name: str, doc: dict) -> None:
        self.docs.append((name, doc))
        self.snapshots.append(pickle.dumps(doc))

    def of(self, name: str) -> list[dict]:
        return [d for n, d in self.docs if n == name]

    def stream(self, stream: str) -> list[dict]:
        uids = {d["uid"] for d in self.of("descriptor") if d["name"] == stream}
        return [d for d in self.of("event") if d["descriptor"] in uids]

    def unchanged(self) -> bool:
        return all(pickle.dumps(doc) == snap
                   for (_, doc), snap in zip(self.docs, self.snapshots, strict=True))

    def validate(self) -> None:
        for name, doc in self.docs:
            event_model.schema_validators[event_model.DocumentNames[name]].validate(doc)


def psnr(estimate: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> float:
    """PSNR on valid pixels, peak = max of the truth there."""
    mse = float(np.mean((np.asarray(estimate, np.float64)[..., valid] - truth[valid]) ** 2))
    return 10 * np.log10(float(truth[valid].max()) ** 2 / mse)


@contextmanager
def running_beamline_ioc(shape: tuple[int, int], seed: int) -> Iterator:
    """The beamline IOC (a caproto subprocess, Channel Access pinned to loopback) on a
    powder scene; stopped, and checked stopped, on exit."""
    from bluesky_symdenoise.detector.launch import start_beamline_ioc
    from bluesky_symdenoise.detector.loopback import pin_ca_to_loopback

    pin_ca_to_loopback()
    ioc = start_beamline_ioc(scene="powder", shape=shape, seed=seed, counts_per_second=20.0)
    try:
        yield ioc
    finally:
        ioc.stop()
        assert not ioc.running


def count_and_drain(RE, detector, sd, num: int) -> str:
    """A ``count`` of ``detector`` with ``sd`` (a subscribed SymDenoise) drained and closed
    after it, whatever happened; asserts the plugin recorded no error. Returns the uid."""
    from bluesky import plans as bp

    try:
        (uid,) = RE(bp.count([detector], num=num))
        assert sd.flush(timeout=60)
    finally:
        assert sd.close(timeout=30)
    assert sd.errors == []
    return uid
