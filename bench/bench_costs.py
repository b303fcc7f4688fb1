"""Database work per task, counted rather than timed (so it holds on a busy machine): statements,
commits, commits that wait for the WAL flush, broker messages and channel-layer sends of task events,
for the worker's path of a no-op task (claim → run → finish → dispatch of the next one), one id per
message and batched, for a single submit into a queue with room (INSERT → dispatch → send), and per
line of an algorithm that logs in a loop; plus the CPU time the process spent per task (timed, so it
moves with the machine's load).

    python -m bench.bench_costs [--tasks 200] [--batch 8] [--log-lines 2000]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from bench import harness

QUEUE = "bench-costs"  # nobody consumes it: the messages are counted, then deleted


class Counter:
    def __init__(self) -> None:
        self.statements = self.commits = self.relaxed = 0

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.statements += 1
        if "synchronous_commit" in sql:
            self.relaxed += 1
        return execute(sql, params, many, context)


def fresh_queue(concurrency: int) -> tuple[Any, Any, Any]:
    """An empty task table and benchmark queue with ``concurrency``: (the broker's Redis, the owner, a
    no-op task's spec)."""
    import redis
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.db import connection

    from jobs import services
    from queueing.models import Queue

    r = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    with connection.cursor() as cur:
        cur.execute("TRUNCATE jobs_task CASCADE")
    r.delete(QUEUE)
    Queue.objects.update_or_create(name=QUEUE, defaults={"concurrency": concurrency})
    return r, User.objects.get(username="bench"), services.build_spec(algorithm="demo.noop", queue=QUEUE)


@contextlib.contextmanager
def counting_commits(counter: Counter) -> Iterator[None]:
    from django.db import connection

    commit = connection.commit

    def counting_commit() -> None:
        counter.commits += 1
        commit()

    connection.commit = counting_commit  # type: ignore[method-assign]
    try:
        yield
    finally:
        connection.commit = commit  # type: ignore[method-assign]


def measure(mode: str, n: int, batch: int) -> dict[str, Any]:
    from django.db import connection

    from jobs import services
    from jobs.tasks import run_task, run_tasks

    r, owner, spec = fresh_queue(1 if mode == "single" else batch)
    services.submit_batch(owner=owner, specs=[spec] * (n + batch))  # the first window is dispatched here
    counter = Counter()
    sent_before = r.llen(QUEUE)
    cpu = time.process_time()
    with counting_commits(counter), connection.execute_wrapper(counter), counting_event_sends() as event_sends:
        for _ in range(n // (1 if mode == "single" else batch)):
            # Take the oldest message like a worker would, and run it in this process.
            body = json.loads(r.rpop(QUEUE))
            args = json.loads(__import__("base64").b64decode(body["body"]))[0]
            if body["headers"]["task"] == "jobs.run_tasks":
                run_tasks.run(args[0])
            else:
                run_task.run(args[0])
    cpu = time.process_time() - cpu
    done = n if mode == "single" else (n // batch) * batch
    sent = r.llen(QUEUE) - sent_before + n // (1 if mode == "single" else batch)
    r.delete(QUEUE)
    return row(mode, done, counter, sent, event_sends, cpu)


def measure_submit(n: int) -> dict[str, Any]:
    """A single submit (the service the REST view calls) into a queue with room, as on an idle worker:
    the INSERT, its dispatch and the broker send. The tasks are finished behind its back (uncounted: an
    autocommit statement outside the wrappers), so the queue keeps its room."""
    from django.db import connection

    from jobs import services

    r, owner, spec = fresh_queue(4)
    counter, cpu = Counter(), 0.0
    with counting_commits(counter), counting_event_sends() as event_sends:
        for _ in range(n):
            start = time.process_time()
            with connection.execute_wrapper(counter):
                services.submit(owner=owner, spec=spec)
            cpu += time.process_time() - start
            with connection.cursor() as cur:
                cur.execute("UPDATE jobs_task SET status = 'SUCCEEDED' WHERE queue = %s AND status = 'QUEUED'", [QUEUE])
    sent = r.llen(QUEUE)
    r.delete(QUEUE)
    return row("submit", n, counter, sent, event_sends, cpu)


def measure_logs(lines: int) -> dict[str, Any]:
    """An algorithm that logs ``lines`` lines in a tight loop (``ctx.log``, as a training loop logging every
    step), run as a worker runs it; counted per line (the task's claim and finish included). Its lines
    are written by its own thread here: a loop faster than ``TASK_LOG_MIN_INTERVAL`` leaves the watchdog's
    thread none to write."""
    from django.db import connection

    from algorithms import registry
    from jobs import services
    from jobs.tasks import run_task

    def chatty(ctx: Any, params: Any) -> None:
        for i in range(lines):
            ctx.log(f"step {i}: loss 0.{i:04d}")

    registry._registry["bench.chatty"] = registry.Algorithm(name="bench.chatty", fn=chatty)
    r, owner, _ = fresh_queue(1)
    services.submit(owner=owner, spec=services.build_spec(algorithm="bench.chatty", queue=QUEUE))
    counter = Counter()
    cpu = time.process_time()
    with counting_commits(counter), connection.execute_wrapper(counter), counting_event_sends() as event_sends:
        body = json.loads(r.rpop(QUEUE))
        run_task.run(json.loads(__import__("base64").b64decode(body["body"]))[0][0])
    cpu = time.process_time() - cpu
    r.delete(QUEUE)
    return row("log lines", lines, counter, 0, event_sends, cpu)


def row(mode: str, done: int, counter: Counter, sent: int, event_sends: list[int], cpu: float) -> dict[str, Any]:
    return {
        "mode": mode, "tasks": done,
        "statements_per_task": round(counter.statements / done, 2),
        "commits_per_task": round(counter.commits / done, 2),
        "flushed_commits_per_task": round((counter.commits - counter.relaxed) / done, 2),
        "broker_messages_per_task": round(sent / done, 3),
        "event_sends_per_task": round(len(event_sends) / done, 3),
        "events_per_task": round(sum(event_sends) / done, 3),  # exact; the sends that carry them depend on timing
        # CPU of this process (every thread: the channel publisher too), timed, so it varies with the machine
        "cpu_ms_per_task": round(cpu * 1000 / done, 2),
    }


@contextlib.contextmanager
def counting_event_sends() -> Iterator[list[int]]:
    """The channel layer's sends of task events (each one pipelined Redis round trip), counted once
    everything published so far has left."""
    from jobs import events

    sends: list[int] = []
    original = events.publisher._send

    async def send(items: Any) -> None:
        sends.append(len(items))
        await original(items)

    events.publisher._send = send  # type: ignore[method-assign]
    try:
        yield sends
        time.sleep(0.2)
        events.publisher.flush()
    finally:
        events.publisher._send = original  # type: ignore[method-assign]


def main(argv: list[str]) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--deep", type=int, default=32, help="ids per message of the deep-queue row")
    p.add_argument("--log-lines", type=int, default=2000, help="lines of the log row (counted per line)")
    p.add_argument("--no-docs", action="store_true")
    args = p.parse_args(argv)
    url = harness.BROKERS["redis"]
    harness.setup_django(url)
    from django.conf import settings

    harness.prepare_database(concurrency=16)
    rows = []
    for size in (args.batch, args.deep):
        settings.CONVEYOR["DISPATCH_BATCH"] = {QUEUE: size}
        rows.append({**measure("batched", args.tasks, size), "batch": size})
    settings.CONVEYOR["DISPATCH_BATCH"] = {}
    rows.insert(0, measure("single", args.tasks, args.batch))
    rows.insert(0, measure_submit(args.tasks))
    rows.append({**measure_logs(args.log_lines), "batch": 0})
    for row in rows:
        print(json.dumps(row))
    if not args.no_docs:
        from bench import report

        lines = [f"Command: `python -m bench.bench_costs --tasks {args.tasks} --batch {args.batch} --deep {args.deep} "
                 f"--log-lines {args.log_lines}`", "",
                 "| path | statements/task | commits/task | commits waiting for the WAL flush/task | "
                 "broker messages/task | event sends/task | CPU ms/task (timed) |",
                 "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        names = {"submit": "submit (web: one task, queue with room)", "single": "worker: one id per message",
                 "log lines": f"an algorithm's `ctx.log` lines, per line ({args.log_lines} in a loop)"}
        for found in rows:
            name = names.get(found["mode"]) or f"worker: batched dispatch (≤{found['batch']} ids)"
            lines.append(f"| {name} | {found['statements_per_task']} | {found['commits_per_task']} | "
                         f"{found['flushed_commits_per_task']} | {found['broker_messages_per_task']} | "
                         f"{found['event_sends_per_task']} | {found['cpu_ms_per_task']} |")
        report.write_section("costs", "\n".join(lines))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
