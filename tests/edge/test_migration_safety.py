"""Migrations are safe for the README's deploy order: migrate first, then roll web and workers.

While ``migrate`` runs, and until every process runs the new release, the previous release keeps
writing to the new schema, and nothing may stop its writes for longer than a moment:

* a NOT NULL column added to a table carries a database default, so the previous release's INSERTs
  (which do not name the column) still succeed;
* an index on a big table is built ``CONCURRENTLY`` (``AddIndexConcurrently``, in a migration with
  ``atomic = False``), never with a plain ``AddIndex`` (``CREATE INDEX`` stops writes until it is built);
* a migration that changes a big table's schema does not also write that table's rows in the same
  transaction: the ``ALTER TABLE``'s lock (which stops every read and write) would be held until the last
  row is written. Such a migration is ``atomic = False``, and a long backfill runs in batches.

Each app's 0001 is exempt: it creates the tables, empty.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from django.apps import apps
from django.contrib.postgres.operations import AddIndexConcurrently
from django.core.exceptions import FieldDoesNotExist
from django.db import migrations
from django.db.migrations.loader import MigrationLoader

ROOT = Path(__file__).resolve().parents[2]

# The tables that grow with traffic: every task, every event, every webhook delivery and attempt.
BIG_MODELS = [("jobs", "task"), ("jobs", "taskevent"), ("webhooks", "delivery"), ("webhooks", "deliveryattempt")]
BIG_TABLES = {apps.get_model(app, model)._meta.db_table for app, model in BIG_MODELS}

# Plain AddIndex on jobs_task, older than this check: they landed with the first recovered schema (422589d)
# and are left as they are. Nothing is to be added here.
PLAIN_INDEX_BEFORE_FIRST_RELEASE = {("jobs", "0002_task_queue_order"), ("jobs", "0003_pending_created_index")}

_TABLES = "|".join(sorted(BIG_TABLES))
WRITES_SQL = re.compile(rf'\b(UPDATE|INSERT\s+INTO|DELETE\s+FROM)\s+"?({_TABLES})\b', re.IGNORECASE)
DDL_SQL = re.compile(rf'\b(ALTER\s+TABLE|CREATE\s+TRIGGER\b[^;]*?\bON)\s+"?({_TABLES})\b', re.IGNORECASE)
PLAIN_INDEX_SQL = re.compile(rf'\bCREATE\s+(UNIQUE\s+)?INDEX\s+(?!CONCURRENTLY)[^;]*?\bON\s+"?({_TABLES})\b',
                             re.IGNORECASE)


def later_migrations() -> Iterator[tuple[tuple[str, str], migrations.Migration]]:
    """Every migration of the project's own apps (not Django's) but their 0001s."""
    for key, migration in sorted(MigrationLoader(None, ignore_no_migrations=True).disk_migrations.items()):
        app_label, name = key
        if Path(apps.get_app_config(app_label).path).parent == ROOT and not name.startswith("0001"):
            yield key, migration


def flat(operations: list) -> Iterator:
    """The operations, with SeparateDatabaseAndState's database operations (what actually runs) opened up."""
    for op in operations:
        if isinstance(op, migrations.SeparateDatabaseAndState):
            yield from flat(op.database_operations)
        else:
            yield op


def sql_of(op: migrations.RunSQL) -> str:
    sql = op.sql
    if isinstance(sql, (list, tuple)):
        sql = " ; ".join(s if isinstance(s, str) else s[0] for s in sql)
    return sql


def is_big(app_label: str, model_name: str | None) -> bool:
    return model_name is not None and (app_label, model_name.lower()) in BIG_MODELS


def test_the_scan_sees_the_project_migrations() -> None:
    keys = {key for key, _ in later_migrations()}
    assert ("jobs", "0009_task_result_meta") in keys and ("webhooks", "0002_delivery_redelivered_after") in keys
    assert not any(name.startswith("0001") for _, name in keys)
    assert {"jobs_task", "jobs_taskevent", "webhooks_delivery", "webhooks_deliveryattempt"} == BIG_TABLES


def test_every_added_not_null_column_has_a_database_default() -> None:
    """The previous release's INSERTs omit the new column: without a database default they fail
    (``null value in column … violates not-null constraint``) until every process runs the new release.
    The default may come in a later migration (an instant ``ALTER COLUMN … SET DEFAULT``): a deploy
    runs every migration before it rolls the processes."""
    missing = []
    for (app_label, name), migration in later_migrations():
        for op in flat(migration.operations):
            if not isinstance(op, migrations.AddField) or op.field.null:
                continue
            try:
                field = apps.get_model(app_label, op.model_name)._meta.get_field(op.name)
            except (LookupError, FieldDoesNotExist):
                continue  # removed since: nothing inserts it any more
            if field.null or field.has_db_default() or field.generated:
                continue
            missing.append(f"{app_label}.{name}: {op.model_name}.{op.name}")
    assert not missing, f"NOT NULL columns added without a db_default on the model: {missing}"


def test_indexes_on_big_tables_are_built_concurrently() -> None:
    plain = []
    for (app_label, name), migration in later_migrations():
        if (app_label, name) in PLAIN_INDEX_BEFORE_FIRST_RELEASE:
            continue
        for op in flat(migration.operations):
            if isinstance(op, migrations.AddIndex) and not isinstance(op, AddIndexConcurrently):
                if is_big(app_label, op.model_name):
                    plain.append(f"{app_label}.{name}: AddIndex {op.index.name}")
            elif isinstance(op, migrations.RunSQL) and PLAIN_INDEX_SQL.search(sql_of(op)):
                plain.append(f"{app_label}.{name}: CREATE INDEX without CONCURRENTLY")
        if any(isinstance(op, AddIndexConcurrently) for op in flat(migration.operations)):
            assert not migration.atomic, f"{app_label}.{name}: AddIndexConcurrently needs atomic = False"
    assert not plain, f"indexes built while writes wait: {plain}"


def test_no_atomic_migration_changes_a_big_table_and_writes_its_rows() -> None:
    """An ``ALTER TABLE`` (AddField, even of a nullable column, a trigger, an index) takes a lock that stops
    every read and write of the table, held to the end of the migration's transaction: a backfill in that
    transaction stops the service for as long as it runs. RunPython is taken to write what it may."""
    both = []
    for (app_label, name), migration in later_migrations():
        if not migration.atomic:
            continue
        changes = writes = False
        for op in flat(migration.operations):
            if isinstance(op, migrations.RunPython):
                writes = True
            elif isinstance(op, migrations.RunSQL):
                sql = sql_of(op)
                writes = writes or bool(WRITES_SQL.search(sql))
                changes = changes or bool(DDL_SQL.search(sql) or PLAIN_INDEX_SQL.search(sql))
            elif is_big(app_label, getattr(op, "model_name", None) or getattr(op, "name", None)):
                changes = True
        if changes and writes:
            both.append(f"{app_label}.{name}")
    assert not both, f"atomic migrations that change a big table and write rows under its lock: {both}"
