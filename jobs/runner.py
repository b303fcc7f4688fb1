"""Runs claimed tasks inside a worker: the algorithm in the calling thread, watched by one watchdog
thread per process.

The watchdog beats the heartbeat of every task running in this process (and of the claimed rest of a
batch), turns a cancel request or the time limit into ``ctx.cancelled()``, and — when the algorithm
ignores that for the grace period — records the final state itself and terminates this pool child
(prefork). With ``acks_late`` + ``reject_on_worker_lost`` the message comes back once, and the guarded
claim drops it because the task is already final. One thread for the life of the process, not one
per task: starting a thread cost more than a short task itself.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time
import traceback
from typing import Any

from django.conf import settings
from django.db import connections

from algorithms import artifacts, registry
from algorithms.context import RunContext, Scratch
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


class Watch:
    """The watchdog's view of one running task: its cancel flag, time limit and grace period."""

    def __init__(self, task: Task, main: threading.Thread) -> None:
        self.task_id = str(task.id)
        self.claimed_at = task.started_at  # its claim: the heartbeat and the writes are this claim's
        self.main = main
        self.grace = settings.CONVEYOR["CANCEL_GRACE_SECONDS"]
        self.deadline = time.monotonic() + task.timeout_seconds
        self.cancel = threading.Event()
        self.timed_out = threading.Event()
        self._cancel_at: float | None = None
        self.stopped = False  # set under ``lock``: after that the watchdog never touches the task again
        self.terminating = False  # under ``lock``: the watchdog is recording and terminating it
        self.lock = threading.Lock()

    def tick(self, flag: bool | None, now: float) -> bool:
        """One heartbeat's answer (``flag``: cancel requested; None: no longer ours). True when the
        algorithm ignored cancel, its time limit or the loss of its task for the grace period and must be
        terminated."""
        if flag is None:  # no longer RUNNING under this claim (reaped, maybe started again elsewhere): stop
            flag = True
        if flag and not self.cancel.is_set():
            self._cancel_at = now
            self.cancel.set()
        if now >= self.deadline and not self.timed_out.is_set():
            self.timed_out.set()
            self.cancel.set()
            self._cancel_at = now
            _raise_in(self.main, TaskTimeout)
        return self._cancel_at is not None and now - self._cancel_at >= self.grace


class Watchdog(threading.Thread):
    """The process's one watchdog thread (created on first use, again after a fork)."""

    _instance: Watchdog | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        super().__init__(name="conveyor-watchdog", daemon=True)
        self.pid = os.getpid()
        self.interval = settings.CONVEYOR["HEARTBEAT_SECONDS"]
        self.watches: set[Watch] = set()
        self.batches: set[Batch] = set()
        self.guard = threading.Lock()

    @classmethod
    def get(cls) -> Watchdog:
        with cls._lock:
            if cls._instance is None or cls._instance.pid != os.getpid():
                cls._instance = cls()
                cls._instance.start()
            return cls._instance

    def run(self) -> None:
        while True:
            time.sleep(self.interval)
            with self.guard:
                watches, batches = list(self.watches), list(self.batches)
            if not watches and not batches:
                continue
            try:
                self._tick(watches, batches)
            except Exception:  # the database may be away for a moment: beat again next time
                log.exception("task heartbeat failed")
                connections.close_all()

    def _tick(self, watches: list[Watch], batches: list[Batch]) -> None:
        claims = {w.task_id: w.claimed_at for w in watches}
        for batch in batches:
            claims.update(dict.fromkeys(batch.waiting_ids(), batch.claimed_at))
        flags = services.heartbeat(claims=claims)
        now = time.monotonic()
        for batch in batches:
            batch.beaten(flags)
            batch.flush(older_than=batch.flush_every)  # finished tasks behind a long one: record them now
        for watch in watches:
            with watch.lock:
                if watch.stopped or watch.terminating or not watch.tick(flags.get(watch.task_id), now):
                    continue
                watch.terminating = True
            try:
                self._terminate(watch, batches)
            except Exception:  # its final state not recorded (the database away): again at the next beat
                log.exception("could not terminate task %s; trying again", watch.task_id)
                connections.close_all()
                with watch.lock:
                    watch.terminating = False

    def _terminate(self, watch: Watch, batches: list[Batch]) -> None:
        status = Status.TIMED_OUT if watch.timed_out.is_set() else Status.CANCELLED
        why = "time limit reached" if status == Status.TIMED_OUT else "cancelled"
        services.finish(task_id=watch.task_id, claimed_at=watch.claimed_at, outcome=Outcome(
            status=status, error=f"{why}; the algorithm did not stop within {watch.grace:g}s and was terminated",
            retryable=False))
        if _in_pool_child():
            for batch in batches:  # its finished tasks recorded, its unstarted ones handed back
                batch.settle()
            log.warning("task %s ignored %s; terminating pool child %s", watch.task_id, why, os.getpid())
            publisher.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        else:  # solo/threads pool: cannot kill a thread; the state is final and its later finish is a no-op
            log.warning("task %s ignored %s; left running in a non-prefork pool", watch.task_id, why)

    def add(self, item: Watch | Batch) -> None:
        with self.guard:
            (self.watches if isinstance(item, Watch) else self.batches).add(item)  # type: ignore[arg-type]

    def remove(self, item: Watch | Batch) -> None:
        with self.guard:
            (self.watches if isinstance(item, Watch) else self.batches).discard(item)  # type: ignore[arg-type]


class Batch:
    """The tasks of one multi-id message (``DISPATCH_BATCH``), claimed together and run one after another.

    While they wait their turn (and once run, until their outcome is recorded) the watchdog beats their
    heartbeats too, so the reaper leaves them alone, and notes a cancel (→ CANCELLED without running) or
    a task taken away (→ skipped). Outcomes are recorded together (``services.finish_many``) at the end,
    or once ``FINISH_FLUSH_SECONDS`` have passed since the last record — by the watchdog too, so a long
    task in a batch does not hide its batch-mates' results.
    """

    def __init__(self, tasks: list[Task], worker: str) -> None:
        self.worker = worker
        self.claimed_at = tasks[0].started_at if tasks else None  # one claim for the message's tasks
        self.waiting = {str(t.id): t for t in tasks}
        self.cancelled: set[str] = set()
        self.lost: set[str] = set()
        self.outcomes: list[tuple[str, Outcome]] = []
        self.lock = threading.Lock()
        self.flush_every = settings.CONVEYOR["FINISH_FLUSH_SECONDS"]
        self.flushed_at = time.monotonic()

    def __enter__(self) -> Batch:
        Watchdog.get().add(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        # Recorded before the watchdog lets go of them: until then their heartbeats go on, so a database
        # blip here is waited out instead of leaving them to the reaper, which would run them again.
        try:
            for pause in (0.5, 1.0, 2.0):
                try:
                    self.flush()
                    return
                except Exception:
                    log.exception("could not record a batch's finished tasks; trying again")
                    connections.close_all()
                    time.sleep(pause)
            self.flush()
        finally:
            Watchdog.get().remove(self)

    def waiting_ids(self) -> list[str]:
        """Claimed and not yet recorded as finished: still RUNNING, so their heartbeats are ours to beat."""
        with self.lock:
            return [*self.waiting, *(task_id for task_id, _ in self.outcomes)]

    def beaten(self, flags: dict[str, bool]) -> None:
        with self.lock:
            for task_id in list(self.waiting):
                if task_id not in flags:
                    self.lost.add(task_id)
                elif flags[task_id]:
                    self.cancelled.add(task_id)

    def run(self, task: Task) -> None:
        task_id = str(task.id)
        with self.lock:
            self.waiting.pop(task_id, None)
            lost, cancelled = task_id in self.lost, task_id in self.cancelled
        if lost:  # reaped or cancelled while waiting: no longer ours
            return
        outcome = Outcome(status=Status.CANCELLED, error="cancelled", retryable=False) if cancelled else run(task)
        with self.lock:
            self.outcomes.append((task_id, outcome))
        self.flush(older_than=self.flush_every)

    def flush(self, older_than: float = 0.0) -> None:
        """Record the finished tasks (when the last record is at least ``older_than`` seconds old)."""
        with self.lock:
            if time.monotonic() - self.flushed_at < older_than:
                return
            outcomes, self.outcomes = self.outcomes, []
            if outcomes:
                try:
                    services.finish_many(outcomes=outcomes, dispatch_next=False, claimed_at=self.claimed_at)
                except Exception:  # kept (and their heartbeats beaten) for the next record
                    self.outcomes = outcomes + self.outcomes
                    raise
            self.flushed_at = time.monotonic()

    def settle(self) -> None:
        """Before this process is killed: record what finished, hand back what never started."""
        self.flush()
        with self.lock:
            waiting, self.waiting = list(self.waiting), {}
        if waiting:
            services.release(task_ids=waiting, worker=self.worker, claimed_at=self.claimed_at,
                             reason="its batch's worker process was terminated")


def run(task: Task) -> Outcome:
    """Run the algorithm of a claimed (RUNNING) task and say how it ended."""
    try:
        alg = registry.get(task.algorithm)
        params = alg.params_model.model_validate(task.params)
    except Exception as exc:  # not installed on this worker, or params no longer valid
        return Outcome(status=Status.FAILED, error=f"cannot start: {exc}", retryable=False)

    watch = Watch(task, threading.current_thread())
    scratch = Scratch(prefix=f"conveyor-{task.id}-")
    conf = settings.CONVEYOR
    store = artifacts.ArtifactStore(task_id=str(task.id), attempt=task.attempts, claimed_at=task.started_at,
                                    scratch=scratch)
    ctx = RunContext(
        task_id=str(task.id), attempt=task.attempts, scratch=scratch, cancel_event=watch.cancel,
        write_progress=lambda p, s, m, x: services.report_progress(task_id=task.id, percent=p, stage=s, message=m,
                                                                   metrics=x, claimed_at=task.started_at),
        write_logs=lambda lines: services.append_log(task_id=task.id, lines=lines, claimed_at=task.started_at),
        min_interval=conf["PROGRESS_MIN_INTERVAL"], artifacts=store,
    )
    watchdog = Watchdog.get()
    watchdog.add(watch)
    try:
        try:
            returned = alg.fn(ctx, params)
            ctx.flush()
            result = None
            if not watch.cancel.is_set():  # cancelled, timed out or no longer ours: open files are dropped
                store.close_open()
                # Large results are encoded into storage here, while the scratch directory still exists.
                result = artifacts.finalize_result(store, ctx.result_or(returned))
        finally:
            with watch.lock:
                watch.stopped = True
            watchdog.remove(watch)
    except TaskTimeout:
        return Outcome(status=Status.TIMED_OUT, error=f"time limit of {task.timeout_seconds}s reached", retryable=False)
    except Exception as exc:
        if watch.timed_out.is_set():
            return Outcome(status=Status.TIMED_OUT, error=f"time limit of {task.timeout_seconds}s reached", retryable=False)
        try:  # best effort: the outcome below is what must be recorded
            services.append_log(task_id=task.id, lines=[traceback.format_exc(limit=20)], claimed_at=task.started_at)
        except Exception:
            log.exception("could not record the traceback of task %s", task.id)
        if watch.cancel.is_set():  # it was cancelled and failed on the way out: cancelled, never retried
            return Outcome(status=Status.CANCELLED, error="cancelled", retryable=False)
        # An exception may say that running again cannot help (``retryable = False``: a remote service's
        # answer out of protocol); any other failure is retried while attempts remain.
        return Outcome(status=Status.FAILED, error=f"{type(exc).__name__}: {exc}",
                       retryable=getattr(exc, "retryable", True) is not False)
    finally:
        store.abort_open()
        scratch.remove()
    if watch.timed_out.is_set():
        return Outcome(status=Status.TIMED_OUT, error=f"time limit of {task.timeout_seconds}s reached", retryable=False)
    if watch.cancel.is_set():
        return Outcome(status=Status.CANCELLED, error="cancelled", retryable=False)
    return Outcome(status=Status.SUCCEEDED, result=result)
