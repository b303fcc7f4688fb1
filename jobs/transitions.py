"""The one place the task state machine lives.

``apply()`` is a guarded UPDATE (``… WHERE id = ANY(%s) AND status = ANY(%s) RETURNING …``) that also
bumps ``last_seq``, and one ``TaskEvent`` per row it matched, in the caller's transaction: one statement
(the UPDATE and the event INSERT as CTEs, returning the rows and their webhook subscriptions).
A row that did not match was changed by another process first (cancel vs claim, two dispatchers,
a redelivered message): the caller gets it back as missing and does nothing.
"""
from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ParamSpec, TypeVar
from uuid import UUID

from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from jobs import events, prepared
from jobs.models import Task

_TABLE = Task._meta.db_table
log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


_FIELDS = Task._meta.concrete_fields
_BY_COLUMN = {f.column: f for f in _FIELDS}


def _prep(column: str, value: Any) -> Any:
    return _BY_COLUMN[column].get_db_prep_save(value, connection)


def _db_type(column: str) -> str:
    return _BY_COLUMN[column].db_type(connection).split("(")[0]


# The updated rows come back as Task instances built directly (``Model.from_db``): a RawQuerySet
# re-derives its column-to-field mapping on every query, which cost more than the UPDATE itself.
_RETURNING = ", ".join(f'{_TABLE}."{f.column}"' for f in _FIELDS)
_COLUMNS = ", ".join(f'"{f.column}"' for f in _FIELDS)
_ATTNAMES = [f.attname for f in _FIELDS]


@functools.cache
def _converters() -> list[tuple[int, list[Any], Any]]:
    """(position, the field's from-database converters, its column expression), for fields that have any."""
    found = []
    for i, field in enumerate(_FIELDS):
        col = field.get_col(_TABLE)
        funcs = connection.ops.get_db_converters(col) + field.get_db_converters(connection)
        if funcs:
            found.append((i, funcs, col))
    return found


def _task_from_row(row: tuple[Any, ...]) -> Task:
    values = list(row)
    for i, funcs, col in _converters():
        for func in funcs:
            values[i] = func(values[i], col, connection)
    return Task.from_db(connection.alias, _ATTNAMES, values)


def apply(
    ids: Iterable[UUID | str],
    *,
    frm: Iterable[str] | None,
    to: str | None,
    event: str,
    values: Mapping[str, Any] | None = None,
    sql_values: Mapping[str, str] | None = None,
    where_sql: str = "",
    where_params: list[Any] | None = None,
    data: dict[str, Any] | None = None,
    row_values: Mapping[str, list[Any]] | None = None,
    relax: bool = False,
    series: list[dict[str, Any]] | None = None,
) -> list[Task]:
    """Move the rows still in ``frm`` to ``to`` (``None`` keeps the status) and record ``event``.

    ``values`` are plain column values, ``sql_values`` SQL expressions (``"attempts + 1"``),
    ``row_values`` a value per id for each column (aligned with ``ids``: every task its own result, in
    the same one statement), ``where_sql`` an extra guard (with ``where_params``), ``relax`` an
    asynchronous commit (``execute``), ``series`` several ``event``s per row instead of one, the data of
    each in order (a run's log lines: ``last_seq`` moves by their number). Returns the updated tasks, in
    the order of ``ids``.
    """
    assert transaction.get_connection().in_atomic_block, "transitions run inside a transaction"
    ids = [str(i) for i in ids]
    if not ids:
        return []
    sets = ["last_seq = last_seq + 1" if series is None else "last_seq = last_seq + %s"]
    params: list[Any] = [] if series is None else [len(series)]
    if to is not None:
        sets.append("status = %s")
        params.append(to)
    for column, value in (values or {}).items():
        sets.append(f"{column} = %s")
        params.append(_prep(column, value))
    sets.extend(f"{column} = {expr}" for column, expr in (sql_values or {}).items())
    if row_values:
        # UPDATE … FROM unnest(ids, col1[], col2[] …): one statement, each row its own values.
        columns = list(row_values)
        sets.extend(f"{column} = v.v_{column}" for column in columns)
        arrays = ", ".join(["%s::uuid[]"] + [f"%s::{_db_type(column)}[]" for column in columns])
        names = ", ".join(["v_id"] + [f"v_{column}" for column in columns])
        sql = (f"UPDATE {_TABLE} SET {', '.join(sets)} FROM unnest({arrays}) AS v({names}) "
               f"WHERE {_TABLE}.id = v.v_id")
        params.append(ids)
        for column in columns:
            assert len(row_values[column]) == len(ids), f"row_values[{column!r}] must align with ids"
            params.append([_prep(column, value) for value in row_values[column]])
    else:
        sql = f"UPDATE {_TABLE} SET {', '.join(sets)} WHERE id = ANY(%s::uuid[])"
        params.append(ids)
    if frm is not None:
        sql += " AND status = ANY(%s)"
        params.append(list(frm))
    if where_sql:
        sql += f" AND ({where_sql})"
        params.extend(where_params or [])
    sql += f" RETURNING {_RETURNING}"
    if not events.in_sql(event) or series is not None:
        with connection.cursor() as cur:
            execute(cur, sql, params, relax=relax)
            rows = {str(t.id): t for t in map(_task_from_row, cur.fetchall())}
        tasks = [rows[i] for i in ids if i in rows]
        if tasks and series is not None:
            events.record_series(tasks, event, series)
        elif tasks:
            events.record(tasks, event, data)
        return tasks
    # One statement: the guarded UPDATE, the event rows of the rows it changed, and each one's
    # matching webhook subscriptions.
    return [task for task, _ in _recording(sql, params, event, data, relax=relax, order=ids)]


def create(task: Task, *, event: str, sql_values: Mapping[str, tuple[str, list[Any]]] | None = None,
           also: tuple[str, list[Any]] | None = None) -> tuple[Task, Any]:
    """INSERT a new task and record ``event`` (its ``last_seq`` is already set) in one statement, as
    ``apply`` does for an UPDATE. ``sql_values``: columns computed by SQL (expression, parameters)
    instead of taken from ``task``; ``also``: one more expression evaluated in the same statement (its
    snapshot: without the new row). Returns (the task as inserted, the value of ``also``)."""
    assert transaction.get_connection().in_atomic_block, "transitions run inside a transaction"
    computed = sql_values or {}
    values, params = [], []
    for field in _FIELDS:
        if field.column in computed:
            expr, expr_params = computed[field.column]
            values.append(f"({expr})")
            params.extend(expr_params)
        else:
            values.append("%s")
            params.append(field.get_db_prep_save(field.pre_save(task, True), connection))
    sql = f"INSERT INTO {_TABLE} ({_COLUMNS}) VALUES ({', '.join(values)}) RETURNING {_RETURNING}"
    [(created, extra)] = _recording(sql, params, event, None, also=also)
    created._state.fields_cache.update(task._state.fields_cache)  # its owner, as given: not read again
    return created, extra


def _recording(sql: str, params: list[Any], event: str, data: dict[str, Any] | None, *, relax: bool = False,
               also: tuple[str, list[Any]] | None = None, order: list[str] | None = None) -> list[tuple[Task, Any]]:
    """Run ``sql`` (an UPDATE or INSERT returning every column) with the INSERT of ``event`` for each row
    it returned and each row's matching webhook subscriptions, in one statement; then the events'
    channel messages and outbox rows (``events.recorded``). Returns (task, ``also``'s value) per row,
    in the order of the ids in ``order`` when given."""
    from webhooks import outbox

    now = timezone.now()
    insert, insert_params = events.insert_sql("changed", event, data, now)
    matching = outbox.matching_sql(event, "changed") or ("'{}'::uuid[]", [])
    extra, extra_params = also or ("NULL", [])
    statement = (f"WITH changed AS ({sql}), recorded AS ({insert}) "
                 f"SELECT changed.*, {matching[0]}, {extra} FROM changed")
    with prepared.cursor() as cur:
        if relax and _outermost():  # SET LOCAL as a function: a prepared statement is one statement
            statement += " WHERE set_config('synchronous_commit', 'off', true) IS NOT NULL"
        cur.execute(statement, params + insert_params + matching[1] + extra_params)
        hits = [(_task_from_row(row[:-2]), row[-2], row[-1]) for row in cur.fetchall()]
    if order is not None:
        by_id = {str(hit[0].id): hit for hit in hits}
        hits = [by_id[i] for i in order if i in by_id]
    if hits:
        events.recorded([task for task, _, _ in hits], event, data, now, [subs for _, subs, _ in hits])
    return [(task, extra) for task, _, extra in hits]


def read_together(statements: list[str], params: Mapping[str, Any], *, relax: bool = False) -> list[list[tuple[Any, ...]]]:
    """Run ``statements`` in order (each with its own snapshot, as always in READ COMMITTED) in one round
    trip, and return each one's rows: prepared, in a psycopg pipeline (the transaction's ``BEGIN``
    travels with them); as one client-bound string of them all when ``DB_PREPARED_STATEMENTS`` is off.
    ``relax`` as in ``execute``. The statements share ``params`` (named placeholders)."""
    if not settings.DB_PREPARED_STATEMENTS:
        with connection.cursor() as cur:
            execute(cur, "; ".join(statements), params, relax=relax)
            found = [cur.fetchall()]
            while len(found) < len(statements) and cur.nextset():
                found.append(cur.fetchall())
            return found
    connection.ensure_connection()
    with connection.wrap_database_errors, connection.connection.pipeline():
        if relax and _outermost():
            prepared.cursor(prepare=False).execute("SET LOCAL synchronous_commit TO OFF")
        cursors = []
        for sql in statements:
            cur = prepared.cursor()
            cur.execute(sql, params)
            cursors.append(cur)
    found = [cur.fetchall() for cur in cursors]
    for cur in cursors:
        cur.close()
    return found


def execute(cur: Any, sql: str, params: Any, *, relax: bool = False) -> None:
    """``cur.execute(sql, params)``; with ``relax``, preceded in the same round trip by ``SET LOCAL
    synchronous_commit TO OFF``, so this transaction commits without waiting for its WAL flush: for
    transitions the reconciler redoes when they are lost (dispatch, claim), never for a submit or a finish.

    PostgreSQL writes WAL in order, so the next synchronous commit (the task's finish, any submit) makes
    this one durable too; a crash can lose it only together with everything after it, which leaves the
    task PENDING or QUEUED again, to be run once more: at-least-once, as after a worker crash. Only in
    the outermost transaction: ``SET LOCAL`` inside a caller's transaction would relax the caller's commit.
    (Two statements in one execute: Django's psycopg cursors bind parameters client-side.)
    """
    if relax and _outermost():
        cur.execute("SET LOCAL synchronous_commit TO OFF; " + sql, params)
        cur.nextset()  # past the SET, to the statement's own result
    else:
        cur.execute(sql, params)


def _outermost() -> bool:
    return len(transaction.get_connection().atomic_blocks) == 1


def apply_one(task_id: UUID | str, **kwargs: Any) -> Task | None:
    tasks = apply([task_id], **kwargs)
    return tasks[0] if tasks else None


DEADLOCK_ATTEMPTS = 3
_DEADLOCK = "40P01"


def atomic_retrying_deadlocks(fn: Callable[P, R]) -> Callable[P, R]:
    """``transaction.atomic`` for a transaction that changes statuses in more than one statement, run
    again (up to ``DEADLOCK_ATTEMPTS`` times) when PostgreSQL ends it as a deadlock's victim.

    Two such statements lock their task rows one after the other, and another session can lock the same
    rows in the opposite order (the watchdog's heartbeat could, against a batch's finish of successes,
    then failures, until it learned to step around held rows: ``execution.heartbeat``). (The statistics
    counters once made this far likelier: with 8 stripes shared by all sessions, any two of one stripe
    changing statuses in opposite orders could deadlock; each session has counter rows of its own now,
    ``queueing/counters.py``.) The
    transaction is all database work (side effects are ``on_commit``, dropped with the rollback), so it
    is simply run again instead of leaving its tasks RUNNING for the reaper to hand back and run a
    second time. Inside a caller's transaction it is only a part of that transaction, and the caller
    decides.
    """
    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        if transaction.get_connection().in_atomic_block:
            with transaction.atomic(savepoint=False):
                return fn(*args, **kwargs)
        for attempt in range(1, DEADLOCK_ATTEMPTS + 1):
            try:
                with transaction.atomic():
                    return fn(*args, **kwargs)
            except OperationalError as exc:
                if getattr(exc.__cause__, "sqlstate", None) != _DEADLOCK or attempt == DEADLOCK_ATTEMPTS:
                    raise
                log.warning("deadlock, running the transaction again", extra={"function": fn.__qualname__,
                                                                               "attempt": attempt})
                time.sleep(random.uniform(0, 0.02 * attempt))  # out of step with the other backend
        raise AssertionError("unreachable")
    return run
