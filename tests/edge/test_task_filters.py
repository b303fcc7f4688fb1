"""The task list's query parameters: a value the list cannot honour exactly is a 400 naming the
parameter, in the API's JSON error shape, never a quiet fallback, a cut-short match or a URL the
server cannot read; priority names are taken as at submit."""
from __future__ import annotations

import uuid
from typing import Any

import pytest

from jobs.api.filters import ID_FILTER_MAX
from jobs.models import Task
from tests.queueing.conftest import make_queue

pytestmark = pytest.mark.django_db


def fields_of(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "invalid" and error["message"]
    return error["fields"]


def submit(client: Any, **body: Any) -> str:
    response = client.post("/api/v1/tasks/", {"algorithm": "demo.noop", **body}, format="json")
    assert response.status_code == 201, response.content
    return response.json()["id"]


@pytest.fixture
def client(api: Any, alice: Any) -> Any:
    make_queue("default")
    return api(alice)


# --- label -------------------------------------------------------------------------------------

def test_a_label_longer_than_a_label_can_be_is_400_and_never_matches_a_shorter_one(client):
    longest = "L" * 100
    task_id = submit(client, labels=[longest])

    assert [t["id"] for t in client.get(f"/api/v1/tasks/?label={longest}").json()["results"]] == [task_id]
    assert "label" in fields_of(client.get(f"/api/v1/tasks/?label={longest}X"))  # was: this task


def test_the_submit_and_the_filter_agree_on_the_longest_label(client):
    response = client.post("/api/v1/tasks/", {"algorithm": "demo.noop", "labels": ["x" * 101]}, format="json")
    assert "labels[0]" in fields_of(response)


# --- id ----------------------------------------------------------------------------------------

def test_the_id_filter_takes_up_to_its_cap_and_more_is_a_400_naming_id(client):
    mine = [submit(client) for _ in range(3)]
    ids = mine + [str(uuid.uuid4()) for _ in range(ID_FILTER_MAX - 3)]

    found = client.get("/api/v1/tasks/", {"id": ",".join(ids), "page_size": 500})
    too_many = client.get("/api/v1/tasks/", {"id": ",".join([*ids, str(uuid.uuid4())])})

    assert found.status_code == 200 and {t["id"] for t in found.json()["results"]} == set(mine)
    assert fields_of(too_many)["id"] == [f"at most {ID_FILTER_MAX} ids (got {ID_FILTER_MAX + 1})"]


def test_the_id_cap_keeps_the_url_well_under_the_servers_request_line_limit():
    longest = "/api/v1/tasks/?id=" + "%2C".join(str(uuid.uuid4()) for _ in range(ID_FILTER_MAX)) + "&page_size=500"
    assert len(longest) < 16384 // 3  # daphne (Twisted) takes 16 KiB for the request line and headers


def test_a_malformed_id_is_400_naming_id(client):
    assert "id" in fields_of(client.get("/api/v1/tasks/?id=not-a-uuid"))


# --- page_size ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["abc", "0", "-1", "1.5", "1e3", "%00", " 5", "+5", "\u0665"])
def test_a_page_size_that_is_not_a_whole_number_from_1_is_400_naming_it(client, value):
    assert "page_size" in fields_of(client.get(f"/api/v1/tasks/?page_size={value}"))


def test_a_page_size_over_the_most_reads_as_the_most_and_a_good_one_is_honoured(client):
    for _ in range(3):
        submit(client)
    assert len(client.get("/api/v1/tasks/?page_size=2").json()["results"]) == 2
    assert len(client.get("/api/v1/tasks/?page_size=100000").json()["results"]) == 3
    assert len(client.get("/api/v1/tasks/").json()["results"]) == 3
    assert len(client.get("/api/v1/tasks/?page_size=").json()["results"]) == 3  # empty, as an empty filter


# --- priority ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "number"), [("high", 8), ("HIGH", 8), ("critical", 9), ("low", 2),
                                               ("normal", 5), ("8", 8), ("0", 0)])
def test_the_priority_filter_takes_a_number_or_a_name_as_the_submit_does(client, value, number):
    wanted = submit(client, priority=number)
    submit(client, priority=(number + 1) % 10)

    listed = client.get(f"/api/v1/tasks/?priority={value}")

    assert listed.status_code == 200, listed.content
    assert [t["id"] for t in listed.json()["results"]] == [wanted]
    assert Task.objects.get(id=wanted).priority == number


@pytest.mark.parametrize("value", ["urgent", "10", "-1", "4.5", "%00"])
def test_a_priority_that_is_neither_0_9_nor_a_name_is_400_naming_it(client, value):
    assert "priority" in fields_of(client.get(f"/api/v1/tasks/?priority={value}"))
