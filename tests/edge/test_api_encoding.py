"""The API speaks JSON, with or without the trailing slash: the schema offers one request encoding (a
client generated from it sends JSON, not a form or multipart body the server would read differently),
a form body is a 415 that says so and makes nothing, and ``POST /api/v1/tasks`` submits, where Django's
``APPEND_SLASH`` answered 301 and clients followed it with a GET (a task list, 200, and no task)."""
from __future__ import annotations

import pytest
from django.test import Client

from jobs.models import Task

pytestmark = pytest.mark.django_db


def test_the_schema_offers_json_request_bodies_only(schema):
    encodings = {(path, method): sorted(op["requestBody"]["content"])
                 for path, ops in schema["paths"].items() for method, op in ops.items()
                 if isinstance(op, dict) and "requestBody" in op}
    assert encodings and all(found == ["application/json"] for found in encodings.values()), encodings


def test_a_form_body_is_a_415_naming_the_encoding_and_makes_no_task(api, alice):
    client = api(alice)
    for content_type, body in (("application/x-www-form-urlencoded", "algorithm=demo.noop"),
                               ("multipart/form-data; boundary=xx",
                                '--xx\r\nContent-Disposition: form-data; name="algorithm"\r\n\r\ndemo.noop\r\n--xx--\r\n')):
        response = client.post("/api/v1/tasks/", body, content_type=content_type)
        assert response.status_code == 415, response.content
        error = response.json()["error"]
        assert error["code"] == "unsupported_media_type" and content_type.split(";")[0] in error["message"]
    assert not Task.objects.exists()


def test_api_paths_without_the_trailing_slash_do_what_they_say(api, alice, olga):
    client = api(alice)
    submitted = client.post("/api/v1/tasks", {"algorithm": "demo.noop"})
    assert submitted.status_code == 201, submitted.content
    assert [str(i) for i in Task.objects.values_list("id", flat=True)] == [submitted.json()["id"]]
    listed = client.get("/api/v1/tasks")
    assert listed.status_code == 200 and [t["id"] for t in listed.json()["results"]] == [submitted.json()["id"]]
    assert client.post(f"/api/v1/tasks/{submitted.json()['id']}/cancel").status_code == 200
    changed = api(olga).patch("/api/v1/queues/default", {"concurrency": 3})
    assert changed.status_code == 200 and changed.json()["concurrency"] == 3
    assert client.post("/api/v1/no-such-thing", {}).status_code == 404
    # Outside the API, Django's redirect stays (the admin's links are its own).
    assert Client().get("/admin").status_code == 301
