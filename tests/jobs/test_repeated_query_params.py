"""The task list's query parameters given more than once: one that takes one value is a 400 naming it
(it used to be read as its last value, the others, invalid ones included, quietly dropped); ``status``
and ``id`` take several."""
from __future__ import annotations

import uuid
from typing import Any

import pytest

from jobs.models import Task
from tests.conftest import error_fields
from tests.queueing.conftest import make_queue

pytestmark = pytest.mark.django_db

TASKS = "/api/v1/tasks/"


def submit(client: Any, **body: Any) -> str:
    response = client.post(TASKS, {"algorithm": "demo.noop", **body}, format="json")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def ids_of(response: Any) -> set[str]:
    assert response.status_code == 200, response.content
    return {row["id"] for row in response.json()["results"]}


@pytest.fixture
def client(api: Any, alice: Any) -> Any:
    make_queue("default")
    return api(alice)


# --- 1. a query parameter that takes one value, given more than once ----------------------------------

@pytest.mark.parametrize(("name", "values"), [
    ("priority", ["x", "3"]),                         # was: the priority-3 tasks
    ("priority", ["3", "3"]),
    ("created_after", ["junk", "2020-01-01"]),        # was: every task
    ("created_before", ["2020-01-01", "2999-01-01"]),
    ("label", ["b0", "b1"]),                          # was: b1's tasks only
    ("queue", ["default", "nope"]),                   # was: no rows
    ("algorithm", ["demo.noop", "demo.hello"]),
    ("page_size", ["abc", "5"]),                      # was: 5 rows
    ("page_size", ["5", "5"]),
    ("cursor", ["junk", "junk"]),
])
def test_a_parameter_that_takes_one_value_given_twice_is_a_400_naming_it(client, name, values):
    submit(client, labels=["b0"], priority=3)
    submit(client, labels=["b1"], priority=3)

    fields = error_fields(client.get(TASKS, {name: values}))

    assert list(fields) == [name], fields
    assert "once" in fields[name][0]


def test_status_is_repeatable_and_still_matches_any_of_them(client):
    first, second = submit(client), submit(client)
    Task.objects.filter(id=first).update(status="SUCCEEDED")
    Task.objects.filter(id=second).update(status="FAILED")

    assert ids_of(client.get(TASKS, {"status": ["SUCCEEDED", "FAILED"]})) == {first, second}
    assert ids_of(client.get(TASKS, {"status": ["SUCCEEDED", "SUCCEEDED"]})) == {first}
    assert "status" in error_fields(client.get(TASKS, {"status": ["SUCCEEDED", "nope"]}))


def test_id_takes_a_comma_list_and_repeated_ids_add_up(client):
    a, b, c = submit(client), submit(client), submit(client)

    assert ids_of(client.get(TASKS, {"id": f"{a},{b}"})) == {a, b}
    assert ids_of(client.get(TASKS, {"id": [a, b]})) == {a, b}       # was: b only
    assert ids_of(client.get(TASKS, {"id": [f"{a},{b}", c]})) == {a, b, c}
    assert "id" in error_fields(client.get(TASKS, {"id": [a, "nope"]}))


def test_the_id_cap_counts_the_ids_of_every_repetition(client):
    from jobs.api.filters import ID_FILTER_MAX

    half = [str(uuid.uuid4()) for _ in range(ID_FILTER_MAX // 2 + 1)]
    assert "id" in error_fields(client.get(TASKS, {"id": [",".join(half), ",".join(half)]}))


def test_one_value_each_and_the_page_still_work_together(client):
    ids = [submit(client, labels=["b0"]) for _ in range(3)]

    page = client.get(TASKS, {"label": "b0", "queue": "default", "page_size": "2", "status": ["QUEUED", "PENDING"]})

    assert page.status_code == 200, page.content
    assert len(page.json()["results"]) == 2 and ids_of(page) <= set(ids)


def test_bulk_filters_take_a_list_only_for_status(client):
    submit(client, labels=["b0"])

    listed = client.post(f"{TASKS}cancel/", {"filters": {"label": ["b0", "b1"]}}, format="json")
    by_status = client.post(f"{TASKS}cancel/", {"filters": {"status": ["PENDING", "QUEUED"], "label": "b0"}},
                            format="json")

    assert "filters.label" in error_fields(listed)
    assert by_status.status_code == 200 and by_status.json()["cancelled"] == 1


@pytest.mark.parametrize(("path", "query", "name"), [
    ("/api/v1/webhooks/", "page_size=5&page_size=abc", "page_size"),
    ("/api/v1/webhooks/{hook}/deliveries/", "status=failed&status=SUCCEEDED", "status"),
    ("/api/v1/statistics/tasks/", "window=1h&window=5m", "window"),
    ("/api/v1/queues/default/tasks/", "limit=1&limit=2", "limit"),
], ids=["webhook-page-size", "delivery-status", "statistics-window", "queue-tasks-limit"])
def test_the_other_lists_name_a_parameter_given_twice_too(client, path, query, name):
    hook = client.post("/api/v1/webhooks/", {"url": "http://127.0.0.1:9/hook", "events": ["task.*"]}, format="json")
    assert hook.status_code == 201, hook.content

    fields = error_fields(client.get(f"{path.format(hook=hook.json()['id'])}?{query}"))

    assert name in fields, fields
