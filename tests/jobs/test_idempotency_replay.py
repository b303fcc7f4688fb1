"""An idempotency key's replay is compared with the request as the client sent it, not with what the
server made of it: the same body still answers 200 with the first task(s) after an operator changed the
queue's default priority, or a deploy changed the algorithm's version or a param's default. Tasks stored
before this (their hash is of the resolved spec) are still replayed, never duplicated."""
from __future__ import annotations

import hashlib
import json

import pytest
from pydantic import BaseModel, ConfigDict

from algorithms import registry
from jobs import services
from jobs.models import Task
from queueing.models import Queue

pytestmark = pytest.mark.django_db


def pre_change_hash(spec: services.TaskSpec) -> str:
    """``Task.request_hash`` as it was written before: of the resolved spec (every field but ``request``)."""
    resolved = {k: v for k, v in spec.__dict__.items() if k != "request"}
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def as_stored_before(task_ids, bodies) -> None:
    """Give tasks the hash the code before this change stored for ``bodies`` (one per task)."""
    for task_id, body in zip(task_ids, bodies):
        Task.objects.filter(id=task_id).update(request_hash=pre_change_hash(services.build_spec(**body)))


def test_a_replay_after_the_queues_default_priority_changed_returns_the_first_task(alice, api):
    client = api(alice)
    Queue.objects.update_or_create(name="other", defaults={"default_priority": 5})
    single = {"algorithm": "demo.noop", "queue": "other"}
    batch = {"tasks": [{"algorithm": "demo.noop", "queue": "other", "labels": ["idem"]}] * 3}
    first = client.post("/api/v1/tasks/", single, format="json", HTTP_IDEMPOTENCY_KEY="one")
    first_batch = client.post("/api/v1/tasks/batch/", batch, format="json", HTTP_IDEMPOTENCY_KEY="many")
    assert (first.status_code, first_batch.status_code) == (201, 201)

    Queue.objects.filter(name="other").update(default_priority=7)  # an operator's change
    again = client.post("/api/v1/tasks/", single, format="json", HTTP_IDEMPOTENCY_KEY="one")
    again_batch = client.post("/api/v1/tasks/batch/", batch, format="json", HTTP_IDEMPOTENCY_KEY="many")

    assert (again.status_code, again_batch.status_code) == (200, 200), (again.content, again_batch.content)
    assert again.json()["id"] == first.json()["id"] and again.json()["priority"] == 5
    assert [t["id"] for t in again_batch.json()["tasks"]] == [t["id"] for t in first_batch.json()["tasks"]]
    assert Task.objects.count() == 4


class V1(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rate: float = 0.1


class V2(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rate: float = 0.01
    epochs: int = 10


def test_a_replay_after_a_deploy_changed_the_version_and_param_defaults_returns_the_first_task(
        alice, api, monkeypatch):
    client = api(alice)

    def fn(ctx, params):
        return None

    monkeypatch.setitem(registry._registry, "t.train", registry.Algorithm(name="t.train", fn=fn, params_model=V1))
    body = {"algorithm": "t.train", "params": {}}
    first = client.post("/api/v1/tasks/", body, format="json", HTTP_IDEMPOTENCY_KEY="train")
    first_batch = client.post("/api/v1/tasks/batch/", {"tasks": [body, body]}, format="json",
                              HTTP_IDEMPOTENCY_KEY="trains")
    assert (first.status_code, first_batch.status_code) == (201, 201)

    monkeypatch.setitem(registry._registry, "t.train", registry.Algorithm(name="t.train", fn=fn, params_model=V2,
                                                                           version="2.0"))
    again = client.post("/api/v1/tasks/", body, format="json", HTTP_IDEMPOTENCY_KEY="train")
    again_batch = client.post("/api/v1/tasks/batch/", {"tasks": [body, body]}, format="json",
                              HTTP_IDEMPOTENCY_KEY="trains")

    assert (again.status_code, again_batch.status_code) == (200, 200), (again.content, again_batch.content)
    assert again.json()["id"] == first.json()["id"]
    assert Task.objects.get(id=first.json()["id"]).params == {"rate": 0.1}  # the first task, as it was made
    assert [t["id"] for t in again_batch.json()["tasks"]] == [t["id"] for t in first_batch.json()["tasks"]]
    assert Task.objects.count() == 3


def test_another_body_under_the_same_key_is_still_a_conflict(alice, api):
    client = api(alice)
    body = {"algorithm": "demo.hello", "params": {"seconds": 1}, "labels": ["a"]}
    assert client.post("/api/v1/tasks/", body, format="json", HTTP_IDEMPOTENCY_KEY="k").status_code == 201
    assert client.post("/api/v1/tasks/batch/", {"tasks": [body]}, format="json",
                       HTTP_IDEMPOTENCY_KEY="b").status_code == 201

    for changed in ({**body, "params": {"seconds": 2}}, {**body, "labels": ["b"]}, {**body, "priority": "high"},
                    {**body, "max_retries": 1}, {**body, "timeout_seconds": 60}, {**body, "queue": "other"}):
        Queue.objects.get_or_create(name="other")
        single = client.post("/api/v1/tasks/", changed, format="json", HTTP_IDEMPOTENCY_KEY="k")
        batch = client.post("/api/v1/tasks/batch/", {"tasks": [changed]}, format="json", HTTP_IDEMPOTENCY_KEY="b")
        assert (single.status_code, batch.status_code) == (409, 409), changed
    assert Task.objects.count() == 2


def test_tasks_stored_before_the_change_are_replayed_not_duplicated(alice, api):
    """Right after the deploy: the stored hash is of the resolved spec; a replay matching it is the same
    request (200 with the first tasks), another body still a 409."""
    client = api(alice)
    body = {"algorithm": "demo.hello", "params": {"seconds": 1}, "priority": "high"}
    items = [{"algorithm": "demo.noop"}, {"algorithm": "demo.hello", "labels": ["x"]}]
    first = client.post("/api/v1/tasks/", body, format="json", HTTP_IDEMPOTENCY_KEY="old").json()
    first_batch = client.post("/api/v1/tasks/batch/", {"tasks": items}, format="json",
                              HTTP_IDEMPOTENCY_KEY="old-batch").json()
    as_stored_before([first["id"]], [body])
    as_stored_before([t["id"] for t in first_batch["tasks"]], items)

    again = client.post("/api/v1/tasks/", body, format="json", HTTP_IDEMPOTENCY_KEY="old")
    again_batch = client.post("/api/v1/tasks/batch/", {"tasks": items}, format="json", HTTP_IDEMPOTENCY_KEY="old-batch")
    other = client.post("/api/v1/tasks/", {**body, "priority": "low"}, format="json", HTTP_IDEMPOTENCY_KEY="old")
    other_batch = client.post("/api/v1/tasks/batch/", {"tasks": items[::-1]}, format="json",
                              HTTP_IDEMPOTENCY_KEY="old-batch")

    assert (again.status_code, again_batch.status_code) == (200, 200), (again.content, again_batch.content)
    assert again.json()["id"] == first["id"]
    assert [t["id"] for t in again_batch.json()["tasks"]] == [t["id"] for t in first_batch["tasks"]]
    assert (other.status_code, other_batch.status_code) == (409, 409)
    assert Task.objects.count() == 3


def test_a_retry_with_the_same_key_returns_the_first_retry_and_another_task_is_a_conflict(alice):
    done = [services.submit(owner=alice, spec=services.build_spec(algorithm="demo.noop"))[0] for _ in range(2)]
    Task.objects.filter(id__in=[t.id for t in done]).update(status="FAILED")

    first, created = services.retry(task_id=done[0].id, by=alice, idempotency_key="r")
    again, created_again = services.retry(task_id=done[0].id, by=alice, idempotency_key="r")

    assert (created, created_again) == (True, False) and again.id == first.id
    with pytest.raises(services.IdempotencyConflict):
        services.retry(task_id=done[1].id, by=alice, idempotency_key="r")
    with pytest.raises(services.IdempotencyConflict):  # a submit is another request than a retry
        services.submit(owner=alice, spec=services.build_spec(algorithm="demo.noop"), idempotency_key="r")
