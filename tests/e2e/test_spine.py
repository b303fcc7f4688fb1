"""The user's view of the spine: REST submit → real Celery worker process → stored result."""
from __future__ import annotations

import pytest

from tests.conftest import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _status(client, task_id: str) -> dict:
    response = client.get(f"/api/v1/tasks/{task_id}/")
    assert response.status_code == 200, response.content
    return response.json()


def wait_final(client, task_id: str, timeout: float = 30.0) -> dict:
    final = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}
    return wait_until(lambda: (body := _status(client, task_id))["status"] in final and body,
                      timeout=timeout, message=f"task {task_id} to finish")


def test_submitted_hello_task_runs_on_worker_and_stores_result_logs_and_progress(live_worker, alice, api):
    client = api(alice)

    response = client.post("/api/v1/tasks/", {"algorithm": "demo.hello", "params": {"seconds": 0.5, "steps": 5}},
                           format="json")
    assert response.status_code == 201, response.content
    task = response.json()
    assert task["status"] in {"PENDING", "QUEUED", "RUNNING"}
    assert task["params"] == {"seconds": 0.5, "steps": 5}

    done = wait_final(client, task["id"])
    assert done["status"] == "SUCCEEDED", done
    assert done["progress"]["percent"] == 100.0
    assert done["attempts"] == 1
    assert done["started_at"] and done["finished_at"] >= done["started_at"]

    result = client.get(f"/api/v1/tasks/{task['id']}/result/").json()
    assert result["result"] == {"greeting": "hello world", "completed_steps": 5}

    events = client.get(f"/api/v1/tasks/{task['id']}/logs/").json()
    names = [e["event"] for e in events]
    assert names[:3] == ["task.created", "task.queued", "task.started"]
    assert names[-1] == "task.succeeded"
    assert {"event": "task.log", "line": "hello world"} in [
        {"event": e["event"], "line": e["data"].get("line")} for e in events]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_batch_submit_runs_every_task(live_worker, alice, api):
    client = api(alice)
    response = client.post("/api/v1/tasks/batch/", {"tasks": [{"algorithm": "demo.noop"}] * 5}, format="json")
    assert response.status_code == 201, response.content
    ids = [t["id"] for t in response.json()["tasks"]]
    assert len(ids) == 5
    for task_id in ids:
        assert wait_final(client, task_id)["status"] == "SUCCEEDED"


def test_result_of_unfinished_task_is_409(live_worker, alice, api):
    client = api(alice)
    task = client.post("/api/v1/tasks/", {"algorithm": "demo.sleep", "params": {"seconds": 5}}, format="json").json()
    response = client.get(f"/api/v1/tasks/{task['id']}/result/")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "no_result"
    client.post(f"/api/v1/tasks/{task['id']}/cancel/")
    wait_final(client, task["id"])
