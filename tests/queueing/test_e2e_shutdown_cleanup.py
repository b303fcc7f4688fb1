"""Real workers: what a killed pool child's run left on the machine is gone in time. A program it ran is
stopped before its task goes back to the queue (a warm shutdown with the production heartbeat, a stuck
run), its scratch folder goes while the worker runs on, and processes a Python algorithm started die with
the child the watchdog kills.

Each test runs a worker of its own, with a temporary directory of its own (``TMPDIR``), so that the
session's worker, whose heartbeat also looks after dead runs on this machine, never does this worker's
work; its algorithms are in tests/queueing/cleanup_algorithms.py."""
from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs.models import Status, Task
from tests.algorithms.helpers import alive
from tests.conftest import LiveWorker, wait_until
from tests.queueing import cleanup_algorithms
from tests.queueing.conftest import ExtraWorker, make_queue

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def members(task_id: str) -> list[int]:
    """Live processes of the task's external program (the adapter marks them ``CONVEYOR_TASK_ID``)."""
    marker = f"CONVEYOR_TASK_ID={task_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return [pid for pid in found if alive(pid)]


def kill_all(pids: list[int]) -> None:
    """What a test found alive is not left running for the session (a failing run's leftovers)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def submit(client: Any, algorithm: str, queue: str, **fields: Any) -> str:
    body = {"algorithm": algorithm, "params": {}, "queue": queue, "max_retries": 0, **fields}
    response = client.post("/api/v1/tasks/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def logged(task_id: str, pattern: str) -> re.Match[str]:
    """The run's first log line that matches ``pattern``, once it is written."""
    def find() -> re.Match[str] | None:
        lines = Task.objects.get(id=task_id).events.filter(event="task.log").order_by("seq")
        for data in lines.values_list("data", flat=True):
            match = re.match(pattern, data.get("line") or "")
            if match:
                return match
        return None

    return wait_until(find, timeout=30, message=f"a log line {pattern!r}")


def left_running(task_id: str) -> Status:
    """The task's status once it is no longer RUNNING, looked at as soon as it changes."""
    return wait_until(lambda: (s := Task.objects.get(id=task_id).status) != Status.RUNNING and s, timeout=60,
                      interval=0.02, message="the task to leave RUNNING")


@pytest.fixture
def test_algorithms(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test's algorithms in this process's registry too, for its submits; gone after the test."""
    from algorithms import registry

    for alg in cleanup_algorithms.algorithms():
        monkeypatch.setitem(registry._registry, alg.name, alg)


@pytest.fixture
def own_worker(live_worker: LiveWorker, test_algorithms: None, tmp_path: Path) -> Iterator[Any]:
    """``own_worker(queue, concurrency, **env)``: a worker of ``queue`` (made here), with the test's algorithms,
    its own ``TMPDIR`` (``worker.tmp``) and ``env`` on top; stopped after the test."""
    started: list[ExtraWorker] = []

    def start(queue: str, concurrency: int = 1, **env: str) -> ExtraWorker:
        make_queue(queue, concurrency=2)
        tmp = tmp_path / queue
        tmp.mkdir()
        worker = ExtraWorker({**live_worker.env, "DJANGO_SETTINGS_MODULE": "tests.queueing.cleanup_settings",
                              "TMPDIR": str(tmp), **env}, queue, concurrency, queue)
        worker.tmp = tmp  # type: ignore[attr-defined]
        started.append(worker)
        worker.start()
        return worker

    yield start
    for worker in started:
        worker.stop()


def test_sigterm_with_the_production_heartbeat_stops_the_program_before_handing_its_task_back(
        own_worker, alice, api):
    """With the production heartbeat (5 s; the tests' is 0.5 s) no beat comes between the end of the
    shutdown grace and the worker's exit: the program of the killed pool child (its own process group,
    ignoring SIGTERM, with a child) was left running, and its task, handed back, could run twice at once."""
    worker = own_worker("cleanup-stop", WORKER_HEARTBEAT_SECONDS="5")
    task_id = submit(api(alice), "test.stubborn", "cleanup-stop")
    pids = [int(p) for p in logged(task_id, r"pids ([\d ]+)$")[1].split()]
    try:
        assert Task.objects.get(id=task_id).worker == worker.hostname and all(alive(p) for p in pids)

        os.kill(worker.proc.pid, signal.SIGTERM)  # to the main process only, as Kubernetes and docker stop do

        status = left_running(task_id)
        survivors = [p for p in pids if alive(p)] + members(task_id)
        assert status in (Status.PENDING, Status.QUEUED), status
        assert survivors == [], "the program still ran when its task was handed back"
        assert Task.objects.get(id=task_id).events.filter(event="task.retrying").latest("seq").data["reason"] \
            == "worker shutdown"
        worker.proc.wait(timeout=30)
        assert list((worker.tmp / "conveyor-programs").glob("*.json")) == []
    finally:
        kill_all(pids + members(task_id))


def test_a_program_whose_pool_child_was_killed_outright_is_stopped_before_the_hand_back(own_worker, alice, api):
    """The pool child running a program dies outright during the shutdown grace (the OOM killer): nothing
    in the worker's process tree leads the program any more, its record (algorithms/orphans.py) is all
    that finds it, and the heartbeat (a minute here) does not beat before the worker exits."""
    worker = own_worker("cleanup-oom", WORKER_HEARTBEAT_SECONDS="60", WORKER_SHUTDOWN_GRACE_SECONDS="0.5")
    task_id = submit(api(alice), "test.stubborn", "cleanup-oom")
    pids = [int(p) for p in logged(task_id, r"pids ([\d ]+)$")[1].split()]
    try:
        child = int(Path(f"/proc/{pids[0]}/stat").read_text().rsplit(")", 1)[1].split()[1])  # its parent

        os.kill(worker.proc.pid, signal.SIGTERM)
        os.kill(child, signal.SIGKILL)

        status = left_running(task_id)
        survivors = [p for p in pids if alive(p)] + members(task_id)
        assert status in (Status.PENDING, Status.QUEUED), status
        assert survivors == [], "the program still ran when its task was handed back"
        assert Task.objects.get(id=task_id).events.filter(event="task.retrying").latest("seq").data["reason"] \
            == "worker shutdown"
        worker.proc.wait(timeout=30)
    finally:
        kill_all(pids + members(task_id))


def test_stuck_programs_are_stopped_before_their_tasks_are_given_up(own_worker, alice, api):
    """cleanup.stuck_program (test.stubborn with a 2 s progress_timeout) reports once, then hangs: its
    worker kills the pool child and records the task's end only once the program is gone too. Two of them,
    found stuck at the same beat: the first one's program was left running while the second was stopped."""
    worker = own_worker("cleanup-stuck", WORKER_HEARTBEAT_SECONDS="5", concurrency=2)
    client = api(alice)
    task_ids = [submit(client, "cleanup.stuck_program", "cleanup-stuck") for _ in range(2)]
    pids = {task_id: [int(p) for p in logged(task_id, r"pids ([\d ]+)$")[1].split()] for task_id in task_ids}
    try:
        first = wait_until(lambda: Task.objects.filter(id__in=task_ids).exclude(status=Status.RUNNING).first(),
                           timeout=60, interval=0.02, message="a task to leave RUNNING")
        survivors = [p for p in pids[str(first.id)] if alive(p)] + members(str(first.id))
        assert first.status == Status.FAILED and "no progress for 2s" in first.error, (first.status, first.error)
        assert survivors == [], "the program still ran when its task was given up"
        for task_id in task_ids:
            assert left_running(task_id) == Status.FAILED
            assert members(task_id) == []
        assert worker.proc.poll() is None
    finally:
        kill_all([p for task_pids in pids.values() for p in task_pids] + members(task_ids[0]) + members(task_ids[1]))


def test_the_scratch_folder_of_a_killed_run_goes_while_its_worker_runs_on(own_worker, alice, api):
    """A run that ignores its cancel has its pool child killed, which never removes its scratch folder:
    the worker's heartbeat does, without waiting for the worker's next start."""
    worker = own_worker("cleanup-scratch")
    client = api(alice)
    task_id = submit(client, "cleanup.scratch_hog", "cleanup-scratch")
    scratch = Path(logged(task_id, r"scratch (.+)$")[1])
    assert scratch.parent == worker.tmp and (scratch / "spool.bin").is_file()

    assert client.post(f"/api/v1/tasks/{task_id}/cancel/").status_code == 200
    wait_until(lambda: Task.objects.get(id=task_id).status == Status.CANCELLED, message="the run killed")

    wait_until(lambda: not scratch.exists(), timeout=15, message=f"{scratch} to be removed")
    assert worker.proc.poll() is None


def test_processes_a_python_algorithm_started_die_with_the_pool_child_its_watchdog_kills(
        own_worker, alice, api):
    """cleanup.spawns_processes starts a ``sleep`` and a shell in a session of its own (with a ``sleep`` of
    its own), then ignores its cancel: the watchdog kills them with the pool child, instead of leaving
    them to init."""
    own_worker("cleanup-procs")
    client = api(alice)
    task_id = submit(client, "cleanup.spawns_processes", "cleanup-procs")
    match = logged(task_id, r"pids (\d+) (\d+) (\d+) in (\d+)$")
    pids, child = [int(p) for p in match.groups()[:3]], int(match[4])
    try:
        assert all(alive(p) for p in pids)

        assert client.post(f"/api/v1/tasks/{task_id}/cancel/").status_code == 200
        wait_until(lambda: Task.objects.get(id=task_id).status == Status.CANCELLED, message="the run killed")

        wait_until(lambda: not alive(child), timeout=10, message="the pool child killed")
        wait_until(lambda: not any(alive(p) for p in pids), timeout=5,
                   message=f"the algorithm's processes {pids} to be gone")
    finally:
        kill_all(pids)
