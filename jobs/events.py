"""Task events: the wire format (DESIGN §5), the ``TaskEvent`` rows, and their fan-out after commit.

``record()`` is called inside the transaction that changed the task; it writes the rows and registers
``transaction.on_commit`` callbacks, so a rolled-back change notifies nobody.
"""
from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import os
import threading
from collections.abc import Iterable
from datetime import datetime, timezone as dt_timezone
from typing import Any, Literal, TypedDict

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone

from jobs import prepared
from jobs.models import Task, TaskEvent
from observability.logs import current_request, current_request_id

log = logging.getLogger(__name__)

EventName = Literal[
    "task.created", "task.queued", "task.started", "task.progress", "task.log", "task.succeeded",
    "task.failed", "task.cancelled", "task.timed_out", "task.retrying", "task.requeued",
    "task.priority_changed", "task.snapshot",
]


class TaskEventPayload(TypedDict, total=False):
    event: str
    seq: int
    task_id: str
    status: str
    percent: float
    stage: str
    message: str
    metrics: dict[str, Any]
    timestamp: str
    queue: str
    algorithm: str
    data: dict[str, Any]


def iso(ts: datetime) -> str:
    return ts.astimezone(dt_timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def payload(task: Task, event: str, seq: int, data: dict[str, Any] | None, at: datetime) -> TaskEventPayload:
    return {
        "event": event,
        "seq": seq,
        "task_id": str(task.id),
        "status": task.status,
        "queue": task.queue_id,
        "algorithm": task.algorithm,
        "percent": task.progress_percent,
        "stage": task.progress_stage,
        "message": task.progress_message,
        "metrics": task.progress_metrics,
        "data": data or {},
        "timestamp": iso(at),
    }


def from_row(row: TaskEvent, task: Task) -> TaskEventPayload:
    """A stored event as the wire shows it (replay for reconnecting clients, webhooks redelivery)."""
    body = payload(task, row.event, row.seq, row.data, row.created_at)
    body["status"] = row.status
    for key in ("percent", "stage", "message", "metrics"):
        if key in row.data:
            body[key] = row.data[key]  # type: ignore[literal-required]
    return body


_INSERT_INTO = f"INSERT INTO {TaskEvent._meta.db_table} (task_id, seq, event, status, data, created_at) "
_INSERT_SQL = (
    f"{_INSERT_INTO}"
    "SELECT * FROM unnest(%s::uuid[], %s::integer[], %s::varchar[], %s::varchar[], %s::text[]::jsonb[], "
    "%s::timestamptz[])"
)


def _request_id_here() -> tuple[str | None, Any]:
    """In a request, its X-Request-ID (the request that touched the tasks) and the requesting user's id.
    The id goes only on the events of that user's own tasks: a submit that dispatches another user's
    waiting task must not show its X-Request-ID (which may be its idempotency key) in that user's log.
    Elsewhere (workers, beat), and on others' tasks, the events carry the request id each task was
    submitted with."""
    request = current_request.get()
    if request is None:
        return None, None
    user = getattr(request, "user", None)
    return current_request_id(), getattr(user, "pk", None) if getattr(user, "is_authenticated", False) else None


def insert_sql(rows: str, event: str, data: dict[str, Any] | None, at: datetime) -> tuple[str, list[Any]]:
    """For ``transitions.apply``: the INSERT of ``event`` for every row of ``rows`` (the CTE of the rows
    its UPDATE returned, with their bumped ``last_seq``), to run in the same statement. Not for
    ``task.progress`` (see ``in_sql``)."""
    sql = (f"{_INSERT_INTO}SELECT {rows}.id, {rows}.last_seq, %s, {rows}.status, "
           f"jsonb_strip_nulls(jsonb_build_object('request_id', COALESCE(CASE WHEN {rows}.owner_id = %s::bigint "
           f"THEN %s::text END, NULLIF({rows}.request_id, '')))) || %s::jsonb, %s FROM {rows}")
    request_id, requester = _request_id_here()
    return sql, [event, requester, request_id, json.dumps(data or {}, cls=DjangoJSONEncoder), at]


def in_sql(event: str) -> bool:
    """Whether ``insert_sql`` can write ``event``: a progress event's data are the row's progress
    columns, written from Python (``record``)."""
    return event != "task.progress"


def record_series(tasks: list[Task], event: str, series: list[dict[str, Any]]) -> list[TaskEventPayload]:
    """``record`` of ``len(series)`` events per task, the data of each in order, numbered up to the
    task's ``last_seq`` (which the guarded UPDATE moved by their number)."""
    rows = [copy.copy(task) for task in tasks for _ in series]
    for i, row in enumerate(rows):
        row.last_seq -= len(series) - 1 - i % len(series)
    return record(rows, event, series * len(tasks))


def record(tasks: Iterable[Task], event: str,
           data: dict[str, Any] | list[dict[str, Any]] | None = None) -> list[TaskEventPayload]:
    """Append one event per task (its ``last_seq`` was already bumped by the guarded UPDATE, or set at
    insert), and its webhook outbox rows: the event rows and the subscription lookup in one statement.
    ``data``: the same for every task, or a list of each one's."""
    from webhooks import outbox

    now = timezone.now()
    tasks = list(tasks)
    each = data if isinstance(data, list) else [data] * len(tasks)
    rows = []
    request_id, requester = _request_id_here()
    for task, its_data in zip(tasks, each):
        row_data = dict(its_data or {})
        if event == "task.progress":
            row_data.update(percent=task.progress_percent, stage=task.progress_stage,
                            message=task.progress_message, metrics=task.progress_metrics)
        else:
            here = request_id if task.owner_id == requester else None
            if here or task.request_id:
                row_data.setdefault("request_id", here or task.request_id)
        rows.append((task.id, task.last_seq, json.dumps(row_data, cls=DjangoJSONEncoder)))
    sql = _INSERT_SQL
    params: list[Any] = [[r[0] for r in rows], [r[1] for r in rows], [event] * len(rows), [t.status for t in tasks],
                         [r[2] for r in rows], [now] * len(rows)]
    matching = outbox.matching_sql(event, "t")
    if matching is not None:  # the insert as a CTE in front of the lookup: one round trip for both
        sql = (f"WITH inserted AS ({_INSERT_SQL}) SELECT {matching[0]} FROM unnest(%s::uuid[], %s::integer[]) "
               "WITH ORDINALITY AS t(id, owner_id, n) ORDER BY t.n")
        params += [*matching[1], [t.id for t in tasks], [t.owner_id for t in tasks]]
    with prepared.cursor() as cur:  # on every state change: plain SQL, a fraction of bulk_create's cost
        cur.execute(sql, params)
        subscriptions = [r[0] for r in cur.fetchall()] if matching is not None else []
    return recorded(tasks, event, each, now, subscriptions)


def recorded(tasks: list[Task], event: str, data: dict[str, Any] | list[dict[str, Any] | None] | None,
             at: datetime, subscriptions: list[list[Any]]) -> list[TaskEventPayload]:
    """After the event rows are written: their channel messages (on commit) and webhook outbox rows
    (``subscriptions``: each task's matching subscription ids). ``data``: as ``record``'s."""
    from webhooks import outbox

    each = data if isinstance(data, list) else [data] * len(tasks)
    out = [payload(t, event, t.last_seq, its_data, at) for t, its_data in zip(tasks, each)]
    by_owner = [(t.owner_id, body) for t, body in zip(tasks, out)]
    transaction.on_commit(lambda: publisher.publish(by_owner), robust=True)
    outbox.enqueue_task_events(tasks, event, out, subscriptions)  # in this same transaction, sent on commit
    return out


def task_group(task_id: Any) -> str:
    return f"task.{task_id}"


def user_group(user_id: Any) -> str:
    return f"user.{user_id}"


def notice_group(user_id: Any) -> str:
    """A user's own notices that are no task event (``webhook.disabled``): every dashboard of the user
    joins it, an operator's too (which streams ``tasks.all`` instead of the user's group)."""
    return f"notice.{user_id}"


ALL_GROUP = "tasks.all"


class _Publisher:
    """Sends events to the channel layer from sync code (views, Celery children).

    One event loop thread per process keeps the channel layer's Redis connections alive between
    sends (``async_to_sync`` would open new ones every time); it is created lazily per pid, so a
    prefork child never inherits its parent's loop.

    Events leave ``EVENT_COALESCE_MS`` (1 ms) after the first of them is published, together and in
    order: the events of one commit with several transitions (a submit's ``task.created`` and
    ``task.queued``, a finish's and the next task's ``task.queued``) and of the commits within that
    window are one pipelined round trip, not one per transition. The window also keeps the loop thread
    from taking the interpreter while the commit's other effects run: a submit's or a finish's broker
    send comes after its events' ``on_commit`` callbacks, and sent at once the events delayed it by
    0.3–0.8 ms (the dispatch latency, docs/benchmarks.md).
    """

    def __init__(self) -> None:
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[tuple[int, TaskEventPayload]] = []  # under ``_lock``, for the next ``_flush``
        self._sending: set[asyncio.Future[None]] = set()  # flushes under way (on the loop thread only)

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._pid != os.getpid() or self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="conveyor-publisher", daemon=True).start()
                self._loop, self._pid, self._pending, self._sending = loop, os.getpid(), [], set()
            return self._loop

    def publish(self, items: list[tuple[int, TaskEventPayload]]) -> None:
        try:
            loop = self._ensure_loop()
            with self._lock:
                first = not self._pending
                self._pending.extend(items)
            if first:  # else a flush is already on its way to the loop and takes these too
                loop.call_soon_threadsafe(self._flush_later)
        except Exception:  # the database holds the events; clients replay what they missed
            log.exception("could not publish %d task events", len(items))

    def _flush_later(self) -> None:
        """On the loop thread: flush once the coalescing window has passed."""
        assert self._loop is not None
        self._loop.call_later(settings.CONVEYOR["EVENT_COALESCE_MS"] / 1000, self._start_flush)

    def _start_flush(self) -> None:
        future = asyncio.ensure_future(self._flush())
        self._sending.add(future)
        future.add_done_callback(self._sending.discard)
        future.add_done_callback(_log_failure)

    async def _flush(self) -> None:
        with self._lock:
            items, self._pending = self._pending, []
        if items:
            await self._send(items)

    async def _drain(self) -> None:
        """What is pending now, without waiting for the window, and every flush still under way."""
        self._start_flush()
        await asyncio.gather(*self._sending, return_exceptions=True)

    async def _send(self, items: list[tuple[int, TaskEventPayload]]) -> None:
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        if layer is None:
            return
        messages = [
            (group, {"type": "task.event", "payload": bodies[0]} if len(bodies) == 1
             else {"type": "task.events", "payloads": bodies})  # a batch's events: one message per group
            for group, bodies in _by_group(items).items()
        ]
        if not await _publish_pipelined(layer, messages):
            for group, message in messages:
                try:
                    await layer.group_send(group, message)
                except _UNPACKABLE:  # a layer that serializes in group_send (RedisChannelLayer)
                    await _send_one(layer, group, message)

    def flush(self, timeout: float = 2.0) -> None:
        """Wait until everything published so far has left (used before a worker child kills itself)."""
        if self._loop is None or self._pid != os.getpid():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._drain(), self._loop).result(timeout)
        except Exception:
            pass


def _log_failure(fut: Any) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("publishing task events failed: %s", fut.exception())


async def _publish_pipelined(layer: Any, messages: list[tuple[str, dict[str, Any]]]) -> bool:
    """All of one commit's group messages in one pipelined round trip per Redis shard: with the
    pub/sub layer a ``group_send`` is one PUBLISH and one round trip each, and a batch of 8 tasks makes
    ten of them (8 task groups, the owner's, the operators'). Uses the layer's shard and channel-name
    helpers; False (the caller sends one by one) for any other layer. Each message is serialized on its
    own (``_serialized``): one that msgpack refuses never holds back the others."""
    try:
        loop_layer = layer._get_layer()
        shards: dict[int, tuple[Any, list[tuple[str, bytes]]]] = {}
        for group, message in messages:
            data = _serialized(layer, group, message)
            if data is None:
                continue
            shard = loop_layer._get_shard(group)
            shards.setdefault(id(shard), (shard, []))[1].append((loop_layer._get_group_channel_name(group), data))
    except AttributeError:
        return False
    for shard, batch in shards.values():
        async with shard._lock:
            shard._ensure_redis()
            pipe = shard._redis.pipeline(transaction=False)
            for channel, data in batch:
                pipe.publish(channel, data)
            await pipe.execute()
    return True


# What msgpack (the channel layer's serializer) refuses: an integer beyond 64 bits (OverflowError), a type it
# does not know (TypeError: a Decimal, a UUID in an event's data), a nesting too deep (ValueError).
_UNPACKABLE = (OverflowError, TypeError, ValueError)
_INT_RANGE = range(-2**63, 2**64)


def _serialized(layer: Any, group: str, message: dict[str, Any]) -> bytes | None:
    """``message`` as the layer sends it; one that msgpack refuses as it is, made ``_packable`` first; None
    (logged) when even that fails, so the flush's other messages still go out."""
    try:
        return layer.serialize(message)
    except _UNPACKABLE:
        pass
    try:
        return layer.serialize(_packable(message))
    except Exception:
        log.exception("task event message to %s could not be serialized; skipped (clients replay it)", group)
        return None


async def _send_one(layer: Any, group: str, message: dict[str, Any]) -> None:
    """``group_send`` of a message the layer could not serialize as it is: ``_packable``, or skipped (logged)."""
    try:
        await layer.group_send(group, _packable(message))
    except Exception:
        log.exception("task event message to %s could not be sent; skipped (clients replay it)", group)


def _packable(message: dict[str, Any]) -> Any:
    """``message`` as its events' rows store it (JSON, ``DjangoJSONEncoder``: a UUID or a Decimal becomes
    a string, a key a string), but an integer outside msgpack's 64 bits a float: JSON's number, as a
    browser's ``JSON.parse`` reads the log's digits of it (``GET …/logs/`` shows the integer the database
    keeps). A progress report of ``1e40`` comes back from jsonb as the integer ``10**40``, and every later
    event of its task carries it in ``metrics``."""
    return json.loads(json.dumps(message, cls=DjangoJSONEncoder), parse_int=_int_or_float)


def _int_or_float(digits: str) -> int | float | str:
    """A JSON integer as msgpack can carry it: beyond its 64 bits a float, beyond a float's range (which
    JSON cannot write as a float) its digits as a string."""
    if len(digits) <= 20 and int(digits) in _INT_RANGE:
        return int(digits)
    number = float(digits)
    return number if math.isfinite(number) else digits


def _by_group(items: list[tuple[int, TaskEventPayload]]) -> dict[str, list[TaskEventPayload]]:
    """Each event goes to its task's group, its owner's group and the operators' group, in order."""
    groups: dict[str, list[TaskEventPayload]] = {}
    for owner_id, body in items:
        for group in (task_group(body["task_id"]), user_group(owner_id), ALL_GROUP):
            groups.setdefault(group, []).append(body)
    return groups


publisher = _Publisher()
