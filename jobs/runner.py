"""Runs one claimed task inside a worker: the algorithm in this thread, a watchdog beside it.

The watchdog beats the heartbeat, turns a cancel request or the time limit into ``ctx.cancelled()``,
and — when the algorithm ignores that for the grace period — records the final state itself and
terminates this pool child (prefork). With ``acks_late`` + ``reject_on_worker_lost`` the message comes
back once, and the guarded claim drops it because the task is already final.
"""
from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import traceback
from pathlib import Path

from django.conf import settings
from django.db import connections

from algorithms import artifacts, registry
from algorithms.context import RunContext
from jobs import services
from jobs.events import publisher
from jobs.models import Status, Task
from jobs.services import Outcome

log = logging.getLogger(__name__)


class TaskTimeout(Exception):
    """Raised inside the algorithm's thread when its time limit passes (the soft limit)."""


def _raise_in(thread: threading.Thread, exc: type[BaseException]) -> None:
    if thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc))


def _in_pool_child() -> bool:
    try:
        from billiard.process import current_process
    except ImportError:  # pragma: no cover
        return False
    return current_process().name.startswith("ForkPoolWorker")


class Watchdog(threading.Thread):
    def __init__(self, task: Task, main: threading.Thread) -> None:
        super().__init__(name=f"watchdog-{task.id}", daemon=True)
        conf = settings.CONVEYOR
        self.task_id = str(task.id)
        self.main = main
        self.interval = conf["HEARTBEAT_SECONDS"]
        self.grace = conf["CANCEL_GRACE_SECONDS"]
        self.deadline = time.monotonic() + task.timeout_seconds
        self.cancel = threading.Event()
        self.timed_out = threading.Event()
        self.lost = threading.Event()  # the row is no longer RUNNING (reaped, or cancelled by the reaper)
        self._halt = threading.Event()
        self._cancel_at: float | None = None

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        try:
            while not self._halt.wait(self.interval):
                self._tick()
        finally:
            connections.close_all()

    def _tick(self) -> None:
        flag = services.heartbeat(task_id=self.task_id)
        now = time.monotonic()
        if flag is None:
            self.lost.set()
            self.cancel.set()
            return
        if flag and not self.cancel.is_set():
            self._cancel_at = now
            self.cancel.set()
        if now >= self.deadline and not self.timed_out.is_set():
            self.timed_out.set()
            self.cancel.set()
            self._cancel_at = now
            _raise_in(self.main, TaskTimeout)
        if self._cancel_at is not None and now - self._cancel_at >= self.grace:
            self._terminate()

    def _terminate(self) -> None:
        status = Status.TIMED_OUT if self.timed_out.is_set() else Status.CANCELLED
        why = "time limit reached" if status == Status.TIMED_OUT else "cancelled"
        services.finish(task_id=self.task_id, outcome=Outcome(
            status=status, error=f"{why}; the algorithm did not stop within {self.grace:g}s and was terminated",
            retryable=False))
        self._halt.set()
        if _in_pool_child():
            log.warning("task %s ignored %s; terminating pool child %s", self.task_id, why, os.getpid())
            publisher.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        else:  # solo/threads pool: cannot kill a thread; the state is final and its later finish is a no-op
            log.warning("task %s ignored %s; left running in a non-prefork pool", self.task_id, why)


def run(task: Task) -> Outcome:
    """Run the algorithm of a claimed (RUNNING) task and say how it ended."""
    try:
        alg = registry.get(task.algorithm)
        params = alg.params_model.model_validate(task.params)
    except Exception as exc:  # not installed on this worker, or params no longer valid
        return Outcome(status=Status.FAILED, error=f"cannot start: {exc}", retryable=False)

    watchdog = Watchdog(task, threading.current_thread())
    scratch = Path(tempfile.mkdtemp(prefix=f"conveyor-{task.id}-"))
    conf = settings.CONVEYOR
    store = artifacts.ArtifactStore(task_id=str(task.id), attempt=task.attempts, scratch_dir=scratch)
    if task.attempts > 1:
        artifacts.discard_earlier_attempts(task_id=str(task.id), attempt=task.attempts)
    ctx = RunContext(
        task_id=str(task.id), attempt=task.attempts, scratch_dir=scratch, cancel_event=watchdog.cancel,
        write_progress=lambda p, s, m, x: services.report_progress(task_id=task.id, percent=p, stage=s, message=m, metrics=x),
        write_logs=lambda lines: services.append_log(task_id=task.id, lines=lines),
        min_interval=conf["PROGRESS_MIN_INTERVAL"], artifacts=store,
    )
    watchdog.start()
    try:
        try:
            returned = alg.fn(ctx, params)
            ctx.flush()
            store.close_open()
            # Large results are encoded into storage here, while the scratch directory still exists.
            result = artifacts.finalize_result(store, ctx.result_or(returned))
        finally:
            watchdog.stop()
            watchdog.join()
    except TaskTimeout:
        return Outcome(status=Status.TIMED_OUT, error=f"time limit of {task.timeout_seconds}s reached", retryable=False)
    except Exception as exc:
        if watchdog.timed_out.is_set():
            return Outcome(status=Status.TIMED_OUT, error=f"time limit of {task.timeout_seconds}s reached", retryable=False)
        tb = traceback.format_exc(limit=20)
        services.append_log(task_id=task.id, lines=[tb])
        return Outcome(status=Status.FAILED, error=f"{type(exc).__name__}: {exc}", retryable=True)
    finally:
        store.abort_open()
        shutil.rmtree(scratch, ignore_errors=True)
    if watchdog.timed_out.is_set():
        return Outcome(status=Status.TIMED_OUT, error=f"time limit of {task.timeout_seconds}s reached", retryable=False)
    if watchdog.cancel.is_set():
        return Outcome(status=Status.CANCELLED, error="cancelled", retryable=False)
    return Outcome(status=Status.SUCCEEDED, result=result)
