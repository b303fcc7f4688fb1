"""Statement-level triggers on jobs_task that keep queueing_taskminutecount exact (see TaskMinuteCount).

Same shape as 0007: one grouped, ordered upsert per statement; stripe = backend pid modulo 8.
"""
from django.db import migrations

KEY = "date_trunc('minute', created_at)"

UPSERT = """
    INSERT INTO queueing_taskminutecount (minute, queue, algorithm, status, stripe, n)
    SELECT minute, queue, algorithm, status, mod(pg_backend_pid(), 8), sum(d) FROM ({deltas}) x
    GROUP BY minute, queue, algorithm, status HAVING sum(d) <> 0 ORDER BY minute, queue, algorithm, status
    ON CONFLICT (minute, queue, algorithm, status, stripe) DO UPDATE SET n = queueing_taskminutecount.n + EXCLUDED.n;
"""

FORWARD = f"""
CREATE FUNCTION conveyor_minutecount_ins() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
{UPSERT.format(deltas=f"SELECT {KEY} AS minute, queue, algorithm, status, 1 AS d FROM new_rows")}
    RETURN NULL;
END $$;

CREATE FUNCTION conveyor_minutecount_del() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
{UPSERT.format(deltas=f"SELECT {KEY} AS minute, queue, algorithm, status, -1 AS d FROM old_rows")}
    RETURN NULL;
END $$;

CREATE FUNCTION conveyor_minutecount_upd() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
{UPSERT.format(deltas='''
        SELECT date_trunc('minute', o.created_at) AS minute, o.queue, o.algorithm, o.status, -1 AS d
        FROM old_rows o JOIN new_rows n ON n.id = o.id
        WHERE (o.status, o.queue, o.algorithm, o.created_at) IS DISTINCT FROM (n.status, n.queue, n.algorithm, n.created_at)
        UNION ALL
        SELECT date_trunc('minute', n.created_at), n.queue, n.algorithm, n.status, 1
        FROM old_rows o JOIN new_rows n ON n.id = o.id
        WHERE (o.status, o.queue, o.algorithm, o.created_at) IS DISTINCT FROM (n.status, n.queue, n.algorithm, n.created_at)''')}
    RETURN NULL;
END $$;

CREATE TRIGGER conveyor_minutecount_ins AFTER INSERT ON jobs_task
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION conveyor_minutecount_ins();
CREATE TRIGGER conveyor_minutecount_del AFTER DELETE ON jobs_task
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION conveyor_minutecount_del();
CREATE TRIGGER conveyor_minutecount_upd AFTER UPDATE ON jobs_task
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION conveyor_minutecount_upd();

-- Existing rows (an upgrade): one full count, once.
INSERT INTO queueing_taskminutecount (minute, queue, algorithm, status, stripe, n)
SELECT {KEY}, queue, algorithm, status, 0, count(*) FROM jobs_task GROUP BY 1, 2, 3, 4;
"""

BACKWARD = """
DROP TRIGGER IF EXISTS conveyor_minutecount_ins ON jobs_task;
DROP TRIGGER IF EXISTS conveyor_minutecount_del ON jobs_task;
DROP TRIGGER IF EXISTS conveyor_minutecount_upd ON jobs_task;
DROP FUNCTION IF EXISTS conveyor_minutecount_ins();
DROP FUNCTION IF EXISTS conveyor_minutecount_del();
DROP FUNCTION IF EXISTS conveyor_minutecount_upd();
DELETE FROM queueing_taskminutecount;
"""


class Migration(migrations.Migration):
    dependencies = [("queueing", "0008_task_minute_counts")]
    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
