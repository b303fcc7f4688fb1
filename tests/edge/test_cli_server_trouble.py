"""The ``conveyor`` command line when the server is not there, not ready, throttling, or not Conveyor:
a message and SERVER_TROUBLE (6), never a traceback, and never 1 (which ``watch`` means as FAILED)."""
from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conveyor_cli import config
from conveyor_cli.client import CLIError, Client
from conveyor_cli.main import main
from conveyor_cli.watch import ProgressView, follow

SERVER_TROUBLE = 6  # the documented exit status (README, docs/live.md)


class FakeServer(ThreadingHTTPServer):
    """Answers every request with ``status``/``body``/``headers``, and counts them."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.status, self.body, self.headers = 200, b"{}", {"Content-Type": "application/json"}
        self.hits = 0

    def reply(self, status: int, body: object, **headers: str) -> None:
        raw = json.dumps(body).encode() if not isinstance(body, bytes) else body
        self.status, self.body = status, raw
        self.headers = {"Content-Type": "application/json" if raw.startswith(b"{") else "text/html", **headers}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.hits += 1
        self.send_response(self.server.status)
        for name, value in self.server.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    do_POST = do_GET


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    monkeypatch.setenv("CONVEYOR_CONFIG_DIR", str(tmp_path / "config"))
    fake = FakeServer()
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    yield fake
    fake.shutdown()
    fake.server_close()


def run(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, str]:
    code = main(["--url", url, *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("url", ["http://127.0.0.1:1", "notaurl", "http://[bad"])
def test_login_to_a_server_that_cannot_be_reached_is_a_message_and_6(server, capsys, url):
    code, err = run(capsys, url, "login", "-u", "a", "-p", "b")
    assert code == SERVER_TROUBLE and err.startswith("conveyor: cannot reach"), err


def test_login_answered_by_a_page_that_is_not_json_is_a_message_and_6(server, capsys):
    server.reply(200, b"<html>proxy login</html>")
    code, err = run(capsys, server.url, "login", "-u", "a", "-p", "b")
    assert code == SERVER_TROUBLE and f"unexpected non-JSON reply from {server.url}/api/v1/auth/token/" in err


def test_a_command_answered_by_a_page_that_is_not_json_is_a_message_and_6(server, capsys):
    config.save({"url": server.url, "access": "a", "refresh": "r"})
    server.reply(200, b"<html>proxy login</html>")
    code, err = run(capsys, server.url, "ls")
    assert code == SERVER_TROUBLE and "unexpected non-JSON reply" in err


def test_refresh_on_a_server_that_went_away_is_a_message_and_6(server, capsys):
    config.save({"url": "http://127.0.0.1:1", "access": "a", "refresh": "r"})
    client = Client("http://127.0.0.1:1")
    with pytest.raises(CLIError) as raised:
        client.refresh()
    assert raised.value.exit_code == SERVER_TROUBLE


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_watch_retries_a_busy_server_after_its_retry_after_and_gives_up_with_6(server, status):
    config.save({"url": server.url, "access": "a", "refresh": "r"})
    server.reply(status, {"error": {"code": "not_ready", "message": "database: down"}}, **{"Retry-After": "1"})
    loop = asyncio.new_event_loop()
    started = loop.time()
    with pytest.raises(CLIError) as raised:
        loop.run_until_complete(follow(Client(server.url), "t1", ProgressView(io.StringIO()), reconnects=1))
    elapsed = loop.time() - started
    loop.close()
    assert raised.value.exit_code == SERVER_TROUBLE and "database: down" in str(raised.value)
    assert server.hits == 2 and elapsed >= 1.0  # it waited the Retry-After, not its own 0.4 s backoff
