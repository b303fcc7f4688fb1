"""The clients' writes to tasks: submit (single and batch), cancel and retry (single and bulk),
change_priority. All state changes go through ``transitions.apply``; side effects (dispatch, Celery
sends, channel messages) run on commit. The workers' writes (claim, heartbeat, progress, log, finish)
are in ``jobs.execution``."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from algorithms import registry
from config.errors import InvalidInput
from jobs import transitions
from jobs.errors import IdempotencyConflict, InvalidTransition, TaskNotFound
from jobs.models import FINAL, NOT_STARTED, Status, Task
from observability.logs import current_request_id
from queueing.models import Queue

PRIORITY_NAMES = {"low": 2, "normal": 5, "high": 8, "critical": 9}


def parse_priority(value: Any, *, field: str = "priority") -> int:
    if isinstance(value, str) and value.strip().lower() in PRIORITY_NAMES:
        return PRIORITY_NAMES[value.strip().lower()]
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidInput(f"{field}: must be 0-9 or one of {', '.join(PRIORITY_NAMES)}",
                           fields={field: ["must be 0-9 or one of " + ", ".join(PRIORITY_NAMES)]})
    try:
        number = int(value)
    except ValueError:
        number = -1
    if not 0 <= number <= 9:
        raise InvalidInput(f"{field}: must be 0-9 or one of {', '.join(PRIORITY_NAMES)}",
                           fields={field: ["must be 0-9 or one of " + ", ".join(PRIORITY_NAMES)]})
    return number


@dataclass(frozen=True)
class TaskSpec:
    """A validated submit, ready to insert; ``request``: the submit as the client sent it (``build_spec``'s
    arguments before any default), what an idempotency key's replay is compared by."""

    algorithm: str
    algorithm_version: str
    params: dict[str, Any]
    queue: str
    priority: int
    max_retries: int
    timeout_seconds: int
    labels: list[str]
    webhook_url: str | None = None  # the per-task webhook shortcut (webhooks.services.subscribe_task)
    request: dict[str, Any] | None = dataclasses.field(default=None, compare=False, repr=False)

    def request_hash(self) -> str:
        """The hash stored with a task (``Task.request_hash``): of the request as sent, so that a replay
        still matches after an operator changed its queue's default priority or a deploy changed its
        algorithm's version or a param's default (the resolved spec would differ)."""
        return _hash(self.request if self.request is not None else self.resolved())

    def resolved_hash(self) -> str:
        """The hash of the resolved spec, which tasks submitted before the request hash were stored with:
        a replay matching it is still the same request (``same_request``)."""
        return _hash(self.resolved())

    def resolved(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "request"}

    def same_request(self, first: Task) -> bool:
        """Whether ``first`` (the task holding this submit's idempotency key) was made by this request."""
        return first.request_hash in (self.request_hash(), self.resolved_hash())


def _hash(value: dict[str, Any]) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def build_spec(*, algorithm: str, params: Any = None, priority: Any = None, queue: str | None = None,
               max_retries: int | None = None, timeout_seconds: int | None = None,
               labels: list[str] | None = None, webhook_url: str | None = None,
               queues: dict[str, Queue] | None = None) -> TaskSpec:
    """Validate one submit (params against the algorithm's schema, the queue, the priority).

    ``queues`` caches the queue rows across the items of one batch (one read per queue, not per item).
    """
    if webhook_url:
        from webhooks.transport import validate_url

        validate_url(webhook_url, field_name="webhook_url")
    alg = registry.get_for_submit(algorithm)
    clean = alg.validate(params)
    queue_name = queue or alg.queue
    cache = {} if queues is None else queues
    q = cache.get(queue_name)
    if q is None:
        try:
            q = Queue.objects.get(name=queue_name)
        except Queue.DoesNotExist:
            if queue:
                raise InvalidInput(f"queue: unknown queue {queue_name!r}",
                                   fields={"queue": [f"unknown queue {queue_name!r}"]}) from None
            # An algorithm's declared home queue, created on first use with the resources it declares.
            q, _ = Queue.objects.get_or_create(name=queue_name, defaults={"resources": dict(alg.resources)})
        cache[queue_name] = q
    _check_resources(alg, q)
    conf = settings.CONVEYOR
    request = {"algorithm": algorithm, "params": {} if params is None else params,
               "priority": None if priority is None else parse_priority(priority), "queue": queue or None,
               "max_retries": max_retries, "timeout_seconds": timeout_seconds or None,
               "labels": list(labels or []), "webhook_url": webhook_url or None}
    return TaskSpec(
        algorithm=alg.name,
        algorithm_version=alg.version,
        params=clean,
        queue=q.name,
        priority=q.default_priority if priority is None else parse_priority(priority),
        max_retries=conf["DEFAULT_MAX_RETRIES"] if max_retries is None else max_retries,
        timeout_seconds=timeout_seconds or alg.timeout_seconds or conf["DEFAULT_TIMEOUT_SECONDS"],
        labels=list(labels or []),
        webhook_url=webhook_url or None,
        request=request,
    )


def _check_resources(alg: Any, queue: Queue) -> None:
    """An algorithm that needs a resource (``gpu: 1``) runs only on a queue whose workers provide it."""
    def lacking(q: Queue) -> dict[str, int]:
        return {name: need for name, need in alg.resources.items() if q.resources.get(name, 0) < need}

    missing = lacking(queue)
    if not missing:
        return
    needs = ", ".join(f"{name}: {need}" for name, need in missing.items())
    fitting = [q.name for q in Queue.objects.order_by("name") if not lacking(q)]
    hint = f"; queues that provide it: {', '.join(fitting)}" if fitting else "; no queue provides it"
    reason = f"{alg.name} needs {needs}, which the workers of queue {queue.name!r} do not provide{hint}"
    raise InvalidInput(f"queue: {reason}", fields={"queue": [reason]})


def _new_task(owner: Any, spec: TaskSpec, key: str | None) -> Task:
    return Task(owner=owner, algorithm=spec.algorithm, algorithm_version=spec.algorithm_version,
                params=spec.params, queue_id=spec.queue, priority=spec.priority,
                max_retries=spec.max_retries, timeout_seconds=spec.timeout_seconds, labels=spec.labels,
                idempotency_key=key, request_hash=spec.request_hash(), request_id=current_request_id() or "",
                last_seq=1)


def _subscribe_webhooks(tasks: list[Task], specs: list[TaskSpec]) -> None:
    """``webhook_url`` at submit: a one-task subscription, in place before ``task.created`` is recorded."""
    from webhooks import services as webhooks

    for task, spec in zip(tasks, specs):
        if spec.webhook_url:
            webhooks.subscribe_task(task=task, url=spec.webhook_url)


def _created(tasks: list[Task]) -> None:
    """``task.created`` (seq 1, set at insert) for new rows, and their dispatch in the same transaction
    where their queue has room (sent after the commit; ``dispatch.dispatch_submitted``)."""
    from jobs import events
    from queueing import dispatch, ordering

    ordering.stamp([t.id for t in tasks])
    events.record(tasks, "task.created")
    queues = sorted({t.queue_id for t in tasks})
    dispatch.dispatch_submitted(queues)


def _create_one(task: Task, spec: TaskSpec) -> Task:
    """One new task in one statement: its INSERT with its round-robin number (``ordering.new_seq_sql``),
    ``task.created`` with its webhook outbox rows, and the look whether its queue has room; then its
    dispatch (``dispatch.dispatch_submitted``). A ``webhook_url`` subscription is written first, so that
    ``task.created`` already finds it (its foreign key to the task is checked at commit).

    With an idempotency key, the same statement looks whether a batch holds that key (its first task's
    ``<key>#0``), under the key's lock (``_hold_key``): then the look answers NULL, and it is a 409."""
    from queueing import dispatch, ordering

    room_sql, room_params = dispatch.room_sql(task.queue_id)
    if task.idempotency_key is not None:
        _hold_key(task.owner_id, task.idempotency_key)
        room_sql = (f"CASE WHEN EXISTS (SELECT 1 FROM jobs_task WHERE owner_id = %s AND idempotency_key = %s) "
                    f"THEN NULL ELSE ({room_sql}) END")
        room_params = [task.owner_id, f"{task.idempotency_key}#0", *room_params]
    _subscribe_webhooks([task], [spec])
    created, room = transitions.create(task, event="task.created",
                                       sql_values={"fair_seq": ordering.new_seq_sql(task)},
                                       also=(room_sql, room_params))
    if room is None:
        raise IdempotencyConflict(_KEY_OF_A_BATCH)
    dispatch.dispatch_submitted([task.queue_id], full=[] if room else [task.queue_id])
    return created


# Idempotency keys: one namespace per owner. A single task (submit, retry) stores its key as it is, the
# tasks of a batch ``<key>#<index>``; so a single task's key may not end in "#" and digits (a 400), a
# single task's key held by a batch (its ``<key>#0``) is a 409, and so is a batch's key held by a single
# task. ``_hold_key`` serialises the submits of one key, so that two concurrent ones never both succeed.
_BATCH_ITEM_KEY = re.compile(r"#[0-9]+\Z")
_KEY_LOCK = 0x1DE4  # the class of the advisory locks of idempotency keys (two-key form: (class, key))
_KEY_OF_A_BATCH = "Idempotency-Key was already used for a batch"
_KEY_OF_A_TASK = "Idempotency-Key was already used for a single task"


def _refuse_batch_item_key(key: str | None) -> None:
    if key is not None and _BATCH_ITEM_KEY.search(key):
        reason = ("must not end in '#' and digits: <key>#<index> is how the tasks of a batch submitted "
                  "with <key> are stored")
        raise InvalidInput(f"Idempotency-Key: {reason}", fields={"Idempotency-Key": [reason]})


def _hold_key(owner_id: Any, key: str) -> None:
    """Until commit: the lock of ``owner_id``'s idempotency key ``key`` (of a single task, or a batch's),
    taken before the INSERT and before looking whether the other kind holds it."""
    with connection.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [_KEY_LOCK, f"{owner_id}:{key}"])


def submit(*, owner: Any, spec: TaskSpec, idempotency_key: str | None = None) -> tuple[Task, bool]:
    """Insert a PENDING task (``task.created``), dispatched in the same transaction where its queue has
    room. Returns (task, created).

    The same ``idempotency_key`` from the same owner returns the first task; the unique constraint,
    not a read-then-write, decides between concurrent duplicates. A different body is a 409, compared
    as sent (``TaskSpec.request``), or as resolved for a task stored before (``TaskSpec.same_request``).
    A key ending in "#" and digits is a 400, a key a batch used a 409 (see ``_BATCH_ITEM_KEY``).
    """
    task = _new_task(owner, spec, idempotency_key)
    return _create_or_replay(task, spec, same=spec.same_request)


def _create_or_replay(task: Task, spec: TaskSpec, *, same: Any) -> tuple[Task, bool]:
    """(``task`` inserted, True); or, when its idempotency key is taken, (the task that took it, False)
    if ``same(that task)`` says it was the same request, else a 409."""
    _refuse_batch_item_key(task.idempotency_key)
    try:
        with transaction.atomic():
            return _create_one(task, spec), True
    except IntegrityError:
        if task.idempotency_key is None:
            raise
        first = Task.objects.get(owner_id=task.owner_id, idempotency_key=task.idempotency_key)
        if not same(first):
            raise IdempotencyConflict("Idempotency-Key was already used with a different request") from None
        return first, False


def submit_batch(*, owner: Any, specs: list[TaskSpec], idempotency_key: str | None = None) -> tuple[list[Task], bool]:
    """Insert all tasks or none (one transaction, one bulk INSERT). Keys are ``<key>#<index>``; a replay
    compares each item as ``submit`` does; ``<key>`` held by a single task is a 409."""
    keys = [f"{idempotency_key}#{i}" for i in range(len(specs))] if idempotency_key else [None] * len(specs)
    tasks = [_new_task(owner, spec, key) for spec, key in zip(specs, keys)]
    try:
        with transaction.atomic():
            if idempotency_key:
                _hold_key(owner.pk, idempotency_key)
            Task.objects.bulk_create(tasks)
            if idempotency_key and Task.objects.filter(owner=owner, idempotency_key=idempotency_key).exists():
                raise IdempotencyConflict(_KEY_OF_A_TASK)
            _subscribe_webhooks(tasks, specs)
            _created(tasks)
    except IntegrityError:
        if idempotency_key is None:
            raise
        # The first batch's keys, one past this one's too: a first batch that was longer is another body.
        beyond = f"{idempotency_key}#{len(specs)}"
        existing = {t.idempotency_key: t for t in Task.objects.filter(owner=owner, idempotency_key__in=[*keys, beyond])}
        if (len(existing) != len(tasks) or beyond in existing
                or not all(spec.same_request(existing[k]) for k, spec in zip(keys, specs))):
            raise IdempotencyConflict("Idempotency-Key was already used with a different request") from None
        return [existing[k] for k in keys], False
    return tasks, True


# The most tasks one transaction of a bulk cancel changes (``cancel_many``): a filter matching 100,000
# tasks is 200 short transactions, not one that holds 100,000 rows until it ends.
CANCEL_CHUNK = 500


@dataclass
class CancelSummary:
    """What one ``_cancel_now`` did, by task (ids as strings): ``cancelled``: PENDING/QUEUED, CANCELLED now
    (the rows as changed); ``cancelling``: RUNNING, flagged (their workers stop them); ``already_final``:
    left as they were; ``not_found``: no such task (or gone meanwhile)."""

    cancelled: list[Task] = dataclasses.field(default_factory=list)
    cancelling: list[str] = dataclasses.field(default_factory=list)
    already_final: list[str] = dataclasses.field(default_factory=list)
    not_found: list[str] = dataclasses.field(default_factory=list)


@dataclass
class CancelCounts:
    """What ``cancel_many`` did: how many tasks each ``CancelSummary`` list held, and the ids not found."""

    cancelled: int = 0
    cancelling: int = 0
    already_final: int = 0
    not_found: list[str] = dataclasses.field(default_factory=list)

    def add(self, done: CancelSummary) -> None:
        self.cancelled += len(done.cancelled)
        self.cancelling += len(done.cancelling)
        self.already_final += len(done.already_final)
        self.not_found += done.not_found


def cancel(*, task_id: UUID | str, by: Any = None) -> Task:
    """PENDING/QUEUED → CANCELLED at once (``task.cancelled``); RUNNING → cancel flag; final → 409;
    no such task → 404: ``_cancel_now`` of one task, which says how races are settled."""
    done = _cancel_now([str(task_id)])
    if done.not_found:
        raise TaskNotFound("task not found")
    if done.already_final:
        raise InvalidTransition("task has already finished")
    return done.cancelled[0] if done.cancelled else Task.objects.get(id=task_id)


def cancel_many(*, tasks: QuerySet[Task], task_ids: list[UUID | str] | None = None, by: Any = None,
                chunk: int = CANCEL_CHUNK) -> CancelCounts:
    """``cancel`` for many tasks, ``chunk`` at a time, each chunk in its own transaction: the tasks of
    ``task_ids`` (an id not among ``tasks``, the tasks the caller may see, is ``not_found``), or, without
    ``task_ids``, every task of ``tasks`` (a filtered ``selectors.tasks_for``).

    For a queryset the final tasks are counted first, in one query, and only the others are read, by id,
    a chunk at a time (final states never change, so none is counted twice; one that ends between the
    count and the read of its chunk is counted nowhere). A task that matches only after the call began
    (submitted meanwhile) may be left alone."""
    from jobs import selectors

    counts = CancelCounts()
    if task_ids is None:
        counts.already_final = selectors.count_final(tasks)
        tasks = selectors.unfinished(tasks)
    for part in _chunks_of(tasks, task_ids, chunk=chunk, not_found=counts.not_found):
        counts.add(_cancel_now(part))
    return counts


def _chunks_of(tasks: QuerySet[Task], task_ids: list[UUID | str] | None, *, chunk: int,
               not_found: list[str]) -> Iterator[list[str]]:
    """The ids a bulk action (``cancel_many``, ``retry_many``) works on, ``chunk`` at a time: those of
    ``task_ids`` (once each, in their order) that name a task of ``tasks`` (the others are appended to
    ``not_found``, a chunk at a time), or, without ``task_ids``, every task of ``tasks`` in id order, each
    chunk read after the one before was worked on."""
    from jobs import selectors

    if task_ids is not None:
        ids = list(dict.fromkeys(str(i) for i in task_ids))
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            visible = selectors.ids_among(tasks, part)
            not_found += [i for i in part if i not in visible]
            if visible:
                yield [i for i in part if i in visible]
        return
    after = None
    while part := selectors.ids_page(tasks, after=after, limit=chunk):
        yield part
        after = part[-1]


@transitions.atomic_retrying_deadlocks
def _cancel_now(task_ids: list[str]) -> CancelSummary:
    """In one transaction (the caller's, if any), each of ``task_ids``: PENDING/QUEUED → CANCELLED (``task.cancelled``,
    one guarded UPDATE for all), RUNNING → the cancel flag (one UPDATE: the worker's heartbeat sees it,
    ctx.cancelled() turns true, and the worker records CANCELLED itself, or kills the child after the
    grace period), final → left alone. A queue where a QUEUED task was cancelled has a free slot: it is
    dispatched after the commit, once.

    Races with claim()/finish() are settled by which guarded UPDATE matches the row. When neither
    matched, the row changed between the two statements' snapshots (most often RUNNING → PENDING: a
    retry, the reaper, a hand-back, a hold; the flag's UPDATE waited for that change's commit, then
    found the row no longer RUNNING): those rows are locked and looked at once more, and cancelled or
    flagged as they are now. Only then is a task that exists ever counted as final."""
    from queueing import dispatch

    def cancel_not_started(ids: list[str]) -> list[Task]:
        return transitions.apply(ids, frm=NOT_STARTED, to=Status.CANCELLED, event="task.cancelled",
                                 values={"finished_at": timezone.now()}, data={"reason": "cancelled by user"})

    done = CancelSummary(cancelled=cancel_not_started(task_ids))
    rest = _except(task_ids, [str(t.id) for t in done.cancelled])
    done.cancelling = _flag_cancel(rest)
    leftovers = _except(rest, done.cancelling)
    if leftovers:
        status = _locked_statuses(leftovers)  # held until commit: nobody changes them under the next statements
        done.not_found = [i for i in leftovers if i not in status]
        done.cancelled += cancel_not_started([i for i in leftovers if status.get(i) in NOT_STARTED])
        done.cancelling += _flag_cancel([i for i in leftovers if status.get(i) == Status.RUNNING])
        changed = [str(t.id) for t in done.cancelled] + done.cancelling + done.not_found
        done.already_final = _except(leftovers, changed)
    freed = sorted({t.queue_id for t in done.cancelled if t.queued_at is not None})
    if freed:
        transaction.on_commit(lambda: dispatch.dispatch(freed, look_first=True), robust=True)
    return done


def _except(ids: list[str], these: list[str]) -> list[str]:
    leave_out = set(these)
    return [i for i in ids if i not in leave_out]


_FLAG_CANCEL_SQL = (f"UPDATE {Task._meta.db_table} SET cancel_requested = true "
                    "WHERE id = ANY(%s::uuid[]) AND status = %s RETURNING id::text")


def _flag_cancel(task_ids: list[str]) -> list[str]:
    """The cancel flag on those of ``task_ids`` that are RUNNING; returns them, in the order given."""
    if not task_ids:
        return []
    with connection.cursor() as cur:
        cur.execute(_FLAG_CANCEL_SQL, [task_ids, Status.RUNNING])
        flagged = {row[0] for row in cur.fetchall()}
    return [i for i in task_ids if i in flagged]


def _locked_statuses(task_ids: list[str]) -> dict[str, str]:
    """The tasks' statuses as last committed, by id (a task that does not exist is missing), their rows
    locked until this transaction ends (a change in progress is waited for), in the order of their ids."""
    rows = (Task.objects.select_for_update(no_key=True).filter(id__in=task_ids).order_by("id")
            .values_list("id", "status"))
    return {str(task_id): status for task_id, status in rows}


def retry(*, task_id: UUID | str, by: Any, idempotency_key: str | None = None) -> tuple[Task, bool]:
    """Re-run a final task as a new task (``retry_of`` points back); final states never change. Returns
    (task, created): the same ``idempotency_key`` retrying the same task returns the first retry's task
    (the key is the task owner's, as at submit); used for anything else, a 409.

    The new task is the old one's algorithm, version, params, queue, priority, labels and limits as
    stored, not checked again: an algorithm gone since, or params it no longer takes, fail the new task
    on its worker ("cannot start: …"), as they would the old one's run.

    The old task's row stays locked until the new one is committed: task retention (jobs/retention.py)
    steps over a locked row, and a retry that meets one retention is deleting waits, then finds it gone
    (404), instead of pointing ``retry_of`` at a deleted row (a foreign key error at commit)."""
    with transaction.atomic():
        old = Task.objects.select_for_update(no_key=True).filter(id=task_id).first()
        if old is None:
            raise TaskNotFound("task not found")
        if old.status not in FINAL:
            raise InvalidTransition(f"only a finished task can be retried (it is {old.status})")
        spec = _retry_spec(old)
        new = _retry_task(old, spec, idempotency_key)
        return _create_or_replay(new, spec, same=lambda first: first.retry_of_id == old.id)


def _retry_spec(old: Task) -> TaskSpec:
    """``old``'s task again; its request (what a replay is compared by) names ``old``."""
    return TaskSpec(algorithm=old.algorithm, algorithm_version=old.algorithm_version, params=old.params,
                    queue=old.queue_id, priority=old.priority, max_retries=old.max_retries,
                    timeout_seconds=old.timeout_seconds, labels=old.labels, request={"retry_of": str(old.id)})


def _retry_task(old: Task, spec: TaskSpec, key: str | None) -> Task:
    """The new task of ``old``'s retry, its owner's (whoever asked: an operator's retry is the owner's task)."""
    new = _new_task(old.owner, spec, key)
    new.retry_of = old
    return new


# The most tasks one transaction of a bulk retry creates (``retry_many``), in one INSERT.
RETRY_CHUNK = 500


@dataclass
class RetryCounts:
    """What ``retry_many`` did: ``retries``, each finished task's id → its retry's id (made now, or the
    latest one made before), in the order of the tasks; ``new_task_ids``, the retries this call made;
    ``already_retried``: tasks that had a retry already (not retried again); ``not_final``: tasks left
    alone (not finished); ``not_found``: ids of no task the caller may see."""

    retries: dict[str, str] = dataclasses.field(default_factory=dict)
    new_task_ids: list[str] = dataclasses.field(default_factory=list)
    already_retried: int = 0
    not_final: int = 0
    not_found: list[str] = dataclasses.field(default_factory=list)

    @property
    def retried(self) -> int:
        return len(self.new_task_ids)

    def add(self, done: RetryCounts) -> None:
        self.retries.update(done.retries)
        self.new_task_ids += done.new_task_ids
        self.already_retried += done.already_retried
        self.not_final += done.not_final
        self.not_found += done.not_found


def retry_many(*, tasks: QuerySet[Task], task_ids: list[UUID | str] | None = None, by: Any = None,
               chunk: int = RETRY_CHUNK) -> RetryCounts:
    """Make sure each finished task of ``task_ids`` (an id not among ``tasks``, the tasks the caller may
    see, is ``not_found``), or, without ``task_ids``, of ``tasks`` (a filtered ``selectors.tasks_for``)
    has a retry: one that has none gets a new task, as ``retry`` makes it; one that has one already is
    answered with it and not retried again; one not finished is left alone. ``chunk`` tasks per
    transaction, each chunk's new tasks in one INSERT and dispatched after its commit, as
    ``submit_batch``'s.

    So a bulk retry is idempotent by itself: sent again (after a timeout, a 503 half-way, twice at once)
    it makes nothing twice and answers with the same retries; and a filter of a sweep's FAILED tasks sent
    again later retries the retries that failed, not the originals once more (ids name the tasks
    themselves: an id whose retry failed is answered with that retry). A filter selects the tasks made
    before the call (by this process's clock), never the retries it makes itself (which may fail while
    it works)."""
    counts = RetryCounts()
    if task_ids is None:
        tasks = tasks.filter(created_at__lt=timezone.now())
    for part in _chunks_of(tasks, task_ids, chunk=chunk, not_found=counts.not_found):
        counts.add(_retry_now(part))  # counted once its transaction committed (a deadlock runs it again)
    return counts


@transitions.atomic_retrying_deadlocks
def _retry_now(task_ids: list[str]) -> RetryCounts:
    """In one transaction, the finished ones of ``task_ids`` without a retry retried (one INSERT;
    dispatched after the commit); what it did, counted."""
    # Locked as ``retry`` locks its task (in id order; only finished rows, which no cancel, claim or
    # finish locks): task retention steps over them, and a second bulk retry of the same tasks waits,
    # then finds the retries this one made.
    final = {str(t.id): t for t in Task.objects.select_related("owner").select_for_update(no_key=True, of=("self",))
             .filter(id__in=task_ids, status__in=FINAL).order_by("id")}
    present = {str(i) for i in Task.objects.filter(id__in=task_ids).values_list("id", flat=True)}
    earlier = dict(Task.objects.filter(retry_of_id__in=list(final)).order_by("retry_of_id", "-created_at")
                   .distinct("retry_of_id").values_list("retry_of_id", "id"))
    earlier = {str(old): str(new) for old, new in earlier.items()}
    olds = [final[i] for i in task_ids if i in final and i not in earlier]
    news = [_retry_task(old, _retry_spec(old), None) for old in olds]
    if news:
        Task.objects.bulk_create(news)
        _created(news)
    made = {str(old.id): str(new.id) for old, new in zip(olds, news)}
    counts = RetryCounts()
    for task_id in task_ids:
        if task_id in made or task_id in earlier:
            counts.retries[task_id] = made.get(task_id) or earlier[task_id]
        elif task_id in present:
            counts.not_final += 1
        else:
            counts.not_found.append(task_id)  # gone meanwhile (task retention)
    counts.new_task_ids += made.values()
    counts.already_retried += sum(1 for i in task_ids if i in earlier)
    return counts


@transaction.atomic
def change_priority(*, task_id: UUID | str, priority: int, by: Any = None) -> Task:
    """New priority for a PENDING/QUEUED task (``task.priority_changed``); 409 once it runs. The same
    priority again changes nothing (no event, no new place in the round-robin).

    The task joins the round-robin of its new priority (``queueing.ordering.stamp``); a task pinned
    by a reorder stays pinned. Dispatched on commit: a dispatch that ran while this held the row
    stepped over it (``SKIP LOCKED``), and it may have a free slot now.
    """
    from queueing import dispatch, ordering

    def change_now() -> Task | None:
        return transitions.apply_one(task_id, frm=NOT_STARTED, to=None, event="task.priority_changed",
                                     values={"priority": priority}, where_sql="priority <> %s", where_params=[priority],
                                     data={"priority": priority, "by": getattr(by, "username", None)})

    done = change_now()
    if done is None:
        # Not started and already at that priority, or not (or no longer, or not yet) PENDING/QUEUED as of
        # the UPDATE's snapshot: locked, the row says which, after any change in progress has committed
        # (a running task going back to PENDING is one that has not started, not a 409).
        task = Task.objects.select_for_update(no_key=True).filter(id=task_id).first()
        if task is None:
            raise TaskNotFound("task not found")
        if task.status in NOT_STARTED and task.priority == priority:
            return task  # already so: no event, and it keeps its turn in the round-robin
        if task.status not in NOT_STARTED:
            raise InvalidTransition("priority can only change before the task starts")
        done = change_now()  # locked, not started and at another priority: it matches now
    ordering.stamp([done.id])
    transaction.on_commit(lambda: dispatch.dispatch([done.queue_id], look_first=True), robust=True)
    return done


# --- worker side -------------------------------------------------------------------------------
