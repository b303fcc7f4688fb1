"""Every write a worker makes to the tasks it runs: claim, heartbeat, report_progress, append_log,
finish (and the hand-backs: release, back_to_pending, give_up). State changes go through
``transitions.apply`` guarded by the run's claim (``started_at``); side effects (dispatch, Celery sends,
channel messages) run on commit. The clients' writes (submit, cancel, retry, change_priority) are in
``jobs.services``."""
from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from jobs import transitions
from jobs.jsonsafe import json_safe, without_surrogates
from jobs.models import Status, Task


def claim(*, task_id: UUID | str, worker: str) -> Task | None:
    """QUEUED → RUNNING for exactly one message; None for a duplicate, cancelled or paused task."""
    tasks = claim_many(task_ids=[task_id], worker=worker)
    return tasks[0] if tasks else None


@transitions.atomic_retrying_deadlocks
def claim_many(*, task_ids: list[UUID | str], worker: str) -> list[Task]:
    """QUEUED → RUNNING for the tasks of one message, in one statement (each task still gets its own
    guarded transition and ``task.started`` event). Duplicates and cancelled tasks are left out.

    A paused queue holds back tasks already handed to the broker: they go back to PENDING.
    """
    paused = "EXISTS (SELECT 1 FROM queueing_queue q WHERE q.name = jobs_task.queue AND q.paused)"
    tasks = transitions.apply(
        task_ids, frm=[Status.QUEUED], to=Status.RUNNING, event="task.started",
        # error: the previous attempt's (kept in its events) would read as this run's while it runs
        values={"started_at": timezone.now(), "worker": worker[:255], "cancel_requested": False, "error": ""},
        # heartbeat_at: the database's clock, as every heartbeat and the reaper's cutoff (never a host's)
        sql_values={"attempts": "attempts + 1", "heartbeat_at": "now()"}, where_sql=f"NOT {paused}",
        data={"worker": worker},
        relax=True,  # a lost claim leaves the task QUEUED: the reconciler requeues it
    )
    if len(tasks) < len(task_ids):
        claimed = {str(t.id) for t in tasks}
        hold_back([i for i in task_ids if str(i) not in claimed], where_sql=paused)
    return tasks


def hold_back(task_ids: list[UUID | str], *, where_sql: str = "") -> list[Task]:
    """QUEUED → PENDING for tasks of a paused queue (``task.requeued``): their broker messages become
    no-ops, and they keep their place, to be dispatched again on resume."""
    return transitions.apply(task_ids, frm=[Status.QUEUED], to=Status.PENDING, event="task.requeued",
                             values={"queued_at": None}, where_sql=where_sql, data={"reason": "queue paused"})


@transitions.atomic_retrying_deadlocks
def release(*, task_ids: list[UUID | str], worker: str, reason: str, event: str = "task.requeued",
            error: str | None = None, claimed_at: Any = None) -> list[Task]:
    """RUNNING → PENDING for claimed tasks of ``worker`` that it will not finish (the rest of a batch whose
    pool child is about to be killed, ``claimed_at`` its claim; everything of a worker shutting down); the
    interrupted claim does not count as an attempt. Dispatched again on commit."""
    from queueing import dispatch

    values: dict[str, Any] = {"queued_at": None}
    if error is not None:
        values["error"] = error
    where_sql, where_params = "worker = %s", [worker[:255]]
    if claimed_at is not None:
        where_sql, where_params = f"{where_sql} AND {CLAIM_SQL}", [*where_params, claimed_at]
    back = back_to_pending(task_ids, event=event, values=values, sql_values={"attempts": "GREATEST(attempts - 1, 0)"},
                           where_sql=where_sql, where_params=where_params, data={"reason": reason})
    queues = sorted({t.queue_id for t in back})
    if queues:
        transaction.on_commit(lambda: dispatch.dispatch(queues), robust=True)
    return back


def back_to_pending(task_ids: list[UUID | str], *, event: str, values: dict[str, Any], data: dict[str, Any],
                    sql_values: dict[str, str] | None = None, where_sql: str = "",
                    where_params: list[Any] | None = None) -> list[Task]:
    """RUNNING → PENDING, to run again (a retry, a hand-back, a reaped or stuck task), except a task whose
    cancel was requested while it ran: that one ends CANCELLED, as its user asked, and never runs again
    (the next claim would clear the flag). Returns the tasks changed, PENDING or CANCELLED, in the order
    of ``task_ids``; ``where_sql`` guards both. A task that runs again starts clean: what the run before
    stored (artifacts, a stored result) is discarded, its rows here, its files after commit."""
    from algorithms import artifacts

    moved = _unless_cancelled(task_ids, to=Status.PENDING, event=event, values=values, data=data,
                              sql_values=sql_values, where_sql=where_sql, where_params=where_params)
    again = [t.id for t in moved if t.status == Status.PENDING]
    if again:
        artifacts.discard(again)
    return moved


def give_up(task_ids: list[UUID | str], *, error: str, data: dict[str, Any], where_sql: str = "",
            where_params: list[Any] | None = None, status: str = Status.FAILED) -> list[Task]:
    """RUNNING → FAILED for tasks lost with no retries left (a dead worker, no progress), or to another
    final ``status`` (TIMED_OUT: a remote task held past its timeout), except a task whose cancel was
    requested while it ran: that one ends CANCELLED, as its user asked."""
    return _unless_cancelled(task_ids, to=status, event=_FINAL_EVENTS[status], data=data,
                             values={"finished_at": timezone.now(), "error": error},
                             where_sql=where_sql, where_params=where_params)


def _unless_cancelled(task_ids: list[UUID | str], *, to: str, event: str, values: dict[str, Any],
                      data: dict[str, Any], sql_values: dict[str, str] | None = None, where_sql: str = "",
                      where_params: list[Any] | None = None) -> list[Task]:
    guard = f" AND ({where_sql})" if where_sql else ""
    moved = transitions.apply(task_ids, frm=[Status.RUNNING], to=to, event=event, values=values,
                              sql_values=sql_values, where_sql="NOT cancel_requested" + guard,
                              where_params=where_params, data=data)
    if len(moved) == len(task_ids):
        return moved
    done = {str(t.id) for t in moved}
    cancelled = transitions.apply(
        [i for i in task_ids if str(i) not in done], frm=[Status.RUNNING], to=Status.CANCELLED,
        event="task.cancelled", values={"finished_at": timezone.now(), "error": "cancelled"},
        where_sql="cancel_requested" + guard, where_params=where_params, data={"reason": "cancelled by user"})
    order = {str(i): n for n, i in enumerate(task_ids)}
    return sorted(moved + cancelled, key=lambda t: order[str(t.id)])


def heartbeat(*, claims: dict[str, Any]) -> dict[str, bool]:
    """Mark running tasks alive (one statement for all a worker process watches; ``claims``: each task's
    id and the ``started_at`` of the claim this process runs it under); returns each one's cancel flag by
    id. A task missing from the answer is no longer this process's: no longer RUNNING, or running again
    under a later claim (this process was taken for dead, and the task was reaped and started again).

    It never waits for a row another transaction holds (``SKIP LOCKED``): that row is being changed by a
    finish, a cancel or the reaper, and is beaten next time if it is still RUNNING then. Waiting would
    let it deadlock with a transaction that changes the same rows in two statements (a batch's finish of
    successes, then of failures), locking them in the opposite order. The answer is read from the
    statement's snapshot, so a skipped task still counts as RUNNING, with its committed cancel flag."""
    with connection.cursor() as cur:
        cur.execute(_HEARTBEAT_SQL, {"ids": list(claims), "at": list(claims.values())})
        return {task_id: bool(flag) for task_id, flag in cur.fetchall()}


_HEARTBEAT_MINE = ("(id, started_at) IN (SELECT * FROM unnest(%(ids)s::uuid[], %(at)s::timestamptz[])) "
                   "AND status = 'RUNNING'")
_HEARTBEAT_SQL = (
    "WITH beaten AS (UPDATE jobs_task SET heartbeat_at = now() WHERE id IN (SELECT id FROM jobs_task "
    f"WHERE {_HEARTBEAT_MINE} FOR NO KEY UPDATE SKIP LOCKED)) "
    f"SELECT id::text, cancel_requested FROM jobs_task WHERE {_HEARTBEAT_MINE}"
)


CLAIM_SQL = "started_at = %s"


def claim_guard(claimed_at: Any) -> dict[str, Any]:
    """A worker's write only while the task still runs under its claim (``started_at``): a worker taken for
    dead whose task was started again elsewhere changes nothing of the new run."""
    return {"where_sql": CLAIM_SQL, "where_params": [claimed_at]} if claimed_at is not None else {}


@transaction.atomic
def report_progress(*, task_id: UUID | str, percent: float, stage: str, message: str,
                    metrics: dict[str, Any], claimed_at: Any = None) -> bool:
    """Store the latest progress of a RUNNING task and append ``task.progress`` (``claimed_at``: only
    while it runs under that claim). A metric that is NaN or infinite (a diverging loss) is stored as
    the string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``, a NumPy one as the Python number or list it
    holds (``jobs.jsonsafe``), never a ``DataError`` or ``TypeError``; one with no faithful JSON form
    raises ``NotJsonSerialisable``."""
    return transitions.apply_one(
        task_id, frm=[Status.RUNNING], to=None, event="task.progress",
        values={"progress_percent": percent, "progress_stage": without_nul(stage[:200]),
                "progress_message": without_nul(message[:1000]),
                "progress_metrics": without_nul(json_safe(metrics, "metrics"))},
        **claim_guard(claimed_at),
    ) is not None


LOG_LOCK_TIMEOUT = "100ms"


def _lock_timeout(value: str) -> None:
    """For the rest of this transaction (the watchdog's own: never a caller's), no lock is waited for
    longer than ``value``; past it the statement fails (``OperationalError``), nothing written."""
    with connection.cursor() as cur:
        cur.execute("SELECT set_config('lock_timeout', %s, true)", [value])


@transaction.atomic
def append_log(*, task_id: UUID | str, lines: list[str], claimed_at: Any = None, wait: bool = True,
               committed: Callable[[], None] | None = None) -> bool:
    """Append log lines (``task.log``, one event each, in order) to a task that is still running (under
    that claim): one UPDATE and one INSERT of all the events. ``committed`` is called once they are.

    ``wait=False`` (the watchdog's thread, which heartbeats every task of the process and must never
    wait): nothing is written, and False returned, when another transaction holds the task's row (the
    algorithm's own, a cancel, a finish) — the lines wait for the next write — and no other lock is
    waited for longer than ``LOG_LOCK_TIMEOUT``."""
    if not lines:
        return True
    if committed is not None:
        transaction.on_commit(committed)
    if not wait:
        _lock_timeout(LOG_LOCK_TIMEOUT)
        with connection.cursor() as cur:
            cur.execute(f"SELECT 1 FROM {Task._meta.db_table} WHERE id = %s FOR NO KEY UPDATE SKIP LOCKED", [task_id])
            if cur.fetchone() is None:
                return False
    transitions.apply_one(task_id, frm=[Status.RUNNING], to=None, event="task.log", **claim_guard(claimed_at),
                          series=[{"line": without_nul(line[:10_000])} for line in lines])
    return True


def without_nul(value: Any) -> Any:
    """``value`` with each NUL character, which PostgreSQL's text and jsonb refuse, shown as U+FFFD, and each
    lone surrogate as an escape (``jsonsafe.without_surrogates``), also
    in the strings of nested dicts and lists: what an algorithm, a program or a remote service says
    (log lines, progress, an error) is recorded, never a ``DataError`` that leaves its task RUNNING."""
    if isinstance(value, str):
        return without_surrogates(value).replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {without_nul(key): without_nul(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [without_nul(item) for item in value]
    return value


@dataclass(frozen=True)
class Outcome:
    status: str  # SUCCEEDED | FAILED | CANCELLED | TIMED_OUT
    result: Any = None
    error: str = ""
    retryable: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "error", without_nul(self.error))


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff with jitter: base·2^(attempt-1), capped, times a factor in [0.5, 1.5)."""
    conf = settings.CONVEYOR
    raw = min(conf["BACKOFF_MAX_SECONDS"], conf["BACKOFF_BASE_SECONDS"] * 2 ** max(0, attempt - 1))
    return raw * (0.5 + random.random())


_FINAL_EVENTS = {Status.SUCCEEDED: "task.succeeded", Status.FAILED: "task.failed",
                 Status.CANCELLED: "task.cancelled", Status.TIMED_OUT: "task.timed_out"}


def finish(*, task_id: UUID | str, outcome: Outcome, dispatch_next: bool = True, claimed_at: Any = None,
           lock_timeout: str | None = None) -> Task | None:
    """RUNNING → SUCCEEDED | FAILED | CANCELLED | TIMED_OUT, or back to PENDING with a backoff when a
    retryable failure has retries left. None if the task was no longer RUNNING (reaped, or finished
    by the watchdog), or, with ``claimed_at`` (the worker's claim's ``started_at``), no longer running
    under that claim (reaped and started again elsewhere while this worker was taken for dead).
    ``lock_timeout`` (the watchdog, which must not wait for long): an ``OperationalError`` when a lock is
    not had within it, nothing written."""
    return finish_many(outcomes=[(task_id, outcome)], dispatch_next=dispatch_next, claimed_at=claimed_at,
                       lock_timeout=lock_timeout)[0]


@transitions.atomic_retrying_deadlocks
def finish_many(*, outcomes: list[tuple[UUID | str, Outcome]], dispatch_next: bool = True,
                claimed_at: Any = None, lock_timeout: str | None = None) -> list[Task | None]:
    """``finish`` for several tasks in one transaction: all the successes in one statement (each row
    its own result) and one bulk insert of their events; failures, cancels and timeouts one by one.
    ``claimed_at``: the claim they were all started under (one message's tasks share it)."""
    from queueing import dispatch

    if lock_timeout is not None:
        _lock_timeout(lock_timeout)
    now = timezone.now()
    guard = claim_guard(claimed_at)
    done: dict[str, Task | None] = {}
    succeeded = [(str(i), o) for i, o in outcomes if o.status == Status.SUCCEEDED]
    if succeeded:
        tasks = transitions.apply(
            [i for i, _ in succeeded], frm=[Status.RUNNING], to=Status.SUCCEEDED, event="task.succeeded",
            values={"finished_at": now, "error": "", "progress_percent": 100.0},
            row_values={"result": [o.result for _, o in succeeded]}, **guard,
        )
        done.update((str(t.id), t) for t in tasks)
    for task_id, outcome in outcomes:
        if outcome.status != Status.SUCCEEDED:
            done[str(task_id)] = _finish_other(str(task_id), outcome, now, guard)
    finished = [done.get(str(i)) for i, _ in outcomes]
    queues = sorted({t.queue_id for t in finished if t is not None})
    if queues and dispatch_next:
        # In this transaction (dispatch.dispatch_within). It waits for the queue row's lock while
        # holding only the rows finished above, which nobody holding that lock ever waits for.
        dispatch.dispatch_within(queues)
    return finished


def _finish_other(task_id: str, outcome: Outcome, now: Any, guard: dict[str, Any]) -> Task | None:
    from queueing import dispatch

    if outcome.status == Status.FAILED and outcome.retryable:  # only a retry decision needs the row first
        row = Task.objects.filter(id=task_id).only("attempts", "max_retries").first()
        if row is None:
            return None
        if row.attempts <= row.max_retries:
            delay = backoff_seconds(row.attempts)
            done = next(iter(back_to_pending(
                [task_id], event="task.retrying",
                values={"not_before": now + timedelta(seconds=delay), "error": outcome.error, "queued_at": None},
                data={"error": outcome.error, "attempt": row.attempts, "retry_in_seconds": round(delay, 3)}, **guard,
            )), None)
            if done is not None and done.status == Status.PENDING:
                transaction.on_commit(lambda: dispatch.dispatch_later(done.queue_id, delay), robust=True)
            return done
    return transitions.apply_one(task_id, frm=[Status.RUNNING], to=outcome.status, event=_FINAL_EVENTS[outcome.status],
                                 values={"finished_at": now, "error": outcome.error}, **guard,
                                 data={"error": outcome.error} if outcome.error else {})
