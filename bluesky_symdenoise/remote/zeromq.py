"""The serve worker on bluesky's 0MQ proxy (``bluesky-0MQ-proxy``).

It subscribes to the proxy's *out* address like any ``RemoteDispatcher`` and publishes the
derived documents into the proxy's *in* address with a ``Publisher``, so every subscriber
sees raw and derived runs interleaved. Give addresses as ``tcp://HOST:PORT``: a bare integer
port means all interfaces to bluesky.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

from .worker import RemoteDenoiser

__all__ = ["serve_zmq"]

logger = logging.getLogger(__name__)

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def serve_zmq(from_address: str, to_address: str, *, prefix: bytes = b"",
              ready: Callable[[], Any] | None = None, **options: Any) -> int:
    """Run until SIGINT/SIGTERM; return 0 after a clean shutdown.

    ``from_address``: the proxy's out address (subscribe); ``to_address``: its in address
    (publish). ``prefix``: the 0MQ prefix of the derived documents and of the raw documents
    read (``b""``: read all). ``ready()`` is called once the subscription is set up.
    ``options`` go to :class:`~bluesky_symdenoise.remote.worker.RemoteDenoiser`. Must run
    on the main thread (signal handlers).
    """
    from bluesky.callbacks.zmq import Publisher, RemoteDispatcher

    publisher = Publisher(to_address, prefix=prefix)
    worker = RemoteDenoiser(publisher, **options)
    dispatcher = RemoteDispatcher(from_address, prefix=prefix)
    dispatcher.subscribe(worker)
    received: list[str] = []

    def interrupt(signum: int) -> None:
        received.append(signal.Signals(signum).name)
        for task in asyncio.all_tasks(dispatcher.loop):
            task.cancel()

    for signum in _SIGNALS:
        dispatcher.loop.add_signal_handler(signum, interrupt, signum)
    if ready is not None:
        dispatcher.loop.call_soon(ready)
    logger.info("serving: %s -> symdenoise -> %s", from_address, to_address)
    try:
        dispatcher.start()
    except asyncio.CancelledError:
        pass
    finally:
        reason = f"{received[0] if received else 'dispatcher ended'}"
        clean = worker.shutdown(reason)
        publisher.close()
    logger.info("stopped (%s); %d raw runs, %d derived documents ignored", reason,
                worker.raw_runs, worker.ignored)
    return 0 if clean else 1
