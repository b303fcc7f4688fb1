"""Queue control with real worker processes: the start order, pause holding brokered tasks,
concurrency across two workers, the worker registry and remote control."""
from __future__ import annotations

from datetime import datetime

import pytest

from jobs.models import Status, Task
from tests.conftest import wait_until
from tests.queueing.conftest import make_queue

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
FINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}


def submit(client, label: str, priority, queue: str = "default", seconds: float = 0.2) -> str:
    body = {"algorithm": "demo.sleep", "params": {"seconds": seconds}, "priority": priority, "queue": queue,
            "labels": [label]}
    response = client.post("/api/v1/tasks/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def all_final(client, ids: list[str], timeout: float = 60.0) -> list[dict]:
    def check():
        bodies = [client.get(f"/api/v1/tasks/{i}/").json() for i in ids]
        return all(b["status"] in FINAL for b in bodies) and bodies
    return wait_until(check, timeout=timeout, message="tasks to finish")


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def assert_never_overlapping(bodies: list[dict]) -> None:
    spans = sorted((ts(b["started_at"]), ts(b["finished_at"])) for b in bodies)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, f"two tasks ran at once: {spans}"


def test_issue_example_start_order_is_d_b_a_c_on_a_real_worker(live_worker, olga, api):
    client = api(olga)
    make_queue("default")
    assert client.patch("/api/v1/queues/default/", {"concurrency": 1}, format="json").status_code == 200
    assert client.post("/api/v1/queues/default/pause/").json()["paused"] is True
    ids = {"a": submit(client, "a", 1), "b": submit(client, "b", 9), "c": submit(client, "c", 5),
           "d": submit(client, "d", 5)}
    assert client.patch(f"/api/v1/tasks/{ids['a']}/priority/", {"priority": 8}, format="json").status_code == 200
    assert client.post("/api/v1/queues/default/reorder/", {"task_ids": [ids["d"]]}, format="json").status_code == 200

    shown = client.get("/api/v1/queues/default/tasks/").json()["tasks"]
    assert [t["labels"][0] for t in shown] == ["d", "b", "a", "c"]
    assert {t["waiting"]["reason"] for t in shown} == {"queue_paused"}
    detail = client.get(f"/api/v1/tasks/{ids['a']}/").json()
    assert detail["waiting"]["position"] == 3 and detail["waiting"]["reason"] == "queue_paused"

    assert client.post("/api/v1/queues/default/resume/").json()["paused"] is False
    bodies = all_final(client, list(ids.values()))
    assert all(b["status"] == "SUCCEEDED" for b in bodies)
    started = sorted(bodies, key=lambda b: b["started_at"])
    assert [b["labels"][0] for b in started] == ["d", "b", "a", "c"]
    assert_never_overlapping(bodies)
    assert client.get(f"/api/v1/tasks/{ids['a']}/").json()["waiting"] is None


def test_pause_holds_tasks_already_handed_to_the_broker(live_worker, olga, alice, api):
    """Tasks of a queue no worker consumes sit QUEUED in the broker; the queue is paused (they go back to
    PENDING); then a worker starts consuming it (remote control): it drops their messages, runs nothing."""
    ops, client = api(olga), api(alice)
    make_queue("held", concurrency=4)
    ids = [submit(client, f"h{i}", 5, queue="held") for i in range(3)]
    wait_until(lambda: Task.objects.filter(id__in=ids, status=Status.QUEUED).count() == 3, message="QUEUED")
    waiting = client.get(f"/api/v1/tasks/{ids[0]}/").json()["waiting"]
    assert waiting["reason"] == "no_worker"  # in the broker, but nothing consumes "held" yet
    assert ops.post("/api/v1/queues/held/pause/").status_code == 200

    worker = wait_until(lambda: [w for w in ops.get("/api/v1/workers/").json() if w["alive"]],
                        message="a live worker")[0]["hostname"]
    response = ops.post(f"/api/v1/workers/{worker}/add_consumer/", {"queue": "held"}, format="json")
    assert response.status_code == 202, response.content
    try:
        wait_until(lambda: "held" in next(w for w in ops.get("/api/v1/workers/").json()
                                          if w["hostname"] == worker)["queues"], message="held consumed")
        wait_until(lambda: Task.objects.filter(id__in=ids, status=Status.PENDING).count() == 3,
                   message="tasks handed back to PENDING")
        assert not Task.objects.filter(id__in=ids, started_at__isnull=False).exists()
        listing = client.get("/api/v1/queues/held/tasks/").json()["tasks"]
        assert [t["waiting"]["reason"] for t in listing] == ["queue_paused"] * 3

        assert ops.post("/api/v1/queues/held/resume/").status_code == 200
        assert all(b["status"] == "SUCCEEDED" for b in all_final(client, ids))
    finally:
        ops.post(f"/api/v1/workers/{worker}/cancel_consumer/", {"queue": "held"}, format="json")
    wait_until(lambda: "held" not in next(w for w in ops.get("/api/v1/workers/").json()
                                          if w["hostname"] == worker)["queues"], message="held no longer consumed")


def test_concurrency_one_is_never_exceeded_with_two_workers(live_worker, extra_worker, olga, alice, api):
    make_queue("solo", concurrency=1)
    solo_a = extra_worker("solo", 2, tag="solo-a")
    solo_b = extra_worker("solo", 2, tag="solo-b")
    client = api(alice)
    ids = [submit(client, f"s{i}", 5, queue="solo", seconds=0.15) for i in range(8)]
    bodies = all_final(client, ids)
    assert all(b["status"] == "SUCCEEDED" for b in bodies)
    # Which worker takes each message is the broker's choice (nothing promises both get one); the window
    # is the dispatcher's, so it holds however the tasks were spread over the two workers' four slots.
    assert {b["worker"] for b in bodies} <= {solo_a.hostname, solo_b.hostname}
    assert_never_overlapping(bodies)


def test_workers_endpoint_shows_pool_changes_and_is_operators_only(live_worker, extra_worker, olga, alice, api):
    ops = api(olga)
    worker = extra_worker("spare", 1, tag="spare")
    assert api(alice).get("/api/v1/workers/").status_code == 403
    assert api(alice).post(f"/api/v1/workers/{worker.hostname}/pool_grow/").status_code == 403

    def row():
        return next((w for w in ops.get("/api/v1/workers/").json() if w["hostname"] == worker.hostname), None)

    first = wait_until(row, message="the worker registers")
    assert first["alive"] and first["queues"] == ["spare"] and first["concurrency"] == 1
    assert first["version"].startswith("celery ") and first["running"] == 0

    assert ops.post(f"/api/v1/workers/{worker.hostname}/pool_grow/", {"n": 2}, format="json").status_code == 202
    wait_until(lambda: row()["concurrency"] == 3, message="pool grown to 3")
    assert ops.post(f"/api/v1/workers/{worker.hostname}/pool_shrink/").status_code == 202
    wait_until(lambda: row()["concurrency"] == 2, message="pool shrunk to 2")
    assert ops.post("/api/v1/workers/nobody@nowhere/pool_grow/").status_code == 404
    assert ops.post(f"/api/v1/workers/{worker.hostname}/explode/").status_code == 400

    assert ops.post(f"/api/v1/workers/{worker.hostname}/shutdown/").status_code == 202
    wait_until(lambda: worker.proc.poll() is not None, message="the worker exits")
    gone = wait_until(lambda: (r := row()) and not r["alive"] and r, message="worker shown as not alive")
    assert gone["status"] in {"stopped", "dead"}
