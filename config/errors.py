"""One error shape for the whole API: ``{"error": {"code", "message", "fields"?}}``.

Services raise ``ConveyorError`` subclasses (DRF's ``APIException`` pattern: class attributes
``status_code`` and ``code``); views never catch them. DRF's own handler runs first so that
``Retry-After``, ``WWW-Authenticate`` and transaction rollback keep working.
"""
from __future__ import annotations

import logging
from typing import Any

from django import db
from django.conf import settings
from django.core.exceptions import (
    RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent, ValidationError as DjangoValidationError,
)
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

log = logging.getLogger(__name__)


class ConveyorError(exceptions.APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    code = "bad_request"

    def __init__(self, message: str, *, fields: dict[str, list[str]] | None = None) -> None:
        super().__init__(detail=message, code=self.code)
        self.message = message
        self.fields = fields


class InvalidInput(ConveyorError):
    status_code = status.HTTP_400_BAD_REQUEST
    code = "invalid"


def refuse_nul(value: str | None, *, field: str) -> None:
    """A value from the URL or a header that goes into a query: PostgreSQL cannot store or compare text
    holding NUL, so it is a 400 naming ``field`` instead of a 500."""
    if value and "\x00" in value:
        reason = "must not contain NUL characters"
        raise InvalidInput(f"{field}: {reason}", fields={field: [reason]})


class NotFound(ConveyorError):
    status_code = status.HTTP_404_NOT_FOUND
    code = "not_found"


class Conflict(ConveyorError):
    status_code = status.HTTP_409_CONFLICT
    code = "conflict"


class Forbidden(ConveyorError):
    status_code = status.HTTP_403_FORBIDDEN
    code = "permission_denied"  # the code of every other 403 (DRF's permission checks)


class Unavailable(ConveyorError):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    code = "unavailable"


class RequestTooLarge(ConveyorError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    code = "request_too_large"


def too_large() -> RequestTooLarge:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return RequestTooLarge(f"the request body is larger than {limit} bytes (REQUEST_BODY_MAX_BYTES): split a "
                           "batch into smaller ones, or pass large inputs by reference (a URL, an artifact)")


class RefuseNulInQueryMiddleware:
    """A NUL character in a query parameter outside the API (the admin's list filters and search, which
    no serializer checks) is a 400 naming the parameter, before any view runs, instead of PostgreSQL's
    ``DataError`` as a 500. The API's views check their own parameters (``refuse_nul`` and the filters)."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        if not request.path.startswith("/api/"):
            for name, values in request.GET.lists():
                if "\x00" in name or any("\x00" in value for value in values):
                    name = name.replace("\x00", "\\x00")
                    reason = "must not contain NUL characters"
                    return JsonResponse({"error": {"code": InvalidInput.code, "message": f"{name}: {reason}",
                                                   "fields": {name: [reason]}}}, status=400)
        return self.get_response(request)


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested error dict → {"params.seconds": ["…"]}, so every field is named by its path."""
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            if key == "non_field_errors" and prefix:  # a nested list's own error belongs to the list
                path = prefix
            elif isinstance(key, int):  # a nested many=True serializer keys its items' errors by index
                path = f"{prefix}[{key}]" if prefix else str(key)
            else:
                path = f"{prefix}.{key}" if prefix else str(key)
            out.update(_flatten(value, path))
    elif isinstance(detail, list) and detail and all(isinstance(d, (dict, list)) for d in detail):
        for index, value in enumerate(detail):
            out.update(_flatten(value, f"{prefix}[{index}]" if prefix else str(index)))
    elif isinstance(detail, list):
        out[prefix or "non_field_errors"] = [str(d) for d in detail]
    else:
        out[prefix or "non_field_errors"] = [str(detail)]
    return {k: v for k, v in out.items() if v}


_CODES = {
    400: "invalid",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "throttled",
}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
    if isinstance(exc, Http404):
        exc = NotFound("not found")
    if isinstance(exc, (db.OperationalError, db.InterfaceError)):
        # PostgreSQL is down or restarting (tests/chaos): a clear, retryable 503 instead of a 500 (a retry
        # with the same Idempotency-Key is safe); the pool and the workers reconnect by themselves.
        exc = Unavailable("the database is unavailable; retry in a few seconds")
    if isinstance(exc, db.DataError):
        exc = _refused_value(exc, context)
    if isinstance(exc, RequestDataTooBig):  # raised while DRF reads the body (DATA_UPLOAD_MAX_MEMORY_SIZE)
        exc = too_large()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if response.status_code == status.HTTP_503_SERVICE_UNAVAILABLE:
        response.setdefault("Retry-After", "5")
    body: dict[str, Any]
    if isinstance(exc, ConveyorError):
        body = {"code": exc.code, "message": exc.message}
        if exc.fields:
            body["fields"] = exc.fields
    elif isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        first = next(iter(fields.items()), ("request", ["invalid"]))
        body = {"code": "invalid", "message": f"{first[0]}: {first[1][0]}", "fields": fields}
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        code = _CODES.get(response.status_code, "error")
        if isinstance(exc, exceptions.APIException):
            codes = exc.get_codes()
            if isinstance(codes, str):
                code = codes
        body = {"code": code, "message": str(detail if not isinstance(detail, dict) else detail.get("detail", detail))}
    response.data = {"error": body}
    return response


def _refused_value(exc: db.DataError, context: dict[str, Any]) -> InvalidInput:
    """The safety net behind validation: PostgreSQL refused a value the request carried (a NUL character
    in text or jsonb, a string too long for its column, a number or date out of range). That is bad input,
    so a 400, not a 500; the answer names no SQL and no value. Reaching here means a check is missing
    where the field could have been named, so the log says where (with the traceback)."""
    view = context.get("view")
    log.warning("database refused a request value in %s: %s", type(view).__name__ if view else "?",
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__, exc_info=exc)
    return InvalidInput("the request contains a value the database cannot store or compare (for example a NUL "
                        "character, or a value too long or out of range)")


def _error_page(status: int, code: str, message: str) -> Any:
    """Django's own error pages (``handler400/403/404/500``) in the API's error shape instead of HTML:
    a URL no route matches (``/api/v1/tasks/0.5/``), a malformed request body Django rejects itself."""

    def view(request: Any, exception: Exception | None = None) -> Any:
        return JsonResponse({"error": {"code": code, "message": message.format(path=request.path)}}, status=status)

    return view


_bad_request_page = _error_page(400, "bad_request", "the request could not be parsed")


def bad_request_view(request: Any, exception: Exception | None = None) -> Any:
    """Django's 400 page; a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` read outside DRF is a 413."""
    if isinstance(exception, RequestDataTooBig):
        error = too_large()
        return JsonResponse({"error": {"code": error.code, "message": error.message}}, status=error.status_code)
    if isinstance(exception, (TooManyFieldsSent, TooManyFilesSent)):
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        return JsonResponse({"error": {"code": InvalidInput.code, "message": f"request: more than {limit} query "
                                       f"parameters (DATA_UPLOAD_MAX_NUMBER_FIELDS)"}}, status=400)
    return _bad_request_page(request, exception)


def csrf_failure_view(request: Any, reason: str = "") -> Any:
    """A write without a session's CSRF token outside the API (``POST /health/``, ``/metrics``,
    ``/dashboard/``) is a JSON 403 like every other error; the admin keeps Django's page, which its
    users read."""
    if request.path.startswith("/admin/"):
        from django.views.csrf import csrf_failure

        return csrf_failure(request, reason)
    return JsonResponse({"error": {"code": "permission_denied", "message": f"CSRF check failed: {reason}"}},
                        status=403)
permission_denied_view = _error_page(403, "permission_denied", "permission denied")
not_found_view = _error_page(404, "not_found", "no such endpoint: {path}")
server_error_view = _error_page(500, "server_error", "internal error")
