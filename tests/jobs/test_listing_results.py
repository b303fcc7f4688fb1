"""A task list describes inline results (``result_meta``) without loading them: the rows are read
without ``result``; size, sha256 and summary are columns PostgreSQL writes whenever the result is
written (jobs/migrations/0009), and they are what the detail says and what ``/result/`` serves, byte
for byte."""
from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from algorithms import results
from algorithms.artifacts import summarize
from jobs.models import Task

pytestmark = pytest.mark.django_db

# Values whose JSON text differs between writers: spacing, key order (jsonb sorts keys), floats that
# Python writes with an exponent, escapes, characters outside ASCII, and every JSON type at the top.
RESULTS: list[Any] = [
    {"values": list(range(50)), "seed": 3, "zeta": {"b": [1.5, -0.0, 1e-07, 1e16, 12345678901234567890]}},
    {f"key{i:02}": i for i in range(25)},  # the summary names 20 keys and counts all 25
    {"text": 'quote " backslash \\ newline \n tab \t bell \x07 line sep \u2028 snowman \u2603 emoji \U0001f600'},
    {"a": None, "nested": [[], {}, [{"x": True, "y": False}]], "f": 0.1, "g": 100.0, "h": -2.5e-05},
    [1, "two", 3.0, None],
    "just a string",
    42,
    3.25,
    True,
    {},
]


def succeeded(client: Any, result: Any, **extra: Any) -> str:
    """A task that finished with ``result`` inline (as the worker stores it: ``Task.result``)."""
    body = {"algorithm": "demo.noop", "labels": ["listed"]}
    task_id = client.post("/api/v1/tasks/", body, format="json").json()["id"]
    Task.objects.filter(id=task_id).update(status="SUCCEEDED", result=result, finished_at=timezone.now(), **extra)
    return task_id


def served_bytes(client: Any, task_id: str) -> bytes:
    """The bytes of the ``result`` member of what ``/result/`` answers."""
    response = client.get(f"/api/v1/tasks/{task_id}/result/")
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    prefix = f'{{"task_id":"{task_id}","status":"SUCCEEDED","result":'.encode()
    assert response.content.startswith(prefix) and response.content.endswith(b"}"), response.content[:200]
    return response.content[len(prefix):-1]


def test_the_list_describes_inline_results_as_the_detail_does_and_as_result_serves_them(alice, api):
    client = api(alice)
    ids = [succeeded(client, value) for value in RESULTS]

    listed = {t["id"]: t["result_meta"] for t in client.get("/api/v1/tasks/?label=listed").json()["results"]}

    assert set(listed) == set(ids)
    for task_id, value in zip(ids, RESULTS):
        meta = listed[task_id]
        assert meta == client.get(f"/api/v1/tasks/{task_id}/").json()["result_meta"]
        raw = served_bytes(client, task_id)
        assert (meta["size"], meta["sha256"]) == (len(raw), hashlib.sha256(raw).hexdigest()), value
        stored = Task.objects.get(id=task_id).result  # the value as Python reads it back
        assert json.loads(raw) == stored == client.get(f"/api/v1/tasks/{task_id}/result/").json()["result"]
        assert meta["summary"] == summarize(stored), value
        assert (meta["storage"], meta["content_type"], meta["expired"], meta["expired_at"]) == (
            "inline", "application/json", False, None)
    assert listed[ids[1]]["summary"] == {"type": "object", "keys": [f"key{i:02}" for i in range(20)], "length": 25}
    assert [listed[i]["summary"]["type"] for i in ids[4:9]] == ["array", "str", "int", "float", "bool"]


def test_the_list_reads_no_result_and_computes_nothing_per_task(alice, api):
    client = api(alice)
    big = {"values": list(range(20_000))}  # about 130 KB of JSON
    for _ in range(5):
        succeeded(client, big)
    client.post("/api/v1/tasks/", {"algorithm": "demo.noop", "labels": ["listed"]}, format="json")  # pending

    with CaptureQueriesContext(connection) as five:
        page = client.get("/api/v1/tasks/?label=listed&page_size=10")
    for _ in range(5):
        succeeded(client, big)
    with CaptureQueriesContext(connection) as ten:
        client.get("/api/v1/tasks/?label=listed&page_size=20")

    assert page.status_code == 200 and len(page.json()["results"]) == 6
    assert all(t["result_meta"]["size"] > 100_000 for t in page.json()["results"][1:])
    table = Task._meta.db_table
    for query in five.captured_queries + ten.captured_queries:
        sql = query["sql"]
        assert f'"{table}"."result",' not in sql and "result::text" not in sql, f"the list read results: {sql[:300]}"
    assert len(ten.captured_queries) == len(five.captured_queries)  # no query per task
    assert len(page.content) < 20_000  # the results themselves are not in the list


def test_the_description_follows_the_result_whoever_writes_it(alice, api):
    client = api(alice)
    task_id = succeeded(client, {"first": 1})
    stale = Task.objects.defer("result").get(id=task_id)  # as a list reads it
    Task.objects.filter(id=task_id).update(result={"second": [1, 2, 3]})

    stale.save()  # writes the columns it read, the old description among them

    meta = client.get(f"/api/v1/tasks/{task_id}/").json()["result_meta"]
    raw = served_bytes(client, task_id)
    assert (meta["size"], meta["sha256"]) == (len(raw), hashlib.sha256(raw).hexdigest())
    assert meta["summary"] == {"type": "object", "keys": ["second"], "length": 1}
    Task.objects.filter(id=task_id).update(result=None)
    assert client.get(f"/api/v1/tasks/{task_id}/").json()["result_meta"] is None


def test_a_task_without_a_result_has_none_and_result_answers_null(alice, api):
    client = api(alice)
    task_id = succeeded(client, None)

    assert client.get("/api/v1/tasks/?label=listed").json()["results"][0]["result_meta"] is None
    assert client.get(f"/api/v1/tasks/{task_id}/").json()["result_meta"] is None
    assert client.get(f"/api/v1/tasks/{task_id}/result/").json()["result"] is None


def test_retention_keeps_what_the_list_said_about_an_inline_result(alice, api):
    client = api(alice)
    task_id = succeeded(client, RESULTS[0])
    before = client.get("/api/v1/tasks/?label=listed").json()["results"][0]["result_meta"]
    Task.objects.filter(id=task_id).update(finished_at=timezone.now() - timedelta(days=40))

    assert results.expire()["inline_results"] == 1

    after = client.get("/api/v1/tasks/?label=listed").json()["results"][0]["result_meta"]
    assert after["expired"] is True and after["expired_at"]
    assert {k: after[k] for k in ("size", "sha256", "summary")} == {k: before[k] for k in ("size", "sha256", "summary")}
    assert client.get(f"/api/v1/tasks/{task_id}/").json()["result_meta"] == after
    assert client.get(f"/api/v1/tasks/{task_id}/result/").status_code == 410


def test_a_row_inserted_with_its_result_is_described_and_one_inserted_without_is_not(alice):
    """The INSERT trigger runs only for a row that brings a result (a submit's never does)."""
    with_result = Task.objects.create(owner=alice, algorithm="demo.noop", queue_id="default", status="SUCCEEDED",
                                      result={"loss": 0.5})
    without = Task.objects.create(owner=alice, algorithm="demo.noop", queue_id="default")
    with_result.refresh_from_db()
    without.refresh_from_db()
    body = json.dumps({"loss": 0.5}, separators=(", ", ": ")).encode()
    assert (with_result.result_size, with_result.result_sha256) == (len(body), hashlib.sha256(body).hexdigest())
    assert with_result.result_summary == summarize({"loss": 0.5})
    assert (without.result_size, without.result_sha256, without.result_summary) == (None, None, None)
