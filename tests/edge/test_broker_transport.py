"""config.broker: once the broker connection is closed under a channel (Redis restarted), a late
acknowledgement is a connection error that Celery logs and survives, not an AttributeError that stops
the worker (seen in the chaos test "Redis restarted with its data lost")."""
from __future__ import annotations

import logging

import pytest
from django.conf import settings
from kombu import Connection
from kombu.transport import redis as kombu_redis

from config import broker

pytestmark = pytest.mark.skipif(not settings.CELERY_BROKER_URL.startswith("redis"), reason="the Redis transport's fix")


def _late_ack(transport: type, caplog: pytest.LogCaptureFixture) -> None:
    with Connection(settings.CELERY_BROKER_URL, transport=transport) as conn:
        assert type(conn.transport) is transport
        queue = conn.SimpleQueue("conveyor-test-late-ack")
        queue.clear()
        queue.put({"task": 1})
        message = queue.get(timeout=5)
        errors = conn.connection_errors
        conn.collect()  # what Celery's consumer does when the broker goes away
        message.channel._pool = None  # and Redis is down: no pool survives the close (the state in the chaos run)
        with caplog.at_level(logging.CRITICAL):
            message.ack_log_error(logging.getLogger("celery.worker"), errors)  # Celery's ack of a finished task


def test_a_late_ack_on_a_closed_channel_is_a_connection_error_that_celery_logs_and_survives(caplog):
    assert "config.broker" in broker.TRANSPORT_ALIASES["redis"]  # what redis:// brokers get (config.celery)
    _late_ack(broker.Transport, caplog)
    assert "Couldn't ack" in caplog.text and "connection is closed" in caplog.text


def test_without_the_fix_the_same_ack_raises_what_celery_takes_for_unrecoverable(caplog):
    """The bug config/broker.py works around; once kombu raises a connection error here, both can go."""
    with pytest.raises(AttributeError):
        _late_ack(kombu_redis.Transport, caplog)
