from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    """Result retention (``algorithms.results.expire``) finds the succeeded tasks whose inline result has
    outlived ``RESULT_TTL_DAYS`` on an index of their own: only tasks still holding a result are in it (an
    expired one is NULL), by finish, so a batch reads the oldest expired results and nothing else. Without
    it each batch walked the table newest first, its cost growing with the tasks kept."""

    atomic = False  # CREATE INDEX CONCURRENTLY: jobs_task takes writes while it is built

    dependencies = [
        ('jobs', '0010_task_fair_seq_db_default'),
    ]

    operations = [
        AddIndexConcurrently(
            model_name='task',
            index=models.Index(condition=models.Q(('result__isnull', False), ('status', 'SUCCEEDED')),
                               fields=['finished_at'], name='task_inline_result_idx'),
        ),
    ]
