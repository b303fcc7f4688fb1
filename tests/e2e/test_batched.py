"""Batched dispatch (``DISPATCH_BATCH``) as a user sees it: several task ids per broker message, claimed
and finished together by the real worker, yet every task keeps its own result, events and cancel.

The session's worker consumes ``batched``, which tests/settings.py batches by 4 (``batched:4``).
"""
from __future__ import annotations

import pytest

from jobs.models import Task, TaskEvent
from queueing.models import Queue
from tests.conftest import wait_until
from tests.e2e.test_spine import _status, wait_final

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _submit(client, tasks: list[dict]) -> list[str]:
    response = client.post("/api/v1/tasks/batch/", {"tasks": [{**t, "queue": "batched"} for t in tasks]},
                           format="json")
    assert response.status_code == 201, response.content
    return [t["id"] for t in response.json()["tasks"]]


def _events(task_id: str) -> list[str]:
    return list(TaskEvent.objects.filter(task_id=task_id).order_by("seq").values_list("event", flat=True))


def test_batched_tasks_each_get_their_own_result_and_events(live_worker, alice, api):
    Queue.objects.create(name="batched", concurrency=8)
    client = api(alice)

    ids = _submit(client, [{"algorithm": "demo.hello", "params": {"seconds": 0, "steps": n}} for n in range(1, 10)])

    for n, task_id in enumerate(ids, start=1):
        done = wait_final(client, task_id)
        assert done["status"] == "SUCCEEDED", done
        assert done["attempts"] == 1
        result = client.get(f"/api/v1/tasks/{task_id}/result/").json()["result"]
        assert result == {"greeting": "hello world", "completed_steps": n}  # its own, not a batch-mate's
        names = _events(task_id)
        assert names[:3] == ["task.created", "task.queued", "task.started"] and names[-1] == "task.succeeded"
        assert names.count("task.started") == 1 and names.count("task.succeeded") == 1


def test_cancel_of_a_task_waiting_in_its_batch_skips_it_and_the_wait_keeps_the_rest_alive(live_worker, alice, api):
    # given: one message of 4 tasks; the first runs longer than the heartbeat staleness (3 s in tests),
    # so the three behind it are reaped unless the worker beats for them while they wait
    Queue.objects.create(name="batched", concurrency=4)
    client = api(alice)
    # (12 s, not 4: on a loaded machine seeing the claim and sending the cancel took longer than 4 s)
    ids = _submit(client, [{"algorithm": "demo.hello", "params": {"seconds": 12, "steps": 4}}]
                  + [{"algorithm": "demo.hello", "params": {"seconds": 0, "steps": n}} for n in (1, 2, 3)])
    wait_until(lambda: Task.objects.filter(id__in=ids, status="RUNNING").count() == 4, timeout=20,
               message="the whole batch claimed")

    # when: a task still waiting behind the long one is cancelled
    assert client.post(f"/api/v1/tasks/{ids[2]}/cancel/").status_code == 200

    # then: it ends CANCELLED without running; every other task ran exactly once
    assert wait_final(client, ids[2])["status"] == "CANCELLED"
    assert "task.log" not in _events(ids[2])  # demo.hello logs "hello world" first thing when it runs
    for task_id in (ids[0], ids[1], ids[3]):
        done = wait_final(client, task_id)
        assert done["status"] == "SUCCEEDED" and done["attempts"] == 1, done
        assert _events(task_id).count("task.started") == 1


def test_a_batch_whose_worker_process_is_killed_records_what_finished_and_hands_back_the_rest(live_worker, alice, api):
    # given: a quick task, then one that ignores cancel (its pool child gets killed), then two more
    Queue.objects.create(name="batched", concurrency=4)
    client = api(alice)
    ids = _submit(client, [{"algorithm": "demo.hello", "params": {"seconds": 0, "steps": 1}},
                           {"algorithm": "demo.sleep", "params": {"seconds": 60, "ignore_cancel": True}},
                           {"algorithm": "demo.hello", "params": {"seconds": 0, "steps": 3}},
                           {"algorithm": "demo.hello", "params": {"seconds": 0, "steps": 4}}])
    wait_until(lambda: all(_status(client, i)["status"] == "RUNNING" for i in ids), timeout=20,
               message="the whole batch claimed")
    # the quick task's finish is recorded while the sleeper behind it still runs (by the watchdog)
    wait_until(lambda: _status(client, ids[0])["status"] == "SUCCEEDED", timeout=10, message="the quick task recorded")
    assert _status(client, ids[1])["status"] == "RUNNING"

    # when: the sleeper is cancelled, ignores it, and its pool child is killed after the grace period
    assert client.post(f"/api/v1/tasks/{ids[1]}/cancel/").status_code == 200

    # then: the killed one is CANCELLED, the finished one kept its result, the unstarted ones ran elsewhere once
    assert wait_final(client, ids[1], timeout=30)["status"] == "CANCELLED"
    first = wait_final(client, ids[0])
    assert first["status"] == "SUCCEEDED" and first["attempts"] == 1
    assert client.get(f"/api/v1/tasks/{ids[0]}/result/").json()["result"]["completed_steps"] == 1
    for task_id, steps in ((ids[2], 3), (ids[3], 4)):
        done = wait_final(client, task_id, timeout=30)
        assert done["status"] == "SUCCEEDED" and done["attempts"] == 1, done
        assert client.get(f"/api/v1/tasks/{task_id}/result/").json()["result"]["completed_steps"] == steps
        names = _events(task_id)
        assert "task.requeued" in names and names.count("task.succeeded") == 1


def test_tasks_waiting_their_turn_in_a_batch_are_not_taken_for_stuck(live_worker, alice, api):
    # given: one message of 3 tasks of an algorithm with progress_timeout=3 s, each reporting once and
    # then working 2 s: the third starts 4 s after the claim stamped all three started
    Queue.objects.create(name="batched", concurrency=4)
    client = api(alice)
    ids = _submit(client, [{"algorithm": "demo.stall", "params": {"seconds": 2}}] * 3)

    # then: none is taken for stuck (which would kill the pool child running a healthy batch-mate)
    for task_id in ids:
        assert wait_final(client, task_id)["status"] == "SUCCEEDED"
        assert "task.retrying" not in _events(task_id) and _events(task_id).count("task.started") == 1
