"""The statistics counters' stripe becomes the backend's pid itself instead of the pid modulo 8
(queueing/counters.py): two backends never share a counter row, so they never wait for each other on
one or deadlock over them. ``queueing.counters.fold`` moves the rows of ended backends into stripe 0.

The trigger functions are those of 0007 and 0009 with only the stripe expression changed.
"""
from importlib import import_module

from django.db import migrations, models

OLD_STRIPE, NEW_STRIPE = "mod(pg_backend_pid(), 8)", "pg_backend_pid()"


def _functions(migration: str, stripe: str) -> str:
    """The trigger functions (not the triggers) that ``migration`` created, with ``stripe`` as the stripe."""
    forward = import_module(f"queueing.migrations.{migration}").FORWARD
    functions = forward.split("CREATE TRIGGER", 1)[0].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
    assert OLD_STRIPE in functions
    return functions.replace(OLD_STRIPE, stripe)


def _sql(stripe: str) -> str:
    return _functions("0007_queue_count_triggers", stripe) + _functions("0009_task_minute_count_triggers", stripe)


def _fold_all(table: str, keys: str) -> str:
    """Backwards only: every pid stripe into stripe 0, so that the column fits a smallint again."""
    return (f"WITH moved AS (DELETE FROM {table} WHERE stripe NOT BETWEEN 0 AND 7 RETURNING {keys}, n) "
            f"INSERT INTO {table} ({keys}, stripe, n) SELECT {keys}, 0, sum(n) FROM moved GROUP BY {keys} "
            f"ON CONFLICT ({keys}, stripe) DO UPDATE SET n = {table}.n + EXCLUDED.n;")


class Migration(migrations.Migration):
    dependencies = [("queueing", "0010_queue_resources")]
    operations = [
        migrations.AlterField(model_name="queuecount", name="stripe", field=models.IntegerField()),
        migrations.AlterField(model_name="taskminutecount", name="stripe", field=models.IntegerField()),
        migrations.RunSQL(_sql(NEW_STRIPE), _sql(OLD_STRIPE)),
        migrations.RunSQL(migrations.RunSQL.noop, _fold_all("queueing_queuecount", "queue, status")
                          + _fold_all("queueing_taskminutecount", "minute, queue, algorithm, status")),
    ]
