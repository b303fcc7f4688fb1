"""One attempt always ends, and always ends in the delivery log: a stored URL httpx cannot send to is a
failed attempt (not an exception that leaves the delivery PENDING forever), and a receiver that trickles
its answer is cut off at ``WEBHOOK_TOTAL_TIMEOUT``, well before the attempt's lease runs out."""
from __future__ import annotations

import time

import pytest
from django.utils import timezone

from tests.webhooks.conftest import Reply
from webhooks import delivery, services
from webhooks.models import Delivery, Subscription

pytestmark = pytest.mark.django_db

TASK_ID = "11111111-1111-1111-1111-111111111111"


def pending(sub: Subscription, seq: int) -> Delivery:
    return Delivery.objects.create(subscription=sub, event="task.progress", payload={"seq": seq}, task_id=TASK_ID,
                                   seq=seq, next_attempt_at=timezone.now(), sent_at=timezone.now())


@pytest.mark.parametrize("url", ["http://☃.net/", "http://xn--n3h.net/", "http://exa\u200dmple.com/"])
def test_a_stored_url_httpx_refuses_is_a_failed_attempt_and_the_next_event_goes(alice, url):
    # given: a webhook stored before URLs were checked with httpx's own (IDNA 2008) parser, as after an upgrade
    sub = Subscription.objects.create(owner=alice, url=url, events=["task.*"], secret="whsec_dGVzdA==")
    first, second = pending(sub, 1), pending(sub, 2)

    # when
    outcome = delivery.attempt(delivery_id=str(first.id))

    # then: logged and finished, not left IN_FLIGHT for the beat to re-send forever
    assert outcome == "FAILED"
    first.refresh_from_db()
    assert first.status == "FAILED" and first.attempts == 1 and first.in_flight_until is None
    assert first.last_error.startswith("invalid URL")
    assert list(first.attempt_log.values_list("outcome", flat=True)) == ["FAILED"]
    sub.refresh_from_db()
    assert sub.consecutive_failures == 1 and sub.failing_since
    assert delivery.claim(delivery_id=str(second.id)) is not None  # the task's later events are not held up


@pytest.mark.parametrize("slow_head", [False, True], ids=["trickled-body", "trickled-headers"])
def test_a_receiver_trickling_its_answer_is_cut_off_at_the_total_timeout(settings, alice, receiver, slow_head):
    # given: one byte every 0.5 s keeps each read under the 2 s read timeout; the whole answer would take ~35 min
    settings.WEBHOOKS = {**settings.WEBHOOKS, "TOTAL_TIMEOUT": 1.5}
    receiver.default = Reply(200, body=b"x" * 4096, trickle=0.5, slow_head=slow_head)
    sub = services.subscribe(owner=alice, url=receiver.url, events=["task.*"])
    row = pending(sub, 1)

    # when
    started = time.monotonic()
    outcome = delivery.attempt(delivery_id=str(row.id))

    # then: the attempt ends at the deadline and is logged as a timeout
    assert time.monotonic() - started < 10
    row.refresh_from_db()
    attempt = row.attempt_log.get()
    assert attempt.error.startswith("timeout") and "WEBHOOK_TOTAL_TIMEOUT" in attempt.error
    assert len(receiver.requests) == 1 and row.in_flight_until is None
    if slow_head:  # no answer in time: tried again per the schedule
        assert outcome == "RETRY" and attempt.status_code is None
        assert row.status == "PENDING" and row.attempts == 1 and row.next_attempt_at > attempt.finished_at
    else:  # its 200 came in time: delivered, however slowly the rest of the body trickles
        assert outcome == "SUCCEEDED" and attempt.status_code == 200 and row.status == "SUCCEEDED"


def test_the_attempts_lease_outlasts_its_total_timeout(settings):
    # A lease shorter than the deadline would let the beat re-send a delivery that is still being sent.
    for total in (1.0, 30.0, 300.0):
        settings.WEBHOOKS = {**settings.WEBHOOKS, "TOTAL_TIMEOUT": total}
        assert delivery._lease().total_seconds() >= total + 10
