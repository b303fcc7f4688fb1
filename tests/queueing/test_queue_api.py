"""Queue API: listing numbers, operator-only writes, pause/resume events, "why is my task waiting"."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.utils import timezone

from jobs.models import Status, Task
from queueing import dispatch
from queueing.models import WorkerRecord
from tests.queueing.conftest import make_queue

pytestmark = pytest.mark.django_db


def submit(client, queue: str = "q1", priority=5, **extra) -> str:
    response = client.post("/api/v1/tasks/", {"algorithm": "demo.noop", "queue": queue, "priority": priority, **extra},
                           format="json")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def live_worker_row(queues: list[str]) -> WorkerRecord:
    now = timezone.now()
    return WorkerRecord.objects.create(hostname="w1@test", queues=queues, concurrency=2, started_at=now,
                                       last_heartbeat=now)


def test_plain_users_get_403_on_every_operator_endpoint(alice, api):
    make_queue("q1")
    client = api(alice)
    assert client.get("/api/v1/queues/").status_code == 200
    assert client.get("/api/v1/queues/q1/").status_code == 200
    for method, url, body in [
        ("patch", "/api/v1/queues/q1/", {"concurrency": 3}),
        ("post", "/api/v1/queues/q1/pause/", None),
        ("post", "/api/v1/queues/q1/resume/", None),
        ("post", "/api/v1/queues/q1/reorder/", {"task_ids": []}),
        ("get", "/api/v1/workers/", None),
        ("post", "/api/v1/workers/w1@test/shutdown/", None),
        ("get", "/api/v1/system/stats/", None),
    ]:
        response = getattr(client, method)(url, body, format="json")
        assert response.status_code == 403, (url, response.content)
        assert response.json()["error"]["code"] == "permission_denied"


def test_queue_listing_shows_counts_oldest_wait_and_throughput(olga, alice, api):
    make_queue("q1", concurrency=2, paused=True)
    client = api(alice)
    first = submit(client)
    submit(client)
    Task.objects.filter(id=first).update(created_at=timezone.now() - timedelta(seconds=90))
    done = Task.objects.get(id=submit(client))
    Task.objects.filter(id=done.id).update(status=Status.SUCCEEDED, started_at=timezone.now(),
                                           finished_at=timezone.now())

    body = client.get("/api/v1/queues/q1/").json()
    assert body["paused"] is True and body["concurrency"] == 2
    assert body["counts"] == {"PENDING": 2, "QUEUED": 0, "RUNNING": 0}
    assert body["waiting"] == 2 and body["running"] == 0
    assert 89 <= body["oldest_waiting_seconds"] < 200
    assert body["finished_recently"] == {"SUCCEEDED": 1}
    assert body["throughput_per_minute"] > 0
    assert body["has_live_worker"] is False
    names = [q["name"] for q in client.get("/api/v1/queues/").json()]
    assert "q1" in names
    assert client.get("/api/v1/queues/nope/").status_code == 404


def test_operator_patches_queue_settings_with_validation(olga, api):
    make_queue("q1")
    client = api(olga)
    response = client.patch("/api/v1/queues/q1/", {"concurrency": 3, "default_priority": "high",
                                                   "description": "gpu box", "user_concurrency": 1}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["concurrency"], body["default_priority"], body["description"], body["user_concurrency"]) == (3, 8, "gpu box", 1)
    assert client.patch("/api/v1/queues/q1/", {"concurrency": 0}, format="json").status_code == 400
    assert client.patch("/api/v1/queues/q1/", {"default_priority": 12}, format="json").status_code == 400
    # The queue's default priority applies to new tasks that name none.
    response = client.post("/api/v1/tasks/", {"algorithm": "demo.noop", "queue": "q1"}, format="json")
    assert response.json()["priority"] == 8


def test_a_patch_naming_a_field_it_cannot_change_is_400_and_changes_nothing(olga, api):
    """``{"paused": true}`` used to answer 200 and leave the queue running."""
    make_queue("q2")
    client = api(olga)
    response = client.patch("/api/v1/queues/q2/", {"paused": True, "concurrency": 5}, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert "pause/" in error["fields"]["paused"][0]
    body = client.get("/api/v1/queues/q2/").json()
    assert (body["paused"], body["concurrency"]) == (False, 8)


async def _receive_queue_events(action, count: int) -> list[dict]:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("queues.all", channel)
    try:
        await sync_to_async(action, thread_sensitive=False)()
        return [(await asyncio.wait_for(layer.receive(channel), 5))["payload"] for _ in range(count)]
    finally:
        await layer.group_discard("queues.all", channel)


@pytest.mark.django_db(transaction=True)
def test_pause_and_resume_publish_queue_events_once(olga, api):
    make_queue("q1")
    client = api(olga)

    def act() -> None:
        try:
            assert client.post("/api/v1/queues/q1/pause/").json()["paused"] is True
            assert client.post("/api/v1/queues/q1/pause/").status_code == 200  # already paused: no second event
            assert client.post("/api/v1/queues/q1/resume/").json()["paused"] is False
        finally:
            connection.close()  # this ran on a worker thread with its own connection

    events = asyncio.run(_receive_queue_events(act, 2))
    assert [(e["event"], e["queue"], e["paused"], e["data"]["by"]) for e in events] == [
        ("queue.paused", "q1", True, "olga"), ("queue.resumed", "q1", False, "olga")]


def test_why_waiting_names_each_reason(alice, bob, api):
    make_queue("q1", concurrency=1, paused=True)
    a_client = api(alice)
    t1 = submit(a_client)

    def waiting(task_id: str, client=a_client) -> dict:
        return client.get(f"/api/v1/tasks/{task_id}/").json()["waiting"]

    assert waiting(t1)["reason"] == "queue_paused" and waiting(t1)["estimated_start"] is None
    make_queue("q1", paused=False)
    assert waiting(t1)["reason"] == "no_worker"
    live_worker_row(["q1"])
    assert waiting(t1) | {"estimated_start": None} == {
        "position": 1, "reason": "dispatching", "message": "being handed to a worker", "estimated_start": None,
        "not_before": None}

    t2 = submit(a_client)
    dispatch.dispatch(["q1"])  # t1 takes the only slot
    assert waiting(t1)["reason"] == "queued" and waiting(t1)["position"] == 0
    assert waiting(t2)["reason"] == "queue_concurrency_full" and waiting(t2)["position"] == 1

    later = timezone.now() + timedelta(minutes=5)
    Task.objects.filter(id=t2).update(not_before=later)
    assert waiting(t2)["reason"] == "backing_off"

    # the owner's cap: alice holds her one slot; bob's task is started ahead of her next one
    make_queue("q1", concurrency=3, user_concurrency=1)
    Task.objects.filter(id=t2).update(not_before=None)
    b_client = api(bob)
    b1 = submit(b_client)
    assert waiting(t2)["reason"] == "owner_cap_reached"
    assert dispatch.dispatch(["q1"]) == 0  # bob's submit found the room and dispatched his task itself
    assert Task.objects.get(id=b1).status == Status.QUEUED
    assert Task.objects.get(id=t2).status == Status.PENDING


def test_estimated_start_follows_recent_throughput(alice, api):
    make_queue("q1", concurrency=1)
    live_worker_row(["q1"])
    client = api(alice)
    now = timezone.now()
    for _ in range(10):  # 10 finishes in the 5-minute window: 2 per minute
        t = Task.objects.get(id=submit(client))
        Task.objects.filter(id=t.id).update(status=Status.SUCCEEDED, started_at=now, finished_at=now)
    running = submit(client)
    Task.objects.filter(id=running).update(status=Status.RUNNING)
    waiting_ids = [submit(client) for _ in range(4)]
    listing = client.get("/api/v1/queues/q1/tasks/").json()
    assert [t["id"] for t in listing["tasks"]] == waiting_ids
    starts = [t["waiting"]["estimated_start"] for t in listing["tasks"]]
    assert all(starts) and starts == sorted(starts)
    third = client.get(f"/api/v1/tasks/{waiting_ids[2]}/").json()["waiting"]
    assert third["position"] == 3
    # 10 finishes in 300 s: one start every 30 s, and the only slot is busy → about 90 s from now.
    eta = (datetime.fromisoformat(third["estimated_start"].replace("Z", "+00:00")) - timezone.now()).total_seconds()
    assert 80 <= eta <= 95, eta


def test_users_see_only_their_own_tasks_in_the_queue_listing_with_real_positions(alice, bob, olga, api):
    make_queue("q1", paused=True)
    a = submit(api(alice))
    b = submit(api(bob))
    mine = api(bob).get("/api/v1/queues/q1/tasks/").json()["tasks"]
    assert [(t["id"], t["waiting"]["position"]) for t in mine] == [(b, 2)]
    everyone = api(olga).get("/api/v1/queues/q1/tasks/").json()["tasks"]
    assert [t["id"] for t in everyone] == [a, b]


def test_liveness_check_marks_a_silent_worker_lost_once(olga, api):
    from queueing import reconciler

    record = live_worker_row(["q1"])
    WorkerRecord.objects.filter(id=record.id).update(last_heartbeat=timezone.now() - timedelta(minutes=5))
    assert reconciler.check_workers() == 1
    assert reconciler.check_workers() == 0
    [row] = api(olga).get("/api/v1/workers/").json()
    assert (row["hostname"], row["alive"], row["status"]) == ("w1@test", False, "dead")


def test_a_worker_gone_for_a_week_is_forgotten(olga, api):
    """Each pod of a Deployment has a hostname of its own: the gone ones were listed, and counted ``dead`` by
    /metrics (what operators alert on), for ever."""
    from queueing import reconciler

    week = timedelta(seconds=reconciler.FORGET_WORKERS_AFTER)
    gone = live_worker_row(["q1"])
    long_ago = timezone.now() - week - timedelta(minutes=1)
    WorkerRecord.objects.filter(id=gone.id).update(hostname="gone@test", last_heartbeat=long_ago, lost_at=long_ago)
    recent = live_worker_row(["q1"])
    WorkerRecord.objects.filter(id=recent.id).update(last_heartbeat=timezone.now() - week + timedelta(hours=1))

    reconciler.check_workers()

    assert [row["hostname"] for row in api(olga).get("/api/v1/workers/").json()] == ["w1@test"]


def test_maintained_queue_counts_follow_every_change_and_roll_back(alice, api):
    from django.db import transaction

    from queueing.selectors import queue_state

    make_queue("q1", paused=True)
    make_queue("q2", paused=True)
    client = api(alice)
    ids = [submit(client) for _ in range(5)]
    batch = client.post("/api/v1/tasks/batch/", {"tasks": [{"algorithm": "demo.noop", "queue": "q1"}] * 3},
                        format="json")
    assert batch.status_code == 201
    Task.objects.filter(id__in=ids[:2]).update(status=Status.QUEUED)
    Task.objects.filter(id=ids[2]).update(status=Status.RUNNING)
    Task.objects.filter(id=ids[3]).update(status=Status.SUCCEEDED)
    Task.objects.filter(id=ids[4]).update(queue="q2")
    Task.objects.filter(id=ids[0]).update(heartbeat_at=timezone.now())  # no status change: no delta
    try:
        with transaction.atomic():
            Task.objects.filter(queue="q1").update(status=Status.CANCELLED)
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    Task.objects.filter(id=ids[1]).delete()

    def truth(name: str) -> dict[str, int]:
        return {s: Task.objects.filter(queue=name, status=s).count() for s in ("PENDING", "QUEUED", "RUNNING")}

    assert queue_state("q1").counts == truth("q1") == {"PENDING": 3, "QUEUED": 1, "RUNNING": 1}
    assert queue_state("q2").counts == truth("q2") == {"PENDING": 1, "QUEUED": 0, "RUNNING": 0}


def test_a_live_worker_idle_while_its_queue_waits_is_flagged(alice, olga, api):
    make_queue("q1")
    live_worker_row(["q1"])
    task_id = submit(api(alice))

    def flagged() -> bool:
        return api(olga).get("/api/v1/workers/").json()[0]["idle_while_queue_waits"]

    assert flagged() is False
    Task.objects.filter(id=task_id).update(status=Status.QUEUED, queued_at=timezone.now() - timedelta(minutes=2))
    assert flagged() is True
