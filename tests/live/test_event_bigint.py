"""An integer beyond 64 bits in a task's events reaches the sockets live, with the value the task's REST
log shows. The channel layer's msgpack has no such integer: one event it refused dropped every event of
that flush (the task's progress, log and final events, and those of tasks committed with it), which then
came only through the socket's 30 s re-check.

Such an integer comes from any program reporting a number of 1e20 or more: jsonb keeps ``1e+40`` as the
digits ``10000…0``, so the task's ``progress_metrics`` come back as the integer ``10**40``, and every later
event of the task carries them.

Real Redis channel layer, real Celery worker process, the consumers in-process under Channels'
``WebsocketCommunicator``."""
from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from jobs import events
from tests.live.conftest import FINAL_EVENTS, communicator

pytestmark = [pytest.mark.django_db(transaction=True)]

HUGE = 10**40


def exact(text: str | bytes) -> Any:
    """JSON with its numbers as written (``1e+40`` and ``10000…0`` are the same number, 10 and 10.0 too)."""
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def test_a_huge_number_in_a_tasks_progress_reaches_the_socket_live_as_the_log_shows_it(live_worker, alice, olga,
                                                                                        api, token):
    from queueing.models import Queue

    Queue.objects.get_or_create(name="default")
    client, ops, jwt = api(alice), api(olga), token(alice)
    assert ops.post("/api/v1/queues/default/pause/").status_code == 200  # the socket is there before it starts
    response = client.post("/api/v1/tasks/", {"algorithm": "external.py_stats",
                                              "params": {"values": [HUGE, HUGE, HUGE]}}, format="json")
    assert response.status_code == 201, response.content
    task_id = response.json()["id"]

    async def scenario() -> list[dict]:
        comm = communicator(f"/ws/tasks/{task_id}/?token={jwt}")
        await comm.connect()
        assert exact((await comm.receive_output(timeout=5))["text"])["event"] == "task.snapshot"
        assert (await asyncio.to_thread(ops.post, "/api/v1/queues/default/resume/")).status_code == 200
        got: list[dict] = []
        started = None
        loop = asyncio.get_running_loop()
        try:
            while not got or got[-1]["event"] not in FINAL_EVENTS:
                # the worker may take a while to start it; from then on, well within the 30 s re-check
                wait = 60.0 if started is None else max(0.0, started + 10.0 - loop.time())
                try:
                    message = await comm.receive_output(timeout=wait)
                except asyncio.TimeoutError:
                    pytest.fail(f"nothing within 10 s of task.started; got {[m['event'] for m in got]}")
                assert message["type"] == "websocket.send", message
                got.append(exact(message["text"]))
                if got[-1]["event"] == "task.started":
                    started = loop.time()
            return got
        finally:
            await comm.disconnect()

    live = [m for m in async_to_sync(scenario)() if m["event"].startswith("task.")]
    assert [m["event"] for m in live][-1] == "task.succeeded"
    assert {"task.progress", "task.log"} <= {m["event"] for m in live}
    assert not [m for m in live if m.get("replay")], "streamed live, not caught up from the database"
    # The REST API's view of the same task: its progress, its log (no progress reports), and the stored
    # events a reconnecting socket replays (with them).
    shown = exact(client.get(f"/api/v1/tasks/{task_id}/").content)["progress"]
    assert shown["metrics"] == {"running_mean": HUGE}
    assert live[-1]["metrics"] == shown["metrics"] and live[-1]["percent"] == shown["percent"] == 100
    logged = exact(client.get(f"/api/v1/tasks/{task_id}/logs/").content)
    others = [m for m in live if m["event"] != "task.progress"]
    assert [(m["seq"], m["event"]) for m in others] == [(e["seq"], e["event"]) for e in logged][-len(others):]
    lines = [e["data"]["line"] for e in logged if e["event"] == "task.log"]
    assert [m["data"]["line"] for m in others if m["event"] == "task.log"] == lines[-len(lines):]
    replayed = {m["seq"]: m for m in replay(task_id, jwt)}
    assert [m["seq"] for m in live] == sorted(replayed)[-len(live):]  # every event since the snapshot, once
    for m in live:
        assert (m["event"], m["metrics"]) == (replayed[m["seq"]]["event"], replayed[m["seq"]]["metrics"])


def replay(task_id: str, jwt: str) -> list[dict]:
    """The task's stored events, as a socket reconnecting with ``after_seq=0`` gets them."""
    async def scenario() -> list[dict]:
        comm = communicator(f"/ws/tasks/{task_id}/?token={jwt}&after_seq=0")
        await comm.connect()
        got: list[dict] = []
        try:
            while not got or got[-1].get("event") not in FINAL_EVENTS:
                got.append(exact((await comm.receive_output(timeout=10))["text"]))
        finally:
            await comm.disconnect()
        return [m for m in got if m.get("replay")]

    return async_to_sync(scenario)()


def body(task_id: str, seq: int, **fields: Any) -> events.TaskEventPayload:
    return {"event": "task.progress", "seq": seq, "task_id": task_id, "status": "RUNNING", "percent": 50.0,
            "metrics": {}, **fields}  # type: ignore[typeddict-item]


def test_a_huge_integer_in_one_event_does_not_hold_back_the_others_of_its_flush():
    # Two tasks of one owner committed together (a batch, a batched queue's claim or finish): one message
    # for each task's group and one, with both events, for the owner's.
    huge, plain = str(uuid.uuid4()), str(uuid.uuid4())
    owner = 900_000 + uuid.uuid4().int % 100_000
    groups = [events.task_group(huge), events.task_group(plain), events.user_group(owner)]

    async def scenario() -> dict[str, list[dict]]:
        layer = get_channel_layer()
        channels = {}
        for group in groups:
            channels[group] = await layer.new_channel()
            await layer.group_add(group, channels[group])
        events.publisher.publish([(owner, body(huge, 3, metrics={"n": HUGE, "below": -HUGE})),
                                  (owner, body(plain, 7, metrics={"n": 2**63}))])
        got = {}
        for group, channel in channels.items():
            try:
                got[group] = [await asyncio.wait_for(layer.receive(channel), 5)]
            except asyncio.TimeoutError:
                got[group] = []
        return got

    got = async_to_sync(scenario)()

    assert [m["payload"]["task_id"] for m in got[events.task_group(plain)]] == [plain]
    assert got[events.task_group(plain)][0]["payload"]["metrics"] == {"n": 2**63}  # within msgpack's 64 bits
    assert [m["payload"]["metrics"] for m in got[events.task_group(huge)]] == [{"n": 1e40, "below": -1e40}]
    owners = got[events.user_group(owner)]
    assert [[p["task_id"] for p in m["payloads"]] for m in owners] == [[huge, plain]]
