"""Submitting: validation at the door (4xx naming the field, never a 500) and idempotency keys."""
from __future__ import annotations

import threading

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from jobs.models import Task, TaskEvent

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "algorithm"),
        ({"algorithm": "no.such"}, "algorithm"),
        ({"algorithm": "demo.hello", "params": {"seconds": "soon"}}, "params.seconds"),
        ({"algorithm": "demo.hello", "params": {"seconds": -1}}, "params.seconds"),
        ({"algorithm": "demo.hello", "params": {"colour": "red"}}, "params.colour"),
        ({"algorithm": "demo.hello", "params": [1, 2]}, "params"),
        ({"algorithm": "demo.hello", "priority": "urgent"}, "priority"),
        ({"algorithm": "demo.hello", "priority": 12}, "priority"),
        ({"algorithm": "demo.hello", "priority": True}, "priority"),
        ({"algorithm": "demo.hello", "queue": "nowhere"}, "queue"),
        ({"algorithm": "demo.hello", "timeout_seconds": 0}, "timeout_seconds"),
        ({"algorithm": "demo.hello", "max_retries": -1}, "max_retries"),
        ({"algorithm": "demo.hello", "labels": "x"}, "labels"),
        ({"algorithm": 7}, "algorithm"),
    ],
)
def test_bad_submit_is_400_naming_the_field_and_stores_nothing(alice, api, body, field):
    response = api(alice).post("/api/v1/tasks/", body, format="json")

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert field in error["fields"], error
    assert error["message"]
    assert Task.objects.count() == 0


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b'{"algorithm": "demo.hello",', "application/json"),
        (b"[1, 2, 3]", "application/json"),
        (b"null", "application/json"),
        (b"\xff\xfe", "application/json"),
        (b"algorithm=demo.hello", "text/plain"),
    ],
)
def test_malformed_body_is_4xx_json_never_500(alice, api, raw, content_type):
    response = api(alice).generic("POST", "/api/v1/tasks/", raw, content_type=content_type)

    assert 400 <= response.status_code < 500, response.content
    assert "error" in response.json()
    assert Task.objects.count() == 0


def test_batch_is_all_or_nothing_and_names_the_bad_item(alice, api):
    tasks = [{"algorithm": "demo.noop"}, {"algorithm": "demo.hello", "params": {"seconds": "x"}}]

    response = api(alice).post("/api/v1/tasks/batch/", {"tasks": tasks}, format="json")

    assert response.status_code == 400
    assert "tasks[1].params.seconds" in response.json()["error"]["fields"]
    assert Task.objects.count() == 0


def test_empty_batch_is_400(alice, api):
    response = api(alice).post("/api/v1/tasks/batch/", {"tasks": []}, format="json")
    assert response.status_code == 400
    assert "tasks" in response.json()["error"]["fields"]


def test_unauthenticated_request_is_401_json(db):
    response = APIClient().post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_submit_fills_defaults_from_the_schema_and_names_priorities(alice, api):
    response = api(alice).post("/api/v1/tasks/", {"algorithm": "demo.hello", "priority": "high"}, format="json")

    assert response.status_code == 201
    task = response.json()
    assert task["params"] == {"seconds": 3.0, "steps": 10}
    assert task["priority"] == 8
    assert task["queue"] == "default"


def test_a_submit_reads_its_owner_once_and_answers_with_it(alice, api):
    """The task is written by one statement of the submit's own (``transitions.create``); its answer
    names the owner from the request's user, not from another read of the user table."""
    client = api(alice)
    with CaptureQueriesContext(connection) as queries:
        response = client.post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["owner"] == alice.username
    user_reads = [q["sql"] for q in queries.captured_queries if 'FROM "auth_user"' in str(q["sql"])]
    assert len(user_reads) == 1, user_reads  # the JWT's user lookup


def test_same_idempotency_key_returns_the_same_task(alice, api):
    client = api(alice)
    body = {"algorithm": "demo.noop"}

    first = client.post("/api/v1/tasks/", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    second = client.post("/api/v1/tasks/", body, format="json", HTTP_X_REQUEST_ID="k-1")

    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert Task.objects.count() == 1


def test_same_idempotency_key_with_different_body_is_409(alice, api):
    client = api(alice)
    client.post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json", HTTP_IDEMPOTENCY_KEY="k-2")

    response = client.post("/api/v1/tasks/", {"algorithm": "demo.hello"}, format="json", HTTP_IDEMPOTENCY_KEY="k-2")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_conflict"
    assert Task.objects.count() == 1


def test_idempotency_keys_are_per_user(alice, bob, api):
    a = api(alice).post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json", HTTP_IDEMPOTENCY_KEY="same")
    b = api(bob).post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json", HTTP_IDEMPOTENCY_KEY="same")
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"]


@pytest.mark.django_db(transaction=True)  # the threads need committed rows and their own connections
def test_concurrent_duplicate_submits_make_one_task(alice, api):
    clients = [api(alice) for _ in range(8)]
    barrier = threading.Barrier(len(clients))
    responses: list = []

    def post(client: APIClient) -> None:
        barrier.wait()
        try:
            responses.append(client.post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json",
                                         HTTP_IDEMPOTENCY_KEY="burst"))
        finally:
            connection.close()

    threads = [threading.Thread(target=post, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(r.status_code for r in responses) == [200] * 7 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert Task.objects.filter(idempotency_key="burst").count() == 1


def test_batch_with_idempotency_key_is_replayed_whole(alice, api):
    client = api(alice)
    body = {"tasks": [{"algorithm": "demo.noop"}, {"algorithm": "demo.hello"}]}

    first = client.post("/api/v1/tasks/batch/", body, format="json", HTTP_IDEMPOTENCY_KEY="b-1")
    second = client.post("/api/v1/tasks/batch/", body, format="json", HTTP_IDEMPOTENCY_KEY="b-1")

    assert (first.status_code, second.status_code) == (201, 200)
    assert [t["id"] for t in first.json()["tasks"]] == [t["id"] for t in second.json()["tasks"]]
    assert Task.objects.count() == 2


def test_a_batch_key_reused_with_fewer_or_more_tasks_is_a_conflict(alice, api):
    """Another body under the same key is a 409, also when it is the first batch's beginning."""
    client = api(alice)
    two = {"tasks": [{"algorithm": "demo.noop"}, {"algorithm": "demo.noop"}]}
    assert client.post("/api/v1/tasks/batch/", two, format="json", HTTP_IDEMPOTENCY_KEY="b-2").status_code == 201

    shorter = client.post("/api/v1/tasks/batch/", {"tasks": two["tasks"][:1]}, format="json", HTTP_IDEMPOTENCY_KEY="b-2")
    longer = client.post("/api/v1/tasks/batch/", {"tasks": two["tasks"] * 2}, format="json", HTTP_IDEMPOTENCY_KEY="b-2")

    assert (shorter.status_code, longer.status_code) == (409, 409), (shorter.json(), longer.json())
    assert shorter.json()["error"]["code"] == "idempotency_conflict"
    assert Task.objects.count() == 2


def test_the_same_priority_again_changes_nothing_and_keeps_the_tasks_turn(alice, api):
    """No ``task.priority_changed`` (no webhook, no dashboard event) and no new round-robin place."""
    from queueing.models import Queue

    Queue.objects.update_or_create(name="held-prio", defaults={"paused": True})
    client = api(alice)
    task_id = client.post("/api/v1/tasks/", {"algorithm": "demo.noop", "queue": "held-prio", "priority": 7},
                          format="json").json()["id"]
    before = Task.objects.get(id=task_id)

    response = client.patch(f"/api/v1/tasks/{task_id}/priority/", {"priority": 7}, format="json")

    assert response.status_code == 200 and response.json()["priority"] == 7
    after = Task.objects.get(id=task_id)
    assert (after.last_seq, after.fair_seq) == (before.last_seq, before.fair_seq)
    assert not TaskEvent.objects.filter(task_id=task_id, event="task.priority_changed").exists()
    assert client.patch(f"/api/v1/tasks/{task_id}/priority/", {"priority": 8}, format="json").json()["priority"] == 8
    assert TaskEvent.objects.filter(task_id=task_id, event="task.priority_changed").count() == 1
