"""The beat re-sends a delivery whose message got lost (the process died between the commit and the send,
or the broker lost it) even while the broker's ``webhooks`` queue is never empty at a tick: steady traffic
to other endpoints must not hold it up for ever, nor the later events of its task behind it. While there
is a backlog it re-sends only ``RESEND_WITH_BACKLOG`` such deliveries a tick, longest unsent first, so a
backlog that is merely slow to drain gets a bounded number of duplicates."""
from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from jobs import services
from tests.conftest import unconsumed_queue
from webhooks import delivery
from webhooks.models import Delivery, Subscription

pytestmark = pytest.mark.django_db


@pytest.fixture
def hook(alice) -> Subscription:
    return Subscription.objects.create(owner=alice, url="http://127.0.0.1:9/hook", events=["task.*"],
                                       secret="whsec_dGVzdA==")


def purge_webhooks_queue() -> None:
    from config.celery import app

    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge("webhooks")


@pytest.fixture
def backlog() -> Iterator[None]:
    """Other endpoints' traffic: a message waits in the broker's real ``webhooks`` queue at every tick (no
    worker consumes that queue in these tests; it is emptied after)."""
    from config.celery import app

    purge_webhooks_queue()
    app.send_task("webhooks.deliver", args=["00000000-0000-0000-0000-000000000000"], queue="webhooks")
    assert delivery._broker_backlog() == 1
    yield
    purge_webhooks_queue()


def resend_ago(factor: float = 2) -> datetime:
    return timezone.now() - timedelta(seconds=settings.WEBHOOKS["RESEND_SECONDS"] * factor)


def sent_now(rows: list[Delivery]) -> list[bool]:
    cutoff = resend_ago(1)
    return [Delivery.objects.get(id=r.id).sent_at > cutoff for r in rows]


def stamps(rows: list[Delivery]) -> list[datetime]:
    return [Delivery.objects.get(id=r.id).sent_at for r in rows]


def test_a_lost_delivery_is_resent_while_other_webhook_messages_wait(alice, hook, backlog):
    # given: a task's events, whose on-commit send never happened (the process died after the commit;
    # here on-commit callbacks never run), RESEND_SECONDS and more ago
    task, _ = services.submit(owner=alice, spec=services.build_spec(algorithm="demo.noop", queue=unconsumed_queue()))
    services.cancel(task_id=task.id)
    lost = list(Delivery.objects.filter(task_id=task.id).order_by("seq"))
    assert len(lost) >= 2
    long_ago = resend_ago()
    Delivery.objects.filter(task_id=task.id).update(sent_at=long_ago, next_attempt_at=long_ago)

    # when: the beat ticks while other endpoints' messages wait in the queue
    resent = delivery.send_due()

    # then: the head of the task's line goes again (the later events follow it as it ends)
    assert resent == 1
    assert sent_now(lost) == [True] + [False] * (len(lost) - 1)


def test_with_a_backlog_only_a_bounded_number_are_resent_a_tick_and_every_one_comes_round(hook, backlog,
                                                                                          monkeypatch):
    monkeypatch.setattr(delivery, "RESEND_WITH_BACKLOG", 3, raising=False)
    # given: five tasks' deliveries whose messages went long ago, the oldest first; and a retry that is due
    ago = [resend_ago(10 - i) for i in range(5)]
    old = [Delivery.objects.create(subscription=hook, event="task.created", payload={"seq": 1}, seq=1,
                                   task_id=f"11111111-1111-1111-1111-00000000000{i}",
                                   next_attempt_at=ago[i], sent_at=ago[i])
           for i in range(5)]
    retry = Delivery.objects.create(subscription=hook, event="task.created", payload={"seq": 1}, seq=1,
                                    task_id="22222222-2222-2222-2222-222222222222", attempts=1,
                                    next_attempt_at=timezone.now() - timedelta(seconds=1), sent_at=resend_ago(20))

    # when / then: the due retry and the three longest unsent go; the next tick, the other two
    assert delivery.send_due() == 4
    assert sent_now(old + [retry]) == [True, True, True, False, False, True]
    before = stamps(old)
    assert delivery.send_due() == 2  # the three just re-sent wait RESEND_SECONDS again
    after = stamps(old)
    assert after[:3] == before[:3] and all(a > b for a, b in zip(after[3:], before[3:]))
    # and with an empty queue, everything that looks lost goes at once
    Delivery.objects.filter(id__in=[r.id for r in old]).update(sent_at=resend_ago())
    purge_webhooks_queue()
    assert not delivery._broker_backlog()
    assert delivery.send_due() == 5


def test_with_a_backlog_a_message_is_sent_again_once_resend_seconds_passed_not_before(hook, backlog):
    recently = resend_ago(0.5)
    row = Delivery.objects.create(subscription=hook, event="task.created", payload={"seq": 1}, seq=1,
                                  task_id="11111111-1111-1111-1111-111111111111",
                                  next_attempt_at=recently, sent_at=recently)
    assert delivery.send_due() == 0
    long_ago = resend_ago()
    Delivery.objects.filter(id=row.id).update(sent_at=long_ago, next_attempt_at=long_ago)
    assert delivery.send_due() == 1
