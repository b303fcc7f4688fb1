"""Reading and retiring what tasks produced: the result descriptor in the task detail, the artifact
list, and retention (``RESULT_TTL_DAYS``), which deletes bytes but keeps what was said about them."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from algorithms.artifacts import RESULT_NAME, delete_file
from algorithms.models import Artifact
from config.errors import ConveyorError, NotFound

if TYPE_CHECKING:
    from jobs.models import Task


class ResultExpired(ConveyorError):
    status_code = 410
    code = "result_expired"


def stored_result(task: Task) -> Artifact | None:
    """The task's stored (or expired) result row, if it has one. Callers ask only when the task has no
    inline result (``inline_result_text``, ``Task.result_sha256``): an inline result is the last run's
    own, so no row can stand for it."""
    rows = getattr(task, "_prefetched_objects_cache", {}).get("artifacts")
    if rows is not None:
        return next((a for a in rows if a.kind == Artifact.Kind.RESULT), None)
    return Artifact.objects.filter(task=task, kind=Artifact.Kind.RESULT).first()


def inline_result_text(task: Task) -> str | None:
    """The task's inline result as PostgreSQL writes the jsonb (``result::text``): the bytes whose size
    and sha256 ``Task.result_size`` / ``result_sha256`` hold (jobs/migrations/0009); None without one."""
    from jobs.models import Task

    table = connection.ops.quote_name(Task._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT result::text FROM {table} WHERE id = %s AND jsonb_typeof(result) <> 'null'",
                       [task.id])
        row = cursor.fetchone()
    return row[0] if row else None


def describe_result(task: Task, *, request_path: str = "") -> dict[str, Any] | None:
    """``{storage, size, sha256, content_type, summary, expired, expired_at}`` of a SUCCEEDED task's
    result; None for any other task and for one without a result. An inline result is described by the
    columns PostgreSQL keeps beside it, so ``task`` may be read without ``result`` (a task list)."""
    if task.status != "SUCCEEDED":
        return None
    if task.result_sha256 is None and "result" not in task.get_deferred_fields() and task.result is not None:
        task.refresh_from_db(fields=["result_size", "result_sha256", "result_summary"])  # written after the read
    if task.result_sha256 is not None:
        return {"storage": "inline", "size": task.result_size, "sha256": task.result_sha256,
                "content_type": "application/json", "summary": task.result_summary, "expired": False,
                "expired_at": None}
    row = stored_result(task)
    if row is None:
        return None
    return {"storage": "file" if row.storage_name else "inline", "size": row.size, "sha256": row.sha256,
            "content_type": row.content_type, "summary": row.summary, "expired": row.expired,
            "expired_at": row.expired_at}


def artifacts_of(task: Task) -> list[Artifact]:
    return list(Artifact.objects.filter(task=task, kind=Artifact.Kind.FILE).order_by("name"))


def artifact_of(task: Task, name: str) -> Artifact:
    row = Artifact.objects.filter(task=task, kind=Artifact.Kind.FILE, name=name).first()
    if row is None:
        raise NotFound(f"task has no artifact {name!r}")
    return row


def expire(*, now: datetime | None = None, batch: int = 500) -> dict[str, int]:
    """Delete results and artifacts older than ``RESULT_TTL_DAYS``; rows stay, marked expired.

    Files are deleted after the row is marked, so a crash in between leaves a row that says expired
    and a stray file, never a row pointing at a missing file that still claims to be downloadable.
    """
    from jobs.models import Task

    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.CONVEYOR["RESULT_TTL_DAYS"])
    files = 0
    while True:
        with transaction.atomic():
            rows = _mark_expired(Artifact.objects.select_for_update(skip_locked=True)
                                 .filter(expired_at__isnull=True, created_at__lt=cutoff)[:batch], now)
        for row in rows:
            delete_file(row)
        files += len(rows)
        if len(rows) < batch:
            break
    inline = 0
    while True:
        with transaction.atomic():
            tasks = list(Task.objects.select_for_update(skip_locked=True).filter(
                status="SUCCEEDED", finished_at__lt=cutoff, result__isnull=False)
                .only("id", "result_size", "result_sha256", "result_summary")[:batch])
            for task in tasks:
                if task.result_sha256 is None:  # a JSON null: no result to remember
                    continue
                Artifact.objects.update_or_create(  # what the detail said, it keeps saying
                    task=task, kind=Artifact.Kind.RESULT, name=RESULT_NAME,
                    defaults={"storage_name": "", "size": task.result_size, "sha256": task.result_sha256,
                              "content_type": "application/json", "summary": task.result_summary,
                              "expired_at": now})
            Task.objects.filter(id__in=[t.id for t in tasks]).update(result=None)
        inline += len(tasks)
        if len(tasks) < batch:
            break
    return {"files": files, "inline_results": inline}


def _mark_expired(rows: Any, now: datetime) -> list[Artifact]:
    rows = list(rows)
    Artifact.objects.filter(id__in=[r.id for r in rows]).update(expired_at=now)
    return rows


def expire_files_of(task_ids: list[Any], *, now: datetime | None = None) -> int:
    """Whole-task retention (jobs/retention.py): the files of these tasks' live results and artifacts
    are deleted now, in the caller's transaction, which then deletes the tasks. Their rows are marked
    expired first, so deleting them later deletes nothing twice (``algorithms.signals``). A storage that
    fails raises and rolls the marks back: the tasks stay, to be deleted again at the next run, with at
    worst a file already gone (its download answers 410), never a file left without its row. The
    default storage deletes its chunks in the same transaction. Returns how many files."""
    rows = _mark_expired(Artifact.objects.filter(task_id__in=task_ids, expired_at__isnull=True)
                         .exclude(storage_name=""), now or timezone.now())
    for row in rows:
        delete_file(row)
    return len(rows)
