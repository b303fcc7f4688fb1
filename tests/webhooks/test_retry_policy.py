"""Which answers are tried again, and when (pure functions, table-tested)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from webhooks import policy


@pytest.mark.parametrize(("status", "transient", "retry"), [
    (None, True, True),     # timeout, connection refused, DNS failure
    (None, False, False),   # refused by the SSRF guard, invalid URL
    (500, False, True), (502, False, True), (503, False, True), (504, False, True),
    (408, False, True), (425, False, True), (429, False, True),
    (400, False, False), (401, False, False), (403, False, False), (404, False, False), (410, False, False),
    (422, False, False),
    (301, False, False), (302, False, False), (307, False, False),  # redirects are never followed
])
def test_is_retryable(status, transient, retry):
    assert policy.is_retryable(status, transient_error=transient) is retry


@pytest.mark.parametrize(("status", "ok"), [(200, True), (201, True), (204, True), (299, True), (300, False),
                                            (199, False), (None, False), (500, False)])
def test_is_success(status, ok):
    assert policy.is_success(status) is ok


def test_next_delay_follows_the_schedule_with_jitter_and_repeats_the_last_step(settings):
    settings.WEBHOOKS = {**settings.WEBHOOKS, "RETRY_SCHEDULE": [5, 30, 120, 600, 3600, 86400]}
    for attempts, base in [(1, 5), (2, 30), (3, 120), (4, 600), (5, 3600), (6, 86400), (20, 86400)]:
        for _ in range(20):
            assert base * 0.8 <= policy.next_delay(attempts) <= min(base * 1.2, policy.MAX_DELAY)


def test_retry_after_wins_when_longer_and_is_capped_at_a_day(settings):
    settings.WEBHOOKS = {**settings.WEBHOOKS, "RETRY_SCHEDULE": [5]}
    assert 120 <= policy.next_delay(1, retry_after=120) <= 120
    assert 4 <= policy.next_delay(1, retry_after=1) <= 6
    assert policy.next_delay(1, retry_after=10 ** 7) == policy.MAX_DELAY


def test_parse_retry_after_seconds_and_http_date():
    now = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
    assert policy.parse_retry_after("30") == 30
    assert policy.parse_retry_after(format_datetime(now + timedelta(seconds=90), usegmt=True), now=now) == 90
    assert policy.parse_retry_after("soon") is None
    assert policy.parse_retry_after(" 7 ") == 7
    assert policy.parse_retry_after(None) is None


def test_gives_up_after_max_attempts(settings):
    settings.WEBHOOKS = {**settings.WEBHOOKS, "MAX_ATTEMPTS": 3}
    assert not policy.gives_up(2)
    assert policy.gives_up(3)


@pytest.mark.parametrize("value", ["\u00b2", "\u0663", "\uff11\uff12", "1\u00b2", "-5", "1.5", "1e3",
                                   "Mon, 01 Jan 99999 00:00:00 GMT"])
def test_parse_retry_after_ignores_anything_but_ascii_digits_and_http_dates(value):
    assert policy.parse_retry_after(value) is None
