"""Webhook fixtures: a real HTTP receiver on 127.0.0.1 and a worker for the ``webhooks`` queue.

* ``receiver``: a threading HTTP/1.1 server recording every request (headers, body, time). Its answers
  come from ``receiver.respond`` (a list of ``Reply`` consumed in order, then ``receiver.default``);
  ``receiver.gate`` (a ``threading.Event``) holds replies while cleared; ``stop()``/``start()`` take
  it down and bring it back on the same port. ``Reply(trickle=s)`` sends the body one byte every ``s``
  seconds (``slow_head=True``: the status line and headers too), the slow receiver a deadline must cut off.
* ``webhooks_worker``: ``celery worker -Q webhooks -P threads`` beside the session's ``live_worker``
  (whose embedded beat runs ``webhooks.send_due``), the way production runs deliveries on their own
  worker so a slow receiver never takes a task slot.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import ARTIFACTS, LiveWorker


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0
    trickle: float = 0.0  # seconds between single bytes of the body (the head goes out at once)
    slow_head: bool = False  # with ``trickle``: the status line and headers one byte at a time too


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    reply: int = 0

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.respond: list[Reply] = []
        self.default = Reply()
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        self.port = 0
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver.lock:
                    reply = receiver.respond.pop(0) if receiver.respond else receiver.default
                    item = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
                    receiver.requests.append(item)
                receiver.gate.wait(30)
                if reply.delay:
                    time.sleep(reply.delay)
                item.reply = reply.status
                if reply.trickle:
                    self.trickle(reply)
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def trickle(self, reply: Reply) -> None:
                """One byte every ``reply.trickle`` seconds, until the client hangs up."""
                head = "".join([f"HTTP/1.1 {reply.status} Slow\r\n",
                                *(f"{name}: {value}\r\n" for name, value in reply.headers.items()),
                                f"content-length: {len(reply.body)}\r\n\r\n"]).encode()
                data = head + reply.body if reply.slow_head else reply.body
                try:
                    if not reply.slow_head:
                        self.wfile.write(head)
                    for i in range(len(data)):
                        self.wfile.write(data[i:i + 1])
                        time.sleep(reply.trickle)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def events(self, ok_only: bool = True) -> list[str]:
        with self.lock:
            return [r.json["event"] for r in self.requests if not ok_only or 200 <= r.reply < 300]

    def ok(self) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if 200 <= r.reply < 300]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.gate.set()
    r.stop()


@pytest.fixture
def make_receiver() -> Iterator[Any]:
    made: list[Receiver] = []

    def make() -> Receiver:
        r = Receiver()
        r.start()
        made.append(r)
        return r

    yield make
    for r in made:
        r.gate.set()
        r.stop()


class WebhooksWorker(LiveWorker):
    """``celery worker -Q webhooks -P threads``: I/O-bound deliveries on threads, no beat of its own."""

    def __init__(self, env: dict[str, str], concurrency: int) -> None:
        super().__init__(env, queues="webhooks", concurrency=concurrency)
        self.log_path = ARTIFACTS / f"webhooks-worker-{os.getpid()}.log"

    def new_hostname(self) -> str:
        return f"test-webhooks-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", self.queues, "-P", "threads",
                "-c", str(self.concurrency), "-n", self.hostname, "-l", "info", "--without-mingle", "--without-gossip"]


@pytest.fixture(scope="session")
def _webhooks_worker_process(_worker_process: LiveWorker) -> Iterator[WebhooksWorker]:
    worker = WebhooksWorker(dict(_worker_process.env), concurrency=8)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def webhooks_worker(_webhooks_worker_process: WebhooksWorker, live_worker: LiveWorker) -> Iterator[WebhooksWorker]:
    _webhooks_worker_process.ensure_running()
    yield _webhooks_worker_process
