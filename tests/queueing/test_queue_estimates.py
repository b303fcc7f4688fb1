"""A queue's throughput and the start estimates made from it, as an operator reads them through the API:
only tasks that ran count (a bulk cancel of waiting tasks is not throughput), and a task held back by
its owner's cap has no estimate (when it starts depends on the owner's own tasks finishing)."""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from jobs.models import Status, Task
from tests.queueing.conftest import make_queue
from tests.queueing.test_queue_api import live_worker_row, submit

pytestmark = pytest.mark.django_db


def seconds_until(stamp: str) -> float:
    return (datetime.fromisoformat(stamp.replace("Z", "+00:00")) - timezone.now()).total_seconds()


def test_cancelled_tasks_that_never_ran_are_not_throughput_nor_speed_up_the_estimate(alice, olga, api):
    """The reviewer's case: concurrency 1, one long task running, one finish in the 5-minute window
    (0.2/min: the third waiting task ~15 min away). Bulk-cancelling 60 waiting junk tasks must leave both
    the throughput and the estimate alone; ``finished_recently`` still reports the cancels."""
    make_queue("q1", concurrency=1)
    live_worker_row(["q1"])
    client = api(alice)
    now = timezone.now()
    done = submit(client)
    Task.objects.filter(id=done).update(status=Status.SUCCEEDED, started_at=now - timedelta(minutes=1),
                                        finished_at=now)
    running = submit(client)
    Task.objects.filter(id=running).update(status=Status.RUNNING, started_at=now)
    waiting = [submit(client) for _ in range(3)]
    junk = client.post("/api/v1/tasks/batch/", {"tasks": [{"algorithm": "demo.noop", "queue": "q1",
                                                           "labels": ["eta-junk"]}] * 60}, format="json")
    assert junk.status_code == 201, junk.content

    before = client.get("/api/v1/queues/q1/").json()
    assert before["throughput_per_minute"] == 0.2
    third = client.get(f"/api/v1/tasks/{waiting[2]}/").json()["waiting"]
    assert third["position"] == 3
    assert seconds_until(third["estimated_start"]) > 800  # 3 starts at one per 300 s: ~900 s

    cancelled = api(olga).post("/api/v1/tasks/cancel/", {"filters": {"label": "eta-junk"}}, format="json")
    assert cancelled.status_code == 200, cancelled.content
    assert Task.objects.filter(labels__contains=["eta-junk"], status=Status.CANCELLED).count() == 60

    after = client.get("/api/v1/queues/q1/").json()
    assert after["finished_recently"] == {"SUCCEEDED": 1, "CANCELLED": 60}  # every finish, as before
    assert after["throughput_per_minute"] == 0.2  # only the one that ran
    third = client.get(f"/api/v1/tasks/{waiting[2]}/").json()["waiting"]
    assert third["position"] == 3
    assert seconds_until(third["estimated_start"]) > 800, third
    listing = client.get("/api/v1/queues/q1/tasks/").json()["tasks"]
    assert [t["id"] for t in listing] == waiting
    assert seconds_until(listing[2]["waiting"]["estimated_start"]) > 800


def test_a_task_cancelled_while_it_ran_still_counts(alice, api):
    """It took the slot for a while: it is throughput like any other finish of a started task."""
    make_queue("q1", concurrency=1)
    live_worker_row(["q1"])
    client = api(alice)
    now = timezone.now()
    for status in (Status.SUCCEEDED, Status.CANCELLED, Status.FAILED):
        Task.objects.filter(id=submit(client)).update(status=status, started_at=now, finished_at=now)
    Task.objects.filter(id=submit(client)).update(status=Status.CANCELLED, finished_at=now)  # never ran
    body = client.get("/api/v1/queues/q1/").json()
    assert body["finished_recently"] == {"SUCCEEDED": 1, "CANCELLED": 2, "FAILED": 1}
    assert body["throughput_per_minute"] == 0.6  # 3 in 300 s


def test_a_task_held_by_its_owners_cap_has_no_estimated_start(alice, bob, api):
    """Free slots in the queue, but the owner already has ``user_concurrency`` tasks in flight: the task
    cannot start when the queue has room, so "now" would be wrong on every read."""
    make_queue("q1", concurrency=3, user_concurrency=1)
    live_worker_row(["q1"])
    client = api(alice)
    now = timezone.now()
    for _ in range(3):  # some recent throughput, so that the estimate is not null for lack of it
        Task.objects.filter(id=submit(client)).update(status=Status.SUCCEEDED, started_at=now, finished_at=now)
    first = submit(client)
    assert Task.objects.get(id=first).status == Status.QUEUED  # alice's one slot
    held = submit(client)
    detail = client.get(f"/api/v1/tasks/{held}/").json()["waiting"]
    assert detail["reason"] == "owner_cap_reached"
    assert detail["estimated_start"] is None
    [row] = [t for t in client.get("/api/v1/queues/q1/tasks/").json()["tasks"] if t["id"] == held]
    assert row["waiting"]["reason"] == "owner_cap_reached" and row["waiting"]["estimated_start"] is None

    # another owner's task in the same queue has room and keeps its estimate
    other = submit(api(bob))
    Task.objects.filter(id=other).update(status=Status.PENDING)  # as if not dispatched yet
    detail = api(bob).get(f"/api/v1/tasks/{other}/").json()["waiting"]
    assert detail["reason"] != "owner_cap_reached" and detail["estimated_start"] is not None
