"""Real responses match the published OpenAPI schema, strictly: every field the schema requires is
there, no field is there that the schema does not name, and every status code that comes back is
documented for its operation. A client generated from the schema (or validating against it) gets
what the server sends."""
from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest
from openapi_schema_validator import OAS30Validator

from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def _inline(node: Any, components: dict[str, Any], depth: int = 0) -> Any:
    """The schema with every ``$ref`` replaced by its target, and every object closed to fields it does
    not name (``additionalProperties: false`` where the schema leaves it open by omission)."""
    assert depth < 40, "schema too deep (a cycle?)"
    if isinstance(node, list):
        return [_inline(item, components, depth + 1) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = components[node["$ref"].rsplit("/", 1)[1]]
        return _inline(copy.deepcopy(target), components, depth + 1)
    out = {key: _inline(value, components, depth + 1) for key, value in node.items()}
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if out.get("nullable") and "type" not in out:
        # drf-spectacular's OpenAPI 3.0 form of a nullable object, ``allOf: [$ref]`` with ``nullable``,
        # which code generators read as "this object or null"; a strict 3.0 validator would ignore the
        # ``nullable`` there, so it is spelled out.
        out = {"anyOf": [{k: v for k, v in out.items() if k != "nullable"}, {"enum": [None]}]}
    return out


def check(schema: dict, method: str, template: str, response: Any, expect: int) -> Any:
    """Assert ``response`` (a DRF test response to ``method template``) has status ``expect``, is
    documented, and conforms to its schema; return its body."""
    op = schema["paths"][template][method.lower()]
    status = str(response.status_code)
    where = f"{method} {template} → {status}"
    assert response.status_code == expect, f"{where}, expected {expect}: {response.content[:300]!r}"
    assert status in op["responses"], f"{where} is not documented (documented: {sorted(op['responses'])})"
    content = op["responses"][status].get("content", {}).get("application/json")
    body = response.json() if response.content else None
    if content is None:
        assert body is None, f"{where}: the schema says no body, the server sent {body}"
        return body
    strict = _inline(content["schema"], schema["components"]["schemas"])
    errors = sorted(OAS30Validator(strict).iter_errors(body), key=str)
    assert not errors, f"{where}: " + "; ".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                                                for e in errors[:5])
    return body


def test_tokens_tasks_and_their_errors_match_the_schema(schema, alice, olga, api):
    from rest_framework.test import APIClient

    anonymous = APIClient()
    tokens = check(schema, "POST", "/api/v1/auth/token/", anonymous.post(
        "/api/v1/auth/token/", {"username": "alice", "password": PASSWORD}, format="json"), 200)
    check(schema, "POST", "/api/v1/auth/token/refresh/", anonymous.post(
        "/api/v1/auth/token/refresh/", {"refresh": tokens["refresh"]}, format="json"), 200)
    check(schema, "POST", "/api/v1/auth/token/", anonymous.post(
        "/api/v1/auth/token/", {"username": "alice", "password": "wrong"}, format="json"), 401)

    client, operator = api(alice), api(olga)
    body = {"algorithm": "demo.noop", "labels": ["conformance"]}
    submit = "/api/v1/tasks/"
    task = check(schema, "POST", submit, client.post(submit, body, format="json", HTTP_X_REQUEST_ID="trace-1"), 201)
    check(schema, "POST", submit, client.post(submit, body, format="json", HTTP_X_REQUEST_ID="trace-1"), 200)
    check(schema, "POST", submit, client.post(submit, {"algorithm": "demo.hello"}, format="json",
                                              HTTP_X_REQUEST_ID="trace-1"), 409)  # another body, same id
    check(schema, "POST", submit, client.post(submit, {"algorithm": "demo.noop", "params": [1]}, format="json"), 400)
    check(schema, "POST", submit, client.post(submit, "algorithm=demo.noop", content_type="text/plain"), 415)
    check(schema, "POST", "/api/v1/tasks/batch/", client.post(
        "/api/v1/tasks/batch/", {"tasks": [body, body]}, format="json"), 201)
    path = f"/api/v1/tasks/{task['id']}/"
    check(schema, "GET", "/api/v1/tasks/{id}/", client.get(path), 200)
    check(schema, "GET", "/api/v1/tasks/{id}/", client.get(f"/api/v1/tasks/{uuid.uuid4()}/"), 404)
    check(schema, "GET", "/api/v1/tasks/", client.get("/api/v1/tasks/?label=conformance"), 200)
    check(schema, "PATCH", "/api/v1/tasks/{id}/priority/",
          client.patch(path + "priority/", {"priority": "high"}, format="json"), 200)
    check(schema, "GET", "/api/v1/tasks/{id}/logs/", client.get(path + "logs/"), 200)
    check(schema, "GET", "/api/v1/tasks/{id}/artifacts/", client.get(path + "artifacts/"), 200)
    check(schema, "POST", "/api/v1/tasks/{id}/cancel/", client.post(path + "cancel/"), 200)
    check(schema, "POST", "/api/v1/tasks/{id}/cancel/", client.post(path + "cancel/"), 409)  # already final
    check(schema, "POST", "/api/v1/tasks/{id}/retry/", client.post(path + "retry/"), 201)
    check(schema, "POST", "/api/v1/queues/{name}/reorder/", operator.post(
        f"/api/v1/queues/{task['queue']}/reorder/", {"task_ids": [task["id"]]}, format="json"), 409)  # not waiting


def test_queues_workers_webhooks_keys_and_the_rest_match_the_schema(schema, alice, olga, api):
    client, operator = api(alice), api(olga)
    check(schema, "GET", "/api/v1/algorithms/", client.get("/api/v1/algorithms/"), 200)
    check(schema, "GET", "/api/v1/algorithms/{id}/", client.get("/api/v1/algorithms/demo.noop/"), 200)
    check(schema, "GET", "/api/v1/queues/", client.get("/api/v1/queues/"), 200)
    check(schema, "GET", "/api/v1/queues/{name}/", client.get("/api/v1/queues/default/"), 200)
    check(schema, "GET", "/api/v1/queues/{name}/tasks/", operator.get("/api/v1/queues/default/tasks/"), 200)
    check(schema, "POST", "/api/v1/queues/{name}/pause/", client.post("/api/v1/queues/default/pause/"), 403)
    check(schema, "GET", "/api/v1/workers/", operator.get("/api/v1/workers/"), 200)
    check(schema, "GET", "/api/v1/statistics/tasks/", client.get("/api/v1/statistics/tasks/"), 200)
    check(schema, "GET", "/api/v1/system/stats/", operator.get("/api/v1/system/stats/"), 200)
    health = client.get("/api/v1/system/health/")
    check(schema, "GET", "/api/v1/system/health/", health, health.status_code)  # 503 without a worker is fine

    hooks = "/api/v1/webhooks/"
    hook = check(schema, "POST", hooks, client.post(
        hooks, {"url": "http://127.0.0.1:9/conveyor", "events": ["task.succeeded"]}, format="json"), 201)
    check(schema, "GET", hooks, client.get(hooks), 200)
    check(schema, "GET", "/api/v1/webhooks/{id}/", client.get(f"{hooks}{hook['id']}/"), 200)
    check(schema, "GET", "/api/v1/webhooks/{id}/deliveries/", client.get(f"{hooks}{hook['id']}/deliveries/"), 200)
    check(schema, "POST", "/api/v1/webhooks/{id}/rotate-secret/", client.post(f"{hooks}{hook['id']}/rotate-secret/"),
          200)

    keys = "/api/v1/auth/keys/"
    key = check(schema, "POST", keys, client.post(keys, {"name": "ci", "scopes": ["read"]}, format="json"), 201)
    check(schema, "GET", keys, client.get(keys), 200)
    check(schema, "POST", "/api/v1/auth/keys/{id}/revoke/", client.post(f"{keys}{key['id']}/revoke/"), 200)


def test_every_endpoint_documents_the_outage_answer_with_retry_after(schema):
    for path, item in schema["paths"].items():
        for method, op in item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            assert "503" in op["responses"], f"{method.upper()} {path}"
            assert "Retry-After" in op["responses"]["503"].get("headers", {}) or path == "/api/v1/system/health/"


# Fields of a response that are really sometimes absent; every other field of every response object is
# always sent, so the schema must say it is required (a generated client then types it as present).
SOMETIMES_ABSENT = {
    "ErrorDetail": {"fields"}, "TaskSubmitOut": {"webhook"}, "HealthOut": {"error"},
    "HealthCheckOut": {"latency_ms", "error", "transport", "count", "names", "services",
                       "last_run_seconds_ago"},
    "RemoteServiceHealthOut": {"error"},
}


def test_response_fields_that_are_always_sent_are_required(schema):
    for name, component in schema["components"]["schemas"].items():
        if name.endswith("Request") or "properties" not in component:
            continue  # a request body (COMPONENT_SPLIT_REQUEST), or not an object
        optional = set(component["properties"]) - set(component.get("required", []))
        assert optional <= SOMETIMES_ABSENT.get(name, set()), f"{name}: {sorted(optional)} not required"


def test_values_the_server_checks_against_a_list_are_enums_in_the_schema(schema):
    from queueing.control import ACTIONS
    from webhooks.services import ALLOWED_EVENTS

    op = schema["paths"]["/api/v1/workers/{hostname}/{command}/"]["post"]
    [command] = [p for p in op["parameters"] if p["name"] == "command"]
    assert command["in"] == "path" and set(command["schema"]["enum"]) == set(ACTIONS)
    events = schema["components"]["schemas"]["WebhookInRequest"]["properties"]["events"]["items"]
    enum = _inline(events, schema["components"]["schemas"])["allOf"][0]["enum"]
    assert set(enum) == set(ALLOWED_EVENTS)
