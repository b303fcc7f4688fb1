"""Operator writes on queues: pause, resume, update (concurrency, default priority, caps), reorder.

Each takes the queue row's lock (``SELECT … FOR NO KEY UPDATE``), the same lock the dispatcher holds
while it picks, so a reorder or a pause never interleaves with a half-done dispatch of that queue. (Not
``FOR UPDATE``: that one also blocks every submit to the queue, whose INSERT checks its foreign key with
``FOR KEY SHARE``.)
Task rows change only through ``jobs.transitions.apply`` (the event trail); ``queue_position`` is an
ordering key, written in one bulk UPDATE, with a ``task.reordered`` event for each moved task.
"""
from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db import connection, transaction

from jobs import transitions
from jobs.models import Status, Task
from jobs.execution import hold_back
from queueing import dispatch, ordering
from queueing.errors import InvalidReorder, NotWaiting, QueueNotFound
from queueing.events import record_queue_event
from queueing.models import Queue


def _locked(name: str) -> Queue:
    queue = Queue.objects.select_for_update(no_key=True).filter(name=name).first()
    if queue is None:
        raise QueueNotFound(f"queue {name!r} not found")
    return queue


def _who(by: Any) -> str | None:
    return getattr(by, "username", None)


@transitions.atomic_retrying_deadlocks  # its UPDATE of QUEUED rows and a batch's claim may lock them in opposite orders
def pause(*, name: str, by: Any = None) -> Queue:
    """Stop starting this queue's tasks (``queue.paused``): once this returns, none starts until resume.

    Its QUEUED tasks (already handed to the broker) go back to PENDING here, in this transaction. A
    worker's claim in flight holds its task's row, so the pause waits for it (that task started before
    the pause answered); a claim whose snapshot predates the pause but reaches the row after it finds
    the row changed, and PostgreSQL re-checks its status: PENDING, not claimed. (A claim's own check
    of the paused flag alone leaves that window open: it reads the flag in its snapshot.)
    """
    queue = _locked(name)
    if not queue.paused:
        queue.paused = True
        queue.save(update_fields=["paused"])
        record_queue_event(queue=queue, event="queue.paused", data={"by": _who(by)})
    hold_back(list(Task.objects.filter(queue=name, status=Status.QUEUED).values_list("id", flat=True)))
    return queue


@transaction.atomic
def resume(*, name: str, by: Any = None) -> Queue:
    """Start this queue's tasks again (``queue.resumed``), dispatching at once on commit."""
    queue = _locked(name)
    if queue.paused:
        queue.paused = False
        queue.save(update_fields=["paused"])
        record_queue_event(queue=queue, event="queue.resumed", data={"by": _who(by)})
    transaction.on_commit(lambda: dispatch.dispatch([name]), robust=True)
    return queue


@transaction.atomic
def update(*, name: str, concurrency: int | None = None, default_priority: int | None = None,
           description: str | None = None, user_concurrency: int | None = None,
           resources: dict[str, int] | None = None) -> Queue:
    """Change a queue's settings; a larger window is filled at once (dispatch on commit)."""
    queue = _locked(name)
    changes = {"concurrency": concurrency, "default_priority": default_priority,
               "description": description, "user_concurrency": user_concurrency, "resources": resources}
    changed = [field for field, value in changes.items() if value is not None]
    for field in changed:
        setattr(queue, field, changes[field])
    if changed:
        queue.full_clean()
        queue.save(update_fields=changed)
        transaction.on_commit(lambda: dispatch.dispatch([name]), robust=True)
    return queue


@transaction.atomic
def reorder(*, name: str, task_ids: list[UUID] | None = None, task_id: UUID | None = None,
            position: int | None = None, by: Any = None) -> list[str]:
    """Pin waiting tasks: ``task_ids`` to the front in that order (ahead of every priority and of
    earlier pins), or ``task_id`` to the 1-based ``position``. Returns the new order's pinned head.

    Everything from the front down to the moved task is pinned with consecutive positions, so the
    order shown afterwards is exactly the order the dispatcher follows.
    """
    queue = _locked(name)
    order = list(ordering.waiting(name).values_list("id", "queue_position"))
    ids = [str(i) for i, _ in order]
    pinned = sum(1 for _, pos in order if pos is not None)  # pinned tasks sort first
    moved = [str(i) for i in (task_ids if task_ids is not None else [task_id])]
    _check_waiting(name, moved, set(ids))
    if task_ids is not None:
        if len(set(moved)) != len(moved):
            raise InvalidReorder("task_ids: the same task twice", fields={"task_ids": ["duplicate ids"]})
        rest = [i for i in ids if i not in set(moved)]
        new = moved + rest
        keep = len(moved) + pinned - sum(1 for i in moved if i in set(ids[:pinned]))
        data = [{"position": n + 1, "by": _who(by)} for n in range(len(moved))]
    else:
        rest = [i for i in ids if i != moved[0]]
        was_pinned = moved[0] in ids[:pinned]
        at = min(max(1, position or 1), len(ids))
        new = rest[: at - 1] + moved + rest[at - 1:]
        keep = max(at, pinned - (1 if was_pinned else 0) + 1)
        data = [{"position": at, "by": _who(by)}]
    head = new[:keep]
    # Below every position given before: a task dispatched with an older pin, if it comes back to
    # PENDING, lines up after this head (still ahead of every priority), never level with it.
    first = queue.pin_floor - len(head)
    Queue.objects.filter(name=name).update(pin_floor=first)
    with connection.cursor() as cur:
        cur.execute(
            "UPDATE jobs_task t SET queue_position = v.pos FROM unnest(%s::uuid[], %s::bigint[]) AS v(id, pos) "
            "WHERE t.id = v.id AND t.status = 'PENDING'",
            [head, list(range(first, first + len(head)))],
        )
    for task, extra in zip(moved, data):
        transitions.apply_one(task, frm=[Status.PENDING], to=None, event="task.reordered", data=extra)
    return head


def _check_waiting(name: str, moved: list[str], waiting: set[str]) -> None:
    missing = [i for i in moved if i not in waiting]
    if not missing:
        return
    found = dict(Task.objects.filter(id__in=missing, queue=name).values_list("id", "status"))
    for task in missing:
        status = found.get(UUID(task))
        if status is None:
            raise InvalidReorder(f"task {task} is not in queue {name!r}",
                                 fields={"task_ids": [f"{task}: not in queue {name!r}"]})
        raise NotWaiting(f"task {task} is {status}; only waiting (PENDING) tasks can be reordered")

