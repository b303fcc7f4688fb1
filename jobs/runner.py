"""Runs claimed tasks inside a worker: the algorithm in the calling thread, watched by one watchdog
thread per process.

The watchdog beats the heartbeat of every task running in this process (and of the claimed rest of a
batch, and of finished tasks until their outcome is recorded), turns a cancel request or the time limit
into ``ctx.cancelled()``, and — when the algorithm ignores that for the grace period — records the final
state itself and terminates this pool child (prefork), with the processes its run started. With
``acks_late`` + ``reject_on_worker_lost`` the message comes back once, and the guarded claim drops it
because the task is already final. One thread for the life of the process, not one per task: starting a
thread cost more than a short task itself.

Fencing: when no heartbeat has reached the database for half of ``HEARTBEAT_STALE_SECONDS`` (the worker
cut off from it), every run here is stopped as lost, and its pool child killed if the algorithm ignores
that for the cancel grace or by three quarters of it, so that it no longer runs when the reaper, at the
full ``HEARTBEAT_STALE_SECONDS``, may start the task on another worker.
"""
from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import traceback
from typing import Any, Callable

from django.conf import settings
from django.db import OperationalError, connection, connections

from algorithms import artifacts, orphans, registry
from algorithms.context import RunContext, Scratch
from jobs import execution
from jobs.events import publisher
from jobs.execution import Outcome
from jobs.models import Status, Task
from observability.logs import about_task

log = logging.getLogger(__name__)

# The watchdog's record of a run it stops waits no longer for a lock (``Watchdog._terminate``): it beats
# every task of the process.
TERMINATE_LOCK_TIMEOUT = "1s"

# Set by the worker's main process when its warm shutdown begins (``queueing.heartbeat``). Shared memory
# made when this module is imported, in the main process before the pool forks its children, so every
# child sees it: a batch then starts none of its tasks still waiting their turn and hands them back at
# once, instead of starting them only to have them killed at the end of the shutdown grace and run again.
_SHUTTING_DOWN = multiprocessing.RawValue(ctypes.c_bool, False)


def worker_shutting_down() -> None:
    _SHUTTING_DOWN.value = True


class TaskTimeout(Exception):
    """Raised inside the algorithm's thread when its time limit passes (the soft limit)."""


class TaskStopped(BaseException):
    """Raised inside the algorithm's thread of a solo or threads pool, which cannot kill it, when it
    ignored a cancel (or the loss of its task) for the grace period: its state is recorded already. A
    ``BaseException``, so that an algorithm's ``except Exception`` (or a robust on-commit hook it happens
    to land in) does not swallow it."""


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

    def __init__(self, task: Task, main: threading.Thread, since: float | None = None) -> None:
        self.task_id = str(task.id)
        self.claimed_at = task.started_at  # its claim: the heartbeat and the writes are this claim's
        self.main = main
        self.grace = settings.CONVEYOR["CANCEL_GRACE_SECONDS"]
        self.limit = task.timeout_seconds
        self.deadline = time.monotonic() + task.timeout_seconds
        # When it was last known beaten (its claim, at the latest; ``monotonic``): the fence counts from here.
        self.since = time.monotonic() if since is None else since
        self.began = time.monotonic()  # the processes started since then are the run's (``kill_descendants``)
        self.cancel = threading.Event()
        self.timed_out = threading.Event()
        self.lost = ""  # why it is no longer this worker's to run, once it is not (the heartbeat's answer, the fence)
        self._cancel_at: float | None = None
        self.flush_logs: Callable[[], None] | None = None  # the run's waiting log lines, written (never blocks)
        self.writing: Callable[[], bool] = lambda: False  # its log lines being written now (``RunContext``)
        self.unrecorded_since: float | None = None  # when the watchdog first failed to record its end
        self.interrupt_sent = False  # a solo/threads pool's run interrupted (``TaskStopped``) before its end was recorded
        self.stopped = False  # set under ``lock``: after that the watchdog never touches the task again
        self.terminating = False  # under ``lock``: the watchdog is recording and terminating it
        self.lock = threading.Lock()

    def tick(self, flag: bool | None, now: float, lost: str = "") -> bool:
        """One heartbeat's answer (``flag``: cancel requested; None: no longer ours, ``lost`` says why).
        True when the algorithm ignored cancel, its time limit or the loss of its task for the grace period
        and must be terminated."""
        if flag is None:  # no longer RUNNING under this claim (reaped, maybe started again elsewhere): stop
            self.lost = self.lost or lost or "worker lost (heartbeat stale): the task was taken from it"
            flag = True
        if flag and not self.cancel.is_set():
            self._cancel_at = now
            self.cancel.set()
        # Not while the run writes its log lines (the next beat: at most a grace period later), so that a
        # commit it interrupts never leaves them stored and waiting to be written again.
        if now >= self.deadline and not self.timed_out.is_set() and (
                not self.writing() or now >= self.deadline + self.grace):
            self.timed_out.set()
            self.cancel.set()
            self._cancel_at = now
            _raise_in(self.main, TaskTimeout)
        return self._cancel_at is not None and now - self._cancel_at >= self.grace

    def interrupted(self) -> Outcome | None:
        """How the run ended if the watchdog stopped it (its time limit, its loss, a cancel); else None.
        A lost task is a retryable failure, as the reaper would record it: whoever still holds its claim
        (nobody, when it was reaped) runs it again while attempts remain."""
        if self.timed_out.is_set():
            return Outcome(status=Status.TIMED_OUT, error=f"time limit of {self.limit}s reached", retryable=False)
        if self.lost:
            return Outcome(status=Status.FAILED, error=self.lost, retryable=True)
        if self.cancel.is_set():
            return Outcome(status=Status.CANCELLED, error="cancelled", retryable=False)
        return None


class Watchdog(threading.Thread):
    """The process's one watchdog thread (created on first use, again after a fork)."""

    _instance: Watchdog | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        super().__init__(name="conveyor-watchdog", daemon=True)
        self.pid = os.getpid()
        conf = settings.CONVEYOR
        self.interval = conf["HEARTBEAT_SECONDS"]
        # Fencing (``_fence``): no heartbeat through for this long, its runs are stopped as lost; by
        # ``fence_kill`` at the latest their pool child is killed, a quarter of the stale period before the
        # reaper may start them on another worker.
        self.fence = conf["HEARTBEAT_STALE_SECONDS"] / 2
        self.fence_kill = conf["HEARTBEAT_STALE_SECONDS"] * 3 / 4
        self.beaten_at = time.monotonic()  # when the last heartbeat that went through was sent
        self._bounded: Any = None  # the database connection ``_bound_network_waits`` last set up
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
                # A watch stopped and never removed (its TaskTimeout landed in the middle of run()'s finally)
                # is dropped here: its task is no longer this watchdog's to beat.
                self.watches.difference_update([w for w in self.watches if w.stopped])
                watches, batches = list(self.watches), list(self.batches)
            if not watches and not batches:
                continue
            try:
                self._tick(watches, batches)
            except Exception:  # the database may be away for a moment: beat again next time
                log.exception("task watchdog failed")
                connections.close_all()

    def _tick(self, watches: list[Watch], batches: list[Batch]) -> None:
        claims = {w.task_id: w.claimed_at for w in watches}
        for batch in batches:
            claims.update(dict.fromkeys(batch.waiting_ids(), batch.claimed_at))
        sent = time.monotonic()
        try:
            self._bound_network_waits()
            flags = execution.heartbeat(claims=claims)
        except Exception:  # the database away, for a moment or from this worker only: fenced if it lasts
            log.exception("task heartbeat failed")
            connections.close_all()
            self._fence(watches, batches, time.monotonic())
            return
        self.beaten_at = sent
        now = time.monotonic()
        for batch in batches:
            batch.beaten(flags)
            batch.flush(older_than=batch.flush_every)  # finished tasks behind a long one: record them now
            if _SHUTTING_DOWN.value:  # the worker is stopping: what waits behind the running task goes back
                batch.stop_waiting()
        for watch in watches:  # log lines that waited since the last write (``RunContext``)
            if watch.flush_logs is not None and not watch.stopped:
                try:
                    watch.flush_logs()
                except Exception:  # kept for the run's next write
                    with about_task(watch.task_id):
                        log.exception("could not write the log lines of task %s", watch.task_id)
                    connections.close_all()
        for watch in watches:
            with watch.lock:
                if watch.stopped or watch.terminating or not watch.tick(flags.get(watch.task_id), now):
                    continue
                watch.terminating = True
            try:
                with about_task(watch.task_id):
                    done = self._terminate(watch, batches)
            except Exception:  # its final state not recorded (the database away): again at the next beat
                with about_task(watch.task_id):
                    log.exception("could not terminate task %s; trying again", watch.task_id)
                connections.close_all()
                done = False
            if not done:
                with watch.lock:
                    watch.terminating = False

    def _fence(self, watches: list[Watch], batches: list[Batch], now: float) -> None:
        """After a failed heartbeat. Once none has gone through for ``fence`` seconds, this worker may be
        cut off from the database while the reaper, at ``HEARTBEAT_STALE_SECONDS``, gives its tasks to
        another: every run here is stopped as lost (``ctx.cancelled()``; a batch's tasks waiting their
        turn are skipped), and one that ignores it for the cancel grace, or is still running at
        ``fence_kill``, has its pool child killed, with nothing recorded (the database is out of reach;
        the reaper runs the task again). The time counts from the last heartbeat sent that went through,
        or the task's claim if later.

        Only in a prefork pool child: a solo or threads pool cannot kill its run, so stopping it as lost
        would only throw away a result it may still record once the database answers (and leave its time
        limit unenforced); there a cut-off worker's run goes on, as before fencing existed. A batch's
        waiting tasks are held back in every pool, and run after all if the database answers again with
        them still this worker's (``Batch.beaten``), else handed back (``Batch.__exit__``)."""
        for batch in batches:
            if now - max(self.beaten_at, batch.since) >= self.fence:
                batch.lose_waiting()
        if not _in_pool_child():
            return
        for watch in watches:
            silent = now - max(self.beaten_at, watch.since)
            if silent < self.fence:
                continue
            with watch.lock:
                if watch.stopped or watch.terminating:
                    continue
                lost = f"worker lost (cut off from the database: no heartbeat through for {silent:.1f}s)"
                if not watch.tick(None, now, lost=lost) and silent < self.fence_kill:
                    continue
                watch.terminating = True
            self._kill(watch, "lost contact with the database", batches=None)

    def _bound_network_waits(self) -> None:
        """This thread's database connection gives up within seconds, not TCP's ~15 minutes, when the
        network drops its packets: a heartbeat to a database out of reach fails (and ``_fence`` runs)
        instead of hanging the watchdog. Data left unacknowledged times out (``TCP_USER_TIMEOUT``), and an
        answer that never comes is found out by keepalive probes. Once per connection."""
        connection.ensure_connection()
        raw = connection.connection
        if raw is self._bounded:
            return
        self._bounded = raw
        seconds = max(1, int(settings.CONVEYOR["HEARTBEAT_STALE_SECONDS"] / 16))
        try:  # on a duplicate of its socket: closing that leaves the connection open
            with socket.fromfd(raw.fileno(), socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, seconds)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, seconds)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, seconds * 1000)
        except (OSError, AttributeError):  # a Unix socket (no network to lose there), or not Linux
            pass

    def _terminate(self, watch: Watch, batches: list[Batch]) -> bool:
        """Record the end of a run that ignored its stop for the grace period, then stop it. False: not
        recorded this time (its row held, the database away): again at the next beat."""
        if watch.timed_out.is_set():
            status, why = Status.TIMED_OUT, "time limit reached"
        elif watch.lost:
            status, why = Status.FAILED, watch.lost
        else:
            status, why = Status.CANCELLED, "cancelled"
        if _in_pool_child():
            how = "was terminated"
        else:
            how = ("was interrupted: it stops at its next Python instruction (a solo or threads pool cannot kill "
                   "it, so code outside Python, a sleep or a GPU kernel, runs on until it returns)")
        try:
            execution.finish(task_id=watch.task_id, claimed_at=watch.claimed_at, lock_timeout=TERMINATE_LOCK_TIMEOUT,
                             outcome=Outcome(status=status, retryable=status == Status.FAILED,
                                             error=f"{why}; the algorithm did not stop within {watch.grace:g}s and {how}"))
        except OperationalError:
            # Its row held (a transaction of the algorithm's own, most likely) or the database away: tried
            # again at the next beat. Once that has lasted a grace period, a pool child is killed anyway,
            # with nothing recorded (the reaper, or the claim's next owner, settles the task), and a solo or
            # threads pool's run is interrupted once (which ends a transaction of its own, so that the next
            # beat records the state).
            if watch.unrecorded_since is None:
                watch.unrecorded_since = time.monotonic()
                log.warning("task %s: could not record its end (its row is held, or the database away); "
                            "trying again at every beat", watch.task_id)
            if time.monotonic() - watch.unrecorded_since < watch.grace:
                return False
            if not _in_pool_child():
                if not watch.interrupt_sent:
                    watch.interrupt_sent = True
                    self._kill(watch, f"ignored: {why}", batches=batches)
                return False
            log.warning("task %s: its end could not be recorded for %gs; stopping it anyway", watch.task_id, watch.grace)
        self._kill(watch, f"ignored: {why}", batches=batches)
        return True

    def _kill(self, watch: Watch, why: str, *, batches: list[Batch] | None) -> None:
        """Terminate this pool child, unless its run has stopped meanwhile (``watch.stopped``): watch.lock is
        held up to the kill, so its thread can neither finish that run nor take its next message first.
        ``batches`` are settled first, and the live events sent; None: cut off, nothing but the kill. The
        processes the run started go first (``kill_descendants``, since the run began: a process the child
        had before is not this run's)."""
        # solo/threads pool: cannot kill a thread, only raise in it (``TaskStopped``, when it next runs Python
        # code, as a time limit's ``TaskTimeout``). A recorded state is final (its later finish is a no-op); a
        # run cut off from the database (``batches`` None) goes on until it looks at ctx.cancelled().
        if not _in_pool_child():
            with watch.lock:  # never into the thread's next run: ``stopped`` is set under this lock
                if batches is not None and not watch.stopped and watch.main is not threading.current_thread():
                    log.warning("task %s %s; interrupting its thread (a non-prefork pool)", watch.task_id, why)
                    _raise_in(watch.main, TaskStopped)
                    return
            log.warning("task %s %s; left running in a non-prefork pool", watch.task_id, why)
            return
        with watch.lock:
            if watch.stopped:  # its algorithm returned after all: nothing left to stop, the next message is safe
                log.warning("task %s %s, then stopped by itself; pool child %s goes on", watch.task_id, why,
                            os.getpid())
                return
            log.warning("task %s %s; terminating pool child %s", watch.task_id, why, os.getpid())
            if batches is not None:
                for batch in batches:  # its finished tasks recorded, its unstarted ones handed back
                    batch.settle()
                publisher.flush()
            try:  # what the run started (subprocesses, an external program) dies with it, not reparented to init
                kill_descendants(os.getpid(), since=_clock_ticks_at(watch.began))
            finally:
                os.kill(os.getpid(), signal.SIGKILL)

    def add(self, item: Watch | Batch) -> None:
        with self.guard:
            (self.watches if isinstance(item, Watch) else self.batches).add(item)  # type: ignore[arg-type]

    def remove(self, item: Watch | Batch) -> None:
        with self.guard:
            (self.watches if isinstance(item, Watch) else self.batches).discard(item)  # type: ignore[arg-type]


def _clock_ticks_at(moment: float) -> int | None:
    """A ``time.monotonic()`` moment in the unit of a process's start time in /proc/<pid>/stat (clock ticks
    since boot), a tick early; None without /proc (not Linux)."""
    try:
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0]) - (time.monotonic() - moment)
    except (OSError, ValueError):
        return None
    return int(uptime * os.sysconf("SC_CLK_TCK")) - 1


def _children() -> dict[int, list[tuple[int, int]]]:
    """Parent pid → (pid, start time) of each of its children, from /proc (zombies left out: they run
    nothing); empty without /proc (not Linux)."""
    children: dict[int, list[tuple[int, int]]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return children
    for name in names:
        fields = orphans.proc_stat(int(name)) if name.isdigit() else None  # None: gone meanwhile
        try:
            if fields and fields[0] not in ("Z", "X"):
                children.setdefault(int(fields[1]), []).append((int(name), int(fields[19])))
        except (ValueError, IndexError):
            continue
    return children


def _descendants(pid: int, since: int | None) -> set[int]:
    children, found, todo, seen = _children(), set(), [pid], {pid}
    while todo:
        for child, started in children.get(todo.pop(), ()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
                if since is None or started >= since:
                    found.add(child)
    return found


def _signal(pid: int, sig: int) -> OSError | None:
    """``os.kill``, which never raises: gone meanwhile is fine; refused (a descendant that changed its uid: a
    setuid helper, ``sudo``) is returned, not raised, so that one such process can neither leave those after
    it in the walk unstopped nor those before it stopped for ever."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except OSError as exc:
        return exc
    return None


def kill_descendants(pid: int, *, since: int | None = None) -> list[int]:
    """SIGKILL every process below ``pid`` (its children, theirs, …), and the process group of each one that
    leads one (a program run in a session of its own, as the external program adapter does): what a run
    started, which would otherwise outlive the pool child killed under it, reparented to init, holding its
    files, its memory, a GPU. ``since`` (``_clock_ticks_at``): only those started since then, the run's
    own. Each is stopped (SIGSTOP) first, and /proc walked again until no new one appears, so that none
    forks a child that escapes the walk. Every signal is an ``os.kill``. The pids killed; one this process
    may not signal (a setuid helper's, of another uid) is logged and left running.

    A process that left the tree on purpose (a daemon that forked twice, a group whose leader exited) is
    not found here; an external program's group is, while its leader runs, and otherwise stopped by
    ``algorithms.orphans.reap`` from the group it recorded."""
    frozen: set[int] = set()
    refused: dict[int, OSError] = {}  # those SIGKILL could not be sent to: left running
    try:
        for _ in range(10):  # bounded: a run that forks without end does not hold the kill up
            found = _descendants(pid, since) - frozen
            if not found:
                break
            for child in found:
                frozen.add(child)  # first: whatever ends the walk, the ``finally`` kills each one it stopped
                _signal(child, signal.SIGSTOP)
    finally:
        for child in frozen:
            try:
                leads = os.getpgid(child) == child
            except OSError:  # gone meanwhile
                continue
            _signal(-child if leads else child, signal.SIGKILL)
            if (exc := _signal(child, signal.SIGKILL)) is not None:
                refused[child] = exc
        if refused:  # once per kill, not once per signal
            log.warning("could not kill %d process(es) below %d, left running: %s", len(refused), pid,
                        ", ".join(f"{p} ({exc.strerror or exc})" for p, exc in sorted(refused.items())))
    return sorted(frozen - refused.keys())


class Batch:
    """The tasks of one message, claimed together and run one after another: a multi-id message
    (``DISPATCH_BATCH``), or a single task's (a batch of one, ``jobs.tasks.run_task``).

    While they wait their turn (and once run, until their outcome is recorded) the watchdog beats their
    heartbeats too, so the reaper leaves them alone, and notes a cancel (→ CANCELLED without running) or
    a task taken away (→ skipped). Outcomes are recorded together (``execution.finish_many``) at the end,
    or once ``FINISH_FLUSH_SECONDS`` have passed since the last record — by the watchdog too, so a long
    task in a batch does not hide its batch-mates' results. A record that fails (a database blip) is
    tried again, the heartbeats beaten meanwhile, instead of leaving the outcome to the reaper.
    """

    def __init__(self, tasks: list[Task], worker: str, *, dispatch_next: bool = False,
                 since: float | None = None) -> None:
        self.worker = worker
        self.claimed_at = tasks[0].started_at if tasks else None  # one claim for the message's tasks
        self.since = time.monotonic() if since is None else since  # that claim, by this process's clock
        self.dispatch_next = dispatch_next  # each record dispatches its queues' next tasks in its transaction
        self.waiting = {str(t.id): t for t in tasks}
        self.cancelled: set[str] = set()
        self.lost: set[str] = set()
        self.fenced: set[str] = set()  # waiting while the heartbeats failed (``lose_waiting``)
        self.skipped: list[str] = []  # fenced when their turn came: handed back in ``__exit__``
        self.stopping: list[str] = []  # waiting when the worker's warm shutdown began: handed back at once
        self.stopped: set[str] = set()  # those: never run here
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
                    self._hand_back_skipped()
                    return
                except Exception:
                    log.exception("could not record finished tasks; trying again")
                    connections.close_all()
                    time.sleep(pause)
            self.flush()
            self._hand_back_skipped()
        finally:
            Watchdog.get().remove(self)

    def _hand_back_skipped(self) -> None:
        """The tasks held back by the fence or by the worker's shutdown, never started: back to PENDING
        under this batch's claim (a no-op for one the reaper took meanwhile), without counting an attempt."""
        self._release("skipped", "its worker was cut off from the database before it started")
        self._release("stopping", "its worker was shutting down before it started")

    def _release(self, held: str, reason: str) -> None:
        """Hand back the tasks of ``self.<held>``; kept there (and beaten) until that has committed."""
        with self.lock:
            task_ids = list(getattr(self, held))
        if task_ids:
            execution.release(task_ids=task_ids, worker=self.worker, claimed_at=self.claimed_at, reason=reason)
            with self.lock:
                setattr(self, held, [t for t in getattr(self, held) if t not in task_ids])

    def waiting_ids(self) -> list[str]:
        """Claimed and not yet recorded as finished: still RUNNING, so their heartbeats are ours to beat."""
        with self.lock:
            return [*self.waiting, *(task_id for task_id, _ in self.outcomes), *self.skipped, *self.stopping]

    def beaten(self, flags: dict[str, bool]) -> None:
        with self.lock:
            for task_id in list(self.waiting):
                if task_id not in flags:
                    self.lost.add(task_id)
                elif flags[task_id]:
                    self.cancelled.add(task_id)
                else:  # still ours, its heartbeat through: the fence no longer holds it back
                    self.fenced.discard(task_id)
            self.skipped = [task_id for task_id in self.skipped if task_id in flags]  # the rest were taken
            self.stopping = [task_id for task_id in self.stopping if task_id in flags]

    def lose_waiting(self) -> None:
        """Fenced (``Watchdog._fence``): none of the tasks waiting their turn is started while the database
        is out of reach; once a heartbeat answers with them still ours they may run (``beaten``)."""
        with self.lock:
            self.fenced.update(self.waiting)

    def stop_waiting(self) -> None:
        """The worker is stopping (``worker_shutting_down``): the tasks still waiting their turn will not
        start here. They go back at once, from the watchdog's thread, while the running one finishes (a
        cancelled one is still recorded CANCELLED at its turn, and a fenced one handed back at the end)."""
        with self.lock:
            for task_id in [t for t in self.waiting if t not in self.lost | self.cancelled | self.fenced]:
                del self.waiting[task_id]
                self.stopping.append(task_id)
                self.stopped.add(task_id)
        if self.stopping:
            self._hand_back_now()

    def run(self, task: Task) -> None:
        task_id = str(task.id)
        with self.lock:
            if task_id in self.stopped:  # handed back since the worker began to stop
                return
            self.waiting.pop(task_id, None)
            lost, cancelled = task_id in self.lost, task_id in self.cancelled
            if task_id in self.fenced and not lost:  # held back: handed back at the batch's end, still beaten
                self.skipped.append(task_id)
                lost = True
            elif _SHUTTING_DOWN.value and not lost and not cancelled:  # before the watchdog's next beat
                self.stopping.append(task_id)
                self.stopped.add(task_id)
                lost = True
        if lost:  # reaped or cancelled while waiting, fenced, or the worker stopping: not run here
            if self.stopping:
                self._hand_back_now()
            return
        outcome = (Outcome(status=Status.CANCELLED, error="cancelled", retryable=False) if cancelled
                   else run(task, since=self.since))
        with self.lock:
            self.outcomes.append((task_id, outcome))
        try:
            self.flush(older_than=self.flush_every)
        except Exception:  # kept, and beaten, for the next record (the watchdog's, or the batch's end)
            log.exception("could not record finished tasks; trying again later")
            connections.close_all()

    def _hand_back_now(self) -> None:
        """The worker is stopping: what this batch has not started goes back at once, for other workers
        to take while this one finishes its current task (kept, and beaten, for the batch's end if the
        database does not answer now)."""
        try:
            self._release("stopping", "its worker was shutting down before it started")
        except Exception:
            log.exception("could not hand back tasks of a stopping worker; trying again at the batch's end")
            connections.close_all()

    def flush(self, older_than: float = 0.0) -> None:
        """Record the finished tasks (when the last record is at least ``older_than`` seconds old)."""
        with self.lock:
            if time.monotonic() - self.flushed_at < older_than:
                return
            outcomes, self.outcomes = self.outcomes, []
            if outcomes:
                try:
                    execution.finish_many(outcomes=outcomes, dispatch_next=self.dispatch_next,
                                         claimed_at=self.claimed_at)
                except Exception:  # kept (and their heartbeats beaten) for the next record
                    self.outcomes = outcomes + self.outcomes
                    raise
            self.flushed_at = time.monotonic()

    def settle(self) -> None:
        """Before this process is killed: record what finished, hand back what never started."""
        self.flush()
        with self.lock:
            waiting, self.waiting = [*self.waiting, *self.skipped, *self.stopping], {}
            self.skipped, self.stopping = [], []
        if waiting:
            execution.release(task_ids=waiting, worker=self.worker, claimed_at=self.claimed_at,
                             reason="its batch's worker process was terminated")


def _write_logs(task: Task, lines: list[str], wait: bool, committed: Callable[[], None]) -> bool:
    """A run's waiting log lines, written; False: not now. Not inside a transaction of the algorithm's own
    (this thread's connection in an atomic block): its rollback would take lines logged before it along,
    so they wait for a write outside it (the watchdog's, on its own connection, or the next one here)."""
    if connection.in_atomic_block:
        return False
    return execution.append_log(task_id=task.id, lines=lines, wait=wait, committed=committed,
                                claimed_at=task.started_at)


def _quietly(write: Callable[[], None], task: Task) -> None:
    """What waits of a run's log lines and progress, written; best effort, as the traceback's line: the
    outcome is what must be recorded (a line the database refuses never fails a run that succeeded)."""
    try:
        write()
    except Exception:
        log.exception("could not write the log lines or progress of task %s", task.id)


def run(task: Task, *, since: float | None = None) -> Outcome:
    """Run the algorithm of a claimed (RUNNING) task and say how it ended (``since``: when it was claimed,
    by ``time.monotonic``; now if not given)."""
    try:
        alg = registry.get(task.algorithm)
        params = alg.params_model.model_validate(task.params)
    except Exception as exc:  # not installed on this worker, or params no longer valid
        return Outcome(status=Status.FAILED, error=f"cannot start: {exc}", retryable=False)

    watch = Watch(task, threading.current_thread(), since=since)
    scratch = Scratch(prefix=f"conveyor-{task.id}-")
    conf = settings.CONVEYOR
    store = artifacts.ArtifactStore(task_id=str(task.id), attempt=task.attempts, claimed_at=task.started_at,
                                    scratch=scratch)
    ctx = RunContext(
        task_id=str(task.id), attempt=task.attempts, scratch=scratch, cancel_event=watch.cancel,
        write_progress=lambda p, s, m, x: execution.report_progress(task_id=task.id, percent=p, stage=s, message=m,
                                                                   metrics=x, claimed_at=task.started_at),
        write_logs=lambda lines, wait, committed: _write_logs(task, lines, wait, committed),
        min_interval=conf["PROGRESS_MIN_INTERVAL"], artifacts=store, log_interval=conf["LOG_MIN_INTERVAL"],
    )
    watch.flush_logs = lambda: ctx.flush_logs(wait=False)
    watch.writing = ctx.writing
    watchdog = Watchdog.get()
    watchdog.add(watch)
    try:
        try:
            returned = alg.fn(ctx, params)
            _quietly(ctx.flush, task)
            result = None
            if not watch.cancel.is_set():  # cancelled, timed out or no longer ours: open files are dropped
                store.close_open()
                # Large results are encoded into storage here, while the scratch directory still exists.
                result = artifacts.finalize_result(store, ctx.result_or(returned))
        finally:
            try:
                with watch.lock:  # from here on the watchdog neither kills this process nor raises in this thread
                    watch.stopped = True
            finally:  # even when a TaskTimeout raised while this thread waited for the lock lands here
                watchdog.remove(watch)
                _quietly(ctx.flush_logs, task)  # before the traceback or the final state
    except TaskTimeout:
        return Outcome(status=Status.TIMED_OUT, error=f"time limit of {task.timeout_seconds}s reached", retryable=False)
    except TaskStopped:  # recorded by the watchdog already, or (its row was held) to be recorded from this outcome
        return watch.interrupted() or Outcome(status=Status.CANCELLED, error="cancelled", retryable=False)
    except Exception as exc:
        if watch.timed_out.is_set():
            return Outcome(status=Status.TIMED_OUT, error=f"time limit of {task.timeout_seconds}s reached", retryable=False)
        try:  # best effort: the outcome below is what must be recorded
            execution.append_log(task_id=task.id, lines=[traceback.format_exc(limit=20)], claimed_at=task.started_at)
        except Exception:
            log.exception("could not record the traceback of task %s", task.id)
        # Cancelled, and failed on the way out: cancelled, never retried; lost: run again while attempts remain.
        stopped = watch.interrupted()
        if stopped is not None:
            return stopped
        # An exception may say that running again cannot help (``retryable = False``: a remote service's
        # answer out of protocol); any other failure is retried while attempts remain.
        return Outcome(status=Status.FAILED, error=f"{type(exc).__name__}: {exc}",
                       retryable=getattr(exc, "retryable", True) is not False)
    finally:
        store.abort_open()
        scratch.remove()
    return watch.interrupted() or Outcome(status=Status.SUCCEEDED, result=result)
