"""A quicker end for transactional tests: ``DELETE`` every model table's rows, instead of Django's
``flush`` (one ``TRUNCATE`` of every table, then the ``post_migrate`` signal).

Most of the suite's tests are transactional (a real worker process must see their rows), and each ended
with that flush: about 0.25 s here, as PostgreSQL gives every truncated relation new files (~9 ms a
table), however few rows it held. A test writes a handful of rows, and deleting them takes a few
milliseconds: one transaction with triggers off (``session_replication_role = replica``: no
statistics-counter deltas for rows that are deleted themselves; foreign keys, which Django makes
deferrable, are not checked). The state is the one ``flush`` leaves: every model table empty except the
two that ``post_migrate`` fills again after a flush (content types and permissions), which are left as
they are (the tests never change them).

Deleted rows stay behind as dead tuples until a vacuum, and this machine's PostgreSQL runs without
autovacuum: so every ``FULL_EVERY``-th end is Django's own flush, which truncates them away. Without
superuser rights (``session_replication_role`` needs them) every end is Django's flush, as before.
"""
from __future__ import annotations

from typing import Any

from django.db import connections, transaction

FULL_EVERY = 50
# Filled again by post_migrate after every flush, identically: kept, rather than deleted and rebuilt.
_KEPT = {"django_content_type", "auth_permission"}
_ends = 0
_deletes: dict[str, str | None] = {}


def _delete_sql(db_name: str) -> str | None:
    """A lock of every model table (flush's tables, less ``_KEPT``; reads go on), then one ``DELETE`` of
    each; None without superuser rights."""
    if db_name not in _deletes:
        conn = connections[db_name]
        with conn.cursor() as cur:
            cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            superuser = bool(cur.fetchone()[0])
        tables = sorted(set(conn.introspection.django_table_names(only_existing=True, include_views=False)) - _KEPT)
        names = ", ".join(conn.ops.quote_name(t) for t in tables)
        # Locked first, all together: a write from another session (the live worker) waits for the end
        # and then meets the emptied tables, as with TRUNCATE; without the lock, a row could go into a
        # table already emptied, pointing at a parent row deleted after it (foreign keys are off here).
        statements = [f"LOCK TABLE {names} IN EXCLUSIVE MODE"] + [f"DELETE FROM {conn.ops.quote_name(t)}" for t in tables]
        _deletes[db_name] = "; ".join(statements) if superuser and tables else None
    return _deletes[db_name]


def quick_flush(test: Any, full_flush: Any) -> None:
    """``TransactionTestCase._fixture_teardown`` for ``test``; ``full_flush`` is Django's own."""
    global _ends
    _ends += 1
    names = list(test._databases_names(include_mirrors=False))
    if _ends % FULL_EVERY == 0 or test.available_apps is not None or any(_delete_sql(n) is None for n in names):
        return full_flush(test)
    for db_name in names:
        with transaction.atomic(using=db_name), connections[db_name].cursor() as cur:
            cur.execute("SET LOCAL session_replication_role = replica")
            cur.execute(_delete_sql(db_name))
