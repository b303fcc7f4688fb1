"""Beat's schedulers, each sending an upkeep task only while none it sent before waits unstarted.

Beat sends on time whether or not a worker reads: with no worker on a queue (``webhooks`` not consumed,
workers scaled to 0, every ``default`` slot busy with long tasks) its ticks pile up in the broker, a
message every interval, for ever (17,000 a day for ``webhooks.send_due`` alone), and run back to back
once a worker comes. So each entry has a Redis key, set (``SET NX``) when beat sends and deleted when a
worker starts the task (``task_prerun``, config/celery.py): while it is set, beat skips the entry. The
key expires after ``OUTSTANDING_INTERVALS`` intervals plus ``OUTSTANDING_SLACK`` seconds, and not before
``OUTSTANDING_MIN`` seconds: with nobody reading a queue, its entry sends one message in that time, not
one an interval. A message lost while its key is kept (only when the broker is not the cache's Redis, and
loses a durable queue's messages; or a worker of a version without the hook took it, during the upgrade
to this one) holds its entry back that long; the reconciler's readiness check says so meanwhile (it
reads late after ``STALE_INTERVALS`` 3 + 10 s). When Redis cannot be reached beat sends, as it would
without this.

``CELERY_BEAT_SCHEDULER`` names one of these (README, "Configuration"); the upstream classes work too,
without the guard.
"""
from __future__ import annotations

import logging
from typing import Any

from celery import beat
from django_celery_beat import schedulers

log = logging.getLogger(__name__)

KEY = "conveyor:beat:outstanding:{}"  # by task name: the worker's task_prerun knows the task, not the entry
OUTSTANDING_INTERVALS = 3
OUTSTANDING_SLACK = 10.0
OUTSTANDING_MIN = 300.0


def _redis() -> Any:
    from queueing.reconciler import _redis

    return _redis()


def _interval(entry: Any) -> float:
    try:
        return float(entry.schedule.run_every.total_seconds())
    except AttributeError:  # a crontab: a day's worth at most
        return 86400.0


def claim(entry: Any) -> bool:
    """Whether beat may send this entry now: no message of it waits unstarted (then it is marked sent)."""
    ttl = max(_interval(entry) * OUTSTANDING_INTERVALS + OUTSTANDING_SLACK, OUTSTANDING_MIN)
    try:
        return bool(_redis().set(KEY.format(entry.task), entry.name, nx=True, px=int(ttl * 1000)))
    except Exception:  # noqa: BLE001 - Redis down: send, as beat would without the guard
        log.warning("beat: could not mark %s as sent; sending it anyway", entry.name, exc_info=True)
        return True


def started(task_name: str) -> None:
    """A worker started ``task_name``: beat may send it again (``task_prerun``)."""
    try:
        _redis().delete(KEY.format(task_name))
    except Exception:  # noqa: BLE001 - the key expires by itself
        log.warning("beat: could not clear the mark of %s", task_name, exc_info=True)


class OneOutstanding:
    """The guard, for any ``celery.beat.Scheduler``."""

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        if not claim(entry):
            log.info("beat: %s not sent: the one sent before has not started yet", entry.name)
            if advance:
                self.reserve(entry)  # type: ignore[attr-defined]
            return None
        return super().apply_async(entry, producer=producer, advance=advance, **kwargs)  # type: ignore[misc]


class PersistentScheduler(OneOutstanding, beat.PersistentScheduler):
    """Celery's file-backed scheduler, guarded."""


class DatabaseScheduler(OneOutstanding, schedulers.DatabaseScheduler):
    """django-celery-beat's, guarded (the default)."""
