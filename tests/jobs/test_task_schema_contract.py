"""What the OpenAPI schema says of two task endpoints matches what the server does: the priority PATCH
requires its body and ``priority`` (drf-spectacular documented a partial body); a result's 200 JSON body
is the ``{task_id, status, result}`` wrapper or, for a stored result, that result's own JSON; the submit
bodies take no other keys (``test_unknown_submit_keys.py``)."""
from __future__ import annotations

import json
import uuid
from typing import Any

import jsonschema
import pytest

pytestmark = pytest.mark.django_db


# --- the schema ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def schema(django_db_blocker: Any) -> dict[str, Any]:
    from rest_framework.test import APIClient

    with django_db_blocker.unblock():
        response = APIClient().get("/api/schema/?format=json")
    assert response.status_code == 200
    return json.loads(response.content)


def _component(schema: dict[str, Any], ref: str) -> dict[str, Any]:
    return schema["components"]["schemas"][ref.rsplit("/", 1)[1]]


def test_the_priority_patch_body_is_required_and_requires_priority(schema):
    body = schema["paths"]["/api/v1/tasks/{id}/priority/"]["patch"]["requestBody"]
    component = _component(schema, body["content"]["application/json"]["schema"]["$ref"])

    assert body.get("required") is True
    assert component.get("required") == ["priority"]


@pytest.mark.parametrize("path", ["/api/v1/queues/{name}/", "/api/v1/webhooks/{id}/"])
def test_real_partial_updates_stay_partial(schema, path):
    body = schema["paths"][path]["patch"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"]

    assert ref.rsplit("/", 1)[1].startswith("Patched")
    assert not _component(schema, ref).get("required")


def test_the_result_documents_the_wrapper_and_a_stored_json_result(schema):
    responses = schema["paths"]["/api/v1/tasks/{id}/result/"]["get"]["responses"]
    json_body = responses["200"]["content"]["application/json"]["schema"]
    documented = {"components": schema["components"], **json_body}

    wrapper = {"task_id": str(uuid.uuid4()), "status": "SUCCEEDED", "result": {"x": 1}}
    for body in (wrapper, [1, 2, 3], {"rows": [[1.5, 2]]}, "text", None):  # the last four: a stored result's bytes
        jsonschema.validate(body, documented)
    assert any(option.get("$ref", "").endswith("/TaskResultOut") for option in _options(schema, json_body))
    assert "result_meta.storage" in json.dumps(json_body) + responses["200"]["description"]
    assert responses["200"]["content"]["*/*"]["schema"] == {"type": "string", "format": "binary"}
    assert {"206", "304", "410", "416"} <= set(responses)


def _options(schema: dict[str, Any], node: dict[str, Any]) -> list[dict[str, Any]]:
    if "$ref" in node:
        node = _component(schema, node["$ref"])
    return node.get("anyOf") or node.get("oneOf") or []
