"""Raw Celery baselines, loaded into the same worker as Conveyor's tasks (``celery worker -I bench.tasks``).

Each one does the least a real task must do to be observed as done: one Redis command.
"""
from __future__ import annotations

import time

import redis
from celery import shared_task
from django.conf import settings

_redis: redis.Redis | None = None


def _r() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(settings.REDIS_URL)
    return _redis


@shared_task(name="bench.noop", ignore_result=True, acks_late=True)
def noop(run: str) -> None:
    """Count one completion for ``run`` and stamp the time of the latest."""
    pipe = _r().pipeline(transaction=False)
    pipe.incr(f"bench:{run}:done")
    pipe.set(f"bench:{run}:last", repr(time.time()))
    pipe.execute()


@shared_task(name="bench.stamp", ignore_result=True, acks_late=True)
def stamp(run: str, sent: float) -> None:
    """Record send → start latency (seconds) for one message."""
    _r().rpush(f"bench:{run}:lat", repr(time.time() - sent))
