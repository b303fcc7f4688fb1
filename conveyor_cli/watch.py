"""``conveyor watch``: follow one task over ``/ws/tasks/<id>/`` and draw a progress bar.

The socket authenticates with its first message (the token stays out of URLs and logs). A dropped
connection is reopened with ``?after_seq=<last seen>`` so nothing is missed or shown twice; so is a
server that is overloaded or not ready (429, 502, 503, 504: after its ``Retry-After``), or answers with
another 5xx. The tries are counted from the last event shown, so a server that keeps accepting and
dropping the connection is given up on too. Giving up on the server exits with SERVER_TROUBLE, never 1
(which is a FAILED task). Our own output going away (``| head -1``) is OutputClosed, not network trouble.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO, TypeVar

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from conveyor_cli.client import (RETRYABLE, SERVER_TROUBLE, CLIError, Client, OutputClosed, ServerBusy,
                                 retry_after)

T = TypeVar("T")

FINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "CANCELLED": 3, "TIMED_OUT": 4}
BAR_WIDTH = 30


class ProgressView:
    """A redrawn bar on a terminal; one line per change otherwise (logs, CI, tests)."""

    def __init__(self, out: TextIO, *, quiet: bool = False) -> None:
        self.out = out
        self.tty = out.isatty()
        self.quiet = quiet
        self.last_line = ""
        self.error = ""

    def write(self, text: str) -> None:
        """A write error on our own output is OutputClosed, never taken for a lost connection."""
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed
            raise OutputClosed(str(exc)) from exc

    def interrupted(self) -> None:
        """Ctrl-C: leave the line of the bar, so the shell's prompt starts on a line of its own."""
        if self.tty and self.last_line and not self.quiet:
            with contextlib.suppress(OutputClosed):
                self.write("\n")

    def show(self, body: dict[str, Any]) -> None:
        if self.quiet:
            return
        percent = float(body.get("percent") or 0.0)
        filled = int(BAR_WIDTH * percent / 100)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        text = " ".join(x for x in (body.get("stage"), body.get("message")) if x)
        line = f"[{bar}] {percent:5.1f}% {body.get('status', ''):<9} {text}".rstrip()
        if line == self.last_line:
            return
        self.last_line = line
        self.write("\r\033[K" + line if self.tty else line + "\n")

    def log(self, line: str) -> None:
        if self.quiet:
            return
        text = f"  | {line}\n"
        if self.tty:
            text = "\r\033[K" + text + self.last_line
        self.write(text)

    def done(self, status: str, error: str = "") -> None:
        newline = "\n" if self.tty and not self.quiet else ""
        self.write(f"{newline}{status}{': ' + error if error else ''}\n")


# A stream that lasted this long before its 4401 ended by its access token's expiry (every 30 minutes): the
# refresh makes a new one, and it is no failure. Counted as one, a task waiting hours behind others, with no
# new event, made `watch` give up after 30 expiries (15 h). A 4401 sooner than this still counts, so a server
# that takes the token and closes at once is given up on.
EXPIRY_AFTER_SECONDS = 60.0


async def follow(client: Client, task_id: str, view: ProgressView, *, reconnects: int = 30) -> str:
    """Stream events until the task is final; returns its final status."""
    last_seq = 0  # the first connect replays the task's history too (its log lines, its progress)
    failures = 0
    streamed = False  # got data since the last 4401: an expiry, not a refused login
    while True:
        url = client.ws_url(f"/ws/tasks/{task_id}/") + f"?after_seq={last_seq}"
        try:
            opened = time.monotonic()
            token = await in_daemon_thread(client.fresh_access)
            async with connect(url, open_timeout=10, max_size=2**24) as ws:
                await ws.send(json.dumps({"type": "auth", "token": token}))
                async for raw in ws:
                    streamed = True  # the server took the token
                    body = json.loads(raw)
                    if body.get("event") == "task.snapshot":
                        # The replay that follows redraws the way here; the snapshot only tells
                        # us the error text a final event does not carry.
                        view.error = (body.get("task") or {}).get("error") or ""
                        continue
                    status = _apply(body, view)
                    if body.get("seq") is not None and body.get("event", "").startswith("task."):
                        if body["seq"] > last_seq:
                            failures = 0  # something new was shown: the connection was worth it
                        last_seq = max(last_seq, body["seq"])
                    if status in FINAL:
                        return status
                closed = ws.close_code
        except ConnectionClosed as exc:
            closed = exc.rcvd.code if exc.rcvd else None
            problem: Exception = exc
        except (OSError, InvalidHandshake, InvalidStatus, asyncio.TimeoutError, CLIError) as exc:
            if isinstance(exc, CLIError) and exc.exit_code != SERVER_TROUBLE:
                raise  # refused login, not a network problem
            closed, problem = None, exc
        else:
            problem = ConnectionError("the server closed the connection")
        if closed == 4401:
            if not streamed:
                raise CLIError("the server refused the token: run `conveyor login`", exit_code=5)
            streamed = False  # the access token expired mid-stream: fresh_access() refreshes it
            if time.monotonic() - opened >= EXPIRY_AFTER_SECONDS:
                continue
            failures += 1
            if failures <= reconnects:
                continue
        if closed == 4403:
            raise CLIError(f"task {task_id} not found", exit_code=1)
        if failures == 0:
            try:
                sys.stderr.write(f"connection lost ({problem}); reconnecting\n")
                sys.stderr.flush()
            except (OSError, ValueError) as exc:
                raise OutputClosed(str(exc)) from exc
        failures += 1
        if failures > reconnects:
            raise CLIError(f"gave up on the server after {reconnects} tries: {problem}", exit_code=SERVER_TROUBLE)
        await asyncio.sleep(max(min(5.0, 0.2 * 2 ** min(failures, 5)), _asked_wait(problem)))


async def in_daemon_thread(fn: Callable[[], T]) -> T:
    """``fn()`` in a daemon thread: unlike ``asyncio.to_thread``, Ctrl-C does not wait for a blocking
    REST call to time out (asyncio.run joins its executor's threads, the interpreter joins non-daemon ones)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():  # cancelled meanwhile: nobody waits for it any more
            future.set_result(value) if ok else future.set_exception(value)

    def run() -> None:
        try:
            outcome = (True, fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            outcome = (False, exc)
        with contextlib.suppress(RuntimeError):  # the loop is closed: we were interrupted
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name="conveyor-rest", daemon=True).start()
    return await future


def _asked_wait(problem: Exception) -> float:
    """The server's ``Retry-After`` on a RETRYABLE reply (the REST call or the WebSocket handshake)."""
    if isinstance(problem, ServerBusy):
        return problem.retry_after
    if isinstance(problem, InvalidStatus) and problem.response.status_code in RETRYABLE:
        return retry_after(problem.response.headers)
    return 0.0


def _apply(body: dict[str, Any], view: ProgressView) -> str | None:
    event = body.get("event", "")
    if event == "task.log":
        view.log(str(body.get("data", {}).get("line", "")))
        return None
    if not event.startswith("task."):
        return None  # ping and friends
    view.show(body)
    status = body.get("status")
    if status in FINAL:
        view.done(status, str((body.get("data") or {}).get("error") or view.error))
    return status


def watch(client: Client, task_id: str, *, out: TextIO = sys.stdout, quiet: bool = False) -> int:
    view = ProgressView(out, quiet=quiet)
    try:
        status = asyncio.run(follow(client, task_id, view))
    except KeyboardInterrupt:
        view.interrupted()
        raise
    return EXIT_CODES.get(status, 1)
