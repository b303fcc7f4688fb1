"""An attempt that outlives its hold (``in_flight_until``) and is taken over by a newer claim records nothing
over the newer attempt: the outcome's UPDATE is guarded by the attempt's number, so a late answer can
neither end the delivery, nor clear or reschedule the newer attempt's hold, nor count against the endpoint.
The late attempt stays LOST in the log (the newer claim marked it so), with the answer it got."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from tests.conftest import another_session, wait_until
from webhooks import delivery
from webhooks.models import Delivery, Subscription
from webhooks.transport import AttemptResult

TASK_ID = "11111111-1111-1111-1111-111111111111"


def pending(sub: Subscription, seq: int) -> Delivery:
    return Delivery.objects.create(subscription=sub, event="task.progress", payload={"seq": seq}, task_id=TASK_ID,
                                   seq=seq, next_attempt_at=timezone.now(), sent_at=timezone.now())


@pytest.fixture
def hook(alice) -> Subscription:
    return Subscription.objects.create(owner=alice, url="http://127.0.0.1:9/hook", events=["task.*"],
                                       secret="whsec_dGVzdA==")


def hold_runs_out(row: Delivery) -> None:
    Delivery.objects.filter(id=row.id).update(in_flight_until=timezone.now() - timedelta(seconds=1))


def log(row: Delivery) -> list[tuple[int, str, int | None]]:
    return list(row.attempt_log.order_by("number").values_list("number", "outcome", "status_code"))


@pytest.mark.django_db
@pytest.mark.parametrize("late_first", [True, False], ids=["late-answer-first", "newer-answer-first"])
def test_a_late_failure_does_not_overwrite_the_newer_attempts_success(hook, late_first):
    # given: attempt 1 outlives its hold; the beat re-sent the delivery and attempt 2 claimed it
    row, later = pending(hook, 1), pending(hook, 2)
    first = delivery.claim(delivery_id=str(row.id))
    hold_runs_out(row)
    second = delivery.claim(delivery_id=str(row.id))
    assert first and second and second.attempt.number == 2

    # when: both answer, in either order — the late one with a permanent failure
    if late_first:
        assert delivery.record(claimed=first, result=AttemptResult(status_code=410)) == "LOST"
        assert delivery.record(claimed=second, result=AttemptResult(status_code=200)) == "SUCCEEDED"
    else:
        assert delivery.record(claimed=second, result=AttemptResult(status_code=200)) == "SUCCEEDED"
        assert delivery.record(claimed=first, result=AttemptResult(status_code=410)) == "LOST"

    # then: the newer attempt's 2xx decides; the late answer is in the log, not applied
    row.refresh_from_db()
    assert (row.status, row.last_status_code, row.in_flight_until) == ("SUCCEEDED", 200, None)
    assert log(row) == [(1, "LOST", 410), (2, "SUCCEEDED", 200)]
    late = row.attempt_log.get(number=1)
    assert "hold ran out" in late.error and "HTTP 410" in late.error and late.finished_at
    hook.refresh_from_db()
    assert hook.consecutive_failures == 0 and hook.failing_since is None  # the late failure does not count
    assert delivery.claim(delivery_id=str(later.id)) is not None  # the task's next event was not held up


@pytest.mark.django_db
def test_a_late_retry_leaves_the_newer_attempts_hold_alone(hook):
    # given
    row = pending(hook, 1)
    first = delivery.claim(delivery_id=str(row.id))
    hold_runs_out(row)
    second = delivery.claim(delivery_id=str(row.id))
    row.refresh_from_db()
    held = (row.in_flight_until, row.next_attempt_at, row.attempts)

    # when: the late attempt gets a retryable answer while the newer one is still in flight
    assert delivery.record(claimed=first, result=AttemptResult(status_code=503)) == "LOST"

    # then: the newer attempt still holds the delivery: no duplicate claim, no rescheduling
    row.refresh_from_db()
    assert (row.in_flight_until, row.next_attempt_at, row.attempts) == held and row.status == "PENDING"
    assert row.last_status_code is None
    assert delivery.claim(delivery_id=str(row.id)) is None
    assert delivery.send_due() == 0
    hook.refresh_from_db()
    assert hook.consecutive_failures == 0
    # and the newer attempt's own outcome still applies
    assert delivery.record(claimed=second, result=AttemptResult(status_code=204)) == "SUCCEEDED"
    assert log(row) == [(1, "LOST", 503), (2, "SUCCEEDED", 204)]


@pytest.mark.django_db(transaction=True)
def test_a_late_answer_racing_the_newer_claim_waits_for_it_and_then_changes_nothing(hook):
    """Two connections: attempt 2's claim holds its transaction open while the late attempt 1 records; the
    outcome's UPDATE waits on the delivery's row lock, then finds attempt 2's claim and matches nothing."""
    row = pending(hook, 1)
    first = delivery.claim(delivery_id=str(row.id))
    hold_runs_out(row)
    claimed, release, box = threading.Event(), threading.Event(), {}

    def claim_and_hold() -> None:
        try:
            with transaction.atomic():
                box["second"] = delivery.claim(delivery_id=str(row.id))
                claimed.set()
                release.wait(30)
        finally:
            connection.close()

    def late_record() -> None:
        try:
            box["late"] = delivery.record(claimed=first, result=AttemptResult(status_code=410))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            box["late"] = exc
        finally:
            connection.close()

    claimer = threading.Thread(target=claim_and_hold)
    claimer.start()
    assert claimed.wait(30) and box["second"] is not None
    recorder = threading.Thread(target=late_record)
    recorder.start()
    with another_session() as s:
        wait_until(lambda: s.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                     "AND datname = current_database()").fetchone()[0] == 1,
                   message="the late attempt's outcome to wait on the claim's lock")
    release.set()
    claimer.join(30)
    recorder.join(30)

    assert box["late"] == "LOST"
    row.refresh_from_db()
    assert row.status == "PENDING" and row.attempts == 2 and row.in_flight_until > timezone.now()
    assert log(row) == [(1, "LOST", 410), (2, "IN_FLIGHT", None)]
