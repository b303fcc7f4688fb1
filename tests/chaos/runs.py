"""Every run of the chaos load's algorithms, recorded by the run itself.

The chaos stack's processes load ``tests.chaos.settings``, which installs this app: it registers
``chaos.noop``, ``chaos.hello``, ``chaos.sleep`` and ``chaos.flaky``, the demo algorithms of the same
name, each wrapped so that its run appends JSON lines to ``$CHAOS_RUNS_DIR/<task id>``:

* ``start`` first of all (its run id, algorithm, attempt, pid and the pid's start time, and the pid of
  its worker's main process, which leads the worker's process group);
* ``alive`` right after, when an earlier run of the task has no ``end`` yet and its process is still
  alive: that run is still going, so the two overlap (a run with no ``end`` was killed, and it lasted
  until its process died; the whole stack runs on this machine, so ``/proc`` tells);
* ``end`` in a ``finally``, however the algorithm ended.

An append is one ``write`` to an ``O_APPEND`` file, so the lines of a task are in the order they were
written in. ``overlaps()`` reads them back (test side).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from django.apps import AppConfig

WRAPPED = ["demo.noop", "demo.hello", "demo.sleep", "demo.flaky"]


class RecordedRunsConfig(AppConfig):
    name = "tests.chaos"
    label = "chaos_runs"

    def ready(self) -> None:
        from algorithms import registry

        for name in WRAPPED:
            demo = registry.get(name)
            chaos = name.replace("demo.", "chaos.")
            registry.register(dataclasses.replace(demo, name=chaos, fn=_recorded(demo.fn, chaos)))


def _recorded(fn: Any, algorithm: str) -> Any:
    def run(ctx: Any, params: Any) -> Any:
        path = Path(os.environ["CHAOS_RUNS_DIR"]) / ctx.task_id
        me = {"run": uuid.uuid4().hex, "algorithm": algorithm, "attempt": ctx.attempt, "pid": os.getpid(),
              "since": _started(os.getpid()), "worker_pid": os.getpgrp()}
        _append(path, {**me, "event": "start", "t": time.time()})
        try:
            lines = _lines(path)
            ended = {r["run"] for r in lines if r["event"] == "end"}
            going = [r["run"] for r in lines if r["event"] == "start" and r["run"] not in ended | {me["run"]}
                     and _started(r["pid"]) == r["since"]]
            if going:
                _append(path, {"run": me["run"], "event": "alive", "others": going, "t": time.time()})
            return fn(ctx, params)
        finally:
            _append(path, {"run": me["run"], "event": "end", "t": time.time()})

    return run


def _append(path: Path, record: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def _lines(path: Path) -> list[dict[str, Any]]:
    """The complete lines (a line being appended right now is not one yet)."""
    return [json.loads(line) for line in path.read_text().split("\n")[:-1]] if path.exists() else []


def _started(pid: int) -> str | None:
    """The start time of a live process (None once it is gone or a zombie): with the pid, its identity."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in "ZX" else fields[19]


def overlaps(runs_dir: Path, task_id: str) -> list[str]:
    """Why two runs of the task overlapped (empty: they never did). A run lasts from its ``start`` line
    to its ``end`` line, or, with no ``end`` (its process was killed), until its process died. Two runs
    overlap when one starts before an earlier one's ``end`` line, or while an earlier one without an
    ``end`` still had a live process (its ``alive`` line)."""
    lines = _lines(runs_dir / task_id)
    ended = {r["run"] for r in lines if r["event"] == "end"}
    going: set[str] = set()
    found = []
    for r in lines:
        if r["event"] == "start":
            if going & ended:
                found.append(f"run {r['run']} (attempt {r['attempt']}, pid {r['pid']}) started while "
                             f"{sorted(going & ended)} had not ended")
            going.add(r["run"])
        elif r["event"] == "end":
            going.discard(r["run"])
        elif r["event"] == "alive":
            found.append(f"run {r['run']} started while {r['others']} (no end) still had a live process")
    return found


def runs(runs_dir: Path) -> dict[str, dict[str, Any]]:
    """Every recorded run by run id: its ``start`` line, with ``task`` and ``end`` (the ``end`` line's
    time; None while it runs, or when it was killed) added."""
    found: dict[str, dict[str, Any]] = {}
    for path in runs_dir.iterdir():
        for r in _lines(path):
            if r["event"] == "start":
                found[r["run"]] = {**r, "task": path.name, "end": None}
            elif r["event"] == "end":
                found[r["run"]]["end"] = r["t"]
    return found
