from django.db import migrations


def create_defaults(apps, schema_editor):
    Queue = apps.get_model("queueing", "Queue")
    Queue.objects.get_or_create(name="default", defaults={"description": "Tasks with no other home"})
    Group = apps.get_model("auth", "Group")
    Group.objects.get_or_create(name="operators")


class Migration(migrations.Migration):
    dependencies = [("queueing", "0001_initial"), ("auth", "0012_alter_user_first_name_max_length")]
    operations = [migrations.RunPython(create_defaults, migrations.RunPython.noop)]
