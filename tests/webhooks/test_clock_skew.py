"""Hosts' clocks differ (web, task workers, the webhooks worker, PostgreSQL each on their own host): when a
delivery is due, how long an attempt holds it, when a retry falls due and the ``webhook-timestamp`` are all
judged by the database's clock, so a webhooks worker minutes off still sends each event at once, never
takes over one another worker is sending, keeps the retry schedule, and signs what receivers accept.

A host with a skewed clock cannot be made here: a "host" is this process with ``django.utils.timezone.now``
and ``time.time`` moved by the skew (``clock_off_by``), around the same service calls the web and the
webhooks worker make. The receiver is real (HTTP on 127.0.0.1) and checks signatures as receivers do
(standardwebhooks, 5 minutes' tolerance, by the real clock, which is the database's here)."""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.db import connection
from django.utils import timezone
from standardwebhooks import Webhook

from tests.conftest import wait_until
from tests.webhooks.conftest import Reply
from webhooks import delivery
from webhooks.models import Delivery

MINUTES = 60


@contextlib.contextmanager
def clock_off_by(seconds: float) -> Iterator[None]:
    """This process as a host whose clock is ``seconds`` off (ahead if positive, behind if negative)."""
    real_now, real_time = timezone.now, time.time
    with mock.patch("django.utils.timezone.now", lambda: real_now() + timedelta(seconds=seconds)), \
            mock.patch("time.time", lambda: real_time() + seconds):
        yield


def database_epoch() -> float:
    with connection.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM statement_timestamp())")
        return float(cur.fetchone()[0])


def subscribe(client: Any, receiver: Any) -> dict:
    response = client.post("/api/v1/webhooks/", {"url": receiver.url, "events": ["task.*"]}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def submit(client: Any) -> dict:
    response = client.post("/api/v1/tasks/", {"algorithm": "demo.noop", "params": {}}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def first_delivery(task: dict) -> Delivery:
    """The task's first event's delivery (``task.created``): the one its later events wait behind."""
    return Delivery.objects.filter(task_id=task["id"]).order_by("seq").first()


@pytest.mark.django_db
@pytest.mark.parametrize(("web_off", "worker_off"), [(0, -5 * MINUTES), (5 * MINUTES, 0), (0, 6 * MINUTES)],
                         ids=["webhooks-worker-5-min-behind", "web-5-min-ahead", "webhooks-worker-6-min-ahead"])
def test_an_event_goes_at_once_signed_with_the_database_time_whatever_the_hosts_clocks(alice, api, receiver,
                                                                                      web_off, worker_off):
    # given: a task submitted on the web host, which writes its events' deliveries
    client = api(alice)
    hook = subscribe(client, receiver)
    with clock_off_by(web_off):
        task = submit(client)
    row = first_delivery(task)

    # when: the webhooks worker takes its message at once
    before = database_epoch()
    with clock_off_by(worker_off):
        outcome = delivery.attempt(delivery_id=str(row.id))
    after = database_epoch()

    # then: sent now, not when the worker's clock reaches the web host's; signed with the database's time,
    # so the receiver's check (5 minutes' tolerance) passes
    assert outcome == "SUCCEEDED" and len(receiver.requests) == 1
    sent = receiver.requests[0]
    assert Webhook(hook["secret"]).verify(sent.body, sent.headers)["event"] == "task.created"
    assert int(before) <= int(sent.headers["webhook-timestamp"]) <= after  # the database's time of the claim
    listed = client.get(f"/api/v1/webhooks/{hook['id']}/deliveries/").json()["results"]
    assert [(d["event"], d["status"]) for d in listed if d["id"] == str(row.id)] == [("task.created", "SUCCEEDED")]


@pytest.mark.django_db
def test_a_retry_waits_its_delay_by_the_database_clock_whoever_scheduled_it(settings, alice, api, receiver):
    # given: a receiver answering 503 once, then 200; the schedule's first step about 2 s
    settings.WEBHOOKS = {**settings.WEBHOOKS, "RETRY_SCHEDULE": [2.0]}
    receiver.respond = [Reply(503)]
    client = api(alice)
    subscribe(client, receiver)
    row = first_delivery(submit(client))

    # when: a webhooks worker 5 minutes behind makes the first attempt
    with clock_off_by(-5 * MINUTES):
        assert delivery.attempt(delivery_id=str(row.id)) == "RETRY"

    # then: a worker and the beat on time do not send the retry early (it is not 5 minutes overdue) ...
    assert delivery.send_due() == 0
    assert delivery.attempt(delivery_id=str(row.id)) is None
    assert len(receiver.requests) == 1
    # ... and a beat 5 minutes behind sends it once its delay (about 2 s) has passed, not 5 minutes later
    with clock_off_by(-5 * MINUTES):
        wait_until(lambda: delivery.send_due() == 1, timeout=10, interval=0.1, message="the retry to fall due")
        assert delivery.attempt(delivery_id=str(row.id)) == "SUCCEEDED"
    assert [r.reply for r in receiver.requests] == [503, 200]


@pytest.mark.django_db(transaction=True)
def test_a_worker_whose_clock_is_ahead_does_not_take_over_a_delivery_still_being_sent(alice, api, receiver):
    # given: a worker on time is sending a delivery; the receiver takes its time answering
    hook = subscribe(api(alice), receiver)
    row = Delivery.objects.create(subscription_id=hook["id"], event="task.created", payload={"seq": 1}, seq=1,
                                  task_id="11111111-1111-1111-1111-111111111111", next_attempt_at=timezone.now(),
                                  sent_at=timezone.now())
    receiver.gate.clear()
    box: dict[str, Any] = {}

    def send() -> None:
        try:
            box["outcome"] = delivery.attempt(delivery_id=str(row.id))
        finally:
            connection.close()

    sender = threading.Thread(target=send)
    sender.start()
    try:
        wait_until(lambda: len(receiver.requests) == 1, message="the first worker's POST")

        # when: the beat's re-send reaches a worker whose clock is 5 minutes ahead (past the attempt's hold)
        with clock_off_by(5 * MINUTES):
            second = delivery.attempt(delivery_id=str(row.id))
    finally:
        receiver.gate.set()
        sender.join(30)

    # then: that worker leaves it alone: the receiver got one POST, not two at once with the same webhook-id
    assert second is None
    assert box["outcome"] == "SUCCEEDED"
    assert len(receiver.requests) == 1


@pytest.mark.django_db
def test_a_redelivery_asked_for_on_a_web_host_ahead_goes_at_once(alice, api, receiver):
    # given: an event delivered
    client = api(alice)
    hook = subscribe(client, receiver)
    row = first_delivery(submit(client))
    assert delivery.attempt(delivery_id=str(row.id)) == "SUCCEEDED"

    # when: its owner asks for it again through a web host whose clock is 5 minutes ahead
    with clock_off_by(5 * MINUTES):
        response = client.post(f"/api/v1/webhooks/{hook['id']}/deliveries/{row.id}/redeliver/")
    assert response.status_code == 202, response.content

    # then: the webhooks worker sends it at once, with the same webhook-id
    assert delivery.attempt(delivery_id=str(row.id)) == "SUCCEEDED"
    assert [r.headers["webhook-id"] for r in receiver.requests] == [f"msg_{row.id.hex}"] * 2
