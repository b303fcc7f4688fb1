"""State changes racing each other, interleaved step by step (two connections, events, no sleeps):
a hold for a remote service against a cancel and against a later run; cancel and priority changes
against a running task going back to PENDING; liveness by one clock, the database's; a stuck run's
kill against the task's next run."""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from algorithms.remote import hold
from jobs import events, services, transitions
from jobs.models import Status, Task
from jobs.services import Outcome
from queueing import dispatch, heartbeat, reconciler
from queueing.models import WorkerRecord
from tests.conftest import another_session, unconsumed_queue, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def _queued(owner: Any, algorithm: str = "demo.noop", max_retries: int = 3) -> Task:
    """A QUEUED task of a queue no worker consumes (the session's worker may be running)."""
    spec = services.build_spec(algorithm=algorithm, queue=unconsumed_queue(), max_retries=max_retries)
    task = services._new_task(owner, spec, None)
    with transaction.atomic():
        task.save(force_insert=True)
        events.record([task], "task.created")
        transitions.apply([task.id], frm=[Status.PENDING], to=Status.QUEUED, event="task.queued",
                          values={"queued_at": timezone.now()})
    return task


def _reap(task: Task) -> list[Task]:
    """The reaper finds the task's heartbeat stale; in one transaction, so that no other reaper (the session
    worker's beat) ever sees that stale heartbeat committed."""
    with transaction.atomic():
        Task.objects.filter(id=task.id).update(heartbeat_at=timezone.now() - timedelta(hours=1))
        reconciler.reap_stale_running()
    return []


def _run_again(task: Task, worker: str) -> Task:
    """The task, back in PENDING, dispatched and claimed again: its next run."""
    Task.objects.filter(id=task.id).update(not_before=None)
    dispatch.dispatch([task.queue_id])
    again = services.claim(task_id=task.id, worker=worker)
    assert again is not None
    return again


class _Open:
    """``fn`` run on another connection in a transaction left open until ``commit()``: another process's
    change in progress, holding the rows it changed."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._ready, self._go = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,))
        self._thread.start()
        assert self._ready.wait(30), "the other transaction never got going"
        if self.error:
            raise self.error

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            with transaction.atomic():
                fn()
                self._ready.set()
                assert self._go.wait(30)
        except BaseException as exc:  # noqa: BLE001 - raised in the test's thread
            self.error = exc
        finally:
            self._ready.set()
            connection.close()

    def commit(self) -> None:
        self._go.set()
        self._thread.join(30)
        if self.error:
            raise self.error


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except Exception as exc:  # noqa: BLE001 - the answer under test
            box["result"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def _lock_waiters() -> int:
    with contextlib.closing(another_session()) as s:
        return s.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                         "AND datname = current_database()").fetchone()[0]


# --- 3. a hold for a remote service: the claim guard and the cancel check of every RUNNING -> PENDING -

def _hold(running: Task, claimed_at: Any) -> str | None:
    return hold.hold_for_service(task_id=running.id, service="svc", error="down", delay=0, claimed_at=claimed_at)


def _past_its_timeout(task: Task) -> None:
    Task.objects.filter(id=task.id).update(created_at=timezone.now() - timedelta(hours=2), timeout_seconds=60)


@pytest.mark.parametrize("timed_out", [False, True], ids=["held", "timed-out"])
def test_a_cancel_requested_before_a_hold_for_the_service_ends_the_task_cancelled(alice, timed_out):
    task = _queued(alice)
    running = services.claim(task_id=task.id, worker="w")
    if timed_out:
        _past_its_timeout(task)
    assert services.cancel(task_id=task.id).cancel_requested  # the user is told it will stop

    # within one heartbeat, before the bridge saw the flag, it holds the task for its (down) service
    assert _hold(running, running.started_at) == Status.CANCELLED

    row = Task.objects.get(id=task.id)
    last = row.events.order_by("-seq").first()
    assert (row.status, last.event, last.data["reason"]) == (Status.CANCELLED, "task.cancelled", "cancelled by user")
    assert row.finished_at is not None
    assert not row.events.filter(event__in=["task.requeued", "task.timed_out"]).exists()
    assert services.claim(task_id=task.id, worker="w2") is None  # a late message finds nothing to run


@pytest.mark.parametrize("timed_out", [False, True], ids=["held", "timed-out"])
def test_a_hold_from_a_run_taken_for_dead_changes_nothing_of_the_tasks_new_run(alice, timed_out):
    task = _queued(alice)
    first = services.claim(task_id=task.id, worker="w1")
    _reap(first)  # w1 went silent: its task runs again on w2
    second = _run_again(task, "w2")
    if timed_out:
        _past_its_timeout(task)

    assert _hold(first, first.started_at) is None  # w1, alive after all, holds "its" task for its service

    row = Task.objects.get(id=task.id)
    assert (row.status, row.worker, row.started_at) == (Status.RUNNING, "w2", second.started_at)
    done = services.finish(task_id=task.id, outcome=Outcome(status=Status.SUCCEEDED, result="w2"),
                           claimed_at=second.started_at)
    assert done is not None and done.status == Status.SUCCEEDED and done.result == "w2"


def test_a_hold_of_its_own_run_goes_back_to_the_queue_without_counting_the_attempt(alice):
    task = _queued(alice)
    running = services.claim(task_id=task.id, worker="w")

    assert _hold(running, running.started_at) == Status.PENDING

    row = Task.objects.get(id=task.id)
    assert (row.status, row.attempts) == (Status.PENDING, 0) and row.not_before > timezone.now()
    last = row.events.order_by("-seq").first()
    assert (last.event, last.data["reason"]) == ("task.requeued", hold.HOLD_REASON)
