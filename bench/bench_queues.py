"""Queue-control benchmark (issue 3): dispatch latency on an idle worker, and how the operator/statistics
reads hold up with 1,000,000 task rows.

1. Dispatch latency: ``demo.noop`` submitted one at a time through the service layer (as the API
   does), on an idle prefork worker (``-Q default -c 2``); latency = ``started_at - created_at`` of
   each row (both stamped from the same clock). Measured on an empty table and again with ``--rows`` loaded.
2. Reads at 1M rows: p50/p95/p99 of ``GET /api/v1/statistics/tasks/?window=1h``, ``/queues/``,
   ``/queues/default/``, ``/queues/default/tasks/``, ``/tasks/`` (list), ``/tasks/{id}/`` of a waiting
   task (its position is counted), ``/system/stats/``, and one ``dispatch()`` pass, in-process through
   DRF's test client (no HTTP server: this measures the Django/PostgreSQL side).

The 1M rows: 100,000 PENDING in ``default`` (100 owners, priorities 0–9, round-robin numbers), the rest
finished over the last 7 days (about 6,000 in the last hour; 3 % FAILED).

Own database (``BENCH_QUEUES_DATABASE_URL``, default ``conveyor_queues_bench``, recreated) and Redis DB 11.
``python -m bench.bench_queues --rows 1000000 --latency 200`` writes ``bench/results/queues-<time>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone as dt_timezone
from pathlib import Path
from typing import Any

from bench.stats import pct

ROOT = Path(__file__).resolve().parent.parent
DB_URL = os.environ.get("BENCH_QUEUES_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/conveyor_queues_bench")
REDIS_URL = os.environ.get("BENCH_QUEUES_REDIS_URL", "redis://127.0.0.1:6379/11")


def summary(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50_ms": round(pct(ms, 50), 2), "p95_ms": round(pct(ms, 95), 2),
            "p99_ms": round(pct(ms, 99), 2), "max_ms": round(max(ms), 2)}


def setup_env() -> None:
    os.environ.update(DJANGO_SETTINGS_MODULE="tests.settings", DATABASE_URL=DB_URL, REDIS_URL=REDIS_URL,
                      CHANNEL_PREFIX="conveyor-bench-queues", LOG_LEVEL="WARNING")
    sys.path.insert(0, str(ROOT))


def recreate_database() -> None:
    from bench.harness import ensure_database

    ensure_database(DB_URL, recreate=True)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True, env=os.environ)


class Worker:
    def __init__(self, queues: str) -> None:
        self.queues = queues
        self.log = ROOT / "bench" / "results" / f"queues-worker-{queues}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        from queueing.selectors import consumed_queues

        cmd = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", self.queues, "-c", "2",
               "-n", f"bench-{self.queues}-{os.getpid()}@%h", "-l", "warning", "--without-mingle", "--without-gossip"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=os.environ, stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while self.queues not in consumed_queues():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text()[-3000:])
            time.sleep(0.2)
        time.sleep(1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=60)
            self.proc = None


def dispatch_latency(n: int, owner: Any, queue: str) -> dict[str, float]:
    """Submit → RUNNING, one task at a time on an idle worker."""
    from jobs import services
    from jobs.models import Status, Task

    spec = services.build_spec(algorithm="demo.noop", queue=queue)
    latencies, to_queued = [], []
    for _ in range(n):
        task, _ = services.submit(owner=owner, spec=spec)
        deadline = time.monotonic() + 30
        while True:
            row = Task.objects.filter(id=task.id).values_list("status", "created_at", "started_at", "queued_at").first()
            if row[2] is not None:
                latencies.append((row[2] - row[1]).total_seconds())
                to_queued.append((row[3] - row[1]).total_seconds())
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"task {task.id} did not start: {row[0]}")
            time.sleep(0.0005)
        while Task.objects.filter(id=task.id, status__in=[Status.RUNNING, Status.QUEUED]).exists():
            time.sleep(0.001)  # idle worker again before the next submit
    return {**summary(latencies), "submit_to_queued": summary(to_queued)}


def load_rows(rows: int) -> None:
    """``rows`` tasks in one INSERT … SELECT: 10 % PENDING, the rest finished over 7 days."""
    from django.contrib.auth.models import User
    from django.db import connection

    from jobs.models import Task

    users = [User.objects.create_user(f"load{i}") for i in range(100)]
    ids = [u.id for u in users]
    pending = rows // 10
    given = {
        "id": "gen_random_uuid()",
        "owner_id": "(%(owners)s::int[])[1 + g %% 100]",
        "algorithm": "(ARRAY['demo.noop','demo.hello','demo.sleep'])[1 + g %% 3]",
        "queue": "'default'",
        "priority": "g %% 10",
        "status": "CASE WHEN g <= %(pending)s THEN 'PENDING' WHEN g %% 33 = 0 THEN 'FAILED' ELSE 'SUCCEEDED' END",
        "created_at": "CASE WHEN g <= %(pending)s THEN now() - (g * interval '1 ms') "
                      "ELSE now() - ((g - %(pending)s) * (interval '7 days' / %(finished)s)) - interval '3 s' END",
        "started_at": "CASE WHEN g <= %(pending)s THEN NULL ELSE now() - ((g - %(pending)s) * (interval '7 days' / %(finished)s)) - interval '2 s' END",
        "finished_at": "CASE WHEN g <= %(pending)s THEN NULL ELSE now() - ((g - %(pending)s) * (interval '7 days' / %(finished)s)) END",
        "fair_seq": "CASE WHEN g <= %(pending)s THEN 1 + g / 100 ELSE 0 END",
        "attempts": "CASE WHEN g <= %(pending)s THEN 0 ELSE 1 END",
        "last_seq": "3",
    }
    columns, exprs, params = [], [], {"owners": ids, "pending": pending, "finished": max(1, rows - pending)}
    for field in Task._meta.concrete_fields:
        columns.append(field.column)
        if field.column in given:
            exprs.append(given[field.column])
        elif field.null:
            exprs.append("NULL")
        else:
            key = f"d_{field.column}"
            params[key] = field.get_db_prep_save(field.get_default(), connection)
            exprs.append(f"%({key})s")
    sql = (f"INSERT INTO jobs_task ({', '.join(columns)}) SELECT {', '.join(exprs)} "
           f"FROM generate_series(1, %(rows)s) AS g")
    params["rows"] = rows
    with connection.cursor() as cur:
        cur.execute(sql, params)
        cur.execute("ANALYZE jobs_task")


def time_reads(repeat: int) -> dict[str, dict[str, float]]:
    from django.contrib.auth.models import Group, User
    from rest_framework.test import APIClient

    from jobs.models import Status, Task
    from queueing import dispatch

    olga = User.objects.create_user("olga-bench", password="pw")
    olga.groups.add(Group.objects.get(name="operators"))
    client = APIClient()
    client.force_authenticate(olga)
    waiting = Task.objects.filter(status=Status.PENDING).order_by("created_at").values_list("id", flat=True)[min(5000, Task.objects.filter(status=Status.PENDING).count() - 1)]
    urls = {
        "statistics_1h": "/api/v1/statistics/tasks/?window=1h",
        "queues_list": "/api/v1/queues/",
        "queue_detail": "/api/v1/queues/default/",
        "queue_waiting_list": "/api/v1/queues/default/tasks/?limit=100",
        "tasks_list": "/api/v1/tasks/",
        "task_detail_waiting": f"/api/v1/tasks/{waiting}/",
        "system_stats": "/api/v1/system/stats/",
    }
    out = {}
    for name, url in urls.items():
        client.get(url)  # warm caches and connections
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            response = client.get(url)
            samples.append(time.perf_counter() - started)
            assert response.status_code == 200, (url, response.content[:300])
        out[name] = summary(samples)
    from queueing.models import Queue

    Queue.objects.filter(name="default").update(paused=False, concurrency=10**6)
    samples = []
    for _ in range(repeat):  # each pass moves 1 task: a worst case of "find the head among 100k"
        Queue.objects.filter(name="default").update(concurrency=Task.objects.filter(status__in=["QUEUED", "RUNNING"]).count() + 1)
        started = time.perf_counter()
        dispatch._dispatch_queue("default")
        samples.append(time.perf_counter() - started)
    out["dispatch_pass"] = summary(samples)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--latency", type=int, default=200, help="tasks for the dispatch latency")
    parser.add_argument("--repeat", type=int, default=50, help="requests per read endpoint")
    parser.add_argument("--reads-only", action="store_true",
                        help="only the read timings, on the database a previous run loaded")
    args = parser.parse_args()
    setup_env()
    if args.reads_only:
        import django

        django.setup()
        from django.contrib.auth.models import User

        User.objects.filter(username="olga-bench").delete()
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True, env=os.environ)
        reads = time_reads(args.repeat)
        for name, s in reads.items():
            print(f"{name:22s} {s}", flush=True)
        out = ROOT / "bench" / "results" / f"queues-reads-{datetime.now():%Y%m%d-%H%M%S}.json"
        out.write_text(json.dumps({"reads": reads, "when": datetime.now(dt_timezone.utc).isoformat()}, indent=2))
        print("wrote", out)
        return
    recreate_database()
    import django

    django.setup()
    from django.contrib.auth.models import User

    from queueing.models import Queue

    results: dict[str, Any] = {"rows": args.rows, "when": datetime.now(dt_timezone.utc).isoformat(),
                               "cpus": os.cpu_count()}
    owner = User.objects.create_user("latency")
    Queue.objects.get_or_create(name="lat")
    worker = Worker("lat")

    def measure_latency(key: str, label: str) -> None:
        worker.start()
        try:
            results[key] = dispatch_latency(args.latency, owner, "lat")
            print(f"dispatch latency, {label}:", results[key], flush=True)
        finally:
            worker.stop()

    measure_latency("dispatch_latency_empty", "empty table")
    started = time.monotonic()
    load_rows(args.rows)
    results["load_seconds"] = round(time.monotonic() - started, 1)
    print(f"loaded {args.rows} rows in {results['load_seconds']} s", flush=True)
    # The same measure with the rows in the table (a tenth of them waiting, paused, in ``default``).
    Queue.objects.filter(name="default").update(paused=True)
    measure_latency("dispatch_latency_loaded", f"{args.rows:,} rows in the table")
    Queue.objects.filter(name="default").update(paused=False)
    results["reads_loaded"] = time_reads(args.repeat)
    for name, s in results["reads_loaded"].items():
        print(f"{name:22s} {s}", flush=True)
    out = ROOT / "bench" / "results" / f"queues-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(results, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
