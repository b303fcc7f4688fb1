"""Health probes and Prometheus scrapes answer whatever ``Host`` they send.

kubelet probes a pod at ``http://<podIP>:8000/health/`` and sends ``Host: <podIP>:8000``; Prometheus
scrapes ``/metrics`` the same way; the image's and compose's health checks ask ``127.0.0.1:8000``. None
of them is the site's name, so with ``ALLOWED_HOSTS=conveyor.example.com`` Django's host check
(``request.get_host()``, called by CommonMiddleware on every request) answered them 400: pods never got
ready and nothing was scraped.

ALLOWED_HOSTS guards against a forged ``Host`` ending up in what a response says (absolute URLs, password
reset links, cache keys). The probe answers and the metrics say nothing about the host, so for a GET or
HEAD of exactly one of ``settings.PROBE_PATHS`` this middleware makes ``request.get_host()`` return the
``Host`` as sent (well-formed, else the usual 400) without checking it against ALLOWED_HOSTS. Any other
path, method or spelling (``/health``, ``/metrics/``, a POST) keeps the check. It must come first in
MIDDLEWARE, before anything asks for the host.
"""
from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.http.request import split_domain_port

SAFE_METHODS = frozenset({"GET", "HEAD"})


def is_probe(request: HttpRequest) -> bool:
    return request.method in SAFE_METHODS and request.path_info in settings.PROBE_PATHS


class ProbeHostMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if is_probe(request):
            host = request._get_raw_host()  # the Host header (or SERVER_NAME:SERVER_PORT), unchecked
            if split_domain_port(host)[0]:  # a well-formed host[:port]; anything else stays a 400
                request.get_host = lambda: host  # type: ignore[method-assign]
        return self.get_response(request)
