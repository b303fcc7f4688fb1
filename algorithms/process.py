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
* It runs in its own process group. On cancel or time limit the whole group gets SIGTERM, then
  SIGKILL after the grace period; when the program exits, whatever it left behind in its group is
  terminated the same way, so no orphan outlives its task. If the worker itself is killed outright,
  the next worker to start on the machine kills the group (``algorithms.orphans``).
"""
from __future__ import annotations

import json
import math
import os
import queue
import re
import signal
import subprocess
import threading
import time
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


def _pump(stream: IO[bytes], kind: str, out: queue.Queue[tuple[str, str | None]]) -> None:
    try:
        for raw in iter(lambda: stream.readline(LINE_MAX), b""):
            cut = not raw.endswith(b"\n") and len(raw) == LINE_MAX
            if cut:  # a line with no end in sight: keep its start, skip to its end without holding it
                raw = raw[:CUT_KEPT] + f" [line cut: longer than {LINE_MAX} bytes]".encode()
                while (rest := stream.readline(LINE_MAX)) and not rest.endswith(b"\n"):
                    pass
            out.put((kind, raw.decode("utf-8", "replace").rstrip("\r\n")))
    finally:
        out.put((kind, None))


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


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True
    return True


def _stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM to the whole group, SIGKILL after ``grace``; reap the program."""
    pgid = proc.pid
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not _group_alive(pgid):
            break
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(pgid):
                break
            time.sleep(0.02)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        pass


def _stop_group_surely(proc: subprocess.Popen[bytes], grace: float) -> None:
    """``_stop_group`` even if the runner's watchdog raises its (one) TaskTimeout in the middle."""
    pending: BaseException | None = None
    for _ in range(3):
        try:
            _stop_group(proc, grace)
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


def _next_lines(lines: queue.Queue[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """The next output line (waiting up to 0.1 s), and those already behind it, up to ``LOG_BATCH``."""
    batch = [lines.get(timeout=0.1)]
    while len(batch) < LOG_BATCH:
        try:
            batch.append(lines.get_nowait())
        except queue.Empty:
            break
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
    orphans.record(proc.pid, ctx.task_id)  # so a worker starting after this one's death can stop it
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    threads = [threading.Thread(target=_pump, args=(proc.stdout, "stdout", lines), daemon=True),
               threading.Thread(target=_pump, args=(proc.stderr, "stderr", lines), daemon=True),
               threading.Thread(target=_feed, args=(proc.stdin, payload), daemon=True)]
    for thread in threads:
        thread.start()
    open_streams, stopped = 2, False
    result_file: dict[str, Any] | None = None
    try:
        while open_streams or proc.poll() is None:
            if ctx.cancelled() and not stopped:
                stopped = True
                ctx.log(f"stopping {argv[0]}: SIGTERM to its process group, SIGKILL after {grace:g}s")
                _stop_group(proc, grace)
            try:
                batch = _next_lines(lines)
            except queue.Empty:
                if proc.poll() is not None and not stopped:
                    _stop_group(proc, grace)  # exited, but something in its group holds the pipes
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
        _stop_group_surely(proc, grace)  # leftovers of the group, or the program itself on timeout/error
        orphans.forget(proc.pid)
    if stopped:
        return None
    if proc.returncode != 0:
        raise ExternalProgramFailed(f"{argv[0]} exited with code {proc.returncode}")
    _store_outputs(ctx, output_dir, result_file)
    return None
