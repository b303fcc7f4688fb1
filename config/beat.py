"""Beat's schedulers, which send an entry only when the message it sent before is not still waiting.

Beat sends on time whether or not a worker reads: with no worker on a queue (``webhooks`` not consumed,
workers scaled to 0, every ``default`` slot busy with long tasks) its ticks piled up in the broker, a
message every interval, for ever (17,000 a day for ``webhooks.send_due`` alone), and ran back to back
once a worker came. So each entry has a Redis mark, set (``SET NX``) when beat sends it and deleted when a
worker starts it (``task_prerun``, config/celery.py, by the ``conveyor_beat_entry`` header beat adds).
While the mark is set **and** the entry's broker queue holds a message, beat skips the entry: one waits
already. A mark that outlived its message (the message lost while the cache's Redis kept the mark, a worker
of a version without the hook took it, its ``DEL`` failed) holds nothing back once the queue is empty; in a
busy queue it holds its entry back until it expires: ``OUTSTANDING_INTERVALS`` intervals plus
``OUTSTANDING_SLACK`` seconds, at least ``OUTSTANDING_MIN``. When Redis or the broker cannot say, beat sends,
as it would without this; a send that fails takes its mark back.

``CELERY_BEAT_SCHEDULER`` names one of these (README, "Configuration"); the upstream classes work too,
without the guard.
"""
from __future__ import annotations

import logging
from typing import Any

from celery import beat
from django_celery_beat import schedulers

log = logging.getLogger(__name__)

KEY = "conveyor:beat:outstanding:{}"  # by entry name
HEADER = "conveyor_beat_entry"
OUTSTANDING_INTERVALS = 3
OUTSTANDING_SLACK = 10.0
OUTSTANDING_MIN = 300.0


def _redis() -> Any:
    from queueing.reconciler import _redis

    return _redis()


def _ttl(entry: Any) -> float:
    run_every = getattr(entry.schedule, "run_every", None)  # a crontab, a solar or clocked schedule: none
    every = run_every.total_seconds() if run_every is not None else 0.0
    return max(every * OUTSTANDING_INTERVALS + OUTSTANDING_SLACK, OUTSTANDING_MIN)


def _queue(entry: Any, app: Any) -> str:
    return entry.options.get("queue") or app.conf.task_default_queue


def may_send(entry: Any, app: Any) -> bool:
    """Whether beat may send this entry now (then it is marked sent): not while the one sent before is
    still waiting in its queue."""
    ttl_ms = int(_ttl(entry) * 1000)
    try:
        client = _redis()
        if client.set(KEY.format(entry.name), "1", nx=True, px=ttl_ms):
            return True
    except Exception:  # noqa: BLE001 - Redis down: send, as beat would without the guard
        log.warning("beat: could not mark %s as sent; sending it anyway", entry.name, exc_info=True)
        return True
    from queueing.reconciler import broker_depths

    queue = _queue(entry, app)
    if broker_depths([queue]).get(queue):
        return False  # marked, and a message waits: the one sent before, very likely
    try:
        client.set(KEY.format(entry.name), "1", px=ttl_ms)  # the mark outlived its message: send, mark again
    except Exception:  # noqa: BLE001 - the next look sends again, no harm
        pass
    return True


def started(entry_name: str) -> None:
    """A worker started the task of ``entry_name``: beat may send it again (``task_prerun``)."""
    try:
        _redis().delete(KEY.format(entry_name))
    except Exception:  # noqa: BLE001 - it expires by itself, or the next look finds its queue empty
        log.warning("beat: could not clear the mark of %s", entry_name, exc_info=True)


class OneOutstanding:
    """The guard, for any ``celery.beat.Scheduler``."""

    app: Any

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        if not may_send(entry, self.app):
            log.info("beat: %s not sent: the one sent before still waits in its queue", entry.name)
            return
        super().apply_entry(entry, producer=producer)  # type: ignore[misc]

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        options = entry.options
        entry.options = {**options, "headers": {**options.get("headers", {}), HEADER: entry.name}}
        try:
            return super().apply_async(entry, producer=producer, advance=advance, **kwargs)  # type: ignore[misc]
        except Exception:
            started(entry.name)  # not sent (the broker is down): the next tick sends it
            raise
        finally:
            entry.options = options


class PersistentScheduler(OneOutstanding, beat.PersistentScheduler):
    """Celery's file-backed scheduler, guarded."""


class DatabaseScheduler(OneOutstanding, schedulers.DatabaseScheduler):
    """django-celery-beat's, guarded (the default)."""
