"""OpenAPI generation: every operation documents the errors it can return, in the one error shape.

``AutoSchema`` adds, to what views declare with ``@extend_schema``, the error responses that follow
from the operation itself (any request → 400; authentication → 401/403; a path
parameter or a paginated list → 404; a JSON body → 413 and 415; the rate limiter → 429 with ``Retry-After``;
an outage of PostgreSQL or Redis → 503 with ``Retry-After``). Views declare only what is special to
them (a 409 from a service). ``tests/edge/test_openapi.py`` fails when an endpoint is not in
the schema or the schema generator had to guess.
"""
from __future__ import annotations

from typing import Any

from drf_spectacular import openapi
from drf_spectacular.plumbing import ResolvedComponent
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema_serializer
from rest_framework import permissions, serializers
from rest_framework.pagination import CursorPagination

ERROR_DESCRIPTIONS = {
    400: ("invalid", "The request is invalid; `fields` names each bad field by its path.",
          {"fields": {"params.seconds": ["must be <= 3600"]}}),
    401: ("not_authenticated", "No valid credentials: send a JWT (`Authorization: Bearer …`) or an API key "
          "(`X-API-Key: …`).", {}),
    403: ("permission_denied", "Authenticated, but not allowed (operators only, or the API key lacks the scope).",
          {}),
    404: ("not_found", "No such object, or it belongs to another user.", {}),
    409: ("conflict", "The object's state does not allow this (e.g. the task is already final).", {}),
    413: ("request_too_large", "The body is larger than `REQUEST_BODY_MAX_BYTES` (10 MiB by default).", {}),
    415: ("unsupported_media_type", "The body is not JSON: send `Content-Type: application/json`.", {}),
    429: ("throttled", "Rate limit reached; retry after `Retry-After` seconds.", {}),
    503: ("unavailable", "PostgreSQL or Redis is unreachable; retry after `Retry-After` seconds.", {}),
}


@extend_schema_serializer(component_name="ErrorDetail")
class ErrorDetailOut(serializers.Serializer):
    code = serializers.CharField(help_text="Stable machine-readable code, e.g. `invalid`, `task_not_found`.")
    message = serializers.CharField(help_text="Human-readable explanation.")
    fields = serializers.DictField(child=serializers.ListField(child=serializers.CharField()), required=False,
                                   help_text="Per-field messages, keyed by the field's path.")


@extend_schema_serializer(component_name="Error")
class ErrorOut(serializers.Serializer):
    error = ErrorDetailOut()


RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds until the limit resets."}}
RETRY_AFTER_OUTAGE = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before retrying."}}
OPEN_PATHS = ("/api/v1/system/health/",)


class NamedChoiceField(serializers.ChoiceField):
    """A ChoiceField whose choices are one named enum component of the schema (``enum_name``), whatever the
    field is called: drf-spectacular names an enum after its field, and two different sets of one name
    (``event`` of a task's log and of a webhook delivery) would collide."""

    def __init__(self, choices: Any, *, enum_name: str, **kwargs: Any) -> None:
        self.enum_name = enum_name
        super().__init__(choices, **kwargs)


def error_example(status: int, code: str | None = None, message: str | None = None) -> dict[str, Any]:
    default_code, description, extra = ERROR_DESCRIPTIONS[status]
    return {"error": {"code": code or default_code, "message": message or description.split(";")[0], **extra}}


class AutoSchema(openapi.AutoSchema):
    def get_operation(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        operation = super().get_operation(*args, **kwargs)
        if operation is not None:
            self._publish_key_scope(operation)
        return operation

    def _map_serializer_field(self, field: Any, direction: str, bypass_extensions: bool = False) -> Any:
        if isinstance(field, NamedChoiceField):
            component = ResolvedComponent(name=field.enum_name, type=ResolvedComponent.SCHEMA, object=field.enum_name,
                                          schema={"type": "string", "enum": list(field.choices)})
            self.registry.register_on_missing(component)
            return {**component.ref, "readOnly": True} if field.read_only else component.ref
        return super()._map_serializer_field(field, direction, bypass_extensions)

    def _get_format_parameters(self) -> list[dict[str, Any]]:
        """None: DRF's ``?format=`` (``URL_FORMAT_OVERRIDE``) is no part of the API; a download's answer
        follows what is stored, not a format a client picks (it offered ``bin``/``json``, which changed
        nothing)."""
        return []

    def _insert_field_validators(self, field: Any, schema: dict[str, Any]) -> None:
        """drf-spectacular's, plus a list's size as the server checks it: ``allow_empty=False`` is
        ``minItems: 1``, and a list serializer's ``max_length`` (a batch's tasks) ``maxItems``."""
        super()._insert_field_validators(field, schema)
        if schema.get("type") != "array" or not isinstance(field, (serializers.ListField, serializers.ListSerializer)):
            return
        least = max(1 if field.allow_empty is False else 0, getattr(field, "min_length", None) or 0)
        if least:
            schema["minItems"] = max(least, schema.get("minItems", 0))
        most = getattr(field, "max_length", None)
        if most is not None:
            schema["maxItems"] = min(most, schema.get("maxItems", most))

    def _get_request_for_media_type(self, serializer: Any, direction: str = "request") -> Any:
        """drf-spectacular's, with the body required where the serializer says an empty one is refused
        (``body_required``: one of several optional fields must be there, as a bulk action's)."""
        schema, required = super()._get_request_for_media_type(serializer, direction)
        return schema, required or bool(getattr(serializer, "body_required", False))

    def _publish_key_scope(self, operation: dict[str, Any]) -> None:
        """The API key scope the operation needs, from the functions that enforce it
        (``accounts.authentication``): ``x-required-scope`` and a sentence of the description; a view that
        refuses API keys loses ``apiKeyAuth``; an operator-only one is marked ``x-operators-only``."""
        from accounts.authentication import field_scopes, refused_reason, required_scope
        from config.permissions import IsOperator

        security = operation.get("security", [])
        operators = any(isinstance(p, IsOperator) for p in self.view.get_permissions())
        sentences = []
        if refused_reason(self.view):
            operation["security"] = [s for s in security if "apiKeyAuth" not in s]
            sentences.append(f"API keys are refused here ({refused_reason(self.view)}).")
        elif any("apiKeyAuth" in s for s in security):
            scope, fields = required_scope(self.method, self.view), field_scopes(self.view)
            operation["x-required-scope"] = scope
            also = "".join(f"; with `{field}`, also `{extra}`" for field, extra in fields.items())
            sentences.append(f"API-key scope: `{scope}`{also}{'; operators only' if operators else ''}.")
            if fields:
                operation["x-required-scopes-for-fields"] = fields
        elif operators:
            sentences.append("Operators only.")
        if operators:
            operation["x-operators-only"] = True
        if sentences:
            operation["description"] = "\n\n".join(filter(None, [operation.get("description"), *sentences]))

    def _error_statuses(self) -> list[int]:
        # 400 everywhere: besides bad bodies and queries, any request can be malformed at the HTTP level
        # (a non-numeric Content-Length, a body Django cannot parse).
        statuses = [400]
        perms = [p.__class__ for p in self.view.get_permissions()]
        if permissions.AllowAny not in perms:
            statuses += [401, 403]
        if "{" in self.path or (self.method == "GET" and isinstance(self._get_paginator(), CursorPagination)):
            statuses.append(404)  # no such object; or DRF's answer to an invalid cursor
        if self.method in ("POST", "PUT", "PATCH") and self.get_request_serializer() is not None:
            statuses += [413, 415]  # a body over REQUEST_BODY_MAX_BYTES; DRF's parsers take JSON only
        if self.path not in OPEN_PATHS:
            statuses += [429, 503]  # every endpoint but the health check answers 503 in an outage
        return statuses

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        for status in self._error_statuses():
            if str(status) not in responses:
                responses[str(status)] = self.error_response(status)
        for status, response in responses.items():
            if status == "429":
                response.setdefault("headers", {}).update(RETRY_AFTER)
            if status == "503":
                response.setdefault("headers", {}).update(RETRY_AFTER_OUTAGE)
        return responses

    def error_response(self, status: int) -> dict[str, Any]:
        code, description, _ = ERROR_DESCRIPTIONS[status]
        response = self._get_response_for_code(ErrorOut, str(status))
        response["description"] = description
        response["content"]["application/json"]["examples"] = {
            code: {"value": error_example(status), "summary": code}}
        return response


def errors(*statuses: int, **examples: str) -> dict[int, Any]:
    """``responses={**errors(409)}`` for errors a view adds beyond the automatic ones."""
    return {s: OpenApiResponse(ErrorOut, description=ERROR_DESCRIPTIONS[s][1],
                               examples=[OpenApiExample(ERROR_DESCRIPTIONS[s][0], value=error_example(s))])
            for s in statuses}
