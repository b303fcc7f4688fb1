"""Backpressure for streamed responses under daphne.

Daphne writes every ``http.response.body`` message into Twisted's transport at once and returns, so a
fast producer (a 1 GiB result read from disk) outruns a slower client and the whole body piles up in
the web process's memory. Twisted already knows when the socket's send buffer is full: it pauses a
request's registered producer. This registers a small producer (a valve) on each streaming response
and makes daphne's ``send()`` wait while the valve is closed, so Django's ASGI handler, and with it
the file reader in ``algorithms.downloads``, goes at the client's pace. A client that reads nothing for
``DOWNLOAD_STALL_SECONDS`` has its connection closed, so stalled downloads do not pile up for ever.

Installed from ``AlgorithmsConfig.ready()`` only inside a daphne process (``daphne.server`` already
imported): importing ``daphne.server`` elsewhere would install a Twisted reactor as a side effect.
"""
from __future__ import annotations

import asyncio
import sys
from typing import Any

from django.conf import settings

_INSTALLED = False


class _Valve:
    """A Twisted IPushProducer: paused while the transport's buffer is full."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()

    def pauseProducing(self) -> None:  # noqa: N802 - Twisted's interface
        self.open.clear()

    def resumeProducing(self) -> None:  # noqa: N802
        self.open.set()

    def stopProducing(self) -> None:  # noqa: N802 - connection lost: never block a sender again
        self.open.set()


def install() -> bool:
    """Patch ``daphne.server.Server.handle_reply`` once; False when not running under daphne."""
    global _INSTALLED
    server_module = sys.modules.get("daphne.server")
    if server_module is None or _INSTALLED:
        return _INSTALLED
    original = server_module.Server.handle_reply

    async def handle_reply(self: Any, protocol: Any, message: dict[str, Any]) -> None:
        body = message.get("type") == "http.response.body"
        more = body and bool(message.get("more_body", False))
        valve: _Valve | None = getattr(protocol, "_conveyor_valve", None)
        if body and not more and valve is not None:
            protocol._conveyor_valve = None  # unregister before daphne finishes the request
            # Not once the client has hung up: Request.connectionLost dropped the channel, so there is nothing
            # left to unregister (and Request.unregisterProducer would raise on the missing channel).
            if getattr(protocol, "producer", None) is valve and getattr(protocol, "channel", None) is not None:
                protocol.unregisterProducer()
        await original(self, protocol, message)
        if not more:
            return
        if valve is None and not protocol.finished and getattr(protocol, "channel", None) is not None \
                and getattr(protocol, "producer", None) is None:
            valve = protocol._conveyor_valve = _Valve()
            protocol.registerProducer(valve, True)
            if getattr(protocol.channel, "_waitingForTransport", False):
                valve.pauseProducing()
        if valve is not None:
            try:
                await asyncio.wait_for(valve.open.wait(), settings.DOWNLOAD_STALL_SECONDS)
            except asyncio.TimeoutError:  # a client that stopped reading: its connection goes, not for ever
                channel = getattr(protocol, "channel", None)
                if channel is not None and channel.transport is not None:
                    channel.transport.abortConnection()
                valve.open.set()

    server_module.Server.handle_reply = handle_reply
    _INSTALLED = True
    return True
