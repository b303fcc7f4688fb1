"""Beat sends an upkeep task only while the one it sent before has started (config/beat.py): with no worker
reading its queue, its ticks piled up in the broker, one message every interval, for ever."""
from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from celery import beat as celery_beat
from django.conf import settings
from kombu import Connection

from config import beat
from config.celery import app
from queueing.reconciler import _redis

NOREADER = "beat-outstanding-noreader"  # no worker of the test session consumes it


class Scheduler(beat.OneOutstanding, celery_beat.Scheduler):
    """The guard over Celery's in-memory scheduler (the shipped ones add only where entries are kept)."""


def waiting(name: str) -> int:
    with Connection(settings.CELERY_BROKER_URL) as conn, conn.channel() as channel:
        try:
            return channel.queue_declare(queue=name, passive=True).message_count
        except Exception:  # noqa: BLE001 - no such queue: nothing waits in it
            return 0


@pytest.fixture
def entry() -> Iterator[Any]:
    task = "queueing.fold_counters"
    _redis().delete(beat.KEY.format(task))
    yield celery_beat.ScheduleEntry(name="fold-test", task=task, schedule=timedelta(seconds=1),
                                    options={"queue": NOREADER}, app=app)
    _redis().delete(beat.KEY.format(task))
    with Connection(settings.CELERY_BROKER_URL) as conn, conn.channel() as channel:
        channel.queue_purge(NOREADER)


def test_no_second_message_while_the_first_waits_unstarted(entry):
    scheduler = Scheduler(app, lazy=True)

    for _ in range(5):
        scheduler.apply_entry(entry)
    assert waiting(NOREADER) == 1

    beat.started(entry.task)  # what a worker's task_prerun does when it starts the task
    scheduler.apply_entry(entry)
    assert waiting(NOREADER) == 2


def test_the_mark_expires_so_a_lost_message_holds_an_entry_back_only_a_while(entry):
    Scheduler(app, lazy=True).apply_entry(entry)
    ttl = _redis().pttl(beat.KEY.format(entry.task)) / 1000
    assert beat.OUTSTANDING_MIN - 5 < ttl <= beat.OUTSTANDING_MIN  # its 1 s interval: the floor


def test_a_worker_starting_a_task_beat_sent_lets_beat_send_it_again(live_worker):
    """Through the session's real worker: a message with beat's header, once started, clears the mark.
    ``queueing.dispatch_queue`` is in no schedule, so the embedded beat does not touch its mark."""
    key = beat.KEY.format("queueing.dispatch_queue")
    _redis().set(key, "test", ex=300)
    try:
        app.send_task("queueing.dispatch_queue", args=["default"], queue="default",
                      headers={"celery_beat_task": True})
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
