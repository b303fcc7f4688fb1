"""Beat sends an upkeep task only when the message it sent before is not still waiting (config/beat.py): with
no worker reading its queue, its ticks piled up in the broker, one message every interval, for ever."""
from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from celery import beat as celery_beat
from celery.schedules import crontab
from django.conf import settings
from kombu import Connection

from config import beat
from config.celery import app
from queueing.reconciler import _redis, broker_depths

NOREADER = "beat-outstanding-noreader"  # no worker of the test session consumes it


class Scheduler(beat.OneOutstanding, celery_beat.Scheduler):
    """The guard over Celery's in-memory scheduler (the shipped ones add only where entries are kept)."""


def waiting() -> int:
    return broker_depths([NOREADER])[NOREADER] or 0


def purge() -> None:
    with Connection(settings.CELERY_BROKER_URL) as conn, conn.channel() as channel:
        channel.queue_purge(NOREADER)


@pytest.fixture
def entry() -> Iterator[Any]:
    """An entry of its own name (the session's embedded beat marks only its schedule's)."""
    _redis().delete(beat.KEY.format("fold-test"))
    yield celery_beat.ScheduleEntry(name="fold-test", task="queueing.fold_counters", schedule=timedelta(seconds=1),
                                    options={"queue": NOREADER}, app=app)
    _redis().delete(beat.KEY.format("fold-test"))
    purge()


def test_no_second_message_while_the_first_waits_unstarted(entry):
    scheduler = Scheduler(app, lazy=True)

    for _ in range(5):
        scheduler.apply_entry(entry)
    assert waiting() == 1

    beat.started(entry.name)  # what a worker's task_prerun does when it starts the task
    scheduler.apply_entry(entry)
    assert waiting() == 2


def test_a_mark_that_outlived_its_message_holds_nothing_back(entry):
    """The message gone without its task starting (lost with a broker that is not the cache's Redis; taken
    by a worker of a version without the hook): the queue is empty, so beat sends."""
    scheduler = Scheduler(app, lazy=True)
    scheduler.apply_entry(entry)
    purge()

    scheduler.apply_entry(entry)
    assert waiting() == 1


def test_the_mark_expires_after_three_intervals_and_at_least_five_minutes(entry):
    Scheduler(app, lazy=True).apply_entry(entry)
    ttl = _redis().pttl(beat.KEY.format(entry.name)) / 1000
    assert beat.OUTSTANDING_MIN - 5 < ttl <= beat.OUTSTANDING_MIN  # its 1 s interval: the floor
    hourly = celery_beat.ScheduleEntry(name="h", task="t", schedule=timedelta(hours=1), app=app)
    assert beat._ttl(hourly) == 3 * 3600 + beat.OUTSTANDING_SLACK
    daily = celery_beat.ScheduleEntry(name="d", task="t", schedule=crontab(minute=0, hour=3), app=app)
    assert beat._ttl(daily) == beat.OUTSTANDING_MIN  # a crontab has no interval: not 3 days


def test_a_send_that_fails_takes_its_mark_back(entry, monkeypatch):
    """The broker down (RabbitMQ, the cache's Redis up): the entry is sent at the next tick once it is back,
    not held for the mark's lifetime."""
    scheduler = Scheduler(app, lazy=True)

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionRefusedError("the broker is down")

    with monkeypatch.context() as patched:
        patched.setattr(celery_beat.Scheduler, "apply_async", refused)
        scheduler.apply_entry(entry)  # beat logs the error and goes on
    assert not _redis().exists(beat.KEY.format(entry.name))

    scheduler.apply_entry(entry)
    assert waiting() == 1


def test_a_worker_starting_a_task_beat_sent_lets_beat_send_it_again(live_worker):
    """Through the session's real worker: a message with beat's entry header, once started, clears its mark."""
    key = beat.KEY.format("started-test")
    _redis().set(key, "1", ex=300)
    try:
        app.send_task("queueing.dispatch_queue", args=["default"], queue="default",
                      headers={beat.HEADER: "started-test"})
        deadline = time.monotonic() + 30
        while _redis().exists(key) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _redis().exists(key)
    finally:
        _redis().delete(key)


def test_the_shipped_schedulers_are_guarded():
    from django_celery_beat import schedulers

    assert issubclass(beat.DatabaseScheduler, schedulers.DatabaseScheduler)
    assert issubclass(beat.PersistentScheduler, celery_beat.PersistentScheduler)
    assert settings.CELERY_BEAT_SCHEDULER == "config.beat:PersistentScheduler"  # tests/settings.py
