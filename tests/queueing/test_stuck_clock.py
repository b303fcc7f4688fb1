"""A worker's stuck detection (``progress_timeout``) is timed by its host's monotonic clock
(``reconciler.stuck_running``): after an NTP step forward of an hour on a worker host, every healthy task
running there looked an hour without progress by the wall clock, and its watchdog killed it and ran it again
("no progress for 3s (progress_timeout)"); after a step back, a stuck task was not found for an hour."""
from __future__ import annotations

import dataclasses
import time
from datetime import timedelta
from typing import Any

import pytest

from algorithms import registry
from jobs import execution
from jobs.models import Status, Task, TaskEvent
from queueing import heartbeat
from tests.conftest import queued_tasks
from tests.fake_pool import ActiveRequest, host_clock, pool  # noqa: F401 (pool: a fixture)

HOST = "celery@stuck-clock"


def _timeout(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """``demo.stall`` with a ``progress_timeout`` of ``seconds`` (in this process: its watchdog's registry)."""
    monkeypatch.setitem(registry._registry, "demo.stall",
                        dataclasses.replace(registry.get("demo.stall"), progress_timeout=seconds))


def _running(owner: Any, pool: Any, pid: int) -> Task:
    """A ``demo.stall`` task running on HOST in the pool child ``pid``, which reported progress just now."""
    task = queued_tasks(owner, 1, algorithm="demo.stall", max_retries=3)[0]
    claimed = execution.claim(task_id=task.id, worker=HOST)
    assert _progress(claimed, 10)
    pool.active.add(ActiveRequest(task.id, pid))
    return claimed


def _progress(task: Task, percent: float) -> bool:
    """A report of the run ``task`` is; False once that run was stopped."""
    return execution.report_progress(task_id=task.id, percent=percent, stage="work", message="", metrics={},
                                     claimed_at=task.started_at)


def _seen_as(task: Task) -> tuple[str, str]:
    row = Task.objects.get(id=task.id)
    return row.status, row.error


def test_a_healthy_task_is_not_stopped_when_its_workers_clock_steps_an_hour_forward(alice, pool):
    running = _running(alice, pool, 4_100_001)  # demo.stall: progress_timeout 3 s
    heartbeat._stop_stuck(HOST)  # the watchdog's beat before the step

    with host_clock(timedelta(hours=1)):
        heartbeat._stop_stuck(HOST)
        _progress(running, 20)  # stamped by the stepped clock
        heartbeat._stop_stuck(HOST)

    assert pool.killed == []
    assert _seen_as(running) == (Status.RUNNING, "")


def test_a_task_whose_start_and_progress_read_an_hour_old_is_not_stopped_by_its_watchdog(alice, pool, monkeypatch):
    """Its claim and last report written an hour in the past by this host's clock (it stepped forward since):
    the watchdog, which has seen it for less than its progress_timeout, leaves it running."""
    _timeout(monkeypatch, 60)
    running = _running(alice, pool, 4_100_002)
    an_hour = timedelta(hours=1)
    Task.objects.filter(id=running.id).update(started_at=running.started_at - an_hour)
    last = TaskEvent.objects.filter(task_id=running.id, event="task.progress").get()
    TaskEvent.objects.filter(id=last.id).update(created_at=last.created_at - an_hour)

    heartbeat._stop_stuck(HOST)
    heartbeat._stop_stuck(HOST)

    assert pool.killed == []
    assert _seen_as(running) == (Status.RUNNING, "")


def test_a_task_reporting_progress_runs_on_and_is_stopped_once_its_progress_stops(alice, pool, monkeypatch):
    _timeout(monkeypatch, 1)
    running = _running(alice, pool, 4_100_003)
    for percent in (20, 30, 40):  # 1.8 s in all, a report every 0.6 s
        heartbeat._stop_stuck(HOST)
        time.sleep(0.6)
        assert _progress(running, percent)
    heartbeat._stop_stuck(HOST)
    assert pool.killed == [] and _seen_as(running) == (Status.RUNNING, "")

    time.sleep(1.3)  # no report since
    heartbeat._stop_stuck(HOST)

    assert pool.killed == [4_100_003]
    status, error = _seen_as(running)
    assert status in (Status.PENDING, Status.QUEUED)
    assert error == "no progress for 1s (progress_timeout); its process was stopped"


def test_a_stuck_task_is_still_stopped_when_its_workers_clock_steps_an_hour_back(alice, pool, monkeypatch):
    _timeout(monkeypatch, 1)
    running = _running(alice, pool, 4_100_004)
    heartbeat._stop_stuck(HOST)

    with host_clock(-timedelta(hours=1)):
        time.sleep(1.3)
        heartbeat._stop_stuck(HOST)

    assert pool.killed == [4_100_004]
    assert _seen_as(running)[1] == "no progress for 1s (progress_timeout); its process was stopped"
