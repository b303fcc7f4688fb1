from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    """The queue order per owner, for waiting tasks only: which owners wait in a queue (one probe each)
    and each one's first tasks, when owners at their cap fill the dispatcher's scan-ahead
    (queueing/dispatch.py). Built without stopping writes."""

    atomic = False  # CREATE INDEX CONCURRENTLY

    dependencies = [
        ("jobs", "0007_task_idempotency_key_255"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="task",
            index=models.Index(
                models.F("queue"), models.F("owner"), models.F("queue_position"),
                models.OrderBy(models.F("priority"), descending=True), models.F("fair_seq"), models.F("created_at"),
                models.F("id"), condition=models.Q(("status", "PENDING")), name="task_owner_order_idx",
            ),
        ),
    ]
