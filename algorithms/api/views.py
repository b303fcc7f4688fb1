from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from algorithms import registry
from algorithms.remote.models import RemoteService
from config.errors import refuse_nul


class AlgorithmOut(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.CharField()
    description = serializers.CharField()
    queue = serializers.CharField()
    resources = serializers.DictField(child=serializers.IntegerField())
    timeout_seconds = serializers.IntegerField(allow_null=True)
    progress_timeout = serializers.FloatField(allow_null=True, help_text="seconds without progress before a run counts as stuck")
    params_schema = serializers.JSONField()
    examples = serializers.ListField(child=serializers.JSONField())
    # registry.Algorithm's own ("python"), external programs' and remote services' kinds
    backend = serializers.ChoiceField(choices=["python", "external", *RemoteService.Kind.values])


def _out(alg: registry.Algorithm) -> dict[str, Any]:
    return {
        "name": alg.name, "version": alg.version, "description": alg.description, "queue": alg.queue,
        "resources": alg.resources, "timeout_seconds": alg.timeout_seconds, "params_schema": alg.params_schema(),
        "examples": alg.examples, "backend": getattr(alg, "backend", "python"),
        "progress_timeout": getattr(alg, "progress_timeout", None),
    }


class AlgorithmViewSet(viewsets.ViewSet):
    lookup_value_regex = "[^/]+"

    @extend_schema(responses=AlgorithmOut(many=True))
    def list(self, request: Request) -> Response:
        return Response([_out(a) for a in registry.all_algorithms()])

    @extend_schema(responses=AlgorithmOut)
    def retrieve(self, request: Request, pk: str | None = None) -> Response:
        refuse_nul(pk, field="id")
        return Response(_out(registry.get(pk or "")))
