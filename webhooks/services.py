"""Every write to subscriptions from the API and the admin: subscribe, update, rotate_secret,
unsubscribe, redeliver; plus ``subscribe_task`` for the per-task ``webhook_url`` shortcut at submit, and
``prune_log`` (beat) for the delivery log's retention."""
from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone

from config.errors import Conflict, Forbidden, InvalidInput
from config.permissions import is_operator
from webhooks import delivery, outbox, signing, transport
from webhooks.models import Delivery, DeliveryAttempt, DeliveryStatus, Subscription

ALLOWED_EVENTS = outbox.TASK_EVENTS | outbox.QUEUE_EVENTS | outbox.WILDCARDS


def clean_events(events: list[str], *, owner: Any) -> list[str]:
    """Known names or ``task.*``/``queue.*``; queue events only for operators."""
    events = list(dict.fromkeys(e.strip() for e in events if e and e.strip()))
    if not events:
        raise InvalidInput("events: name at least one event", fields={"events": ["name at least one event"]})
    unknown = [e for e in events if e not in ALLOWED_EVENTS]
    if unknown:
        msg = f"unknown events {', '.join(unknown)}; use {', '.join(sorted(ALLOWED_EVENTS))}"
        raise InvalidInput(f"events: {msg}", fields={"events": [msg]})
    if any(e.startswith("queue.") for e in events) and not is_operator(owner):
        raise Forbidden("queue events are for operators only")
    return events


def subscribe(*, owner: Any, url: str, events: list[str], description: str = "", active: bool = True) -> Subscription:
    """A new endpoint with a fresh ``whsec_`` secret (the caller shows it once)."""
    transport.validate_url(url)
    return Subscription.objects.create(owner=owner, url=url, events=clean_events(events, owner=owner),
                                       description=description, active=active, secret=signing.new_secret())


def subscribe_task(*, task: Any, url: str) -> Subscription:
    """The ``webhook_url`` shortcut: one endpoint for one task's events, created with the task."""
    transport.validate_url(url, field_name="webhook_url")
    return Subscription.objects.create(owner_id=task.owner_id, task=task, url=url, events=["task.*"],
                                       description="webhook_url of one task", secret=signing.new_secret())


@transaction.atomic
def update(*, subscription: Subscription, url: str | None = None, events: list[str] | None = None,
           description: str | None = None, active: bool | None = None, by: Any = None) -> Subscription:
    """Change an endpoint. Turning it off fails what waits; turning it on starts clean (nothing old is sent).
    Queue events need ``by`` (the request's user, as authenticated: an API key without ``operate`` is
    no operator) to be an operator; without ``by``, the owner."""
    sub = Subscription.objects.select_for_update().get(id=subscription.id)
    if url is not None and url != sub.url:
        sub.url = transport.validate_url(url)
    if events is not None:
        sub.events = clean_events(events, owner=by if by is not None else sub.owner)
    if description is not None:
        sub.description = description
    if active is not None and active != sub.active:
        switch(sub, active=active, how="by its owner")
    sub.save()
    return sub


def switch(sub: Subscription, *, active: bool, how: str) -> None:
    """Turn an endpoint on or off (the caller saves it, in its transaction): off fails what waits, so that
    nothing is sent to it or kept pending for ever; on starts clean (nothing old is sent)."""
    if active:
        sub.consecutive_failures, sub.failing_since, sub.disabled_at, sub.disabled_reason = 0, None, None, ""
    else:
        delivery.fail_pending(subscription_id=sub.id, reason=f"endpoint turned off {how}")
        sub.disabled_at, sub.disabled_reason = timezone.now(), f"turned off {how}"
    sub.active = active


MAX_PREVIOUS_SECRETS = 4  # earlier keys that may still sign after rotations in quick succession


@transaction.atomic
def rotate_secret(*, subscription: Subscription) -> Subscription:
    """New secret now; the old one keeps signing too (a second signature) for the grace period. Rotated
    again within it, the keys still in grace keep signing as well, until the new grace period ends: a
    double click, or a retry of a rotation whose response was lost, never leaves a receiver with no key
    that verifies."""
    sub = Subscription.objects.select_for_update().get(id=subscription.id)
    now = timezone.now()
    grace_until = sub.previous_secret_expires_at
    in_grace = sub.previous_secret.split() if grace_until and grace_until > now else []
    sub.previous_secret = " ".join([sub.secret, *in_grace][:MAX_PREVIOUS_SECRETS])
    sub.previous_secret_expires_at = now + timedelta(seconds=settings.WEBHOOKS["SECRET_GRACE_SECONDS"])
    sub.secret = signing.new_secret()
    sub.save(update_fields=["secret", "previous_secret", "previous_secret_expires_at", "updated_at"])
    return sub


def unsubscribe(*, subscription: Subscription) -> None:
    """Delete the endpoint with its deliveries: what was waiting is never sent (the claim finds no row)."""
    Subscription.objects.filter(id=subscription.id).delete()


@transaction.atomic
def redeliver(*, delivery_row: Delivery) -> Delivery:
    """Send a delivery again now, with the same ``webhook-id`` (a new attempt in its log). It gets a full
    retry budget of its own (``MAX_ATTEMPTS`` attempts on the schedule from its start), however many
    attempts it had before."""
    sub = Subscription.objects.only("active").get(id=delivery_row.subscription_id)
    if not sub.active:
        raise Conflict("the webhook is disabled; enable it first")
    # Due now by the database's clock (``Now()``), the one the claim judges by, not this host's.
    # An attempt in flight keeps going, but no longer holds the delivery (in_flight_until): the new claim
    # takes over, and that attempt's answer, whether it comes before that claim or after, changes nothing
    # (its finish is guarded by the hold and by its number; it stays LOST in the log, with its answer).
    Delivery.objects.filter(id=delivery_row.id).update(
        status=DeliveryStatus.PENDING, next_attempt_at=Now(), sent_at=Now(), finished_at=None, in_flight_until=None,
        redelivered_after=F("attempts"))
    DeliveryAttempt.objects.filter(delivery_id=delivery_row.id, outcome=DeliveryAttempt.Outcome.IN_FLIGHT).update(
        outcome=DeliveryAttempt.Outcome.LOST, error="a redelivery was asked for during this attempt")
    transaction.on_commit(lambda: outbox.send([str(delivery_row.id)]), robust=True)
    return Delivery.objects.get(id=delivery_row.id)


PRUNE_BATCH = 5_000
# prune_log starts no batch after this many seconds (at least one runs): a backlog (a first run, a long
# pause of beat) goes a bounded slice per run, as task retention does (jobs.retention.PRUNE_SECONDS).
PRUNE_SECONDS = 60.0


def prune_log(*, batch: int | None = None, seconds: float | None = None) -> int:
    """Delete finished deliveries (and their attempts) older than ``WEBHOOK_LOG_RETENTION_DAYS``, oldest
    first, ``batch`` (``PRUNE_BATCH``) per transaction, starting batches until none is left or ``seconds``
    (``PRUNE_SECONDS``) have passed; what waits (PENDING) is never touched. Each batch is one range of
    ``webhook_delivery_finished_idx``, starting where the last one ended. Returns how many were deleted."""
    days = settings.WEBHOOKS["LOG_RETENTION_DAYS"]
    if days <= 0:
        return 0
    batch = batch or PRUNE_BATCH
    deadline = time.monotonic() + (PRUNE_SECONDS if seconds is None else seconds)
    cutoff = timezone.now() - timedelta(days=days)
    finished = [DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED]
    deleted = 0
    after = None  # the last batch's newest finish: the next range starts there
    while True:
        old = Delivery.objects.filter(status__in=finished, finished_at__lt=cutoff)
        if after is not None:
            old = old.filter(finished_at__gte=after)
        window = list(old.order_by("finished_at").values_list("id", "finished_at")[:batch])
        if window:
            # Still finished: a redelivery since the read made it PENDING again, and it stays.
            gone = old.filter(id__in=[row_id for row_id, _ in window]).delete()[1]
            deleted += gone.get(Delivery._meta.label, 0)
            after = window[-1][1]
        if len(window) < batch or time.monotonic() >= deadline:
            break
    return deleted
