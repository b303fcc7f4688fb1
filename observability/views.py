from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from observability import health

RemoteServiceHealthOut = inline_serializer("RemoteServiceHealthOut", {
    "kind": serializers.CharField(),
    "health": serializers.CharField(),
    "checked_at": serializers.DateTimeField(allow_null=True),
    "schemes": serializers.IntegerField(),
    "error": serializers.CharField(required=False),
})
# One object for every check; each check adds its own fields (observability/health.py).
CheckOut = inline_serializer("HealthCheckOut", {
    "ok": serializers.BooleanField(),
    "latency_ms": serializers.FloatField(required=False),
    "error": serializers.CharField(required=False),
    "transport": serializers.CharField(required=False, help_text="broker: the broker's transport (redis, amqp)"),
    "count": serializers.IntegerField(required=False, help_text="workers: how many answered the ping"),
    "names": serializers.ListField(child=serializers.CharField(), required=False,
                                   help_text="workers: the hostnames that answered"),
    "services": serializers.DictField(child=RemoteServiceHealthOut, required=False,
                                      help_text="remote_services: each enabled service, by name"),
    "last_run_seconds_ago": serializers.FloatField(
        required=False, allow_null=True,
        help_text="reconciler: seconds since its last completed pass (null: none recorded)"),
})
HealthOut = inline_serializer("HealthOut", {
    "status": serializers.ChoiceField(choices=["ok", "unavailable"]),
    "checks": serializers.DictField(child=CheckOut),
    "error": inline_serializer("HealthError", {
        "code": serializers.CharField(), "message": serializers.CharField(),
    }, required=False),
})


# What a ready answer's checks look like (the schema's examples).
READY_CHECKS = {"database": {"ok": True, "latency_ms": 0.8}, "redis": {"ok": True, "latency_ms": 0.4},
                "broker": {"ok": True, "transport": "redis", "latency_ms": 1.1},
                "workers": {"ok": True, "count": 2, "latency_ms": 500.2},
                "reconciler": {"ok": True, "last_run_seconds_ago": 3.1, "latency_ms": 0.5}}


class SystemHealthView(APIView):
    """Readiness: database, Redis, broker (required); workers, remote services and the reconciler (reported).
    Open to probes without auth."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    rate_limit_scopes = None  # probes poll it; never limited

    @extend_schema(
        operation_id="system_health",
        tags=["system"],
        auth=[],
        responses={200: HealthOut, 503: HealthOut},
        examples=[
            OpenApiExample("ready", response_only=True, status_codes=["200"], value={
                "status": "ok", "checks": READY_CHECKS}),
            OpenApiExample("ready, beat down", response_only=True, status_codes=["200"], value={
                "status": "ok", "checks": {**READY_CHECKS, "reconciler": {
                    "ok": False, "last_run_seconds_ago": 312.4, "latency_ms": 0.5,
                    "error": "last reconciler pass 312s ago (more than 25s): is celery beat running, and a worker "
                             "consuming the default queue?"}}}),
            OpenApiExample("database down", response_only=True, status_codes=["503"], value={
                "status": "unavailable",
                "error": {"code": "not_ready", "message": "database: OperationalError: connection refused"},
                "checks": {"database": {"ok": False, "error": "OperationalError: connection refused"}}}),
            OpenApiExample("shutting down", response_only=True, status_codes=["503"], value={
                "status": "unavailable", "checks": {},
                "error": {"code": "shutting_down", "message": "this web process is shutting down"}}),
        ],
    )
    def get(self, request: Request) -> Response:
        if health.shutting_down.is_set():  # draining before a stop: no checks, no new requests please
            body = {"status": "unavailable", "checks": {},
                    "error": {"code": "shutting_down", "message": "this web process is shutting down"}}
            return Response(body, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        ready, checks = health.shared_readiness()
        if ready:
            return Response({"status": "ok", "checks": checks})
        failed = [f"{name}: {checks[name]['error']}" for name in health.REQUIRED if not checks[name]["ok"]]
        body = {"status": "unavailable", "checks": checks,
                "error": {"code": "not_ready", "message": "; ".join(failed)}}
        return Response(body, status=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "5"})
