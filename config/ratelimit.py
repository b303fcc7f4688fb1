"""Rate limits per user tier, counted in the shared Redis cache (django-ratelimit's counters), so a
limit holds across every web process.

One DRF throttle class (``REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"]``) covers every API view, so a
new endpoint is limited without anyone remembering a decorator. Each request falls in one scope:

* ``anon``   — unauthenticated requests that reach a view (token endpoints): per client IP, against
  password guessing (``RATE_LIMIT_ANON``). With the counters' Redis unreachable these alone are refused
  (503): every other scope is served unlimited meanwhile, as readiness reports. A public view may count them elsewhere
  (``rate_limit_anonymous = "read"``: the API's schema and docs, config/urls.py), so a client locked
  out for bad passwords can still read the docs.
* ``batch``  — batch submits, bulk cancels and bulk retries (``RATE_LIMIT_BATCH`` calls per minute, together).
* ``submit`` — every other write: per user, ``RATE_LIMIT_STANDARD`` or, for the premium group, staff
  and operators, ``RATE_LIMIT_PREMIUM`` per minute.
* ``read``   — GETs, per user (``RATE_LIMIT_READ``, generous).

A view may name scopes per action (``rate_limit_scopes = {"batch": "batch"}``) or opt out with
``rate_limit_scopes = None`` (readiness probes). A limited request raises ``Throttled``: 429 with
``Retry-After`` and the error body.

The admin's login form is no DRF view, and its session works on the API too, so
``limit_anonymous_logins`` puts its POSTs on the same per-IP ``anon`` counter (config/urls.py).
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable

from django.conf import settings
from django.http import JsonResponse
from django_ratelimit.core import get_usage
from rest_framework.exceptions import APIException, Throttled
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
        return getattr(view, "rate_limit_anonymous", "anon")
    named = scopes.get(getattr(view, "action", None) or request.method.lower())
    if named:
        return named
    return "read" if request.method in SAFE_METHODS else "submit"


def rate_of(scope: str, user: Any) -> int:
    limits = settings.RATE_LIMITS
    if scope == "submit":
        return limits[tier_of(user)]
    return limits[scope]


def wait_for(request: Any, scope: str, key: str, user: Any) -> int | None:
    """Count this call of ``key`` in ``scope``: None if it is within the limit, else the seconds to wait."""
    try:
        usage = get_usage(request, group=f"conveyor.{scope}", key=lambda _group, _request: key,
                          rate=f"{rate_of(scope, user)}/m", increment=True)
    except Exception as exc:
        from config.errors import Unavailable  # config.errors imports DRF's views, which import this

        if scope == "anon":  # password attempts are never unlimited: a 503 until the cache is back
            log.warning("rate limit check failed; refusing the login attempt", exc_info=True)
            raise Unavailable("logins are paused while the rate-limit store (Redis) is unreachable; "
                              "retry in a few seconds") from exc
        # the cache is down: serve rather than refuse everyone (readiness reports it)
        log.warning("rate limit check failed; allowing the request", exc_info=True)
        return None
    if usage is None or not usage["should_limit"]:
        return None
    return max(1, usage["time_left"])


class TieredRateLimit(BaseThrottle):
    def allow_request(self, request: Any, view: Any) -> bool:
        scope = scope_of(request, view)
        if scope is None or not settings.RATE_LIMITS["enabled"]:
            return True
        key = f"user:{request.user.pk}" if request.user.is_authenticated else f"ip:{self.get_ident(request)}"
        self.retry_after = wait_for(request, scope, key, request.user)
        return self.retry_after is None

    def wait(self) -> float | None:
        return getattr(self, "retry_after", None)


def limit_anonymous_logins(view: Callable[..., Any]) -> Callable[..., Any]:
    """A login form outside DRF (the admin's): its POSTs count against the client IP's ``anon`` limit,
    with the token endpoint's attempts (one counter, so guesses add up across both); over it, a 429."""

    @functools.wraps(view)
    def limited(request: Any, *args: Any, **kwargs: Any) -> Any:
        if request.method == "POST" and settings.RATE_LIMITS["enabled"]:
            try:
                wait = wait_for(request, "anon", f"ip:{BaseThrottle().get_ident(request)}", request.user)
            except APIException as refused:
                return JsonResponse({"error": {"code": "unavailable", "message": str(refused.detail)}}, status=503,
                                    headers={"Retry-After": "5"})
            if wait is not None:
                response = JsonResponse({"error": {"code": "throttled", "message": str(Throttled(wait).detail)}},
                                        status=429)
                response["Retry-After"] = str(wait)
                return response
        return view(request, *args, **kwargs)

    return limited
