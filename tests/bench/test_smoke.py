"""`make bench` at a tiny size, from a database that does not exist yet (as on a fresh machine): the
benchmark scripts run end to end and report numbers. The real runs are `make bench` (docs/benchmarks.md)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest

from tests.conftest import ROOT

DB = "conveyor_bench_smoke"
SERVER = "postgres://postgres@127.0.0.1:5432"


@pytest.fixture
def fresh_database():
    def drop() -> None:
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')

    drop()
    yield f"{SERVER}/{DB}"
    drop()


def bench(module: str, *args: str, database: str) -> list[str]:
    env = {**os.environ, "BENCH_DATABASE_URL": database}
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout.splitlines()


def test_work_per_task_is_counted_on_a_fresh_database(fresh_database):
    rows = [json.loads(line) for line in bench("bench.bench_costs", "--tasks", "8", "--batch", "4", "--deep", "8",
                                                "--log-lines", "400", "--no-docs", database=fresh_database)
            if line.startswith("{")]
    assert [r["mode"] for r in rows] == ["submit", "single", "batched", "batched", "log lines"]
    submit, single, batched, deep, logs = rows
    assert submit["commits_per_task"] == 1.0 and submit["broker_messages_per_task"] == 1.0  # dispatched in its commit
    assert submit["events_per_task"] == 2.0  # task.created and task.queued
    # usually one send carries both; fewer when submits fall within EVENT_COALESCE_MS of each other
    assert 0 < submit["event_sends_per_task"] <= submit["events_per_task"]
    assert single["broker_messages_per_task"] == 1.0 and batched["broker_messages_per_task"] == 0.25
    assert deep["broker_messages_per_task"] == 0.125
    assert deep["statements_per_task"] < batched["statements_per_task"] < single["statements_per_task"]
    # an algorithm's lines in a loop: written together, each its own event (the claim's and finish's too)
    assert logs["statements_per_task"] < 0.1 and logs["commits_per_task"] < 0.05
    assert logs["events_per_task"] == pytest.approx(1.0, abs=0.02)


def test_throughput_against_raw_celery_runs_end_to_end(fresh_database, tmp_path):
    out = bench("bench.bench_throughput", "--brokers", "redis", "--tasks", "30", "--rounds", "1", "--batch", "10",
                "--latency-tasks", "5", "--levels", "1", "--submit-seconds", "1", "--no-docs",
                "--json", str(tmp_path / "throughput.json"), database=fresh_database)
    ratios = [json.loads(line.split("] ", 1)[1]) for line in out if line.startswith("[redis] {")]
    assert len(ratios) == 1, out
    assert ratios[0]["ratio"] > 0 and ratios[0]["ratio_batched"] > 0 and ratios[0]["ratio_deep"] > 0  # Conveyor / raw Celery, same run
    report = json.loads((tmp_path / "throughput.json").read_text())["brokers"]["redis"]
    for mode in ("conveyor", "conveyor_batched", "conveyor_deep"):  # only succeeded tasks count as throughput
        assert report["throughput"][mode]["final_states"] == {"SUCCEEDED": 30}, report["throughput"][mode]
    assert report["latency"]["conveyor"]["n"] == 5
    assert set(report["submit_api"]["1"]["conveyor_submit"]["statuses"]) == {"201"}, report["submit_api"]
