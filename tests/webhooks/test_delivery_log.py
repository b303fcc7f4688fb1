"""Delivery state on real PostgreSQL without a worker: the claim guard, per-task order, lost attempts,
the endpoint's failure streak and auto-disable, and what re-enabling does (nothing old is sent)."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from webhooks import delivery, services
from webhooks.models import Delivery, DeliveryAttempt, Subscription
from webhooks.transport import AttemptResult

pytestmark = pytest.mark.django_db


@pytest.fixture
def hook(alice, receiver) -> Subscription:
    return services.subscribe(owner=alice, url=receiver.url, events=["task.*"])


def pending(sub: Subscription, seq: int, task_id: str = "11111111-1111-1111-1111-111111111111") -> Delivery:
    return Delivery.objects.create(subscription=sub, event="task.progress", payload={"seq": seq}, task_id=task_id,
                                   seq=seq, next_attempt_at=timezone.now(), sent_at=timezone.now())


def due(row: Delivery) -> None:
    Delivery.objects.filter(id=row.id).update(next_attempt_at=timezone.now())


def test_a_claimed_delivery_cannot_be_claimed_twice(hook):
    row = pending(hook, 1)
    assert delivery.claim(delivery_id=str(row.id)) is not None
    assert delivery.claim(delivery_id=str(row.id)) is None  # the duplicate message does nothing


def test_a_later_event_of_the_same_task_waits_behind_an_earlier_one(hook):
    first, second = pending(hook, 1), pending(hook, 2)
    assert delivery.claim(delivery_id=str(second.id)) is None
    claimed = delivery.claim(delivery_id=str(first.id))
    delivery.record(claimed=claimed, result=AttemptResult(status_code=200))
    assert delivery.claim(delivery_id=str(second.id)) is not None


def test_an_attempt_cut_off_mid_send_is_logged_as_lost_and_tried_again(hook):
    row = pending(hook, 1)
    delivery.claim(delivery_id=str(row.id))  # the worker dies here: no record()
    Delivery.objects.filter(id=row.id).update(in_flight_until=timezone.now() - timedelta(seconds=1))
    assert delivery.send_due() == 0  # its message was sent just now; the beat waits RESEND_SECONDS
    Delivery.objects.filter(id=row.id).update(sent_at=timezone.now() - timedelta(hours=1))
    assert delivery.send_due() == 1

    claimed = delivery.claim(delivery_id=str(row.id))
    delivery.record(claimed=claimed, result=AttemptResult(status_code=204))
    outcomes = list(DeliveryAttempt.objects.filter(delivery=row).values_list("number", "outcome"))
    assert outcomes == [(1, "LOST"), (2, "SUCCEEDED")]


def test_retries_stop_after_max_attempts(settings, hook):
    settings.WEBHOOKS = {**settings.WEBHOOKS, "MAX_ATTEMPTS": 3}
    row = pending(hook, 1)
    for _ in range(3):
        due(row)
        claimed = delivery.claim(delivery_id=str(row.id))
        delivery.record(claimed=claimed, result=AttemptResult(error="ConnectError", transient=True))
    row.refresh_from_db()
    assert row.status == "FAILED" and row.attempts == 3
    assert list(row.attempt_log.values_list("outcome", flat=True)) == ["RETRY", "RETRY", "FAILED"]


def test_endpoint_failing_too_often_is_disabled_and_reenabling_sends_nothing_old(settings, alice, api, hook):
    settings.WEBHOOKS = {**settings.WEBHOOKS, "DISABLE_AFTER_FAILURES": 3}
    row, waiting = pending(hook, 1), pending(hook, 2, task_id="22222222-2222-2222-2222-222222222222")
    for _ in range(3):
        due(row)
        claimed = delivery.claim(delivery_id=str(row.id))
        delivery.record(claimed=claimed, result=AttemptResult(status_code=500))

    hook.refresh_from_db()
    assert not hook.active and hook.disabled_at and "3 consecutive" in hook.disabled_reason
    waiting.refresh_from_db()
    assert waiting.status == "FAILED" and waiting.last_error.startswith("endpoint disabled")

    client = api(alice)
    body = client.patch(f"/api/v1/webhooks/{hook.id}/", {"active": True}, format="json").json()
    assert body["active"] and body["consecutive_failures"] == 0 and body["disabled_at"] is None
    assert not Delivery.objects.filter(subscription=hook, status="PENDING").exists()
    assert client.post(f"/api/v1/webhooks/{hook.id}/deliveries/{waiting.id}/redeliver/").status_code == 202


def test_endpoint_failing_for_days_is_disabled(settings, hook):
    row = pending(hook, 1)
    Subscription.objects.filter(id=hook.id).update(consecutive_failures=5,
                                                   failing_since=timezone.now() - timedelta(days=6))
    claimed = delivery.claim(delivery_id=str(row.id))
    delivery.record(claimed=claimed, result=AttemptResult(error="timeout: ReadTimeout", transient=True))
    hook.refresh_from_db()
    assert not hook.active and "failing continuously" in hook.disabled_reason


def test_a_success_resets_the_failure_streak(hook):
    row = pending(hook, 1)
    claimed = delivery.claim(delivery_id=str(row.id))
    delivery.record(claimed=claimed, result=AttemptResult(status_code=502))
    hook.refresh_from_db()
    assert hook.consecutive_failures == 1 and hook.failing_since
    due(row)
    claimed = delivery.claim(delivery_id=str(row.id))
    delivery.record(claimed=claimed, result=AttemptResult(status_code=200))
    hook.refresh_from_db()
    assert hook.consecutive_failures == 0 and hook.failing_since is None


def test_a_redelivery_gets_a_full_retry_budget_of_its_own(settings, alice, api, hook, receiver):
    from tests.webhooks.conftest import Reply

    # given: a delivery that used up its attempts against a receiver answering 503
    settings.WEBHOOKS = {**settings.WEBHOOKS, "MAX_ATTEMPTS": 3, "RETRY_SCHEDULE": [5, 30, 120]}
    receiver.default = Reply(503)
    row = pending(hook, 1)
    for _ in range(3):
        due(row)
        delivery.attempt(delivery_id=str(row.id))
    row.refresh_from_db()
    assert row.status == "FAILED" and row.attempts == 3

    # when: its owner redelivers it while the receiver still answers 503
    assert api(alice).post(f"/api/v1/webhooks/{hook.id}/deliveries/{row.id}/redeliver/").status_code == 202
    outcomes = [delivery.attempt(delivery_id=str(row.id))]
    row.refresh_from_db()
    # the wait the product set after that attempt, from the attempt's own end (not from the test's clock)
    ended = row.attempt_log.order_by("number").last()
    assert ended.number == 4 and ended.outcome == "RETRY"
    first_wait = (row.next_attempt_at - ended.finished_at).total_seconds()
    for _ in range(2):
        due(row)
        outcomes.append(delivery.attempt(delivery_id=str(row.id)))

    # then: three more tries on the schedule from its start, as the first time round
    assert outcomes == ["RETRY", "RETRY", "FAILED"]
    assert 5 * 0.8 <= first_wait <= 5 * 1.2  # the schedule's first step (5 s ± 20 % jitter), not its fourth
    row.refresh_from_db()
    assert row.status == "FAILED" and row.attempts == 6 and len(receiver.requests) == 6
    assert list(row.attempt_log.values_list("outcome", flat=True)) == ["RETRY", "RETRY", "FAILED"] * 2


def test_redeliver_of_a_disabled_endpoint_is_409(alice, api, hook):
    row = pending(hook, 1)
    services.update(subscription=hook, active=False)
    response = api(alice).post(f"/api/v1/webhooks/{hook.id}/deliveries/{row.id}/redeliver/")
    assert response.status_code == 409


def test_a_redelivery_asked_for_while_an_attempt_is_in_flight_is_sent_and_that_attempts_answer_changes_nothing(
        alice, api, hook):
    # The redeliver answered 202, but the attempt in flight still held the delivery: the new claim was refused,
    # and that attempt's 400 then ended the delivery FAILED; nothing was sent again.
    row = pending(hook, 1)
    in_flight = delivery.claim(delivery_id=str(row.id))  # the receiver is slow to answer

    assert api(alice).post(f"/api/v1/webhooks/{hook.id}/deliveries/{row.id}/redeliver/").status_code == 202
    again = delivery.claim(delivery_id=str(row.id))  # the redelivery's message

    assert in_flight and again and again.attempt.number == 2
    assert delivery.record(claimed=in_flight, result=AttemptResult(status_code=400)) == "LOST"
    row.refresh_from_db()
    assert row.status == "PENDING"
    assert delivery.record(claimed=again, result=AttemptResult(status_code=200)) == "SUCCEEDED"
    assert list(row.attempt_log.order_by("number").values_list("outcome", "status_code")) == [
        ("LOST", 400), ("SUCCEEDED", 200)]


@pytest.mark.parametrize("answer", [200, 400, 503])
def test_an_attempt_answering_after_a_redelivery_was_asked_for_but_before_it_is_claimed_changes_nothing(
        alice, api, hook, answer):
    # The other order: the attempt's answer still matched its number and ended (or rescheduled) the delivery,
    # and the redelivery's claim then found nothing to send.
    row = pending(hook, 1)
    in_flight = delivery.claim(delivery_id=str(row.id))
    assert api(alice).post(f"/api/v1/webhooks/{hook.id}/deliveries/{row.id}/redeliver/").status_code == 202

    assert delivery.record(claimed=in_flight, result=AttemptResult(status_code=answer)) == "LOST"
    again = delivery.claim(delivery_id=str(row.id))

    assert again is not None and again.attempt.number == 2
    row.refresh_from_db()
    assert row.status == "PENDING" and row.last_status_code is None
    assert row.attempt_log.get(number=1).status_code == answer  # its answer is in the log


def test_a_delivery_is_found_by_its_webhook_id_too(alice, api, hook):
    # A receiver has the webhook-id header (msg_<hex>), not the delivery's UUID.
    row = pending(hook, 1)
    client = api(alice)

    detail = client.get(f"/api/v1/webhooks/{hook.id}/deliveries/{row.webhook_id}/")

    assert detail.status_code == 200, detail.content
    assert detail.json()["id"] == str(row.id) and detail.json()["webhook_id"] == row.webhook_id
    assert client.post(f"/api/v1/webhooks/{hook.id}/deliveries/{row.webhook_id}/redeliver/").status_code == 202
    assert client.get(f"/api/v1/webhooks/{hook.id}/deliveries/msg_{'0' * 32}/").status_code == 404


def test_the_log_is_filtered_by_task(alice, api, hook):
    # ?task_id= was ignored: the whole log came back, as if every delivery were the task's.
    mine, other = pending(hook, 1), pending(hook, 2, task_id="22222222-2222-2222-2222-222222222222")
    client = api(alice)

    listed = client.get(f"/api/v1/webhooks/{hook.id}/deliveries/?task_id={mine.task_id}").json()["results"]

    assert [d["id"] for d in listed] == [str(mine.id)] and str(other.id) != listed[0]["id"]
    bad = client.get(f"/api/v1/webhooks/{hook.id}/deliveries/?task_id=nope")
    assert bad.status_code == 400 and "task_id" in bad.json()["error"]["fields"]


def test_the_log_keeps_finished_deliveries_for_the_retention_period_and_never_drops_what_waits(hook, settings):
    settings.WEBHOOKS = {**settings.WEBHOOKS, "LOG_RETENTION_DAYS": 30}
    old, recent, failed, waiting = pending(hook, 1), pending(hook, 2), pending(hook, 3), pending(hook, 4)
    long_ago = timezone.now() - timedelta(days=31)
    Delivery.objects.filter(id=old.id).update(status="SUCCEEDED", finished_at=long_ago)
    Delivery.objects.filter(id=failed.id).update(status="FAILED", finished_at=long_ago)
    Delivery.objects.filter(id=recent.id).update(status="SUCCEEDED", finished_at=timezone.now() - timedelta(days=29))
    Delivery.objects.filter(id=waiting.id).update(created_at=long_ago)  # PENDING for a month: still waits
    DeliveryAttempt.objects.create(delivery=old, number=1, outcome="SUCCEEDED", status_code=200, started_at=long_ago)

    assert services.prune_log() == 2

    assert set(Delivery.objects.values_list("id", flat=True)) == {recent.id, waiting.id}
    assert not DeliveryAttempt.objects.filter(delivery_id=old.id).exists()
    settings.WEBHOOKS = {**settings.WEBHOOKS, "LOG_RETENTION_DAYS": 0}  # keep for ever
    Delivery.objects.filter(id=recent.id).update(finished_at=long_ago)
    assert services.prune_log() == 0
