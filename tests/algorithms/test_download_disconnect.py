"""A client that hangs up during or right after a streamed download leaves no traceback in daphne's log.

``algorithms.daphne_flow`` registers a producer (a valve) on each streaming response and unregisters it
before the last ``http.response.body``. A client that has its Content-Length of bytes closes the socket
at once, often before Django sends that last (empty) body message; by then Twisted has dropped the
request's channel, and unregistering through it raised ``'NoneType' object has no attribute
'unregisterProducer'`` ("Exception inside application" in the web log) for about one download in six.
"""
from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys
import time
from urllib.parse import urlsplit

import httpx
import pytest

from tests.algorithms.helpers import run
from tests.conftest import ARTIFACTS, PASSWORD

ROUNDS = 60


def _daphne_log() -> bytes:
    """The session's daphne log (``start_daphne`` in tests/conftest.py names it after this process)."""
    return (ARTIFACTS / f"daphne-{os.getpid()}.log").read_bytes()


def _get_and_hang_up(base: str, path: str, headers: dict[str, str], *, read_body: bool, reset: bool) -> bytes:
    """GET over a raw socket; read the headers (and the whole Content-Length body when ``read_body``), then
    close at once (with an RST when ``reset``). Returns the status line."""
    url = urlsplit(base)
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    try:
        lines = [f"GET {path} HTTP/1.1", f"Host: {url.netloc}", *(f"{k}: {v}" for k, v in headers.items())]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed before the headers: {data!r}"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        if read_body:
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            while len(rest) < length:
                chunk = sock.recv(65536)
                assert chunk, "connection closed before the end of the body"
                rest += chunk
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return head.split(b"\r\n", 1)[0]
    finally:
        sock.close()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_downloads_the_client_hangs_up_on_log_no_exception_inside_daphne(live_worker, live_web, alice, api):
    task = run(api(alice), "demo.blob", {"size_mb": 1, "seed": 3})
    token = httpx.post(f"{live_web}/api/v1/auth/token/", json={"username": "alice", "password": PASSWORD}).json()
    auth = {"Authorization": f"Bearer {token['access']}"}
    path = f"/api/v1/tasks/{task['id']}/result/"
    before = len(_daphne_log())

    for i in range(ROUNDS):
        reset = bool(i % 2)
        # the reviewer's case: a small range, read whole, then the socket closed (Connection: close like curl's end)
        assert b" 206 " in _get_and_hang_up(live_web, path, {**auth, "Range": "bytes=0-1023"},
                                            read_body=True, reset=reset)
        # a whole (multi-chunk) download read to its end, then closed
        if i % 10 == 0:
            assert b" 200 " in _get_and_hang_up(live_web, path, {**auth, "Accept-Encoding": "identity"},
                                                read_body=True, reset=reset)
        # a hang-up right after the headers, in the middle of a streamed body
        if i % 5 == 0:
            assert b" 200 " in _get_and_hang_up(live_web, path, {**auth, "Accept-Encoding": "identity"},
                                                read_body=False, reset=reset)

    # the server is still well and serves a whole download after all that
    whole = httpx.get(f"{live_web}{path}", headers={**auth, "Accept-Encoding": "identity"}, timeout=60)
    assert whole.status_code == 200 and len(whole.content) == 1024 * 1024
    time.sleep(0.5)  # let daphne write out whatever the last hang-ups logged
    log = _daphne_log()[before:].decode(errors="replace")
    errors = [line for line in log.splitlines() if "Exception inside application" in line or "Traceback" in line]
    assert not errors, f"{len(errors)} tracebacks in daphne's log, the first:\n{errors[0][:3000]}"


# --- the same, deterministic: daphne_flow's handle_reply on a real Twisted request, no server -----------------

def _patched_server(monkeypatch: pytest.MonkeyPatch) -> tuple[object, list[dict[str, object]]]:
    """``daphne_flow.install()`` onto a stand-in ``daphne.server`` (importing the real one installs a Twisted
    reactor). Its ``handle_reply`` does what daphne's does: nothing once the connection is gone."""
    import types

    from algorithms import daphne_flow

    sent: list[dict[str, object]] = []

    class Server:
        async def handle_reply(self, protocol, message):  # noqa: ANN001, ANN202
            if protocol.channel is not None:
                sent.append(message)

    module = types.ModuleType("daphne.server")
    module.Server = Server  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "daphne.server", module)
    monkeypatch.setattr(daphne_flow, "_INSTALLED", False)
    assert daphne_flow.install()
    return Server(), sent


def _request():  # noqa: ANN202
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.web import http

    channel = http.HTTPChannel()
    channel.callLater = Clock().callLater  # its idle timeout, without a reactor
    channel.makeConnection(StringTransport())
    request = http.Request(channel)
    channel.requests.append(request)
    return channel, request


def _hang_up(channel) -> None:  # noqa: ANN001
    """What the TCP transport does when the peer goes: stop its producer (the channel), then connectionLost."""
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    channel.stopProducing()
    channel.connectionLost(Failure(ConnectionDone()))


@pytest.mark.parametrize("paused", [False, True], ids=["flowing", "paused"])
def test_the_last_body_after_the_client_hung_up_unregisters_nothing_and_raises_nothing(monkeypatch, paused):
    server, sent = _patched_server(monkeypatch)
    channel, request = _request()

    async def scenario() -> None:
        await server.handle_reply(request, {"type": "http.response.body", "body": b"x" * 1024, "more_body": True})
        assert request.producer is request._conveyor_valve is not None  # the valve is on
        if paused:
            channel.pauseProducing()  # the send buffer is full: the valve closes
            assert not request.producer.open.is_set()
        _hang_up(channel)
        assert request.channel is None
        # a body sent after the hang-up neither waits for a valve nor raises
        await asyncio.wait_for(server.handle_reply(request, {"type": "http.response.body", "body": b"y",
                                                             "more_body": True}), 5)
        await asyncio.wait_for(server.handle_reply(request, {"type": "http.response.body", "body": b""}), 5)

    asyncio.run(scenario())
    assert request._conveyor_valve is None
    assert len(sent) == 1  # daphne itself writes nothing once the connection is gone


def test_the_last_body_of_a_connected_request_unregisters_the_valve(monkeypatch):
    server, sent = _patched_server(monkeypatch)
    channel, request = _request()

    async def scenario() -> None:
        await server.handle_reply(request, {"type": "http.response.body", "body": b"x", "more_body": True})
        assert channel._requestProducer is request.producer is not None
        await server.handle_reply(request, {"type": "http.response.body", "body": b""})

    asyncio.run(scenario())
    assert request.producer is None and channel._requestProducer is None and request._conveyor_valve is None
    assert len(sent) == 2
