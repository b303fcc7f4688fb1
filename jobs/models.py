from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.db import models
from django.db.models import Q


class Status(models.TextChoices):
    PENDING = "PENDING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"


FINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.TIMED_OUT})
NOT_STARTED = frozenset({Status.PENDING, Status.QUEUED})
ACTIVE = frozenset({Status.PENDING, Status.QUEUED, Status.RUNNING})


class Task(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tasks")
    algorithm = models.CharField(max_length=200)
    algorithm_version = models.CharField(max_length=50, blank=True)
    params = models.JSONField(default=dict)
    # Indexed by (queue, status) below, not on its own: jobs/migrations/0006 says why.
    queue = models.ForeignKey("queueing.Queue", to_field="name", db_column="queue", on_delete=models.PROTECT,
                              db_index=False)
    priority = models.PositiveSmallIntegerField(default=5)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    labels = ArrayField(models.CharField(max_length=100), default=list, blank=True)

    attempts = models.PositiveIntegerField(default=0)
    max_retries = models.PositiveIntegerField(default=3)
    timeout_seconds = models.PositiveIntegerField(default=3600)
    not_before = models.DateTimeField(null=True, blank=True)

    # The client's key is at most 200 characters (jobs/api/views.py); a batch stores ``<key>#<index>``.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    request_hash = models.CharField(max_length=64, blank=True)
    retry_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries")
    # The X-Request-ID of the request that submitted it: the worker binds it to its log lines and writes
    # it into the task's events (read from the claimed row, so the worker looks nothing up per task).
    request_id = models.CharField(max_length=200, blank=True, default="", db_default="")

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=255, blank=True)
    cancel_requested = models.BooleanField(default=False)
    # Queue order of a PENDING task (queueing/ordering.py): an operator's reorder pins it to
    # ``queue_position`` (ahead of every priority); otherwise priority, then ``fair_seq`` (round-robin
    # between owners, stamped at submit), then submit time.
    queue_position = models.BigIntegerField(null=True, blank=True)
    fair_seq = models.BigIntegerField(default=0, db_default=0)

    progress_percent = models.FloatField(default=0.0)
    progress_stage = models.CharField(max_length=200, blank=True)
    progress_message = models.CharField(max_length=1000, blank=True)
    progress_metrics = models.JSONField(default=dict, blank=True)

    result = models.JSONField(null=True, blank=True)
    # Set by PostgreSQL whenever ``result`` is written (trigger ``jobs_task_result_meta``, migration 0009),
    # never by Python: the size and sha256 of ``result::text``, the bytes ``/result/`` serves, and
    # ``artifacts.summarize()`` of the value. A task list shows them without reading any result.
    result_size = models.BigIntegerField(null=True, blank=True, editable=False)
    result_sha256 = models.CharField(max_length=64, null=True, blank=True, editable=False)
    result_summary = models.JSONField(null=True, blank=True, editable=False)
    error = models.TextField(blank=True)
    # Last event number handed out for this task; bumped by the same UPDATE that changes state.
    last_seq = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="task_owner_idempotency_key_uniq",
            ),
            models.CheckConstraint(condition=Q(priority__gte=0, priority__lte=9), name="task_priority_0_9"),
        ]
        indexes = [
            # A queue's oldest waiting task (its min() is one index probe).
            models.Index(fields=["queue", "created_at"], name="task_pending_created_idx",
                         condition=Q(status="PENDING")),
            # The queue order (queueing/ordering.py): pinned first, best priority, round-robin, oldest.
            models.Index(
                "queue", "queue_position", models.F("priority").desc(), "fair_seq", "created_at", "id",
                name="task_queue_order_idx", condition=Q(status="PENDING"),
            ),
            # The same per owner: which owners wait, and each one's first tasks, when owners at their
            # cap fill the dispatcher's scan-ahead (queueing/dispatch.py ``_BEYOND_CAPPED_SQL``).
            models.Index(
                "queue", "owner", "queue_position", models.F("priority").desc(), "fair_seq", "created_at", "id",
                name="task_owner_order_idx", condition=Q(status="PENDING"),
            ),
            # Statistics over a window read only these (index-only scans): finishes with their timings,
            # and submits with what they are counted by.
            models.Index(fields=["finished_at"], name="task_finished_cover_idx",
                         include=["status", "queue", "algorithm", "owner", "created_at", "started_at"],
                         condition=Q(finished_at__isnull=False)),
            models.Index(fields=["created_at"], name="task_created_cover_idx",
                         include=["status", "queue", "algorithm", "owner"]),
            # Result retention (algorithms.results.expire): the succeeded tasks still holding an inline
            # result, by finish, so a batch reads only expired ones (a result expired is NULL: off the index).
            models.Index(fields=["finished_at"], name="task_inline_result_idx",
                         condition=Q(status="SUCCEEDED", result__isnull=False)),
            models.Index(fields=["status", "queue"], name="task_status_queue_idx"),
            # A queue's tasks (foreign-key checks, the list's queue filter) and its busy count.
            models.Index(fields=["queue", "status"], name="task_queue_status_idx"),
            models.Index(fields=["owner", "-created_at"], name="task_owner_created_idx"),
            GinIndex(fields=["labels"], name="task_labels_gin"),
        ]

    def __str__(self) -> str:
        return f"{self.algorithm} {self.id} {self.status}"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL


class TaskEvent(models.Model):
    """Every state change, progress report and log line of a task, numbered by ``seq``.

    The audit trail, the ``/logs/`` endpoint and the replay for reconnecting WebSocket clients.
    """

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    event = models.CharField(max_length=50)
    status = models.CharField(max_length=16, choices=Status.choices)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["task", "seq"]
        constraints = [models.UniqueConstraint(fields=["task", "seq"], name="taskevent_task_seq_uniq")]

    def __str__(self) -> str:
        return f"{self.task_id}#{self.seq} {self.event}"
