"""Remote tasks left running for a Conveyor task that ended without a worker's bridge watching it: a
task cancelled while it waited in its queue after a hold (its service was away), timed out or failed in
the hold, or whose bridge crashed. The bridge cancels the remote task only while it runs one; for the
rest, beat calls ``cancel_orphans`` every ``REMOTE_ORPHAN_SECONDS``: each such remote task is cancelled
on its service, then forgotten (its ``RemoteRun`` deleted). A service that does not answer is asked
again, after the others (the oldest tried first, and a failed try moves a run to the back: 120 runs on
a dead service took every sweep's 100 places, and a healthy service's were never asked), for
``GIVE_UP_AFTER`` after its task ended; then the run is forgotten with a warning (a row kept for ever
would also keep its task from retention). Cancelling a remote task that has just finished costs one call
the service ignores.
"""
from __future__ import annotations

import logging

from datetime import timedelta

from django.utils import timezone

from algorithms.remote import client as c
from algorithms.remote.models import RemoteRun
from jobs.models import FINAL

log = logging.getLogger(__name__)

GIVE_UP_AFTER = timedelta(days=7)


def cancel_orphans(*, limit: int = 100) -> int:
    """Cancel the remote tasks of ended Conveyor tasks on their services; returns how many."""
    done = 0
    runs = RemoteRun.objects.select_related("service", "task").filter(task__status__in=FINAL).order_by("updated_at")
    for run in runs[:limit]:
        try:
            c.client_for(run.service).cancel(run.remote_id)
        except c.TaskGone:
            pass  # the service no longer has it: nothing left to stop
        except c.RemoteError as exc:
            ended = run.task.finished_at or run.created_at
            if timezone.now() - ended < GIVE_UP_AFTER:
                log.warning("could not cancel remote task %s on %s (will retry): %s", run.remote_id,
                            run.service.name, exc)
                RemoteRun.objects.filter(pk=run.pk).update(updated_at=timezone.now())  # to the back
                continue
            log.error("gave up cancelling remote task %s on %s, %s after its task ended: %s", run.remote_id,
                      run.service.name, GIVE_UP_AFTER, exc)
        RemoteRun.objects.filter(pk=run.pk, remote_id=run.remote_id).delete()
        done += 1
    if done:
        log.info("cancelled %d remote tasks whose task had ended", done)
    return done
