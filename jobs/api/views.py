from __future__ import annotations

import base64
import json
from typing import Any

from django import forms
from django.db.models import Prefetch
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import exceptions, mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.authentication import field_scopes, require_key_scope
from algorithms import downloads, results
from algorithms.models import Artifact
from config.errors import InvalidInput, NotFound, refuse_nul
from config.schema import errors
from jobs import selectors, services
from jobs.api.filters import TaskFilter, UtcDateTimeField, one_value
from jobs.api.serializers import (
    BULK_IDS_MAX, ArtifactOut, PriorityIn, TaskBatchSubmitIn, TaskCancelManyIn, TaskCancelManyOut, TaskEventOut, TaskOut,
    RESULT_BODY, TaskResultBody, TaskRetryManyIn, TaskRetryManyOut, TaskSubmitIn, after_seq_of, selection_of,
)
from jobs.errors import NoResult
from jobs.models import Status, Task
from queueing.api.serializers import WaitingOut
from webhooks import selectors as webhook_selectors

# A batch stores ``<key>#<index>`` in Task.idempotency_key (max_length=255): 200 + "#" + the index's digits
# fits any batch with fewer than 10**54 items (BATCH_MAX; tests/edge/test_bad_input.py checks it).
IDEMPOTENCY_KEY_MAX = 200


def key_header(name: str, description: str) -> OpenApiParameter:
    """An optional request header holding an idempotency key (at most IDEMPOTENCY_KEY_MAX characters)."""
    return OpenApiParameter(name, {"type": "string", "maxLength": IDEMPOTENCY_KEY_MAX}, OpenApiParameter.HEADER,
                            required=False, description=description)


IDEMPOTENCY_HEADER = key_header(
    "Idempotency-Key", f"The same key from the same user returns the same task (alias: X-Request-ID); "
                       f"at most {IDEMPOTENCY_KEY_MAX} characters.")
REQUEST_ID_HEADER = key_header(
    "X-Request-ID", "A trace id, echoed in the response and the logs. Without an Idempotency-Key it is also the "
                    "submit's idempotency key: the same id with the same body returns the first task (200), with "
                    "another body answers 409, so send a new one per submit.")


class TaskWebhookOut(serializers.Serializer):
    id = serializers.UUIDField()
    url = serializers.URLField()
    secret = serializers.CharField(help_text="signing secret of this task's webhook; shown once, here")


class TaskSubmitOut(TaskOut):
    """What a submit answers: the task, plus its shortcut webhook subscription when it set ``webhook_url``."""

    webhook = TaskWebhookOut(required=False, help_text="only on the submit that created a task with webhook_url")

    class Meta(TaskOut.Meta):
        fields = [*TaskOut.Meta.fields, "webhook"]


class TaskDetailOut(TaskOut):
    """``GET /tasks/{id}/``: the task, plus why and where it waits while PENDING or QUEUED."""

    waiting = WaitingOut(allow_null=True, help_text="position, reason and estimated start; null once running")

    class Meta(TaskOut.Meta):
        fields = [*TaskOut.Meta.fields, "waiting"]


TaskBatchOut = inline_serializer("TaskBatchOut", {"tasks": TaskSubmitOut(many=True)})


def idempotency_key(request: Request, *, alias: bool = True) -> str | None:
    """The request's key, or None; one too long is a 400, never cut short (two keys would then collide).
    ``alias``: a submit's ``X-Request-ID`` stands in for a missing ``Idempotency-Key`` (DESIGN §4)."""
    header = "Idempotency-Key" if request.headers.get("Idempotency-Key") or not alias else "X-Request-ID"
    key = (request.headers.get(header) or "").strip()
    if len(key) > IDEMPOTENCY_KEY_MAX:
        reason = f"at most {IDEMPOTENCY_KEY_MAX} characters (got {len(key)})"
        raise InvalidInput(f"{header}: {reason}", fields={header: [reason]})
    refuse_nul(key, field=header)
    return key or None


BULK_SELECTION = (f"Give `task_ids` (at most {BULK_IDS_MAX}) or `filters` (those of the task list), not both. Only "
                  "your own tasks (operators: anyone's). Counts as a batch call (`RATE_LIMIT_BATCH`).")


def bulk_action(path: str) -> Any:
    """``POST /tasks/<path>/``: a bulk action's route (``<path>-many``), its body no list's filters or page."""
    return action(detail=False, methods=["post"], url_path=path, url_name=f"{path}-many", filter_backends=[],
                  pagination_class=None)


class NewestFirst(CursorPagination):
    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
    page_size_query_description = "Rows per page: a whole number from 1 (default 50); more than 500 reads as 500."

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        """DRF's, with ``next``, ``previous`` and ``results`` all required: every page has them (the links
        null when there is no such page)."""
        paginated = super().get_paginated_response_schema(schema)
        paginated["required"] = ["next", "previous", "results"]
        return paginated

    def get_page_size(self, request: Request) -> int:
        """``?page_size``: a whole number from 1; anything else is a 400 naming it (DRF would quietly use
        the default); above ``max_page_size`` it is that. Left empty, as an empty filter, it is not there.
        Given twice, a 400 naming it too (DRF would use the last)."""
        raw = one_value(request.query_params, self.page_size_query_param)
        if not raw:
            return self.page_size
        if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
            reason = f"must be a whole number from 1 (at most {self.max_page_size} are given)"
            raise InvalidInput(f"page_size: {reason}", fields={"page_size": [reason]})
        return min(int(raw), self.max_page_size)

    def decode_cursor(self, request: Request) -> Cursor | None:
        """DRF's, with a malformed cursor a 400 naming ``cursor`` (DRF answers 404), and its position read
        as the ``created_at`` it stands for, so a NUL or a non-date never reaches the query. Given twice,
        a 400 naming it (DRF would read the last); given, but nothing (``!!!!``), a 400 too, not page 1."""
        raw = one_value(request.query_params, self.cursor_query_param)
        try:
            cursor = super().decode_cursor(request)
            if raw and not base64.b64decode(raw.encode("ascii")):
                raise exceptions.NotFound()  # "!!!!", "%00": base64 decodes them to nothing, DRF to page 1
            if cursor is None or cursor.position is None:
                return cursor
            position = UtcDateTimeField().clean(cursor.position)
        except (exceptions.NotFound, forms.ValidationError):
            reason = "invalid cursor"
            raise InvalidInput(f"cursor: {reason}", fields={"cursor": [reason]}) from None
        return cursor._replace(position=str(position))


class TaskViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = TaskOut
    filterset_class = TaskFilter
    pagination_class = NewestFirst
    # config/ratelimit.py: other writes count as submits
    rate_limit_scopes = {"batch": "batch", "cancel_many": "batch", "retry_many": "batch"}
    # A submit's webhook_url makes a webhook: an API key needs ``webhooks`` for it too (accounts.authentication).
    api_key_field_scopes = {"create": {"webhook_url": "webhooks"}, "batch": {"webhook_url": "webhooks"}}

    def get_queryset(self):  # type: ignore[no-untyped-def]
        if getattr(self, "swagger_fake_view", False):  # schema generation: no user, only the model
            return Task.objects.none()
        stored_results = Prefetch("artifacts", queryset=Artifact.objects.filter(kind=Artifact.Kind.RESULT))
        return selectors.tasks_for(self.request.user).select_related("owner").prefetch_related(stored_results)

    def get_object(self):  # type: ignore[no-untyped-def]
        return selectors.task_for(self.request.user, self.kwargs["pk"])

    @extend_schema(request=TaskSubmitIn, responses={201: TaskSubmitOut, 200: TaskSubmitOut, **errors(409)},
                   parameters=[IDEMPOTENCY_HEADER, REQUEST_ID_HEADER])
    def create(self, request: Request) -> Response:
        data = TaskSubmitIn(data=request.data)
        data.is_valid(raise_exception=True)
        spec = services.build_spec(**data.validated_data)
        for field, scope in field_scopes(self).items():
            if getattr(spec, field, None):
                require_key_scope(request, scope, because=field)
        task, created = services.submit(owner=request.user, spec=spec, idempotency_key=idempotency_key(request))
        body = TaskOut(task).data
        if created and spec.webhook_url:
            body["webhook"] = webhook_selectors.task_webhooks([task.id])[task.id]  # its secret, shown once
        return Response(body, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(responses=TaskDetailOut)
    def retrieve(self, request: Request, pk: str | None = None) -> Response:
        """The task; while it waits, ``waiting`` says its position, why it waits and when it may start."""
        return Response(_with_waiting(self.get_object()))

    @extend_schema(request=TaskBatchSubmitIn, responses={201: TaskBatchOut, 200: TaskBatchOut, **errors(409)},
                   parameters=[IDEMPOTENCY_HEADER, REQUEST_ID_HEADER])
    @action(detail=False, methods=["post"])
    def batch(self, request: Request) -> Response:
        data = TaskBatchSubmitIn(data=request.data)
        data.is_valid(raise_exception=True)  # every failing item named, checks of the services included
        specs = data.validated_data["tasks"]
        for field, scope in field_scopes(self).items():
            if any(getattr(spec, field, None) for spec in specs):
                require_key_scope(request, scope, because=field)
        tasks, created = services.submit_batch(owner=request.user, specs=specs, idempotency_key=idempotency_key(request))
        rows = TaskOut(tasks, many=True).data
        hooks = webhook_selectors.task_webhooks([t.id for t in tasks]) if created else {}
        for row, task in zip(rows, tasks):
            if task.id in hooks:
                row["webhook"] = hooks[task.id]  # its secret, shown once
        return Response({"tasks": rows},
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(request=None, responses={200: TaskOut, **errors(409)})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        task = services.cancel(task_id=self.get_object().id, by=request.user)
        return Response(TaskOut(task).data)

    @extend_schema(operation_id="tasks_cancel_many", request=TaskCancelManyIn, responses={200: TaskCancelManyOut},
                   description=("Cancel many tasks at once, each as `POST /tasks/{id}/cancel/` would: PENDING "
                                "and QUEUED ones at once, RUNNING ones by their workers, final ones left as they "
                                "are (counted). " + BULK_SELECTION))
    @bulk_action("cancel")
    def cancel_many(self, request: Request) -> Response:
        counts = services.cancel_many(**selection_of(TaskCancelManyIn, request), by=request.user)
        return Response(TaskCancelManyOut(counts).data)

    @extend_schema(operation_id="tasks_retry_many", request=TaskRetryManyIn,
                   responses={201: TaskRetryManyOut, 200: TaskRetryManyOut},
                   description=("Make sure each finished task named has a retry: one without gets a new task, "
                                "as `POST /tasks/{id}/retry/` makes it (`retry_of` pointing back; the same "
                                "algorithm, params, queue, priority, labels and limits, its owner's); one that has "
                                "a retry already is answered with it and not retried again; one not finished is "
                                "left alone. So the call is idempotent by itself: sent again, it makes nothing "
                                "twice (an `Idempotency-Key` is not needed and not read). `filters` must name the "
                                "`status`es: FAILED, TIMED_OUT, CANCELLED or SUCCEEDED. 201 when it made tasks, "
                                "else 200. " + BULK_SELECTION))
    @bulk_action("retry")
    def retry_many(self, request: Request) -> Response:
        counts = services.retry_many(**selection_of(TaskRetryManyIn, request), by=request.user)
        return Response(TaskRetryManyOut(counts).data,
                        status=status.HTTP_201_CREATED if counts.retried else status.HTTP_200_OK)

    @extend_schema(request=None, responses={201: TaskOut, 200: TaskOut, **errors(409)},
                   parameters=[key_header(
                       "Idempotency-Key", "The same key from the same user retrying the same task answers 200 "
                                          "with the task the first retry made; used for another request, 409.")])
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        task, created = services.retry(task_id=self.get_object().id, by=request.user,
                                       idempotency_key=idempotency_key(request, alias=False))
        return Response(TaskOut(task).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(request=PriorityIn, responses={200: TaskDetailOut, **errors(409)})
    @action(detail=True, methods=["patch"])
    def priority(self, request: Request, pk: str | None = None) -> Response:
        data = PriorityIn(data=request.data)
        data.is_valid(raise_exception=True)
        task = services.change_priority(task_id=self.get_object().id, priority=data.validated_data["priority"],
                                        by=request.user)
        return Response(_with_waiting(task))

    @extend_schema(responses={(200, "application/json"): OpenApiResponse(TaskResultBody, description=RESULT_BODY),
                              **downloads.SCHEMA_RESPONSES, **errors(409)},
                   description="Inline results as JSON, wrapped; a stored (large) result is streamed as its bytes "
                               "(Range and `Accept-Encoding: zstd` supported), a JSON one as `application/json` "
                               "without the wrapper: the task's `result_meta.storage` (`inline`, `file`) says "
                               "which. 410 once it expired.")
    @action(detail=True, methods=["get"], renderer_classes=downloads.DOWNLOAD_RENDERERS)
    def result(self, request: Request, pk: str | None = None) -> Any:
        task = self.get_object()
        if task.status != Status.SUCCEEDED:
            raise NoResult(f"task is {task.status}; only a SUCCEEDED task has a result"
                           + (f" (error: {task.error})" if task.error else ""))
        inline = results.inline_result_text(task)
        if inline is None:
            stored = results.stored_result(task)
            if stored is not None:
                return downloads.serve(request, stored,
                                       filename=f"{task.id}-result{downloads.extension(stored.content_type)}")
            inline = "null"  # the algorithm returned nothing
        # The result as PostgreSQL writes the jsonb, byte for byte: what result_meta's size and sha256 describe.
        head = json.dumps({"task_id": str(task.id), "status": task.status}, separators=(",", ":"))[:-1]
        return HttpResponse(f'{head},"result":{inline}}}'.encode(), content_type="application/json")

    @extend_schema(responses=ArtifactOut(many=True))
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[])  # a plain list
    def artifacts(self, request: Request, pk: str | None = None) -> Response:
        task = self.get_object()
        return Response(ArtifactOut(results.artifacts_of(task), many=True, context={"request": request}).data)

    @extend_schema(responses=downloads.SCHEMA_RESPONSES)
    @action(detail=True, methods=["get"], url_path=r"artifacts/(?P<name>[^/]+)",
            renderer_classes=downloads.DOWNLOAD_RENDERERS)
    def artifact(self, request: Request, pk: str | None = None, name: str = "") -> Any:
        task = self.get_object()
        if "\x00" in name:  # no artifact is named so, and PostgreSQL cannot compare text holding NUL
            raise NotFound(f"task has no artifact {name!r}")
        row = results.artifact_of(task, name)
        return downloads.serve(request, row, filename=row.name)

    @extend_schema(
        responses=TaskEventOut(many=True),
        parameters=[OpenApiParameter("after_seq", int, description="only events after this sequence number")],
    )
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[])  # a plain list
    def logs(self, request: Request, pk: str | None = None) -> Response:
        task = self.get_object()
        after = after_seq_of(request.query_params) or 0
        events = selectors.events_for(task, after_seq=after, include_progress=False)[:5000]
        return Response(TaskEventOut(events, many=True).data)


def _with_waiting(task: Any) -> dict[str, Any]:
    """``TaskOut`` plus ``waiting``: position, reason and estimated start while the task waits."""
    from queueing.selectors import why_waiting

    info = why_waiting(task)
    return {**TaskOut(task).data, "waiting": WaitingOut(info).data if info else None}

