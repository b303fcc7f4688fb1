"""Every event reaches the client once and in seq order, even when processes publish a task's events
out of order, and however long the history a reconnecting client asks for.

Real Redis channel layer and PostgreSQL; the reordering is made by publishing stored events by hand, in
reverse, as two processes racing to Redis would.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from unittest import mock

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from jobs import events, services
from jobs.models import Status, Task, TaskEvent
from tests.live.conftest import communicator
from tests.queueing.conftest import make_queue

pytestmark = [pytest.mark.django_db(transaction=True)]


def submit(owner) -> Task:
    """A task that stays PENDING (its queue is paused), whatever workers run in this session."""
    make_queue("held", paused=True)
    spec = services.build_spec(algorithm="demo.noop", queue="held")
    task, _ = services.submit(owner=owner, spec=spec, idempotency_key=None)
    return task


async def drain(comm, quiet: float = 1.0) -> list[dict]:
    """Every message until the socket stays quiet for ``quiet`` seconds."""
    got: list[dict] = []
    while not await comm.receive_nothing(timeout=quiet, interval=0.02):
        message = await comm.receive_output(timeout=5)
        assert message["type"] == "websocket.send", message
        got.append(json.loads(message["text"]))
    return got


async def receive_through(comm, done: Callable[[list[dict]], bool], *, timeout: float = 60.0,
                          quiet: float = 1.0) -> list[dict]:
    """Every message until ``done(messages so far)`` (however slowly a busy machine sends them, up to
    ``timeout`` seconds), then any that follow within ``quiet`` seconds: a duplicate or an extra is
    caught, a slow send is not taken for the end of the stream."""
    got: list[dict] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done(got):
        remaining = deadline - loop.time()
        if remaining <= 0:
            pytest.fail(f"not done within {timeout}s; got {[(m.get('event'), m.get('seq')) for m in got][-20:]}")
        message = await comm.receive_output(timeout=remaining)
        assert message["type"] == "websocket.send", message
        got.append(json.loads(message["text"]))
    return got + await drain(comm, quiet)


def of_task(messages: list[dict], task_id) -> list[dict]:
    """The task's own events: an operator's dashboard also streams queue and worker events
    (``worker.online``, ``worker.lost``, which have no task) and every other task's."""
    return [m for m in messages if m.get("event", "").startswith("task.") and m.get("task_id") == str(task_id)]


def has_seq(task_id, seq: int) -> Callable[[list[dict]], bool]:
    return lambda got: any(m["seq"] == seq for m in of_task(got, task_id))


def two_changes_published_in_reverse(task: Task) -> list[dict]:
    """Two priority changes committed (seq N+1, N+2) but not published; their stored bodies, newest first."""
    with mock.patch.object(events.publisher, "publish", lambda items: None):
        services.change_priority(task_id=task.id, priority=1)
        services.change_priority(task_id=task.id, priority=2)
    task = Task.objects.get(id=task.id)
    return [dict(events.from_row(row, task)) for row in TaskEvent.objects.filter(task=task).order_by("-seq")[:2]]


async def publish(group: str, bodies: list[dict]) -> None:
    for body in bodies:
        await get_channel_layer().group_send(group, {"type": "task.event", "payload": body})


def reversed_on_a_socket(task: Task, path: str, group: str) -> tuple[dict, list[dict]]:
    """Connect to ``path``, let two changes of ``task`` arrive newest first on ``group``: the socket's
    snapshot and the task's events it sent after it, up to the newer change and any extra copy that
    follows."""
    async def scenario():
        comm = communicator(path)
        await comm.connect()
        snapshot = await comm.receive_json_from(timeout=5)
        await drain(comm, 0.3)
        reversed_bodies = await database_sync_to_async(two_changes_published_in_reverse)(task)
        await publish(group, reversed_bodies)
        got = await receive_through(comm, has_seq(task.id, reversed_bodies[0]["seq"]))
        await comm.disconnect()
        return snapshot, of_task(got, task.id)

    return async_to_sync(scenario)()


def test_an_event_published_before_the_one_it_follows_is_sent_after_it(alice, token):
    task, jwt = submit(alice), token(alice)

    snapshot, got = reversed_on_a_socket(task, f"/ws/tasks/{task.id}/?token={jwt}", events.task_group(task.id))

    seq = snapshot["seq"]
    assert [(m["event"], m["seq"]) for m in got] == [("task.priority_changed", seq + 1),
                                                    ("task.priority_changed", seq + 2)]


def test_the_dashboard_fills_a_tasks_gap_and_drops_the_late_copy(alice, olga, token):
    task, jwt = submit(alice), token(olga)

    snapshot, got = reversed_on_a_socket(task, f"/ws/dashboard/?token={jwt}", events.ALL_GROUP)

    seq = next(t["last_seq"] for t in snapshot["tasks"] if t["id"] == str(task.id))
    assert [(m["task_id"], m["seq"]) for m in got] == [(str(task.id), seq + 1), (str(task.id), seq + 2)]


def test_the_dashboard_passes_every_event_of_a_task_newer_than_its_snapshot_however_they_arrive(alice, olga, token):
    jwt = token(olga)

    def created_and_changed_unpublished() -> list[dict]:
        with mock.patch.object(events.publisher, "publish", lambda items: None):
            task = submit(alice)
            services.change_priority(task_id=task.id, priority=1)
        task = Task.objects.get(id=task.id)
        return [dict(events.from_row(row, task)) for row in TaskEvent.objects.filter(task=task).order_by("-seq")]

    async def scenario():
        comm = communicator(f"/ws/dashboard/?token={jwt}")
        await comm.connect()
        await comm.receive_json_from(timeout=5)  # its snapshot, without the task
        await drain(comm, 0.3)
        newest_first = await database_sync_to_async(created_and_changed_unpublished)()
        task_id, seqs = newest_first[0]["task_id"], {b["seq"] for b in newest_first}
        await publish(events.ALL_GROUP, newest_first)
        got = await receive_through(comm, lambda got: seqs <= {m["seq"] for m in of_task(got, task_id)})
        await comm.disconnect()
        return newest_first, of_task(got, task_id)

    newest_first, got = async_to_sync(scenario)()
    assert [m["seq"] for m in got] == [b["seq"] for b in newest_first]  # as they came: the client orders
    assert sorted(m["seq"] for m in got) == list(range(1, len(newest_first) + 1))


def test_a_replay_longer_than_a_page_reaches_the_final_event(alice, token):
    # given a finished task with a history of more than ten thousand events
    task = submit(alice)
    first = Task.objects.get(id=task.id).last_seq
    final = 10_005
    rows = [TaskEvent(task_id=task.id, seq=seq, event="task.log", status=Status.RUNNING, data={"line": str(seq)})
            for seq in range(first + 1, final)]
    rows.append(TaskEvent(task_id=task.id, seq=final, event="task.succeeded", status=Status.SUCCEEDED, data={}))
    TaskEvent.objects.bulk_create(rows)
    Task.objects.filter(id=task.id).update(last_seq=final, status=Status.SUCCEEDED)

    # when a client asks for all of it
    jwt = token(alice)

    async def scenario():
        comm = communicator(f"/ws/tasks/{task.id}/?token={jwt}&after_seq=0")
        await comm.connect()
        got = await receive_through(comm, lambda got: bool(got) and got[-1].get("event") == "task.succeeded",
                                    timeout=120)
        await comm.disconnect()
        return got

    got = async_to_sync(scenario)()
    # then every event arrives once, in order, the final one last
    assert got[0]["event"] == "task.snapshot"
    assert [m["seq"] for m in got[1:]] == list(range(1, final + 1))
    assert got[-1]["event"] == "task.succeeded"


def changed_unpublished(task: Task, times: int) -> list[dict]:
    """``times`` priority changes committed but never published (as if the channel layer lost them); the
    task's stored bodies, oldest first."""
    with mock.patch.object(events.publisher, "publish", lambda items: None):
        for priority in range(times):
            services.change_priority(task_id=task.id, priority=priority)
    task = Task.objects.get(id=task.id)
    return [dict(events.from_row(row, task)) for row in TaskEvent.objects.filter(task=task).order_by("seq")]


def test_the_dashboard_fills_a_lost_run_of_a_task_it_first_saw_live(alice, olga, token):
    """A task newer than the snapshot: the channel layer lost events 3–5 of it (its Redis connection being
    re-established) and 6 came: 3–5 are sent from the database before 6, once each. The dashboard let
    such a gap pass unseen, since only the snapshot's tasks had a floor."""
    jwt = token(olga)

    async def scenario():
        comm = communicator(f"/ws/dashboard/?token={jwt}")
        await comm.connect()
        await comm.receive_json_from(timeout=5)
        await drain(comm, 0.3)
        task = await database_sync_to_async(submit)(alice)  # created and published: seq 1
        stored = await database_sync_to_async(changed_unpublished)(task, 5)  # seq 2–6, all lost
        await publish(events.ALL_GROUP, [stored[1], stored[5], stored[3]])  # 2, then 6, then a late 4
        got = await receive_through(comm, has_seq(task.id, 6))
        await comm.disconnect()
        return task, got

    task, got = async_to_sync(scenario)()
    assert [m["seq"] for m in of_task(got, task.id)] == [1, 2, 3, 4, 5, 6]


@pytest.fixture
def quick_catch_up(settings):
    settings.CONVEYOR = {**settings.CONVEYOR, "WS_RECHECK_SECONDS": 0.3}


@pytest.mark.parametrize("socket", ["task", "dashboard"])
def test_a_lost_last_event_is_sent_from_the_database_at_the_next_recheck(alice, olga, token, quick_catch_up, socket):
    """Nothing follows a task's last event to reveal a gap when that event is the one lost: the re-check
    every ``WS_RECHECK_SECONDS`` catches the socket up from the database."""
    task = submit(alice)
    path = f"/ws/tasks/{task.id}/?token={token(alice)}" if socket == "task" else f"/ws/dashboard/?token={token(olga)}"

    async def scenario():
        comm = communicator(path)
        await comm.connect()
        snapshot = await comm.receive_json_from(timeout=5)
        await drain(comm, 0.3)
        stored = await database_sync_to_async(changed_unpublished)(task, 2)  # never published
        got = await receive_through(comm, has_seq(task.id, stored[-1]["seq"]), timeout=30)
        await comm.disconnect()
        return snapshot, stored, got

    snapshot, stored, got = async_to_sync(scenario)()
    sent = of_task(got, task.id)
    assert [m["seq"] for m in sent] == [b["seq"] for b in stored[-2:]]
    assert all(m["replay"] for m in sent) and {m["event"] for m in sent} == {"task.priority_changed"}
