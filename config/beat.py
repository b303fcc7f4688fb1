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

Beat times its entries by its host's wall clock, from each one's ``last_run_at`` (kept in the database or the
schedule file). A clock that stepped back (an NTP correction, a VM resumed), or a beat whose host runs behind
the one that ran the entries before, found their last runs in the future and sent nothing until its clock
caught up: an hour back, an hour without reconcile, dispatch tick or webhook retries. So an entry whose last
run lies ahead of now by more than ``CLOCK_TOLERANCE`` seconds (or its interval, if shorter) is taken as
last run now: an interval's is due at once, a crontab's at its next time from now (``rewind``), with one
warning each time.

``CELERY_BEAT_SCHEDULER`` names one of these (README, "Configuration"); the upstream classes work too,
without the guard.
"""
from __future__ import annotations

import heapq
import logging
from datetime import timedelta
from typing import Any

from celery import beat
from celery.utils.time import maybe_make_aware
from django_celery_beat import schedulers

log = logging.getLogger(__name__)

KEY = "conveyor:beat:outstanding:{}"  # by entry name
HEADER = "conveyor_beat_entry"
OUTSTANDING_INTERVALS = 3
OUTSTANDING_SLACK = 10.0
OUTSTANDING_MIN = 300.0
CLOCK_TOLERANCE = 60.0  # seconds a last run may lie ahead of now (hosts' clocks differ a little)


def _redis() -> Any:
    from queueing.reconciler import _redis

    return _redis()


def _every(entry: Any) -> float:
    """The entry's interval in seconds; 0 for a crontab, a solar or clocked schedule."""
    run_every = getattr(entry.schedule, "run_every", None)
    return run_every.total_seconds() if run_every is not None else 0.0


def _ttl(entry: Any) -> float:
    every = _every(entry)
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


def rewind(entries: Any) -> list[str]:
    """Entries whose last run lies ahead of this host's clock by more than ``CLOCK_TOLERANCE`` (or their
    interval, if shorter) get it back to now: an interval's one interval before now (due at once), any
    other's now (due at its next time from now). Their names, logged in one warning."""
    rewound = []
    for entry in entries:
        try:
            every, now = _every(entry), maybe_make_aware(entry.default_now())
            ahead = (maybe_make_aware(entry.last_run_at) - now).total_seconds()
        except Exception:  # noqa: BLE001 - an entry beat cannot time is left to beat's own handling
            continue
        if ahead <= min(every or CLOCK_TOLERANCE, CLOCK_TOLERANCE):
            continue
        entry.last_run_at = now - timedelta(seconds=every)
        model = getattr(entry, "model", None)  # django-celery-beat's row, saved at its next sync
        if model is not None:
            model.last_run_at = entry.last_run_at
        rewound.append((entry.name, ahead))
    if rewound:
        log.warning("beat: this host's clock went back (or is behind the one that ran them): the last run of %s "
                    "lies in the future; taken as now, so that they are not held back until then",
                    ", ".join(f"{name} ({ahead:.0f}s ahead)" for name, ahead in rewound))
    return [name for name, _ in rewound]


def started(entry_name: str) -> None:
    """A worker started the task of ``entry_name``: beat may send it again (``task_prerun``)."""
    try:
        _redis().delete(KEY.format(entry_name))
    except Exception:  # noqa: BLE001 - it expires by itself, or the next look finds its queue empty
        log.warning("beat: could not clear the mark of %s", entry_name, exc_info=True)


class ClockSafe:
    """``rewind`` for any ``celery.beat.Scheduler``, over the entries of its heap: once it is filled, and at
    every tick (a clock that goes back while beat runs leaves its entries' last runs, and their places in the
    heap, ahead of it). The entries rewound are placed again from their last runs, as when it is filled."""

    _heap: Any

    def populate_heap(self, *args: Any, **kwargs: Any) -> None:
        super().populate_heap(*args, **kwargs)  # type: ignore[misc]
        self._rewind_heap()

    def tick(self, *args: Any, **kwargs: Any) -> Any:
        self._rewind_heap()
        return super().tick(*args, **kwargs)  # type: ignore[misc]

    def _rewind_heap(self) -> None:
        if not self._heap:
            return
        rewound = rewind([event[2] for event in self._heap])
        if not rewound:
            return
        dirty = getattr(self, "_dirty", None)  # the database scheduler's: rows it saves at its next sync
        if dirty is not None:
            dirty.update(rewound)
        self._heap = [self._placed(event) if event[2].name in rewound else event for event in self._heap]
        heapq.heapify(self._heap)

    def _placed(self, event: Any) -> Any:
        """``event`` placed again from its entry's last run, as ``populate_heap`` places it."""
        entry = event[2]
        try:
            due, delay = entry.is_due()
        except Exception:  # noqa: BLE001 - as populate_heap: one entry that cannot be timed stops no other
            due, delay = self._is_due_failed(entry)  # type: ignore[attr-defined]
        when = self._when(entry, 0 if due else delay)  # type: ignore[attr-defined]
        return beat.event_t(when or 0, event[1], entry)


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


class PersistentScheduler(ClockSafe, OneOutstanding, beat.PersistentScheduler):
    """Celery's file-backed scheduler, guarded, safe from a clock that went back."""


class DatabaseScheduler(ClockSafe, OneOutstanding, schedulers.DatabaseScheduler):
    """django-celery-beat's, guarded, safe from a clock that went back (the default)."""
