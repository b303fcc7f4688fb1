"""Operators' ``queue.*`` webhooks: pause and resume reach them, signed; users' ``task.*`` hooks get none;
one queue's events reach an endpoint in order, numbered by ``seq``; a user who is no operator any more
gets none."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from standardwebhooks import Webhook

from tests.conftest import wait_until
from tests.webhooks.conftest import Reply


def drain() -> list[str]:
    """What the webhooks worker does, in this process: attempt every due delivery until none is claimable."""
    from webhooks import delivery
    from webhooks.models import Delivery

    outcomes: list[str] = []
    while True:
        ids = Delivery.objects.filter(status="PENDING", next_attempt_at__lte=timezone.now()).order_by("created_at")
        done = [o for o in (delivery.attempt(delivery_id=str(i)) for i in ids.values_list("id", flat=True)) if o]
        if not done:
            return outcomes
        outcomes += done


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
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


@pytest.mark.django_db
@pytest.mark.parametrize("demote", ["leaves the operators group", "is deactivated"])
def test_a_user_who_stops_being_an_operator_stops_getting_queue_events(olga, make_receiver, demote):
    from django.contrib.auth.models import User

    from queueing import services as queues
    from queueing.models import Queue
    from webhooks import services

    root = User.objects.create_user("root", is_staff=True)  # staff: still an operator, still gets them
    Queue.objects.create(name="wh-demoted")
    olgas, roots = make_receiver(), make_receiver()
    services.subscribe(owner=olga, url=olgas.url, events=["queue.*"])
    services.subscribe(owner=root, url=roots.url, events=["queue.*"])
    if demote == "is deactivated":
        User.objects.filter(id=olga.id).update(is_active=False)
    else:
        olga.groups.clear()

    queues.pause(name="wh-demoted", by=root)
    queues.resume(name="wh-demoted", by=root)
    drain()

    assert [r.json["event"] for r in roots.ok()] == ["queue.paused", "queue.resumed"]
    assert olgas.requests == []


@pytest.mark.django_db
def test_a_queues_events_reach_an_endpoint_in_order_when_one_is_retried(olga, receiver):
    from queueing import services as queues
    from queueing.models import Queue
    from webhooks import delivery, services
    from webhooks.models import Delivery

    Queue.objects.create(name="wh-order")
    Queue.objects.create(name="wh-other")
    services.subscribe(owner=olga, url=receiver.url, events=["queue.*"])
    receiver.respond = [Reply(503)]  # the first answer only

    # given: queue.paused failed once and waits for its retry
    queues.pause(name="wh-order", by=olga)
    assert drain() == ["RETRY"]

    # when: the queue is resumed meanwhile, and another queue paused
    queues.resume(name="wh-order", by=olga)
    queues.pause(name="wh-other", by=olga)

    # then: queue.resumed waits behind the retry (another queue's events do not)
    assert drain() == ["SUCCEEDED"]
    assert [(r.json["event"], r.json["queue"]) for r in receiver.ok()] == [("queue.paused", "wh-other")]
    Delivery.objects.filter(status="PENDING").update(sent_at=timezone.now() - timedelta(hours=1))
    assert delivery.send_due() == 0  # nor does beat send it, however long ago its message went
    Delivery.objects.filter(status="PENDING").update(next_attempt_at=timezone.now())  # the retry is due
    assert drain() == ["SUCCEEDED", "SUCCEEDED"]
    got = [r.json for r in receiver.ok() if r.json["queue"] == "wh-order"]
    assert [(b["event"], b["paused"]) for b in got] == [("queue.paused", True), ("queue.resumed", False)]
    assert got[0]["seq"] < got[1]["seq"]  # receivers can order them by seq, too
    assert Queue.objects.get(name="wh-order").paused is got[-1]["paused"]
