"""Reading and retiring what tasks produced: the result descriptor in the task detail, the artifact
list, and retention (``RESULT_TTL_DAYS``), which deletes bytes but keeps what was said about them."""
from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

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
    inline result (``inline_result_text``, ``inline_results_meta``): an inline result is the last run's
    own, so no row can stand for it."""
    rows = getattr(task, "_prefetched_objects_cache", {}).get("artifacts")
    if rows is not None:
        return next((a for a in rows if a.kind == Artifact.Kind.RESULT), None)
    return Artifact.objects.filter(task=task, kind=Artifact.Kind.RESULT).first()


# An inline result's bytes are PostgreSQL's text of the jsonb (``result::text``): ``/result/`` serves
# them as its ``result`` member, and its size and sha256 are computed from them, by PostgreSQL, so a
# task list never loads (or parses, or hashes in Python) the results it only describes. The summary is
# ``artifacts.summarize()`` of the value, in SQL: the keys in jsonb's order, which is the order the value
# has when read into Python. A JSON ``null`` is no result (as ``None`` is in Python).
_INLINE_META_SQL = """
SELECT id, octet_length(body), encode(sha256(body), 'hex'), summary FROM (
    SELECT id, convert_to(result::text, 'UTF8') AS body,
           (CASE jsonb_typeof(result)
                WHEN 'object' THEN json_build_object(
                    'type', 'object',
                    'keys', COALESCE((SELECT json_agg(k ORDER BY n)
                                      FROM jsonb_object_keys(result) WITH ORDINALITY AS o(k, n)
                                      WHERE n <= 20), '[]'::json),
                    'length', (SELECT count(*) FROM jsonb_object_keys(result)))
                WHEN 'array' THEN json_build_object('type', 'array', 'length', jsonb_array_length(result))
                WHEN 'string' THEN json_build_object('type', 'str')
                WHEN 'boolean' THEN json_build_object('type', 'bool')
                ELSE json_build_object('type', CASE WHEN strpos(result::text, '.') > 0
                                                    THEN 'float' ELSE 'int' END)
            END)::text AS summary
    FROM {table} WHERE id = ANY(%s) AND jsonb_typeof(result) <> 'null'
) AS inline_results
"""


def _task_table() -> str:
    from jobs.models import Task

    return connection.ops.quote_name(Task._meta.db_table)


def inline_results_meta(task_ids: Iterable[UUID]) -> dict[UUID, dict[str, Any]]:
    """``result_meta`` of the inline results among these tasks, by task id, in one query; a task without
    an inline result is not in the answer."""
    ids = list(task_ids)
    if not ids:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(_INLINE_META_SQL.format(table=_task_table()), [ids])
        rows = cursor.fetchall()
    return {task_id: {"storage": "inline", "size": size, "sha256": sha256, "content_type": "application/json",
                      "summary": json.loads(summary), "expired": False, "expired_at": None}
            for task_id, size, sha256, summary in rows}


def inline_result_text(task: Task) -> str | None:
    """The task's inline result as the text whose bytes ``result_meta`` describes; None without one."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT result::text FROM {_task_table()} WHERE id = %s AND jsonb_typeof(result) <> 'null'",
                       [task.id])
        row = cursor.fetchone()
    return row[0] if row else None


def attach_result_meta(tasks: Iterable[Task]) -> None:
    """Describe the inline results of these tasks in one query, for ``describe_result`` (a page of a list:
    the tasks may be read without ``result``)."""
    succeeded = [t for t in tasks if t.status == "SUCCEEDED"]
    found = inline_results_meta(t.id for t in succeeded)
    for task in succeeded:
        task._inline_result_meta = found.get(task.id)  # type: ignore[attr-defined]


def describe_result(task: Task, *, request_path: str = "") -> dict[str, Any] | None:
    """``{storage, size, sha256, content_type, summary, expired, expired_at}`` of a SUCCEEDED task's
    result; None for any other task and for a task without one. Never reads ``task.result``."""
    if task.status != "SUCCEEDED":
        return None
    if not hasattr(task, "_inline_result_meta"):
        attach_result_meta([task])
    inline = task._inline_result_meta  # type: ignore[attr-defined]
    if inline is not None:
        return dict(inline)
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
            rows = list(Artifact.objects.select_for_update(skip_locked=True)
                        .filter(expired_at__isnull=True, created_at__lt=cutoff)[:batch])
            Artifact.objects.filter(id__in=[r.id for r in rows]).update(expired_at=now)
        for row in rows:
            delete_file(row)
        files += len(rows)
        if len(rows) < batch:
            break
    inline = 0
    while True:
        with transaction.atomic():
            tasks = list(Task.objects.select_for_update(skip_locked=True).filter(
                status="SUCCEEDED", finished_at__lt=cutoff, result__isnull=False).only("id")[:batch])
            described = inline_results_meta(t.id for t in tasks)  # what the detail said: it keeps saying it
            for task in tasks:
                meta = described.get(task.id)
                if meta is None:  # a JSON null: no result to remember
                    continue
                Artifact.objects.update_or_create(
                    task=task, kind=Artifact.Kind.RESULT, name=RESULT_NAME,
                    defaults={"storage_name": "", "size": meta["size"], "sha256": meta["sha256"],
                              "content_type": meta["content_type"], "summary": meta["summary"],
                              "expired_at": now})
            Task.objects.filter(id__in=[t.id for t in tasks]).update(result=None)
        inline += len(tasks)
        if len(tasks) < batch:
            break
    return {"files": files, "inline_results": inline}
