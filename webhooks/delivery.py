"""Sending one delivery: claim (guarded UPDATE), attempt row, HTTP POST, outcome, endpoint health.

* ``claim`` takes a PENDING, due delivery that no other attempt holds and that no earlier event of the
  same task (or, for a queue event, of the same queue) waits in front of (per-task and per-queue
  order), in one guarded UPDATE: a duplicate Celery message,
  the beat's re-send and a chain send race, and only one matches.
* The attempt row is committed *before* the request, so a worker killed mid-send leaves an IN_FLIGHT
  attempt that the next claim marks LOST (at-least-once: the receiver may see that message twice and
  dedupes by ``webhook-id``).
* ``record`` completes the attempt, schedules a retry or ends the delivery, updates the endpoint's
  failure streak (and disables it past the limits), and sends the task's next waiting event. Should
  storing the answer fail anyway, the attempt is recorded again from its status code alone: an attempt
  always ends (a 2xx is delivered), it is never left IN_FLIGHT to be re-sent for ever. Only the attempt
  holding the latest claim moves the delivery on (the outcome's UPDATE is guarded by its number): one
  that answers after its hold ran out and a newer attempt claimed the delivery stays LOST in the log,
  with the answer it got, and changes nothing else.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.db.models.functions import Coalesce, Now
from django.utils import timezone

from webhooks import outbox, policy, signing, transport
from webhooks.models import Delivery, DeliveryAttempt, DeliveryStatus, Subscription

log = logging.getLogger(__name__)
Outcome = DeliveryAttempt.Outcome

# Due times, holds and the ``webhook-timestamp`` are all judged by the database's clock (``statement_timestamp()``,
# what Django's ``Now()`` writes): the hosts' clocks differ (web, task workers, the webhooks worker), and a
# webhooks worker behind the host that recorded an event would otherwise hold it back, or one ahead of the
# others take over a delivery still being sent.
_CLAIM_SQL = """
UPDATE webhooks_delivery d
   SET attempts = d.attempts + 1, in_flight_until = statement_timestamp() + make_interval(secs => %(lease)s)
  FROM webhooks_subscription s
 WHERE d.id = %(id)s AND d.status = 'PENDING' AND d.next_attempt_at <= statement_timestamp()
   AND (d.in_flight_until IS NULL OR d.in_flight_until < statement_timestamp())
   AND s.id = d.subscription_id AND s.active
   AND NOT EXISTS (SELECT 1 FROM webhooks_delivery e
                    WHERE e.subscription_id = d.subscription_id AND e.task_id = d.task_id
                      AND e.status = 'PENDING' AND e.seq < d.seq)
   AND (d.queue = '' OR NOT EXISTS (SELECT 1 FROM webhooks_delivery e
                                     WHERE e.subscription_id = d.subscription_id AND e.queue = d.queue
                                       AND e.status = 'PENDING' AND e.seq < d.seq))
RETURNING d.attempts, d.payload::text, d.subscription_id, d.task_id, s.url, s.secret, s.previous_secret,
          s.previous_secret_expires_at, s.consecutive_failures > 0 OR s.failing_since IS NOT NULL,
          d.redelivered_after, d.queue, statement_timestamp()
"""

# Guarded by the attempt's number as well as the status: only the attempt that holds the latest claim moves
# the delivery on. One that outlived its hold (``in_flight_until``) and was taken over by a newer claim
# matches nothing, so its answer can neither end the delivery nor clear or reschedule the newer attempt;
# nor does one whose hold a redelivery released (``in_flight_until`` NULL) before the newer claim came.
# A retry's ``next_attempt_at`` and ``finished_at`` are the database's time, which it returns.
_FINISH_SQL = """
UPDATE webhooks_delivery SET {sets}
 WHERE id = %(id)s AND status = 'PENDING' AND attempts = %(number)s AND in_flight_until IS NOT NULL
RETURNING statement_timestamp()
"""


@dataclass(frozen=True)
class Claimed:
    """What one attempt needs, read by the claiming UPDATE itself."""

    attempt: DeliveryAttempt
    url: str
    secrets: list[str]
    body: bytes
    subscription_id: Any
    task_id: Any
    endpoint_failing: bool
    redelivered_after: int = 0  # attempts before the latest redelivery: retries count from there
    queue: str = ""  # a queue event's queue (its order line, as ``task_id`` is a task event's)
    signed_at: int = 0  # the ``webhook-timestamp``: the database's time of the claim, in Unix seconds

    @property
    def tries(self) -> int:
        """This attempt's number within its retry budget (1 for the first attempt after a redelivery)."""
        return self.attempt.number - self.redelivered_after


def _lease() -> timedelta:
    """How long a claimed attempt holds its delivery before the beat may send it again. An attempt ends by
    ``TOTAL_TIMEOUT`` (transport.py), so the lease outlasts it, with 10 s to spare for the DNS lookup and
    recording the outcome: a shorter one would let a second worker send the same delivery meanwhile."""
    conf = settings.WEBHOOKS
    return timedelta(seconds=max(2 * (conf["CONNECT_TIMEOUT"] + conf["READ_TIMEOUT"]), conf["TOTAL_TIMEOUT"]) + 10)


def _no_fsync_wait(cur: Any) -> None:
    """The delivery's own bookkeeping commits without waiting for the WAL flush (2 commits per attempt
    dominated the cost). A database crash can forget the last few hundred ms of it: the delivery then
    counts as not sent and is sent again, which at-least-once allows; the outbox row itself was
    written durably with the task's state change."""
    cur.execute("SET LOCAL synchronous_commit TO OFF")


def attempt(*, delivery_id: str) -> str | None:
    """Claim, send and record one attempt. Returns the attempt's outcome, None if not claimed."""
    claimed = claim(delivery_id=delivery_id)
    if claimed is None:
        return None
    msg_id = f"msg_{claimed.attempt.delivery_id.hex}"
    headers = signing.headers(claimed.secrets, msg_id, claimed.signed_at, claimed.body)
    result = transport.send(claimed.url, claimed.body, headers)
    try:
        return record(claimed=claimed, result=result)
    except Exception as exc:
        # Whatever the answer held, the attempt must end: otherwise it stays IN_FLIGHT, is sent again
        # each time its hold runs out and blocks its task's later events. Its status code still decides
        # (a 2xx is delivered); what could not be stored (headers, body, Retry-After) is left out.
        log.exception("recording attempt %s of webhook delivery %s failed; storing its outcome without the answer",
                      claimed.attempt.number, claimed.attempt.delivery_id)
        return record(claimed=claimed, result=_bare(result, exc))


def _bare(result: transport.AttemptResult, exc: Exception) -> transport.AttemptResult:
    """``result`` without what the receiver sent besides its status code."""
    note = f"the answer could not be stored ({type(exc).__name__})"
    return transport.AttemptResult(status_code=result.status_code, duration_ms=result.duration_ms,
                                   error=f"{storable(result.error)}; {note}" if result.error else note,
                                   transient=result.transient)


def storable(text: str, limit: int | None = None) -> str:
    """``text`` as PostgreSQL text can hold it: no NUL, no lone surrogates; cut to ``limit`` characters."""
    text = text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return text if limit is None else text[:limit]


@transaction.atomic
def claim(*, delivery_id: str) -> Claimed | None:
    """PENDING & due & free & endpoint active & first in its task's line → held for one attempt.

    One guarded UPDATE decides (a duplicate message, the beat and a chain send race; one matches) and
    returns what the request needs, with the database's time: due, held and signed by that one clock,
    whatever this host's says. The attempt row commits before the request is made.
    """
    with connection.cursor() as cur:
        _no_fsync_wait(cur)
        cur.execute(_CLAIM_SQL, {"id": delivery_id, "lease": _lease().total_seconds()})
        row = cur.fetchone()
    if row is None:
        return None  # done, not due, held by another attempt, waiting behind an earlier event, or gone
    (number, payload, sub_id, task_id, url, secret, previous, previous_until, failing, redelivered_after, queue,
     now) = row
    if number > 1:  # an attempt left IN_FLIGHT belongs to a worker that died mid-send
        DeliveryAttempt.objects.filter(delivery_id=delivery_id, outcome=Outcome.IN_FLIGHT).update(
            outcome=Outcome.LOST, finished_at=now, error="worker lost during the attempt")
    attempt_row = DeliveryAttempt.objects.create(delivery_id=UUID(str(delivery_id)), number=number, started_at=now)
    secrets = [secret] + (previous.split() if previous and previous_until and previous_until > now else [])
    # The stored JSON re-serialised compactly: the same bytes on every attempt of this delivery.
    body = json.dumps(json.loads(payload), separators=(",", ":"), ensure_ascii=False).encode()
    return Claimed(attempt_row, url, secrets, body, sub_id, task_id, bool(failing), redelivered_after, queue,
                   int(now.timestamp()))


@transaction.atomic
def record(*, claimed: Claimed, result: transport.AttemptResult) -> str:
    """Complete the attempt and move the delivery on: SUCCEEDED, a retry at ``next_attempt_at``, or FAILED.

    Times are the database's (``statement_timestamp()`` in the outcome's UPDATE, ``Now()`` elsewhere), as the
    claim judges them: a retry falls due by the clock that decides when it is due."""
    attempt_row = claimed.attempt
    tries = claimed.tries
    if policy.is_success(result.status_code):
        outcome = Outcome.SUCCEEDED
    elif policy.is_retryable(result.status_code, transient_error=result.transient) and not policy.gives_up(tries):
        outcome = Outcome.RETRY
    else:
        outcome = Outcome.FAILED
    error = storable(result.error) or ("" if outcome == Outcome.SUCCEEDED else f"HTTP {result.status_code}")
    values: dict[str, Any] = {"last_status_code": result.status_code, "last_error": error[:1000]}
    sets = ["in_flight_until = NULL", "last_status_code = %(last_status_code)s", "last_error = %(last_error)s"]
    if outcome == Outcome.RETRY:
        retry_after = policy.parse_retry_after(result.retry_after) if result.status_code in (429, 503) else None
        values["delay"] = policy.next_delay(tries, retry_after=retry_after)
        sets.append("next_attempt_at = statement_timestamp() + make_interval(secs => %(delay)s)")
    else:
        done = DeliveryStatus.SUCCEEDED if outcome == Outcome.SUCCEEDED else DeliveryStatus.FAILED
        values["status"] = done.value
        sets += ["status = %(status)s", "finished_at = statement_timestamp()"]
    # The delivery row first, then the attempt row: the order ``claim`` locks them in.
    with connection.cursor() as cur:
        _no_fsync_wait(cur)
        # Guarded: a delivery deleted or failed (endpoint disabled) meanwhile stays as it is, and so does one
        # a newer attempt has claimed since this one's hold ran out.
        cur.execute(_FINISH_SQL.format(sets=", ".join(sets)),
                    {**values, "id": attempt_row.delivery_id, "number": attempt_row.number})
        finished = cur.fetchone()
    applied = finished is not None
    answer = {"finished_at": Now(), "duration_ms": result.duration_ms, "status_code": result.status_code,
              "response_headers": {storable(k): storable(v) for k, v in result.headers.items()},
              "response_body": storable(result.body)}
    attempt_log = DeliveryAttempt.objects.filter(id=attempt_row.id)
    if applied:
        attempt_log.update(outcome=outcome, error=storable(result.error, 1000), **answer)
    else:
        # Not applied. Taken over by a newer attempt (whose claim marked this one LOST): it stays LOST, with the
        # answer it got late and a note. Otherwise (the delivery was failed or deleted meanwhile) it is logged
        # with its own outcome, as before.
        late = ("answered after a newer attempt had taken over (its hold ran out, or a redelivery was asked for): "
                "not applied")
        late += f"; {error}" if error else ""
        if attempt_log.filter(outcome=Outcome.LOST).update(error=late[:1000], **answer):
            return Outcome.LOST
        attempt_log.update(outcome=outcome, error=storable(result.error, 1000), **answer)
        return outcome
    now = finished[0]  # the database's time
    if outcome != Outcome.SUCCEEDED or claimed.endpoint_failing:
        _track_health(claimed.subscription_id, ok=outcome == Outcome.SUCCEEDED, now=now)
    if outcome != Outcome.RETRY and (claimed.task_id is not None or claimed.queue):
        _send_next(claimed.subscription_id, claimed.task_id, claimed.queue, now)
    return outcome


def _track_health(subscription_id: Any, *, ok: bool, now: Any) -> None:
    subs = Subscription.objects.filter(id=subscription_id)
    if ok:
        subs.filter(Q(consecutive_failures__gt=0) | Q(failing_since__isnull=False)).update(
            consecutive_failures=0, failing_since=None)
        return
    subs.update(consecutive_failures=F("consecutive_failures") + 1, failing_since=Coalesce("failing_since", now))
    conf = settings.WEBHOOKS
    sub = subs.filter(active=True).only("consecutive_failures", "failing_since", "owner_id").first()
    if sub is None:
        return
    if sub.consecutive_failures >= conf["DISABLE_AFTER_FAILURES"]:
        disable(subscription_id=subscription_id, reason=f"{sub.consecutive_failures} consecutive failed attempts")
    elif sub.failing_since and (now - sub.failing_since).total_seconds() >= conf["DISABLE_AFTER_SECONDS"]:
        disable(subscription_id=subscription_id, reason=f"failing continuously since {sub.failing_since.isoformat()}")


def _send_next(subscription_id: Any, task_id: Any, queue: str, now: Any) -> None:
    """The task's (or the queue's) next waiting event to this endpoint goes now (it bounced off the order
    guard)."""
    line = Q(task_id=task_id) if task_id is not None else Q(task_id__isnull=True, queue=queue)
    nxt = (Delivery.objects.filter(line, subscription_id=subscription_id, status=DeliveryStatus.PENDING)
           .order_by("seq").values_list("id", flat=True).first())
    if nxt is not None:
        Delivery.objects.filter(id=nxt).update(sent_at=now)
        transaction.on_commit(lambda: outbox.send([str(nxt)]), robust=True)


def disable(*, subscription_id: Any, reason: str) -> bool:
    """Turn an endpoint off and fail what it had waiting, so re-enabling sends nothing old by surprise."""
    now = timezone.now()
    with transaction.atomic():
        done = Subscription.objects.filter(id=subscription_id, active=True).update(
            active=False, disabled_at=now, disabled_reason=reason[:500])
        if not done:
            return False  # someone else disabled it first
        fail_pending(subscription_id=subscription_id, reason=f"endpoint disabled: {reason}")
        sub = Subscription.objects.only("owner_id", "url").get(id=subscription_id)
        body = {"event": "webhook.disabled", "webhook_id": str(subscription_id), "url": sub.url,
                "reason": reason, "timestamp": now.isoformat()}
        transaction.on_commit(lambda: _notify_owner(sub.owner_id, body), robust=True)
    log.warning("webhook %s disabled: %s", subscription_id, reason)
    return True


def fail_pending(*, subscription_id: Any, reason: str) -> int:
    return Delivery.objects.filter(subscription_id=subscription_id, status=DeliveryStatus.PENDING).update(
        status=DeliveryStatus.FAILED, finished_at=Now(), in_flight_until=None, last_error=reason[:1000])


def _notify_owner(owner_id: Any, body: dict[str, Any]) -> None:
    """The owner's dashboard sockets, an operator's too, get ``webhook.disabled`` (the consumers'
    pass-through handler)."""
    import asyncio

    from jobs.events import notice_group, publisher

    async def _send() -> None:
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        if layer is not None:
            await layer.group_send(notice_group(owner_id), {"type": "queue.event", "payload": body})

    try:
        asyncio.run_coroutine_threadsafe(_send(), publisher._ensure_loop())
    except Exception:  # the subscription row (disabled_at, disabled_reason) is the record
        log.exception("could not notify the owner of webhook %s", body["webhook_id"])


def _broker_backlog() -> int | None:
    """Messages waiting in the broker's ``webhooks`` queue (None if the broker cannot say)."""
    from config.celery import app

    try:
        with app.pool.acquire(block=True, timeout=2) as conn:
            return conn.default_channel.queue_declare("webhooks", passive=True).message_count
    except Exception:  # an unknown backlog must not stop retries; it only allows re-sends
        return None


# While the broker's ``webhooks`` queue has a backlog, at most this many deliveries per beat tick are re-sent
# because their message looks lost (sent ``RESEND_SECONDS`` ago and not picked up).
RESEND_WITH_BACKLOG = 50


def send_due(*, limit: int = 500) -> int:
    """Beat: send retries that are due, and re-send deliveries whose message looks lost (heads of their
    task's line only): sent more than ``RESEND_SECONDS`` ago and still not picked up.

    While the broker's ``webhooks`` queue has a backlog, such a message may just be waiting its turn in it,
    and re-sending all of them would pile duplicates onto the backlog (each one a message and a claim that
    matches nothing). It may as well be lost, though — the process died between its commit and the send,
    or the broker lost it — and a queue that is never empty at a tick (steady traffic) must not hold it up
    for ever, nor the task's later events behind it. So then only ``RESEND_WITH_BACKLOG`` of them are re-sent
    per tick, the longest unsent first: each gets a fresh ``sent_at`` and goes to the back of that line, so
    every one comes round, a lost one within a few ticks, for at most ``RESEND_WITH_BACKLOG`` duplicates a
    tick. Due retries are sent whatever the backlog. Due, held and sent are judged by the database's clock,
    as the claim judges them."""
    now = Now()
    resend_before = Now() - timedelta(seconds=settings.WEBHOOKS["RESEND_SECONDS"])
    earlier = Delivery.objects.filter(subscription_id=OuterRef("subscription_id"), task_id=OuterRef("task_id"),
                                      status=DeliveryStatus.PENDING, seq__lt=OuterRef("seq"))
    earlier_in_queue = Delivery.objects.filter(subscription_id=OuterRef("subscription_id"), queue=OuterRef("queue"),
                                               status=DeliveryStatus.PENDING, seq__lt=OuterRef("seq")).exclude(queue="")
    heads = (Delivery.objects.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now)
             .filter(Q(in_flight_until__isnull=True) | Q(in_flight_until__lt=now))
             .filter(~Exists(earlier), ~Exists(earlier_in_queue))
             .select_for_update(skip_locked=True, of=("self",)))
    retries = Q(sent_at__isnull=True) | Q(sent_at__lt=F("next_attempt_at"))
    stale = Q(sent_at__lt=resend_before)
    backlog = _broker_backlog()
    with transaction.atomic():
        if not backlog:
            ids = list(heads.filter(retries | stale).order_by("next_attempt_at").values_list("id", flat=True)[:limit])
        else:
            ids = list(heads.filter(retries).order_by("next_attempt_at").values_list("id", flat=True)[:limit])
            room = min(RESEND_WITH_BACKLOG, limit - len(ids))
            if room > 0:  # sent since it was due (not a retry), long ago
                ids += heads.filter(stale, sent_at__gte=F("next_attempt_at")).order_by("sent_at").values_list(
                    "id", flat=True)[:room]
        if ids:
            Delivery.objects.filter(id__in=ids).update(sent_at=now)
            sent = [str(i) for i in ids]
            transaction.on_commit(lambda: outbox.send(sent), robust=True)
    return len(ids)
