"""The Celery app. Platform queues map one-to-one to Celery queues of the same name; workers pick
theirs with ``-Q``. Messages carry only task ids; PostgreSQL holds everything else."""
from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("conveyor")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["jobs", "queueing", "webhooks"])

app.conf.beat_schedule = {
    # Safety net: the dispatcher also runs on every submit and every finish, so this only catches
    # what those triggers missed (a crash between commit and send, a backoff that ended).
    "dispatch-tick": {"task": "queueing.dispatch_tick", "schedule": 2.0},
    "reconcile": {"task": "queueing.reconcile", "schedule": 5.0},
}
