"""kombu's Redis transport, with one fix: a channel whose connection was closed under it says so.

When Redis goes away, the worker's consumer closes its connection and reconnects; an acknowledgement
that arrives from a pool child in between runs on the closed channel, where kombu's ``_connparams``
reads the connection's client, now None, and raises ``AttributeError`` (kombu issues #582 and #659).
Celery logs a connection error on an ack and carries on, but takes any other exception for an
unrecoverable one and stops the worker: a Redis restart then took a worker down with it (seen in
tests/chaos, "Redis restarted with its data lost"). Here that case raises the connection error it is.
Losing the ack is harmless: the database says what ran, the claim is guarded, and a message Redis
redelivers finds its task already final.

Registered for ``redis://`` and ``rediss://`` when ``config.celery`` is imported.
"""
from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise kombu_redis.redis.exceptions.ConnectionError("this channel's broker connection is closed")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel


def register() -> None:
    for scheme in ("redis", "rediss"):
        TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
