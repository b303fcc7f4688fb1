"""Pure rules: priority names and numbers, retry backoff."""
from __future__ import annotations

import pytest

from config.errors import InvalidInput
from jobs.execution import backoff_seconds
from jobs.services import parse_priority


@pytest.mark.parametrize(("given", "expected"), [
    ("low", 2), ("normal", 5), ("high", 8), ("critical", 9), ("HIGH", 8), (" low ", 2),
    (0, 0), (9, 9), ("7", 7),
])
def test_priority_names_and_numbers(given, expected):
    assert parse_priority(given) == expected


@pytest.mark.parametrize("given", [-1, 10, "urgent", "", None, True, 3.5, [5]])
def test_bad_priority_is_invalid_input_naming_the_field(given):
    with pytest.raises(InvalidInput) as info:
        parse_priority(given)
    assert "priority" in info.value.fields


def test_backoff_doubles_per_attempt_with_jitter_and_a_cap(settings):
    settings.CONVEYOR = {**settings.CONVEYOR, "BACKOFF_BASE_SECONDS": 2.0, "BACKOFF_MAX_SECONDS": 60.0}
    for attempt, base in [(1, 2.0), (2, 4.0), (3, 8.0), (10, 60.0)]:
        delays = [backoff_seconds(attempt) for _ in range(200)]
        assert all(0.5 * base <= d < 1.5 * base for d in delays)
        assert max(delays) - min(delays) > 0.1 * base  # jittered, so retries of a burst spread out
