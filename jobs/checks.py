"""System checks: the task retention's setting (every ``manage.py`` command), and those that need the
database (``manage.py check --database default``; ``migrate`` runs them too)."""
from __future__ import annotations

from typing import Any

from django.conf import settings
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


@checks.register()
def task_retention_is_long_enough(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Refuse a ``TASK_RETENTION_DAYS`` shorter than the longest statistics window (31 days: the
    statistics of a window would lose the tasks deleted in it) or than ``RESULT_TTL_DAYS`` (results
    would go before the time they are promised). ``0`` (keep for ever) is fine."""
    from jobs.retention import floor_days

    days, floor = settings.CONVEYOR["TASK_RETENTION_DAYS"], floor_days()
    if 0 < days < floor:
        return [checks.Error(
            f"TASK_RETENTION_DAYS={days:g} is shorter than {floor:g} days",
            hint="Tasks must be kept at least as long as the longest statistics window (31 days) and "
                 "RESULT_TTL_DAYS; set TASK_RETENTION_DAYS to that or more, or 0 to keep tasks for ever.",
            id="conveyor.E001",
        )]
    return []
