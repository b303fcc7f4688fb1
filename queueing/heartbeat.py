"""The worker registry: every Celery worker describes itself in a ``WorkerRecord`` row.

Why a table and not ``celery inspect`` on every request: inspect is a broadcast that waits for its
whole timeout (a second or more) for replies, and a worker that died simply does not answer, so
it cannot be shown as dead. A heartbeat row written by each worker's own thread is one indexed read
for ``GET /api/v1/workers/``, lets the dispatcher and "why is my task waiting" ask "does any live
worker consume this queue?" cheaply, and keeps dead workers visible (stale ``last_heartbeat``).
Queues and pool size are read from the running consumer on every beat, so remote-control changes
(``add_consumer``, ``pool_grow`` …) show up within one heartbeat.

Graceful shutdown lives here too: on a warm shutdown (SIGTERM, or the API's ``shutdown`` through the
``conveyor_shutdown`` control command) Celery stops taking messages and
waits for running tasks. If they are still running after ``WORKER_SHUTDOWN_GRACE_SECONDS``, the
pool children are killed first (with the processes their runs started, and the external programs they
ran, ``_reap_orphaned_programs``) and only then are their tasks handed back to PENDING (another worker
re-runs them): the order matters, so a task is never running here and elsewhere at once.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import celery
from celery.exceptions import WorkerShutdown
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down
from celery.worker.control import control_command, nok, ok
from django.conf import settings
from django.db import close_old_connections, connections
from django.db.models.functions import Now
from django.utils import timezone

from observability.logs import about_task
from queueing import events

log = logging.getLogger(__name__)

_state: dict[str, Any] = {}
# One reap of external programs at a time (the heartbeat's, the shutdown grace's): a caller never takes a
# reap the other has begun, and not finished, for done.
_reaping = threading.Lock()
_scratch_lock = threading.Lock()  # guards _state["scratch_reaper"] and _state["scratch_again"]
# Scratch folders of dead runs are looked for when a pool child is gone since the last beat, and at least
# this often (a worker killed outright on the machine, sharing its $TMPDIR): listing $TMPDIR at every beat
# would cost more than it finds.
SCRATCH_REAP_SECONDS = 600.0


def describe(consumer: Any) -> dict[str, Any]:
    """What the running worker looks like right now (queues consumed, pool size)."""
    task_consumer = getattr(consumer, "task_consumer", None)
    queues = sorted(q.name for q in task_consumer.queues) if task_consumer is not None else []
    pool = consumer.pool
    try:
        size = int(pool.num_processes)
    except Exception:  # solo / threads pools have no process count
        size = int(getattr(pool, "limit", None) or getattr(consumer.controller, "concurrency", 0) or 0)
    return {
        "queues": queues, "concurrency": size, "pool": type(pool).__module__.rsplit(".", 1)[-1],
        "pid": os.getpid(), "version": f"celery {celery.__version__}",
    }


def beat(hostname: str, info: dict[str, Any], *, started_at: Any) -> bool:
    from queueing.models import WorkerRecord

    # last_heartbeat by the database's clock, which the liveness check and the readers compare it with
    # (reconciler.db_cutoff), never this host's: a worker whose clock drifts is not taken for dead.
    _, created = WorkerRecord.objects.update_or_create(
        hostname=hostname,
        defaults={**info, "last_heartbeat": Now(), "started_at": started_at, "stopped_at": None, "lost_at": None},
    )
    return created


def _loop(consumer: Any, stop: threading.Event) -> None:
    hostname = consumer.hostname
    started_at = timezone.now()
    interval = settings.CONVEYOR["WORKER_HEARTBEAT_SECONDS"]
    announced = False
    scratch: dict[str, Any] = {}
    try:
        while True:
            try:
                close_old_connections()
                info = describe(consumer)
                beat(hostname, info, started_at=started_at)
                _stop_stuck(hostname)
                _reap_orphaned_programs()
                _reap_scratch_if_due(consumer, scratch)
                if not announced:
                    events.publish_worker_event(hostname=hostname, event="worker.online", data={"queues": info["queues"]})
                    announced = True
            except Exception:  # the database may be down for a moment; the next beat retries
                log.exception("worker heartbeat failed")
            if stop.wait(interval):
                break
    finally:
        connections.close_all()


def _reap_orphaned_programs() -> list[int]:
    """Stop external programs left running on this machine by a worker process that was killed (a pool
    child killed here, or a worker killed outright: algorithms/orphans.py), and wait (bounded) until they
    are gone, so that a task handed back or given up right after never runs here and elsewhere at once."""
    from algorithms import orphans

    with _reaping:
        killed = orphans.reap()
        if killed:
            log.warning("stopped %d process(es) of external programs whose worker process had died", len(killed))
            _wait_gone(killed)
    return killed


@worker_ready.connect
def _on_ready(sender: Any = None, **kwargs: Any) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=_loop, args=(sender, stop), name="conveyor-worker-heartbeat", daemon=True)
    _state.update(stop=stop, thread=thread, hostname=sender.hostname, consumer=sender)
    thread.start()
    # Scratch directories of runs killed outright on this machine (their process is gone).
    _reap_scratch_aside()


def _reap_scratch_if_due(consumer: Any, last: dict[str, Any]) -> None:
    """At a beat: a pool child gone since the last one (killed: a cancel or time limit its run ignored, a
    stuck run, ``kill -9``, the OOM killer) left its run's scratch directory behind, which no ``finally``
    removed; so may a worker killed outright on the machine. Removed while this worker runs on, not only
    when the next one starts: when a pool child is gone, and every ``SCRATCH_REAP_SECONDS``."""
    children = set(_pool_children(consumer) or ())
    now = time.monotonic()
    gone = last.get("children", children) - children
    if gone or now - last.setdefault("at", now) >= SCRATCH_REAP_SECONDS:
        last["at"] = now
        _reap_scratch_aside()
    last["children"] = children


def _reap_scratch_aside() -> None:
    """``_reap_scratch`` in a thread of its own, so that a large directory holds neither the worker's start
    nor its heartbeat up; one at a time: asked while one runs, that one looks again when it is done."""
    with _scratch_lock:
        _state["scratch_again"] = True
        if _state.get("scratch_reaper") is not None:
            return
        thread = threading.Thread(target=_reap_scratch, name="conveyor-scratch-reaper", daemon=True)
        _state["scratch_reaper"] = thread
    thread.start()


def _reap_scratch() -> None:
    from algorithms.context import reap_scratch

    while True:
        with _scratch_lock:
            if not _state.pop("scratch_again", False):
                _state["scratch_reaper"] = None
                return
        try:
            reap_scratch()
        except Exception:
            log.exception("removing the scratch directories of dead runs failed")


@worker_shutdown.connect
def _on_shutdown(sender: Any = None, **kwargs: Any) -> None:
    from queueing.models import WorkerRecord

    if "stop" not in _state:
        return
    _state["stop"].set()
    _state["thread"].join(timeout=5)
    try:
        WorkerRecord.objects.filter(hostname=_state["hostname"]).update(stopped_at=timezone.now())
        events.publish_worker_event(hostname=_state["hostname"], event="worker.offline")
        events.publisher.flush()
    except Exception:
        log.exception("could not mark worker %s stopped", _state["hostname"])
    finally:
        connections.close_all()


@worker_shutting_down.connect
def _on_shutting_down(sender: Any = None, how: str | None = None, **kwargs: Any) -> None:
    if how == "Warm":
        _start_grace()


@control_command()
def conveyor_shutdown(state: Any, **kwargs: Any) -> None:
    """Warm shutdown from ``POST /api/v1/workers/{hostname}/shutdown/`` (``queueing.control``), with the
    same grace as SIGTERM. Celery's own ``shutdown`` command raises ``WorkerShutdown`` without sending
    ``worker_shutting_down``, so its warm shutdown waited for a hung task for ever."""
    log.warning("Got shutdown from remote: running tasks get %gs",
                settings.CONVEYOR["WORKER_SHUTDOWN_GRACE_SECONDS"])
    _start_grace()
    raise WorkerShutdown(0)


@control_command(args=[("n", int), ("total", int)], signature="[N=1] [TOTAL=N]")
def conveyor_pool_shrink(state: Any, n: int = 1, total: int | None = None, **kwargs: Any) -> dict[str, Any]:
    """``POST /api/v1/workers/{hostname}/pool_shrink/`` (``queueing.control``): Celery's ``pool_shrink``,
    decided here against the live pool instead of the registry row (a heartbeat old: two quick shrinks of
    a 2-process worker left it none). Removes ``n`` processes; refused, with nothing done, when the
    ``total`` the request still has to remove (``n`` by default) would leave fewer than one. The worker
    runs its control commands one at a time, so two requests cannot both pass the check. A refusal
    carries ``processes`` (the live pool size). Solo and threads pools cannot shrink (no processes to
    stop, and Celery gives them no ``shrink``): always refused, the pool left as it is."""
    consumer = state.consumer
    pool = consumer.pool
    kind = type(pool).__module__.rsplit(".", 1)[-1]
    if consumer.controller.autoscaler:
        return nok("pool_shrink is not supported with autoscale. Adjust autoscale range instead.")
    if not callable(getattr(pool, "shrink", None)):
        return {**nok(f"a {kind} pool cannot shrink; restart the worker with another --concurrency"),
                "processes": int(getattr(pool, "num_processes", 0) or 0), "cannot_shrink": True}
    size = int(pool.num_processes)
    total = n if total is None else total
    if n < 1 or total < n:
        return nok(f"pool_shrink: n must be at least 1 and total at least n (got n={n}, total={total})")
    if total >= size:
        return {**nok(f"shrinking by {total} would leave no process (it has {size})"),
                "processes": size, "would_leave_none": True}
    try:
        pool.shrink(n)
    except ValueError as exc:  # billiard: "Can't shrink pool. All processes busy!"
        return {**nok(str(exc)), "processes": int(pool.num_processes)}
    consumer._update_prefetch_count(-n)
    return {**ok("pool will shrink"), "processes": int(pool.num_processes)}


def _start_grace() -> None:
    """Once per process: after the grace period, stop what still runs and hand it back. Batches start no
    more of their tasks meanwhile (``runner.worker_shutting_down``): those go back at once."""
    from jobs import runner

    runner.worker_shutting_down()
    if "consumer" not in _state or _state.get("grace_started"):
        return
    _state["grace_started"] = True
    grace = settings.CONVEYOR["WORKER_SHUTDOWN_GRACE_SECONDS"]
    threading.Thread(target=_hand_back_after, args=(grace,), name="conveyor-shutdown-grace", daemon=True).start()


def _pool_children(consumer: Any) -> list[int] | None:
    """Pids of the prefork pool's children; None for pools without child processes (solo, threads)."""
    procs = getattr(getattr(consumer.pool, "_pool", None), "_pool", None)
    return None if procs is None else [p.pid for p in procs if p.pid]


def _hand_back_after(grace: float) -> None:
    from jobs.models import Status, Task
    from queueing import reconciler

    hostname = _state["hostname"]
    deadline = time.monotonic() + grace
    try:
        while Task.objects.filter(status=Status.RUNNING, worker=hostname).exists():
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        else:
            return
        pids = _pool_children(_state["consumer"])
        if pids is None:  # cannot stop a thread: the reaper re-runs these once the process is gone
            log.warning("shutdown grace over; non-prefork pool, leaving running tasks to the reaper")
            return
        log.warning("shutdown grace of %gs over; killing %d pool children and handing their tasks back",
                    grace, len(pids))
        for pid in pids:  # each one, whatever became of the one before: none runs on, nor holds the shutdown
            _kill_pool_child_logged(pid)
        # Before anything else may run their tasks: the children gone, and the external programs they ran
        # (each in a process group of its own), which this worker's heartbeat, stopped or at most one
        # beat away from its exit, would not reap.
        _wait_gone(pids)
        _reap_orphaned_programs()
        reconciler.hand_back(worker=hostname)
    except Exception:
        log.exception("handing back the tasks of %s failed; the reaper will re-run them", hostname)
    finally:
        connections.close_all()


def _running_requests() -> dict[str, Any]:
    """Task id → Celery's active request running it in a pool child (``request.worker_pid``), from its
    in-memory active requests; only tasks that came one per message. A batch's tasks (``jobs.run_tasks``)
    were all claimed, ``started_at`` stamped, when the message arrived, so their wait for their turn
    would look like no progress; and killing the child would stop a healthy batch-mate. Their time limit
    still applies. A task with two active requests (a duplicate message, whose claim is about to be
    refused) is left out: which child runs it is not known; it is looked at again at the next beat."""
    from celery.worker.state import active_requests

    found: dict[str, Any] = {}
    twice: set[str] = set()
    for request in list(active_requests):
        if request.name != "jobs.run_task" or not request.args or not request.worker_pid:
            continue
        task_id = str(request.args[0])
        if task_id in found:
            twice.add(task_id)
        found[task_id] = request
    return {task_id: request for task_id, request in found.items() if task_id not in twice}


def _still_its_child(request: Any, pid: int) -> bool:
    from celery.worker.state import active_requests

    return request in active_requests and request.worker_pid == pid


def _stop_stuck(hostname: str) -> None:
    """Tasks past their algorithm's ``progress_timeout``: kill their pool child (with the processes its run
    started, and its external program), then re-run or fail them. Past it by this host's monotonic clock,
    from what this watchdog saw at its beats (``reconciler.stuck_running``): a step of the wall clock stops
    no healthy task, nor hides a stuck one.

    The run found stuck (its claim, ``started_at``) is the one stopped, not a later one in the same or
    another child: after the active requests are read, the task must still run under that claim (so the
    one request found for it is that run's: a later run's message comes only after it ended), and right
    before the kill, that request must still be active in that child (it has not finished and handed
    the child another message). Re-run or failed under that claim only."""
    from queueing import reconciler

    stuck = reconciler.stuck_running(worker=hostname)
    if not stuck:
        return
    requests = _running_requests()
    for task_id, (timeout, claimed_at) in stuck.items():
        request = requests.get(task_id)
        pid = getattr(request, "worker_pid", None)
        if request is None or not pid or pid == os.getpid():  # not (yet) in a child of ours, or a solo/threads pool
            continue
        if not reconciler.still_running(task_id=task_id, worker=hostname, claimed_at=claimed_at):
            continue  # it ended (and may run again, under another claim) since it was found stuck
        if not _still_its_child(request, pid):  # checked last, right before the kill
            continue
        killed = _kill_pool_child_logged(pid)  # the next stuck task is seen to even if this kill fails
        with about_task(task_id):
            log.warning("task %s made no progress for %gs; %s pool child %s", task_id, timeout,
                        "killed" if killed else "could not kill", pid)
            _wait_gone([pid])
            if not killed and not _gone(pid):  # given up only once it no longer runs here (tried at a later beat)
                continue
            _reap_orphaned_programs()  # its external program too, before the task may run again
            reconciler.give_up_stuck(task_id=task_id, worker=hostname, timeout=timeout, claimed_at=claimed_at)


def _kill_pool_child(pid: int) -> None:
    """SIGKILL a pool child and the processes its run started (``runner.kill_descendants``), which would
    otherwise run on, reparented to init. Stopped first, so that it starts none while they are looked for."""
    from jobs import runner

    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return
    try:
        runner.kill_descendants(pid)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _kill_pool_child_logged(pid: int) -> bool:
    """``_kill_pool_child``, logged instead of raised (False then): the caller goes on to the next child, so
    that one which cannot be killed, or one of whose run's processes cannot, leaves no other running."""
    try:
        _kill_pool_child(pid)
    except Exception:
        log.exception("could not kill pool child %s, or the processes its run started", pid)
        return False
    return True


def _gone(pid: int) -> bool:
    """Exited, or a zombie: it runs nothing more (a killed pool child waits for its parent to reap it, a
    killed program whose worker is gone for init)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:  # gone just now; or no /proc (not Linux): alive, as far as can be told
        return Path("/proc/self").exists()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:][:1] in ("Z", "X")


def _wait_gone(pids: list[int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline and not _gone(pid):
            time.sleep(0.05)
