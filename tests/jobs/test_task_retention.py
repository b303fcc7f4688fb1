"""Task retention (``TASK_RETENTION_DAYS``, jobs/retention.py): final tasks finished long ago go, with
their events, results, artifacts and files; what is young, not final, or still owed a webhook delivery
stays; statistics within their window do not move. Then the batches and the time budget, the
management command and the system check."""
from __future__ import annotations

import io
import logging
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError
from django.utils import timezone

from algorithms.models import Artifact, StoredChunk, StoredFile
from jobs import retention
from jobs import tasks as job_tasks
from jobs.models import Status, Task, TaskEvent
from tests.algorithms.helpers import run, submit, wait_final
from tests.conftest import another_session, queued_tasks, wait_until
from webhooks.models import Delivery, Subscription

OLD = timedelta(days=100)  # past the default 90 days


def age(task_id: Any, by: timedelta = OLD, **values: Any) -> None:
    """Move a task back in time as a whole: submitted, started and finished ``by`` earlier."""
    task = Task.objects.get(id=task_id)
    Task.objects.filter(id=task_id).update(**{
        "created_at": task.created_at - by,
        "started_at": task.started_at and task.started_at - by,
        "finished_at": task.finished_at and task.finished_at - by, **values})


def statistics(client: Any) -> dict[str, Any]:
    body = client.get("/api/v1/statistics/tasks/?window=31d").json()
    return {k: v for k, v in body.items() if k not in {"since", "until", "throughput_per_minute"}}


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_old_final_tasks_go_with_their_files_and_nothing_else_moves(live_worker, alice, olga, api, settings):
    client = api(alice)
    blob = run(client, "demo.blob", {"size_mb": 0.3, "seed": 1})
    files = run(client, "demo.files", {"count": 1})
    inline = run(client, "demo.hello", {"seconds": 0, "steps": 1})
    hooked = wait_final(client, submit(client, "demo.hello", {"seconds": 0, "steps": 1},
                                       webhook_url="http://127.0.0.1:9/hook")["id"])
    young = run(client, "demo.hello", {"seconds": 0, "steps": 1})
    waiting, running = queued_tasks(alice, 2)
    old = [blob["id"], files["id"], inline["id"], hooked["id"]]
    stored = list(Artifact.objects.filter(task_id__in=old).exclude(storage_name="")
                  .values_list("storage_name", flat=True))
    assert len(stored) == 2 and all(default_storage.exists(name) for name in stored)
    for task_id in old:
        age(task_id)
    now = timezone.now()
    age(waiting.id, status=Status.PENDING, finished_at=now - OLD)  # as a task sent back to run again
    age(running.id, status=Status.RUNNING, started_at=now - OLD, finished_at=now - OLD)
    # No webhooks worker here: the hooked task's deliveries wait, as they would for a receiver that is down.
    assert Delivery.objects.filter(task_id=hooked["id"], status="PENDING").exists()
    before = {"alice": statistics(client), "olga": statistics(api(olga))}
    assert before["alice"]["by_status"]["SUCCEEDED"] == 1  # the young one: the old ones left the window

    settings.CONVEYOR = {**settings.CONVEYOR, "TASK_RETENTION_DAYS": 0}  # keep for ever
    assert job_tasks.prune_tasks()["tasks"] == 0
    assert Task.objects.filter(id__in=old).count() == 4

    settings.CONVEYOR = {**settings.CONVEYOR, "TASK_RETENTION_DAYS": 90}
    assert job_tasks.prune_tasks()["tasks"] == 3

    for task_id in old[:3]:
        assert client.get(f"/api/v1/tasks/{task_id}/").status_code == 404
        assert client.get(f"/api/v1/tasks/{task_id}/result/").status_code == 404
    assert not TaskEvent.objects.filter(task_id__in=old[:3]).exists()
    assert not Artifact.objects.filter(task_id__in=old[:3]).exists()
    assert not any(default_storage.exists(name) for name in stored)
    assert not StoredFile.objects.filter(name__in=stored).exists()
    assert not StoredChunk.objects.filter(file__name__in=stored).exists()
    for task_id in (hooked["id"], young["id"], waiting.id, running.id):
        assert client.get(f"/api/v1/tasks/{task_id}/").status_code == 200
    assert client.get(f"/api/v1/tasks/{young['id']}/result/").status_code == 200
    assert {"alice": statistics(client), "olga": statistics(api(olga))} == before

    # Its deliveries end (the receiver came back): the task goes next time, with its subscription.
    Delivery.objects.filter(task_id=hooked["id"]).update(status="SUCCEEDED", finished_at=timezone.now())
    assert job_tasks.prune_tasks()["tasks"] == 1
    assert client.get(f"/api/v1/tasks/{hooked['id']}/").status_code == 404
    assert not Subscription.objects.filter(task_id=hooked["id"]).exists()
    assert not Delivery.objects.filter(task_id=hooked["id"]).exists()
    assert {str(t) for t in Task.objects.values_list("id", flat=True)} == {young["id"], str(waiting.id),
                                                                          str(running.id)}


def finished(owner: Any, n: int, *, days: float) -> list[Any]:
    """``n`` SUCCEEDED tasks (with their created/queued events) finished ``days`` ago, oldest first
    one second apart."""
    tasks = queued_tasks(owner, n)
    now = timezone.now()
    for i, task in enumerate(tasks):
        at = now - timedelta(days=days, seconds=n - i)
        Task.objects.filter(id=task.id).update(status=Status.SUCCEEDED, created_at=at, started_at=at, finished_at=at)
    return [t.id for t in tasks]


def left(ids: list[Any]) -> list[Any]:
    return [i for i in ids if Task.objects.filter(id=i).exists()]


@pytest.mark.django_db(transaction=True)
def test_batches_oldest_first_within_the_time_budget_and_skipping_locked_tasks(alice, caplog):
    ids = finished(alice, 5, days=100)
    assert TaskEvent.objects.filter(task_id__in=ids).count() == 10

    with caplog.at_level(logging.INFO, logger="jobs.retention"):
        once = retention.prune(batch=2, seconds=0)  # the budget is spent: one batch, the two oldest
    assert (once["tasks"], once["events"], once["batches"]) == (2, 4, 1)
    assert left(ids) == ids[2:]
    assert "pruned 2 tasks" in caplog.text

    with another_session() as other, other.transaction():
        other.execute("SELECT 1 FROM jobs_task WHERE id = %s FOR UPDATE", [ids[2]])
        rest = retention.prune(batch=2, seconds=None)  # does not wait for the held one
        assert (rest["tasks"], rest["batches"]) == (2, 2)
        assert left(ids) == [ids[2]]
    assert retention.prune()["tasks"] == 1
    assert left(ids) == []


@pytest.mark.django_db  # uncommitted: the session's worker (its orphan canceller) never sees these rows
def test_a_task_owed_a_remote_cancel_stays_and_a_retry_of_a_deleted_task_loses_only_its_link(alice):
    from algorithms.remote.models import RemoteRun, RemoteService

    owed, retried = finished(alice, 2, days=100)
    service = RemoteService.objects.create(name="gone", kind="grpc", address="127.0.0.1:9")
    RemoteRun.objects.create(task_id=owed, service=service, remote_id="r-1")
    (retry,) = queued_tasks(alice, 1)
    Task.objects.filter(id=retry.id).update(retry_of=retried)

    assert retention.prune()["tasks"] == 1
    assert left([owed, retried, retry.id]) == [owed, retry.id]
    assert Task.objects.get(id=retry.id).retry_of_id is None
    RemoteRun.objects.filter(task_id=owed).delete()  # cancelled on its service (algorithms/remote/orphans.py)
    assert retention.prune()["tasks"] == 1 and left([owed]) == []


@pytest.mark.django_db
def test_files_on_a_volume_go_with_their_task_and_a_storage_that_fails_keeps_the_task(alice, settings, tmp_path,
                                                                                     monkeypatch):
    settings.STORAGES = {**settings.STORAGES, "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(tmp_path)}}}
    (task_id,) = finished(alice, 1, days=100)
    (tmp_path / "model.bin").write_bytes(b"x" * 10)
    Artifact.objects.create(task_id=task_id, name="model.bin", storage_name="model.bin", size=10, sha256="0" * 64)

    def broken(name: str) -> None:
        raise OSError("the volume is read-only")

    behind = finished(alice, 2, days=90.5)  # newer: after it in the walk, in its batch

    monkeypatch.setattr(default_storage, "delete", broken)
    counts = retention.prune()
    assert (counts["tasks"], counts["kept"]) == (2, 1)  # the one that failed does not stop the others
    assert left([task_id] + behind) == [task_id] and (tmp_path / "model.bin").exists()
    assert Artifact.objects.get(task_id=task_id).expired_at is None  # still downloadable
    monkeypatch.undo()

    assert retention.prune()["files"] == 1
    assert left([task_id]) == [] and not (tmp_path / "model.bin").exists()


@pytest.mark.django_db(transaction=True)
def test_the_command_counts_in_a_dry_run_prunes_and_refuses_a_retention_below_the_floor(alice, settings):
    recent, mid, older = finished(alice, 1, days=20), finished(alice, 1, days=50), finished(alice, 2, days=100)
    out = io.StringIO()

    call_command("prune_tasks", "--dry-run", stdout=out)
    assert "2 tasks finished before" in out.getvalue() and "would be deleted" in out.getvalue()
    assert left(recent + mid + older) == recent + mid + older

    call_command("prune_tasks", stdout=out)
    assert "deleted 2 tasks" in out.getvalue() and left(recent + mid + older) == recent + mid

    call_command("prune_tasks", "--older-than-days", "40", "--dry-run", stdout=out)
    assert "1 tasks finished before" in out.getvalue() and left(mid) == mid
    call_command("prune_tasks", "--older-than-days", "40", stdout=out)
    assert left(recent + mid) == recent

    with pytest.raises(CommandError, match="shorter than 31 days"):
        call_command("prune_tasks", "--older-than-days", "10")
    for bad in ("nan", "inf", "1e300"):
        with pytest.raises(CommandError, match="older-than-days"):
            call_command("prune_tasks", "--older-than-days", bad)
    assert retention.prune(days=10)["tasks"] == 0  # the service keeps to the floor too (31 days)
    assert left(recent) == recent

    settings.CONVEYOR = {**settings.CONVEYOR, "TASK_RETENTION_DAYS": 0}
    kept = finished(alice, 1, days=1000)
    call_command("prune_tasks", stdout=out)
    assert "kept for ever" in out.getvalue() and left(kept) == kept


def test_the_check_refuses_a_retention_shorter_than_the_statistics_window_or_the_result_ttl(settings):
    def check() -> None:
        call_command("check", stdout=io.StringIO(), stderr=io.StringIO())

    check()  # the default: 90 days
    for days, ttl in ((10, 30), (60, 120)):
        settings.CONVEYOR = {**settings.CONVEYOR, "TASK_RETENTION_DAYS": days, "RESULT_TTL_DAYS": ttl}
        with pytest.raises(SystemCheckError, match=r"conveyor\.E001.*TASK_RETENTION_DAYS"):
            check()
    for days, ttl in ((0, 30), (31, 30), (120, 120)):
        settings.CONVEYOR = {**settings.CONVEYOR, "TASK_RETENTION_DAYS": days, "RESULT_TTL_DAYS": ttl}
        check()


def test_beat_runs_it_hourly():
    from config.celery import app

    entry = app.conf.beat_schedule["prune-tasks"]
    assert entry["task"] == "jobs.prune_tasks" == job_tasks.prune_tasks.name
    assert entry["schedule"] == 3600.0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("bulk", [False, True], ids=["retry", "bulk retry"])
def test_a_retry_that_meets_retention_deleting_its_task_is_a_404_or_not_found_never_a_500(alice, api, bulk):
    (task_id,) = finished(alice, 1, days=100)
    client = api(alice)
    pruner = another_session()  # retention's batch: the row locked, the task deleted, not committed yet
    pruner.execute("BEGIN")
    pruner.execute("SELECT id FROM jobs_task WHERE id = %s FOR UPDATE", [task_id])
    pruner.execute("DELETE FROM jobs_taskevent WHERE task_id = %s", [task_id])
    pruner.execute("DELETE FROM jobs_task WHERE id = %s", [task_id])
    threading.Timer(0.5, pruner.execute, ["COMMIT"]).start()  # while the retry waits for the row
    try:
        if bulk:
            response = client.post("/api/v1/tasks/retry/", {"task_ids": [str(task_id)]}, format="json")
            assert response.status_code == 200, response.content
            assert (response.json()["retried"], response.json()["not_found"]) == (0, [str(task_id)])
        else:
            response = client.post(f"/api/v1/tasks/{task_id}/retry/")
            assert response.status_code == 404, response.content
    finally:
        wait_until(lambda: pruner.info.transaction_status == 0, message="the pruner's commit")  # IDLE
        pruner.close()
    assert not Task.objects.filter(retry_of_id=task_id).exists() and left([task_id]) == []


@pytest.mark.django_db
def test_the_hourly_retention_also_clears_expired_admin_sessions():
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session

    live, gone = SessionStore(), SessionStore()
    live.create()
    gone.create()
    Session.objects.filter(session_key=gone.session_key).update(expire_date=timezone.now() - timedelta(days=1))
    job_tasks.prune_tasks()
    assert set(Session.objects.values_list("session_key", flat=True)) == {live.session_key}
