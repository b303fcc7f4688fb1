"""The WebSocket endpoints as a client sees them: auth closes, snapshot, replay after ``after_seq``,
the live stream from a real worker, dashboard isolation and operator queue events.

Real Redis channel layer, real Celery worker process; the consumers run in-process under Channels'
``WebsocketCommunicator``.
"""
from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.sync import async_to_sync

from tests.live.conftest import FINAL_EVENTS, communicator, receive_until, task_events

pytestmark = [pytest.mark.django_db(transaction=True)]


def submit(client, algorithm: str = "demo.hello", **params) -> dict:
    response = client.post("/api/v1/tasks/", {"algorithm": algorithm, "params": params}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def is_final(body: dict) -> bool:
    return body.get("event") in FINAL_EVENTS


def stream_until_final(path: str) -> list[dict]:
    """Connect to ``path`` and collect every message up to the task's final event."""
    async def scenario() -> list[dict]:
        comm = communicator(path)
        await comm.connect()
        messages = await receive_until(comm, is_final)
        await comm.disconnect()
        return messages

    return async_to_sync(scenario)()


def assert_gapless(events: list[dict], *, after: int) -> None:
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(after + 1, after + 1 + len(seqs))), seqs


# --- authentication ----------------------------------------------------------------------------

def test_socket_without_token_is_closed_4401_when_first_message_is_not_auth(alice, api):
    task = submit(api(alice), seconds=0.1, steps=1)

    async def scenario():
        comm = communicator(f"/ws/tasks/{task['id']}/")
        connected, _ = await comm.connect()
        assert connected
        await comm.send_json_to({"type": "hello"})
        closed = await comm.receive_output(timeout=5)
        assert closed == {"type": "websocket.close", "code": 4401}

    async_to_sync(scenario)()


def test_invalid_or_refresh_token_is_closed_4401_before_any_data(alice, api, token):
    task = submit(api(alice), seconds=0.1, steps=1)

    async def scenario(bad: str):
        comm = communicator(f"/ws/tasks/{task['id']}/?token={bad}")
        await comm.connect()
        assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}

    async_to_sync(scenario)("not-a-jwt")
    async_to_sync(scenario)(token(alice)[:-3] + "abc")  # signature no longer matches


def test_expired_access_token_and_refresh_token_are_closed_4401(alice, api):
    from datetime import timedelta

    from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

    task = submit(api(alice), seconds=0.1, steps=1)
    expired = AccessToken.for_user(alice)
    expired.set_exp(lifetime=-timedelta(seconds=120))  # past JWT_LEEWAY_SECONDS (30)
    refresh = RefreshToken.for_user(alice)

    async def scenario(bad: str):
        comm = communicator(f"/ws/tasks/{task['id']}/")
        await comm.connect()
        await comm.send_json_to({"type": "auth", "token": bad})
        assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}

    async_to_sync(scenario)(str(expired))
    async_to_sync(scenario)(str(refresh))


def test_socket_is_closed_4401_when_its_access_token_expires(alice, api):
    from datetime import timedelta

    from rest_framework_simplejwt.tokens import AccessToken

    task = submit(api(alice), seconds=0.1, steps=1)
    # Long enough to connect and get the snapshot on a busy machine (simplejwt keeps whole seconds of
    # ``exp``, so the token lives 4-5 s), short enough to wait out.
    lifetime = 5
    short = AccessToken.for_user(alice)
    short.set_exp(lifetime=timedelta(seconds=lifetime))

    async def scenario():
        comm = communicator(f"/ws/tasks/{task['id']}/?token={short}")
        await comm.connect()
        snapshot = await comm.receive_json_from(timeout=lifetime + 10)
        while (message := await comm.receive_output(timeout=lifetime + 10))["type"] != "websocket.close":
            pass  # events of the task, if the session's worker runs it
        return snapshot, message, time.time()

    snapshot, closed, closed_at = async_to_sync(scenario)()
    assert snapshot["event"] == "task.snapshot"
    assert closed == {"type": "websocket.close", "code": 4401}
    assert closed_at >= short["exp"] - 0.5, (closed_at, short["exp"])  # closed at its expiry, not before


def test_bob_is_closed_4403_on_alices_task_before_any_data(alice, bob, api, token):
    task = submit(api(alice), seconds=0.1, steps=1)
    bob_jwt = token(bob)

    async def scenario():
        comm = communicator(f"/ws/tasks/{task['id']}/?token={bob_jwt}")
        await comm.connect()
        assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4403}

    async_to_sync(scenario)()


def test_auth_as_first_message_gets_the_snapshot(alice, api, token):
    task = submit(api(alice), seconds=0.1, steps=1)
    jwt = token(alice)

    async def scenario():
        comm = communicator(f"/ws/tasks/{task['id']}/")
        await comm.connect()
        await comm.send_json_to({"type": "auth", "token": jwt})
        snapshot = await comm.receive_json_from(timeout=5)
        await comm.disconnect()
        return snapshot

    snapshot = async_to_sync(scenario)()
    assert snapshot["event"] == "task.snapshot"
    assert snapshot["task_id"] == task["id"]
    assert snapshot["task"]["algorithm"] == "demo.hello"
    assert snapshot["seq"] >= 1


# --- the stream from a real worker -------------------------------------------------------------

def test_task_socket_streams_every_event_in_order_until_100_percent(live_worker, alice, api, token):
    task = submit(api(alice), seconds=1.0, steps=10)
    jwt = token(alice)

    messages = stream_until_final(f"/ws/tasks/{task['id']}/?token={jwt}")
    snapshot, events = messages[0], task_events(messages)
    assert snapshot["event"] == "task.snapshot"
    assert_gapless(events, after=snapshot["seq"])
    assert events[-1]["event"] == "task.succeeded"
    progress = [e["percent"] for e in events if e["event"] == "task.progress"]
    assert progress == sorted(progress) and progress[-1] == 100.0
    assert events[-1]["status"] == "SUCCEEDED"


def test_reconnect_with_after_seq_replays_missed_events_then_goes_live(live_worker, alice, api, token):
    task = submit(api(alice), seconds=2.0, steps=20)
    jwt = token(alice)

    async def scenario():
        first = communicator(f"/ws/tasks/{task['id']}/?token={jwt}")
        await first.connect()
        seen = await receive_until(first, lambda m: m.get("event") == "task.progress")
        await first.disconnect()
        last = max(m["seq"] for m in seen)
        await asyncio.sleep(0.5)  # events keep coming while we are away
        second = communicator(f"/ws/tasks/{task['id']}/?token={jwt}&after_seq={last}")
        await second.connect()
        rest = await receive_until(second, is_final)
        await second.disconnect()
        return seen, last, rest

    seen, last, rest = async_to_sync(scenario)()
    assert rest[0]["event"] == "task.snapshot"
    replayed = [m for m in rest if m.get("replay")]
    assert replayed, "events from the half second away should come from the database"
    assert_gapless(task_events(rest), after=last)
    assert task_events(rest)[-1]["event"] == "task.succeeded"


# --- dashboard ---------------------------------------------------------------------------------

def test_dashboard_shows_a_user_only_their_own_tasks_and_an_operator_all(live_worker, alice, bob, olga, api, token):
    alice_jwt, olga_jwt = token(alice), token(olga)
    alice_api, bob_api = api(alice), api(bob)

    async def scenario():
        mine = communicator(f"/ws/dashboard/?token={alice_jwt}")
        ops = communicator(f"/ws/dashboard/?token={olga_jwt}")
        await mine.connect()
        await ops.connect()
        mine_snapshot = await mine.receive_json_from(timeout=5)
        ops_snapshot = await ops.receive_json_from(timeout=5)
        bobs = await asyncio.to_thread(submit, bob_api, "demo.noop")
        alices = await asyncio.to_thread(submit, alice_api, "demo.noop")
        alice_saw = await receive_until(mine, lambda m: is_final(m) and m["task_id"] == alices["id"])
        waiting = {alices["id"], bobs["id"]}
        ops_saw = await receive_until(ops, lambda m: is_final(m) and not waiting.difference_update({m["task_id"]})
                                      and not waiting)
        await mine.disconnect()
        await ops.disconnect()
        return mine_snapshot, ops_snapshot, alice_saw, ops_saw, alices, bobs

    mine_snapshot, ops_snapshot, alice_saw, ops_saw, alices, bobs = async_to_sync(scenario)()
    assert mine_snapshot["event"] == "dashboard.snapshot" and mine_snapshot["user"]["operator"] is False
    assert ops_snapshot["user"]["operator"] is True
    assert {m["task_id"] for m in task_events(alice_saw)} == {alices["id"]}
    assert {m["task_id"] for m in task_events(ops_saw)} >= {alices["id"], bobs["id"]}


def test_dashboard_streams_a_running_tasks_progress_before_it_succeeds(live_worker, alice, api, token):
    alice_jwt, client = token(alice), api(alice)

    async def scenario():
        comm = communicator(f"/ws/dashboard/?token={alice_jwt}")
        await comm.connect()
        await comm.receive_json_from(timeout=5)
        task = await asyncio.to_thread(submit, client, "demo.hello", seconds=1, steps=4)
        saw = await receive_until(comm, lambda m: is_final(m) and m["task_id"] == task["id"])
        await comm.disconnect()
        return task, saw

    task, saw = async_to_sync(scenario)()
    mine = [m for m in task_events(saw) if m["task_id"] == task["id"]]
    progress = [m["percent"] for m in mine if m["event"] == "task.progress"]
    assert progress and progress == sorted(progress) and 0 < progress[0] < 100, progress
    assert mine[-1]["event"] == "task.succeeded"
    assert max(i for i, m in enumerate(mine) if m["event"] == "task.progress") < len(mine) - 1


def test_dashboard_gets_every_event_of_a_batch_one_by_one_and_in_order(live_worker, alice, api, token):
    # A batch submit, and a batched queue's claim and finish, commit the events of several tasks at once;
    # they travel as one channel message per group and reach the socket as separate events.
    from queueing.models import Queue

    Queue.objects.create(name="batched", concurrency=8)
    alice_jwt, client = token(alice), api(alice)

    async def scenario():
        comm = communicator(f"/ws/dashboard/?token={alice_jwt}")
        await comm.connect()
        await comm.receive_json_from(timeout=5)
        response = await asyncio.to_thread(lambda: client.post(
            "/api/v1/tasks/batch/", {"tasks": [{"algorithm": "demo.noop", "queue": "batched"}] * 6}, format="json"))
        ids = {t["id"] for t in response.json()["tasks"]}
        waiting = set(ids)
        saw = await receive_until(comm, lambda m: is_final(m) and not waiting.difference_update({m["task_id"]})
                                  and not waiting)
        await comm.disconnect()
        return ids, saw

    ids, saw = async_to_sync(scenario)()
    assert all("payloads" not in m for m in saw)  # one event per socket message, never a group message
    for task_id in ids:
        # Not in the snapshot, so the dashboard passes these tasks' events as they come and the client
        # orders them by seq: created/queued (the web process's publisher) and started (the worker
        # child) race to Redis from two processes.
        mine = sorted((m for m in task_events(saw) if m["task_id"] == task_id), key=lambda m: m["seq"])
        assert [m["event"] for m in mine] == ["task.created", "task.queued", "task.started", "task.succeeded"]
        assert_gapless(mine, after=0)


def test_operator_dashboard_receives_queue_pause_and_resume_and_users_do_not(alice, olga, api, token):
    from queueing.models import Queue

    Queue.objects.get_or_create(name="default")
    alice_jwt, olga_jwt = token(alice), token(olga)
    olga_api = api(olga)

    async def scenario():
        mine = communicator(f"/ws/dashboard/?token={alice_jwt}")
        ops = communicator(f"/ws/dashboard/?token={olga_jwt}")
        await mine.connect()
        await ops.connect()
        await mine.receive_json_from(timeout=5)
        await ops.receive_json_from(timeout=5)
        for action in ("pause", "resume"):
            response = await asyncio.to_thread(olga_api.post, f"/api/v1/queues/default/{action}/")
            assert response.status_code == 200, response.content
        got = await receive_until(ops, lambda m: m["event"] == "queue.resumed", timeout=10)
        nothing = await mine.receive_nothing(timeout=0.5)
        await mine.disconnect()
        await ops.disconnect()
        return got, nothing

    got, nothing = async_to_sync(scenario)()
    queue_events = [(m["event"], m["queue"], m["paused"]) for m in got if m["event"].startswith("queue.")]
    assert queue_events == [("queue.paused", "default", True), ("queue.resumed", "default", False)]
    assert nothing


def test_server_pings_and_answers_pings(alice, api, token, settings):
    settings.CONVEYOR = {**settings.CONVEYOR, "WS_PING_SECONDS": 0.2}
    task = submit(api(alice), seconds=0.1, steps=1)
    jwt = token(alice)

    async def scenario():
        comm = communicator(f"/ws/tasks/{task['id']}/?token={jwt}")
        await comm.connect()
        await comm.receive_json_from(timeout=5)  # snapshot
        await comm.send_json_to({"type": "ping"})
        wanted = {"ping", "pong"}  # task events may come in between (a worker may run the task)
        got = await receive_until(comm, lambda m: not wanted.difference_update({m["event"]}) and not wanted,
                                  timeout=5)
        await comm.disconnect()
        return got

    assert {"ping", "pong"} <= {m["event"] for m in async_to_sync(scenario)()}


def test_a_chatty_algorithm_is_coalesced_and_its_final_event_still_arrives(live_worker, alice, api, token):
    from django.conf import settings

    # demo.hello with 10,000 steps in about a second calls ctx.progress() ~10,000 times a second.
    task = submit(api(alice), seconds=1.0, steps=10_000)
    jwt = token(alice)

    events = task_events(stream_until_final(f"/ws/tasks/{task['id']}/?token={jwt}&after_seq=0"))
    progress = [e for e in events if e["event"] == "task.progress"]
    assert events[-1]["event"] == "task.succeeded"
    assert progress[-1]["percent"] == 100.0 and progress[-1]["message"] == "step 10000/10000"
    # At most one report per TASK_PROGRESS_MIN_INTERVAL (0.05 s in the test settings) over the run, plus
    # the few that always go through (the first, a stage change, 100 %, the flush at the end): tens of
    # reports for the second or so the run takes, not one per call; however slow a busy machine makes
    # the run, never anywhere near the 10,000 calls.
    from jobs.models import Task

    row = Task.objects.get(id=task["id"])
    elapsed = (row.finished_at - row.started_at).total_seconds()
    allowed = elapsed / settings.CONVEYOR["PROGRESS_MIN_INTERVAL"] + 5
    assert 1 <= len(progress) <= allowed, (len(progress), elapsed)
    assert len(progress) < 1_000, (len(progress), elapsed)
    assert_gapless(events, after=0)
