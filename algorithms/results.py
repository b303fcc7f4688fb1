"""Reading and retiring what tasks produced: the result descriptor in the task detail, the artifact
list, and retention (``RESULT_TTL_DAYS``), which deletes bytes but keeps what was said about them."""
from __future__ import annotations

import logging
import os
import re
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from celery import shared_task
from django.conf import settings
from django.core.files.storage import FileSystemStorage, default_storage
from django.db import connection, transaction
from django.utils import timezone

from algorithms.artifacts import RESULT_NAME, delete_file, delete_stored
from algorithms.models import Artifact
from config.errors import ConveyorError, NotFound

if TYPE_CHECKING:
    from jobs.models import Task

log = logging.getLogger(__name__)

# A stored file under tasks/ that no live row names is deleted once it is this old: far longer than the
# moment between a file written outside the database and its row (a write in progress is never touched).
STRAY_MIN_AGE = timedelta(hours=1)
STRAY_BATCH = 500  # the most files one sweep deletes; the next sweep takes the rest
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


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
            # oldest first, in the order of the partial index on created_at (the model's own ordering, by
            # task and name, made each batch sort every expired live artifact)
            rows = _mark_expired(Artifact.objects.select_for_update(skip_locked=True)
                                 .filter(expired_at__isnull=True, created_at__lt=cutoff).order_by("created_at")[:batch],
                                 now)
        for row in rows:
            delete_file(row)
        files += len(rows)
        if len(rows) < batch:
            break
    inline = 0
    after = None  # the last batch's newest finish: the next one starts there, past the entries it emptied
    while True:
        expired = Task.objects.filter(status="SUCCEEDED", finished_at__lt=cutoff, result__isnull=False)
        if after is not None:
            expired = expired.filter(finished_at__gte=after)
        with transaction.atomic():
            # Oldest first on task_inline_result_idx (jobs/migrations/0011), whose entries are the tasks
            # still holding a result: a batch reads expired results only, however many tasks are kept.
            tasks = list(expired.select_for_update(skip_locked=True).order_by("finished_at")
                         .only("id", "finished_at", "result_size", "result_sha256", "result_summary")[:batch])
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
        after = tasks[-1].finished_at
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


@shared_task(name="algorithms.sweep_strays", ignore_result=True)
def sweep_strays_task() -> dict[str, int]:
    """Beat (hourly): stored files no artifact row names (``sweep_strays``)."""
    return sweep_strays()


def sweep_strays(*, now: datetime | None = None, min_age: timedelta = STRAY_MIN_AGE,
                 batch: int = STRAY_BATCH) -> dict[str, int]:
    """Delete files under ``tasks/`` of the default storage that no live (unexpired) ``Artifact`` row
    names and that were written more than ``min_age`` ago, at most ``batch`` per call: what a worker
    killed between writing a file and recording its row left (a storage outside the database), what was
    left before the two became one transaction (``DatabaseStorage``), and the file of a row that expired
    or was let go of whose deletion failed. ``DatabaseStorage``: one query on ``StoredFile`` (its
    ``created_at`` is when its write finished); ``FileSystemStorage``: a walk of ``MEDIA_ROOT/tasks``
    (file modification times); any other storage (S3) is not listed: nothing is swept there."""
    from algorithms.storage import DatabaseStorage

    cutoff = (now or timezone.now()) - min_age
    if isinstance(default_storage, DatabaseStorage):
        names = _database_strays(cutoff, batch)
    elif isinstance(default_storage, FileSystemStorage):
        names = _filesystem_strays(cutoff, batch)
    else:
        return {"files": 0}
    for name in names:
        delete_stored(name)
    if names:
        log.warning("deleted %d stored file(s) under tasks/ that no artifact row names (a worker killed while "
                    "storing, or a deletion that failed)", len(names))
    return {"files": len(names)}


def _database_strays(cutoff: datetime, batch: int) -> list[str]:
    from algorithms.models import StoredFile

    files = connection.ops.quote_name(StoredFile._meta.db_table)
    rows = connection.ops.quote_name(Artifact._meta.db_table)
    # The row is looked up by its task (indexed), taken from the name (tasks/<task id>/<attempt>/<file>).
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT f.name FROM {files} f
                WHERE f.name LIKE 'tasks/%%' AND f.created_at < %s
                  AND NOT EXISTS (SELECT 1 FROM {rows} a
                                  WHERE a.task_id = CASE WHEN split_part(f.name, '/', 2) ~ %s
                                                         THEN split_part(f.name, '/', 2)::uuid END
                                    AND a.storage_name = f.name AND a.expired_at IS NULL)
                ORDER BY f.id LIMIT %s""",
            [cutoff, f"^{_UUID.pattern}$", batch])
        return [name for (name,) in cursor.fetchall()]


def _filesystem_strays(cutoff: datetime, batch: int) -> list[str]:
    """Old files under ``MEDIA_ROOT/tasks``, a task directory at a time, checked against its task's rows."""
    root = default_storage.path("tasks")
    if not os.path.isdir(root):
        return []
    limit = cutoff.timestamp()
    found: list[str] = []
    pending: dict[str, list[str]] = {}  # task directory → its old files' storage names

    def check() -> None:
        ids = [uuid.UUID(d) for d in pending if _UUID.fullmatch(d)]
        named = set(Artifact.objects.filter(task_id__in=ids, expired_at__isnull=True)
                    .values_list("storage_name", flat=True))
        for names in pending.values():
            found.extend(n for n in names if n not in named)
        pending.clear()

    with os.scandir(root) as tasks:
        for task_dir in tasks:
            if len(found) >= batch:
                break
            if not task_dir.is_dir(follow_symlinks=False):
                continue
            old = [f"tasks/{os.path.relpath(os.path.join(path, f), root)}".replace(os.sep, "/")
                   for path, _, names in os.walk(task_dir.path) for f in names
                   if _mtime(os.path.join(path, f)) < limit]
            if old:
                pending[task_dir.name] = old
            if len(pending) >= 200:
                check()
    if pending:
        check()
    return found[:batch]


def _mtime(path: str) -> float:
    try:
        return os.lstat(path).st_mtime
    except OSError:  # deleted meanwhile
        return float("inf")
