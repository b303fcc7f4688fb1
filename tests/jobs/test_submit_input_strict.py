"""What a submit and a task's log take, as a client sees it: labels are strings as sent (a number is a
400 naming the label, never its text stored); a non-finite number in params is a 400 naming its leaf; a
cursor that is not one and a repeated ``after_seq`` are 400s naming them, on the REST API and the socket."""
from __future__ import annotations

import json

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


@pytest.mark.parametrize("cursor", ["!!!!", "%00", "====", "garbage"])
def test_a_cursor_that_is_none_is_a_400_naming_cursor_not_the_first_page(alice, api, cursor):
    client = api(alice)
    for _ in range(3):
        client.post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json")
    response = client.get(f"/api/v1/tasks/?page_size=2&cursor={cursor}")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["fields"] == {"cursor": ["invalid cursor"]}
    # A real cursor still pages, and an empty ?cursor= is no cursor (the first page).
    first = client.get("/api/v1/tasks/?page_size=2&cursor=").json()
    assert len(first["results"]) == 2 and first["next"]
    assert len(client.get(first["next"]).json()["results"]) == 1


@pytest.mark.parametrize("query", ["after_seq=5&after_seq=1", "after_seq=abc&after_seq=2", "after_seq=1&after_seq=1"])
def test_a_repeated_after_seq_is_a_400_naming_it(alice, api, query):
    client = api(alice)
    task = client.post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json").json()
    logs = f"/api/v1/tasks/{task['id']}/logs/"
    response = client.get(f"{logs}?{query}")
    assert response.status_code == 400, response.content
    assert "after_seq" in response.json()["error"]["fields"], response.content
    assert client.get(f"{logs}?after_seq=0").json()[0]["seq"] == 1  # given once, as before


@pytest.mark.django_db(transaction=True)
def test_a_repeated_after_seq_closes_the_socket_4400(alice, api):
    from asgiref.sync import async_to_sync

    from tests.conftest import PASSWORD, unconsumed_queue
    from tests.live.conftest import communicator

    client = api(alice)
    task = client.post("/api/v1/tasks/", {"algorithm": "demo.noop", "queue": unconsumed_queue()}, format="json")
    task_id = task.json()["id"]
    login = {"username": "alice", "password": PASSWORD}
    jwt = client.post("/api/v1/auth/token/", login, format="json").json()["access"]

    async def scenario(query: str):
        comm = communicator(f"/ws/tasks/{task_id}/?token={jwt}&{query}")
        await comm.connect()
        message = await comm.receive_output(timeout=5)
        await comm.disconnect()
        return message

    assert async_to_sync(scenario)("after_seq=5&after_seq=0") == {"type": "websocket.close", "code": 4400}
    assert async_to_sync(scenario)("after_seq=abc&after_seq=0") == {"type": "websocket.close", "code": 4400}
    opened = async_to_sync(scenario)("after_seq=0")
    assert opened["type"] == "websocket.send" and json.loads(opened["text"])["event"] == "task.snapshot", opened
