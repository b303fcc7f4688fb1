"""The one definition of a queue's order. The dispatcher starts tasks in it and the queue listing
shows it, so what an operator sees is what runs next.

Order of the PENDING tasks of a queue:

1. pinned tasks (``queue_position`` set by a reorder), lowest position first — ahead of every priority.
   A pin stays on the task once it is dispatched (only PENDING rows are ordered), so a pinned task that
   comes back to PENDING (a pause, a retry, a hand-back) is still ahead of every priority;
2. then priority, highest first;
3. then ``fair_seq``: round-robin between owners within one priority. A task is stamped at submit
   with one more than its owner's last waiting task at that priority, but never less than the head
   of that priority (``min(fair_seq) - 1``): a user's batch of 10,000 gets 1…10,000, and a second
   user's single task submitted later gets the head's number and waits at most one slot;
4. then submit time, then id (a total order, so two readers never disagree).

Every key is a plain column, so the partial index ``task_queue_order_idx`` serves the dispatcher's
``ORDER BY … LIMIT n`` without sorting the whole queue.
"""
from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from django.db.models import F, QuerySet

from jobs import prepared
from jobs.models import Status, Task

ORDER = (F("queue_position").asc(nulls_last=True), F("priority").desc(), "fair_seq", "created_at", "id")
# The same order in SQL, for the dispatcher's hot path (tests/queueing/test_queue_order.py checks they agree).
ORDER_SQL = "queue_position ASC NULLS LAST, priority DESC, fair_seq ASC, created_at ASC, id ASC"


def _base_sql(queue: str, owner: str, priority: str, *, besides: str = "") -> str:
    """The number new tasks of one (queue, owner, priority) count on from: the owner's last waiting
    unpinned task's there, never less than the head's minus one (module docstring). ``besides`` leaves
    rows out (the tasks being stamped)."""
    return f"""GREATEST(
        COALESCE((SELECT t.fair_seq FROM jobs_task t
                  WHERE t.queue = {queue} AND t.owner_id = {owner} AND t.priority = {priority}
                    AND t.status = 'PENDING' AND t.queue_position IS NULL{besides}
                  ORDER BY t.queue_position DESC NULLS FIRST, t.priority ASC, t.fair_seq DESC LIMIT 1), 0),
        COALESCE((SELECT t.fair_seq - 1 FROM jobs_task t
                  WHERE t.queue = {queue} AND t.priority = {priority}
                    AND t.status = 'PENDING' AND t.queue_position IS NULL{besides}
                  ORDER BY t.queue_position ASC NULLS LAST, t.priority DESC, t.fair_seq ASC LIMIT 1), 0)
    )"""


_STAMP_SQL = f"""
WITH new AS (
    SELECT id, queue, owner_id, priority,
           row_number() OVER (PARTITION BY queue, owner_id, priority ORDER BY created_at, id) AS n
    FROM jobs_task WHERE id = ANY(%(ids)s::uuid[]) AND status IN ('PENDING', 'QUEUED')
), grp AS (
    SELECT DISTINCT queue, owner_id, priority FROM new
), base AS MATERIALIZED (  -- once per (queue, owner, priority), not once per new row
    SELECT g.queue, g.owner_id, g.priority,
           {_base_sql("g.queue", "g.owner_id", "g.priority", besides=" AND t.id <> ALL(%(ids)s::uuid[])")} AS b
    FROM grp g
)
UPDATE jobs_task t SET fair_seq = base.b + new.n
FROM new JOIN base USING (queue, owner_id, priority)
WHERE t.id = new.id
"""
_NEW_SQL = "1 + " + _base_sql("%s::varchar", "%s::integer", "%s::integer")


def new_seq_sql(task: Task) -> tuple[str, list[object]]:
    """The ``fair_seq`` of one task about to be inserted, as an SQL expression with its parameters:
    what ``stamp`` would give it, computed inside its INSERT (``transitions.create``) instead of by an
    UPDATE after it."""
    return _NEW_SQL, [task.queue_id, task.owner_id, task.priority, task.queue_id, task.priority]


def stamp(task_ids: Iterable[UUID | str]) -> None:
    """Give new (or re-prioritised) waiting tasks their round-robin number (see module docstring); a
    QUEUED one keeps it for when it comes back to PENDING."""
    ids = [str(i) for i in task_ids]
    if ids:
        with prepared.cursor() as cur:
            cur.execute(_STAMP_SQL, {"ids": ids})


def waiting(queue_name: str) -> QuerySet[Task]:
    """The PENDING tasks of a queue, in start order."""
    return Task.objects.filter(queue=queue_name, status=Status.PENDING).order_by(*ORDER)
