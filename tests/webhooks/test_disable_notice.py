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
