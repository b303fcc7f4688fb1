"""Users see and touch only their own tasks; operators see all."""
from __future__ import annotations

from uuid import UUID

import pytest

from jobs.models import Task
from tests.conftest import unconsumed_queue

pytestmark = pytest.mark.django_db


@pytest.fixture
def alices_task(alice, api) -> dict:
    return api(alice).post("/api/v1/tasks/", {"algorithm": "demo.hello"}, format="json").json()


@pytest.mark.parametrize("suffix", ["", "result/", "logs/"])
def test_bob_gets_404_for_alices_task(bob, api, alices_task, suffix):
    response = api(bob).get(f"/api/v1/tasks/{alices_task['id']}/{suffix}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "task_not_found"


@pytest.mark.parametrize("action", ["cancel/", "retry/"])
def test_bob_cannot_cancel_or_retry_alices_task(bob, api, alices_task, action):
    response = api(bob).post(f"/api/v1/tasks/{alices_task['id']}/{action}")
    assert response.status_code == 404
    assert Task.objects.get(id=alices_task["id"]).status != "CANCELLED"


def test_list_shows_only_own_tasks_and_operators_see_all(alice, bob, olga, api, alices_task):
    api(bob).post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json")

    mine = api(alice).get("/api/v1/tasks/").json()["results"]
    everything = api(olga).get("/api/v1/tasks/").json()["results"]

    assert [t["id"] for t in mine] == [alices_task["id"]]
    assert {t["owner"] for t in everything} == {"alice", "bob"}


def test_unknown_or_malformed_task_id_is_404(alice, api):
    client = api(alice)
    assert client.get("/api/v1/tasks/00000000-0000-0000-0000-000000000000/").status_code == 404
    assert client.get("/api/v1/tasks/not-a-uuid/").status_code == 404


def test_list_is_newest_first_with_cursor_pages_and_filters(alice, api):
    client = api(alice)
    ids = [client.post("/api/v1/tasks/", {"algorithm": "demo.noop", "labels": ["exp"] if i % 2 else []},
                       format="json").json()["id"] for i in range(5)]

    page = client.get("/api/v1/tasks/?page_size=2").json()
    second = client.get(page["next"]).json()
    labelled = client.get("/api/v1/tasks/?label=exp").json()["results"]
    by_status = client.get("/api/v1/tasks/?status=SUCCEEDED").json()["results"]

    assert [t["id"] for t in page["results"] + second["results"]] == ids[::-1][:4]
    assert {t["id"] for t in labelled} == {ids[1], ids[3]}
    assert by_status == []
    assert client.get("/api/v1/tasks/?status=BOGUS").status_code == 400


def test_list_filters_by_ids_and_every_copy_carries_its_last_seq(alice, bob, api):
    """``?id=a,b``: the dashboard fills the rows it made from live events in one request; ``last_seq``
    tells it which copy is newer than the events it already applied."""
    client = api(alice)
    ids = [client.post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json").json()["id"] for _ in range(3)]
    bobs = api(bob).post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json").json()["id"]

    picked = client.get(f"/api/v1/tasks/?id={ids[0]},{ids[2]},{bobs}").json()["results"]

    assert {t["id"] for t in picked} == {ids[0], ids[2]}  # another user's id is not found, not an error
    assert all(t["last_seq"] == Task.objects.get(id=t["id"]).last_seq >= 1 for t in picked)
    assert client.get(f"/api/v1/tasks/{ids[1]}/").json()["last_seq"] >= 1
    assert client.get("/api/v1/tasks/?id=not-a-uuid").status_code == 400


def test_jwt_refresh_gives_a_working_access_token(alice, client):
    pair = client.post("/api/v1/auth/token/", {"username": "alice", "password": "correct horse battery staple"},
                       content_type="application/json").json()
    refreshed = client.post("/api/v1/auth/token/refresh/", {"refresh": pair["refresh"]},
                            content_type="application/json")
    assert refreshed.status_code == 200
    response = client.get("/api/v1/tasks/", HTTP_AUTHORIZATION=f"Bearer {refreshed.json()['access']}")
    assert response.status_code == 200


def test_a_password_change_ends_the_tokens_issued_before_it(alice, client):
    """A stolen token pair is worth nothing once the password is changed: the access token is refused,
    and the refresh token mints no new one (401 with a JSON error, never a 200 or a 500)."""
    pair = client.post("/api/v1/auth/token/", {"username": "alice", "password": "correct horse battery staple"},
                       content_type="application/json").json()
    alice.set_password("a brand new passphrase")
    alice.save()

    assert client.get("/api/v1/tasks/", HTTP_AUTHORIZATION=f"Bearer {pair['access']}").status_code == 401
    refreshed = client.post("/api/v1/auth/token/refresh/", {"refresh": pair["refresh"]}, content_type="application/json")
    assert refreshed.status_code == 401 and "error" in refreshed.json()
    fresh = client.post("/api/v1/auth/token/", {"username": "alice", "password": "a brand new passphrase"},
                        content_type="application/json").json()
    assert client.get("/api/v1/tasks/", HTTP_AUTHORIZATION=f"Bearer {fresh['access']}").status_code == 200


def test_a_deleted_users_refresh_token_is_401(alice, client):
    pair = client.post("/api/v1/auth/token/", {"username": "alice", "password": "correct horse battery staple"},
                       content_type="application/json").json()
    alice.delete()
    refreshed = client.post("/api/v1/auth/token/refresh/", {"refresh": pair["refresh"]}, content_type="application/json")
    assert refreshed.status_code == 401 and "error" in refreshed.json()


def test_wrong_password_is_401_json(alice, client):
    response = client.post("/api/v1/auth/token/", {"username": "alice", "password": "nope"},
                           content_type="application/json")
    assert response.status_code == 401
    assert "error" in response.json()


def test_algorithms_list_shows_parameter_schemas(alice, api):
    algorithms = {a["name"]: a for a in api(alice).get("/api/v1/algorithms/").json()}
    hello = algorithms["demo.hello"]
    assert hello["params_schema"]["properties"]["seconds"]["default"] == 3
    assert hello["params_schema"]["properties"]["steps"]["default"] == 10
    assert "demo.noop" in algorithms


@pytest.mark.django_db(transaction=True)  # the dispatch runs on commit
def test_a_request_id_stays_on_its_users_own_task_events(alice, bob, api):
    """Alice cancels her task, and her next submit dispatches Bob's waiting task in her request: Bob's
    ``task.queued`` keeps the request id of his own submit, never Alice's X-Request-ID (often her
    idempotency key or a build name)."""
    from queueing.models import Queue

    solo = unconsumed_queue()  # no worker takes its tasks: they stay QUEUED and PENDING
    Queue.objects.filter(name=solo).update(concurrency=1)
    a, b = api(alice), api(bob)
    mine = a.post("/api/v1/tasks/", {"algorithm": "demo.hello", "queue": solo}, format="json").json()
    his = b.post("/api/v1/tasks/", {"algorithm": "demo.hello", "queue": solo}, format="json",
                 HTTP_X_REQUEST_ID="bob-submit").json()
    statuses = dict(Task.objects.filter(id__in=[mine["id"], his["id"]]).values_list("id", "status"))
    assert [statuses[UUID(mine["id"])], statuses[UUID(his["id"])]] == ["QUEUED", "PENDING"]

    assert a.post(f"/api/v1/tasks/{mine['id']}/cancel/").status_code == 200
    again = a.post("/api/v1/tasks/", {"algorithm": "demo.hello", "queue": solo}, format="json",
                   HTTP_X_REQUEST_ID="alice-ci:zephyr:4712").json()

    assert Task.objects.get(id=his["id"]).status == "QUEUED"
    his_events = {e["event"]: e["data"] for e in b.get(f"/api/v1/tasks/{his['id']}/logs/").json()}
    assert his_events["task.queued"]["request_id"] == "bob-submit"
    assert a.get(f"/api/v1/tasks/{again['id']}/logs/").json()[0]["data"]["request_id"] == "alice-ci:zephyr:4712"


@pytest.mark.parametrize("suffix", ["result/", "artifacts/<img src=x onerror=alert(1)>/"])
def test_download_errors_are_json_whatever_a_browser_accepts(alice, api, alices_task, suffix):
    """A browser asks for text/html first: the download endpoints take any Accept, and their errors are
    JSON labelled as such, never ``*/*`` (which leaves the browser to guess at a body echoing the URL)."""
    accept = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
    response = api(alice).get(f"/api/v1/tasks/{alices_task['id']}/{suffix}", HTTP_ACCEPT=accept)
    assert 400 <= response.status_code < 500
    assert response["Content-Type"] == "application/json"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "error" in response.json()
