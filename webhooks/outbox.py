"""Writes ``Delivery`` rows in the transaction of the state change they report (the outbox), and sends
their Celery messages on commit: a rolled-back change notifies nobody, a committed one is never lost
(the beat re-sends what a lost message left behind, see ``delivery.send_due``). A row is due, and was
sent, at the database's time (``Now()``, in the same INSERT): the webhooks worker judges it by that clock,
not by the clock of whichever host recorded the event.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.contrib.auth.models import Group
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q
from django.db.models.functions import Now

from config.permissions import OPERATORS_GROUP
from webhooks.models import Delivery, Subscription

# Every task event except log lines and snapshots (those stay on the API and the WebSocket).
TASK_EVENTS = frozenset({
    "task.created", "task.queued", "task.started", "task.progress", "task.succeeded", "task.failed",
    "task.cancelled", "task.timed_out", "task.retrying", "task.requeued", "task.priority_changed",
})
QUEUE_EVENTS = frozenset({"queue.paused", "queue.resumed"})
QUEUE_EVENT_SEQ = "webhooks_queue_event_seq"  # one sequence for every queue's events (migration 0003)
WILDCARDS = frozenset({"task.*", "queue.*"})


def matching_sql(event: str, rows: str) -> tuple[str, list[Any]] | None:
    """An SQL expression for one row of ``rows`` (an alias with the task's ``id`` and ``owner_id``): the
    ids of the active subscriptions that want ``event`` of that task — its owner's endpoints for all their
    tasks, and the task's own. ``jobs`` writes it into the statement that records the events, so the
    lookup costs no round trip of its own. None when the event is never delivered."""
    if event not in TASK_EVENTS:
        return None
    table = Subscription._meta.db_table
    wanted = [event, "task.*"]
    return (f"ARRAY(SELECT s.id FROM {table} s WHERE s.active AND s.task_id IS NULL AND s.owner_id = {rows}.owner_id "
            f"AND s.events && %s::varchar[]) || ARRAY(SELECT s.id FROM {table} s WHERE s.active "
            f"AND s.task_id = {rows}.id AND s.events && %s::varchar[])"), [wanted, wanted]


def enqueue_task_events(tasks: Sequence[Any], event: str, payloads: Sequence[Mapping[str, Any]],
                        subscriptions: Sequence[Sequence[Any]]) -> list[Delivery]:
    """One delivery per (task, matching subscription); ``subscriptions`` holds each task's matching
    subscription ids (``matching_sql``), aligned with ``tasks``."""
    if not any(subscriptions):
        return []
    rows = [
        Delivery(subscription_id=sub_id, event=event, payload=dict(body), task_id=task.id, seq=body.get("seq", 0),
                 next_attempt_at=Now(), sent_at=Now())
        for task, body, subs in zip(tasks, payloads, subscriptions)
        for sub_id in subs
    ]
    return _insert(rows)


def operator_owned() -> Q:
    """Subscriptions whose owner is, now, an active operator (``config.permissions.has_operator_role``:
    staff, superuser or the operators group): the role is checked when the subscription is created, and
    again here, so a user who stops being an operator (or is deactivated) stops getting queue events."""
    in_group = Exists(Group.objects.filter(name=OPERATORS_GROUP, user=OuterRef("owner_id")))
    return Q(owner__is_active=True) & (Q(owner__is_staff=True) | Q(owner__is_superuser=True) | Q(in_group))


def enqueue_queue_event(event: str, payload: Mapping[str, Any]) -> list[Delivery]:
    """One delivery per active ``queue.*`` subscription of a current operator (only operators may create
    those, and only operators keep getting them)."""
    if event not in QUEUE_EVENTS:
        return []
    subscriptions = list(Subscription.objects.filter(active=True, task__isnull=True, events__overlap=[event, "queue.*"])
                         .filter(operator_owned()).values_list("id", flat=True))
    if not subscriptions:
        return []
    # The caller holds the queue's row lock (queueing.services), so one queue's events take their numbers in
    # the order they happen: the claim's order guard delivers them in that order, and receivers see ``seq``.
    with connection.cursor() as cur:
        cur.execute(f"SELECT nextval('{QUEUE_EVENT_SEQ}')")
        seq = cur.fetchone()[0]
    body = {**payload, "seq": seq}
    rows = [Delivery(subscription_id=sub_id, event=event, payload=body, queue=payload["queue"], seq=seq,
                     next_attempt_at=Now(), sent_at=Now()) for sub_id in subscriptions]
    return _insert(rows)


def _insert(rows: list[Delivery]) -> list[Delivery]:
    """One INSERT for ``rows``; their ``next_attempt_at`` and ``sent_at`` are ``Now()`` expressions, which the
    database fills in (the returned objects keep the expressions: read the row for the times)."""
    if rows:
        Delivery.objects.bulk_create(rows)
        ids = [str(r.id) for r in rows]
        transaction.on_commit(lambda: send(ids), robust=True)
    return rows


def send(delivery_ids: Iterable[str]) -> None:
    """Hand delivery ids to the ``webhooks`` Celery queue (after commit only).

    Several ids travel as one ``webhooks.fan_out`` message that the webhooks worker splits into one
    ``webhooks.deliver`` each: the process that changed the task (a task worker) pays for one send per
    state change, whatever the number of subscriptions, and deliveries still run in parallel.
    """
    from webhooks.tasks import deliver, fan_out

    ids = [str(i) for i in delivery_ids]
    if len(ids) == 1:
        deliver.apply_async(args=ids, queue="webhooks")
    elif ids:
        fan_out.apply_async(args=[ids], queue="webhooks")


def send_each(delivery_ids: Iterable[str]) -> None:
    """One ``webhooks.deliver`` message per delivery, through one producer connection."""
    from config.celery import app
    from webhooks.tasks import deliver

    with app.producer_or_acquire() as producer:
        for delivery_id in delivery_ids:
            deliver.apply_async(args=[str(delivery_id)], queue="webhooks", producer=producer)
