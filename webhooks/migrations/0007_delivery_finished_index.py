from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    """The delivery log's retention (``webhooks.services.prune_log``) takes the finished deliveries oldest
    first from an index on ``finished_at``, instead of a scan and a sort of the whole table per batch."""

    atomic = False  # CREATE INDEX CONCURRENTLY: webhooks_delivery takes writes while it is built

    dependencies = [
        ('webhooks', '0006_delivery_db_defaults'),
    ]

    operations = [
        AddIndexConcurrently(
            model_name='delivery',
            index=models.Index(condition=models.Q(('status__in', ['SUCCEEDED', 'FAILED'])), fields=['finished_at'],
                               name='webhook_delivery_finished_idx'),
        ),
    ]
