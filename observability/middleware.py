"""``X-Request-ID``: taken from the request (or made), bound to every log line, echoed in the response."""
from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

import structlog
from django.http import HttpRequest, HttpResponse
from django_prometheus import middleware as prometheus

from config.errors import bad_request_view
from observability.logs import current_request

HEADER = "X-Request-ID"
_ACCEPTABLE = re.compile(r"^[A-Za-z0-9._:/+=-]{1,200}$")  # anything else is replaced, not logged
log = logging.getLogger("conveyor.request")


def request_id_of(request: HttpRequest) -> str:
    given = request.headers.get(HEADER, "")
    return given if _ACCEPTABLE.match(given) else uuid.uuid4().hex


class RequestContextMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = request_id_of(request)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        token = current_request.set(request)
        started = time.perf_counter()
        try:
            response = self.get_response(request)
            response[HEADER] = request_id
            log.info("request", extra={"method": request.method, "path": request.path,
                                       "status": response.status_code,
                                       "duration_ms": round((time.perf_counter() - started) * 1000, 1)})
            return response
        finally:
            current_request.reset(token)
            structlog.contextvars.clear_contextvars()


class PrometheusAfterMiddleware(prometheus.PrometheusAfterMiddleware):
    """django-prometheus' own, except that a malformed ``Content-Length`` is a 400 here rather than the
    ``ValueError`` (a 500) its ``int(header)`` raises."""

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        if not (request.headers.get("content-length") or "0").isdigit():
            return bad_request_view(request)
        return super().process_request(request)
