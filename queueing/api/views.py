from __future__ import annotations

from django.contrib.auth import get_user_model
from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import Forbidden, InvalidInput, refuse_nul
from config.permissions import IsOperator, is_operator
from config.schema import ErrorOut, errors
from jobs.api.filters import one_value
from queueing import control, selectors, services, statistics
from queueing.api.serializers import (
    QueueOut, QueuePatchIn, ReorderIn, ReorderOut, SystemStatsOut, TaskStatisticsOut, WaitingListOut,
    WaitingTaskOut, WorkerControlIn, WorkerControlOut, WorkerOut, queue_out,
)

OPERATOR_ACTIONS = {"partial_update", "pause", "resume", "reorder"}


def _int_param(request: Request, name: str, default: int, *, lo: int, hi: int) -> int:
    raw = one_value(request.query_params, name)
    try:
        return min(hi, max(lo, int(default if raw is None else raw)))
    except ValueError:
        raise InvalidInput(f"{name}: must be an integer", fields={name: ["must be an integer"]}) from None


def _text_param(request: Request, name: str) -> str | None:
    """A query parameter that goes into a query."""
    value = one_value(request.query_params, name)
    refuse_nul(value, field=name)
    return value


class QueueViewSet(viewsets.ViewSet):
    """Queues: everybody sees their depth; operators change them."""

    lookup_field = "name"
    lookup_value_regex = "[a-z0-9][a-z0-9_.-]*"

    def get_permissions(self):  # type: ignore[no-untyped-def]
        return [IsOperator()] if self.action in OPERATOR_ACTIONS else [IsAuthenticated()]

    @extend_schema(responses=QueueOut(many=True))
    def list(self, request: Request) -> Response:
        now = timezone.now()
        return Response([queue_out(s, now) for s in selectors.queue_states()])

    @extend_schema(responses=QueueOut)
    def retrieve(self, request: Request, name: str) -> Response:
        return Response(queue_out(selectors.queue_state(name), timezone.now()))

    @extend_schema(request=QueuePatchIn, responses=QueueOut)
    def partial_update(self, request: Request, name: str) -> Response:
        data = QueuePatchIn(data=request.data)
        data.is_valid(raise_exception=True)
        services.update(name=name, **data.validated_data)
        return self.retrieve(request, name)

    @extend_schema(request=None, responses=QueueOut)
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, name: str) -> Response:
        services.pause(name=name, by=request.user)
        return self.retrieve(request, name)

    @extend_schema(request=None, responses=QueueOut)
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, name: str) -> Response:
        services.resume(name=name, by=request.user)
        return self.retrieve(request, name)

    @extend_schema(request=ReorderIn, responses={200: ReorderOut, **errors(409)})
    @action(detail=True, methods=["post"])
    def reorder(self, request: Request, name: str) -> Response:
        data = ReorderIn(data=request.data)
        data.is_valid(raise_exception=True)
        pinned = services.reorder(name=name, by=request.user, **data.validated_data)
        return Response({"queue": name, "pinned": pinned})

    @extend_schema(
        responses=WaitingListOut,
        parameters=[OpenApiParameter("offset", int), OpenApiParameter("limit", int, description="at most 1000")],
    )
    @action(detail=True, methods=["get"])
    def tasks(self, request: Request, name: str) -> Response:
        """The waiting tasks, each with its position and why it waits: the QUEUED ones (handed to the
        broker, not started; position 0) first, then the PENDING ones in start order."""
        offset = _int_param(request, "offset", 0, lo=0, hi=10**9)
        limit = _int_param(request, "limit", 100, lo=1, hi=1000)
        state, rows = selectors.waiting_list(name=name, user=request.user, offset=offset, limit=limit)
        # One serializer for the page (not one per row: building DRF fields dominates otherwise).
        tasks = WaitingTaskOut([{"id": t.id, "status": t.status, "owner": t.owner, "algorithm": t.algorithm, "priority": t.priority,
                                 "pinned": t.queue_position is not None, "created_at": t.created_at,
                                 "labels": t.labels, "waiting": info} for t, info in rows], many=True).data
        return Response({"queue": queue_out(state, timezone.now()), "offset": offset, "limit": limit, "tasks": tasks})


class WorkerViewSet(viewsets.ViewSet):
    """The worker registry (heartbeat rows) and remote control, for operators."""

    permission_classes = [IsOperator]
    lookup_field = "hostname"
    lookup_value_regex = "[^/]+"

    @extend_schema(responses=WorkerOut(many=True))
    def list(self, request: Request) -> Response:
        return Response(WorkerOut(selectors.workers(), many=True).data)


class WorkerControlView(APIView):
    permission_classes = [IsOperator]

    @extend_schema(request=WorkerControlIn, responses={
        202: WorkerControlOut, **errors(409),
        504: OpenApiResponse(ErrorOut, description="The worker did not answer within 2 s (every action but shutdown).",
                             examples=[OpenApiExample("worker_no_reply", value={"error": {
                                 "code": "worker_no_reply", "message": "worker 'w1@h' did not answer pool_grow within 2 s"}})]),
    }, parameters=[OpenApiParameter("command", str, OpenApiParameter.PATH, enum=list(control.ACTIONS),
                                    description="what the worker should do")],
       description="202: the worker took the command. 409 `worker_not_alive` (stopped, lost or no recent "
                   "heartbeat) or `worker_refused` (its reply reports an error); 400 names `queue` when "
                   "add_consumer names a queue nothing is routed to.")
    def post(self, request: Request, hostname: str, command: str) -> Response:
        data = WorkerControlIn(data=request.data)
        data.is_valid(raise_exception=True)
        replies = control.control(hostname=hostname, action=command, **data.validated_data)
        return Response({"hostname": hostname, "action": command, "replies": replies}, status=202)


class TaskStatisticsView(APIView):
    """Own tasks; operators see all (or one user's with ``?user=``)."""

    @extend_schema(responses={200: TaskStatisticsOut, **errors(403)},
                   parameters=[OpenApiParameter("window", str, description="15m, 1h (default), 24h, 7d"),
                               OpenApiParameter("user", str, description="operators: one user's tasks (others: "
                                                                             "only their own name; another is a 403)")])
    def get(self, request: Request) -> Response:
        window = statistics.parse_window(one_value(request.query_params, "window"))
        owner = None if is_operator(request.user) else request.user
        username = _text_param(request, "user")
        if username and owner is not None and username != owner.get_username():
            reason = "only operators may read another user's statistics"
            raise Forbidden(f"user: {reason}", fields={"user": [reason]})
        if username and owner is None:
            owner = get_user_model().objects.filter(username=username).first()
            if owner is None:
                raise InvalidInput(f"user: unknown user {username!r}", fields={"user": ["unknown user"]})
        return Response(statistics.task_statistics(window=window, owner=owner))


class SystemStatsView(APIView):
    """Operators: every queue, every worker and all tasks' statistics in one answer."""

    permission_classes = [IsOperator]

    @extend_schema(responses=SystemStatsOut,
                   parameters=[OpenApiParameter("window", str, description="15m, 1h (default), 24h, 7d")])
    def get(self, request: Request) -> Response:
        window = statistics.parse_window(one_value(request.query_params, "window"))
        now = timezone.now()
        workers = selectors.workers()
        return Response({
            "queues": [queue_out(s, now) for s in selectors.queue_states()],
            "workers": {"total": len(workers), "alive": sum(w["alive"] for w in workers),
                        "slots": sum(w["concurrency"] for w in workers if w["alive"])},
            "tasks": statistics.task_statistics(window=window),
        })
