"""Celery entry points of the algorithms app."""
from __future__ import annotations

from celery import shared_task

from algorithms import results


@shared_task(name="algorithms.expire_results", ignore_result=True)
def expire_results() -> dict[str, int]:
    """Beat: delete results and artifacts older than RESULT_TTL_DAYS (rows stay, marked expired)."""
    return results.expire()
