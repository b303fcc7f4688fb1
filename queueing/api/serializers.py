from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from config.bodies import NoUnknownKeys
from jobs.api.serializers import PriorityField
from queueing import control
from queueing.models import validate_resources
from queueing.selectors import QueueState


class QueueOut(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    paused = serializers.BooleanField()
    concurrency = serializers.IntegerField()
    user_concurrency = serializers.IntegerField(help_text="per-owner cap on QUEUED + RUNNING; 0 = none")
    default_priority = serializers.IntegerField()
    resources = serializers.DictField(child=serializers.IntegerField(),
                                      help_text='what the workers of this queue provide, e.g. {"gpu": 1}')
    counts = serializers.DictField(child=serializers.IntegerField(), help_text="tasks now PENDING/QUEUED/RUNNING")
    waiting = serializers.IntegerField(help_text="tasks not started yet: PENDING + QUEUED (handed to the broker, "
                                                 "no worker has claimed them); the waiting list's length")
    running = serializers.IntegerField()
    oldest_waiting_at = serializers.DateTimeField(allow_null=True, help_text="submit of the oldest PENDING or QUEUED task")
    oldest_waiting_seconds = serializers.FloatField(allow_null=True)
    finished_recently = serializers.DictField(child=serializers.IntegerField(),
                                              help_text="finishes by final state in the throughput window, "
                                                        "tasks cancelled before they started included")
    throughput_window_seconds = serializers.IntegerField()
    throughput_per_minute = serializers.FloatField(
        help_text="finishes of tasks that had started, per minute over the throughput window (a task cancelled "
                  "while it waited is not counted); what estimated_start is made from")
    has_live_worker = serializers.BooleanField()


def queue_out(state: QueueState, now: Any) -> dict[str, Any]:
    q = state.queue
    oldest = state.oldest_waiting
    return QueueOut({
        "name": q.name, "description": q.description, "paused": q.paused, "concurrency": q.concurrency,
        "user_concurrency": q.user_concurrency, "default_priority": q.default_priority, "resources": q.resources, "counts": state.counts,
        "waiting": state.waiting, "running": state.counts.get("RUNNING", 0),
        "oldest_waiting_at": oldest, "oldest_waiting_seconds": round((now - oldest).total_seconds(), 3) if oldest else None,
        "finished_recently": state.finished, "throughput_window_seconds": state.window_seconds,
        "throughput_per_minute": state.throughput_per_minute, "has_live_worker": state.has_worker,
    }).data


class QueuePatchIn(NoUnknownKeys):
    """A field this PATCH cannot change is a 400, not silently ignored: ``{"paused": true}`` would answer
    200 and leave the queue running."""

    takes = "a queue's settings"
    hints = {"paused": "pause and resume are POST /queues/{name}/pause/ and /resume/"}

    concurrency = serializers.IntegerField(required=False, min_value=1, max_value=100_000)
    user_concurrency = serializers.IntegerField(required=False, min_value=0, max_value=100_000)
    default_priority = PriorityField(required=False)
    description = serializers.CharField(required=False, allow_blank=True, max_length=500)
    resources = serializers.DictField(
        child=serializers.IntegerField(min_value=0, max_value=1024), required=False,
        help_text='replaces what the workers of this queue provide, e.g. {"gpu": 1}; {} for none')

    def validate_resources(self, value: dict[str, int]) -> dict[str, int]:
        # DictField checks the values; the names as the admin checks them (empty, or a NUL, which
        # PostgreSQL's jsonb refuses in a key: a 500 otherwise).
        try:
            validate_resources(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from None
        return value


class ReorderIn(NoUnknownKeys):
    takes = "a reorder"
    body_required = True  # an empty body is a 400 (config.schema marks the body required)

    task_ids = serializers.ListField(child=serializers.UUIDField(), required=False, allow_empty=False, max_length=1000)
    task_id = serializers.UUIDField(required=False)
    position = serializers.IntegerField(required=False, min_value=1)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "task_ids" in attrs and ("task_id" in attrs or "position" in attrs):
            raise serializers.ValidationError("give either task_ids, or task_id with position")
        if "task_ids" not in attrs and not ("task_id" in attrs and "position" in attrs):
            raise serializers.ValidationError("give task_ids, or task_id with position")
        return attrs


class ReorderOut(serializers.Serializer):
    queue = serializers.CharField()
    pinned = serializers.ListField(child=serializers.UUIDField(), help_text="the front of the queue, in start order")


class WaitingOut(serializers.Serializer):
    position = serializers.IntegerField(help_text="1 = starts next; 0 = already handed to the broker")
    reason = serializers.ChoiceField(choices=["queue_paused", "backing_off", "no_worker", "queue_concurrency_full",
                                              "owner_cap_reached", "tasks_ahead", "dispatching", "queued"])
    message = serializers.CharField()
    estimated_start = serializers.DateTimeField(allow_null=True)
    not_before = serializers.DateTimeField(allow_null=True)


class WaitingTaskOut(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=["QUEUED", "PENDING"],
                                     help_text="QUEUED: handed to the broker, listed first (position 0); "
                                               "PENDING: in the queue's start order (reorder moves only these)")
    owner = serializers.CharField(source="owner.username")
    algorithm = serializers.CharField()
    priority = serializers.IntegerField()
    pinned = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    labels = serializers.ListField(child=serializers.CharField())
    waiting = WaitingOut()


class WaitingListOut(serializers.Serializer):
    queue = QueueOut()
    offset = serializers.IntegerField()
    limit = serializers.IntegerField()
    tasks = WaitingTaskOut(many=True)


class WorkerOut(serializers.Serializer):
    hostname = serializers.CharField()
    alive = serializers.BooleanField()
    # queueing.selectors.workers() says which
    status = serializers.ChoiceField(choices=["online", "dead", "stopped"],
                                     help_text="online | dead (no heartbeat for WORKER_STALE_SECONDS) | stopped")
    queues = serializers.ListField(child=serializers.CharField())
    pool = serializers.CharField()
    concurrency = serializers.IntegerField()
    pid = serializers.IntegerField(allow_null=True)
    running = serializers.IntegerField()
    version = serializers.CharField()
    started_at = serializers.DateTimeField()
    last_heartbeat = serializers.DateTimeField()
    stopped_at = serializers.DateTimeField(allow_null=True)
    idle_while_queue_waits = serializers.BooleanField(
        help_text="alive with free slots while a queue it consumes has tasks unclaimed for QUEUED_RESEND_SECONDS: "
                  "it may have stopped consuming (restart it, or cancel_consumer + add_consumer)")


class WorkerControlIn(NoUnknownKeys):
    takes = "a worker action"

    queue = serializers.CharField(required=False, max_length=64, help_text="add_consumer / cancel_consumer")
    n = serializers.IntegerField(required=False, min_value=1, max_value=64, default=1,
                                 help_text="pool_grow / pool_shrink")


class WorkerControlOut(serializers.Serializer):
    hostname = serializers.CharField()
    action = serializers.ChoiceField(choices=list(control.ACTIONS))
    replies = serializers.ListField(child=serializers.JSONField())


class PercentilesOut(serializers.Serializer):
    p50 = serializers.FloatField(allow_null=True)
    p95 = serializers.FloatField(allow_null=True)
    p99 = serializers.FloatField(allow_null=True)


class MinuteOut(serializers.Serializer):
    minute = serializers.DateTimeField()
    finished = serializers.IntegerField()
    wait_p50_seconds = serializers.FloatField(allow_null=True, help_text="submit → start, of the tasks finished in this minute")
    wait_p95_seconds = serializers.FloatField(allow_null=True)


class TaskStatisticsOut(serializers.Serializer):
    window_seconds = serializers.IntegerField()
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    by_status = serializers.DictField(child=serializers.IntegerField(), help_text="tasks created in the window")
    by_queue = serializers.DictField(child=serializers.IntegerField())
    by_algorithm = serializers.DictField(child=serializers.IntegerField())
    finished = serializers.DictField(child=serializers.IntegerField(), help_text="finishes in the window by state")
    throughput_per_minute = serializers.FloatField()
    throughput = MinuteOut(many=True)
    wait_seconds = PercentilesOut(help_text="start - submit of tasks finished in the window")
    run_seconds = PercentilesOut(help_text="finish - start of tasks finished in the window")
    failure_rate = serializers.FloatField(allow_null=True, help_text="(FAILED + TIMED_OUT) / finished")


class WorkerTotalsOut(serializers.Serializer):
    total = serializers.IntegerField()
    alive = serializers.IntegerField()
    slots = serializers.IntegerField()


class SystemStatsOut(serializers.Serializer):
    queues = QueueOut(many=True)
    workers = WorkerTotalsOut()
    tasks = TaskStatisticsOut()
