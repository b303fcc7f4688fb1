"""A cancelled task whose algorithm ignores the cancel, on a worker whose pool cannot kill it (solo, as
for GPUs, or threads): after the grace period its state is recorded and its thread interrupted, so the
worker is free again, and the error says what happened. Before, the task read "was terminated" while it
ran on to its end, holding the solo worker (and its GPU) meanwhile.

The run happens in this test's own thread, which is not a prefork pool child: what a solo pool does."""
from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from jobs import services
from jobs.models import Status, Task
from tests.jobs.test_nul_output import run_once

pytestmark = pytest.mark.django_db(transaction=True)


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
    steps = {"done": 0}

    def swallows(ctx, params):
        threading.Timer(0.3, cancel, args=(ctx.task_id,)).start()
        for _ in range(600):
            try:
                time.sleep(0.05)
                steps["done"] += 1
            except Exception:  # noqa: BLE001 — what some algorithms do around each step
                pass

    task = run_once(alice, monkeypatch, swallows, max_retries=0)

    assert steps["done"] < 600, "the algorithm ran to its end"
    assert Task.objects.get(id=task.id).status == Status.CANCELLED
