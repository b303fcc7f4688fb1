"""A cancelled task whose algorithm ignores the cancel, on a worker whose pool cannot kill it (solo, as
for GPUs, or threads): after the grace period its state is recorded and its thread interrupted, so the
worker is free again, and the error says what happened. Before, the task read "was terminated" while it
ran on to its end, holding the solo worker (and its GPU) meanwhile.

The run happens in this test's own thread, which is not a prefork pool child: what a solo pool does."""
from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.db import connection

from jobs import services
from jobs.models import Status, Task
from tests.jobs.test_nul_output import run_once

pytestmark = pytest.mark.django_db(transaction=True)


def counted_steps() -> tuple[dict[str, int], Any]:
    """A step of 0.05 s of an algorithm's loop, and how many were done: where an interrupt lands, inside
    the algorithm's ``try``."""
    steps = {"done": 0}

    def step() -> None:
        time.sleep(0.05)
        steps["done"] += 1

    return steps, step


def cancel(task_id) -> None:
    """The user's cancel, from another thread while the run goes on."""
    try:
        services.cancel(task_id=task_id)
    finally:
        connection.close()


def test_a_cancel_ignored_in_a_solo_pool_interrupts_the_algorithm_and_says_so(alice, monkeypatch):
    steps = {"done": 0}

    def ignores_cancel(ctx, params):
        threading.Timer(0.3, cancel, args=(ctx.task_id,)).start()
        for _ in range(600):  # 30 s, never looking at ctx.cancelled()
            time.sleep(0.05)
            steps["done"] += 1

    task = run_once(alice, monkeypatch, ignores_cancel, max_retries=0)

    assert steps["done"] < 600, "the algorithm ran to its end"
    row = Task.objects.get(id=task.id)
    assert row.status == Status.CANCELLED
    assert "did not stop within 2s and was interrupted" in row.error and "solo or threads pool" in row.error


def test_an_algorithm_that_catches_every_exception_is_still_interrupted(alice, monkeypatch):
    steps, step = counted_steps()

    def swallows(ctx, params):
        threading.Timer(0.3, cancel, args=(ctx.task_id,)).start()
        for _ in range(600):
            try:
                step()  # the interrupt lands in it, inside the try
            except Exception:  # noqa: BLE001 — what some algorithms do around each step
                pass

    task = run_once(alice, monkeypatch, swallows, max_retries=0)

    assert steps["done"] < 600, "the algorithm ran to its end"
    assert Task.objects.get(id=task.id).status == Status.CANCELLED


def test_the_watchdog_never_waits_for_long_to_record_a_run_it_stops(alice):
    # It beats every task of its process: a run whose row another transaction holds (the algorithm's own,
    # most likely) is recorded at a later beat instead of holding up every other task's heartbeat.
    from jobs import execution, runner
    from tests.conftest import queued_tasks, returns_without_waiting, row_held

    claimed = execution.claim(task_id=queued_tasks(alice, 1)[0].id, worker="w")
    watch = runner.Watch(claimed, threading.Thread())  # its thread: not this one, never started
    watch.deadline = watch.since - 10  # its time limit and grace long past
    watchdog = runner.Watchdog()  # not started: its ticks by hand

    def tick():
        watch.tick(True, time.monotonic())  # the beat that sets the time limit
        watch._cancel_at -= 10
        watchdog._tick([watch], [])

    with row_held(claimed.id):
        assert returns_without_waiting(tick), "the watchdog's tick waited for the row"
        assert Task.objects.get(id=claimed.id).status == Status.RUNNING  # not recorded yet
    assert not watch.terminating  # tried again at the next beat

    assert returns_without_waiting(lambda: watchdog._tick([watch], []))
    assert Task.objects.get(id=claimed.id).status == Status.TIMED_OUT


def test_a_run_holding_its_row_in_its_own_transaction_is_interrupted_after_the_grace_period(alice, monkeypatch):
    # Its end cannot be recorded while its own transaction holds the task's row: it is interrupted anyway
    # (which ends that transaction), and its time limit is recorded then.
    from django.db import transaction

    steps, step = counted_steps()

    def holds_its_row(ctx, params):
        with transaction.atomic():
            ctx.progress(10, stage="import")  # the task's row is locked until this block ends
            for _ in range(600):
                try:
                    step()
                except Exception:  # noqa: BLE001 — swallows the time limit's TaskTimeout
                    pass

    task = run_once(alice, monkeypatch, holds_its_row, max_retries=0, timeout_seconds=1)

    # 30 s of steps; stopped after the time limit (1 s) and two grace periods (2 s each) at most
    assert steps["done"] < 300, f"the algorithm ran on ({steps['done']} of 600 steps)"
    assert Task.objects.get(id=task.id).status == Status.TIMED_OUT
