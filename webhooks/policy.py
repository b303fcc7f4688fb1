"""When to try a delivery again, and how long to wait (saleor: no retry on 3xx/4xx).

Retried: connection errors, timeouts, DNS failures, 408, 425, 429 and every 5xx. Not retried: other 4xx,
3xx (redirects are never followed: the receiver must give its final URL) and addresses the SSRF guard
refuses. The delay follows ``WEBHOOKS["RETRY_SCHEDULE"]`` (about 5 s, 30 s, 2 min, 10 min, 1 h, … a day)
with ±20 % jitter; a ``Retry-After`` from the receiver wins when it asks for longer, up to a day.
"""
from __future__ import annotations

import random
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from django.conf import settings

RETRY_STATUS = frozenset({408, 425, 429})
MAX_DELAY = 86400.0


def is_success(status_code: int | None) -> bool:
    return status_code is not None and 200 <= status_code < 300


def is_retryable(status_code: int | None, *, transient_error: bool) -> bool:
    """``status_code`` None means no HTTP response; ``transient_error`` says whether that was transient."""
    if status_code is None:
        return transient_error
    return status_code in RETRY_STATUS or status_code >= 500


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds in ASCII digits, or an HTTP date); None if
    absent or anything else (``²``, ``１２`` and other Unicode digits included)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def next_delay(attempts: int, *, retry_after: float | None = None) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt."""
    schedule = settings.WEBHOOKS["RETRY_SCHEDULE"] or [5.0]
    base = schedule[min(attempts, len(schedule)) - 1] if attempts > 0 else schedule[0]
    delay = base * random.uniform(0.8, 1.2)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, MAX_DELAY)


def gives_up(attempts: int) -> bool:
    return attempts >= settings.WEBHOOKS["MAX_ATTEMPTS"]
