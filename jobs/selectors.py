"""Reads. Views and consumers never build task querysets themselves."""
from __future__ import annotations

from typing import Any
from uuid import UUID

from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from config.permissions import is_operator
from jobs.errors import TaskNotFound
from jobs.models import FINAL, Task, TaskEvent


def tasks_for(user: Any) -> QuerySet[Task]:
    """Every task the user may see: their own; operators and staff see all. Read without ``result``
    (up to RESULT_INLINE_MAX of JSON each): what views show of it, ``result_meta``, is in the columns
    PostgreSQL keeps beside it (``Task.result_sha256`` …), and ``/result/`` reads it as text."""
    qs = Task.objects.defer("result")
    if not is_operator(user):
        qs = qs.filter(owner=user)
    return qs


def task_for(user: Any, task_id: UUID | str) -> Task:
    """One visible task; another user's task is a 404, exactly like a task that does not exist."""
    try:
        return tasks_for(user).get(id=task_id)
    except (Task.DoesNotExist, ValueError, ValidationError):  # a malformed id names no task either
        raise TaskNotFound("task not found") from None


def ids_among(tasks: QuerySet[Task], ids: list[str]) -> set[str]:
    """Those of ``ids`` (well-formed) that name a task of ``tasks`` (``tasks_for(user)``: that user may see)."""
    return {str(i) for i in tasks.filter(id__in=ids).values_list("id", flat=True)}


def count_final(tasks: QuerySet[Task]) -> int:
    return tasks.filter(status__in=FINAL).count()


def unfinished(tasks: QuerySet[Task]) -> QuerySet[Task]:
    return tasks.exclude(status__in=FINAL)


def ids_page(tasks: QuerySet[Task], *, after: str | None, limit: int) -> list[str]:
    """The next ``limit`` ids, in id order after ``after``, of the tasks of ``tasks``: a large set a page
    at a time, each page one short query however many tasks match."""
    if after is not None:
        tasks = tasks.filter(id__gt=after)
    return [str(i) for i in tasks.order_by("id").values_list("id", flat=True)[:limit]]


def events_for(task: Task, *, after_seq: int = 0, include_progress: bool = True) -> QuerySet[TaskEvent]:
    qs = TaskEvent.objects.filter(task=task, seq__gt=after_seq).order_by("seq")
    if not include_progress:
        qs = qs.exclude(event="task.progress")
    return qs
