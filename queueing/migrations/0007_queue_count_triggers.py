"""Statement-level triggers on jobs_task that keep queueing_queuecount exact (see QueueCount).

One INSERT … SELECT per statement, deltas grouped by (queue, status) and applied in that order, so
two transactions always take counter-row locks in the same order. The stripe is the backend's pid
modulo 8: a worker's connection keeps to its own counter rows.
"""
from django.db import migrations

ACTIVE = "('PENDING', 'QUEUED', 'RUNNING')"

UPSERT = """
    INSERT INTO queueing_queuecount (queue, status, stripe, n)
    SELECT queue, status, mod(pg_backend_pid(), 8), sum(d) FROM ({deltas}) x
    GROUP BY queue, status HAVING sum(d) <> 0 ORDER BY queue, status
    ON CONFLICT (queue, status, stripe) DO UPDATE SET n = queueing_queuecount.n + EXCLUDED.n;
"""

FORWARD = f"""
CREATE FUNCTION conveyor_queuecount_ins() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
{UPSERT.format(deltas=f"SELECT queue, status, 1 AS d FROM new_rows WHERE status IN {ACTIVE}")}
    RETURN NULL;
END $$;

CREATE FUNCTION conveyor_queuecount_del() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
{UPSERT.format(deltas=f"SELECT queue, status, -1 AS d FROM old_rows WHERE status IN {ACTIVE}")}
    RETURN NULL;
END $$;

CREATE FUNCTION conveyor_queuecount_upd() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
{UPSERT.format(deltas=f'''
        SELECT o.queue, o.status, -1 AS d FROM old_rows o JOIN new_rows n ON n.id = o.id
        WHERE (o.status, o.queue) IS DISTINCT FROM (n.status, n.queue) AND o.status IN {ACTIVE}
        UNION ALL
        SELECT n.queue, n.status, 1 AS d FROM old_rows o JOIN new_rows n ON n.id = o.id
        WHERE (o.status, o.queue) IS DISTINCT FROM (n.status, n.queue) AND n.status IN {ACTIVE}''')}
    RETURN NULL;
END $$;

CREATE TRIGGER conveyor_queuecount_ins AFTER INSERT ON jobs_task
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION conveyor_queuecount_ins();
CREATE TRIGGER conveyor_queuecount_del AFTER DELETE ON jobs_task
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION conveyor_queuecount_del();
CREATE TRIGGER conveyor_queuecount_upd AFTER UPDATE ON jobs_task
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION conveyor_queuecount_upd();

-- Existing rows (an upgrade): one full count, once.
INSERT INTO queueing_queuecount (queue, status, stripe, n)
SELECT queue, status, 0, count(*) FROM jobs_task WHERE status IN {ACTIVE} GROUP BY queue, status;
"""

BACKWARD = """
DROP TRIGGER IF EXISTS conveyor_queuecount_ins ON jobs_task;
DROP TRIGGER IF EXISTS conveyor_queuecount_del ON jobs_task;
DROP TRIGGER IF EXISTS conveyor_queuecount_upd ON jobs_task;
DROP FUNCTION IF EXISTS conveyor_queuecount_ins();
DROP FUNCTION IF EXISTS conveyor_queuecount_del();
DROP FUNCTION IF EXISTS conveyor_queuecount_upd();
DELETE FROM queueing_queuecount;
"""


class Migration(migrations.Migration):
    dependencies = [("queueing", "0006_queue_counts"), ("jobs", "0003_pending_created_index")]
    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
