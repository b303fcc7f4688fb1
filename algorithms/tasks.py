"""Celery entry points of the algorithms app."""
from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from celery.signals import worker_ready

from algorithms import orphans, results

log = logging.getLogger(__name__)


@shared_task(name="algorithms.expire_results", ignore_result=True)
def expire_results() -> dict[str, int]:
    """Beat: delete results and artifacts older than RESULT_TTL_DAYS (rows stay, marked expired)."""
    return results.expire()


@worker_ready.connect
def reap_orphaned_programs(**_: Any) -> None:
    """A worker starting: stop external programs left running by a worker that was killed outright."""
    killed = orphans.reap()
    if killed:
        log.warning("stopped %d process(es) of external programs whose worker had died", len(killed))
