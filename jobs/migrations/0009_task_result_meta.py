from django.db import migrations, models, transaction

# What the task list says about an inline result (``result_meta``), kept by PostgreSQL next to it: computed
# whenever ``result`` (or one of these columns) is written, by any writer, so the columns always describe
# the row's own result. ``result::text`` is what ``/result/`` serves as its ``result`` member; the summary
# is ``algorithms.artifacts.summarize()`` of the value (its first 20 keys in jsonb's order, which is the
# order the value has when read into Python). A JSON null is no result.
CREATE = r"""
CREATE FUNCTION jobs_task_result_meta() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    body bytea;
BEGIN
    IF NEW.result IS NULL OR jsonb_typeof(NEW.result) = 'null' THEN
        NEW.result_size := NULL;
        NEW.result_sha256 := NULL;
        NEW.result_summary := NULL;
        RETURN NEW;
    END IF;
    body := convert_to(NEW.result::text, 'UTF8');
    NEW.result_size := octet_length(body);
    NEW.result_sha256 := encode(sha256(body), 'hex');
    NEW.result_summary := CASE jsonb_typeof(NEW.result)
        WHEN 'object' THEN jsonb_build_object(
            'type', 'object',
            'keys', COALESCE((SELECT jsonb_agg(k ORDER BY n)
                              FROM jsonb_object_keys(NEW.result) WITH ORDINALITY AS o(k, n) WHERE n <= 20),
                             '[]'::jsonb),
            'length', (SELECT count(*) FROM jsonb_object_keys(NEW.result)))
        WHEN 'array' THEN jsonb_build_object('type', 'array', 'length', jsonb_array_length(NEW.result))
        WHEN 'string' THEN jsonb_build_object('type', 'str')
        WHEN 'boolean' THEN jsonb_build_object('type', 'bool')
        ELSE jsonb_build_object('type', CASE WHEN strpos(NEW.result::text, '.') > 0 THEN 'float' ELSE 'int' END)
    END;
    RETURN NEW;
END
$$;

-- A new task has no result (a submit's INSERT, thousands a second): not even a call of the function.
CREATE TRIGGER jobs_task_result_meta_insert
    BEFORE INSERT ON jobs_task
    FOR EACH ROW WHEN (NEW.result IS NOT NULL) EXECUTE FUNCTION jobs_task_result_meta();
CREATE TRIGGER jobs_task_result_meta
    BEFORE UPDATE OF result, result_size, result_sha256, result_summary ON jobs_task
    FOR EACH ROW EXECUTE FUNCTION jobs_task_result_meta();
"""

DROP = """
DROP TRIGGER IF EXISTS jobs_task_result_meta_insert ON jobs_task;
DROP TRIGGER IF EXISTS jobs_task_result_meta ON jobs_task;
DROP FUNCTION IF EXISTS jobs_task_result_meta();
"""

BATCH = 2000


def backfill(apps, schema_editor):
    """The inline results already there (at most RESULT_TTL_DAYS of them, each at most RESULT_INLINE_MAX):
    rewritten onto themselves, so the trigger fills their columns.

    A few thousand rows at a time in primary-key order, each batch its own short transaction: only the
    batch's rows are locked, and only while they are written. Walking by id visits each row once, also
    one whose result is a JSON null (its columns stay NULL, so they cannot tell what is left to do)."""
    connection = schema_editor.connection
    last = None
    while True:
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            after = "" if last is None else "AND id > %s "
            cursor.execute(
                f"SELECT id FROM jobs_task WHERE result IS NOT NULL {after}ORDER BY id LIMIT %s FOR NO KEY UPDATE",
                [BATCH] if last is None else [last, BATCH],
            )
            ids = [row[0] for row in cursor.fetchall()]
            if not ids:
                return
            cursor.execute("UPDATE jobs_task SET result = result WHERE id = ANY(%s)", [ids])
        last = ids[-1]


class Migration(migrations.Migration):
    # Each step commits on its own: the columns (nullable, added at once) and the trigger, before the
    # backfill, which then never runs under the ALTER TABLE's lock (that stops every read and write of
    # jobs_task). A result written meanwhile gets its columns from the trigger; the backfill does the rest.
    atomic = False

    dependencies = [
        ("jobs", "0008_task_owner_order_index"),
    ]

    operations = [
        migrations.AddField(
            model_name="task", name="result_size",
            field=models.BigIntegerField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="task", name="result_sha256",
            field=models.CharField(blank=True, editable=False, max_length=64, null=True),
        ),
        migrations.AddField(
            model_name="task", name="result_summary",
            field=models.JSONField(blank=True, editable=False, null=True),
        ),
        migrations.RunSQL(CREATE, DROP),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
