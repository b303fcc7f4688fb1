"""Bad input is a 400 that names the field and the reason, never a 500: NUL characters (PostgreSQL
refuses them in text and jsonb), over-long idempotency keys, and the database's own refusals that no
validation saw coming (config/errors.py turns a ``DataError`` into a 400)."""
from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings

from jobs.models import Task
from tests.queueing.conftest import make_queue

pytestmark = pytest.mark.django_db


def fields_of(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid"
    return error["fields"]


# --- NUL characters ---------------------------------------------------------------------------

@pytest.fixture
def webhook_id(api: Any, alice: Any) -> str:
    response = api(alice).post("/api/v1/webhooks/", {"url": "http://127.0.0.1:9/hook", "events": ["task.succeeded"]},
                               format="json")
    assert response.status_code == 201, response.content
    return response.json()["id"]


@pytest.mark.parametrize("param", ["event", "status"])
def test_nul_in_a_delivery_log_filter_is_400_naming_it(api, alice, webhook_id, param):
    response = api(alice).get(f"/api/v1/webhooks/{webhook_id}/deliveries/?{param}=%00")
    assert param in fields_of(response)


def test_delivery_log_filters_still_work_and_status_takes_either_case(api, alice, webhook_id):
    for query in ("status=failed", "status=FAILED", "event=task.succeeded", "status=&event="):
        response = api(alice).get(f"/api/v1/webhooks/{webhook_id}/deliveries/?{query}")
        assert response.status_code == 200, (query, response.content)
    assert "status" in fields_of(api(alice).get(f"/api/v1/webhooks/{webhook_id}/deliveries/?status=LOST"))


def test_nul_in_statistics_user_is_400_naming_it(api, olga):
    assert "user" in fields_of(api(olga).get("/api/v1/statistics/tasks/?user=%00"))


def test_nul_in_a_worker_hostname_is_400_naming_it(api, olga):
    assert "hostname" in fields_of(api(olga).post("/api/v1/workers/a%00b/pool_grow/", {}, format="json"))


@pytest.mark.parametrize("name", ["\u0000", "gp\u0000u", ""])
def test_a_queue_resource_name_with_a_nul_or_empty_is_400_naming_resources(api, olga, name):
    # The names the admin refuses too (queueing.models.validate_resources).
    make_queue("q1")
    response = api(olga).patch("/api/v1/queues/q1/", {"resources": {name: 1}}, format="json")
    assert "resources" in fields_of(response)
    assert api(olga).patch("/api/v1/queues/q1/", {"resources": {"gpu": 1}}, format="json").status_code == 200


@pytest.fixture
def echo(monkeypatch: Any) -> str:
    """An algorithm whose params take any string and any extra key (as a plugin's may)."""
    from pydantic import BaseModel, ConfigDict

    from algorithms import registry

    class EchoParams(BaseModel):
        model_config = ConfigDict(extra="allow")
        text: str = ""

    monkeypatch.setattr(registry, "_registry", dict(registry._registry))  # the test's addition goes with it
    registry.algorithm("test.echo", params=EchoParams)(lambda ctx, params: {})
    return "test.echo"


@pytest.mark.parametrize("params", [{"text": "a\u0000b"}, {"a\u0000": 1}, {"deep": [{"x": ["\u0000"]}]}])
def test_nul_anywhere_in_task_params_is_400_naming_params(api, alice, echo, params):
    make_queue("default")
    response = api(alice).post("/api/v1/tasks/", {"algorithm": echo, "params": params}, format="json")
    assert "params" in fields_of(response)
    batch = api(alice).post("/api/v1/tasks/batch/", {"tasks": [{"algorithm": echo, "params": params}]},
                            format="json")
    assert "tasks[0].params" in fields_of(batch)


@pytest.mark.parametrize("query", ["queue=%00", "algorithm=%00", "label=%00", "status=%00", "priority=%00",
                                   "created_after=%00"])
def test_nul_in_a_task_list_filter_is_400_naming_it(api, alice, query):
    assert query.split("=")[0] in fields_of(api(alice).get(f"/api/v1/tasks/?{query}"))


def test_nul_in_an_artifact_name_is_404_not_500(api, alice):
    make_queue("default")
    task_id = api(alice).post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json").json()["id"]
    assert api(alice).get(f"/api/v1/tasks/{task_id}/artifacts/a%00b/").status_code == 404


# --- the safety net: whatever the database refuses is a 400 -----------------------------------

def test_a_data_error_no_validation_caught_is_a_400_without_sql_or_traceback(api, alice, monkeypatch):
    from jobs import selectors
    from jobs.models import Task

    def unchecked(user: Any) -> Any:  # a query built from a value no validation looked at
        return Task.objects.filter(owner=user, algorithm="demo\x00noop")

    monkeypatch.setattr(selectors, "tasks_for", unchecked)
    response = api(alice).get("/api/v1/tasks/")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert "database" in error["message"]
    assert "SELECT" not in response.content.decode() and "Traceback" not in response.content.decode()


# --- Idempotency-Key / X-Request-ID --------------------------------------------------------------

@pytest.mark.parametrize("header", ["Idempotency-Key", "X-Request-ID"])
def test_an_idempotency_key_over_200_characters_is_400_naming_its_header(api, alice, header):
    make_queue("default")
    client = api(alice)
    meta = {f"HTTP_{header.upper().replace('-', '_')}": "k" * 201}
    response = client.post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json", **meta)
    fields = fields_of(response)
    assert list(fields) == [header] and "200" in fields[header][0]
    batch = client.post("/api/v1/tasks/batch/", {"tasks": [{"algorithm": "demo.noop"}]}, format="json", **meta)
    assert list(fields_of(batch)) == [header]
    assert not Task.objects.exists()


def test_two_long_keys_sharing_their_first_200_characters_do_not_collide(api, alice):
    make_queue("default")
    client = api(alice)
    first = client.post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json",
                        HTTP_IDEMPOTENCY_KEY="k" * 200)
    second = client.post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json",
                         HTTP_IDEMPOTENCY_KEY="k" * 200 + "x")
    assert first.status_code == 201 and second.status_code == 400


@pytest.mark.parametrize("length,items", [(200, 1), (199, 3), (198, 12), (200, 12)])
def test_a_batch_with_a_key_of_up_to_200_characters_is_stored_and_replayed(api, alice, length, items):
    make_queue("default")
    client = api(alice)
    body = {"tasks": [{"algorithm": "demo.noop"}] * items}
    key = "k" * length
    first = client.post("/api/v1/tasks/batch/", body, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert first.status_code == 201, first.content
    again = client.post("/api/v1/tasks/batch/", body, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert again.status_code == 200, again.content
    assert [t["id"] for t in again.json()["tasks"]] == [t["id"] for t in first.json()["tasks"]]


def test_the_key_column_holds_the_longest_key_with_the_largest_batch_index():
    from jobs.api.views import IDEMPOTENCY_KEY_MAX

    longest = f"{'k' * IDEMPOTENCY_KEY_MAX}#{settings.CONVEYOR['BATCH_MAX'] - 1}"
    assert len(longest) <= Task._meta.get_field("idempotency_key").max_length


def test_nul_in_an_idempotency_key_is_400_naming_its_header(api, alice):
    make_queue("default")
    response = api(alice).post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json",
                               HTTP_IDEMPOTENCY_KEY="a\u0000b")
    assert list(fields_of(response)) == ["Idempotency-Key"]


# --- bodies over the size limit -----------------------------------------------------------------

@pytest.mark.parametrize("path", ["/api/v1/tasks/", "/api/v1/tasks/batch/"])
def test_a_body_over_the_limit_is_413_naming_the_limit_and_stores_nothing(api, alice, settings, path):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4000  # REQUEST_BODY_MAX_BYTES
    task = {"algorithm": "demo.noop", "labels": ["x" * 100] * 20}  # about 2,100 bytes of JSON
    batch = path.endswith("batch/")
    client = api(alice)

    under = client.post(path, {"tasks": [task]} if batch else task, format="json")
    over = client.post(path, {"tasks": [task] * 2} if batch else {**task, "params": {"note": "y" * 2000}},
                       format="json")

    assert under.status_code == 201, under.content
    assert over.status_code == 413, over.content
    error = over.json()["error"]
    assert error["code"] == "request_too_large" and "4000 bytes" in error["message"]
    assert Task.objects.count() == 1
