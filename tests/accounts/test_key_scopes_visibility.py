"""An API key without the ``operate`` scope acts on its owner's own tasks only, even an operator's:
``submit`` is "the owner's own tasks" (accounts/models.py), operator reach needs ``operate``."""
from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from accounts import services as accounts
from jobs import services
from jobs.models import Status, Task

pytestmark = pytest.mark.django_db


def keyed(user, scopes: list[str]) -> APIClient:
    _, raw = accounts.create_key(user=user, name="ci", scopes=scopes)
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=raw)
    return client


def submit(owner) -> Task:
    task, _ = services.submit(owner=owner, spec=services.build_spec(algorithm="demo.noop"), idempotency_key=None)
    return task


def test_operators_key_without_operate_sees_and_touches_only_her_own_tasks(alice, olga):
    alices, olgas = submit(alice), submit(olga)
    client = keyed(olga, ["read", "submit"])

    listed = client.get("/api/v1/tasks/").json()["results"]
    assert [t["id"] for t in listed] == [str(olgas.id)]
    for path in ("", "logs/", "result/", "artifacts/"):
        assert client.get(f"/api/v1/tasks/{alices.id}/{path}").status_code == 404, path
    assert client.post(f"/api/v1/tasks/{alices.id}/cancel/").status_code == 404
    assert client.post(f"/api/v1/tasks/{alices.id}/retry/").status_code == 404
    assert client.patch(f"/api/v1/tasks/{alices.id}/priority/", {"priority": 9}, format="json").status_code == 404
    alices.refresh_from_db()
    assert alices.status != Status.CANCELLED and alices.priority != 9
    stats = client.get("/api/v1/statistics/tasks/").json()
    assert sum(stats["by_status"].values()) == 1, stats


def test_operators_key_without_operate_cannot_turn_a_webhook_to_queue_events(olga):
    client = keyed(olga, ["read", "webhooks"])
    url = "http://127.0.0.1:9/hook"
    assert client.post("/api/v1/webhooks/", {"url": url, "events": ["queue.*"]}, format="json").status_code == 403
    hook = client.post("/api/v1/webhooks/", {"url": url, "events": ["task.*"]}, format="json").json()

    assert client.patch(f"/api/v1/webhooks/{hook['id']}/", {"events": ["queue.*"]}, format="json").status_code == 403
    assert client.put(f"/api/v1/webhooks/{hook['id']}/", {"url": url, "events": ["queue.paused"]},
                      format="json").status_code == 403
    assert client.get(f"/api/v1/webhooks/{hook['id']}/").json()["events"] == ["task.*"]
    operate = keyed(olga, ["read", "webhooks", "operate"])
    assert operate.patch(f"/api/v1/webhooks/{hook['id']}/", {"events": ["queue.*"]}, format="json").status_code == 200


def test_operators_key_with_operate_still_sees_every_task(alice, olga):
    alices = submit(alice)
    client = keyed(olga, ["read", "operate"])
    assert client.get(f"/api/v1/tasks/{alices.id}/").status_code == 200


def test_a_nul_in_the_key_header_is_a_400_naming_the_header(db):
    client = APIClient()
    client.credentials(HTTP_X_API_KEY="cvk_\x00_b")
    response = client.get("/api/v1/tasks/")
    assert response.status_code == 400
    assert "X-API-Key" in response.json()["error"]["fields"]
