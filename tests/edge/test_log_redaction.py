"""URL passwords in log lines: redacted with or without a user name, and whole when they hold an "@"; what
is not a password (a port, a path, an e-mail address after the URL) is left alone."""
from __future__ import annotations

import json
import logging

import pytest


@pytest.mark.parametrize(("text", "expected"), [
    ("postgres://u:hunter2@db/x", "postgres://u:[redacted]@db/x"),
    ("redis://:hunter2@redis:6379/0", "redis://:[redacted]@redis:6379/0"),  # no user name
    ("postgres://u:p@ss@db/x", "postgres://u:[redacted]@db/x"),  # an "@" in the password
    ("amqp://guest:p@s@s@rabbit:5672//", "amqp://guest:[redacted]@rabbit:5672//"),
    ("broker redis://:hunter2@redis:6379/0 down, mail ops@example.com",
     "broker redis://:[redacted]@redis:6379/0 down, mail ops@example.com"),
    ('{"url": "redis://:hunter2@h/0", "to": "a@b"}', '{"url": "redis://:[redacted]@h/0", "to": "a@b"}'),
    ("http://host:8080/path@v2", "http://host:8080/path@v2"),  # a port, not a password
    ("redis://redis:6379/0", "redis://redis:6379/0"),
])
def test_url_passwords_are_redacted(text, expected):
    from observability.logs import _redact_value

    assert _redact_value(text) == expected


def test_a_log_line_with_a_password_holding_an_at_sign_shows_none_of_it():
    from tests.edge.test_observability import json_log_line

    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "cannot reach %s nor %s", (
        "postgres://u:p@ss@db/x", "redis://:hunter2@redis:6379/0"), None)
    record.broker = "amqp://guest:s3cr@t@rabbit//"
    line = json_log_line(record)
    text = json.dumps(line)
    for secret in ("p@ss", "ss@db", "hunter2", "s3cr", "t@rabbit"):
        assert secret not in text, secret
    assert line["event"] == "cannot reach postgres://u:[redacted]@db/x nor redis://:[redacted]@redis:6379/0"
    assert line["broker"] == "amqp://guest:[redacted]@rabbit//"
