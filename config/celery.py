"""The Celery app. Platform queues map one-to-one to Celery queues of the same name; workers pick
theirs with ``-Q``. Messages carry only task ids; PostgreSQL holds everything else."""
from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import task_prerun, worker_process_init, worker_ready

from config import broker
from config.env import configuration_errors_exit, env_float, env_str, one_line_configuration_errors

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
one_line_configuration_errors()  # celery worker / beat: a bad setting is one line, not a traceback

broker.register()  # redis:// through config.broker's transport: a closed channel raises a connection error
app = Celery("conveyor")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["jobs", "queueing", "webhooks", "algorithms"])
app.autodiscover_tasks(["algorithms.remote"])


@worker_process_init.connect
@worker_ready.connect
def _freeze_imported_objects(**kwargs: object) -> None:
    """A pool child after the fork, and the worker process itself (which runs tasks in the solo pool)."""
    from config.startup import freeze_imported_objects

    freeze_imported_objects()


@task_prerun.connect
def _reuse_database_connection(**kwargs: object) -> None:
    """Keep the worker's PostgreSQL connection between tasks (see CELERY_DB_REUSE_MAX), but drop one
    that failed (PostgreSQL restarted) or outlived CONN_MAX_AGE, as Django does between requests."""
    import time

    from django.db import connections

    for conn in connections.all(initialized_only=True):
        if conn.errors_occurred or (conn.close_at is not None and time.monotonic() >= conn.close_at):
            conn.close_if_unusable_or_obsolete()


@task_prerun.connect
def _beat_task_started(task: Any = None, **kwargs: object) -> None:
    """A task beat sent has started: beat may send the next (config/beat.py). Beat names its entry in a
    header of the message; other tasks pay nothing here."""
    entry = getattr(task.request, "conveyor_beat_entry", None) if task is not None else None
    if entry:
        from config import beat

        beat.started(str(entry))


def _every(name: str, default: float) -> float:
    """An interval from the environment. django-celery-beat stores whole seconds, so under its
    database scheduler an interval below 1 s would become "every 0 s" and flood the broker."""
    value = env_float(name, default, positive=True)
    if "DatabaseScheduler" in env_str("CELERY_BEAT_SCHEDULER", "DatabaseScheduler"):
        value = max(1.0, value)
    return value


def _beat_schedule() -> dict[str, dict]:
    return {
        # Safety net: the dispatcher also runs on every submit and every finish, so this only catches
        # what those triggers missed (a crash between commit and send, a backoff that ended).
        "dispatch-tick": {"task": "queueing.dispatch_tick", "schedule": _every("DISPATCH_TICK_SECONDS", 2.0)},
        "reconcile": {"task": "queueing.reconcile", "schedule": _every("RECONCILE_EVERY_SECONDS", 5.0)},
        # The statistics counters' rows of ended database backends, folded into one (queueing/counters.py).
        "fold-counters": {"task": "queueing.fold_counters", "schedule": _every("COUNTER_FOLD_SECONDS", 300.0)},
        # Webhooks: retries that are due and deliveries whose Celery message looks lost (webhooks/delivery.py).
        "webhooks-send-due": {"task": "webhooks.send_due", "schedule": _every("WEBHOOK_SEND_DUE_SECONDS", 5.0),
                              "options": {"queue": "webhooks"}},
        "webhooks-prune-log": {"task": "webhooks.prune_log", "schedule": _every("WEBHOOK_PRUNE_SECONDS", 3600.0)},
        # Retention: results and artifacts older than RESULT_TTL_DAYS (algorithms/results.py).
        "expire-results": {"task": "algorithms.expire_results",
                           "schedule": _every("RESULT_EXPIRE_EVERY_SECONDS", 3600.0)},
        # Stored files under tasks/ that no artifact row names, older than an hour (algorithms/results.py).
        "sweep-strays": {"task": "algorithms.sweep_strays", "schedule": _every("STRAY_SWEEP_EVERY_SECONDS", 3600.0)},
        # Retention: final tasks finished before TASK_RETENTION_DAYS, with their events and files (jobs/retention.py).
        "prune-tasks": {"task": "jobs.prune_tasks", "schedule": _every("TASK_PRUNE_EVERY_SECONDS", 3600.0)},
        # Remote services (docs/remote.md): scheme discovery (cached in the database) and health checks.
        "remote-discover": {"task": "algorithms.remote.discover", "schedule": _every("REMOTE_DISCOVERY_SECONDS", 60.0)},
        "remote-health": {"task": "algorithms.remote.check_health", "schedule": _every("REMOTE_HEALTH_SECONDS", 30.0)},
        "remote-orphans": {"task": "algorithms.remote.cancel_orphans",
                           "schedule": _every("REMOTE_ORPHAN_SECONDS", 10.0)},
    }


with configuration_errors_exit():  # Celery's CLI loads this module (see there)
    app.conf.beat_schedule = _beat_schedule()
