from __future__ import annotations

import math
from typing import Any, get_args

from django.conf import settings
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import OpenApiExample, extend_schema_field, extend_schema_serializer
from rest_framework import serializers
from rest_framework.settings import api_settings

from algorithms import results
from algorithms.models import Artifact
from config.bodies import NoUnknownKeys
from config.errors import InvalidInput
from config.schema import NamedChoiceField
from jobs import services
from jobs.events import EventName
from jobs.models import FINAL, Status, Task, TaskEvent
from webhooks.api.serializers import WebhookUrlField


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


@extend_schema_field({"type": "object", "additionalProperties": True,
                     "description": "the algorithm's parameters, checked against its params_schema"})
class JSONObjectField(serializers.JSONField):
    """A JSON object (the submit's ``params``; anything else is a 400). A NaN or an infinity in it (``1e400``
    parses as one) is a 400 naming its leaf (``params.seconds``), not DRF's "Value must be valid JSON."."""

    def to_internal_value(self, data: Any) -> Any:
        nonfinite = _nonfinite_detail(data)
        if nonfinite:
            raise serializers.ValidationError(nonfinite)
        return super().to_internal_value(data)


def _nonfinite_detail(value: Any) -> dict[Any, Any]:
    """The NaN and infinite floats of a parsed JSON value, as a nested error detail by their paths (a key by
    its name, a list's item by its index: ``{"a": {1: [NONFINITE]}}`` is ``params.a[1]``); a loop, so any
    depth the parser took is fine."""
    from algorithms.registry import NONFINITE

    detail: dict[Any, Any] = {}
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float) and not math.isfinite(item) and path:
            node = detail
            for step in path[:-1]:
                node = node.setdefault(step, {})
            node[path[-1]] = [NONFINITE]
        elif isinstance(item, dict):
            stack.extend((v, (*path, str(k))) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, (*path, i)) for i, v in enumerate(item))
    return detail


class StrictCharField(serializers.CharField):
    """A string, and only a string: DRF's CharField turns a number into its text (``1e400`` became
    ``"inf"``, ``1.50`` ``"1.5"``), so a label would not be what the client sent."""

    default_error_messages = {**serializers.CharField.default_error_messages, "not_a_string": "must be a string"}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("not_a_string")
        return super().to_internal_value(data)


def _has_nul(value: Any) -> bool:
    """Whether any string or key in a JSON value holds NUL; a loop, so any depth the parser took is fine."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and "\x00" in item:
            return True
        if isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


@extend_schema_serializer(examples=[
    OpenApiExample("hello", request_only=True, value={"algorithm": "demo.hello", "params": {"seconds": 2, "steps": 4}}),
    OpenApiExample("everything", request_only=True, value={
        "algorithm": "demo.sleep", "params": {"seconds": 30}, "priority": "high", "queue": "default",
        "max_retries": 2, "timeout_seconds": 600, "labels": ["nightly", "team-a"]}),
])
class TaskSubmitIn(NoUnknownKeys):
    takes = "a task"

    algorithm = serializers.CharField(max_length=200)
    params = JSONObjectField(required=False, default=dict)
    priority = PriorityField(required=False)
    queue = serializers.CharField(max_length=64, required=False)
    max_retries = serializers.IntegerField(required=False, min_value=0, max_value=20)
    timeout_seconds = serializers.IntegerField(required=False, min_value=1, max_value=7 * 24 * 3600)
    labels = serializers.ListField(child=StrictCharField(max_length=100), required=False, max_length=20)
    webhook_url = WebhookUrlField(required=False,
                                  help_text="POST this task's events here (signed; the secret is in the 201 response)")

    def validate_params(self, value: Any) -> Any:
        # PostgreSQL's jsonb refuses \u0000 in any string or key; an algorithm's schema may allow any string.
        if _has_nul(value):
            raise serializers.ValidationError("must not contain NUL characters (\\u0000)")
        return value


# The most failing items one batch answer names (each with all its fields); the message counts them all.
BATCH_ERRORS_MAX = 100


class BatchItems(serializers.ListSerializer):
    """A batch's ``tasks``: each item is checked as a submit is, by its serializer and then by the services
    (``build_spec``: the algorithm, params against its schema, the queue and its resources), and every
    failing item is named (``tasks[3].params.seconds``), not only the first. The valid data are the items'
    ``TaskSpec``s. The size limit (``TASK_BATCH_MAX``) is checked before any item."""

    default_error_messages = {**serializers.ListSerializer.default_error_messages,
                              "max_length": "at most {max_length} tasks per batch"}

    @property
    def max_length(self) -> int:
        return settings.CONVEYOR["BATCH_MAX"]

    @max_length.setter
    def max_length(self, value: Any) -> None:
        """Ignored: ``TASK_BATCH_MAX`` decides (also what the schema's ``maxItems`` says)."""

    def to_internal_value(self, data: Any) -> list[services.TaskSpec]:
        self.queues: dict[str, Any] = {}  # each queue read once for the whole batch
        try:
            return super().to_internal_value(data)
        except serializers.ValidationError as exc:
            raise serializers.ValidationError(_first_failing_items(exc.detail)) from None

    def run_child_validation(self, data: Any) -> services.TaskSpec:
        item = super().run_child_validation(data)
        try:
            return services.build_spec(**item, queues=self.queues)
        except InvalidInput as exc:
            detail = exc.fields or {api_settings.NON_FIELD_ERRORS_KEY: [exc.message]}
            raise serializers.ValidationError(detail) from None


def _first_failing_items(detail: Any) -> Any:
    """The items' errors by index (DRF gives a list with ``{}`` for each valid item, or a dict), at most
    ``BATCH_ERRORS_MAX`` items, and a note on ``tasks`` when more failed; a list's own error unchanged."""
    if isinstance(detail, list) and all(isinstance(item, dict) for item in detail):
        detail = {index: item for index, item in enumerate(detail) if item}
    if not isinstance(detail, dict) or not all(isinstance(key, int) for key in detail):
        return detail
    if len(detail) <= BATCH_ERRORS_MAX:
        return detail
    shown = dict(list(detail.items())[:BATCH_ERRORS_MAX])
    shown[api_settings.NON_FIELD_ERRORS_KEY] = [
        f"{len(detail)} tasks are invalid; the first {BATCH_ERRORS_MAX} are named here"]
    return shown


@extend_schema_serializer(examples=[OpenApiExample("two tasks", request_only=True, value={
    "tasks": [{"algorithm": "demo.noop"}, {"algorithm": "demo.hello", "params": {"seconds": 1}, "priority": 8}]})])
class TaskBatchSubmitIn(NoUnknownKeys):
    takes = "a batch"

    tasks = BatchItems(child=TaskSubmitIn(), allow_empty=False)  # validated: one TaskSpec per item, in order


@extend_schema_serializer(examples=[OpenApiExample("by name", request_only=True, value={"priority": "critical"}),
                                    OpenApiExample("by number", request_only=True, value={"priority": 7})])
class PriorityIn(NoUnknownKeys):
    """The task's new priority (required): 0-9, or low, normal, high or critical."""

    takes = "a priority change"

    # Never partial, although it comes with a PATCH: drf-spectacular documents a PATCH body as partial (a
    # ``Patched…`` component requiring nothing, the body optional), right for the queues' and webhooks'
    # PATCH, but this one answers 400 without ``priority``.
    priority = PriorityField()

    @property
    def partial(self) -> bool:
        return False

    @partial.setter
    def partial(self, value: bool) -> None:
        """Ignored: DRF's ``partial=`` argument, and drf-spectacular marking a PATCH body partial."""


class AfterSeqIn(serializers.Serializer):
    """``?after_seq=N`` of ``/logs/`` and the task socket: the events after seq N (below 0 reads as 0)."""

    after_seq = serializers.IntegerField(required=False)


def after_seq_of(query: Any) -> int | None:
    """The query's ``after_seq`` (None when absent); not an integer is a ValidationError naming it, given more
    than once an InvalidInput naming it (``one_value``: never only the last one read)."""
    from jobs.api.filters import one_value

    one_value(query, "after_seq")
    data = AfterSeqIn(data=query)
    data.is_valid(raise_exception=True)
    after = data.validated_data.get("after_seq")
    return None if after is None else max(0, after)


class ProgressOut(serializers.Serializer):
    percent = serializers.FloatField(source="progress_percent")
    stage = serializers.CharField(source="progress_stage")
    message = serializers.CharField(source="progress_message")
    metrics = serializers.JSONField(source="progress_metrics")


class ResultMetaOut(serializers.Serializer):
    storage = serializers.ChoiceField(choices=["inline", "file"])
    size = serializers.IntegerField(help_text="bytes of the result: a stored one's file; an inline one's JSON "
                                              "exactly as /result/ serves it (the `result` member)")
    sha256 = serializers.CharField(help_text="hex SHA-256 of those bytes")
    content_type = serializers.CharField()
    summary = serializers.JSONField()
    expired = serializers.BooleanField()
    expired_at = serializers.DateTimeField(allow_null=True)


class ArtifactOut(serializers.ModelSerializer):
    expired = serializers.BooleanField(read_only=True)
    url = serializers.SerializerMethodField()

    class Meta:
        model = Artifact
        fields = ["name", "size", "sha256", "content_type", "created_at", "expired", "expired_at", "url"]
        read_only_fields = fields  # an answer: every field is always there (required in the schema)

    def get_url(self, artifact: Artifact) -> str:
        return f"/api/v1/tasks/{artifact.task_id}/artifacts/{artifact.name}/"


class TaskOut(serializers.ModelSerializer):
    queue = serializers.CharField(source="queue_id")
    owner = serializers.CharField(source="owner.username", read_only=True)
    progress = ProgressOut(source="*")
    retry_of = serializers.UUIDField(source="retry_of_id", allow_null=True)
    result_meta = serializers.SerializerMethodField()

    class Meta:
        model = Task
        fields = [
            "id", "owner", "algorithm", "algorithm_version", "params", "status", "priority", "queue", "labels",
            "progress", "attempts", "max_retries", "timeout_seconds", "not_before", "cancel_requested",
            "created_at", "queued_at", "started_at", "finished_at", "worker", "error", "retry_of",
            "result_meta", "last_seq",
        ]
        read_only_fields = fields
        extra_kwargs = {"last_seq": {"help_text": "seq of the last event of the task this copy reflects "
                                                  "(a live event with a higher seq is newer)"}}

    @extend_schema_field(ResultMetaOut(allow_null=True))
    def get_result_meta(self, task: Task) -> dict[str, Any] | None:
        return results.describe_result(task)


class TaskResultOut(serializers.Serializer):
    task_id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=Status.choices)
    result = serializers.JSONField()


RESULT_BODY = (
    "An inline result (the task's `result_meta.storage` is `inline`) comes wrapped: `{task_id, status, result}`. "
    "A stored one (`result_meta.storage` is `file`: larger than `RESULT_INLINE_MAX`) is streamed as its own bytes, "
    "with its own content type and `Content-Disposition: attachment`: a JSON result is `application/json` "
    "too, but the result itself (any JSON value), without the wrapper; `result_meta` has its size and sha256.")


class TaskResultBody(serializers.Serializer):
    """The schema of ``GET /tasks/{id}/result/``'s JSON answer (``TaskResultBodySchema``); never serializes."""


class TaskResultBodySchema(OpenApiSerializerExtension):
    """``TaskResultBody`` in the schema: ``TaskResultOut`` or, for a stored result, any JSON value (``anyOf``,
    not ``oneOf``: the wrapper is a JSON value too, so it matches both)."""

    target_class = TaskResultBody

    def map_serializer(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        wrapped = auto_schema.resolve_serializer(TaskResultOut, direction).ref
        stored = {"description": "a stored JSON result (`result_meta.storage` is `file`): the value itself"}
        return {"anyOf": [wrapped, stored], "description": RESULT_BODY}


# Every kind of event a task's log holds: those of ``jobs.events.EventName`` but the snapshot (sent on the
# socket, never stored), and ``task.reordered`` (queueing.services records it; EventName does not name it).
TASK_EVENT_KINDS = sorted((set(get_args(EventName)) | {"task.reordered"}) - {"task.snapshot"})


class TaskEventOut(serializers.ModelSerializer):
    event = NamedChoiceField(TASK_EVENT_KINDS, enum_name="TaskEventKindEnum", read_only=True)
    data = serializers.DictField(read_only=True, help_text="the event's details: a log line's text, a retry's "
                                                           "error, a progress report's percent, stage, message and "
                                                           "metrics, …")

    class Meta:
        model = TaskEvent
        fields = ["seq", "event", "status", "data", "created_at"]
        read_only_fields = fields


# --- bulk cancel and bulk retry: POST /tasks/cancel/, POST /tasks/retry/ ---------------------------

# The most ids one bulk cancel or retry may name (a filter may match any number of tasks).
BULK_IDS_MAX = 1000


class TaskIdList(serializers.ListField):
    """Task ids, at most ``BULK_IDS_MAX``, counted before any is parsed; each must be a UUID."""

    child = serializers.UUIDField()
    default_error_messages = {**serializers.ListField.default_error_messages,
                              "max_length": "at most {max_length} ids (got {length}); or select them by filters"}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_empty=False, max_length=BULK_IDS_MAX, **kwargs)

    def to_internal_value(self, data: Any) -> list[Any]:
        if isinstance(data, list) and len(data) > BULK_IDS_MAX:
            self.fail("max_length", max_length=BULK_IDS_MAX, length=len(data))
        return super().to_internal_value(data)


def _filters_schema(statuses: list[str] | None = None, *, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """``statuses``: those the ``status`` filter takes (default: all); ``required``: filters that must be given."""
    from jobs.api.filters import LABEL_MAX
    from jobs.models import Status

    statuses = statuses or [s.value for s in Status]
    schema: dict[str, Any] = {
        "type": "object", "minProperties": 1, "additionalProperties": False,
        "description": "The filters of `GET /api/v1/tasks/`, as JSON (at least one, with a value): the tasks "
                       "that match all of them.",
        "properties": {
            "status": {"oneOf": [{"type": "string", "enum": statuses},
                                 {"type": "array", "items": {"type": "string", "enum": statuses}, "minItems": 1}],
                       "description": "one status, or a list: tasks in any of them"},
            "queue": {"type": "string"},
            "algorithm": {"type": "string"},
            "priority": {"oneOf": [{"type": "integer", "minimum": 0, "maximum": 9},
                                   {"type": "string", "enum": list(services.PRIORITY_NAMES)}]},
            "label": {"type": "string", "maxLength": LABEL_MAX, "description": "tasks carrying this label"},
            "created_after": {"type": "string", "format": "date-time"},
            "created_before": {"type": "string", "format": "date-time"},
            "id": {"type": "string", "description": "comma-separated task ids (better: `task_ids`)"},
        },
    }
    if required:
        schema["required"] = list(required)
    return schema


def _lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a UTF-16 surrogate on its own (JSON's ``"\\ud800"``): no database or
    UTF-8 answer can hold it."""
    return any("\ud800" <= c <= "\udfff" for c in text)


@extend_schema_field(_filters_schema())
class TaskFiltersField(serializers.Field):
    """The task list's filters (``jobs.api.filters.TaskFilter``) as a JSON object, applied to the tasks the
    caller may see (``context["tasks"]``): the valid value is that queryset, filtered. Each value is what
    the query string would carry (a number is its text; only ``status`` takes a list). Unknown names, bad
    values and a filter that filters nothing (``{}``, ``{"label": ""}``) are refused, each named."""

    default_error_messages = {
        "not_a_dict": "must be an object of the task list's filters (label, status, queue, …)",
        "empty": "at least one filter with a value: an empty filter would select every task",
    }

    def to_internal_value(self, data: Any) -> Any:
        from django.http import QueryDict
        from django_filters import MultipleChoiceFilter

        from jobs.api.filters import TaskFilter
        from jobs.models import Task

        if not isinstance(data, dict):
            self.fail("not_a_dict")
        if any(_lone_surrogate(name) for name in data):  # a name that cannot be written back in an answer
            raise serializers.ValidationError("filter names must be valid Unicode (no lone surrogates)")
        query, errors = QueryDict(mutable=True), {}
        for name, value in data.items():
            known = TaskFilter.base_filters.get(name)
            many = isinstance(known, MultipleChoiceFilter)
            values = value if many and isinstance(value, list) else [value]
            if known is None:
                errors[name] = [f"unknown filter; choose from {', '.join(TaskFilter.base_filters)}"]
            elif not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values):
                errors[name] = ["must be a string" + (" or a list of strings" if many else "")]
            elif any("\x00" in str(v) for v in values):
                errors[name] = ["must not contain NUL characters"]
            elif any(_lone_surrogate(str(v)) for v in values):  # as DRF's CharField refuses them
                errors[name] = ["must be valid Unicode (no lone surrogates)"]
            else:
                query.setlist(name, [str(v) for v in values])
        if errors:
            raise serializers.ValidationError(errors)
        found = TaskFilter(data=query, queryset=self.context.get("tasks", Task.objects.none()))
        if not found.is_valid():
            raise serializers.ValidationError({name: list(problems) for name, problems in found.errors.items()})
        if all(v in (None, "", [], ()) for v in found.form.cleaned_data.values()):
            self.fail("empty")
        self.check(found.form.cleaned_data)
        return found.qs

    def check(self, cleaned: dict[str, Any]) -> None:
        """More rules on the filters as ``TaskFilter`` read them (a subclass's); a ValidationError names one."""


class TaskSelectionIn(NoUnknownKeys):
    """Exactly one of `task_ids` and `filters`: the tasks a bulk action (cancel, retry) is for."""

    takes = "a bulk action"
    body_required = True  # an empty body names neither: a 400 (config.schema marks the body required)

    # Valid: {"tasks": the tasks the caller may see (filtered, for filters), "task_ids": the ids or None},
    # the bulk service's arguments; context["tasks"]: selectors.tasks_for(the caller) (``selection_of``).

    task_ids = TaskIdList(required=False, help_text=f"these tasks (at most {BULK_IDS_MAX}); an id of no task "
                                                    "you may see is answered in `not_found`")
    filters = TaskFiltersField(required=False, help_text="every task you may see that matches these filters")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("task_ids" in attrs) == ("filters" in attrs):
            reason = "give exactly one of task_ids and filters"
            raise serializers.ValidationError({"task_ids": [reason], "filters": [reason]})
        if "filters" in attrs:
            return {"tasks": attrs["filters"], "task_ids": None}
        return {"tasks": self.context["tasks"], "task_ids": attrs["task_ids"]}


def selection_of(serializer: type[TaskSelectionIn], request: Any) -> dict[str, Any]:
    """``serializer``'s valid data for the request's body, the tasks it names among those its user may see
    (``selectors.tasks_for``); a 400 naming each field otherwise."""
    from jobs import selectors

    data = serializer(data=request.data, context={"tasks": selectors.tasks_for(request.user)})
    data.is_valid(raise_exception=True)
    return dict(data.validated_data)


@extend_schema_serializer(examples=[
    OpenApiExample("by label", request_only=True, value={"filters": {"label": "sweep-42"}}),
    OpenApiExample("waiting ones of a label", request_only=True,
                   value={"filters": {"label": "sweep-42", "status": ["PENDING", "QUEUED"]}}),
    OpenApiExample("by id", request_only=True, value={"task_ids": ["3f1c2d9e-8a4b-4c6d-9e2f-1a2b3c4d5e6f"]}),
])
class TaskCancelManyIn(TaskSelectionIn):
    """Exactly one of `task_ids` and `filters`."""


def not_found_field() -> serializers.ListField:
    """A bulk action's answer: the ids of ``task_ids`` that named no task the caller may see."""
    return serializers.ListField(child=serializers.UUIDField(),
                                 help_text="of `task_ids`, those naming no task you may see (another user's, or "
                                           "none); with `filters`, only a task deleted by task retention "
                                           "while the call ran")


class TaskCancelManyOut(serializers.Serializer):
    cancelled = serializers.IntegerField(help_text="tasks that had not started (PENDING, QUEUED): CANCELLED now")
    cancelling = serializers.IntegerField(help_text="RUNNING tasks whose cancel was requested: their workers "
                                                    "stop them, and they end CANCELLED")
    already_final = serializers.IntegerField(help_text="tasks already SUCCEEDED, FAILED, CANCELLED or TIMED_OUT: "
                                                       "left as they are")
    not_found = not_found_field()


@extend_schema_field(_filters_schema(sorted(s.value for s in FINAL), required=("status",)))
class FinishedTaskFiltersField(TaskFiltersField):
    """The task list's filters with ``status`` required and final: a retry by filters names which ended
    tasks it re-runs (FAILED, TIMED_OUT, …), never a whole sweep by accident."""

    def check(self, cleaned: dict[str, Any]) -> None:
        statuses = cleaned.get("status") or []
        if not statuses:
            raise serializers.ValidationError({"status": [
                f"required: which finished tasks to retry ({', '.join(sorted(FINAL))})"]})
        if not set(statuses) <= set(FINAL):
            raise serializers.ValidationError({"status": [
                f"only finished tasks can be retried: {', '.join(sorted(FINAL))} (not "
                f"{', '.join(s for s in statuses if s not in FINAL)})"]})


@extend_schema_serializer(examples=[
    OpenApiExample("failed ones of a label", request_only=True,
                   value={"filters": {"label": "sweep-42", "status": "FAILED"}}),
    OpenApiExample("by id", request_only=True, value={"task_ids": ["3f1c2d9e-8a4b-4c6d-9e2f-1a2b3c4d5e6f"]}),
])
class TaskRetryManyIn(TaskSelectionIn):
    """Exactly one of `task_ids` and `filters`; `filters` must name the final `status`es to retry."""

    filters = FinishedTaskFiltersField(required=False, help_text="every task you may see that matches these "
                                                                 "filters; `status` required, final ones only")


class TaskRetryManyOut(serializers.Serializer):
    retried = serializers.IntegerField(help_text="finished tasks without a retry, re-run now, each as a new task")
    new_task_ids = serializers.ListField(child=serializers.UUIDField(),
                                         help_text="the tasks this call made, in the order of the tasks they retry "
                                                   "(those of `task_ids`, or by id for `filters`)")
    retries = serializers.DictField(child=serializers.UUIDField(),
                                    help_text="each finished task's id → its retry's id (whose `retry_of` points "
                                              "back): made by this call, or the latest made before")
    already_retried = serializers.IntegerField(help_text="finished tasks that had a retry already: not retried "
                                                         "again (their retries are in `retries`)")
    not_final = serializers.IntegerField(help_text="tasks not finished yet (PENDING, QUEUED, RUNNING): left alone")
    not_found = not_found_field()
