"""Slow downloads do not take the web process's database connections: a streamed result used to keep
its request's Django connection until the last byte went, so with ``DB_POOL_MAX_SIZE`` connections and
that many clients reading slowly, every other request waited ``DB_POOL_TIMEOUT`` and got a 503 (and with
no pool, each slow download held a PostgreSQL session of its own). The chunks are read through the
storage's own small pool (``STORAGE_READ_CONNECTIONS``), one read at a time."""
from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from tests.algorithms.helpers import run
from tests.conftest import PASSWORD

SLOW = 4  # more slow downloads than the web process has pooled connections


def stalled_download(base: str, path: str, token: str) -> socket.socket:
    """A client that asks for the result, reads the headers and a little, then stops reading."""
    url = urlsplit(base)
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    return sock


@pytest.mark.e2e
def test_slow_downloads_leave_the_pooled_connections_to_other_requests(live_worker, web_process, alice, api):
    blob = run(api(alice), "demo.blob", {"size_mb": 32, "seed": 3})
    web = web_process("pool", DB_POOL_MAX_SIZE="2", DB_POOL_TIMEOUT="3")
    token = httpx.post(f"{web.url}/api/v1/auth/token/", json={"username": "alice", "password": PASSWORD}).json()
    headers = {"Authorization": f"Bearer {token['access']}"}
    slow = [stalled_download(web.url, f"/api/v1/tasks/{blob['id']}/result/", token["access"]) for _ in range(SLOW)]
    try:
        time.sleep(0.5)  # each is stuck on a full socket now, its stream open
        for _ in range(3):
            listed = httpx.get(f"{web.url}/api/v1/tasks/", headers=headers, timeout=30)
            assert listed.status_code == 200, listed.text[:300]
        whole = httpx.get(f"{web.url}/api/v1/tasks/{blob['id']}/result/", headers=headers, timeout=60)
        assert whole.status_code == 200 and len(whole.content) == 32 * 1024 * 1024
    finally:
        for sock in slow:
            sock.close()


@pytest.mark.e2e
def test_a_download_whose_client_stopped_reading_is_cut_off_after_download_stall_seconds(
        live_worker, web_process, alice, api):
    blob = run(api(alice), "demo.blob", {"size_mb": 32, "seed": 4})
    web = web_process("stall", DOWNLOAD_STALL_SECONDS="2")
    token = httpx.post(f"{web.url}/api/v1/auth/token/", json={"username": "alice", "password": PASSWORD}).json()
    sock = stalled_download(web.url, f"/api/v1/tasks/{blob['id']}/result/", token["access"])
    try:
        time.sleep(5)  # reads nothing for longer than DOWNLOAD_STALL_SECONDS
        received = 0
        try:
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
        assert received < 32 * 1024 * 1024  # cut off, where it used to wait for the client for ever
    finally:
        sock.close()
    whole = httpx.get(f"{web.url}/api/v1/tasks/{blob['id']}/result/",
                      headers={"Authorization": f"Bearer {token['access']}"}, timeout=60)
    assert whole.status_code == 200 and len(whole.content) == 32 * 1024 * 1024  # a reader is never cut off
