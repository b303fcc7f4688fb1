"""What the worker's watchdog tests (tests/jobs/test_state_races.py, tests/queueing/test_stuck_clock.py)
fake: pool children (Celery's active requests name pids no process has, and their kills are recorded
instead of sent: import ``pool``, the fixture, and ``ActiveRequest``), and this host's wall clock
(``host_clock``)."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone


class ActiveRequest:
    """What the watchdog (``heartbeat._stop_stuck``) reads of Celery's active request of a pool child."""
    name = "jobs.run_task"

    def __init__(self, task_id: Any, pid: int) -> None:
        self.args, self.worker_pid = [str(task_id)], pid


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Fake pool children (pids no process has) in Celery's active requests, and the kills they got."""
    import celery.worker.state

    class Pool:
        active: set[ActiveRequest] = set()
        killed: list[int] = []
        gone: set[int] = set()

    real_kill = os.kill

    def kill(pid: int, sig: int) -> None:
        if pid < 4_000_000:
            return real_kill(pid, sig)
        if pid in Pool.gone:
            raise ProcessLookupError(pid)
        if sig:
            Pool.killed.append(pid)
            Pool.gone.add(pid)

    monkeypatch.setattr(celery.worker.state, "active_requests", Pool.active)
    monkeypatch.setattr(os, "kill", kill)
    return Pool


@contextlib.contextmanager
def host_clock(skew: timedelta) -> Iterator[None]:
    """This host's wall clock ``skew`` off the database's (or stepped by it: NTP, a VM resumed), for what
    runs inside."""
    real = timezone.now
    timezone.now = lambda: real() + skew
    try:
        yield
    finally:
        timezone.now = real
