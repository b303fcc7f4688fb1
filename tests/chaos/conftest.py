"""Fault scenarios under a steady load of mixed tasks, on a private stack (tests/chaos/stack.py).

``make test`` runs them reduced; ``make chaos`` (CHAOS_SCALE=full) runs them at full size. Both run on
every broker in CHAOS_BROKERS (default: redis and rabbitmq); at the reduced size RabbitMQ gets only the
scenarios in RABBITMQ_REDUCED (a worker killed, a rolling restart, RabbitMQ's consumer_timeout: what
differs between brokers is how an unacknowledged message comes back), to keep ``make test`` short.
"""
from __future__ import annotations

import collections
import itertools
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.chaos import runs
from tests.chaos.stack import FINAL, Stack

FULL = os.environ.get("CHAOS_SCALE", "reduced") == "full"
BROKERS = [b.strip() for b in os.environ.get("CHAOS_BROKERS", "redis,rabbitmq").split(",") if b.strip()]
RABBITMQ_REDUCED = {"test_kill_9_of_a_worker_mid_task_then_a_new_worker_loses_nothing",
                    "test_rolling_sigterm_restart_of_workers_loses_nothing",
                    "test_rabbitmq_consumer_timeout_mid_task_the_worker_reconnects_and_runs_on"}
# What one scenario submits; the tests scale their own numbers with it.
TASKS = 300 if FULL else 20

# A mix of what users run: instant, progress-reporting, sleeping, and failing-once-then-retried tasks.
# chaos.* are the demo algorithms of the same name, each run recording itself (tests/chaos/runs.py).
MIX = [
    {"algorithm": "chaos.noop"},
    {"algorithm": "chaos.hello", "params": {"seconds": 0.4, "steps": 4}},
    {"algorithm": "chaos.sleep", "params": {"seconds": 0.8}},
    {"algorithm": "chaos.flaky", "params": {"fail_times": 1}},
]
END_OF_RUN = {"task.retrying", "task.requeued", "task.succeeded", "task.failed", "task.cancelled", "task.timed_out"}
FINAL_EVENTS = {"task.succeeded", "task.failed", "task.cancelled", "task.timed_out"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """At the reduced size, deselect (visibly, as pytest reports it) RabbitMQ's other scenarios."""
    if FULL:
        return
    keep, drop = [], []
    for item in items:
        params = getattr(item, "callspec", None) and item.callspec.params
        on_rabbitmq = bool(params) and params.get("stack") == "rabbitmq"
        (drop if on_rabbitmq and item.originalname not in RABBITMQ_REDUCED else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session", params=BROKERS)
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    s = Stack(broker=request.param)
    try:
        s.start()
        yield s
    finally:
        s.destroy()


@pytest.fixture
def fresh(stack: Stack) -> Iterator[Stack]:
    """The session's stack with no tasks, no recorded runs, an empty broker and no workers; cleaned up
    afterwards."""
    with stack.db() as conn:
        conn.execute("TRUNCATE jobs_task CASCADE")
    for path in stack.runs_dir.iterdir():
        path.unlink()
    if stack.broker == "redis":
        import redis

        redis.Redis.from_url(stack.redis.url).flushdb()
    yield stack
    for worker in list(stack.workers):
        stack.kill_worker(worker)


@dataclass
class SteadyLoad:
    """Submits one task of the mix every ``interval`` seconds from a thread until ``total`` were accepted
    (and, when ``until`` is given, that event is set)."""

    stack: Stack
    total: int
    interval: float = 0.05
    until: threading.Event | None = None
    accepted: list[str] = field(default_factory=list)
    answers: collections.Counter[str] = field(default_factory=collections.Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> SteadyLoad:
        self._thread = threading.Thread(target=self._run, name="steady-load", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        rng = random.Random(8)
        # Longer than the web's own bound on a submit while PostgreSQL is away (DB_POOL_TIMEOUT, 10 s, then
        # a 503), so every submit gets the server's answer: a transport error here is a failure.
        with self.stack.client(timeout=30) as client:
            for _ in itertools.count():
                if self._stop.is_set() or (len(self.accepted) >= self.total
                                           and (self.until is None or self.until.is_set())):
                    return
                try:
                    response = client.post("/api/v1/tasks/", json=rng.choice(MIX))
                    self.answers[str(response.status_code)] += 1
                    if response.status_code == 201:
                        self.accepted.append(response.json()["id"])
                except httpx.HTTPError as exc:
                    self.answers[type(exc).__name__] += 1
                time.sleep(self.interval)

    def wait(self, timeout: float = 300) -> None:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"load did not finish: {len(self.accepted)}/{self.total} accepted"

    def stop(self) -> None:
        self._stop.set()
        self.wait()

    def wait_accepted(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.accepted) < n:
            assert time.monotonic() < deadline, f"only {len(self.accepted)} of {n} submits accepted: {self.answers}"
            time.sleep(0.02)


def running_count(stack: Stack) -> int:
    with stack.db() as conn:
        return conn.execute("SELECT count(*) FROM jobs_task WHERE status = 'RUNNING'").fetchone()[0]


def assert_nothing_lost(stack: Stack, accepted: list[str], *, timeout: float = 120) -> dict[str, int]:
    """Every accepted task reached exactly one final state, nothing is stuck, and no task ran twice at
    once: each task's runs, as they recorded themselves (tests/chaos/runs.py), never overlapped. A run
    lasts from its start to its end, or, when its process was killed before its end, until that process
    died; a run starting before another one's end, or while another one with no end still had a live
    process, fails the check."""

    def unfinished() -> int:
        with stack.db() as conn:
            return conn.execute("SELECT count(*) FROM jobs_task WHERE status <> ALL(%s)", [list(FINAL)]).fetchone()[0]

    deadline = time.monotonic() + timeout
    while unfinished():
        if time.monotonic() > deadline:
            with stack.db() as conn:
                stuck = conn.execute("SELECT status, count(*) FROM jobs_task WHERE status <> ALL(%s) GROUP BY 1",
                                     [list(FINAL)]).fetchall()
            pytest.fail(f"tasks stuck after {timeout}s: {stuck}\n{stack.worker_logs()}")
        time.sleep(0.2)

    with stack.db() as conn:
        statuses = dict(conn.execute("SELECT id::text, status FROM jobs_task").fetchall())
        events: dict[str, list[str]] = collections.defaultdict(list)
        for task_id, name in conn.execute("SELECT task_id::text, event FROM jobs_taskevent ORDER BY task_id, seq"):
            events[task_id].append(name)
    missing = [i for i in accepted if i not in statuses]
    assert not missing, f"{len(missing)} accepted tasks are not in the database: {missing[:5]}"
    for task_id, status in statuses.items():
        names = events[task_id]
        finals = [n for n in names if n in FINAL_EVENTS]
        assert len(finals) == 1, f"task {task_id} ({status}) has final events {finals}: {names}"
        assert finals[0] == f"task.{status.lower()}", f"task {task_id} is {status} but ended with {finals[0]}"
        assert names[-1] in FINAL_EVENTS | {"task.log", "task.progress"}, names
        running = False
        for name in names:  # the stream the user reads never shows two runs at once either
            if name == "task.started":
                assert not running, f"task {task_id} started twice at once: {names}"
                running = True
            elif name in END_OF_RUN:
                running = False
        assert (stack.runs_dir / task_id).exists(), f"task {task_id} ({status}) recorded no run"
        overlaps = runs.overlaps(stack.runs_dir, task_id)
        assert not overlaps, f"task {task_id} ran twice at once: {overlaps}"
    return dict(collections.Counter(statuses.values()))
