"""Rate limits per user tier, counted in the shared Redis cache (django-ratelimit's counters), so a
limit holds across every web process.

One DRF throttle class (``REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"]``) covers every API view, so a
new endpoint is limited without anyone remembering a decorator. Each request falls in one scope:

* ``anon``   — unauthenticated requests that reach a view (token endpoints): per client IP, against
  password guessing (``RATE_LIMIT_ANON``).
* ``batch``  — batch submits (``RATE_LIMIT_BATCH`` calls per minute).
* ``submit`` — every other write: per user, ``RATE_LIMIT_STANDARD`` or, for the premium group, staff
  and operators, ``RATE_LIMIT_PREMIUM`` per minute.
* ``read``   — GETs, per user (``RATE_LIMIT_READ``, generous).

A view may name scopes per action (``rate_limit_scopes = {"batch": "batch"}``) or opt out with
``rate_limit_scopes = None`` (readiness probes). A limited request raises ``Throttled``: 429 with
``Retry-After`` and the error body.
"""
from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django_ratelimit.core import get_usage
from rest_framework.permissions import SAFE_METHODS
from rest_framework.throttling import BaseThrottle

from config.permissions import has_operator_role

log = logging.getLogger(__name__)


def tier_of(user: Any) -> str:
    """``premium`` for the premium group, staff and operators; everyone else ``standard``."""
    cached = getattr(user, "_conveyor_tier", None)
    if cached is None:
        premium = has_operator_role(user) or user.groups.filter(name=settings.RATE_LIMIT_PREMIUM_GROUP).exists()
        cached = user._conveyor_tier = "premium" if premium else "standard"
    return cached


def scope_of(request: Any, view: Any) -> str | None:
    scopes = getattr(view, "rate_limit_scopes", {})
    if scopes is None:
        return None
    if not request.user.is_authenticated:
        return "anon"
    named = scopes.get(getattr(view, "action", None) or request.method.lower())
    if named:
        return named
    return "read" if request.method in SAFE_METHODS else "submit"


def rate_of(scope: str, user: Any) -> int:
    limits = settings.RATE_LIMITS
    if scope == "submit":
        return limits[tier_of(user)]
    return limits[scope]


class TieredRateLimit(BaseThrottle):
    def allow_request(self, request: Any, view: Any) -> bool:
        scope = scope_of(request, view)
        if scope is None or not settings.RATE_LIMITS["enabled"]:
            return True
        key = f"user:{request.user.pk}" if request.user.is_authenticated else f"ip:{self.get_ident(request)}"
        try:
            usage = get_usage(request, group=f"conveyor.{scope}", key=lambda _group, _request: key,
                              rate=f"{rate_of(scope, request.user)}/m", increment=True)
        except Exception:  # the cache is down: serve rather than refuse everyone (readiness reports it)
            log.warning("rate limit check failed; allowing the request", exc_info=True)
            return True
        if usage is None or not usage["should_limit"]:
            return True
        self.retry_after = max(1, usage["time_left"])
        return False

    def wait(self) -> float | None:
        return getattr(self, "retry_after", None)
