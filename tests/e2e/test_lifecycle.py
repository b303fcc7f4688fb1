"""Cancellation, retries, time limits and duplicate deliveries, seen through the REST API with a real worker."""
from __future__ import annotations

import time

import pytest

from tests.conftest import wait_until
from tests.e2e.test_spine import wait_final
from tests.edge.test_observability import json_lines

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def submit(client, algorithm: str, **body) -> dict:
    response = client.post("/api/v1/tasks/", {"algorithm": algorithm, **body}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def status_of(client, task_id: str) -> str:
    return client.get(f"/api/v1/tasks/{task_id}/").json()["status"]


def event_names(client, task_id: str) -> list[str]:
    return [e["event"] for e in client.get(f"/api/v1/tasks/{task_id}/logs/").json()]


def test_cancel_of_waiting_task_is_immediate_and_it_never_starts(live_worker, alice, api):
    from queueing.models import Queue

    client = api(alice)
    Queue.objects.update_or_create(name="default", defaults={"paused": True})
    try:
        task = submit(client, "demo.hello", params={"seconds": 0.1})

        response = client.post(f"/api/v1/tasks/{task['id']}/cancel/")

        assert response.status_code == 200
        assert response.json()["status"] == "CANCELLED"
    finally:
        Queue.objects.filter(name="default").update(paused=False)
    time.sleep(1.5)  # a dispatch tick and a reconcile pass have run since the resume
    body = client.get(f"/api/v1/tasks/{task['id']}/").json()
    assert body["status"] == "CANCELLED" and body["started_at"] is None and body["attempts"] == 0
    assert "task.started" not in event_names(client, task["id"])


def test_cancel_of_running_task_stops_it_cooperatively(live_worker, alice, api):
    client = api(alice)
    task = submit(client, "demo.sleep", params={"seconds": 60})
    wait_until(lambda: status_of(client, task["id"]) == "RUNNING", message="task to start")

    response = client.post(f"/api/v1/tasks/{task['id']}/cancel/")

    assert response.status_code == 200
    assert response.json()["cancel_requested"] is True
    done = wait_final(client, task["id"], timeout=10)
    assert done["status"] == "CANCELLED"
    assert event_names(client, task["id"])[-1] == "task.cancelled"


def test_running_task_that_ignores_cancel_is_terminated_after_grace_and_worker_goes_on(live_worker, alice, api):
    client = api(alice)
    task = submit(client, "demo.sleep", params={"seconds": 120, "ignore_cancel": True})
    wait_until(lambda: status_of(client, task["id"]) == "RUNNING", message="task to start")

    client.post(f"/api/v1/tasks/{task['id']}/cancel/")

    done = wait_final(client, task["id"], timeout=15)
    assert done["status"] == "CANCELLED"
    assert "terminated" in done["error"]
    # the pool replaced the killed child, the redelivered message was dropped, new work still runs
    after = submit(client, "demo.noop")
    assert wait_final(client, after["id"])["status"] == "SUCCEEDED"
    assert client.get(f"/api/v1/tasks/{task['id']}/").json()["status"] == "CANCELLED"
    assert event_names(client, task["id"]).count("task.started") == 1
    # the worker's log says which task it killed for, in the task_id field (the watchdog's thread has no task)
    killed = [line for line in json_lines(live_worker.log_path)
              if "terminating pool child" in line.get("event", "") and task["id"] in line["event"]]
    assert killed and all(line["task_id"] == task["id"] for line in killed)


def test_failing_task_retries_with_backoff_then_succeeds(live_worker, alice, api):
    client = api(alice)
    task = submit(client, "demo.flaky", params={"fail_times": 2})

    done = wait_final(client, task["id"])

    assert done["status"] == "SUCCEEDED"
    assert done["attempts"] == 3
    events = client.get(f"/api/v1/tasks/{task['id']}/logs/").json()
    retries = [e for e in events if e["event"] == "task.retrying"]
    assert [r["data"]["attempt"] for r in retries] == [1, 2]
    assert all(r["data"]["retry_in_seconds"] > 0 for r in retries)
    assert "planned failure on attempt 1" in retries[0]["data"]["error"]
    assert client.get(f"/api/v1/tasks/{task['id']}/result/").json()["result"] == {"attempt": 3}


def test_task_that_keeps_failing_ends_failed_after_max_retries(live_worker, alice, api):
    client = api(alice)
    task = submit(client, "demo.flaky", params={"fail_times": 10}, max_retries=1)

    done = wait_final(client, task["id"])

    assert done["status"] == "FAILED"
    assert done["attempts"] == 2
    assert "planned failure on attempt 2" in done["error"]
    assert client.get(f"/api/v1/tasks/{task['id']}/result/").status_code == 409


def test_task_over_its_time_limit_ends_timed_out(live_worker, alice, api):
    client = api(alice)
    task = submit(client, "demo.sleep", params={"seconds": 60}, timeout_seconds=1)

    done = wait_final(client, task["id"], timeout=15)

    assert done["status"] == "TIMED_OUT"
    assert "time limit" in done["error"]
    assert done["attempts"] == 1


def test_retry_endpoint_reruns_a_finished_task_as_a_new_task(live_worker, alice, api):
    client = api(alice)
    failed = submit(client, "demo.flaky", params={"fail_times": 1}, max_retries=0)
    assert wait_final(client, failed["id"])["status"] == "FAILED"

    response = client.post(f"/api/v1/tasks/{failed['id']}/retry/")

    assert response.status_code == 201
    again = response.json()
    assert again["id"] != failed["id"] and again["retry_of"] == failed["id"]
    # the new task starts at attempt 1 again, so demo.flaky fails once more: the rerun is a real rerun
    assert wait_final(client, again["id"])["status"] == "FAILED"
    assert client.get(f"/api/v1/tasks/{failed['id']}/").json()["status"] == "FAILED"


def test_a_retry_sent_twice_with_one_idempotency_key_makes_one_task(alice, api):
    from tests.conftest import unconsumed_queue

    client = api(alice)
    queue = unconsumed_queue()
    ended = []
    for _ in range(2):  # two finished tasks: cancelled while they wait in a queue no worker takes from
        task = submit(client, "demo.noop", queue=queue)
        assert client.post(f"/api/v1/tasks/{task['id']}/cancel/").json()["status"] == "CANCELLED"
        ended.append(task["id"])

    # when: a client's retry is sent again (a timeout, a double click) with the same key
    first = client.post(f"/api/v1/tasks/{ended[0]}/retry/", HTTP_IDEMPOTENCY_KEY="retry-once")
    again = client.post(f"/api/v1/tasks/{ended[0]}/retry/", HTTP_IDEMPOTENCY_KEY="retry-once")
    other = client.post(f"/api/v1/tasks/{ended[1]}/retry/", HTTP_IDEMPOTENCY_KEY="retry-once")

    # then: one new task, the second answer names it; the key used for another task is a conflict
    assert (first.status_code, again.status_code) == (201, 200), (first.content, again.content)
    assert again.json()["id"] == first.json()["id"] and first.json()["retry_of"] == ended[0]
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict", other.content
    retries = client.get("/api/v1/tasks/", {"queue": queue}).json()["results"]
    assert sorted(t["retry_of"] or "" for t in retries) == sorted(["", "", ended[0]])
    # without a key each retry is a new task, as before
    assert client.post(f"/api/v1/tasks/{ended[1]}/retry/").status_code == 201
    assert client.post(f"/api/v1/tasks/{ended[1]}/retry/").status_code == 201


def test_retry_of_unfinished_task_is_409(live_worker, alice, api):
    client = api(alice)
    task = submit(client, "demo.sleep", params={"seconds": 30})
    response = client.post(f"/api/v1/tasks/{task['id']}/retry/")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "invalid_transition"
    client.post(f"/api/v1/tasks/{task['id']}/cancel/")
    wait_final(client, task["id"])


def test_cancel_of_finished_task_is_409(live_worker, alice, api):
    client = api(alice)
    task = submit(client, "demo.noop")
    wait_final(client, task["id"])
    response = client.post(f"/api/v1/tasks/{task['id']}/cancel/")
    assert response.status_code == 409
    assert client.get(f"/api/v1/tasks/{task['id']}/").json()["status"] == "SUCCEEDED"


def test_duplicate_delivery_runs_task_once(live_worker, alice, api):
    from queueing import dispatch

    client = api(alice)
    task = submit(client, "demo.sleep", params={"seconds": 1.5})
    wait_until(lambda: status_of(client, task["id"]) == "RUNNING", message="task to start")

    dispatch.send("default", [task["id"], task["id"]])  # the broker delivers the same id twice more

    done = wait_final(client, task["id"])
    assert done["status"] == "SUCCEEDED" and done["attempts"] == 1
    time.sleep(0.5)
    assert event_names(client, task["id"]).count("task.started") == 1
