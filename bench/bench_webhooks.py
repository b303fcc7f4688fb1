"""Webhook delivery benchmark (issue 4): deliveries per second to a healthy local receiver, and task
throughput with 0 and with 3 ``task.*`` webhooks subscribed.

Real processes: a prefork Celery worker (``-Q default -c 2``, with beat) runs tasks, a thread-pool
worker (``-Q webhooks -P threads``) delivers, and a threading HTTP/1.1 receiver on 127.0.0.1 answers
204. Uses its own database (``BENCH_WEBHOOKS_DATABASE_URL``, default ``conveyor_webhooks_bench``) and
Redis DB 12. ``python -m bench.bench_webhooks --deliveries 2000 --tasks 300`` writes
``bench/results/webhooks-<time>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
ENV = {
    "DJANGO_SETTINGS_MODULE": "tests.settings",  # short retry timings; WEBHOOK_ALLOWED_NETWORKS=127.0.0.0/8
    "DATABASE_URL": os.environ.get("BENCH_WEBHOOKS_DATABASE_URL",
                                   "postgres://postgres@127.0.0.1:5432/conveyor_webhooks_bench"),
    "REDIS_URL": os.environ.get("BENCH_WEBHOOKS_REDIS_URL", "redis://127.0.0.1:6379/12"),
    "CHANNEL_PREFIX": "conveyor-bench-webhooks",
    "PYTHONUNBUFFERED": "1",
}


class Receiver:
    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver.lock:
                    receiver.count += 1
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def start_worker(args: list[str], name: str) -> subprocess.Popen[bytes]:
    log = RESULTS / "logs" / f"webhooks-bench-{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "config", "worker", *args, "-n", f"{name}@%h",
                             "-l", "warning", "--without-mingle", "--without-gossip"],
                            cwd=ROOT, env={**os.environ, **ENV}, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    time.sleep(6)  # -l warning prints no "ready."; the first message waits in the broker meanwhile
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def wait(predicate: Any, timeout: float = 600) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError
        time.sleep(0.05)
    return time.monotonic() - start


def deliveries_per_second(user: Any, receiver: Receiver, n: int) -> dict[str, Any]:
    from django.db import transaction
    from django.utils import timezone as tz

    from webhooks import outbox, services
    from webhooks.models import Delivery

    sub = services.subscribe(owner=user, url=receiver.url, events=["queue.*"]) if user.is_staff else None
    assert sub is not None
    now = tz.now()
    rows = [Delivery(subscription=sub, event="queue.paused", next_attempt_at=now, sent_at=now,
                     payload={"event": "queue.paused", "queue": "bench", "paused": True, "data": {"i": i},
                              "timestamp": now.isoformat()}) for i in range(n)]
    with transaction.atomic():
        Delivery.objects.bulk_create(rows)
    start = time.monotonic()
    outbox.send([str(r.id) for r in rows])
    sent = time.monotonic() - start
    elapsed = wait(lambda: not Delivery.objects.filter(subscription=sub, status="PENDING").exists())
    elapsed += sent
    ok = Delivery.objects.filter(subscription=sub, status="SUCCEEDED").count()
    sub.delete()
    return {"deliveries": n, "succeeded": ok, "seconds": round(elapsed, 3), "per_second": round(n / elapsed, 1)}


def task_throughput(user: Any, receiver: Receiver, n: int, hooks: int) -> dict[str, Any]:
    from jobs import services
    from jobs.models import Task
    from webhooks import services as webhooks
    from webhooks.models import Delivery, Subscription

    Subscription.objects.filter(owner=user).delete()
    for _ in range(hooks):
        webhooks.subscribe(owner=user, url=receiver.url, events=["task.*"])
    spec = services.build_spec(algorithm="demo.noop")
    before = receiver.count
    start = time.monotonic()
    tasks, _ = services.submit_batch(owner=user, specs=[spec] * n)
    ids = [t.id for t in tasks]
    done = wait(lambda: Task.objects.filter(id__in=ids, status="SUCCEEDED").count() == n)
    delivered = wait(lambda: not Delivery.objects.filter(task_id__in=ids, status="PENDING").exists()) + done \
        if hooks else done
    return {"tasks": n, "webhooks": hooks, "tasks_seconds": round(done, 3), "tasks_per_second": round(n / done, 1),
            "all_delivered_seconds": round(delivered, 3), "requests": receiver.count - before,
            "deliveries_per_second_during_run": round((receiver.count - before) / delivered, 1) if hooks else 0}


def task_throughput_outbox_only(user: Any, receiver: Receiver, n: int) -> dict[str, Any]:
    from jobs import services
    from jobs.models import Task
    from webhooks import services as webhooks
    from webhooks.models import Delivery, Subscription

    Subscription.objects.filter(owner=user).delete()
    for _ in range(3):
        webhooks.subscribe(owner=user, url=receiver.url, events=["task.*"])
    spec = services.build_spec(algorithm="demo.noop")
    start = time.monotonic()
    tasks, _ = services.submit_batch(owner=user, specs=[spec] * n)
    ids = [t.id for t in tasks]
    done = wait(lambda: Task.objects.filter(id__in=ids, status="SUCCEEDED").count() == n)
    return {"tasks": n, "webhooks": 3, "tasks_seconds": round(done, 3), "tasks_per_second": round(n / done, 1),
            "deliveries_written": Delivery.objects.filter(task_id__in=ids).count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--threads", type=int, default=16, help="webhooks worker threads")
    opts = parser.parse_args()

    from bench.harness import ensure_database

    ensure_database(ENV["DATABASE_URL"])
    os.environ.update(ENV)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    import redis
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    user, _ = User.objects.get_or_create(username="bench-webhooks", defaults={"is_staff": True})
    receiver = Receiver()
    out: dict[str, Any] = {"when": datetime.now(timezone.utc).isoformat(), "cpus": os.cpu_count(),
                           "threads": opts.threads}
    from webhooks.models import Delivery

    hooks_worker = start_worker(["-Q", "webhooks", "-P", "threads", "-c", str(opts.threads)], "bench-hooks")
    try:
        out["delivery"] = deliveries_per_second(user, receiver, opts.deliveries)
        print("deliveries (independent, one endpoint):", out["delivery"], flush=True)
    finally:
        stop(hooks_worker)
    tasks_worker = start_worker(["-Q", "default", "-c", "2", "-B", "-s", "/tmp/webhooks-bench-beat"], "bench-tasks")
    runs = out["tasks"] = []
    try:
        task_throughput(user, receiver, 20, 0)  # warm-up
        runs.append({"mode": "no webhooks", **task_throughput(user, receiver, opts.tasks, 0)})
        # Outbox only: 3 webhooks subscribed, deliveries written and queued, no deliverer running.
        row = task_throughput_outbox_only(user, receiver, opts.tasks)
        runs.append({"mode": "3 webhooks, deliverer stopped (write side only)", **row})
        hooks_worker = start_worker(["-Q", "webhooks", "-P", "threads", "-c", str(opts.threads)], "bench-hooks")
        try:
            backlog = Delivery.objects.filter(status="PENDING").count()
            before = receiver.count
            drained = wait(lambda: not Delivery.objects.filter(status="PENDING").exists())
            out["backlog_drain"] = {"deliveries": backlog, "requests": receiver.count - before,
                                    "seconds": round(drained, 3), "per_second": round(backlog / drained, 1)}
            print("backlog drain (per-task ordered):", out["backlog_drain"], flush=True)
            runs.append({"mode": "3 webhooks, deliverer running beside", **task_throughput(user, receiver, opts.tasks, 3)})
        finally:
            stop(hooks_worker)
        runs.append({"mode": "no webhooks (again)", **task_throughput(user, receiver, opts.tasks, 0)})
        for row in runs:
            print("tasks:", row, flush=True)
    finally:
        stop(tasks_worker)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"webhooks-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(out, indent=2))
    print("wrote", path)


if __name__ == "__main__":
    main()
