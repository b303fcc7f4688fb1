"""Operators' ``queue.*`` webhooks: pause and resume reach them, signed; users' ``task.*`` hooks get none."""
from __future__ import annotations

import pytest
from standardwebhooks import Webhook

from tests.conftest import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_pause_and_resume_reach_an_operators_queue_webhook(webhooks_worker, olga, alice, api, make_receiver):
    from queueing.models import Queue

    Queue.objects.create(name="wh-events")
    ops, users = make_receiver(), make_receiver()
    hook = api(olga).post("/api/v1/webhooks/", {"url": ops.url, "events": ["queue.*"]}, format="json").json()
    api(alice).post("/api/v1/webhooks/", {"url": users.url, "events": ["task.*"]}, format="json")

    client = api(olga)
    assert client.post("/api/v1/queues/wh-events/pause/").status_code == 200
    assert client.post("/api/v1/queues/wh-events/resume/").status_code == 200

    wait_until(lambda: len(ops.ok()) == 2, message="queue.paused and queue.resumed")
    bodies = [Webhook(hook["secret"]).verify(r.body, r.headers) for r in ops.ok()]
    assert sorted((b["event"], b["queue"], b["paused"]) for b in bodies) == [
        ("queue.paused", "wh-events", True), ("queue.resumed", "wh-events", False)]
    assert users.requests == []
