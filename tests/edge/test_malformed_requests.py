"""Malformed requests the parsers and query readers used to turn into a 500 (or a wrong 404, or a
silently ignored value): each is a 400 naming the field and the reason."""
from __future__ import annotations

import base64
from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.queueing.conftest import make_queue

pytestmark = pytest.mark.django_db


def fields_of(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 400, response.content
    return response.json()["error"].get("fields", {})


def cursor(querystring: str) -> str:
    return base64.b64encode(querystring.encode()).decode()


def test_a_json_body_nested_too_deep_is_a_400_even_anonymously(db):
    body = '{"username":' + "[" * 20_000 + "]" * 20_000 + "}"
    response = APIClient().post("/api/v1/auth/token/", body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "parse_error"


def test_task_params_nested_too_deep_are_a_400(api, alice):
    body = '{"algorithm": "demo.noop", "params": ' + '{"a":' * 5_000 + "1" + "}" * 5_000 + "}"
    response = api(alice).post("/api/v1/tasks/", body, content_type="application/json")
    assert response.status_code == 400, response.content


@pytest.mark.parametrize("query", ["created_after=0001-01-01T00:00:00%2B15:00",
                                   "created_after=9999-12-31T23:59:59-15:00",
                                   "created_before=0001-01-01T00:00:00%2B15:00"])
def test_a_created_filter_with_no_utc_equivalent_is_400_out_of_range(api, alice, query):
    name = query.split("=")[0]
    assert fields_of(api(alice).get(f"/api/v1/tasks/?{query}"))[name] == ["out of range"]


@pytest.mark.parametrize("raw", ["o=-1&p=", "p=\x00", "p=notadate", "r=x", "p=0001-01-01T00:00:00+15:00"])
def test_a_malformed_cursor_is_400_naming_cursor(api, alice, raw):
    response = api(alice).get("/api/v1/tasks/", {"cursor": cursor(raw)})
    assert fields_of(response) == {"cursor": ["invalid cursor"]}
    assert "\x00" not in response.content.decode()


def test_a_cursor_the_api_made_still_pages(api, alice):
    make_queue("default")
    client = api(alice)
    for _ in range(3):
        client.post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json")
    first = client.get("/api/v1/tasks/?page_size=2").json()
    second = client.get(first["next"]).json()
    assert len(first["results"]) == 2 and len(second["results"]) == 1
    back = client.get(second["previous"]).json()
    assert [t["id"] for t in back["results"]] == [t["id"] for t in first["results"]]


@pytest.mark.parametrize("value", ["abc", "1.5", "1e3", "%00"])
def test_a_non_integer_after_seq_on_logs_is_400_naming_it(api, alice, value):
    make_queue("default")
    task_id = api(alice).post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json").json()["id"]
    assert "after_seq" in fields_of(api(alice).get(f"/api/v1/tasks/{task_id}/logs/?after_seq={value}"))


def test_logs_after_seq_still_skips_what_came_before(api, alice):
    make_queue("default")
    task_id = api(alice).post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json").json()["id"]
    every = api(alice).get(f"/api/v1/tasks/{task_id}/logs/?after_seq=-3").json()
    assert every and api(alice).get(f"/api/v1/tasks/{task_id}/logs/?after_seq={every[-1]['seq']}").json() == []
