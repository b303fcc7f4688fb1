import django.db.models.deletion
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    """The queue's plain index (and its ``varchar_pattern_ops`` twin) replaced by ``(queue, status)``.

    With statistics that do not know a queue yet (a new queue, a table not analysed since it filled),
    the planner counted the dispatcher's busy tasks (``queue = … AND status IN ('QUEUED', 'RUNNING')``)
    through the plain index, reading every row the queue ever had. Every index on ``queue`` now carries
    the status too, so whichever the planner picks reads only the rows it counts. The new index is built
    before the old ones go, and neither step stops writes.
    """

    atomic = False  # CREATE / DROP INDEX CONCURRENTLY

    dependencies = [
        ("jobs", "0005_task_request_id"),
        ("queueing", "0010_queue_resources"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="task",
            index=models.Index(fields=["queue", "status"], name="task_queue_status_idx"),
        ),
        # Only the indexes go: Django's AlterField would also drop and re-add the foreign key, which
        # checks every row under a lock that stops writes.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="task",
                    name="queue",
                    field=models.ForeignKey(db_column="queue", db_index=False,
                                            on_delete=django.db.models.deletion.PROTECT,
                                            to="queueing.queue", to_field="name"),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    'DROP INDEX CONCURRENTLY IF EXISTS "jobs_task_queue_0433fa67"',
                    'CREATE INDEX CONCURRENTLY IF NOT EXISTS "jobs_task_queue_0433fa67" ON "jobs_task" ("queue")',
                ),
                migrations.RunSQL(
                    'DROP INDEX CONCURRENTLY IF EXISTS "jobs_task_queue_0433fa67_like"',
                    'CREATE INDEX CONCURRENTLY IF NOT EXISTS "jobs_task_queue_0433fa67_like" '
                    'ON "jobs_task" ("queue" varchar_pattern_ops)',
                ),
            ],
        ),
    ]
