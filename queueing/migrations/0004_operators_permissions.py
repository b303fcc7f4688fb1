"""The ``operators`` group gets the admin permissions it needs: see and change queues and tasks
(the admin's pause/resume, cancel/retry/priority actions), see task events and workers."""
from django.db import migrations

PERMISSIONS = [
    ("queueing", "queue", ["view", "change"]),
    ("queueing", "workerrecord", ["view"]),
    ("jobs", "task", ["view", "change"]),
    ("jobs", "taskevent", ["view"]),
]


def grant(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    # Permissions are normally created after all migrations ran; create them now so they can be granted.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name="operators")
    for app_label, model, actions in PERMISSIONS:
        codenames = [f"{action}_{model}" for action in actions]
        group.permissions.add(*Permission.objects.filter(content_type__app_label=app_label, codename__in=codenames))


class Migration(migrations.Migration):
    dependencies = [
        ("queueing", "0003_queue_fairness_worker_record"),
        ("jobs", "0002_task_queue_order"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(grant, migrations.RunPython.noop)]
