"""Cursors for the statements on every task's path (transitions, events, the round-robin stamp, the
dispatcher's reads): PostgreSQL parses and plans each one once per connection, with a generic plan
(``DB_PREPARED_STATEMENTS``, config/settings.py). Each is long (CTEs, every column returned) and its
parse and plan cost more than running it. Every other query stays on Django's client-bound cursors.
"""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import connection
from django.db.backends.postgresql.base import ServerBindingCursor

_EXPLICIT_ONLY = 2**31 - 1  # a psycopg prepare threshold no statement reaches: only prepare=True prepares


class _Prepared(ServerBindingCursor):
    """Binds parameters on the server and prepares each statement on its first use in a connection.

    psycopg prepares nothing while the connection's ``prepare_threshold`` is None (Django's default), and
    with any threshold it counts every statement, keyed by its text, to prepare the frequent ones — with
    Django's client-side binding that text holds the parameters, so a 1 MB result chunk would be kept as a
    key (a worker's memory grew by 220 MB in tests/remote). So the threshold is set only while one of
    these statements is sent.
    """

    def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None, **kwargs: Any) -> Any:
        conn = self.connection
        conn.prepare_threshold = _EXPLICIT_ONLY
        try:
            return super().execute(query, params, prepare=True, **kwargs)
        finally:
            conn.prepare_threshold = None


def cursor(*, prepare: bool = True) -> Any:
    """A Django cursor (its execute wrappers and query log included) that binds parameters on the server
    and, with ``prepare``, prepares its statements; Django's ordinary client-bound cursor when
    ``DB_PREPARED_STATEMENTS`` is off."""
    if not settings.DB_PREPARED_STATEMENTS:
        return connection.cursor()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        raw = (_Prepared if prepare else ServerBindingCursor)(connection.connection)
        return connection._prepare_cursor(raw)
