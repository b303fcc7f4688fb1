"""Beat sends its entries after its host's clock went back (config/beat.py ``rewind``). Beat times an entry
from its ``last_run_at``; a clock stepped back an hour (NTP, a VM resumed), or a restarted beat on a host an
hour behind the one before, found every last run an hour in the future and sent nothing for that hour: no
reconcile (lost messages not re-sent, dead workers' tasks not reaped), no dispatch tick, no webhook retry.
A last run an hour ahead is exactly what such a step looks like to the scheduler."""
from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import beat as celery_beat
from django.conf import settings
from kombu import Connection

from config import beat
from config.celery import app
from queueing.reconciler import _redis, broker_depths

QUEUE = "beat-clock-noreader"  # no worker of the test session consumes it
NAME = "clock-test"
AN_HOUR = timedelta(hours=1)


def waiting() -> int:
    return broker_depths([QUEUE])[QUEUE] or 0


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    def purge() -> None:
        _redis().delete(beat.KEY.format(NAME))
        with Connection(settings.CELERY_BROKER_URL) as conn, conn.channel() as channel:
            channel.queue_declare(QUEUE)
            channel.queue_purge(QUEUE)

    purge()
    yield
    purge()


@pytest.fixture
def schedule_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The file-backed scheduler's file, its beat schedule one entry every 30 s into QUEUE."""
    monkeypatch.setitem(app.conf, "beat_schedule", {
        NAME: {"task": "queueing.fold_counters", "schedule": 30.0, "options": {"queue": QUEUE}}})
    return str(tmp_path / "beat-schedule")


def _persistent(path: str, last_run: timedelta | None = None) -> beat.PersistentScheduler:
    """A file-backed beat starting; ``last_run``: its entry's last run, from now, left by the beat before."""
    if last_run is not None:
        before = beat.PersistentScheduler(app, schedule_filename=path)
        before.schedule[NAME].last_run_at = app.now() + last_run
        before.close()
    return beat.PersistentScheduler(app, schedule_filename=path)


def test_a_beat_started_after_its_clock_went_back_sends_at_once(schedule_file):
    scheduler = _persistent(schedule_file, last_run=AN_HOUR)
    assert scheduler.schedule[NAME].last_run_at > app.now() + AN_HOUR / 2  # what it found on file
    try:
        scheduler.tick()
        assert waiting() == 1
        assert scheduler.schedule[NAME].last_run_at <= app.now()
    finally:
        scheduler.close()


def test_a_running_beat_whose_clock_goes_back_sends_at_its_next_tick(schedule_file):
    scheduler = _persistent(schedule_file)
    try:
        scheduler.tick()  # placed 30 s from now
        assert waiting() == 0
        # the clock goes back an hour: the entry's last run and its place in the heap are an hour ahead of it
        scheduler.schedule[NAME].last_run_at += AN_HOUR
        scheduler._heap = [celery_beat.event_t(when + AN_HOUR.total_seconds(), priority, entry)
                           for when, priority, entry in scheduler._heap]

        scheduler.tick()
        assert waiting() == 1
    finally:
        scheduler.close()


def test_an_entry_run_a_second_ago_is_not_sent_again(schedule_file):
    scheduler = _persistent(schedule_file, last_run=-timedelta(seconds=1))
    try:
        assert 20 < scheduler.tick() and waiting() == 0
    finally:
        scheduler.close()


@pytest.fixture
def periodic(transactional_db: None) -> Any:
    """``periodic(last_run)``: the database scheduler's row of one entry every 30 s into QUEUE, last run
    ``last_run`` from now (written by the beat before)."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    def make(last_run: timedelta) -> Any:
        every = IntervalSchedule.objects.create(every=30, period=IntervalSchedule.SECONDS)
        return PeriodicTask.objects.create(name=NAME, task="queueing.fold_counters", interval=every, queue=QUEUE,
                                           last_run_at=app.now() + last_run)

    return make


def test_the_database_scheduler_sends_an_entry_whose_stored_last_run_is_an_hour_ahead(periodic):
    row = periodic(AN_HOUR)
    scheduler = beat.DatabaseScheduler(app, lazy=True)
    try:
        scheduler.tick()
        assert waiting() == 1
        scheduler.sync()
        row.refresh_from_db()
        assert row.last_run_at <= app.now()  # no longer an hour ahead: the next beat started times it rightly
    finally:
        scheduler.close()


def test_the_database_scheduler_does_not_send_an_entry_run_a_second_ago(periodic):
    periodic(-timedelta(seconds=1))
    scheduler = beat.DatabaseScheduler(app, lazy=True)
    try:
        scheduler.tick()
        assert waiting() == 0
    finally:
        scheduler.close()
