"""One attempt always ends, and always ends in the delivery log: a stored URL httpx cannot send to is a
failed attempt (not an exception that leaves the delivery PENDING forever), and a receiver that trickles
its answer is cut off at ``WEBHOOK_TOTAL_TIMEOUT``, well before the attempt's lease runs out."""
from __future__ import annotations

import gzip
import time

import pytest
from django.utils import timezone

from tests.webhooks.conftest import Reply
from webhooks import delivery, policy, services
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
    # (5 s in all: the receiver's thread and this one share the test process, and a 200 sent at once must
    # get through within it on a loaded machine)
    settings.WEBHOOKS = {**settings.WEBHOOKS, "TOTAL_TIMEOUT": 5}
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


def test_a_2xx_whose_body_holds_nul_bytes_is_delivered_and_the_next_event_goes(alice, receiver):
    # given: a receiver (or a proxy in front of it) that gzips its "ok" whatever the request asks for
    receiver.default = Reply(200, {"content-type": "application/json", "content-encoding": "gzip"},
                             body=gzip.compress(b'{"received": true}') + b"\x00")
    sub = services.subscribe(owner=alice, url=receiver.url, events=["task.*"])
    first, second = pending(sub, 1), pending(sub, 2)

    # when
    outcome = delivery.attempt(delivery_id=str(first.id))

    # then: the request asked for an uncompressed answer, and the 200 is delivered, its body logged without NUL
    assert receiver.requests[0].headers["accept-encoding"] == "identity"
    assert outcome == "SUCCEEDED"
    first.refresh_from_db()
    assert first.status == "SUCCEEDED" and first.in_flight_until is None
    attempt = first.attempt_log.get()
    assert attempt.outcome == "SUCCEEDED" and attempt.status_code == 200 and attempt.error == ""
    assert attempt.response_body and "\x00" not in attempt.response_body  # an excerpt is kept, minus the NULs
    assert delivery.attempt(delivery_id=str(second.id)) == "SUCCEEDED"  # the task's next event is not held up
    assert len(receiver.requests) == 2


@pytest.mark.parametrize(("status", "outcome", "state"), [(200, "SUCCEEDED", "SUCCEEDED"), (503, "RETRY", "PENDING")])
def test_an_error_while_recording_an_attempt_still_ends_it_by_its_status_code(alice, receiver, monkeypatch,
                                                                              status, outcome, state):
    # given: recording the answer fails once, as it would on something the database refuses to store
    real, calls = policy.is_success, []

    def fails_once(status_code):
        calls.append(status_code)
        if len(calls) == 1:
            raise RuntimeError("cannot store this answer")
        return real(status_code)

    monkeypatch.setattr(policy, "is_success", fails_once)
    receiver.default = Reply(status, body=b"answer")
    sub = services.subscribe(owner=alice, url=receiver.url, events=["task.*"])
    row = pending(sub, 1)

    # when
    result = delivery.attempt(delivery_id=str(row.id))

    # then: the attempt is finished (not IN_FLIGHT, not to be sent again when its hold runs out)
    assert result == outcome
    row.refresh_from_db()
    assert row.status == state and row.in_flight_until is None and row.attempts == 1
    attempt = row.attempt_log.get()
    assert attempt.outcome == outcome and attempt.status_code == status and attempt.finished_at
    assert "could not be stored (RuntimeError)" in attempt.error
    assert len(receiver.requests) == 1


@pytest.mark.parametrize("retry_after", ["\u00b2", "1\u00b2"])
def test_a_retry_after_of_non_ascii_digits_is_ignored_and_the_attempt_is_retried(alice, receiver, retry_after):
    # given: a 503 whose Retry-After is a digit float() refuses ("²" goes out as the byte 0xB2)
    receiver.default = Reply(503, {"retry-after": retry_after})
    sub = services.subscribe(owner=alice, url=receiver.url, events=["task.*"])
    row = pending(sub, 1)

    # when
    outcome = delivery.attempt(delivery_id=str(row.id))

    # then: retried on the normal schedule, the header ignored
    assert outcome == "RETRY"
    row.refresh_from_db()
    assert row.status == "PENDING" and row.in_flight_until is None and row.last_status_code == 503
    assert 0 < (row.next_attempt_at - timezone.now()).total_seconds() < 60
    assert row.attempt_log.get().error == ""
