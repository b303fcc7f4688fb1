"""A killed worker and a wiped broker lose nothing: PostgreSQL knows what should run, the reconciler acts."""
from __future__ import annotations

import time

import pytest
import redis
from django.conf import settings

from jobs.models import Status, Task
from tests.conftest import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def forget_every_broker_message() -> None:
    """FLUSHDB on Redis; on another broker (RabbitMQ) purge the task queues."""
    if settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://", "unix://")):
        redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    else:
        from config.celery import app

        app.control.purge()


def test_kill_9_of_worker_and_flushdb_of_broker_still_finishes_every_task(live_worker, alice, api):
    # given: tasks running and waiting
    client = api(alice)
    body = {"tasks": [{"algorithm": "demo.hello", "params": {"seconds": 2, "steps": 4}} for _ in range(6)]}
    ids = [t["id"] for t in client.post("/api/v1/tasks/batch/", body, format="json").json()["tasks"]]
    wait_until(lambda: Task.objects.filter(id__in=ids, status=Status.RUNNING).count() >= 2,
               message="two tasks running")

    # when: every worker process dies and the broker forgets every message
    live_worker.kill()
    forget_every_broker_message()
    killed_at = time.monotonic()
    live_worker.start()

    # then: all of them finish, each exactly once
    wait_until(lambda: Task.objects.filter(id__in=ids, status=Status.SUCCEEDED).count() == len(ids),
               timeout=90, message="all tasks to succeed after the crash")
    recovery = time.monotonic() - killed_at
    print(f"\nrecovery after kill -9 + FLUSHDB: {recovery:.1f}s for {len(ids)} tasks")
    for task in Task.objects.filter(id__in=ids):
        names = list(task.events.order_by("seq").values_list("event", flat=True))
        assert names.count("task.succeeded") == 1
        # a re-run only ever follows a reap (task.retrying), never overlaps a live run
        starts = [i for i, n in enumerate(names) if n == "task.started"]
        for a, b in zip(starts, starts[1:]):
            assert "task.retrying" in names[a:b], names
