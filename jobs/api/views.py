from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response

from jobs import selectors, services
from jobs.api.filters import TaskFilter
from jobs.api.serializers import (
    PriorityIn, TaskBatchSubmitIn, TaskEventOut, TaskOut, TaskResultOut, TaskSubmitIn,
)
from jobs.errors import NoResult
from jobs.models import Status

IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key", str, OpenApiParameter.HEADER, required=False,
    description="The same key from the same user returns the same task (alias: X-Request-ID).",
)


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get("Idempotency-Key") or request.headers.get("X-Request-ID")
    return key.strip()[:200] if key and key.strip() else None


class NewestFirst(CursorPagination):
    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class TaskViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = TaskOut
    filterset_class = TaskFilter
    pagination_class = NewestFirst

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return selectors.tasks_for(self.request.user).select_related("owner")

    def get_object(self):  # type: ignore[no-untyped-def]
        return selectors.task_for(self.request.user, self.kwargs["pk"])

    @extend_schema(request=TaskSubmitIn, responses={201: TaskOut, 200: TaskOut}, parameters=[IDEMPOTENCY_HEADER])
    def create(self, request: Request) -> Response:
        data = TaskSubmitIn(data=request.data)
        data.is_valid(raise_exception=True)
        spec = services.build_spec(**data.validated_data)
        task, created = services.submit(owner=request.user, spec=spec, idempotency_key=idempotency_key(request))
        return Response(TaskOut(task).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(request=TaskBatchSubmitIn, responses={201: TaskOut(many=True)}, parameters=[IDEMPOTENCY_HEADER])
    @action(detail=False, methods=["post"])
    def batch(self, request: Request) -> Response:
        data = TaskBatchSubmitIn(data=request.data)
        data.is_valid(raise_exception=True)
        specs = [_spec_at(i, item) for i, item in enumerate(data.validated_data["tasks"])]
        tasks, created = services.submit_batch(owner=request.user, specs=specs, idempotency_key=idempotency_key(request))
        return Response({"tasks": TaskOut(tasks, many=True).data},
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(request=None, responses=TaskOut)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        task = services.cancel(task_id=self.get_object().id, by=request.user)
        return Response(TaskOut(task).data)

    @extend_schema(request=None, responses={201: TaskOut})
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        task = services.retry(task_id=self.get_object().id, by=request.user)
        return Response(TaskOut(task).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=PriorityIn, responses=TaskOut)
    @action(detail=True, methods=["patch"])
    def priority(self, request: Request, pk: str | None = None) -> Response:
        data = PriorityIn(data=request.data)
        data.is_valid(raise_exception=True)
        task = services.change_priority(task_id=self.get_object().id, priority=data.validated_data["priority"])
        return Response(TaskOut(task).data)

    @extend_schema(responses=TaskResultOut)
    @action(detail=True, methods=["get"])
    def result(self, request: Request, pk: str | None = None) -> Response:
        task = self.get_object()
        if task.status != Status.SUCCEEDED:
            raise NoResult(f"task is {task.status}; only a SUCCEEDED task has a result"
                           + (f" (error: {task.error})" if task.error else ""))
        return Response({"task_id": task.id, "status": task.status, "result": task.result})

    @extend_schema(
        responses=TaskEventOut(many=True),
        parameters=[OpenApiParameter("after_seq", int, description="only events after this sequence number")],
    )
    @action(detail=True, methods=["get"])
    def logs(self, request: Request, pk: str | None = None) -> Response:
        task = self.get_object()
        try:
            after = max(0, int(request.query_params.get("after_seq", 0)))
        except ValueError:
            after = 0
        events = selectors.events_for(task, after_seq=after, include_progress=False)[:5000]
        return Response(TaskEventOut(events, many=True).data)


def _spec_at(index: int, item: dict[str, Any]) -> services.TaskSpec:
    """Validate one batch item; errors name the item (``tasks[3].params.seconds``)."""
    from config.errors import InvalidInput

    try:
        return services.build_spec(**item)
    except InvalidInput as exc:
        fields = {f"tasks[{index}].{k}": v for k, v in (exc.fields or {}).items()}
        raise InvalidInput(f"tasks[{index}].{exc.message}", fields=fields) from None
