from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models


def _default_concurrency() -> int:
    return settings.CONVEYOR["QUEUE_DEFAULT_CONCURRENCY"]


MAX_RESOURCE = 1024


def validate_resources(value: object) -> None:
    """What a queue's workers provide: resource names to counts (0 to ``MAX_RESOURCE``), as the API's
    ``PATCH /queues/{name}/`` takes them; the admin saves only such a value (anything else in the
    column made every queue listing fail)."""
    if not isinstance(value, dict):
        raise ValidationError('an object of resource names to counts, e.g. {"gpu": 1}')
    for name, count in value.items():
        if not name or "\x00" in name:
            raise ValidationError("a resource name must be a non-empty text without NUL characters")
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_RESOURCE:
            raise ValidationError(f"{name}: a whole number from 0 to {MAX_RESOURCE}")


class Queue(models.Model):
    """A platform queue; also the name of the Celery queue its tasks are sent to."""

    name = models.CharField(
        max_length=64,
        unique=True,
        validators=[RegexValidator(r"^[a-z0-9][a-z0-9_.-]*$", "lowercase letters, digits, '_', '.', '-'")],
    )
    paused = models.BooleanField(default=False)
    # How many of this queue's tasks may be handed to the broker or running at once, across all
    # workers. It is also the broker's in-flight window: the database keeps the rest, in order.
    concurrency = models.PositiveIntegerField(default=_default_concurrency, validators=[MinValueValidator(1)])
    default_priority = models.PositiveSmallIntegerField(default=5, validators=[MaxValueValidator(9)])
    description = models.CharField(max_length=500, blank=True)
    # Per-owner cap on this queue's QUEUED + RUNNING tasks; 0 means no cap beyond ``concurrency``.
    user_concurrency = models.PositiveIntegerField(default=0, db_default=0)
    # What every worker consuming this queue provides, e.g. {"gpu": 1}. An algorithm that declares
    # resource needs is accepted only on a queue that provides them (jobs.services.build_spec).
    resources = models.JSONField(default=dict, db_default={}, blank=True, validators=[validate_resources])
    # Every reorder pins its head below this and lowers it (queueing.services.reorder), so the newest
    # pins sort first, also ahead of an older pin that comes back to PENDING with its task.
    pin_floor = models.BigIntegerField(default=1, db_default=1, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class WorkerRecord(models.Model):
    """One Celery worker process as it last described itself (queueing/heartbeat.py).

    Written by the worker's own heartbeat thread, so it also remembers workers that died: a row whose
    ``last_heartbeat`` is older than ``WORKER_STALE_SECONDS`` is shown as dead.
    """

    hostname = models.CharField(max_length=255, unique=True)
    queues = models.JSONField(default=list)
    pool = models.CharField(max_length=50, blank=True)
    concurrency = models.PositiveIntegerField(default=0)
    pid = models.PositiveIntegerField(null=True, blank=True)
    version = models.CharField(max_length=100, blank=True)
    started_at = models.DateTimeField()
    last_heartbeat = models.DateTimeField(db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    # Set once by the liveness check when the heartbeat went stale (``worker.lost`` published then);
    # cleared by the next heartbeat if the worker comes back.
    lost_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["hostname"]

    def __str__(self) -> str:
        return self.hostname


class QueueCount(models.Model):
    """Maintained counts of a queue's active tasks (PENDING/QUEUED/RUNNING), so the queue listing
    never counts a backlog row by row.

    Written only by statement-level triggers on ``jobs_task`` (queueing/migrations/0006): every
    INSERT, DELETE or status/queue change adds its delta, in the same transaction, so the numbers are
    exact and roll back with it. Each database backend writes rows of its own (``stripe`` = its pid;
    0 holds the rows of ended backends, ``queueing.counters.fold``), so no two transactions wait on one
    counter row; readers sum the stripes.
    """

    queue = models.CharField(max_length=64)
    status = models.CharField(max_length=16)
    stripe = models.IntegerField()
    n = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["queue", "status", "stripe"], name="queuecount_uniq")]

    def __str__(self) -> str:
        return f"{self.queue}/{self.status}#{self.stripe}={self.n}"


class TaskMinuteCount(models.Model):
    """Tasks submitted in one minute, by queue, algorithm and *current* status — maintained by the same
    kind of statement-level triggers as ``QueueCount`` (queueing/migrations/0009), so the statistics
    of a window read at most (minutes × queues × algorithms × states) rows instead of every task."""

    minute = models.DateTimeField()
    queue = models.CharField(max_length=64)
    algorithm = models.CharField(max_length=200)
    status = models.CharField(max_length=16)
    stripe = models.IntegerField()  # as QueueCount's
    n = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["minute", "queue", "algorithm", "status", "stripe"],
                                               name="taskminutecount_uniq")]

    def __str__(self) -> str:
        return f"{self.minute:%H:%M} {self.queue}/{self.algorithm}/{self.status}={self.n}"
