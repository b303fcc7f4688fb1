"""The statistics counters' stripes (``QueueCount``, ``TaskMinuteCount``): one per database backend.

The triggers (queueing/migrations/0007, 0009, 0011) add each statement's deltas to the rows of the
backend that runs it (``stripe = pg_backend_pid()``), so two transactions never lock the same counter
row and never wait for, or deadlock with, each other over the statistics (with 8 shared stripes, two
backends of one stripe changing statuses in two statements each, in opposite orders, could). Readers sum
every stripe.

A backend that has ended leaves its rows behind; ``fold()`` (beat, ``COUNTER_FOLD_SECONDS``) moves them
into stripe 0, which no backend writes (no process has pid 0), so the rows stay about (live backends + 1)
× the keys. The totals never change: each row's count is moved, in one transaction, by whichever
``fold`` deletes it. A row locked at that moment (a new backend that was given a reused pid, writing
it) is skipped until the next fold, so ``fold`` never waits for a backend and no backend waits for it.

``forget_old()`` (the same beat entry) deletes the per-minute rows of minutes before the longest
statistics window, which no reader asks for: without it they grow by a row per minute, queue, algorithm
and status for ever (and task retention, whose deletes the triggers subtract, leaves them at 0).
"""
from __future__ import annotations

from datetime import timedelta

from django.db import connection, transaction

from queueing.statistics import MAX_WINDOW

_TABLES = {
    "queueing_queuecount": ["queue", "status"],
    "queueing_taskminutecount": ["minute", "queue", "algorithm", "status"],
}


def _fold_sql(table: str, keys: list[str]) -> str:
    cols = ", ".join(keys)
    return f"""
WITH ended AS (
    SELECT id FROM {table} c
    WHERE c.stripe <> 0 AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = c.stripe)
    FOR UPDATE SKIP LOCKED
), moved AS (
    DELETE FROM {table} WHERE id IN (SELECT id FROM ended) RETURNING {cols}, n
), folded AS (
    INSERT INTO {table} ({cols}, stripe, n)
    SELECT {cols}, 0, sum(n) FROM moved GROUP BY {cols} HAVING sum(n) <> 0 ORDER BY {cols}
    ON CONFLICT ({cols}, stripe) DO UPDATE SET n = {table}.n + EXCLUDED.n
)
SELECT count(*) FROM moved"""


def fold() -> int:
    """Move the counter rows of backends that have ended into stripe 0; returns the rows moved."""
    moved = 0
    with transaction.atomic(), connection.cursor() as cur:
        for table, keys in _TABLES.items():
            cur.execute(_fold_sql(table, keys))
            moved += cur.fetchone()[0]
    return moved


# The longest window's rows, and a day more: a window's first partial minute is read from the tasks.
_FORGET_SQL = """
DELETE FROM queueing_taskminutecount WHERE id IN (
    SELECT id FROM queueing_taskminutecount WHERE minute < now() - %s FOR UPDATE SKIP LOCKED
)"""


def forget_old() -> int:
    """Delete the per-minute counter rows older than the longest statistics window (plus a day);
    a row some backend holds is left for the next run. Returns the rows deleted."""
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute(_FORGET_SQL, [MAX_WINDOW + timedelta(days=1)])
        return cur.rowcount
