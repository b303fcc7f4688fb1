"""A task handed to the broker (QUEUED) that no worker has started is waiting, from the operator's view:
the queue's ``waiting`` and oldest wait count it, its waiting list shows it (first: it was dispatched
before every PENDING task), and /metrics agrees. Reorder still moves only PENDING tasks."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from jobs.models import Status, Task
from tests.queueing.conftest import make_queue

pytestmark = pytest.mark.django_db


def submit(client, queue: str = "adm1", **extra) -> str:
    response = client.post("/api/v1/tasks/", {"algorithm": "demo.noop", "queue": queue, **extra}, format="json")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def depth(client, queue: str) -> float:
    text = client.get("/metrics").content.decode()
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "conveyor_queue_depth" and s.labels == {"queue": queue})


def test_a_queue_without_a_worker_shows_its_queued_task_waiting(alice, olga, api):
    """The reviewer's case: no worker consumes ``adm1``; the submit is QUEUED at once (no_worker). The
    queue view said ``waiting: 0``, no oldest wait and an empty list while /metrics said depth 1."""
    make_queue("adm1")
    client, ops = api(alice), api(olga)
    task_id = submit(client)
    Task.objects.filter(id=task_id).update(created_at=timezone.now() - timedelta(seconds=12))
    detail = client.get(f"/api/v1/tasks/{task_id}/").json()
    assert detail["status"] == "QUEUED" and detail["waiting"]["reason"] == "no_worker"

    queue = ops.get("/api/v1/queues/adm1/").json()
    assert queue["counts"] == {"PENDING": 0, "QUEUED": 1, "RUNNING": 0}
    assert queue["waiting"] == 1 == depth(ops, "adm1")
    assert queue["has_live_worker"] is False
    assert queue["oldest_waiting_seconds"] is not None and queue["oldest_waiting_seconds"] >= 12

    listing = ops.get("/api/v1/queues/adm1/tasks/").json()
    assert listing["queue"]["waiting"] == 1
    assert [(t["id"], t["status"], t["waiting"]["position"], t["waiting"]["reason"]) for t in listing["tasks"]] == [
        (task_id, "QUEUED", 0, "no_worker")]
    assert [t["id"] for t in client.get("/api/v1/queues/adm1/tasks/").json()["tasks"]] == [task_id]  # its owner

    # The waiting list shows it, but reorder still moves PENDING tasks only.
    response = ops.post("/api/v1/queues/adm1/reorder/", {"task_ids": [task_id]}, format="json")
    assert response.status_code == 409 and response.json()["error"]["code"] == "not_waiting"
    response = ops.post("/api/v1/queues/adm1/reorder/", {"task_id": task_id, "position": 1}, format="json")
    assert response.status_code == 409 and response.json()["error"]["code"] == "not_waiting"


def test_queued_tasks_come_first_then_pending_in_start_order_across_pages(alice, bob, olga, api):
    make_queue("adm1", concurrency=2)
    a_client, b_client, ops = api(alice), api(bob), api(olga)
    first, second = submit(a_client), submit(b_client)  # the two slots: QUEUED in the broker
    pending = [submit(a_client), submit(b_client), submit(a_client)]
    assert [Task.objects.get(id=i).status for i in (first, second, *pending)] == ["QUEUED"] * 2 + ["PENDING"] * 3
    Task.objects.filter(id=pending[0]).update(created_at=timezone.now() - timedelta(minutes=5))  # oldest: PENDING

    queue = ops.get("/api/v1/queues/adm1/").json()
    assert queue["waiting"] == 5 == depth(ops, "adm1")
    assert queue["oldest_waiting_seconds"] >= 299

    def page(client, **params) -> list[tuple[str, int]]:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return [(t["id"], t["waiting"]["position"]) for t in
                client.get(f"/api/v1/queues/adm1/tasks/?{query}").json()["tasks"]]

    everything = page(ops)
    assert everything[2:] == [(pending[0], 1), (pending[1], 2), (pending[2], 3)]
    assert {i for i, _ in everything[:2]} == {first, second} and {p for _, p in everything[:2]} == {0}
    assert page(ops, limit=1) + page(ops, offset=1, limit=2) + page(ops, offset=3) == everything
    assert page(ops, offset=2, limit=1) == [(pending[0], 1)]
    # a plain user: their own tasks, QUEUED first, PENDING with their real positions
    assert page(a_client) == [(first, 0), (pending[0], 1), (pending[2], 3)]
    assert page(a_client, offset=1) == [(pending[0], 1), (pending[2], 3)]
    assert page(b_client) == [(second, 0), (pending[1], 2)]


def test_the_oldest_wait_counts_a_queued_task_submitted_first(alice, olga, api):
    make_queue("adm1", concurrency=1)
    client = api(alice)
    queued = submit(client)
    submit(client)
    Task.objects.filter(id=queued).update(created_at=timezone.now() - timedelta(minutes=2))
    assert Task.objects.get(id=queued).status == Status.QUEUED
    body = api(olga).get("/api/v1/queues/adm1/").json()
    assert body["waiting"] == 2
    assert body["oldest_waiting_seconds"] >= 119
