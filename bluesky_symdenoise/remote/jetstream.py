"""The serve worker on NATS JetStream, with bluesky-nats' wire format.

bluesky-nats publishes each document on ``<subject>.<document name>`` (msgpack payload,
``run_id`` header) into a JetStream stream. The worker consumes ``<subject>.>`` from the
stream with an ordered consumer that starts at *new* messages (a restarted worker does not
denoise the stream's history again), and publishes derived documents on
``<derived_subject>.<name>`` (default: the same subject, so consumers of ``<subject>.>`` see
raw and derived runs; the worker skips derived runs, its own included).

NATS refuses messages larger than the server's ``max_payload`` (1 MiB by default; at most
64 MiB, set ``max_payload: 8MB`` in the server configuration). A 1024x1024 float32 denoised
frame is 4 MiB: the worker reads the server's limit when it connects, logs it, and never
sends a larger document: such a document is skipped, counted and logged with what to change
(the derived run's other documents still go out, so its stop is never missing).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

from .worker import RemoteDenoiser

__all__ = ["serve_nats"]

logger = logging.getLogger(__name__)


def _publisher_class() -> type:
    from bluesky_nats.nats_publisher import NATSPublisher
    from ormsgpack import OPT_NAIVE_UTC, OPT_SERIALIZE_NUMPY, packb

    class SizeCheckedPublisher(NATSPublisher):
        """bluesky-nats' publisher, refusing documents over the server's max_payload."""

        def __init__(self, *args: Any, max_payload: int, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.max_payload = int(max_payload)
            self.oversize = 0

        def update_run_id(self, name: str, doc: dict) -> None:
            # The ``run_id`` header follows the run of each start and stop: a worker group
            # also closes a crashed member's derived run, a stop of another run.
            if name == "start":
                self.run_id = doc["uid"]
            elif name == "stop":
                self.run_id = doc["run_start"]

        def __call__(self, name: str, doc: dict) -> None:
            size = len(packb(doc, option=OPT_NAIVE_UTC | OPT_SERIALIZE_NUMPY))
            if size > self.max_payload:
                self.oversize += 1
                logger.error(
                    "derived %s document of %d bytes exceeds the NATS server's max_payload "
                    "(%d bytes): not sent (%d so far). Raise max_payload in the "
                    "nats-server configuration (e.g. 'max_payload: 8MB', at most 64MB)",
                    name, size, self.max_payload, self.oversize)
                return
            super().__call__(name, doc)

    return SizeCheckedPublisher


def _dispatcher_class() -> type:
    from bluesky_nats.nats_dispatcher import NATSDispatcher
    from nats.js.api import DeliverPolicy

    class NewDocumentsDispatcher(NATSDispatcher):
        """``NATSDispatcher`` whose consumer starts at new messages, not the stream's start."""

        async def _subscribe(self) -> None:
            self._subscription = await self._js.subscribe(
                subject=self._subject, stream=self._stream_name, ordered_consumer=True,
                deliver_policy=DeliverPolicy.NEW)

    return NewDocumentsDispatcher


def _size_checked_publisher(runtime: Any, url: str, subject: str) -> Any:
    """Connect ``runtime`` (a bluesky-nats ``NatsRuntime``) to ``url``; a publisher of
    derived documents on ``<subject>.<name>`` that never sends one over the server's
    ``max_payload``."""
    import nats
    from bluesky_nats.outbox import Delivery, Outbox

    client = runtime.connect(nats.connect(url))
    publisher = _publisher_class()(Outbox(runtime, client, delivery=Delivery.CRITICAL),
                                   client.jetstream(), subject,
                                   max_payload=client.max_payload)
    logger.info("NATS server max_payload: %d bytes", client.max_payload)
    return publisher


def _stop_on_signals(loop: asyncio.AbstractEventLoop) -> tuple[asyncio.Event, list[str]]:
    """An event SIGINT or SIGTERM sets on ``loop``, and the names of the signals received."""
    stopping = asyncio.Event()
    received: list[str] = []

    def interrupt(signum: int) -> None:
        received.append(signal.Signals(signum).name)
        stopping.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupt, signum)
    return stopping, received


def serve_nats(url: str, subject: str, *, stream: str = "bluesky",
               derived_subject: str | None = None, ready: Callable[[], Any] | None = None,
               **options: Any) -> int:
    """Run until SIGINT/SIGTERM; return 0 after a clean shutdown.

    ``url``: ``nats://HOST:PORT``; ``subject``: the prefix the RunEngine's
    ``NATSPublisher`` publishes under (e.g. ``events.volatile``); ``stream``: the JetStream
    stream holding those subjects (it must also cover ``derived_subject``; the worker
    creates no stream). ``options`` go to
    :class:`~bluesky_symdenoise.remote.worker.RemoteDenoiser`. Main thread only.
    """
    from bluesky_nats.nats_runtime import NatsRuntime

    runtime = NatsRuntime("nats-io-symdenoise")
    try:
        publisher = _size_checked_publisher(runtime, url, derived_subject or subject)
        worker = RemoteDenoiser(publisher, **options)
    except BaseException:
        runtime.close()
        raise
    loop = asyncio.new_event_loop()
    dispatcher = _dispatcher_class()(subject=f"{subject}.>", servers=url, stream_name=stream,
                                     loop=loop)
    dispatcher.subscribe(worker)
    stopping, received = _stop_on_signals(loop)

    async def run() -> None:
        async with dispatcher:
            if ready is not None:
                ready()
            await stopping.wait()

    logger.info("serving: %s %s.> -> symdenoise -> %s.>", url, subject,
                derived_subject or subject)
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
        reason = received[0] if received else "dispatcher ended"
        clean = worker.shutdown(reason)
        clean = publisher.flush() and clean
        clean = runtime.close() and clean
    logger.info("stopped (%s); %d raw runs, %d derived documents ignored, %d not sent "
                "(over max_payload)", reason, worker.raw_runs, worker.ignored,
                publisher.oversize)
    return 0 if clean else 1
