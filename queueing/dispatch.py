"""The dispatcher: moves PENDING tasks to QUEUED and hands their ids to the broker.

Per queue, in the order of ``queueing.ordering`` (pinned by a reorder, then priority, then
round-robin between owners, then submit time), only up to the queue's concurrency window
(QUEUED + RUNNING ≤ concurrency) and each owner's cap, never for a paused queue. The queue row's lock serialises
dispatchers of one queue so two of them cannot both fill the same free slots; ``SKIP LOCKED`` on the
task rows steps around rows that a cancel or priority change holds at that moment.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from jobs import prepared, transitions
from jobs.models import Status, Task
from queueing import ordering

log = logging.getLogger(__name__)


def dispatch(queue_names: Iterable[str] | None = None, *, look_first: bool = False) -> int:
    """Dispatch every named queue (all queues with waiting tasks when None). Returns tasks queued.

    ``look_first`` (after the commit of a submit into a queue without room, or of a finish that left
    room): first look, without a lock, whether the queue is paused, its window full or nothing in it
    waits, and if so stop there. A deep queue's submits then neither wait for each other on the queue
    row's lock nor pay its transaction. Nothing waits longer for it: the look comes after the submit's
    commit, so a slot it sees taken is freed by a commit that comes later, and every transition that
    frees a slot dispatches after its own commit, when it sees the new task (a finish, which dispatches
    inside its transaction, looks again after it: see ``dispatch_within``).
    """
    if queue_names is None:
        queue_names = (
            Task.objects.filter(status=Status.PENDING).values_list("queue", flat=True).distinct().order_by()
        )
    names = [name for name in queue_names if not (look_first and _nothing_to_start(name))]
    return sum(_dispatch_queue(name)[0] for name in names)


def dispatch_submitted(queue_names: Iterable[str], *, full: Iterable[str] | None = None) -> int:
    """After a submit's INSERT, inside its transaction: where the queue has room, dispatch there
    (``dispatch_within``), so the new tasks become QUEUED in the submit's own commit and are sent after
    it, one transaction fewer; where it has none (paused, window full), look again after the commit,
    without the lock (``dispatch(look_first=True)``), as before. Returns tasks queued.

    The first look is also lock-free, and sees this transaction's new tasks. Its answer can go stale
    before the commit, and both ways are covered: a slot freed meanwhile by a finish that saw nothing
    waiting (these tasks were not committed yet) is found by the look after the commit; a slot taken
    meanwhile is seen under the queue row's lock, which the dispatch takes and then reads again. Unlike
    a finish's, a submit's dispatch needs no look after its commit for others: a task submitted
    concurrently either was dispatched under the lock by its own submit, or looks after its own commit.

    ``full``: the queues without room, when the submit already looked (``room_sql`` in its INSERT).
    """
    names = list(queue_names)
    full = [name for name in names if _nothing_to_start(name)] if full is None else list(full)
    if full:
        transaction.on_commit(lambda: dispatch(full, look_first=True), robust=True)
    return dispatch_within([name for name in names if name not in full], look_after=False)


def dispatch_within(queue_names: Iterable[str], *, look_after: bool = True) -> int:
    """Dispatch inside the caller's transaction (a finish's): the next tasks become QUEUED in its commit,
    one transaction fewer per task, and are sent after it. Returns tasks queued.

    Where room is left (fewer tasks waited than the slots free), look again after the commit, as
    ``dispatch(look_first=True)``: a task submitted meanwhile was not visible here, and its submit's
    own look saw the slot still taken, because this transaction had not committed yet; without the
    second look it would wait for the beat's tick. With a backlog the room is filled here and nothing
    runs after the commit.
    """
    queued, short = 0, []
    for name in queue_names:
        n, room_left = _dispatch_queue(name)
        queued += n
        if room_left:
            short.append(name)
    if short and look_after:
        transaction.on_commit(lambda: dispatch(short, look_first=True), robust=True)
    return queued


# It runs after every submit and in every finish: plain SQL (the ORM's query building cost more than the
# queries themselves), and its three reads in one round trip (``transitions.read_together``, prepared):
# the queue row's lock, then (each statement with its own snapshot, taken once the lock is held) what is
# busy and the candidates, in ``ordering.waiting()``'s order, as many as the free room (plus the
# scan-ahead when owners are capped). The statuses are literals, not parameters, so that a prepared
# (generic) plan can still use the partial indexes on them.
_BUSY_STATUSES = "status IN ('QUEUED', 'RUNNING')"
_LOCK_SQL = ("SELECT paused, concurrency, user_concurrency FROM queueing_queue WHERE name = %(queue)s "
             "FOR NO KEY UPDATE")  # not FOR UPDATE: it would block submits' foreign-key checks (FOR KEY SHARE)
_BUSY_SQL = f"SELECT owner_id, count(*) FROM jobs_task WHERE queue = %(queue)s AND {_BUSY_STATUSES} GROUP BY owner_id"


def _room(queue: str, ahead: str) -> str:
    return ("SELECT CASE WHEN q.paused OR q.room <= 0 THEN 0 WHEN q.user_concurrency > 0 "
            f"THEN q.room + {ahead} ELSE q.room END FROM (SELECT paused, user_concurrency, concurrency - "
            f"(SELECT count(*) FROM jobs_task WHERE queue = {queue} AND {_BUSY_STATUSES}) AS room "
            f"FROM queueing_queue WHERE name = {queue}) AS q")


_ROOM_SQL = _room("%(queue)s", "%(ahead)s")
# "Nothing waits" as the queue's oldest PENDING task, not EXISTS: with a generic plan, EXISTS was planned
# as a sequential scan expecting to stop early (177 ms with 1M rows, a queue with nothing waiting);
# ORDER BY created_at LIMIT 1 follows the partial index on PENDING tasks (queue, created_at).
_NOTHING_TO_START_SQL = (f"SELECT COALESCE(({_ROOM_SQL}), 0) = 0 OR (SELECT id FROM jobs_task WHERE queue = %(queue)s "
                         f"AND status = '{Status.PENDING}' ORDER BY created_at LIMIT 1) IS NULL")
_STARTABLE = f"queue = %(queue)s AND status = '{Status.PENDING}' AND (not_before IS NULL OR not_before <= %(now)s)"
_CANDIDATES_SQL = (
    f"SELECT id, owner_id FROM jobs_task WHERE {_STARTABLE} ORDER BY {ordering.ORDER_SQL} "
    f"LIMIT COALESCE(({_ROOM_SQL}), 0) FOR UPDATE SKIP LOCKED"
)
# When owners at their cap fill the whole scan-ahead, the next owners' tasks lie beyond it: the owners
# with waiting tasks, one index probe each (a loose scan of ``task_owner_order_idx``; ordered by all its
# columns so that no other index can serve it, or the owner index would walk their finished tasks), then
# each one's first tasks in queue order (no more than it may still start: its cap less its busy count),
# except the capped owners' and those already picked; the best of those, as many as room.
_OWNER_ORDER = f"owner_id, {ordering.ORDER_SQL}"
_BEYOND_CAPPED_SQL = f"""
WITH RECURSIVE owners(owner_id) AS (
    (SELECT owner_id FROM jobs_task WHERE queue = %(queue)s AND status = '{Status.PENDING}' ORDER BY {_OWNER_ORDER} LIMIT 1)
    UNION ALL
    SELECT (SELECT owner_id FROM jobs_task t WHERE t.queue = %(queue)s AND t.status = '{Status.PENDING}'
            AND t.owner_id > o.owner_id ORDER BY {_OWNER_ORDER} LIMIT 1)
    FROM owners o WHERE o.owner_id IS NOT NULL
)
SELECT id, owner_id FROM jobs_task WHERE id = ANY(ARRAY(
    SELECT first.id FROM owners o CROSS JOIN LATERAL (
        SELECT id FROM jobs_task WHERE {_STARTABLE} AND owner_id = o.owner_id AND id <> ALL(%(picked)s::uuid[])
        ORDER BY {ordering.ORDER_SQL} LIMIT LEAST(%(room)s, %(cap)s - COALESCE((
            SELECT b.n FROM unnest(%(busy_owners)s::bigint[], %(busy_counts)s::int[]) AS b(owner_id, n)
            WHERE b.owner_id = o.owner_id), 0))) AS first
    WHERE o.owner_id IS NOT NULL AND o.owner_id <> ALL(%(capped)s)
)) AND status = '{Status.PENDING}' ORDER BY {ordering.ORDER_SQL} LIMIT %(room)s FOR UPDATE SKIP LOCKED"""


def room_sql(name: str) -> tuple[str, list[str]]:
    """Whether queue ``name`` has room (not paused, window not full), as an SQL expression with its
    parameters, for a submit to look inside its INSERT (``transitions.create``): that task waits, so
    room is all ``dispatch_submitted`` needs to know."""
    return f"COALESCE(({_room('%s::varchar', '0')}), 0) > 0", [name, name]


def _nothing_to_start(name: str) -> bool:
    """No room (paused, window full, or no such queue) or no task waiting, read without the lock."""
    with prepared.cursor() as cur:
        cur.execute(_NOTHING_TO_START_SQL, {"queue": name, "ahead": 0})
        return bool(cur.fetchone()[0])


def _dispatch_queue(name: str) -> tuple[int, bool]:
    """(tasks queued, whether room is left after them)."""
    with transaction.atomic(savepoint=False):  # inside a finish's transaction: a part of it
        now = timezone.now()
        # relaxed commit: a lost dispatch leaves the task PENDING, dispatched again
        locked, busy_rows, candidates = transitions.read_together(
            [_LOCK_SQL, _BUSY_SQL, _CANDIDATES_SQL],
            {"queue": name, "now": now, "ahead": settings.CONVEYOR["DISPATCH_SCAN_AHEAD"]}, relax=True)
        queue = locked[0] if locked else None
        busy = dict(busy_rows)
        if queue is None or queue[0]:  # no such queue, or paused
            return 0, False
        _, concurrency, cap = queue
        room = concurrency - sum(busy.values())
        if room <= 0:
            return 0, False
        ids = _pick(candidates, busy, room=room, cap=cap)
        if cap and len(ids) < room and len(candidates) >= room + settings.CONVEYOR["DISPATCH_SCAN_AHEAD"]:
            ids += _pick(_beyond_capped(name, busy, ids, cap=cap, room=room - len(ids), now=now), busy,
                         room=room - len(ids), cap=cap)
        tasks = transitions.apply(ids, frm=[Status.PENDING], to=Status.QUEUED, event="task.queued",
                                  values={"queued_at": now, "not_before": None})  # a pin stays: see ordering
        if tasks:
            sent = [str(t.id) for t in tasks]
            transaction.on_commit(lambda: send(name, sent), robust=True)
        return len(tasks), len(tasks) < room


def _beyond_capped(name: str, busy: dict[int, int], picked: list[Any], *, cap: int, room: int,
                   now: Any) -> list[tuple[Any, int]]:
    """Candidates of the owners below their cap when the capped ones filled the scan-ahead (``picked``:
    those already taken from the first candidates, left out here). Rare, so the
    values are bound in the client and it is planned for them each time: with parameters (a generic or
    server-bound plan) PostgreSQL cannot know how small ``room`` is, expects thousands of rows and spends
    20 ms compiling it (JIT) for a query that takes 1 ms."""
    with connection.cursor() as cur:
        cur.execute(_BEYOND_CAPPED_SQL, {"queue": name, "now": now, "room": room, "picked": [str(i) for i in picked],
                                         "capped": [owner for owner, n in busy.items() if n >= cap], "cap": cap,
                                         "busy_owners": list(busy), "busy_counts": list(busy.values())})
        return cur.fetchall()


def _pick(candidates: list[tuple[Any, int]], busy: dict[int, int], *, room: int, cap: int) -> list[Any]:
    """The first ``room`` candidates, in queue order, skipping owners already at their cap."""
    picked: list[Any] = []
    for task_id, owner_id in candidates:
        if len(picked) >= room:
            break
        if cap and busy.get(owner_id, 0) >= cap:
            continue
        busy[owner_id] = busy.get(owner_id, 0) + 1
        picked.append(task_id)
    return picked


def send(queue_name: str, task_ids: list[str]) -> None:
    """Hand task ids to the broker (only ever after the QUEUED rows are committed)."""
    from jobs.tasks import run_task, run_tasks

    size = settings.CONVEYOR["DISPATCH_BATCH"].get(queue_name, 1)
    if size > 1 and len(task_ids) > 1:
        for start in range(0, len(task_ids), size):
            run_tasks.apply_async(args=[task_ids[start:start + size]], queue=queue_name)
        return
    for task_id in task_ids:
        run_task.apply_async(args=[task_id], queue=queue_name)


def dispatch_later(queue_name: str, delay_seconds: float) -> None:
    """Dispatch when a backoff ends. Best effort: the beat dispatch tick covers a lost message."""
    from queueing.tasks import dispatch_queue

    dispatch_queue.apply_async(args=[queue_name], countdown=max(0.0, delay_seconds) + 0.05, queue="default")
