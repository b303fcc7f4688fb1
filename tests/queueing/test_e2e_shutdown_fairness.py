"""Real workers: SIGTERM of a busy worker loses nothing and runs nothing twice at once; one user's
batch does not starve another user's single task."""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db.models import Q

from jobs.models import Status, Task
from tests.conftest import LiveWorker, wait_until
from tests.queueing.conftest import ExtraWorker, make_queue

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def submit(client, queue: str, seconds: float, priority: int = 5) -> str:
    body = {"algorithm": "demo.sleep", "params": {"seconds": seconds}, "queue": queue, "priority": priority}
    response = client.post("/api/v1/tasks/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def running_on(ids: list[str], hostname: str) -> bool:
    return Task.objects.filter(id__in=ids, status=Status.RUNNING, worker=hostname).count() == len(ids)


@pytest.fixture
def worker_with_grace(live_worker: LiveWorker) -> Iterator[Any]:
    """``worker_with_grace(queues, concurrency, tag, grace)``: an extra worker whose shutdown grace is
    ``grace`` seconds instead of the tests' 2 s; stopped after the test."""
    started: list[ExtraWorker] = []

    def start(queues: str, concurrency: int, tag: str, grace: float) -> ExtraWorker:
        env = {**live_worker.env, "WORKER_SHUTDOWN_GRACE_SECONDS": f"{grace:g}"}
        worker = ExtraWorker(env, queues, concurrency, tag)
        started.append(worker)
        worker.start()
        return worker

    yield start
    for worker in started:
        worker.stop()


def test_sigterm_lets_short_tasks_finish_and_hands_long_ones_to_another_worker(
        live_worker, extra_worker, worker_with_grace, alice, api):
    client = api(alice)
    make_queue("drain", concurrency=4)

    # short tasks finish within the grace period on the worker that got SIGTERM: 2 s tasks, a 10 s grace
    # (several seconds to spare for recording their outcome on a busy machine)
    first = worker_with_grace("drain", 2, tag="drain-a", grace=10)
    short = [submit(client, "drain", 2.0) for _ in range(2)]
    wait_until(lambda: running_on(short, first.hostname), message="short tasks running")
    first.terminate()
    for task in Task.objects.filter(id__in=short):
        assert task.status == Status.SUCCEEDED
        assert list(task.events.values_list("event", flat=True)).count("task.started") == 1

    # long tasks outlive the grace period (2 s in tests) by several seconds: killed there, re-run elsewhere
    second = extra_worker("drain", 2, tag="drain-b")
    long = [submit(client, "drain", 8.0) for _ in range(2)]
    wait_until(lambda: running_on(long, second.hostname), message="long tasks running")
    stopped_at = time.monotonic()
    second.terminate()
    assert time.monotonic() - stopped_at < 15, "the worker exits soon after its grace period"
    assert not Task.objects.filter(id__in=long, status=Status.RUNNING).exists()

    third = extra_worker("drain", 2, tag="drain-c")
    wait_until(lambda: Task.objects.filter(id__in=long, status=Status.SUCCEEDED).count() == 2, timeout=60,
               message="long tasks re-run and finished")
    for task in Task.objects.filter(id__in=long):
        events = list(task.events.order_by("seq"))
        names = [e.event for e in events]
        assert names.count("task.started") == 2 and names.count("task.succeeded") == 1, names
        handed_back = next(e for e in events if e.event == "task.retrying")
        assert handed_back.data["reason"] == "worker shutdown"
        restart = [e for e in events if e.event == "task.started"][1]
        assert restart.created_at >= handed_back.created_at and restart.data["worker"] == third.hostname
        assert task.attempts == 1, "an interrupted attempt does not use up a retry"


def test_sigterm_mid_batch_starts_none_of_its_waiting_tasks_and_hands_them_back_at_once(
        live_worker, extra_worker, worker_with_grace, alice, api):
    """A message of 4 ids (``stopbatch:4``, tests/settings.py): SIGTERM while its tasks run one after another.
    The task running finishes; the ones still waiting their turn are not started on a worker that is going
    away (started, the last would be killed at the end of the grace and run again) but handed back at once,
    while the running one still runs, for another worker, without counting an attempt."""
    make_queue("stopbatch", concurrency=4)
    first = worker_with_grace("stopbatch", 1, tag="stopbatch-a", grace=60)
    body = {"tasks": [{"algorithm": "demo.sleep", "params": {"seconds": 6}, "queue": "stopbatch"}] * 4}
    response = api(alice).post("/api/v1/tasks/batch/", body, format="json")
    assert response.status_code == 201, response.content
    ids = [t["id"] for t in response.json()["tasks"]]
    wait_until(lambda: Task.objects.filter(id__in=ids, status=Status.SUCCEEDED).exists(), timeout=60,
               message="the batch's first task done")

    os.kill(first.proc.pid, signal.SIGTERM)  # to the main process only, as Kubernetes and docker stop do

    def handed_back() -> list[str]:
        back = Task.objects.filter(id__in=ids, status__in=(Status.PENDING, Status.QUEUED))
        return [str(i) for i in back.values_list("id", flat=True)]

    waiting = wait_until(handed_back, timeout=30, message="the waiting tasks handed back")
    still_running = Task.objects.filter(id__in=ids, status=Status.RUNNING).count()
    assert first.proc.poll() is None and still_running == 1, "handed back while the running task still ran"
    first.proc.wait(timeout=90)
    first.proc = None
    tasks = {str(t.id): t for t in Task.objects.filter(id__in=ids)}
    assert all(tasks[i].status == Status.SUCCEEDED for i in ids if i not in waiting), \
        {i: t.status for i, t in tasks.items()}
    for task_id in waiting:
        back = tasks[task_id].events.filter(event="task.requeued").latest("seq")
        assert back.data["reason"] == "its worker was shutting down before it started"
    assert not Task.objects.filter(id__in=ids, events__event="task.retrying").exists(), "none was killed"

    extra_worker("stopbatch", 1, tag="stopbatch-b")
    wait_until(lambda: Task.objects.filter(id__in=ids, status=Status.SUCCEEDED).count() == 4, timeout=90,
               message="the handed-back tasks run elsewhere")
    assert all(t.attempts == 1 for t in Task.objects.filter(id__in=ids))


def test_shutdown_through_the_api_gives_a_hung_task_the_grace_period_then_hands_it_back(
        live_worker, extra_worker, alice, olga, api):
    """The operator's ``POST /workers/{hostname}/shutdown/`` behaves as SIGTERM does: a task that ignores
    cancellation does not keep the worker up; after the grace (2 s in tests) it is handed back."""
    make_queue("remote-stop", concurrency=2)
    worker = extra_worker("remote-stop", 1, tag="remote-stop")
    body = {"algorithm": "demo.sleep", "params": {"seconds": 600, "ignore_cancel": True}, "queue": "remote-stop"}
    response = api(alice).post("/api/v1/tasks/", body, format="json")
    assert response.status_code == 201, response.content
    task_id = response.json()["id"]
    wait_until(lambda: running_on([task_id], worker.hostname), message="the hung task running")

    assert api(olga).post(f"/api/v1/workers/{worker.hostname}/shutdown/").status_code == 202
    worker.proc.wait(timeout=60)  # Celery's own shutdown command waited for the task's 600 s

    task = Task.objects.get(id=task_id)
    assert task.status in (Status.PENDING, Status.QUEUED), task.status  # back in its queue, for another worker
    handed_back = task.events.filter(event="task.retrying").latest("seq")
    assert handed_back.data["reason"] == "worker shutdown"


def test_a_batch_of_one_user_does_not_starve_another_users_single_task(live_worker, extra_worker, alice, bob, api):
    make_queue("fair", concurrency=1)
    extra_worker("fair", 1, tag="fair")
    # 60 tasks: many still wait for their turn even if this test is slow to submit bob's task
    batch = {"tasks": [{"algorithm": "demo.sleep", "params": {"seconds": 0.1}, "queue": "fair"}] * 60}
    alice_ids = [t["id"] for t in api(alice).post("/api/v1/tasks/batch/", batch, format="json").json()["tasks"]]
    wait_until(lambda: Task.objects.filter(id__in=alice_ids, status=Status.SUCCEEDED).count() >= 3,
               message="alice's batch under way")

    bob_id = submit(api(bob), "fair", 0.1)
    bob_task = wait_until(lambda: (t := Task.objects.get(id=bob_id)).status == Status.SUCCEEDED and t,
                          message="bob's task done")
    overtook = Task.objects.filter(id__in=alice_ids, started_at__gt=bob_task.created_at,
                                   started_at__lt=bob_task.started_at).count()
    # at most the one already handed to the broker when bob submitted, plus one slot
    assert overtook <= 2, overtook
    # alice's tasks still waiting when bob's started (not: when this line runs, as hers keep draining)
    waiting = Task.objects.filter(id__in=alice_ids).filter(
        Q(started_at__isnull=True) | Q(started_at__gt=bob_task.started_at)).count()
    assert waiting > 10, f"bob did not wait for the batch ({waiting} of alice's tasks still waiting)"


def test_a_task_without_progress_past_its_progress_timeout_is_stopped_and_rerun_then_failed(
        live_worker, extra_worker, alice, api):
    """demo.stall declares progress_timeout=3 s, reports once and hangs while its worker stays alive."""
    make_queue("stall", concurrency=2)
    worker = extra_worker("stall", 1, tag="stall")
    client = api(alice)
    body = {"algorithm": "demo.stall", "params": {"seconds": 600}, "queue": "stall", "max_retries": 1}
    task_id = client.post("/api/v1/tasks/", body, format="json").json()["id"]

    task = wait_until(lambda: (t := Task.objects.get(id=task_id)).status == Status.FAILED and t, timeout=60,
                      message="the stuck task to be re-run once and then failed")
    assert "no progress for 3s" in task.error
    names = list(task.events.order_by("seq").values_list("event", flat=True))
    assert names.count("task.started") == 2 and names.count("task.retrying") == 1, names
    retrying = task.events.get(event="task.retrying")
    assert retrying.data["reason"] == "no progress"
    # the worker itself lives on (only its pool child was replaced) and runs the next task
    ok = submit(client, "stall", 0.1)
    wait_until(lambda: Task.objects.get(id=ok).status == Status.SUCCEEDED, message="the next task runs")
    assert worker.proc.poll() is None
