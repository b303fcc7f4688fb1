"""The runner's watchdog against the main thread and the database: each race driven step by step (the
watchdog's beats run here, one by one, on a watchdog that is not started, unless said otherwise)."""
from __future__ import annotations

import inspect
import signal
import socket
import sys
import threading
import time
from typing import Any

import pytest
from django.conf import settings
from django.db import OperationalError, connection

from algorithms import registry
from jobs import execution, runner, services, tasks
from jobs.models import Status, Task
from tests.conftest import another_session, queued_tasks, terminate_this_backend, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


_queued = queued_tasks


def _algorithm(monkeypatch: pytest.MonkeyPatch, name: str, fn: Any) -> None:
    monkeypatch.setitem(registry._registry, name, registry.Algorithm(name=name, fn=fn))


@pytest.fixture
def watchdog(monkeypatch: pytest.MonkeyPatch) -> runner.Watchdog:
    """The process's watchdog, not started: runs add their watches to it, and the test beats."""
    dog = runner.Watchdog()
    monkeypatch.setattr(runner.Watchdog, "_instance", dog)
    return dog


@pytest.fixture
def kills(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """As in a prefork pool child, whose SIGKILLs are noted instead of sent."""
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(runner, "_in_pool_child", lambda: True)
    monkeypatch.setattr(runner.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    return sent


def _in_thread(fn: Any, box: dict[str, Any], key: str) -> threading.Thread:
    def target() -> None:
        try:
            box[key] = fn()
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            box[key] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=target)
    thread.start()
    return thread


def _watches(dog: runner.Watchdog) -> list[runner.Watch]:
    with dog.guard:
        return list(dog.watches)


def _beat(dog: runner.Watchdog) -> None:
    with dog.guard:
        watches, batches = list(dog.watches), list(dog.batches)
    dog._tick(watches, batches)


# --- the watchdog's SIGKILL and the child's next task -------------------------------------------------

def test_a_task_that_stops_while_the_watchdog_records_its_termination_leaves_the_child_and_its_next_task_alone(
        alice, monkeypatch, settings, watchdog, kills):
    """The algorithm ignores its cancel for the grace period; the watchdog records CANCELLED, and just then
    the algorithm returns, its run ends and the child takes its next message, U. The SIGKILL meant for the
    first must not land on U (which the reaper would then fail as "worker lost")."""
    settings.CONVEYOR = {**settings.CONVEYOR, "CANCEL_GRACE_SECONDS": 0}
    release, moved_on = threading.Event(), threading.Event()
    _algorithm(monkeypatch, "t.stubborn", lambda ctx, params: release.wait(30) and None)
    t, = _queued(alice, 1, algorithm="t.stubborn")
    u, = _queued(alice, 1)
    real_finish = execution.finish

    def finish(**kwargs: Any) -> Any:
        done = real_finish(**kwargs)
        if threading.current_thread() is threading.main_thread():  # the watchdog's record, here
            release.set()  # the algorithm looks at ctx.cancelled() at last and returns ...
            assert moved_on.wait(10), "the child did not take its next message"  # ... and the child goes on
        return done

    monkeypatch.setattr(execution, "finish", finish)

    def child() -> Any:
        tasks.run_task.apply(args=[str(t.id)])
        next_task = execution.claim(task_id=u.id, worker="w")  # its next message
        moved_on.set()
        return next_task

    box: dict[str, Any] = {}
    thread = _in_thread(child, box, "u")
    wait_until(lambda: _watches(watchdog), message="the run's watch")
    services.cancel(task_id=t.id)

    _beat(watchdog)  # the grace is over: it records CANCELLED, and would kill the child

    thread.join(10)
    assert box["u"] is not None and Task.objects.get(id=u.id).status == Status.RUNNING
    assert kills == [], "the SIGKILL landed on a child running its next task"
    assert Task.objects.get(id=t.id).status == Status.CANCELLED


def test_a_task_that_still_ignores_its_cancel_when_it_is_recorded_has_its_child_killed(
        alice, monkeypatch, settings, watchdog, kills):
    settings.CONVEYOR = {**settings.CONVEYOR, "CANCEL_GRACE_SECONDS": 0}
    release = threading.Event()
    _algorithm(monkeypatch, "t.stubborn", lambda ctx, params: release.wait(30) and None)
    t, = _queued(alice, 1, algorithm="t.stubborn")
    box: dict[str, Any] = {}
    thread = _in_thread(lambda: tasks.run_task.apply(args=[str(t.id)]), box, "run")
    wait_until(lambda: _watches(watchdog), message="the run's watch")
    services.cancel(task_id=t.id)

    _beat(watchdog)

    assert kills == [(runner.os.getpid(), signal.SIGKILL)]
    row = Task.objects.get(id=t.id)
    assert row.status == Status.CANCELLED and "did not stop" in row.error
    release.set()
    thread.join(10)


# --- a worker cut off from the database -----------------------------------------------------------------

def test_a_worker_cut_off_from_the_database_stops_its_run_before_the_reaper_may_run_it_elsewhere(alice, monkeypatch,
                                                                                                   kills):
    """Its heartbeats fail (the database out of its reach only): within half the stale period its run sees
    ``ctx.cancelled()``, and its outcome is the reaper's (run again), never the user's CANCELLED. The real
    watchdog thread, beating every ``HEARTBEAT_SECONDS``."""
    stale = settings.CONVEYOR["HEARTBEAT_STALE_SECONDS"]
    seen: dict[str, float] = {}

    def long(ctx: Any, params: Any) -> Any:
        while time.monotonic() - seen["claimed"] < 3 * stale:
            if ctx.cancelled():
                seen["stopped"] = time.monotonic()
                return None
            time.sleep(0.02)
        return "ran to the end while the reaper gave its task to another worker"

    def partitioned(**kwargs: Any) -> Any:
        raise OperationalError("could not receive data from server: Connection timed out")

    _algorithm(monkeypatch, "t.long", long)
    monkeypatch.setattr(execution, "heartbeat", partitioned)  # only the watchdog beats
    t, = _queued(alice, 1, algorithm="t.long", max_retries=3)
    seen["claimed"] = time.monotonic()
    claimed = execution.claim(task_id=t.id, worker="A")

    outcome = runner.run(claimed)

    assert "stopped" in seen, outcome
    assert seen["stopped"] - seen["claimed"] < stale  # before its heartbeat could be found stale
    assert outcome.status == Status.FAILED and outcome.retryable and "worker lost" in outcome.error
    execution.finish(task_id=t.id, outcome=outcome, claimed_at=claimed.started_at)
    row = Task.objects.get(id=t.id)  # run again (by this record, or by a reaper that came first)
    assert row.status in {Status.PENDING, Status.QUEUED}, (row.status, row.error)


def test_the_fence_stops_runs_at_half_the_stale_period_and_kills_at_three_quarters_without_a_record(
        alice, monkeypatch, watchdog, kills):
    stale = settings.CONVEYOR["HEARTBEAT_STALE_SECONDS"]
    running, waiting = _queued(alice, 2)
    claimed = execution.claim_many(task_ids=[running.id, waiting.id], worker="w")
    now = time.monotonic()
    batch = runner.Batch(claimed, "w", since=now)  # a batch: its first task running, the other waiting its turn
    batch.waiting.pop(str(running.id))
    watch = runner.Watch(claimed[0], threading.current_thread(), since=now)
    monkeypatch.setattr(execution, "heartbeat", lambda **kw: (_ for _ in ()).throw(OperationalError("timed out")))

    def silent_for(seconds: float) -> None:  # the last heartbeat that got through, that long ago
        watchdog.beaten_at = batch.since = watch.since = time.monotonic() - seconds
        watchdog._tick([watch], [batch])

    silent_for(stale / 2 - 0.5)
    assert not watch.cancel.is_set() and not batch.fenced
    silent_for(stale / 2 + 0.01)
    assert watch.cancel.is_set() and "worker lost" in watch.lost and kills == []
    assert batch.fenced == {str(waiting.id)}  # not started while the database is out of reach
    silent_for(stale * 3 / 4 + 0.01)  # still running (the cancel grace is longer): killed
    assert kills == [(runner.os.getpid(), signal.SIGKILL)]
    for task in (running, waiting):  # nothing recorded: the database was out of reach; the reaper re-runs them
        assert Task.objects.get(id=task.id).status == Status.RUNNING

    out = watch.interrupted()
    assert out is not None and out.status == Status.FAILED and out.retryable


def test_a_task_claimed_while_the_heartbeats_fail_gets_its_own_half_of_the_stale_period(alice, monkeypatch, watchdog,
                                                                                         kills):
    stale = settings.CONVEYOR["HEARTBEAT_STALE_SECONDS"]
    task, = _queued(alice, 1)
    claimed = execution.claim(task_id=task.id, worker="w")  # its claim beat it: it counts from here
    watch = runner.Watch(claimed, threading.current_thread())
    monkeypatch.setattr(execution, "heartbeat", lambda **kw: (_ for _ in ()).throw(OperationalError("timed out")))
    watchdog.beaten_at = time.monotonic() - stale

    watchdog._tick([watch], [])

    assert not watch.cancel.is_set()


def _fenced_batch(alice: Any, monkeypatch: pytest.MonkeyPatch, watchdog: runner.Watchdog) -> tuple[list[Task], Any]:
    """Two claimed tasks of one message, none started, and one heartbeat failing after 100 s without one
    through: the fence holds them back. Returns the tasks and a function that lets the database answer."""
    tasks = execution.claim_many(task_ids=[t.id for t in _queued(alice, 2)], worker="w")
    watchdog.beaten_at = time.monotonic() - 100
    real = execution.heartbeat
    monkeypatch.setattr(execution, "heartbeat", lambda **kw: (_ for _ in ()).throw(OperationalError("db away")))
    return tasks, lambda: monkeypatch.setattr(execution, "heartbeat", real)


def test_tasks_a_fence_held_back_run_once_the_database_answers_with_them_still_ours(alice, monkeypatch, watchdog):
    tasks, answer = _fenced_batch(alice, monkeypatch, watchdog)
    with runner.Batch(tasks, "w", since=time.monotonic() - 100) as batch:
        _beat(watchdog)
        assert batch.fenced == {str(t.id) for t in tasks}
        answer()
        _beat(watchdog)  # through: they are still this worker's
        for task in tasks:
            batch.run(task)
    assert [Task.objects.get(id=t.id).status for t in tasks] == [Status.SUCCEEDED, Status.SUCCEEDED]


def test_tasks_a_fence_held_back_when_their_turn_came_are_handed_back_not_left_running(alice, monkeypatch, watchdog):
    """Their turn comes while the database is still out of reach: skipped, beaten meanwhile, and handed
    back at the batch's end (no attempt counted), not left RUNNING for the reaper to fail."""
    tasks, answer = _fenced_batch(alice, monkeypatch, watchdog)
    with runner.Batch(tasks, "w", since=time.monotonic() - 100) as batch:
        _beat(watchdog)
        for task in tasks:
            batch.run(task)
        assert set(batch.waiting_ids()) == {str(t.id) for t in tasks}  # still beaten until handed back
        answer()
    for task in Task.objects.filter(id__in=[t.id for t in tasks]):
        assert task.status in {Status.PENDING, Status.QUEUED} and task.attempts == 0, (task.status, task.attempts)
        assert task.events.order_by("-seq").values_list("event", flat=True).first() in {"task.requeued", "task.queued"}


def test_in_a_solo_pool_a_cut_off_run_is_not_fenced_and_keeps_its_time_limit(alice, monkeypatch, watchdog):
    """A solo or threads pool cannot kill its run: stopping it as lost would only throw its result away
    and leave its time limit unenforced once the database answers again."""
    release, seen = threading.Event(), {}

    def ignores_cancel(ctx: Any, params: Any) -> Any:
        try:
            while not release.is_set():
                time.sleep(0.02)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            seen["raised"] = type(exc).__name__
            raise
        return {"answer": 42}

    _algorithm(monkeypatch, "t.solo", ignores_cancel)
    task, = _queued(alice, 1, algorithm="t.solo", max_retries=1)
    Task.objects.filter(id=task.id).update(timeout_seconds=2)
    box: dict[str, Any] = {}
    thread = _in_thread(lambda: tasks.run_task.apply(args=[str(task.id)]), box, "run")
    watch, = wait_until(lambda: _watches(watchdog), message="the run's watch")
    watchdog.beaten_at = watch.since = time.monotonic() - 100
    real = execution.heartbeat
    monkeypatch.setattr(execution, "heartbeat", lambda **kw: (_ for _ in ()).throw(OperationalError("db away")))
    _beat(watchdog)
    monkeypatch.setattr(execution, "heartbeat", real)
    assert not watch.lost and not watch.cancel.is_set()

    wait_until(lambda: _beat(watchdog) or "raised" in seen, timeout=30, message="its time limit")
    release.set()
    thread.join(30)
    assert seen["raised"] == "TaskTimeout"
    assert Task.objects.get(id=task.id).status == Status.TIMED_OUT


def test_the_watchdogs_connection_gives_up_on_a_silent_network_within_a_fraction_of_the_stale_period(watchdog):
    watchdog._tick([], [])  # a beat of nothing, on this thread's connection
    with socket.fromfd(connection.connection.fileno(), socket.AF_INET, socket.SOCK_STREAM) as sock:
        user_timeout_ms = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
        keepalive = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    assert keepalive and 0 < user_timeout_ms <= max(1000, settings.CONVEYOR["HEARTBEAT_STALE_SECONDS"] * 1000 / 8)


# --- a single task's finish in a database blip ---------------------------------------------------------

def test_a_single_tasks_record_that_meets_a_database_blip_is_tried_again_and_its_heartbeat_goes_on(alice, monkeypatch):
    """The real watchdog thread beats it while its record is retried, as for a batch's tasks."""
    t, = _queued(alice, 1)
    real, calls, beaten = execution.finish_many, [], []

    def heartbeat_at() -> Any:
        with another_session() as other:
            return other.execute("SELECT heartbeat_at FROM jobs_task WHERE id = %s", [t.id]).fetchone()[0]

    def blip(**kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:  # the backend terminated under it, as by a PostgreSQL restart
            beaten.append(heartbeat_at())
            terminate_this_backend()
        else:  # tried again: meanwhile its heartbeat went on
            wait_until(lambda: heartbeat_at() > beaten[0], timeout=10, message="a heartbeat while the record waits")
        return real(**kwargs)

    monkeypatch.setattr(execution, "finish_many", blip)

    tasks.run_task.apply(args=[str(t.id)])

    row = Task.objects.get(id=t.id)
    assert len(calls) == 2 and row.status == Status.SUCCEEDED and row.result == {"ok": True}
    assert row.events.filter(event="task.succeeded").count() == 1


# --- a time limit raised into run()'s finally ----------------------------------------------------------

def test_a_time_limit_raised_while_the_run_waits_for_its_watch_still_lets_go_of_the_watch(alice, monkeypatch, watchdog):
    """The algorithm returns just as its time limit passes: the watchdog, holding the watch's lock for that
    beat, raises TaskTimeout into the run's thread, waiting for that lock in run()'s finally."""
    release = threading.Event()
    _algorithm(monkeypatch, "t.late", lambda ctx, params: release.wait(30) and None)
    task, = _queued(alice, 1, algorithm="t.late")
    claimed = execution.claim(task_id=task.id, worker="w")
    lines, first = inspect.getsourcelines(runner.run)
    at_lock = first + next(i for i, line in enumerate(lines) if "with watch.lock:" in line)

    def waiting_for_the_lock(thread: threading.Thread) -> bool:
        frame = sys._current_frames().get(thread.ident)
        return frame is not None and frame.f_code is runner.run.__code__ and frame.f_lineno == at_lock

    box: dict[str, Any] = {}
    thread = _in_thread(lambda: runner.run(claimed), box, "outcome")
    watch, = wait_until(lambda: _watches(watchdog), message="the run's watch")
    with watch.lock:  # the watchdog's beat
        release.set()
        wait_until(lambda: waiting_for_the_lock(thread), timeout=10, message="run()'s finally")
        watch.tick(False, watch.deadline)  # past its time limit: TaskTimeout into the run's thread
    thread.join(10)

    assert box["outcome"].status == Status.TIMED_OUT
    assert watch.stopped and watch not in watchdog.watches
