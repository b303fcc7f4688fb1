"""The published schema says what the server does: the API key scope each operation needs (checked by real
requests with keys of each scope), the values each field takes (enums, list sizes), what is required."""
from __future__ import annotations

import re
import uuid

import pytest

from tests.conftest import key_client
from tests.edge.conftest import operations

pytestmark = pytest.mark.django_db

# A value for each path parameter that the URL patterns take (the object need not exist: the scope is
# checked before any object is looked up).
PATH_VALUES = {"id": str(uuid.uuid4()), "name": "default", "hostname": "nohost@nowhere", "command": "pool_grow",
               "delivery_id": uuid.uuid4().hex}


def _url(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], path)


def _key_client(user, scopes, *, header="X-API-Key"):
    from accounts import services

    _, raw = services.create_key(user=user, name=f"k-{'-'.join(scopes)}", scopes=list(scopes))
    return key_client(raw, header=header)


def _send(client, method, path):
    kwargs = {"format": "json", "data": {}} if method in ("post", "put", "patch") else {}
    return getattr(client, method)(_url(path), **kwargs)


def _scope_refusal(response) -> str | None:
    """The scope a 403 says the key lacks, or None when the answer is no scope refusal."""
    if response.status_code != 403:
        return None
    found = re.search(r"lacks the '(\w+)' scope", response.json()["error"]["message"])
    return found.group(1) if found else None


def test_every_operation_publishes_the_scope_the_server_enforces(schema, olga):
    from accounts.models import Scope

    every = list(Scope.values)
    keys = {scope: _key_client(olga, [scope]) for scope in every}  # olga is an operator
    without = {scope: _key_client(olga, [s for s in every if s != scope]) for scope in every}
    checked = 0
    for path, method, op in operations(schema):
        where = f"{method.upper()} {path}"
        if not any("apiKeyAuth" in s for s in op.get("security", [])):
            assert "x-required-scope" not in op, where
            if op.get("security"):  # authenticated, but not by key: every key is refused
                response = _send(_key_client(olga, every), method, path)
                assert response.status_code == 403, f"{where}: {response.status_code} {response.content[:200]!r}"
                assert "API keys are refused here" in op["description"], where
            continue
        scope = op["x-required-scope"]
        assert scope in every, where
        assert f"API-key scope: `{scope}`" in op["description"], where
        response = _send(without[scope], method, path)
        assert _scope_refusal(response) == scope, f"{where}: {response.status_code} {response.content[:200]!r}"
        response = _send(keys[scope], method, path)
        assert response.status_code != 401 and _scope_refusal(response) is None, (
            f"{where} with only `{scope}`: {response.status_code} {response.content[:200]!r}")
        operators_only = response.status_code == 403 and "operators only" in response.content.decode()
        assert not operators_only, where  # olga is an operator
        alice_op = _send(_key_client(_plain_user(), every), method, path)
        refused_as_operator_only = alice_op.status_code == 403 and "operators only" in alice_op.content.decode()
        assert refused_as_operator_only == bool(op.get("x-operators-only")), f"{where}: {alice_op.content[:200]!r}"
        checked += 1
    assert checked > 30


def _plain_user():
    from django.contrib.auth import get_user_model

    return get_user_model().objects.get_or_create(username="keyholder")[0]


def test_a_webhook_url_needs_the_webhooks_scope_as_published(schema, olga):
    op = schema["paths"]["/api/v1/tasks/"]["post"]
    assert op["x-required-scopes-for-fields"] == {"webhook_url": "webhooks"}
    assert "with `webhook_url`, also `webhooks`" in op["description"]
    assert schema["paths"]["/api/v1/tasks/batch/"]["post"]["x-required-scopes-for-fields"] == {
        "webhook_url": "webhooks"}
    body = {"algorithm": "demo.noop", "webhook_url": "http://127.0.0.1:9/hook"}
    refused = _key_client(olga, ["submit"]).post("/api/v1/tasks/", body, format="json")
    assert refused.status_code == 403 and "'webhooks'" in refused.json()["error"]["message"]
    refused = _key_client(olga, ["submit"]).post("/api/v1/tasks/batch/", {"tasks": [body]}, format="json")
    assert refused.status_code == 403 and "'webhooks'" in refused.json()["error"]["message"]
    taken = _key_client(olga, ["submit", "webhooks"]).post("/api/v1/tasks/", body, format="json")
    assert taken.status_code == 201, taken.content


def test_the_key_scheme_names_every_scope_and_both_headers(schema, olga):
    from accounts.models import Scope

    description = schema["components"]["securitySchemes"]["apiKeyAuth"]["description"]
    for scope in Scope.values:
        assert f"`{scope}`" in description
    assert "`X-API-Key: cvk_…`" in description and "`Authorization: Api-Key cvk_…`" in description
    assert "`read` (GET), `submit` (other writes)" not in description
    # The Authorization form is the same key, checked the same way.
    assert _key_client(olga, ["read"], header="Authorization").get("/api/v1/tasks/").status_code == 200
    refused = _key_client(olga, ["read"], header="Authorization").post("/api/v1/tasks/", {}, format="json")
    assert _scope_refusal(refused) == "submit"


# --- enums: the values the server sends are those the schema lists ------------------------------------


def _enum(schema, component, prop):
    from tests.edge.test_schema_conformance import _inline

    node = _inline(schema["components"]["schemas"][component]["properties"][prop], schema["components"]["schemas"])
    while "enum" not in node:
        assert node.get("allOf") or node.get("anyOf"), f"{component}.{prop} is no enum: {node}"
        node = (node.get("allOf") or node.get("anyOf"))[0]
    return node["enum"]


def test_a_tasks_events_are_the_kinds_the_schema_lists(schema, alice, olga, api):
    from tests.edge.test_schema_conformance import check

    client, operator = api(alice), api(olga)
    operator.post("/api/v1/queues/default/pause/")  # the task waits (PENDING), so it can be reordered
    task = client.post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json").json()
    path = f"/api/v1/tasks/{task['id']}/"
    response = operator.post("/api/v1/queues/default/reorder/", {"task_ids": [task["id"]]}, format="json")
    assert response.status_code == 200, response.content
    client.patch(path + "priority/", {"priority": "high"}, format="json")
    client.post(path + "cancel/")
    # The log as the schema describes it: every event one of TaskEventKindEnum, data an object.
    events = check(schema, "GET", "/api/v1/tasks/{id}/logs/", client.get(path + "logs/"), 200)
    kinds = [e["event"] for e in events]
    assert {"task.created", "task.reordered", "task.priority_changed", "task.cancelled"} <= set(kinds), kinds
    assert set(_enum(schema, "TaskEventOut", "event")) >= {"task.log", "task.reordered", "task.progress"}
    assert schema["components"]["schemas"]["TaskEventOut"]["properties"]["data"]["type"] == "object"


def test_enums_of_results_workers_algorithms_deliveries_and_worker_actions(schema, alice, api):
    from jobs.models import Status
    from queueing.control import ACTIONS
    from webhooks.outbox import QUEUE_EVENTS, TASK_EVENTS

    assert set(_enum(schema, "TaskResultOut", "status")) == set(Status.values)
    assert set(_enum(schema, "WorkerOut", "status")) == {"online", "dead", "stopped"}
    assert set(_enum(schema, "WorkerControlOut", "action")) == set(ACTIONS)
    assert set(_enum(schema, "DeliveryOut", "event")) == set(TASK_EVENTS | QUEUE_EVENTS)
    backends = set(_enum(schema, "AlgorithmOut", "backend"))
    listed = {a["backend"] for a in api(alice).get("/api/v1/algorithms/").json()}
    assert listed <= backends and {"python", "external", "grpc", "ws"} <= backends


def test_the_delivery_log_refuses_an_event_no_delivery_carries(schema, alice, api):
    client = api(alice)
    hook = client.post("/api/v1/webhooks/", {"url": "http://127.0.0.1:9/h", "events": ["task.*"]}, format="json")
    deliveries = f"/api/v1/webhooks/{hook.json()['id']}/deliveries/"
    response = client.get(deliveries + "?event=bogus")
    assert response.status_code == 400, response.content
    assert "event" in response.json()["error"]["fields"]
    assert client.get(deliveries + "?event=task.succeeded").status_code == 200
    [param] = [p for p in schema["paths"]["/api/v1/webhooks/{id}/deliveries/"]["get"]["parameters"]
               if p["name"] == "event"]
    assert "task.succeeded" in param["schema"]["enum"] and "bogus" not in param["schema"]["enum"]


# --- list sizes and required bodies: what the schema allows, the server takes ---------------------------

LISTS = [  # (method, path, its request component, the list field, the rest of a valid body, an item)
    ("post", "/api/v1/tasks/batch/", "TaskBatchSubmitInRequest", "tasks", {}, {"algorithm": "demo.noop"}),
    ("post", "/api/v1/tasks/cancel/", "TaskCancelManyInRequest", "task_ids", {}, "ID"),
    ("post", "/api/v1/tasks/retry/", "TaskRetryManyInRequest", "task_ids", {}, "ID"),
    ("post", "/api/v1/queues/{name}/reorder/", "ReorderInRequest", "task_ids", {}, "ID"),
    ("post", "/api/v1/webhooks/", "WebhookInRequest", "events", {"url": "http://127.0.0.1:9/h"}, "task.*"),
    ("patch", "/api/v1/webhooks/{id}/", "PatchedWebhookPatchInRequest", "events", {}, "task.*"),
    ("post", "/api/v1/auth/keys/", "ApiKeyInRequest", "scopes", {"name": "k"}, "read"),
]


@pytest.mark.parametrize("method,path,component,field,rest,item", LISTS,
                         ids=[f"{m} {p} {f}" for m, p, _, f, *_ in LISTS])
def test_list_sizes_in_the_schema_are_those_the_server_takes(schema, olga, api, method, path, component, field,
                                                             rest, item):
    client = api(olga)
    hook = client.post("/api/v1/webhooks/", {"url": "http://127.0.0.1:9/h", "events": ["task.*"]}, format="json")
    url = path.replace("{name}", "default").replace("{id}", hook.json()["id"])
    prop = schema["components"]["schemas"][component]["properties"][field]
    assert prop.get("minItems") == 1, f"{component}.{field}: {prop}"
    most = prop.get("maxItems")
    assert most, f"{component}.{field}: no maxItems"

    def send(n):
        items = [str(uuid.uuid4()) if item == "ID" else item for _ in range(n)]
        return getattr(client, method)(url, {**rest, field: items}, format="json")

    for n in (0, most + 1):
        response = send(n)
        assert response.status_code == 400, f"{n} items: {response.status_code} {response.content[:200]!r}"
        assert field in response.json()["error"]["fields"], response.content[:300]


@pytest.mark.parametrize("path", ["/api/v1/tasks/cancel/", "/api/v1/tasks/retry/", "/api/v1/queues/{name}/reorder/"])
def test_a_body_an_empty_one_of_which_is_refused_is_required(schema, olga, api, path):
    assert schema["paths"][path]["post"]["requestBody"].get("required") is True
    response = api(olga).post(path.replace("{name}", "default"), {}, format="json")
    assert response.status_code == 400, response.content


# --- the pagination envelope -------------------------------------------------------------------------


def test_a_pages_next_and_previous_are_required_and_nullable(schema, alice, api):
    client = api(alice)
    hook = client.post("/api/v1/webhooks/", {"url": "http://127.0.0.1:9/h", "events": ["task.*"]}, format="json")
    pages = {"PaginatedTaskOutList": "/api/v1/tasks/", "PaginatedWebhookOutList": "/api/v1/webhooks/",
             "PaginatedDeliveryOutList": f"/api/v1/webhooks/{hook.json()['id']}/deliveries/"}
    for name, url in pages.items():
        component = schema["components"]["schemas"][name]
        assert set(component["required"]) == {"next", "previous", "results"}, name
        assert component["properties"]["next"]["nullable"] and component["properties"]["previous"]["nullable"]
        body = client.get(url).json()
        assert body["next"] is None and body["previous"] is None, body  # sent, null: there is one page


def test_no_operation_offers_a_format_parameter(schema):
    offered = [f"{method.upper()} {path}" for path, method, op in operations(schema)
               if any(p["name"] == "format" and p["in"] == "query" for p in op.get("parameters", []))]
    assert not offered, f"?format= is no part of the API: {offered}"
