"""pool_shrink against real worker processes: the worker itself decides, from its live pool, whether a
shrink would leave it no process, so two quick shrinks (or a shrink right after a grow) are answered by
what the pool is now, not by the registry row of the last heartbeat."""
from __future__ import annotations

from typing import Any

import pytest

from config.celery import app
from queueing import control
from tests.conftest import wait_until
from tests.queueing.conftest import make_queue

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def registered(ops: Any, hostname: str) -> dict:
    return wait_until(lambda: next((w for w in ops.get("/api/v1/workers/").json()
                                    if w["hostname"] == hostname and w["alive"]), None),
                      message=f"{hostname} registers")


def processes(hostname: str) -> list[int] | None:
    """The pids of the worker's pool children, from the worker itself (not the registry row); None when its
    reply did not come in time (a loaded machine), so that ``wait_until`` asks again."""
    stats = app.control.inspect([hostname], timeout=10).stats() or {}
    return stats[hostname]["pool"]["processes"] if hostname in stats else None


def pool_of(hostname: str, size: int) -> bool:
    return (pids := processes(hostname)) is not None and len(pids) == size


def shrink(ops: Any, hostname: str, **body: Any) -> Any:
    return ops.post(f"/api/v1/workers/{hostname}/pool_shrink/", body, format="json")


def test_two_quick_shrinks_of_a_two_process_worker_leave_it_one(live_worker, extra_worker, olga, alice, api):
    ops = api(olga)
    make_queue("shrinking")
    worker = extra_worker("shrinking", 2, tag="shrink2")
    registered(ops, worker.hostname)

    first, second = shrink(ops, worker.hostname), shrink(ops, worker.hostname)  # within one heartbeat

    assert first.status_code == 202, first.content
    assert second.status_code == 409, second.content
    err = second.json()["error"]
    assert "no process" in err["message"] and "it has 1" in err["message"] and "shutdown" in err["message"]
    assert worker.hostname in err["message"]
    wait_until(lambda: pool_of(worker.hostname, 1), message="the pool down to one process")

    # and that process still runs the worker's tasks
    body = {"algorithm": "demo.sleep", "params": {"seconds": 0.05}, "queue": "shrinking"}
    created = api(alice).post("/api/v1/tasks/", body, format="json")
    assert created.status_code == 201, created.content
    done = wait_until(lambda: (t := api(alice).get(f"/api/v1/tasks/{created.json()['id']}/").json())["status"]
                      in {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"} and t, message="the task to finish")
    assert done["status"] == "SUCCEEDED" and done["worker"] == worker.hostname
    wait_until(lambda: pool_of(worker.hostname, 1), message="still one process")


def test_a_shrink_right_after_a_grow_is_accepted(live_worker, extra_worker, olga, api):
    ops = api(olga)
    worker = extra_worker("spare", 1, tag="grow-shrink")
    row = registered(ops, worker.hostname)
    assert row["concurrency"] == 1

    grown = ops.post(f"/api/v1/workers/{worker.hostname}/pool_grow/", {"n": 2}, format="json")
    assert grown.status_code == 202, grown.content
    shrunk = shrink(ops, worker.hostname)  # the registry row still says 1 process

    assert shrunk.status_code == 202, shrunk.content
    wait_until(lambda: pool_of(worker.hostname, 2), message="the pool at 1 + 2 - 1 processes")
    refused = shrink(ops, worker.hostname, n=2)  # 2 of 2: refused before anything goes
    assert refused.status_code == 409, refused.content
    assert "it has 2" in refused.json()["error"]["message"]
    wait_until(lambda: pool_of(worker.hostname, 2), message="still two processes")


def test_a_worker_without_the_command_answers_in_the_shape_taken_for_an_old_worker(live_worker, extra_worker):
    """A worker of an earlier release does not know ``conveyor_pool_shrink``: kombu answers with the
    KeyError, which ``queueing.control`` reads as "old worker" (and falls back to Celery's pool_shrink)."""
    worker = extra_worker("spare", 1, tag="unknown-command")
    replies = app.control.broadcast("conveyor_no_such_command", destination=[worker.hostname], reply=True,
                                    timeout=10)
    assert control._unknown_command(replies, "conveyor_no_such_command"), replies
    assert not control._unknown_command([{worker.hostname: {"ok": "pool will shrink"}}], "conveyor_no_such_command")
    assert not control._unknown_command([], "conveyor_no_such_command")
