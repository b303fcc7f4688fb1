"""The ``conveyor`` command line when the trouble is on our side: output closed (``| head -1``), a file
it cannot write, no input to read, parameters JSON cannot carry, two processes saving the config: a
message (or a quiet exit) and a documented status, never a traceback or a loop. Also ``watch`` against
a WebSocket that keeps accepting and dropping it without anything new: it gives up (6)."""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from conveyor_cli import config, watch as watch_module
from conveyor_cli.client import CLIError, Client
from conveyor_cli.main import main
from conveyor_cli.watch import ProgressView, follow
from tests.edge.test_cli_server_trouble import SERVER_TROUBLE, FakeServer, cli, run, server  # noqa: F401

OUTPUT_CLOSED = 141  # README: 128 + SIGPIPE, like a program the shell saw killed by it

Script = Callable[[ServerConnection, int], Awaitable[None]]


class FakeLive:
    """A loopback server for ``watch``: REST calls get 200 ``{}``; ``/ws/tasks/<id>/`` takes the auth
    message, sends a snapshot, then runs ``script(ws, after_seq)``. Counts the sockets opened."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.sockets = 0
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.stop: asyncio.Future[None] | None = None
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.serve(),), daemon=True)
        self.thread.start()
        assert self.started.wait(10)

    async def serve(self) -> None:
        self.stop = self.loop.create_future()
        async with serve(self.handle, "127.0.0.1", 0, process_request=self.rest) as ws_server:
            self.port = next(iter(ws_server.sockets)).getsockname()[1]
            self.started.set()
            await self.stop

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rest(self, connection: ServerConnection, request: Request) -> Response | None:
        return None if request.path.startswith("/ws/") else connection.respond(200, "{}")

    async def handle(self, ws: ServerConnection) -> None:
        self.sockets += 1
        await ws.recv()  # {"type": "auth", …}
        await ws.send(json.dumps({"event": "task.snapshot", "task": {"id": "t1", "status": "RUNNING"}}))
        after_seq = int((ws.request.path.split("after_seq=") + ["0"])[1]) if ws.request else 0
        with contextlib.suppress(Exception):
            await self.script(ws, after_seq)

    def close(self) -> None:
        if self.stop is not None:
            self.loop.call_soon_threadsafe(self.stop.set_result, None)
        self.thread.join(10)


@pytest.fixture
def live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Script], FakeLive]]:
    monkeypatch.setenv("CONVEYOR_CONFIG_DIR", str(tmp_path / "config"))
    started: list[FakeLive] = []

    def start(script: Script) -> FakeLive:
        started.append(FakeLive(script))
        config.save({"url": started[-1].url, "access": "a", "refresh": "r"})
        return started[-1]

    yield start
    for fake in started:
        fake.close()


async def progress_forever(ws: ServerConnection, after_seq: int) -> None:
    seq = after_seq
    while True:
        seq += 1
        await ws.send(json.dumps({"event": "task.progress", "seq": seq, "status": "RUNNING",
                                  "percent": seq % 100, "message": f"step {seq}"}))
        await asyncio.sleep(0.02)


async def snapshot_then_drop(ws: ServerConnection, after_seq: int) -> None:
    await ws.close()


def test_watch_with_its_output_closed_exits_quietly_instead_of_reconnecting(live):
    fake = live(progress_forever)
    watcher = cli("--url", fake.url, "watch", "t1", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watcher.stdout.close()  # `conveyor watch … | head -0`: nobody reads our output
    try:
        watcher.wait(timeout=20)
    finally:
        watcher.kill()
    err = watcher.stderr.read()
    assert watcher.returncode == OUTPUT_CLOSED and err == "", err
    assert fake.sockets == 1  # never taken for a lost connection


def test_watch_gives_up_on_a_socket_that_drops_with_nothing_new(live):
    fake = live(snapshot_then_drop)
    with pytest.raises(CLIError) as raised:
        asyncio.run(asyncio.wait_for(follow(Client(fake.url), "t1", ProgressView(io.StringIO()), reconnects=2), 20))
    assert raised.value.exit_code == SERVER_TROUBLE and fake.sockets == 3


@pytest.mark.parametrize("args", [("--json", "ls", "--limit", "500"), ("result", "t1")])
def test_a_command_with_its_output_closed_exits_quietly(server, args):
    config.save({"url": server.url, "access": "a", "refresh": "r"})
    server.routes["/api/v1/tasks/"] = lambda query: (200, {"next": None, "previous": None, "results": [
        {"id": f"t{n}", "algorithm": "a", "status": "QUEUED", "progress": {"percent": 0}, "queue": "default",
         "priority": 5, "created_at": "2026-01-01T00:00:00Z"} for n in range(500)]})
    server.routes["/api/v1/tasks/t1/result/"] = lambda query: (200, {"task_id": "t1", "result": {"x": 1}})
    done = cli("--url", server.url, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    done.stdout.close()
    err = done.stderr.read()
    assert done.wait(timeout=30) == OUTPUT_CLOSED and err == "", err


@pytest.mark.parametrize("where", ["missing/x.json", "."])
def test_result_to_a_path_that_cannot_be_written_names_it(server, capsys, tmp_path, where):
    config.save({"url": server.url, "access": "a", "refresh": "r"})
    server.routes["/api/v1/tasks/t1/result/"] = lambda query: (200, {"task_id": "t1", "result": {"x": 1}})
    path = str(tmp_path / where)
    code, err = run(capsys, server.url, "result", "t1", "-o", path)
    assert code == 1 and err.startswith(f"conveyor: cannot write {path}: "), err


def test_login_without_input_is_a_usage_error(server):
    login = cli("--url", server.url, "login", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True)  # no terminal for getpass either
    _, err = login.communicate(timeout=30)
    assert login.returncode == 2 and "no input" in err and "Traceback" not in err, err
    assert server.hits == 0


def test_a_url_that_does_not_parse_is_server_trouble(server, capsys):
    code, err = run(capsys, "http://[::1", "ls")
    assert code == SERVER_TROUBLE and err.startswith("conveyor: cannot reach http://[::1"), err


def test_params_json_cannot_carry_are_sent_as_text(server, capsys):
    config.save({"url": server.url, "access": "a", "refresh": "r"})
    server.reply(201, {"id": "t1"})
    code, _ = run(capsys, server.url, "submit", "demo.noop", "a=NaN", "b=Infinity", "c=-Infinity", "d=1e999",
                  "e=[NaN]", "n=3", "xs=[1,2]", "s=hello")
    assert code == 0
    (method, path, body), = server.requests
    assert body["params"] == {"a": "NaN", "b": "Infinity", "c": "-Infinity", "d": "1e999", "e": "[NaN]",
                              "n": 3, "xs": [1, 2], "s": "hello"}


def test_two_processes_saving_the_config_at_once_both_land(tmp_path, monkeypatch):
    # given: another CLI process saves its config just as this one is about to move its file in place
    monkeypatch.setenv("CONVEYOR_CONFIG_DIR", str(tmp_path / "config"))
    replace = os.replace
    interleaved: list[bool] = []

    def replace_after_another_save(src: Any, dst: Any) -> None:
        if not interleaved:
            interleaved.append(True)
            config.save({"who": "other"})
        replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_after_another_save)
    # when
    config.save({"who": "me"})
    # then: neither lost its file to the other; the last one wins whole, private, with no leftovers
    assert config.load() == {"who": "me"}
    path = tmp_path / "config" / "config.json"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_ctrl_c_in_watch_on_a_terminal_leaves_the_bar_line(monkeypatch):
    async def interrupted(client: Client, task_id: str, view: ProgressView, **kwargs: Any) -> str:
        view.show({"percent": 40, "status": "RUNNING"})
        raise KeyboardInterrupt

    monkeypatch.setattr(watch_module, "follow", interrupted)
    out = Terminal()
    with pytest.raises(KeyboardInterrupt):
        watch_module.watch(None, "t1", out=out)  # type: ignore[arg-type]
    assert out.getvalue().endswith("RUNNING\n")
