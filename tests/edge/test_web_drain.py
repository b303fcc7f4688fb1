"""SIGTERM to the web server lets the requests in flight finish (config/handlers.py drain_on_sigterm).

Twisted's own SIGTERM handler stopped the reactor at once and daphne's "before shutdown" trigger killed
every application instance still running: a rolling deploy cut off whatever was in flight (clients got a
reset, submits that had committed looked failed). Now the first SIGTERM keeps serving until no HTTP
request is in flight, at most WEB_SHUTDOWN_GRACE_SECONDS, readiness answering 503 ``shutting_down``
meanwhile; then daphne stops as before. Slow requests here: streamed downloads read by a slow client.
"""
from __future__ import annotations

import hashlib
import signal
import socket
import threading
import time
from typing import Any

import httpx
import pytest

from tests.algorithms.helpers import run
from tests.conftest import PASSWORD

CLIENTS = 4
SIZE_MB = 6
GRACE = "90"  # far longer than any bound below: a process that waited for all of it fails them


def _token(base: str) -> dict[str, str]:
    token = httpx.post(f"{base}/api/v1/auth/token/", json={"username": "alice", "password": PASSWORD}, timeout=30)
    return {"Authorization": f"Bearer {token.json()['access']}"}


class SlowDownload(threading.Thread):
    """GET over a raw socket with a small receive buffer, reading the body 64 KiB at a time with pauses:
    a download that takes seconds. ``started`` is set once the headers and some body have arrived."""

    def __init__(self, port: int, path: str, headers: dict[str, str], pause: float) -> None:
        super().__init__(daemon=True)
        self.port, self.path, self.headers, self.pause = port, path, headers, pause
        self.started = threading.Event()
        self.status = b""
        self.length = -1
        self.body = b""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._download()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.started.set()

    def _download(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # before connect: a small window
        sock.settimeout(60)
        sock.connect(("127.0.0.1", self.port))
        with sock:
            lines = [f"GET {self.path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", "Accept-Encoding: identity",
                     "Connection: close", *(f"{k}: {v}" for k, v in self.headers.items())]
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed before the headers: {data!r}")
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            self.status = head.split(b"\r\n", 1)[0]
            self.length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:"))
            while len(body) < self.length:
                chunk = sock.recv(65536)
                if not chunk:
                    break  # the server closed early: reported as a short body
                body += chunk
                if len(body) > 256 * 1024:
                    self.started.set()
                time.sleep(self.pause)
            self.body = body


def _readiness(base: str) -> tuple[int, Any]:
    response = httpx.get(f"{base}/api/v1/system/health/", timeout=10)
    return response.status_code, response.json()


@pytest.mark.e2e
def test_sigterm_lets_the_downloads_in_flight_finish_and_readiness_says_shutting_down(live_worker, web_process,
                                                                                        api, alice):
    task = run(api(alice), "demo.blob", {"size_mb": SIZE_MB, "seed": 11})
    web = web_process("drain", WEB_SHUTDOWN_GRACE_SECONDS=GRACE)
    auth = _token(web.url)
    path = f"/api/v1/tasks/{task['id']}/result/"
    whole = httpx.get(f"{web.url}{path}", headers={**auth, "Accept-Encoding": "identity"}, timeout=60)
    assert whole.status_code == 200 and len(whole.content) == SIZE_MB * 1024 * 1024
    assert _readiness(web.url)[0] == 200

    # ~100 reads of 64 KiB with 0.04 s pauses: several seconds each, on any machine
    clients = [SlowDownload(web.port, path, auth, pause=0.04) for _ in range(CLIENTS)]
    for client in clients:
        client.start()
    for client in clients:
        assert client.started.wait(60)
    assert all(client.error is None and client.is_alive() for client in clients), [c.error for c in clients]

    web.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    # draining: readiness says so (load balancers stop sending), liveness stays up, new requests are served
    codes = []
    while time.monotonic() - signalled < 30 and any(client.is_alive() for client in clients):
        try:
            code, body = _readiness(web.url)
        except httpx.HTTPError:
            break  # the drain ended (it may, on a fast machine): judged below
        codes.append(code)
        if code == 503:
            assert body["error"]["code"] == "shutting_down", body
            assert httpx.get(f"{web.url}/health/", timeout=10).status_code == 200
            break
        time.sleep(0.1)
    assert 503 in codes, codes

    for client in clients:
        client.join(90)
    for client in clients:
        assert client.error is None, repr(client.error)
        assert client.status.endswith(b" 200 OK"), client.status
        assert len(client.body) == client.length == SIZE_MB * 1024 * 1024, (len(client.body), client.length)
        assert hashlib.sha256(client.body).digest() == hashlib.sha256(whole.content).digest()

    # then it exits by itself, long before its grace (90 s) would have ended
    web.proc.wait(timeout=60)
    assert time.monotonic() - signalled < 75
    assert web.proc.returncode == 0, web.proc.returncode


def test_an_idle_web_server_stops_at_once_on_sigterm(web_process):
    web = web_process("drain-idle", WEB_SHUTDOWN_GRACE_SECONDS=GRACE)
    assert httpx.get(f"{web.url}/health/", timeout=10).status_code == 200  # a kept-alive client is not a request
    web.proc.send_signal(signal.SIGTERM)
    web.proc.wait(timeout=20)
    assert web.proc.returncode == 0


@pytest.mark.e2e
def test_a_second_sigterm_stops_the_drain_at_once(live_worker, web_process, api, alice):
    task = run(api(alice), "demo.blob", {"size_mb": SIZE_MB, "seed": 12})
    web = web_process("drain-twice", WEB_SHUTDOWN_GRACE_SECONDS=GRACE)
    client = SlowDownload(web.port, f"/api/v1/tasks/{task['id']}/result/", _token(web.url), pause=0.5)
    client.start()
    assert client.started.wait(60) and client.error is None, client.error
    web.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30  # wait for the drain to show (readiness 503) before the second one
    while _readiness(web.url)[0] != 503:
        assert time.monotonic() < deadline, "readiness never answered 503 after SIGTERM"
        time.sleep(0.1)
    assert web.proc.poll() is None and client.is_alive()  # the download (~50 s at this pace) holds it up
    web.proc.send_signal(signal.SIGTERM)
    web.proc.wait(timeout=20)
    client.pause = 0  # read what the kernel still had for it, quickly
    client.join(30)
    assert len(client.body) < client.length  # cut off: the second SIGTERM did not wait for it
