"""What the OpenAPI schema says of two task endpoints matches what the server does: the priority PATCH
requires its body and ``priority`` (drf-spectacular documented a partial body); a result's 200 JSON body
is the ``{task_id, status, result}`` wrapper or, for a stored result, that result's own JSON; the submit
bodies take no other keys."""
from __future__ import annotations

import json
from typing import Any

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
