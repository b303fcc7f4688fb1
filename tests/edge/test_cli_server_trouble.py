"""The ``conveyor`` command line when the server is not there, not ready, throttling, or not Conveyor:
a message and SERVER_TROUBLE (6), never a traceback, and never 1 (which ``watch`` means as FAILED)."""
from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from conveyor_cli import config
from conveyor_cli.client import CLIError, Client
from conveyor_cli.main import main
from conveyor_cli.watch import ProgressView, follow

SERVER_TROUBLE = 6  # the documented exit status (README, docs/live.md)


ROOT = Path(__file__).resolve().parents[2]


class FakeServer(ThreadingHTTPServer):
    """Answers every request with ``status``/``body``/``headers`` (or, per path, what ``routes`` say),
    after ``delay`` seconds; counts them and keeps them (method, path with query, JSON body)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.status, self.body, self.headers = 200, b"{}", {"Content-Type": "application/json"}
        self.hits = 0
        self.delay = 0.0
        self.requests: list[tuple[str, str, object]] = []
        self.routes: dict[str, Callable[[dict[str, list[str]]], tuple[int, object]]] = {}

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
        server = self.server
        server.hits += 1
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        server.requests.append((self.command, self.path, json.loads(raw) if raw else None))
        time.sleep(server.delay)
        parts = urlsplit(self.path)
        status, body, headers = server.status, server.body, server.headers
        if parts.path in server.routes:
            status, answer = server.routes[parts.path](parse_qs(parts.query))
            body, headers = json.dumps(answer).encode(), {"Content-Type": "application/json"}
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

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


def cli(*args: str, **popen: object) -> subprocess.Popen[str]:
    """``python -m conveyor_cli ARGS`` as a user runs it (the config dir comes from the environment), from a
    terminal: Ctrl-C is not ignored, even when this suite runs in the background of a shell without job
    control, which starts it with SIGINT ignored (and a child inherits that: the Ctrl-C test hung there)."""
    return subprocess.Popen([sys.executable, "-m", "conveyor_cli", *args], cwd=ROOT, env=dict(os.environ),
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            **popen)  # type: ignore[call-overload]


@pytest.mark.parametrize("status", [429, 503])
def test_a_busy_server_on_token_refresh_is_server_trouble_not_logged_out(server, capsys, status):
    config.save({"url": server.url, "access": "expired", "refresh": "r"})
    server.routes["/api/v1/tasks/"] = lambda query: (401, {"error": {"code": "not_authenticated"}})
    server.routes["/api/v1/auth/token/refresh/"] = lambda query: (
        status, {"error": {"code": "throttled", "message": "slow down"}})
    code, err = run(capsys, server.url, "ls")
    assert code == SERVER_TROUBLE and "slow down" in err and "not logged in" not in err, err


def test_a_refused_refresh_token_is_still_not_logged_in(server, capsys):
    config.save({"url": server.url, "access": "expired", "refresh": "r"})
    server.routes["/api/v1/tasks/"] = lambda query: (401, {"error": {"code": "not_authenticated"}})
    server.routes["/api/v1/auth/token/refresh/"] = lambda query: (401, {"error": {"code": "token_not_valid"}})
    code, err = run(capsys, server.url, "ls")
    assert code == 5 and "not logged in" in err


def test_watch_retries_a_busy_token_refresh_like_any_busy_call(server):
    config.save({"url": server.url, "access": "expired", "refresh": "r"})
    server.routes["/api/v1/tasks/"] = lambda query: (401, {"error": {"code": "not_authenticated"}})
    server.routes["/api/v1/auth/token/refresh/"] = lambda query: (
        503, {"error": {"code": "not_ready", "message": "database: down"}})
    with pytest.raises(CLIError) as raised:
        asyncio.run(follow(Client(server.url), "t1", ProgressView(io.StringIO()), reconnects=1))
    assert raised.value.exit_code == SERVER_TROUBLE and "database: down" in str(raised.value)
    refreshes = [r for r in server.requests if r[1] == "/api/v1/auth/token/refresh/"]
    assert len(refreshes) == 2  # tried again, not taken for a logged-out user


@pytest.mark.parametrize("status, body", [(404, b"<html>Not Found</html>"), (500, b"<html>Server Error</html>"),
                                          (500, {"error": {"code": "server_error", "message": "oops"}}),
                                          (400, b"<html>Bad Request</html>")])
def test_an_error_that_is_not_json_or_a_5xx_is_server_trouble(server, capsys, status, body):
    config.save({"url": server.url, "access": "a", "refresh": "r"})
    server.reply(status, body)
    code, err = run(capsys, server.url, "ls")
    assert code == SERVER_TROUBLE and err.startswith("conveyor: ") and "Traceback" not in err, err


def test_a_json_refusal_still_exits_1(server, capsys):
    config.save({"url": server.url, "access": "a", "refresh": "r"})
    server.reply(409, {"error": {"code": "conflict", "message": "task is CANCELLED"}})
    code, err = run(capsys, server.url, "result", "t1")
    assert code == 1 and "task is CANCELLED" in err


def test_watch_against_a_500_page_retries_and_exits_6_never_1(server):
    config.save({"url": server.url, "access": "a", "refresh": "r"})
    server.reply(500, b"<html>Internal Server Error</html>")
    with pytest.raises(CLIError) as raised:
        asyncio.run(follow(Client(server.url), "t1", ProgressView(io.StringIO()), reconnects=1))
    assert raised.value.exit_code == SERVER_TROUBLE and server.hits == 2


def test_ls_limit_above_the_servers_page_follows_the_cursor(server, capsys):
    config.save({"url": server.url, "access": "a", "refresh": "r"})
    rows = [{"id": f"t{n:04}", "algorithm": "demo.noop", "status": "SUCCEEDED", "progress": {"percent": 100},
             "queue": "default", "priority": 5, "created_at": "2026-01-01T00:00:00Z"} for n in range(1200)]

    def tasks(query: dict[str, list[str]]) -> tuple[int, object]:
        start = int(query.get("cursor", ["0"])[0])
        size = min(int(query["page_size"][0]), 500)  # the server's max_page_size
        end = start + size
        return 200, {"next": f"http://internal:8000/api/v1/tasks/?cursor={end}&page_size={size}"
                     if end < len(rows) else None, "previous": None, "results": rows[start:end]}

    server.routes["/api/v1/tasks/"] = tasks
    code = main(["--url", server.url, "--json", "ls", "--limit", "1100", "--status", "SUCCEEDED"])
    listed = json.loads(capsys.readouterr().out)
    assert code == 0 and [t["id"] for t in listed] == [r["id"] for r in rows[:1100]]
    assert all("status=SUCCEEDED" in path for _, path, _ in server.requests)  # every page of the same listing

    server.requests.clear()
    assert main(["--url", server.url, "--json", "ls", "--limit", "5000"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1200 and len(server.requests) == 3  # to the end


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_ls_limit_below_1_is_a_usage_error(server, capsys, limit):
    with pytest.raises(SystemExit) as exited:
        main(["--url", server.url, "ls", "--limit", limit])
    assert exited.value.code == 2 and server.hits == 0


def test_ctrl_c_stops_watch_while_the_server_is_slow_to_answer(server):
    # given: a watch waiting on a server that takes 30 s to answer its REST check
    config.save({"url": server.url, "access": "a", "refresh": "r"})
    server.delay = 30.0
    watcher = cli("--url", server.url, "watch", "t1", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while server.hits == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.hits == 1
    # when: the user presses Ctrl-C
    watcher.send_signal(signal.SIGINT)
    # then: it leaves at once with 130 (not when the request times out), without a traceback
    _, err = watcher.communicate(timeout=10)
    assert watcher.returncode == 130 and "Traceback" not in err, err


PAGE = {"next": None, "previous": None, "results": []}


@pytest.mark.parametrize("suffix", ["/api/v1", "/api/v1/"])
def test_a_url_ending_in_the_api_prefix_is_taken_as_the_base_url(server, capsys, suffix):
    # given: CONVEYOR_URL copied with the API's prefix (what a banner or a curl example shows)
    config.save({"url": server.url, "access": "a", "refresh": "r"})
    server.routes["/api/v1/tasks/"] = lambda query: (200, PAGE)
    # when: a command runs against it
    code, err = run(capsys, server.url + suffix, "ls")
    # then: the prefix is not doubled, and the stored login of that server is used
    assert code == 0, err
    assert [path.split("?")[0] for _, path, _ in server.requests] == ["/api/v1/tasks/"]


def test_a_refusal_prints_each_problem_once(server, capsys):
    # given: the API's 400 for one field, whose message already names it
    config.save({"url": server.url, "access": "a", "refresh": "r"})
    server.reply(400, {"error": {"code": "invalid", "message": "algorithm: unknown algorithm 'nope.algo'",
                                 "fields": {"algorithm": ["unknown algorithm 'nope.algo'"]}}})
    code, err = run(capsys, server.url, "submit", "nope.algo")
    assert code == 1 and err == "conveyor: algorithm: unknown algorithm 'nope.algo'\n", err

    # and: with several fields, the ones the message does not say are listed under it
    server.reply(400, {"error": {"code": "invalid", "message": "params.n: too big",
                                 "fields": {"params.n": ["too big"], "params.m": ["required", "not a number"]}}})
    code, err = run(capsys, server.url, "submit", "demo.hello")
    assert code == 1 and err == "conveyor: params.n: too big\n  params.m: required; not a number\n", err


@pytest.mark.parametrize("args", [["--url", "{url}", "ls", "--json"], ["--url", "{url}", "--json", "ls"],
                                  ["ls", "--json", "--url", "{url}"], ["--json", "--url", "{url}", "ls"]])
def test_global_options_go_before_or_after_the_command(server, capsys, args):
    config.save({"url": server.url, "access": "a", "refresh": "r"})
    server.routes["/api/v1/tasks/"] = lambda query: (200, PAGE)
    code = main([arg.format(url=server.url) for arg in args])
    assert code == 0 and json.loads(capsys.readouterr().out) == []


def test_watch_outlasts_any_number_of_token_expiries_on_a_task_with_nothing_new(monkeypatch):
    """A task waiting for hours behind others shows no new event; each 30-minute token expiry (4401 after the
    stream ran) counted as a failed try, and `watch` gave up after 30 of them (15 h). Here: more expiries
    than tries allowed, then the task finishes."""
    from websockets.asyncio.server import serve

    from conveyor_cli import watch as watch_module

    monkeypatch.setattr(watch_module, "EXPIRY_AFTER_SECONDS", 0.0, raising=False)  # each "lasted" long enough
    monkeypatch.setattr(Client, "fresh_access", lambda self: "token")
    connections = 0

    async def handler(ws) -> None:
        nonlocal connections
        connections += 1
        await ws.recv()  # the auth message
        await ws.send(json.dumps({"event": "task.snapshot", "task": {"status": "PENDING"}}))
        if connections <= 4:
            await ws.close(4401, "token expired")
            return
        await ws.send(json.dumps({"event": "task.succeeded", "seq": 1, "status": "SUCCEEDED", "data": {}}))

    async def main_() -> str:
        async with serve(handler, "127.0.0.1", 0) as ws_server:
            port = ws_server.sockets[0].getsockname()[1]
            return await follow(Client(f"http://127.0.0.1:{port}"), "t1", ProgressView(io.StringIO()), reconnects=1)

    assert asyncio.run(main_()) == "SUCCEEDED"
    assert connections == 5
