"""``bluesky-symdenoise serve``: the live denoiser in its own process, on a document bus.

Raw runs come in from a bluesky 0MQ proxy (:func:`serve_zmq`) or a NATS JetStream stream
(:func:`serve_nats`); derived runs go back onto the same bus, so every consumer sees both.
"""

from .worker import DerivedRunFilter, RemoteDenoiser
from .zeromq import serve_zmq

__all__ = ["DerivedRunFilter", "RemoteDenoiser", "serve_nats", "serve_zmq"]


def __getattr__(name: str):
    if name == "serve_nats":  # bluesky-nats is optional
        from .jetstream import serve_nats

        return serve_nats
    raise AttributeError(name)
