"""A submit (one task, or a batch) with a key it does not know is a 400 naming each such key; DRF used to
drop them, so a typo (``prams``, ``max_retry``) ran the task with the defaults."""
from __future__ import annotations

import json
from typing import Any

import pytest

from jobs.models import Task
from tests.conftest import error_fields
from tests.queueing.conftest import make_queue

pytestmark = pytest.mark.django_db

TASKS = "/api/v1/tasks/"


@pytest.fixture
def client(api: Any, alice: Any) -> Any:
    make_queue("default")
    return api(alice)


# --- 2. unknown keys in a submit ------------------------------------------------------------------

def test_a_submit_with_unknown_keys_is_a_400_naming_each_and_stores_nothing(client):
    response = client.post(TASKS, {"algorithm": "demo.sleep", "prams": {"seconds": 1}, "max_retry": 0,
                                   "timeout": 5}, format="json")

    fields = error_fields(response)
    assert set(fields) == {"prams", "max_retry", "timeout"}, fields
    assert all(reasons[0].startswith("unknown field") for reasons in fields.values())
    assert "params" in fields["prams"][0]  # the message lists the keys a task takes
    assert Task.objects.count() == 0


def test_unknown_keys_are_named_beside_the_other_errors(client):
    fields = error_fields(client.post(TASKS, {"algorithm": "demo.noop", "priority": "urgent", "prio": 1},
                                      format="json"))

    assert set(fields) == {"priority", "prio"}


def test_every_documented_key_is_taken(client):
    body = {"algorithm": "demo.sleep", "params": {"seconds": 1}, "priority": "high", "queue": "default",
            "max_retries": 0, "timeout_seconds": 5, "labels": ["a"]}

    response = client.post(TASKS, body, format="json")

    assert response.status_code == 201, response.content
    task = response.json()
    assert (task["max_retries"], task["timeout_seconds"], task["params"]["seconds"]) == (0, 5, 1)


def test_a_batch_names_each_items_unknown_keys_and_its_own(client):
    items = [{"algorithm": "demo.noop"}, {"algorithm": "demo.noop", "prams": {}},
             {"algorithm": "demo.noop", "labels": ["x"], "lables": ["y"]}]

    fields = error_fields(client.post(f"{TASKS}batch/", {"tasks": items}, format="json"))
    top = error_fields(client.post(f"{TASKS}batch/", {"tasks": items[:1], "priority": 9}, format="json"))

    assert set(fields) == {"tasks[1].prams", "tasks[2].lables"}, fields
    assert set(top) == {"priority"}, top
    assert Task.objects.count() == 0


def test_an_idempotent_replay_with_an_unknown_key_is_refused_too(client):
    body = {"algorithm": "demo.noop"}
    first = client.post(TASKS, body, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    replay = client.post(TASKS, {**body, "prams": {}}, format="json", HTTP_IDEMPOTENCY_KEY="k1")

    assert first.status_code == 201
    assert set(error_fields(replay)) == {"prams"}


def test_an_unknown_key_that_is_no_valid_unicode_is_named_escaped(client):
    response = client.generic("POST", TASKS, '{"algorithm": "demo.noop", "x\\ud800": 1}',
                              content_type="application/json")

    assert response.status_code == 400, response.content
    assert list(response.json()["error"]["fields"]) == ["x\\ud800"]


def test_the_submit_bodies_refuse_unknown_keys_in_the_schema(client):
    schema = json.loads(client.get("/api/schema/?format=json").content)
    paths, components = schema["paths"], schema["components"]["schemas"]
    one_ref = paths[TASKS]["post"]["requestBody"]["content"]["application/json"]["schema"]
    batch_ref = paths[f"{TASKS}batch/"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    one, batch = (components[ref["$ref"].rsplit("/", 1)[1]] for ref in (one_ref, batch_ref))

    assert one["additionalProperties"] is False and batch["additionalProperties"] is False
    assert batch["properties"]["tasks"]["items"] == one_ref


# --- the other request bodies --------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "body", "typo"), [
    ("patch", "/api/v1/tasks/{task}/priority/", {"priority": 7, "prioirty": 9}, "prioirty"),
    ("post", "/api/v1/tasks/cancel/", {"task_ids": ["{task}"], "dry_run": True}, "dry_run"),
    ("post", "/api/v1/tasks/retry/", {"filters": {"status": "FAILED"}, "filter": {}}, "filter"),
    ("post", "/api/v1/webhooks/", {"url": "https://example.com/hook", "events": ["task.*"], "secret": "x"}, "secret"),
    ("post", "/api/v1/queues/default/reorder/", {"task_ids": ["{task}"], "positon": 1}, "positon"),
    # a key meant read-only got read and submit, the default scopes
    ("post", "/api/v1/auth/keys/", {"name": "ci", "scope": ["read"]}, "scope"),
], ids=["priority", "bulk-cancel", "bulk-retry", "webhook", "reorder", "api-key"])
def test_every_other_body_names_a_key_it_does_not_take_and_changes_nothing(client, olga, api, method, path, body, typo):
    """A typo never silently does something else: ``{"dry_run": true}`` cancelled for real; a webhook's own
    ``secret`` was dropped (the server makes one), and a misspelt ``position`` reordered to the front."""
    make_queue("default", paused=True)  # the task waits, PENDING: one each of these may change
    task = client.post(TASKS, {"algorithm": "demo.noop", "queue": "default"}, format="json").json()
    caller = api(olga) if "queues" in path else client
    text = json.dumps(body).replace("{task}", task["id"])

    response = getattr(caller, method)(path.format(task=task["id"]), text, content_type="application/json")

    fields = error_fields(response)
    assert typo in fields and fields[typo][0].startswith("unknown field"), fields
    after = Task.objects.get(id=task["id"])
    assert (after.status, after.priority) == (task["status"], task["priority"])


def test_the_token_endpoints_name_a_key_they_do_not_take(alice):
    """A login with a key it does not take (a one-time code the server has no use for) is a 400 naming it,
    not tokens minted as if the key were not there; and the schema says so."""
    from rest_framework.test import APIClient

    from tests.conftest import PASSWORD

    anonymous = APIClient()
    login = anonymous.post("/api/v1/auth/token/", {"username": "alice", "password": PASSWORD, "otp": "123456"},
                           format="json")
    assert login.status_code == 400
    assert error_fields(login) == {"otp": ["unknown field (a login takes username, password)"]}

    tokens = anonymous.post("/api/v1/auth/token/", {"username": "alice", "password": PASSWORD}, format="json").json()
    refresh = anonymous.post("/api/v1/auth/token/refresh/", {"refresh": tokens["refresh"], "rotate": True},
                             format="json")
    assert refresh.status_code == 400 and list(error_fields(refresh)) == ["rotate"]
    # simplejwt's read-only ``access`` is no key a refresh takes either
    stale = anonymous.post("/api/v1/auth/token/refresh/", {"refresh": tokens["refresh"], "access": "x"},
                           format="json")
    assert error_fields(stale) == {"access": ["unknown field (a refresh takes refresh)"]}
    assert "access" in anonymous.post("/api/v1/auth/token/refresh/", {"refresh": tokens["refresh"]},
                                      format="json").json()

    schema = json.loads(anonymous.get("/api/schema/?format=json").content)["components"]["schemas"]
    assert schema["TokenObtainPairRequest"]["additionalProperties"] is False
    assert schema["TokenRefreshRequest"]["additionalProperties"] is False
