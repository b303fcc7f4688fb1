"""Remote tasks left running for a Conveyor task that ended without a worker's bridge watching it: a
task cancelled while it waited in its queue after a hold (its service was away), timed out or failed in
the hold, or whose bridge crashed. The bridge cancels the remote task only while it runs one; for the
rest, beat calls ``cancel_orphans`` every ``REMOTE_ORPHAN_SECONDS``: each such remote task is cancelled
on its service, then forgotten (its ``RemoteRun`` deleted). A service that does not answer is asked
again next time. Cancelling a remote task that has just finished costs one call the service ignores.
"""
from __future__ import annotations

import logging

from algorithms.remote import client as c
from algorithms.remote.models import RemoteRun
from jobs.models import FINAL

log = logging.getLogger(__name__)


def cancel_orphans(*, limit: int = 100) -> int:
    """Cancel the remote tasks of ended Conveyor tasks on their services; returns how many."""
    done = 0
    for run in RemoteRun.objects.select_related("service").filter(task__status__in=FINAL)[:limit]:
        try:
            c.client_for(run.service).cancel(run.remote_id)
        except c.TaskGone:
            pass  # the service no longer has it: nothing left to stop
        except c.RemoteError as exc:
            log.warning("could not cancel remote task %s on %s (will retry): %s", run.remote_id,
                        run.service.name, exc)
            continue
        RemoteRun.objects.filter(pk=run.pk, remote_id=run.remote_id).delete()
        done += 1
    if done:
        log.info("cancelled %d remote tasks whose task had ended", done)
    return done
