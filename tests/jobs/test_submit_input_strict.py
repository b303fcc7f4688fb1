"""What a submit and a task's log take, as a client sees it: labels are strings as sent (a number is a
400 naming the label, never its text stored); a non-finite number in params is a 400 naming its leaf; a
cursor that is not one and a repeated ``after_seq`` are 400s naming them, on the REST API and the socket."""
from __future__ import annotations

import pytest

from jobs.models import Task

pytestmark = pytest.mark.django_db


def _post(client, url, raw: str):
    """POST a JSON body as written (``1e400`` cannot be written by ``json.dumps``)."""
    return client.post(url, raw, content_type="application/json")


def test_a_label_that_is_not_a_string_is_refused_by_its_index(alice, api):
    client = api(alice)
    response = _post(client, "/api/v1/tasks/", '{"algorithm": "demo.noop", "labels": [1e400, 7, 1.50, "ok"]}')
    assert response.status_code == 400, response.content
    fields = response.json()["error"]["fields"]
    assert fields["labels[0]"] == ["must be a string"] and "labels[1]" in fields and "labels[2]" in fields
    assert "labels[3]" not in fields
    assert not Task.objects.exists()
    batch = _post(client, "/api/v1/tasks/batch/", '{"tasks": [{"algorithm": "demo.noop", "labels": ["a", true]}]}')
    assert batch.status_code == 400 and "tasks[0].labels[1]" in batch.json()["error"]["fields"], batch.content
    made = client.post("/api/v1/tasks/", {"algorithm": "demo.noop", "labels": ["7", "1.50"]}, format="json")
    assert made.status_code == 201 and made.json()["labels"] == ["7", "1.50"]


def test_a_non_finite_number_in_params_is_named_by_its_leaf(alice, api):
    client = api(alice)
    response = _post(client, "/api/v1/tasks/", '{"algorithm": "demo.hello", "params": {"seconds": 1e400}}')
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert list(error["fields"]) == ["params.seconds"], error
    assert error["fields"]["params.seconds"][0].startswith("must be a finite number")
    assert error["message"].startswith("params.seconds: must be a finite number"), error
    nested = _post(client, "/api/v1/tasks/", '{"algorithm": "demo.hello", "params": {"a": {"b": [1, -1e400]}}}')
    assert nested.status_code == 400 and list(nested.json()["error"]["fields"]) == ["params.a.b[1]"], nested.content
    batch = _post(client, "/api/v1/tasks/batch/",
                  '{"tasks": [{"algorithm": "demo.hello", "params": {"seconds": -1e999}}]}')
    assert batch.status_code == 400, batch.content
    assert list(batch.json()["error"]["fields"]) == ["tasks[0].params.seconds"], batch.content
    assert not Task.objects.exists()
