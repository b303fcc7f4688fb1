"""The external-process adapter: run a declared program (C, Julia, R, a shell script, a binary…) as
one task.

* ``argv`` is a list; no shell ever parses it, and user input never becomes a command line: params
  reach the program as JSON on stdin and in the file ``$CONVEYOR_PARAMS``; an operator's argv
  template may place single validated param values as whole arguments (``"{seconds}"``).
* The program writes JSON lines on stdout: ``{"progress": 40, "stage": …, "message": …, "metrics": {…}}``,
  ``{"log": "…"}``, ``{"result": …}``. Anything else on stdout or stderr becomes a log line, a message
  with a field of the wrong type (``{"progress": "50%"}``) included. A line is read up to ``LINE_MAX``
  bytes; the rest of a longer one is discarded. The bare ``NaN``, ``Infinity`` and ``-Infinity`` that
  Python's json module writes are read, and kept in metrics and results as the strings ``"NaN"``,
  ``"Infinity"`` and ``"-Infinity"`` (``jobs.jsonsafe``), as for a Python algorithm.
* Files it writes into ``$CONVEYOR_OUTPUT_DIR`` become the task's artifacts; ``{"result_file": "out.bin",
  "content_type": …, "summary": {…}}`` makes one of them the task's result itself (any size, streamed).
* It runs in its own session and process group. On cancel or time limit the whole group and session get
  SIGTERM, then SIGKILL after the grace period; when the program exits, whatever it left behind there is
  terminated the same way, so no orphan outlives its task. If the worker itself is killed outright, the
  next worker to start on the machine kills them (``algorithms.orphans``).
* Its output is read ahead only so far (``QUEUED_MAX``): a program that writes faster than the adapter
  takes its lines waits on its pipe. Once it has exited and its group and session are stopped, the pipes
  are read for what they hold and then closed, even if a daemon of a session of its own keeps them open.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import queue
import re
import select
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from django.conf import settings

from algorithms import artifacts, orphans
from algorithms.context import RunContext

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR")
LINE_MAX = 16 * 1024 * 1024  # bytes of one output line held in memory; room for a {"result": …} line
CUT_KEPT = 64 * 1024  # bytes kept of an over-long line (only its first 10,000 characters are logged)
# Output lines already waiting when the adapter reads are logged together, in one transaction (each
# still its own ``task.log`` event): a chatty program is not held to one commit per line.
LOG_BATCH = 500
# Output lines read and not yet handled are held up to this many bytes (a line counts its length, plus one):
# past that the readers wait, and so does the program, on its pipe. One line of any size gets in alone.
QUEUED_MAX = 1 << 20
READ_CHUNK = 1 << 16
POLL = 0.05  # seconds between looks at the program's processes while they are being stopped
KILL_WAIT_MIN = 0.5  # seconds SIGKILL is given at least, whatever is left of the runner's grace


class ExternalProgramFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class ProgramSpec:
    """One declared external algorithm (see ``algorithms/external.toml``)."""

    name: str
    argv: list[str]
    workdir: str = "scratch"          # "scratch" (a fresh directory per run), "project", or a path
    env: dict[str, str] = field(default_factory=dict)
    inherit_env: bool = False         # pass the worker's whole environment (secrets included!)
    kill_grace_seconds: float = 3.0
    base_dir: Path = Path(".")        # where relative paths of the declaration are resolved


def _argv(spec: ProgramSpec, params: dict[str, Any]) -> list[str]:
    """Each template element becomes exactly one argument. ``{name}`` takes a validated param value,
    ``{here}`` the declaration file's folder, ``{project}`` the project root; one pass, so a value
    that looks like a placeholder stays literal."""
    fixed = {"here": str(spec.base_dir), "project": str(settings.BASE_DIR)}

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key in params:
            value = params[key]
            return value if isinstance(value, str) else json.dumps(value)
        return fixed.get(key, match.group(0))

    out = [_PLACEHOLDER.sub(fill, part) for part in spec.argv]
    if not os.path.isabs(out[0]) and os.sep in out[0]:
        out[0] = str((spec.base_dir / out[0]).resolve())
    return out


def _env(spec: ProgramSpec, ctx: RunContext, params_path: Path, output_dir: Path) -> dict[str, str]:
    base = dict(os.environ) if spec.inherit_env else {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
    base.update(spec.env)
    base.update(CONVEYOR_PARAMS=str(params_path), CONVEYOR_OUTPUT_DIR=str(output_dir),
                CONVEYOR_TASK_ID=ctx.task_id, CONVEYOR_ATTEMPT=str(ctx.attempt), PYTHONUNBUFFERED="1")
    return base


class _Lines(queue.Queue):
    """The output lines read and not yet handled, ``(stream, line)``, held up to ``maxsize`` bytes: each counts
    its length, plus one (an empty line, the ``None`` that ends a stream). The readers wait while it is full."""

    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)
        self.held = 0

    def _qsize(self) -> int:
        return self.held

    def _put(self, item: tuple[str, str | None]) -> None:
        super()._put(item)
        self.held += 1 + len(item[1] or "")

    def _get(self) -> tuple[str, str | None]:
        item = super()._get()
        self.held -= 1 + len(item[1] or "")
        return item


def _pump(stream: IO[bytes], kind: str, out: _Lines, closing: threading.Event, gone: threading.Event) -> None:
    """Pass one output stream of the program on to ``out``, line by line, until its end; once ``closing`` is
    set, only what its pipe holds already (``_chunks``). A line is held up to ``LINE_MAX`` bytes: of a longer
    one the start is kept and the rest skipped as it comes. Waits while ``out`` is full, unless the adapter
    takes no more lines (``gone``)."""
    line, cut = bytearray(), False
    try:
        for chunk in _chunks(stream.fileno(), closing):
            start = 0
            while start < len(chunk):
                end = chunk.find(b"\n", start)
                if not cut:
                    line += chunk[start:len(chunk) if end < 0 else end]
                    if len(line) >= LINE_MAX:  # a line with no end in sight: keep its start, skip the rest
                        cut = True
                        line[CUT_KEPT:] = f" [line cut: longer than {LINE_MAX} bytes]".encode()
                if end < 0:
                    break
                if not _send(out, (kind, line.decode("utf-8", "replace").rstrip("\r\n")), gone):
                    return
                line, cut, start = bytearray(), False, end + 1
        if line:  # the last one, with no newline
            _send(out, (kind, line.decode("utf-8", "replace").rstrip("\r\n")), gone)
    finally:
        _send(out, (kind, None), gone)


def _chunks(fd: int, closing: threading.Event) -> Iterator[bytes]:
    """What the program writes on ``fd``, as it comes, until the pipe's end. Once ``closing`` is set (the
    program has exited and its group and session are stopped) only what the pipe holds already, at most its
    capacity: a daemon of a session of its own may keep it open, and write, for ever."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    late: int | None = None  # bytes still to read once closing
    while late is None or late > 0:
        if late is None and closing.is_set():
            late = _capacity(fd)
        if not poller.poll(0 if late is not None else 100):
            if late is not None:
                return  # nothing more in it
            continue
        chunk = os.read(fd, READ_CHUNK)
        if not chunk:
            return
        if late is not None:
            late -= len(chunk)
        yield chunk


def _capacity(fd: int) -> int:
    try:
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    except OSError:  # not a pipe
        return 1 << 20


def _send(out: _Lines, item: tuple[str, str | None], gone: threading.Event) -> bool:
    """Put ``item`` in ``out``, waiting for room; False (and dropped) once the adapter takes no more lines."""
    while not gone.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _feed(stream: IO[bytes], data: bytes) -> None:
    try:
        stream.write(data)
    except (BrokenPipeError, OSError):
        pass  # a program that does not read its stdin is fine
    finally:
        try:
            stream.close()
        except OSError:
            pass


class _Group:
    """The program's process group and session: one id, its pid. Once the program has been reaped and nothing
    is left in either, nothing can join them again (only a member may), and the kernel may give the id to
    another process (another task's program leads a session too): from then on (``empty``) the id is neither
    signalled nor looked for in /proc (a full scan, tens of ms with thousands of processes)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.id = proc.pid
        self.empty = False

    def members(self) -> list[int]:
        """``orphans.members`` of the id, until it is seen empty after the program was reaped."""
        if self.empty:
            return []
        reaped = self.proc.returncode is not None  # before the scan: what the program forked, it forked before
        pids = orphans.members(self.id)
        self.empty = reaped and not pids
        return pids


def _signal(group: _Group, sig: int) -> bool:
    """Send ``sig`` to what still runs of the program's group and session (zombies are dead already: see
    ``orphans.members``); False when nothing does."""
    pids = group.members()
    if not pids:
        return False
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    # And what its group forked since the scan; only while the program is unreaped: its pid (a zombie at
    # least) holds the id, so the group is still its own. Once reaped, the group may be empty (its members
    # left in the session only) and the id another's: the next look finds what was forked meanwhile.
    if group.proc.returncode is None:
        try:
            os.killpg(group.id, sig)
        except (ProcessLookupError, PermissionError):
            pass
    return True


def _stop_group(group: _Group, grace: float) -> None:
    """SIGTERM to the program's whole group and session, SIGKILL to what is left of them after ``grace``
    (again to what they fork meanwhile); reap the program. The runner kills this whole worker child once its
    own grace has passed, so SIGKILL is waited for only until nine tenths of that (``KILL_WAIT_MIN`` at least):
    it ends a process at once, unless the process is inside the kernel (state D), where it ends it on return."""
    start = time.monotonic()
    if _signal(group, signal.SIGTERM):
        while group.members() and time.monotonic() < start + grace:
            time.sleep(POLL)
    until = max(start + 0.9 * settings.CONVEYOR["CANCEL_GRACE_SECONDS"], time.monotonic() + KILL_WAIT_MIN)
    while _signal(group, signal.SIGKILL) and time.monotonic() < until:
        time.sleep(POLL)
    try:
        group.proc.wait(timeout=max(POLL, until - time.monotonic()))
    except subprocess.TimeoutExpired:  # pragma: no cover - in the kernel (state D): SIGKILL ends it there
        pass


def _stop_reading(proc: subprocess.Popen[bytes], readers: list[threading.Thread], closing: threading.Event,
                  gone: threading.Event) -> None:
    """No more output is taken: the readers end within a moment (they read only what the pipes hold, and
    wait no more for room), and the pipes are closed, even while a daemon of its own session holds them."""
    closing.set()
    gone.set()
    for reader, stream in zip(readers, (proc.stdout, proc.stderr)):
        reader.join(timeout=5)
        if not reader.is_alive() and stream is not None:  # never a descriptor a reader may still use
            stream.close()


def _stop_group_surely(group: _Group, grace: float) -> None:
    """``_stop_group`` even if the runner's watchdog raises its (one) TaskTimeout in the middle."""
    pending: BaseException | None = None
    for _ in range(3):
        try:
            _stop_group(group, grace)
            break
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the group is gone
            pending = exc
    if pending is not None:
        raise pending


def _handle(ctx: RunContext, kind: str, line: str) -> tuple[str | None, dict[str, Any] | None]:
    """Act on one output line. Returns (a log line for the caller to write, in order with the lines
    around it; a ``{"result_file": …}`` message for the caller to keep)."""
    if kind == "stdout" and line.startswith("{"):
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if isinstance(message, dict):
            if "result" in message:
                ctx.save_result(message["result"])
                return None, None
            if isinstance(message.get("result_file"), str):
                return None, message
            if _is_progress(message):
                ctx.progress(message["progress"], stage=message.get("stage"), message=message.get("message"),
                             metrics=message.get("metrics") if isinstance(message.get("metrics"), dict) else None)
                return None, None
            if "log" in message:
                return str(message["log"]), None
    return (line if kind == "stdout" else f"[stderr] {line}"), None


def _next_lines(lines: _Lines) -> list[tuple[str, str | None]]:
    """The next output line (waiting up to 0.1 s), and those already behind it, up to ``LOG_BATCH`` of them
    and ``QUEUED_MAX`` bytes (taken out of the queue, they make room for more)."""
    batch = [lines.get(timeout=0.1)]
    size = len(batch[0][1] or "")
    while len(batch) < LOG_BATCH and size < QUEUED_MAX:
        try:
            batch.append(lines.get_nowait())
        except queue.Empty:
            break
        size += len(batch[-1][1] or "")
    return batch


def _is_progress(message: dict[str, Any]) -> bool:
    """A progress message the adapter can use: a finite number, and a string (or nothing) as stage and message."""
    percent = message.get("progress")
    return (isinstance(percent, (int, float)) and not isinstance(percent, bool) and math.isfinite(percent)
            and all(isinstance(message.get(key), (str, type(None))) for key in ("stage", "message")))


def _store_outputs(ctx: RunContext, output_dir: Path, result_file: dict[str, Any] | None) -> None:
    """Files in the output folder become artifacts; the one named by ``result_file`` the result itself."""
    if ctx.artifacts is None:
        return
    chosen = (output_dir / result_file["result_file"]).resolve() if result_file else None
    if chosen is not None and (output_dir.resolve() not in chosen.parents or not chosen.is_file()):
        raise ExternalProgramFailed(f"result_file {result_file['result_file']!r} is not a file in $CONVEYOR_OUTPUT_DIR")
    taken: set[str] = set()
    for path in sorted(p for p in output_dir.rglob("*") if p.is_file()):
        if chosen is not None and path.resolve() == chosen:
            summary = result_file.get("summary") if isinstance(result_file.get("summary"), dict) else None
            with open(path, "rb") as src, ctx.open_result(
                    content_type=str(result_file.get("content_type") or "application/octet-stream"),
                    summary=summary) as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        else:
            name = _distinct(artifacts.clean_name(path.relative_to(output_dir).as_posix().replace("/", "__")), taken)
            ctx.artifacts.add_file(path, name=name)


def _distinct(name: str, taken: set[str]) -> str:
    """``name``, or ``name-2.ext``, ``name-3.ext``… when another output file got that name already (``a b.txt``
    and ``a_b.txt`` are both stored as ``a_b.txt``; ``x/y.txt`` and ``x__y.txt`` both as ``x__y.txt``)."""
    stem, ext = os.path.splitext(name)
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        tag = f"-{n}{ext}"
        candidate = stem[:artifacts.NAME_MAX - len(tag)] + tag
    taken.add(candidate)
    return candidate


def run_program(spec: ProgramSpec, ctx: RunContext, params: dict[str, Any]) -> Any:
    """Run ``spec`` for one task; returns None (the result comes through ``{"result": …}``)."""
    work = ctx.scratch_dir / "work"
    output_dir = ctx.scratch_dir / "output"
    for path in (work, output_dir):
        path.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(params).encode()
    params_path = ctx.scratch_dir / "params.json"
    params_path.write_bytes(payload)
    cwd = {"scratch": work, "project": settings.BASE_DIR}.get(spec.workdir, spec.base_dir / spec.workdir)
    # Stay well inside the runner's own grace, after which it kills this whole worker child.
    grace = max(0.2, min(spec.kill_grace_seconds, 0.6 * settings.CONVEYOR["CANCEL_GRACE_SECONDS"]))
    argv = _argv(spec, params)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=cwd, env=_env(spec, ctx, params_path, output_dir), start_new_session=True)
    except OSError as exc:
        raise ExternalProgramFailed(f"cannot start {argv[0]}: {exc}") from None
    group = _Group(proc)
    lines = _Lines(QUEUED_MAX)
    closing, gone = threading.Event(), threading.Event()  # see _chunks; _send
    readers = [threading.Thread(target=_pump, args=(stream, kind, lines, closing, gone), daemon=True,
                                name=f"conveyor program {proc.pid} {kind}")
               for stream, kind in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))]
    for thread in [*readers, threading.Thread(target=_feed, args=(proc.stdin, payload), daemon=True)]:
        thread.start()
    open_streams, stopped = 2, False
    result_file: dict[str, Any] | None = None
    try:
        try:  # so that a worker starting after this one's death can stop it; one it cannot know of is stopped
            orphans.record(proc.pid, ctx.task_id)
        except OSError as exc:
            raise ExternalProgramFailed(f"{argv[0]} was stopped: it could not be recorded for the orphan reaper: "
                                        f"{exc}") from None
        while open_streams or proc.poll() is None:
            if ctx.cancelled() and not stopped:
                stopped = True
                ctx.log(f"stopping {argv[0]}: SIGTERM to its process group and session, SIGKILL after {grace:g}s")
                _stop_group(group, grace)
            if proc.poll() is not None and not closing.is_set():
                _stop_group(group, grace)  # what it left running in its group or session
                closing.set()  # then the pipes are read for what they hold: a daemon may keep them open
            try:
                batch = _next_lines(lines)
            except queue.Empty:
                continue
            logs: list[str] = []
            for kind, line in batch:
                if line is None:
                    open_streams -= 1
                    continue
                if stopped:
                    continue
                if kind == "stdout" and line.startswith("{"):
                    ctx.log_lines(logs)  # what came before a message is written before it acts
                    logs = []
                text, message = _handle(ctx, kind, line)
                if text is not None:
                    logs.append(text)
                result_file = message or result_file
            ctx.log_lines(logs)
    finally:
        _stop_group_surely(group, grace)  # leftovers of the group, or the program itself on timeout/error
        _stop_reading(proc, readers, closing, gone)
        orphans.forget(proc.pid)
    if stopped:
        return None
    if proc.returncode != 0:
        raise ExternalProgramFailed(f"{argv[0]} exited with code {proc.returncode}")
    _store_outputs(ctx, output_dir, result_file)
    return None
