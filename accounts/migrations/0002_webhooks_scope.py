"""The ``webhooks`` scope: managing webhooks with a key needs it, no longer ``submit`` alone. Keys that
could read and write everything before (``read`` and ``submit``) keep managing webhooks; a key made
only to submit (or only to read) does not."""

import django.contrib.postgres.fields
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0001_api_keys'),
    ]

    operations = [
        migrations.AlterField(
            model_name='apikey',
            name='scopes',
            field=django.contrib.postgres.fields.ArrayField(base_field=models.CharField(choices=[('read', 'read: GET anything the owner may see'), ('submit', "submit: submit, cancel, retry, re-prioritise the owner's tasks"), ('operate', 'operate: operator actions (queues, workers), if the owner is an operator'), ('webhooks', "webhooks: create, change, delete the owner's webhooks, rotate secrets, redeliver")], max_length=16), default=list, size=None),
        ),
        migrations.RunSQL(
            "UPDATE accounts_apikey SET scopes = array_append(scopes, 'webhooks') "
            "WHERE scopes @> ARRAY['read', 'submit']::varchar[] AND NOT scopes @> ARRAY['webhooks']::varchar[]",
            "UPDATE accounts_apikey SET scopes = array_remove(scopes, 'webhooks')",
        ),
    ]
