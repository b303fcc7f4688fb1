"""WebSocket push: latency and throughput of live progress, against a bare channels-redis hop.

Setup (all real, all on loopback): one daphne web process; ``--tasks`` RUNNING tasks; a "worker"
process that reports progress for them through ``execution.report_progress`` (the code path a Celery
worker child uses: guarded UPDATE + ``TaskEvent`` row, channel-layer publish after commit), each report
carrying ``time.time()`` in its metrics; ``--sockets`` WebSocket clients on ``/ws/tasks/<id>/``
spread evenly over the tasks (200 sockets / 50 tasks = 4 watchers per task).

Measured in the same run:
1. worker→client latency: ``time.time()`` when a client parses the event − the time in its metrics
   (taken just before the report's transaction, so it includes the database write and commit);
   p50/p95/p99 and delivered events per second, at ``--rate`` reports per task per second; and the
   same from the moment the report's transaction had committed (``after_commit``: the push alone);
2. the bare hop baseline: ``group_send`` in this process → ``receive`` in another process on the same
   Redis channel layer, at the same message rate, no Django, no database, no WebSocket;
3. the web process's resident memory before and with the sockets open.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/conveyor_bench_ws python -m bench.bench_ws

Writes ``bench/results/ws-<time>.json``; the numbers of a run are quoted in README ("WebSocket").
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.stats import pct

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

ENV_DEFAULTS = {
    "DJANGO_SETTINGS_MODULE": "config.settings",
    "SECRET_KEY": "bench-only-secret-key-not-for-production-use-0123456789",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/conveyor_bench_ws",
    "REDIS_URL": "redis://127.0.0.1:6379/14",
    "CHANNEL_PREFIX": "conveyor-bench-ws",
    "LOG_LEVEL": "WARNING",
    "RATE_LIMIT_ENABLED": "false",
}


def setup_django() -> None:
    for name, value in ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    import django

    django.setup()


def summary(latencies: list[float], seconds: float) -> dict[str, Any]:
    ms = [x * 1000 for x in latencies]
    return {
        "events": len(ms),
        "events_per_second": round(len(ms) / seconds, 1),
        "p50_ms": round(pct(ms, 50), 2), "p95_ms": round(pct(ms, 95), 2), "p99_ms": round(pct(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else None, "mean_ms": round(statistics.fmean(ms), 2) if ms else None,
    }


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (a load-independent cost next to the latencies)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


# --- setup ----------------------------------------------------------------------------------------

def ensure_database() -> None:
    from bench.harness import ensure_database as create_if_missing

    create_if_missing(os.environ["DATABASE_URL"])


def prepare(n_tasks: int) -> tuple[str, list[str]]:
    """Migrate, and make ``n_tasks`` RUNNING tasks of a bench user; returns (access token, task ids)."""
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.utils import timezone as dj_tz
    from rest_framework_simplejwt.tokens import AccessToken

    from jobs.models import Status, Task
    from queueing.models import Queue

    call_command("migrate", verbosity=0)
    user = User.objects.filter(username="bench-ws").first() or User.objects.create_user("bench-ws", password="x")
    queue, _ = Queue.objects.get_or_create(name="bench-ws", defaults={"paused": True})  # nothing dispatches
    Task.objects.filter(owner=user).delete()
    now = dj_tz.now()
    tasks = Task.objects.bulk_create([
        Task(owner=user, algorithm="demo.hello", queue=queue, status=Status.RUNNING, started_at=now,
             heartbeat_at=now, last_seq=0) for _ in range(n_tasks)
    ])
    return str(AccessToken.for_user(user)), [str(t.id) for t in tasks]


# --- the "worker": progress reports through the real service ---------------------------------------

def worker_main(task_ids: list[str], rate: float, seconds: float, start_at: float, out: Any,
                direct: bool = False) -> None:
    setup_django()
    from django.db import transaction
    from django.utils import timezone as dj_tz

    from jobs import events, execution
    from jobs.events import publisher
    from jobs.models import Task

    tasks = {str(t.id): t for t in Task.objects.filter(id__in=task_ids)}
    seqs = dict.fromkeys(task_ids, 10_000)

    def report_direct(task_id: str, i: int, before: float) -> None:
        """``--direct``: the publish alone (no database), to find the push pipeline's own capacity."""
        task = tasks[task_id]
        seqs[task_id] += 1
        task.progress_metrics, task.progress_message = {"t": before, "i": i}, f"report {i}"
        body = events.payload(task, "task.progress", seqs[task_id], None, dj_tz.now())
        publisher.publish([(task.owner_id, body)])
        committed.append(time.time())

    interval = 1.0 / (rate * len(task_ids))
    sent = 0
    service: list[float] = []  # the report's own time: UPDATE + TaskEvent INSERT + COMMIT
    committed: list[float] = []  # committed[i]: when report i's transaction had committed
    while time.time() < start_at:
        time.sleep(0.001)
    t0 = time.monotonic()
    deadline = t0 + seconds
    i = 0
    while time.monotonic() < deadline:
        task_id = task_ids[i % len(task_ids)]
        before = time.time()
        if direct:
            report_direct(task_id, i, before)
            service.append(time.time() - before)
            sent += 1
            i += 1
            delay = t0 + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            continue
        with transaction.atomic():
            execution.report_progress(task_id=task_id, percent=min(99.0, i / 10), stage="bench",
                                     message=f"report {i}", metrics={"t": before, "i": i})
            # Runs right after the publish callback that record() registered first: the commit time.
            transaction.on_commit(lambda: committed.append(time.time()))
        service.append(time.time() - before)
        sent += 1
        i += 1
        next_at = t0 + i * interval
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    publisher.flush()
    out.put({"sent": sent, "seconds": time.monotonic() - t0, "service": summary(service, time.monotonic() - t0),
             "committed": committed})


# --- the clients ------------------------------------------------------------------------------------

async def run_clients(url: str, token: str, task_ids: list[str], n_sockets: int, ready: asyncio.Event,
                      stop: asyncio.Event, latencies: list[tuple[float, float, int]]) -> dict[str, int]:
    from websockets.asyncio.client import connect

    counts = {"connected": 0, "messages": 0, "errors": 0}
    opened = asyncio.Event()

    async def client(task_id: str) -> None:
        try:
            async with connect(f"{url}/ws/tasks/{task_id}/?token={token}", open_timeout=30, max_queue=None) as ws:
                await ws.recv()  # snapshot
                counts["connected"] += 1
                if counts["connected"] == n_sockets:
                    opened.set()
                while not stop.is_set():
                    try:
                        raw = await asyncio.wait_for(ws.recv(), timeout=0.5)
                    except asyncio.TimeoutError:
                        continue
                    now = time.time()
                    body = json.loads(raw)
                    if body.get("event") == "task.progress" and ready.is_set():
                        latencies.append((now, body["metrics"]["t"], body["metrics"]["i"]))
                        counts["messages"] += 1
        except Exception as exc:  # counted and reported, the run goes on
            counts["errors"] += 1
            print(f"socket error: {exc!r}", file=sys.stderr)
            opened.set()

    clients = [asyncio.create_task(client(task_ids[i % len(task_ids)])) for i in range(n_sockets)]
    await asyncio.wait_for(opened.wait(), timeout=120)
    ready.set()
    await stop.wait()
    await asyncio.gather(*clients)
    return counts


# --- the bare channels-redis hop -------------------------------------------------------------------

def baseline_receiver(n: int, out: Any, ready: Any) -> None:
    setup_django()
    from channels.layers import get_channel_layer

    async def main() -> None:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add("bench.baseline", channel)
        ready.set()
        got: list[float] = []
        while len(got) < n:
            try:
                message = await asyncio.wait_for(layer.receive(channel), timeout=10)
            except asyncio.TimeoutError:
                break
            got.append(time.time() - message["t"])
        out.put(got)

    asyncio.run(main())


def baseline(n: int, rate: float) -> dict[str, Any]:
    from channels.layers import get_channel_layer

    ctx = mp.get_context("spawn")
    out, ready = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=baseline_receiver, args=(n, out, ready))
    proc.start()
    ready.wait(60)
    time.sleep(0.5)

    async def send() -> float:
        layer = get_channel_layer()
        t0 = time.monotonic()
        for i in range(n):
            await layer.group_send("bench.baseline", {"type": "bench", "t": time.time()})
            delay = t0 + (i + 1) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        return time.monotonic() - t0

    seconds = asyncio.run(send())
    latencies = out.get(timeout=60)
    proc.join(10)
    return summary(latencies, seconds) | {"sent": n}


# --- the run ---------------------------------------------------------------------------------------

def start_web(port: int) -> subprocess.Popen[bytes]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = open(RESULTS / "ws-daphne.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                             "config.asgi:application"], cwd=ROOT, env=dict(os.environ), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("daphne did not start; see bench/results/ws-daphne.log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--sockets", type=int, default=200)
    parser.add_argument("--rate", type=float, default=4.0, help="progress reports per task per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--direct", action="store_true",
                        help="publish without the database write (the push pipeline's own capacity)")
    args = parser.parse_args()

    setup_django()
    ensure_database()
    token, task_ids = prepare(args.tasks)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    web = start_web(port)
    try:
        rss_idle = rss_mib(web.pid)
        latencies: list[tuple[float, float, int]] = []  # (received, reported, report index)
        ctx = mp.get_context("spawn")
        out = ctx.Queue()

        async def scenario() -> tuple[dict[str, int], dict[str, Any], float]:
            ready, stop = asyncio.Event(), asyncio.Event()
            clients = asyncio.create_task(
                run_clients(f"ws://127.0.0.1:{port}", token, task_ids, args.sockets, ready, stop, latencies))
            await ready.wait()
            rss_open = rss_mib(web.pid)
            cpu_before = cpu_seconds(web.pid)
            worker = ctx.Process(target=worker_main, args=(task_ids, args.rate, args.seconds, time.time() + 2, out,
                                                                 args.direct))
            worker.start()
            sent = await asyncio.to_thread(out.get, True, args.seconds + 120)
            await asyncio.sleep(1.0)  # let the last events arrive
            sent["web_cpu_seconds"] = cpu_seconds(web.pid) - cpu_before
            stop.set()
            counts = await clients
            worker.join(10)
            return counts, sent, rss_open

        counts, sent, rss_open = asyncio.run(scenario())
        push = summary([now - t for now, t, _ in latencies], sent["seconds"])
        committed = sent.pop("committed")
        push["after_commit"] = summary([now - committed[i] for now, _, i in latencies if i < len(committed)],
                                       sent["seconds"])
        expected = sent["sent"] * args.sockets // args.tasks
        push.update(web_cpu_ms_per_delivery=round(1000 * sent["web_cpu_seconds"] / max(1, len(latencies)), 3),
                    web_cpu_share=round(sent["web_cpu_seconds"] / (sent["seconds"] + 1.0), 3),
                    reports_sent=sent["sent"], reports_per_second=round(sent["sent"] / sent["seconds"], 1),
                    report_db_write=sent["service"], deliveries_expected=expected,
                    delivered_fraction=round(len(latencies) / expected, 4) if expected else None)
        rss_end = rss_mib(web.pid)
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(10)

    bare = baseline(n=min(sent["sent"], 4000), rate=sent["sent"] / sent["seconds"])
    result = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "params": vars(args),
        "sockets": counts,
        "push": push,
        "baseline_channels_redis_hop": bare,
        "web_rss_mib": {"idle": rss_idle, "sockets_open": rss_open, "end": rss_end},
        "cpus": os.cpu_count(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"ws-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    after = push["after_commit"]
    print(f"\nworker→client: p50 {push['p50_ms']} ms, p99 {push['p99_ms']} ms, {push['events_per_second']} events/s "
          f"(after commit: p50 {after['p50_ms']} ms, p99 {after['p99_ms']} ms) "
          f"delivered to {counts['connected']} sockets | bare hop: p50 {bare['p50_ms']} ms, p99 {bare['p99_ms']} ms "
          f"| web CPU {push['web_cpu_ms_per_delivery']} ms per delivery "
          f"| report's own DB write p50 {push['report_db_write']['p50_ms']} ms "
          f"| web RSS {rss_idle} → {rss_open} → {rss_end} MiB\nwrote {path}")


if __name__ == "__main__":
    main()
