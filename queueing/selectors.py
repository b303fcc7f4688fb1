"""Reads for operators and users: queue summaries, the waiting list with "why is it waiting",
the worker registry.

Every number here comes from indexed reads: active states per queue from the trigger-kept
``QueueCount`` rows, finishes in the throughput window from ``task_finished_cover_idx`` (a range of
``finished_at``, index-only: ``status``, ``queue`` and ``started_at`` are included in it), positions from
the queue order (``task_queue_order_idx``). Nothing scans finished history.

Throughput, and the start estimates made from it, count the finishes of tasks that ran (``started_at``
set): a task cancelled while it waited took no slot, so a bulk cancel of a backlog is no throughput.
``finished`` (the API's ``finished_recently``) reports every finish by final state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import BooleanField, Count, ExpressionWrapper, F, Min, Q, QuerySet, Sum
from django.utils import timezone

from config.permissions import is_operator
from jobs.models import ACTIVE, Status, Task
from queueing import ordering
from queueing.errors import QueueNotFound
from queueing.models import Queue, QueueCount, WorkerRecord

REASONS = {
    "queue_paused": "the queue is paused",
    "backing_off": "retrying after a failure; waiting for its backoff to end",
    "no_worker": "no live worker consumes this queue",
    "queue_concurrency_full": "the queue's concurrency limit is reached; waiting for a running task to finish",
    "owner_cap_reached": "the owner's concurrency cap on this queue is reached",
    "tasks_ahead": "tasks ahead of it in the queue start first",
    "dispatching": "being handed to a worker",
    "queued": "handed to the broker; starts when a worker slot frees",
}


def live_workers() -> QuerySet[WorkerRecord]:
    from queueing.reconciler import db_cutoff  # last_heartbeat is the database's clock: compared with it

    return WorkerRecord.objects.filter(stopped_at__isnull=True,
                                       last_heartbeat__gte=db_cutoff(settings.CONVEYOR["WORKER_STALE_SECONDS"]))


def consumed_queues() -> set[str]:
    return {q for queues in live_workers().values_list("queues", flat=True) for q in queues}


@dataclass
class QueueState:
    """One queue's numbers, as the listing and "why is my task waiting" both need them."""

    queue: Queue
    counts: dict[str, int]
    finished: dict[str, int]  # every finish in the window, by final state
    ran: int  # of those, the tasks that had started: what throughput is
    oldest_waiting: datetime | None
    has_worker: bool
    window_seconds: int
    busy_by_owner: dict[int, int] = field(default_factory=dict)

    @property
    def waiting(self) -> int:
        """Tasks not started yet: PENDING, and QUEUED (handed to the broker, no worker has claimed them)."""
        return self.counts.get(Status.PENDING, 0) + self.counts.get(Status.QUEUED, 0)

    @property
    def in_flight(self) -> int:
        return self.counts.get(Status.QUEUED, 0) + self.counts.get(Status.RUNNING, 0)

    @property
    def throughput_per_minute(self) -> float:
        return round(self.ran * 60.0 / self.window_seconds, 3)

    def estimate(self, position: int, not_before: datetime | None = None) -> datetime | None:
        """Start estimate from recent throughput: ``position`` tasks must start before this one.

        It does not model ``user_concurrency``: callers give none for a task whose owner is at the cap."""
        if self.queue.paused or not self.has_worker:
            return None
        rate = self.ran / self.window_seconds  # started tasks finishing per second
        now = timezone.now()
        if position <= max(0, self.queue.concurrency - self.in_flight):
            at = now
        elif rate <= 0:
            return None
        else:
            at = now + timedelta(seconds=math.ceil((position - max(0, self.queue.concurrency - self.in_flight)) / rate))
        return max(at, not_before) if not_before else at


def queue_states(names: list[str] | None = None) -> list[QueueState]:
    queues = list(Queue.objects.all() if names is None else Queue.objects.filter(name__in=names))
    window = settings.CONVEYOR["QUEUE_THROUGHPUT_WINDOW_SECONDS"]
    since = timezone.now() - timedelta(seconds=window)
    names = [q.name for q in queues]
    counts: dict[str, dict[str, int]] = {n: {s: 0 for s in ACTIVE} for n in names}
    # Maintained by triggers (QueueCount): a few rows per queue, whatever the backlog.
    for queue, status, n in (QueueCount.objects.filter(queue__in=names, status__in=ACTIVE)
                             .values_list("queue", "status").annotate(n=Sum("n")).order_by()):
        counts[queue][status] = int(n)
    finished: dict[str, dict[str, int]] = {n: {} for n in names}
    ran: dict[str, int] = dict.fromkeys(names, 0)
    for queue, status, n, started in (Task.objects.filter(queue__in=names, finished_at__gte=since)
                                      .values_list("queue", "status")
                                      .annotate(n=Count("*"), started=Count("started_at"))
                                      .order_by()):
        finished[queue][status] = n
        ran[queue] += started
    # The oldest submit among the tasks not started yet (PENDING or QUEUED): one probe of
    # task_pending_created_idx per queue with PENDING tasks (a GROUP BY would read every waiting row), and
    # a read of the QUEUED ones (task_queue_status_idx; at most the queue's concurrency window).
    oldest: dict[str, datetime] = {}
    for n in names:
        firsts = [Task.objects.filter(queue=n, status=status).aggregate(m=Min("created_at"))["m"]
                  for status in (Status.PENDING, Status.QUEUED) if counts[n][status]]
        if firsts := [f for f in firsts if f is not None]:
            oldest[n] = min(firsts)
    consumed = consumed_queues()
    return [QueueState(queue=q, counts=counts[q.name], finished=finished[q.name], ran=ran[q.name],
                       oldest_waiting=oldest.get(q.name),
                       has_worker=q.name in consumed, window_seconds=window) for q in queues]


def queue_state(name: str) -> QueueState:
    states = queue_states([name])
    if not states:
        raise QueueNotFound(f"queue {name!r} not found")
    return states[0]


def _busy_by_owner(state: QueueState) -> dict[int, int]:
    if not state.busy_by_owner and state.queue.user_concurrency:
        state.busy_by_owner = dict(
            Task.objects.filter(queue=state.queue.name, status__in=[Status.QUEUED, Status.RUNNING])
            .values_list("owner_id").annotate(n=Count("*")).order_by())
    return state.busy_by_owner


def _owner_at_cap(task: Task, state: QueueState) -> bool:
    cap = state.queue.user_concurrency
    return bool(cap) and _busy_by_owner(state).get(task.owner_id, 0) >= cap


def _reason(task: Task, state: QueueState, position: int, now: datetime) -> str:
    queue = state.queue
    if queue.paused:
        return "queue_paused"
    if task.not_before and task.not_before > now:
        return "backing_off"
    if not state.has_worker:
        return "no_worker"
    if _owner_at_cap(task, state):
        return "owner_cap_reached"
    free = queue.concurrency - state.in_flight
    if free <= 0:
        return "queue_concurrency_full"
    return "dispatching" if position <= free else "tasks_ahead"


def waiting_info(task: Task, state: QueueState, position: int | None, now: datetime) -> dict[str, Any] | None:
    """``{position, reason, message, estimated_start, not_before}`` for a PENDING or QUEUED task."""
    if task.status == Status.QUEUED:  # handed to the broker: nothing starts it without a consumer
        reason = "queued" if state.has_worker else "no_worker"
        return {"position": 0, "reason": reason, "message": REASONS[reason], "estimated_start": None,
                "not_before": None}
    if task.status != Status.PENDING or position is None:
        return None
    reason = _reason(task, state, position, now)
    # An owner at the cap starts nothing until one of its own tasks ends, which the queue's throughput
    # says nothing about: unknown (null), whatever room the queue has (a backing-off task's too).
    held = reason == "owner_cap_reached" or (reason == "backing_off" and _owner_at_cap(task, state))
    return {"position": position, "reason": reason, "message": REASONS[reason],
            "estimated_start": None if held else state.estimate(position, task.not_before),
            "not_before": task.not_before}


# Rows ahead of a task, as three index range scans on task_queue_order_idx (pinned ones; unpinned
# ones of a higher priority; same priority and earlier in round-robin/submit order), so the cost
# follows the position, not the length of the queue.
_AHEAD_PINNED_SQL = """
SELECT count(*) FROM jobs_task WHERE queue = %s AND status = 'PENDING' AND queue_position < %s
"""
_AHEAD_UNPINNED_SQL = """
SELECT
  (SELECT count(*) FROM jobs_task WHERE queue = %(q)s AND status = 'PENDING' AND queue_position IS NOT NULL)
+ (SELECT count(*) FROM jobs_task WHERE queue = %(q)s AND status = 'PENDING' AND queue_position IS NULL
     AND priority > %(p)s)
+ (SELECT count(*) FROM jobs_task WHERE queue = %(q)s AND status = 'PENDING' AND queue_position IS NULL
     AND priority = %(p)s AND (fair_seq, created_at, id) < (%(f)s::bigint, %(c)s::timestamptz, %(id)s::uuid))
"""


def position_of(task: Task) -> int | None:
    """1-based place of a PENDING task in its queue's start order."""
    if task.status != Status.PENDING:
        return None
    with connection.cursor() as cur:
        if task.queue_position is not None:
            cur.execute(_AHEAD_PINNED_SQL, [task.queue_id, task.queue_position])
        else:
            cur.execute(_AHEAD_UNPINNED_SQL, {"q": task.queue_id, "p": task.priority, "f": task.fair_seq,
                                              "c": task.created_at, "id": task.id})
        return int(cur.fetchone()[0]) + 1


def why_waiting(task: Task) -> dict[str, Any] | None:
    """"Why is my task waiting?" for one task (None once it runs or has finished)."""
    if task.status not in (Status.PENDING, Status.QUEUED):
        return None
    return waiting_info(task, queue_state(task.queue_id), position_of(task), timezone.now())


def waiting_list(*, name: str, user: Any, offset: int = 0, limit: int = 100) -> tuple[QueueState, list[tuple[Task, dict[str, Any]]]]:
    """The queue's waiting tasks with their positions and reasons: first the QUEUED ones (handed to the
    broker, not started: dispatched before any PENDING task; position 0), in the order they were handed
    over, then the PENDING ones in start order (positions 1, 2, …). ``offset``/``limit`` page through both.

    Operators see every task; other users see their own, with their real positions in the queue.
    """
    state = queue_state(name)
    now = timezone.now()
    heavy = ("params", "result", "progress_metrics")
    queued = (Task.objects.filter(queue=name, status=Status.QUEUED).select_related("owner").defer(*heavy)
              .order_by(F("queued_at").asc(nulls_last=True), "created_at", "id"))
    qs = ordering.waiting(name).select_related("owner").defer(*heavy)
    operator = is_operator(user)
    if not operator:
        queued, qs = queued.filter(owner=user), qs.filter(owner=user)
    # At most the queue's concurrency window of QUEUED rows (task_queue_status_idx), read only on the
    # pages they are on.
    n_queued = queued.count()
    head = list(queued[offset: offset + limit]) if offset < n_queued else []
    pending_offset, pending_limit = max(0, offset - n_queued), limit - len(head)
    rows = list(qs[pending_offset: pending_offset + pending_limit]) if pending_limit > 0 else []
    if operator:
        positions: Any = range(pending_offset + 1, pending_offset + 1 + len(rows))
    else:
        positions = [position_of(t) or 0 for t in rows]
    return state, ([(t, waiting_info(t, state, 0, now) or {}) for t in head]
                   + [(t, waiting_info(t, state, p, now) or {}) for t, p in zip(rows, positions)])


def workers() -> list[dict[str, Any]]:
    """Every worker the registry knows, live ones first, with the tasks running on each."""
    from queueing.reconciler import db_cutoff  # last_heartbeat is the database's clock: compared with it

    fresh = Q(stopped_at__isnull=True, lost_at__isnull=True,
              last_heartbeat__gte=db_cutoff(settings.CONVEYOR["WORKER_STALE_SECONDS"]))
    running = dict(Task.objects.filter(status=Status.RUNNING).values_list("worker").annotate(n=Count("*")).order_by())
    # Queues with a task handed to the broker long ago and still not started: a worker with free slots
    # that consumes one of them may have stopped consuming (the Redis-reconnect trap).
    unclaimed_since = timezone.now() - timedelta(seconds=settings.CONVEYOR["QUEUED_RESEND_SECONDS"])
    starving = set(Task.objects.filter(status=Status.QUEUED, queued_at__lt=unclaimed_since)
                   .values_list("queue", flat=True).distinct().order_by())
    out = []
    for w in WorkerRecord.objects.annotate(fresh=ExpressionWrapper(fresh, output_field=BooleanField())):
        alive = w.fresh
        busy = running.get(w.hostname, 0)
        out.append({"hostname": w.hostname, "alive": alive, "status": "online" if alive else ("stopped" if w.stopped_at else "dead"),
                    "queues": w.queues, "pool": w.pool, "concurrency": w.concurrency, "pid": w.pid,
                    "running": busy, "version": w.version, "started_at": w.started_at,
                    "last_heartbeat": w.last_heartbeat, "stopped_at": w.stopped_at,
                    "idle_while_queue_waits": alive and busy < w.concurrency and bool(starving & set(w.queues))})
    out.sort(key=lambda w: (not w["alive"], w["hostname"]))
    return out
