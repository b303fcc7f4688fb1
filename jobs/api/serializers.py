from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from jobs import services
from jobs.models import Task, TaskEvent


@extend_schema_field({"oneOf": [{"type": "integer", "minimum": 0, "maximum": 9},
                                {"type": "string", "enum": list(services.PRIORITY_NAMES)}]})
class PriorityField(serializers.Field):
    default_error_messages = {"invalid": "must be 0-9 or one of low, normal, high, critical"}

    def to_internal_value(self, data: Any) -> int:
        try:
            return services.parse_priority(data)
        except Exception:
            self.fail("invalid")

    def to_representation(self, value: int) -> int:
        return value


class TaskSubmitIn(serializers.Serializer):
    algorithm = serializers.CharField(max_length=200)
    params = serializers.JSONField(required=False, default=dict)
    priority = PriorityField(required=False)
    queue = serializers.CharField(max_length=64, required=False)
    max_retries = serializers.IntegerField(required=False, min_value=0, max_value=20)
    timeout_seconds = serializers.IntegerField(required=False, min_value=1, max_value=7 * 24 * 3600)
    labels = serializers.ListField(child=serializers.CharField(max_length=100), required=False, max_length=20)


class TaskBatchSubmitIn(serializers.Serializer):
    tasks = TaskSubmitIn(many=True, allow_empty=False)

    def validate_tasks(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        limit = settings.CONVEYOR["BATCH_MAX"]
        if len(value) > limit:
            raise serializers.ValidationError(f"at most {limit} tasks per batch")
        return value


class PriorityIn(serializers.Serializer):
    priority = PriorityField()


class ProgressOut(serializers.Serializer):
    percent = serializers.FloatField(source="progress_percent")
    stage = serializers.CharField(source="progress_stage")
    message = serializers.CharField(source="progress_message")
    metrics = serializers.JSONField(source="progress_metrics")


class TaskOut(serializers.ModelSerializer):
    queue = serializers.CharField(source="queue_id")
    owner = serializers.CharField(source="owner.username", read_only=True)
    progress = ProgressOut(source="*")
    retry_of = serializers.UUIDField(source="retry_of_id", allow_null=True)

    class Meta:
        model = Task
        fields = [
            "id", "owner", "algorithm", "algorithm_version", "params", "status", "priority", "queue", "labels",
            "progress", "attempts", "max_retries", "timeout_seconds", "not_before", "cancel_requested",
            "created_at", "queued_at", "started_at", "finished_at", "worker", "error", "retry_of",
        ]


class TaskResultOut(serializers.Serializer):
    task_id = serializers.UUIDField()
    status = serializers.CharField()
    result = serializers.JSONField()


class TaskEventOut(serializers.ModelSerializer):
    class Meta:
        model = TaskEvent
        fields = ["seq", "event", "status", "data", "created_at"]

