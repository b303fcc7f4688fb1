"""Conveyor against raw Celery on the same broker, worker pool and concurrency, in one run.

1. End-to-end throughput: ``demo.noop`` submitted through ``POST /api/v1/tasks/batch/`` until every
   task is SUCCEEDED, against raw Celery no-op tasks (``bench.noop``) sent with ``send_task``.
2. Dispatch latency on an idle worker: submit (the row's ``created_at``) → RUNNING (``started_at``),
   one task at a time, against raw Celery's send → task start.
3. Submit API: single submits at concurrency 1/16/64 against a bare one-INSERT endpoint in the same
   daphne server (the worker is stopped meanwhile; the submit queue is never consumed).

Before each measured phase the database is vacuumed and analysed (``vacuum_analyze``), as autovacuum
would have done by then in production. Run ``python -m bench.bench_throughput --help``; ``make bench``
runs it on Redis and RabbitMQ and writes ``bench/results/throughput-<time>.json`` and the tables in
``docs/benchmarks.md``.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import harness, loadgen
from bench.stats import pct

FINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class Broker:
    """Raw Celery sends on one broker (the baseline), and a probe that the worker is consuming."""

    def __init__(self, url: str) -> None:
        from celery import Celery

        self.app = Celery("bench-client", broker=url)
        self.app.conf.update(task_serializer="json", accept_content=["json"], broker_connection_retry_on_startup=True)

    def send(self, name: str, args: list[Any]) -> None:
        self.app.send_task(name, args=args, queue=harness.QUEUE)

    def close(self) -> None:
        self.app.close()


def redis_client() -> Any:
    import redis
    from django.conf import settings

    return redis.Redis.from_url(settings.REDIS_URL)


def post(client: Any, path: str, body: dict[str, Any], tries: int = 20) -> Any:
    """POST like a well-behaved client: a 503 (the shared PostgreSQL out of connections) is retried."""
    for _ in range(tries):
        response = client.post(path, json=body)
        if response.status_code != 503:
            break
        time.sleep(float(response.headers.get("Retry-After", 1)) / 5)
    assert response.status_code == 201, response.text
    return response


def wait_for(predicate: Any, *, timeout: float, interval: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_worker_ready(broker: Broker, worker: harness.Process) -> None:
    r = redis_client()
    run = f"probe-{uuid.uuid4().hex[:6]}"
    deadline = time.monotonic() + 120
    while not broker.app.control.ping(timeout=1.0):  # consuming, on any broker (a probe sent earlier may be lost)
        if not worker.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not answer a ping:\n{worker.tail()}")
    while time.monotonic() < deadline:
        if not worker.alive():
            raise RuntimeError(f"worker exited:\n{worker.tail()}")
        broker.send("bench.noop", [run])
        try:
            wait_for(lambda: r.get(f"bench:{run}:done"), timeout=2, interval=0.05, what="probe")
            return
        except TimeoutError:
            continue
    raise RuntimeError(f"worker never consumed a probe:\n{worker.tail()}")


# --- 1. throughput ----------------------------------------------------------------------------

def raw_throughput(broker: Broker, n: int) -> dict[str, Any]:
    r = redis_client()
    run = f"raw-{uuid.uuid4().hex[:8]}"
    start = time.time()
    for _ in range(n):
        broker.send("bench.noop", [run])
    sent = time.time()
    wait_for(lambda: int(r.get(f"bench:{run}:done") or 0) >= n, timeout=max(120, n / 20), interval=0.02,
             what=f"{n} raw Celery tasks")
    end = float(r.get(f"bench:{run}:last"))
    return {"tasks": n, "seconds": round(end - start, 4), "send_seconds": round(sent - start, 4),
            "tasks_per_second": round(n / (end - start), 1)}


def conveyor_throughput(client: Any, n: int, batch: int, queue: str = harness.QUEUE) -> dict[str, Any]:
    from django.db.models import Max

    from jobs.models import Task

    label = f"tp-{uuid.uuid4().hex[:8]}"
    start = time.time()
    for offset in range(0, n, batch):
        size = min(batch, n - offset)
        post(client, "/api/v1/tasks/batch/", {"tasks": [{"algorithm": "demo.noop", "queue": queue, "labels": [label]}] * size})
    submitted = time.time()
    tasks = Task.objects.filter(labels__contains=[label])
    wait_for(lambda: tasks.filter(status__in=FINAL).count() >= n, timeout=max(300, n / 5), interval=0.1,
             what=f"{n} Conveyor tasks")
    counts = {s: c for s in FINAL if (c := tasks.filter(status=s).count())}
    if counts != {"SUCCEEDED": n}:  # a failed no-op is a broken run, not throughput
        raise RuntimeError(f"{n} demo.noop tasks on {queue} ended {counts}, not all SUCCEEDED")
    end = tasks.aggregate(end=Max("finished_at"))["end"].timestamp()
    return {"tasks": n, "seconds": round(end - start, 4), "submit_seconds": round(submitted - start, 4),
            "tasks_per_second": round(n / (end - start), 1), "final_states": counts}


def throughput(broker: Broker, client: Any, *, n: int, batch: int, rounds: int, settle: Callable[[], None]) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"raw_celery": [], "conveyor": [], "conveyor_batched": [], "conveyor_deep": []}
    for _ in range(rounds):  # interleaved, so a noisy neighbour hurts all sides alike
        settle()
        runs["raw_celery"].append(raw_throughput(broker, n))
        for name, queue in (("conveyor", harness.QUEUE), ("conveyor_batched", harness.BATCH_QUEUE),
                            ("conveyor_deep", harness.DEEP_QUEUE)):
            settle()
            runs[name].append(conveyor_throughput(client, n, batch, queue))
    best = {name: max(r, key=lambda x: x["tasks_per_second"]) for name, r in runs.items()}
    raw = best["raw_celery"]["tasks_per_second"]
    return {
        **best,
        "ratio": round(best["conveyor"]["tasks_per_second"] / raw, 3),
        "ratio_batched": round(best["conveyor_batched"]["tasks_per_second"] / raw, 3),
        "ratio_deep": round(best["conveyor_deep"]["tasks_per_second"] / raw, 3),
        "dispatch_batch": harness.DISPATCH_BATCH,
        "deep_batch": harness.DEEP_BATCH, "deep_window": harness.DEEP_WINDOW,
        "rounds": runs,
    }


# --- 2. dispatch latency ----------------------------------------------------------------------

def raw_latency(broker: Broker, n: int) -> list[float]:
    r = redis_client()
    run = f"lat-{uuid.uuid4().hex[:8]}"
    key = f"bench:{run}:lat"
    for i in range(n):
        broker.send("bench.stamp", [run, time.time()])
        wait_for(lambda: r.llen(key) > i, timeout=30, interval=0.0005, what="raw latency probe")
        time.sleep(0.002)
    return [float(x) for x in r.lrange(key, 0, -1)]


def conveyor_latency(client: Any, n: int) -> list[float]:
    from jobs.models import Task

    ids = []
    for _ in range(n):
        task_id = post(client, "/api/v1/tasks/", {"algorithm": "demo.noop", "queue": harness.QUEUE}).json()["id"]
        row = Task.objects.filter(id=task_id)
        # Poll gently: on 2 cores a 1 ms ORM poll competes with the very path it measures (the
        # figure itself is server-side, started_at - created_at).
        wait_for(lambda: row.filter(status__in=FINAL).exists(), timeout=30, interval=0.005, what="latency task")
        ids.append(task_id)
        time.sleep(0.002)
    rows = list(Task.objects.filter(id__in=ids).values_list("status", "created_at", "started_at"))
    if [status for status, _, _ in rows] != ["SUCCEEDED"] * n:
        raise RuntimeError(f"latency tasks ended {collections.Counter(status for status, _, _ in rows)}, not all SUCCEEDED")
    return [(started - created).total_seconds() for _, created, started in rows]


def summary(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50_ms": ms(pct(values, 50)), "p99_ms": ms(pct(values, 99)),
            "mean_ms": ms(statistics.fmean(values)) if values else None, "max_ms": ms(max(values)) if values else None}


def latency(broker: Broker, client: Any, *, n: int) -> dict[str, Any]:
    raw = summary(raw_latency(broker, n))
    conv = summary(conveyor_latency(client, n))
    return {"raw_celery": raw, "conveyor": conv,
            "ratio_p50": round(conv["p50_ms"] / raw["p50_ms"], 2), "ratio_p99": round(conv["p99_ms"] / raw["p99_ms"], 2)}


# --- 3. submit API ----------------------------------------------------------------------------

def submit_api(port: int, token: str, *, levels: list[int], seconds: float) -> dict[str, Any]:
    body = {"algorithm": "demo.noop", "queue": harness.SUBMIT_QUEUE}
    submit = loadgen.request_bytes("POST", "/api/v1/tasks/", body, {"Authorization": f"Bearer {token}"})
    bare = loadgen.request_bytes("POST", "/bench/insert/", body)
    out: dict[str, Any] = {}
    for c in levels:
        row = {}
        for name, payload in (("bare_insert", bare), ("conveyor_submit", submit)):
            res = loadgen.run(port, payload, concurrency=c, seconds=seconds)
            row[name] = {"requests_per_second": round(res.rps, 1), "p50_ms": ms(pct(res.latencies, 50)),
                         "p99_ms": ms(pct(res.latencies, 99)), "requests": len(res.latencies),
                         "statuses": {str(k): v for k, v in res.statuses.items()}}
        row["ratio_rps"] = round(row["conveyor_submit"]["requests_per_second"] / row["bare_insert"]["requests_per_second"], 3)
        out[str(c)] = row
    return out


# --- the run ----------------------------------------------------------------------------------

def truncate() -> None:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("TRUNCATE jobs_task, bench_insert CASCADE")


def vacuum_analyze() -> None:
    """What autovacuum does in production, done by hand before each measured phase: this machine's
    PostgreSQL runs with ``autovacuum = off``. Without it the tables keep the statistics of the moment
    they were emptied (``truncate``), and the plans that the web's and the worker's connections prepared
    then (generic plans, kept per connection) stay in use while the tables fill with thousands of rows:
    that cost 1.5–2 ms per dispatch, a third of the dispatch latency (docs/benchmarks.md). ``VACUUM
    (ANALYZE)`` renews the statistics, and PostgreSQL plans each prepared statement again on its next
    use, as it does after every autoanalyze. ``--no-settle`` skips it, to see the difference."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("VACUUM (ANALYZE)")


def api_client(port: int) -> tuple[Any, str]:
    import httpx

    base = f"http://127.0.0.1:{port}"
    token = httpx.post(f"{base}/api/v1/auth/token/", json={"username": "bench", "password": "bench-password"}).json()["access"]
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120), token


def run_broker(name: str, args: argparse.Namespace, *, with_submit: bool) -> dict[str, Any]:
    url = harness.BROKERS[name]
    port = harness.free_port()
    web = harness.web(url, port)
    worker = harness.worker(url, concurrency=args.concurrency)
    if url.startswith("amqp://"):
        harness.ensure_rabbitmq_vhost(url)
    broker = Broker(url)
    settle = (lambda: None) if args.no_settle else vacuum_analyze
    out: dict[str, Any] = {"broker_url": url.replace("guest:guest@", ""), "settled": not args.no_settle}
    try:
        truncate()
        web.start()
        worker.start()
        harness.wait_http(port, proc=web)
        wait_worker_ready(broker, worker)
        client, token = api_client(port)
        print(f"[{name}] throughput: {args.tasks} tasks x {args.rounds} rounds", flush=True)
        idle = {"web": harness.rss_mb(web), "worker": harness.rss_mb(worker)}
        with harness.PeakRss({"web": web, "worker": worker}) as peak:
            out["throughput"] = throughput(broker, client, n=args.tasks, batch=args.batch, rounds=args.rounds,
                                           settle=settle)
        out["rss_mb"] = {"idle": idle, "peak_under_load": peak.peak}
        print(f"[{name}] {json.dumps({k: out['throughput'][k] for k in ('ratio', 'ratio_batched', 'ratio_deep')})}", flush=True)
        print(f"[{name}] dispatch latency: {args.latency_tasks} tasks", flush=True)
        settle()
        out["latency"] = latency(broker, client, n=args.latency_tasks)
        if with_submit:
            worker.stop()
            print(f"[{name}] submit API: concurrency {args.levels}", flush=True)
            settle()
            out["submit_api"] = submit_api(port, token, levels=args.levels, seconds=args.submit_seconds)
        client.close()
    finally:
        broker.close()
        worker.stop()
        web.stop()
    return out


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=harness.ROOT, text=True).strip()
    except Exception:
        return "unknown"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--brokers", default="redis,rabbitmq", help="comma list of: " + ", ".join(harness.BROKERS))
    p.add_argument("--tasks", type=int, default=2000, help="tasks per throughput round")
    p.add_argument("--rounds", type=int, default=2, help="interleaved throughput rounds (best of)")
    p.add_argument("--batch", type=int, default=500, help="tasks per batch submit")
    p.add_argument("--concurrency", type=int, default=2, help="worker pool size (prefork)")
    p.add_argument("--window", type=int, default=16, help="the benchmark queue's concurrency window")
    p.add_argument("--latency-tasks", type=int, default=500)
    p.add_argument("--levels", default="1,16,64", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--submit-seconds", type=float, default=8.0)
    p.add_argument("--no-submit", action="store_true", help="skip the submit API benchmark")
    p.add_argument("--no-settle", action="store_true",
                   help="no VACUUM (ANALYZE) before each measured phase (see vacuum_analyze)")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    p.add_argument("--json", help=argparse.SUPPRESS)  # one broker's part, for run_each_broker_alone
    return p.parse_args(argv)


def run_each_broker_alone(argv: list[str], brokers: list[str]) -> dict[str, Any]:
    """One process per broker: a second broker in the same process never got its worker's replies."""
    merged: dict[str, Any] = {}
    for i, name in enumerate(brokers):
        out = harness.RESULTS / f".part-{name}.json"
        extra = ["--no-submit"] if i else []
        subprocess.run([sys.executable, "-m", "bench.bench_throughput", *argv, "--brokers", name, "--no-docs",
                        "--json", str(out), *extra], cwd=harness.ROOT, check=True)
        part = json.loads(out.read_text())
        out.unlink()
        if not merged:
            merged = part
        else:
            merged["brokers"].update(part["brokers"])
            merged["meta"]["load_after"] = part["meta"]["load_after"]
    return merged


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    if len(brokers) > 1:
        rest = list(argv or [])
        if "--brokers" in rest:
            del rest[rest.index("--brokers"):rest.index("--brokers") + 2]
        results = run_each_broker_alone([a for a in rest if not a.startswith("--brokers=")], brokers)
        return finish(results, args, argv)
    harness.setup_django(harness.BROKERS[brokers[0]])
    harness.prepare_database(concurrency=args.window)
    results: dict[str, Any] = {
        "meta": {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(),
                 "cpus": os.cpu_count(), "load_before": harness.load_average(),
                 "args": {k: v for k, v in vars(args).items()}},
        "brokers": {},
    }
    for i, name in enumerate(brokers):
        results["brokers"][name] = run_broker(name, args, with_submit=(i == 0 and not args.no_submit))
    results["meta"]["load_after"] = harness.load_average()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        return results
    return finish(results, args, argv)


def finish(results: dict[str, Any], args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    harness.RESULTS.mkdir(parents=True, exist_ok=True)
    path = harness.RESULTS / f"throughput-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")
    if not args.no_docs:
        from bench import report

        report.write_throughput(results, command="make bench  # python -m bench.bench_throughput " + " ".join(argv or []))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
