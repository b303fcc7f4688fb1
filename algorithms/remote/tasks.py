"""Celery entry points of remote services (beat: discovery every REMOTE_DISCOVERY_SECONDS, health
every REMOTE_HEALTH_SECONDS, orphaned remote tasks cancelled every REMOTE_ORPHAN_SECONDS)."""
from __future__ import annotations

from celery import shared_task

from algorithms.remote import discovery, orphans


@shared_task(name="algorithms.remote.discover", ignore_result=True)
def discover() -> dict[str, list[str]]:
    """Sync the services file, then refresh every enabled service's scheme cache."""
    return {r.service: r.accepted for r in discovery.refresh_all()}


@shared_task(name="algorithms.remote.check_health", ignore_result=True)
def check_health() -> dict[str, bool]:
    """Mark each enabled service up or down."""
    return discovery.check_all()


@shared_task(name="algorithms.remote.cancel_orphans", ignore_result=True)
def cancel_orphans() -> int:
    """Cancel on their services the remote tasks of Conveyor tasks that ended without a bridge."""
    return orphans.cancel_orphans()
