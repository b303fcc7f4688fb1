"""A stored result downloads under a name that says what it is (``<id>-result.bin``, ``.json``), so
``curl -OJ`` or a browser saves a file that opens as its type, and with ``Last-Modified`` (when it was
stored) beside its ``ETag``."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils.dateparse import parse_datetime
from django.utils.http import parse_http_date

from tests.algorithms.helpers import run

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize(("params", "extension", "content_type"), [
    ({"size_mb": 0.5, "seed": 1}, ".bin", "application/octet-stream"),
    ({"size_mb": 0.5, "seed": 1, "format": "json"}, ".json", "application/json"),
], ids=["binary", "json"])
def test_a_stored_result_is_named_by_its_type_and_dated(live_worker, alice, api, params, extension, content_type):
    client = api(alice)
    task = run(client, "demo.blob", params)
    response = client.get(f"/api/v1/tasks/{task['id']}/result/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith(content_type)
    assert response["Content-Disposition"] == f'attachment; filename="{task["id"]}-result{extension}"'
    stored = parse_http_date(response["Last-Modified"])
    finished = parse_datetime(task["finished_at"]).timestamp()
    assert finished - timedelta(minutes=1).total_seconds() <= stored <= finished + 1
