"""What an algorithm sees while it runs: ``ctx.progress()``, ``ctx.log()``, ``ctx.cancelled()``,
``ctx.save_result()``, ``ctx.open_artifact()``, ``ctx.open_result()``, ``ctx.attempt`` and a scratch
directory removed afterwards."""
from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable

from jobs.jsonsafe import json_safe

if TYPE_CHECKING:
    from algorithms.artifacts import ArtifactStore

log = logging.getLogger(__name__)


class Scratch:
    """A run's scratch directory, made on first use (most tasks never touch it: a no-op task paid a
    mkdtemp and an rmtree each) and removed after the run.

    Its name ends ``-w<pid>.<start>-<random>``: the process that made it and that process's start time
    (clock ticks since boot, /proc/<pid>/stat), so that a directory a killed process never removed is
    known for whose it was (``reap_scratch``), and a pid since given to another process is not taken for
    its owner."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._path: Path | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        with self._lock:
            if self._path is None:
                from algorithms.orphans import _started

                pid = os.getpid()
                self._path = Path(tempfile.mkdtemp(prefix=f"{self._prefix}w{pid}.{_started(pid) or 0}-"))
            return self._path

    def remove(self) -> None:
        with self._lock:
            if self._path is not None:
                shutil.rmtree(self._path, ignore_errors=True)
                self._path = None


_OWNED_SCRATCH = re.compile(r"conveyor-.*-w(\d+)\.(\d+)-[^-/]*")


def reap_scratch(root: Path | None = None) -> list[Path]:
    """Remove the scratch directories in ``root`` (the temporary directory) whose process is gone: exited,
    a zombie, or its pid now another process's. Run when a worker starts on the machine, and by its
    heartbeat once one of its pool children is gone and every ``SCRATCH_REAP_SECONDS`` (queueing/heartbeat.py):
    what a run killed outright (SIGKILL, the OOM killer, a cancel it ignored) left behind. A directory of a
    live process, and one whose name says no owner (made before names did), is left alone."""
    from algorithms.orphans import _alive

    removed: list[Path] = []
    root = Path(tempfile.gettempdir()) if root is None else root
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        match = _OWNED_SCRATCH.fullmatch(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        pid, started = int(match[1]), int(match[2])
        if _alive(pid, started or None):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(Path(entry.path))
    if removed:
        log.warning("removed %d scratch director(y/ies) of runs whose process had died: %s", len(removed),
                    ", ".join(p.name for p in removed[:10]))
    return removed


WATCHDOG_LOG_LINES = 1_000  # the most lines one heartbeat writes for one run (it beats every task)
# The most lines that may wait in memory (past it they are written at once; they wait longer only while the
# algorithm runs a transaction of its own, or the database is away): then the oldest waiting ones are
# dropped, and a line says how many.
MAX_WAITING_LOG_LINES = 100_000


def _refused(exc: BaseException) -> bool:
    """The database refused the lines themselves (a ``DataError``: a value it cannot store): sending them
    again cannot help. Not an outage, nor a transaction of the algorithm's own gone wrong, nor an
    exception raised in the thread (a time limit)."""
    from django.db import DataError

    return isinstance(exc, DataError)


class RunContext:
    """Progress is coalesced: at most one write per ``min_interval`` seconds, except a stage change
    or 100 %, which always go through; the latest skipped report is flushed before a stage change
    and when the run ends. A percent that is not a finite number (NaN, an infinity) leaves the percent
    as it was; the rest of the report goes through, and the first such one of a run is logged.

    Log lines are written together: a line after ``log_interval`` seconds without a write goes at once,
    the lines that follow it within that time wait for the next write, which takes them all in one
    transaction (the next line after the interval, a progress report, ``flush()``, or the watchdog's
    ``flush_logs(wait=False)`` at every heartbeat). Every line is kept, in order, and written before any
    progress report made after it; only when more than ``MAX_WAITING_LOG_LINES`` wait are the oldest of
    them dropped, and the next write begins with a line saying how many."""

    def __init__(
        self,
        *,
        task_id: str,
        attempt: int,
        scratch: Scratch,
        cancel_event: threading.Event,
        write_progress: Callable[[float, str, str, dict[str, Any]], None],
        write_logs: Callable[[list[str], bool, Callable[[], None]], bool],
        min_interval: float,
        artifacts: ArtifactStore | None = None,
        log_interval: float = 0.0,
    ) -> None:
        self.task_id = task_id
        self.attempt = attempt
        self._scratch = scratch
        self._cancel = cancel_event
        self._write_progress = write_progress
        self._write_logs = write_logs
        self._min_interval = min_interval
        self._last_write = 0.0
        self._last_stage: str | None = None
        self._percent = 0.0
        self._warned_percent = False
        self._pending: tuple[float, str, str, dict[str, Any]] | None = None
        self._result: Any = None
        self._has_result = False
        self.artifacts = artifacts
        self._log_interval = log_interval
        self._logs: list[str] = []
        self._dropped_logs = 0  # waiting lines dropped since the last write (MAX_WAITING_LOG_LINES)
        self._logs_refused = False  # this thread's last write was refused (a transaction of the algorithm's)
        self._log_lock = threading.Lock()  # held while lines are written: one writer at a time, in order
        self._last_log_write = -math.inf

    @property
    def scratch_dir(self) -> Path:
        """A directory of this run's own, removed when it ends."""
        return self._scratch.path

    def progress(self, percent: float, stage: str | None = None, message: str | None = None,
                 metrics: dict[str, Any] | None = None) -> None:
        percent = float(percent)
        if not math.isfinite(percent):  # not 100 % (what min() made of NaN), nor 0 %: unknown, so unchanged
            self._bad_percent(percent)
            percent = self._percent
        percent = self._percent = max(0.0, min(100.0, percent))
        stage = self._last_stage or "" if stage is None else stage
        # NaN, NumPy values: made JSON here, so a value JSON cannot hold fails at this call, named
        report = (percent, stage, message or "", json_safe(dict(metrics or {}), "metrics"))
        now = time.monotonic()
        if stage != self._last_stage or percent >= 100.0 or now - self._last_write >= self._min_interval:
            if stage != self._last_stage:
                self.flush()  # the last report of a stage (its final epoch) is never coalesced away
            else:
                self.flush_logs()  # what was logged before this report comes before it
            self._pending = None
            self._last_write, self._last_stage = now, stage
            self._write_progress(*report)
        else:
            self._pending = report

    def _bad_percent(self, percent: float) -> None:
        if self._warned_percent:
            return
        self._warned_percent = True
        text = (f"progress percent {percent} is not a finite number: the percent is left at {self._percent:g} "
                "(further ones in this run are not logged)")
        log.warning("task %s: %s", self.task_id, text)
        self.log(f"[warning] {text}")

    def log(self, line: str) -> None:
        """One ``task.log`` event (written at once, or with the lines around it: see the class)."""
        self._add_logs([str(line)])

    def log_lines(self, lines: list[str]) -> None:
        """Several lines, each its own ``task.log`` event, written together (one transaction)."""
        if lines:
            self._add_logs([str(line) for line in lines])

    def _add_logs(self, lines: list[str]) -> None:
        with self._log_lock:
            self._logs += lines
            try:
                # Past the cap the lines are written now, within the interval too, unless the last write was
                # refused (inside a transaction of the algorithm's own): only what cannot be written is dropped.
                over = len(self._logs) > MAX_WAITING_LOG_LINES and not self._logs_refused
                if over or time.monotonic() - self._last_log_write >= self._log_interval:
                    self._write_buffered_logs()
            finally:
                if len(self._logs) > MAX_WAITING_LOG_LINES:
                    excess = len(self._logs) - MAX_WAITING_LOG_LINES
                    del self._logs[:excess]
                    self._dropped_logs += excess

    def flush_logs(self, *, wait: bool = True) -> None:
        """Write the lines that wait now. ``wait=False`` (the watchdog's thread, which must never block):
        not if a write is under way, which takes them anyway, nor while another transaction holds the
        task's row (``write_logs`` answers False), and at most ``WATCHDOG_LOG_LINES`` of them: the rest
        wait for the next write."""
        if not self._log_lock.acquire(blocking=wait):
            return
        try:
            self._write_buffered_logs(wait=wait, most=None if wait else WATCHDOG_LOG_LINES)
        finally:
            self._log_lock.release()

    def _write_buffered_logs(self, *, wait: bool = True, most: int | None = None) -> None:
        if not self._logs:
            return
        n = len(self._logs) if most is None else most
        lines, self._logs = self._logs[:n], self._logs[n:]
        dropped = self._dropped_logs
        notice = [f"[warning] {dropped} earlier log lines were dropped: more than {MAX_WAITING_LOG_LINES} "
                  "waited to be written (logged inside a transaction of the algorithm's own, or while the "
                  "database was away)"] if dropped else []
        committed = threading.Event()
        try:
            if self._write_logs(notice + lines, wait, committed.set) is False:
                self._logs[:0] = lines  # not now: the next write takes them, in order
                if wait:  # this thread, inside a transaction of the algorithm's own: again after the interval
                    self._last_log_write = time.monotonic()
                    self._logs_refused = True
                return
        except BaseException as exc:
            self._last_log_write = time.monotonic()  # a database away: tried again after the interval
            # Kept for the next write unless they were stored (a time limit landing after the commit) or
            # could never be (the database refused them: dropped, not sent again with every later line).
            if not committed.is_set() and not _refused(exc):
                self._logs[:0] = lines
            else:
                self._dropped_logs -= dropped
            raise
        self._dropped_logs -= dropped
        self._logs_refused = False
        self._last_log_write = time.monotonic()

    def writing(self) -> bool:
        """Whether lines are being written (or added) now: the watchdog holds a time limit back meanwhile."""
        return self._log_lock.locked()

    def cancelled(self) -> bool:
        """True once the task was cancelled (or hit its time limit): stop soon and return."""
        return self._cancel.is_set()

    def save_result(self, obj: Any) -> None:
        """The task's result (JSON-serialisable); takes precedence over the function's return value."""
        self._result, self._has_result = obj, True

    def open_artifact(self, name: str, mode: str = "wb", *, content_type: str | None = None) -> IO[Any]:
        """A write-only file streamed to storage; listed at ``/tasks/{id}/artifacts/`` once closed.

        ``mode`` is ``"wb"`` (bytes) or ``"w"`` (UTF-8 text); use it as a context manager.
        """
        return self._store().open(name, mode, content_type=content_type)

    def open_result(self, mode: str = "wb", *, content_type: str = "application/octet-stream",
                    summary: dict[str, Any] | None = None) -> IO[Any]:
        """Stream the task's result itself (any size) instead of returning it; ``summary`` is shown
        in the task detail. Takes precedence over ``save_result()`` and the return value."""
        from algorithms.models import Artifact

        return self._store().open("result", mode, content_type=content_type, summary=summary,
                                  kind=Artifact.Kind.RESULT)

    def _store(self) -> ArtifactStore:
        if self.artifacts is None:
            raise RuntimeError("this run context has no artifact storage")
        return self.artifacts

    def flush(self) -> None:
        """Write what waits: the log lines, then the latest coalesced progress report."""
        self.flush_logs()
        if self._pending is not None:
            report, self._pending = self._pending, None
            self._write_progress(*report)

    def result_or(self, returned: Any) -> Any:
        return self._result if self._has_result else returned
