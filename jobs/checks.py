"""System checks that need the database (``manage.py check --database default``; ``migrate`` runs them too)."""
from __future__ import annotations

from typing import Any

from django.core import checks
from django.db import connections


@checks.register(checks.Tags.database)
def autovacuum_is_on(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Warn when PostgreSQL's autovacuum is off: every task row is updated several times, and the
    transitions and the dispatcher run as prepared statements whose plans PostgreSQL makes again only
    when the tables' statistics change. Without autovacuum those plans stay the ones made while the
    tables were small (measured: dispatch latency p50 4.2 → 6.2 ms in make bench, docs/benchmarks.md)."""
    found = []
    for alias in databases or []:
        connection = connections[alias]
        if connection.vendor != "postgresql":
            continue
        with connection.cursor() as cur:
            cur.execute("SHOW autovacuum")
            (value,) = cur.fetchone()
        if value != "on":
            found.append(checks.Warning(
                f"PostgreSQL's autovacuum is {value} on database {alias!r}",
                hint="Turn it on (autovacuum = on in postgresql.conf, the default), or run VACUUM (ANALYZE) "
                     "regularly: without fresh statistics the dispatcher's prepared plans stay the ones made "
                     "for small tables, and dead rows pile up.",
                id="conveyor.W001",
            ))
    return found
