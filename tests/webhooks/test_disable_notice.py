"""An endpoint disabled for failing tells its owner: ``webhook.disabled`` on their dashboard socket."""
from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.utils import timezone
from rest_framework.test import APIClient

from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db(transaction=True)


def fail_once(hook_id) -> None:
    from webhooks import delivery
    from webhooks.models import Delivery
    from webhooks.transport import AttemptResult

    from django.db import connection

    try:
        row = Delivery.objects.create(subscription_id=hook_id, event="task.created", payload={}, seq=1,
                                      next_attempt_at=timezone.now(), sent_at=timezone.now())
        claimed = delivery.claim(delivery_id=str(row.id))
        delivery.record(claimed=claimed, result=AttemptResult(status_code=500))
    finally:
        connection.close()  # this thread's own connection, so the test database can be dropped


def test_owner_dashboard_gets_webhook_disabled(settings, alice, receiver):
    from config.asgi import application
    from webhooks import services

    settings.WEBHOOKS = {**settings.WEBHOOKS, "DISABLE_AFTER_FAILURES": 1}
    hook = services.subscribe(owner=alice, url=receiver.url, events=["task.*"])
    jwt = APIClient().post("/api/v1/auth/token/", {"username": "alice", "password": PASSWORD},
                           format="json").json()["access"]

    async def scenario() -> dict:
        socket = WebsocketCommunicator(application, f"/ws/dashboard/?token={jwt}")
        await socket.connect()
        await socket.receive_json_from(timeout=5)  # the snapshot
        await asyncio.to_thread(fail_once, hook.id)
        while True:
            body = json.loads((await socket.receive_output(timeout=10))["text"])
            if body.get("event") == "webhook.disabled":
                await socket.disconnect()
                return body

    notice = async_to_sync(scenario)()
    assert notice["webhook_id"] == str(hook.id) and notice["url"] == receiver.url
    assert "1 consecutive failed attempts" in notice["reason"]


def test_operator_dashboard_gets_its_own_webhook_disabled_and_each_task_event_once(settings, olga, bob, receiver):
    # An operator's dashboard streams every task (``tasks.all``) rather than its owner's group: the
    # notice still reaches it, another user's does not, and its own tasks' events are not doubled.
    from django.db import connection

    from config.asgi import application
    from jobs import services as jobs_services
    from tests.queueing.conftest import make_queue
    from webhooks import services

    settings.WEBHOOKS = {**settings.WEBHOOKS, "DISABLE_AFTER_FAILURES": 1}
    make_queue("held", paused=True)  # the tasks stay PENDING whatever workers run in this session

    def submit():
        try:
            spec = jobs_services.build_spec(algorithm="demo.noop", queue="held")
            return jobs_services.submit(owner=olga, spec=spec, idempotency_key=None)[0]
        finally:
            connection.close()

    def cancel(task_id):
        try:
            jobs_services.cancel(task_id=task_id, by=olga)
        finally:
            connection.close()

    before = submit()  # in the dashboard's snapshot
    olgas = services.subscribe(owner=olga, url=receiver.url, events=["task.succeeded"])
    bobs = services.subscribe(owner=bob, url=receiver.url, events=["task.succeeded"])
    jwt = APIClient().post("/api/v1/auth/token/", {"username": "olga", "password": PASSWORD},
                           format="json").json()["access"]

    async def scenario() -> tuple[dict, list[dict], object]:
        socket = WebsocketCommunicator(application, f"/ws/dashboard/?token={jwt}")
        await socket.connect()
        snapshot = await socket.receive_json_from(timeout=5)
        after = await asyncio.to_thread(submit)  # not in the snapshot: its events pass as they come
        for task in (before, after):
            await asyncio.to_thread(cancel, task.id)
        await asyncio.to_thread(fail_once, bobs.id)
        await asyncio.to_thread(fail_once, olgas.id)
        got: list[dict] = []
        while not any(m.get("event") == "webhook.disabled" and m["webhook_id"] == str(olgas.id) for m in got):
            got.append(json.loads((await socket.receive_output(timeout=10))["text"]))
        while not await socket.receive_nothing(timeout=0.5):  # anything doubled arrives right behind
            got.append(json.loads((await socket.receive_output(timeout=1))["text"]))
        await socket.disconnect()
        return snapshot, got, after

    snapshot, got, after = async_to_sync(scenario)()
    assert snapshot["user"]["operator"] is True
    assert [m["webhook_id"] for m in got if m.get("event") == "webhook.disabled"] == [str(olgas.id)]
    assert [m["event"] for m in got if m.get("task_id") == str(after.id)] == ["task.created", "task.cancelled"]
    assert [m["event"] for m in got if m.get("task_id") == str(before.id)] == ["task.cancelled"]

