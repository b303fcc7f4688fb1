"""The worker side of a remote scheme: one Conveyor task drives one remote task.

Submit (or re-attach to the remote task this Conveyor task already started, after a worker death),
relay progress into ``ctx.progress`` (so it becomes ``task.progress`` events like any other), relay
a cancel (``ctx.cancelled()`` → CancelTask), and stream a blob result into ``ctx.open_result()``
chunk by chunk, checking its size (a stream past the announced size is stopped at once) and sha256. While the service is unreachable the task waits with
backoff (stage "waiting for service") until it answers, the task is cancelled, or its time runs out.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from django.conf import settings
from django.db import connections

from algorithms.remote import client as c
from algorithms.remote import hold
from algorithms.remote.models import RemoteRun, RemoteService

if TYPE_CHECKING:
    from algorithms.context import RunContext

log = logging.getLogger(__name__)

FETCH_TRIES = 6


class _Cancelled(Exception):
    pass


def run(ctx: RunContext, params: Any, *, service_name: str, scheme: str) -> Any:
    """The registered function of every remote scheme (``functools.partial`` binds service and scheme)."""
    payload = params.model_dump(mode="json") if hasattr(params, "model_dump") else dict(params or {})
    service = RemoteService.objects.get(name=service_name)
    client = c.client_for(service)
    conf = settings.REMOTE
    waited = 0
    down_since: list[float] = []  # start of the current outage; emptied by the next progress message
    remote_id: str | None = None
    try:
        while True:
            try:
                if remote_id is None:
                    remote_id = _attach_or_submit(ctx, client, service, scheme, payload)
                final = _follow(ctx, client, remote_id, on_message=down_since.clear)
                if final.state == c.SUCCEEDED and final.blob is not None:
                    return _download(ctx, client, service, remote_id, final.blob)
                break
            except c.TaskGone:
                ctx.log(f"remote task {remote_id} is gone from {service.name}; submitting again")
                RemoteRun.objects.filter(task_id=ctx.task_id).delete()
                remote_id = None
            except c.Unavailable as exc:
                ctx.progress(0 if remote_id is None else ctx_percent(ctx), "waiting for service",
                             f"{service.name}: {exc}")
                if not down_since:
                    down_since.append(time.monotonic())
                    waited = 0
                # The health check already saw it down: no point holding a worker slot at all.
                known_down = waited == 0 and service.health == RemoteService.Health.DOWN
                if known_down or time.monotonic() - down_since[0] >= conf["HOLD_AFTER_SECONDS"]:
                    # Free the worker slot: back to the queue; the re-run re-attaches via RemoteRun.
                    delay = c.backoff(hold.holds_so_far(ctx.task_id), base=1.0, cap=conf["RETRY_MAX_SECONDS"])
                    ctx.flush()
                    hold.hold_for_service(task_id=ctx.task_id, service=service.name, error=str(exc), delay=delay,
                                          claimed_at=ctx.artifacts.claimed_at if ctx.artifacts else None)
                    raise _Cancelled from None
                # Never past the hold's deadline: the next call then comes at it (the backoff alone, 0.5, 1, 2, 4 s,
                # ran about 9 s over a 5 s hold).
                until_hold = down_since[0] + conf["HOLD_AFTER_SECONDS"] - time.monotonic()
                _sleep(ctx, min(c.backoff(waited, base=conf["RETRY_BASE_SECONDS"], cap=conf["RETRY_MAX_SECONDS"]),
                                max(0.0, until_hold)))
                waited += 1
    except _Cancelled:
        return None  # cancelled, or handed back to the queue (the row is no longer RUNNING)
    if final.state in (c.FAILED, c.CANCELLED):
        RemoteRun.objects.filter(task_id=ctx.task_id).delete()  # a retry starts a fresh remote task
    if final.state == c.FAILED:
        raise c.RemoteError(f"{service.name}: {final.error or 'the remote task failed'}")
    if final.state == c.CANCELLED and not ctx.cancelled():
        raise c.RemoteError(f"{service.name} cancelled the task on its own")
    return final.result


def ctx_percent(ctx: RunContext) -> float:
    from jobs.models import Task

    return Task.objects.filter(id=ctx.task_id).values_list("progress_percent", flat=True).first() or 0.0


def _sleep(ctx: RunContext, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if ctx.cancelled():
            raise _Cancelled
        time.sleep(min(0.05, max(0.0, end - time.monotonic())))


def _attach_or_submit(ctx: RunContext, client: c.Client, service: RemoteService, scheme: str,
                      payload: dict[str, Any]) -> str:
    if ctx.cancelled():
        raise _Cancelled
    known = RemoteRun.objects.filter(task_id=ctx.task_id, service=service).first()
    if known is not None:
        # An earlier attempt (its worker died) started this remote task: follow it instead of
        # starting over. If the service forgot it, _follow raises TaskGone and we submit again.
        RemoteRun.objects.filter(pk=known.pk).update(attempt=ctx.attempt, attached=known.attached + 1)
        ctx.log(f"re-attached to remote task {known.remote_id} on {service.name}")
        return known.remote_id
    remote_id, attached = client.submit(scheme=scheme, params=payload, client_task_id=ctx.task_id,
                                        attempt=ctx.attempt)
    RemoteRun.objects.update_or_create(task_id=ctx.task_id, defaults={
        "service": service, "remote_id": remote_id, "attempt": ctx.attempt})
    ctx.log(f"{'re-attached to' if attached else 'submitted'} remote task {remote_id} on {service.name}")
    return remote_id


def _follow(ctx: RunContext, client: c.Client, remote_id: str, *, on_message: Callable[[], None]) -> c.Progress:
    """Relay progress until a final state; a cancel of the Conveyor task becomes CancelTask."""
    from jobs.models import Task

    timeout = Task.objects.filter(id=ctx.task_id).values_list("timeout_seconds", flat=True).first() or 3600
    watch = client.watch(remote_id, deadline=float(timeout) + 60.0)
    done, sent = threading.Event(), threading.Event()
    guard = threading.Thread(target=_relay_cancel, args=(ctx, client, remote_id, watch, done, sent),
                             name=f"remote-cancel-{ctx.task_id}", daemon=True)
    guard.start()
    try:
        for p in watch:
            on_message()
            if p.final:
                return p
            ctx.progress(p.percent, p.stage or None, p.message, p.metrics)
    finally:
        done.set()
        guard.join()
        if ctx.cancelled() and not sent.is_set() and _ours_to_stop(ctx):
            # The time limit (raised into this thread) can end the loop before the guard saw it.
            _cancel_remote(client, remote_id)
    if ctx.cancelled():
        return c.Progress(state=c.CANCELLED)
    raise c.Unavailable("the progress stream ended before a final state")


def _ours_to_stop(ctx: RunContext) -> bool:
    """A cancel, a time limit or a final state stops the remote task; a task the reconciler took
    from this worker (back to PENDING, or RUNNING as a later attempt) re-attaches to it instead."""
    from jobs.models import Status, Task

    row = Task.objects.filter(id=ctx.task_id).values_list("status", "attempts").first()
    if row is None:
        return True
    status, attempts = row
    return not (status in (Status.PENDING, Status.QUEUED) or (status == Status.RUNNING and attempts != ctx.attempt))


def _cancel_remote(client: c.Client, remote_id: str) -> None:
    try:
        client.cancel(remote_id)
    except c.RemoteError as exc:
        log.warning("CancelTask %s failed: %s", remote_id, exc)


def _relay_cancel(ctx: RunContext, client: c.Client, remote_id: str, watch: c.Watch, done: threading.Event,
                  sent: threading.Event) -> None:
    try:
        _watch_for_cancel(ctx, client, remote_id, watch, done, sent)
    finally:
        connections.close_all()  # this thread's own connection, if _ours_to_stop opened one


def _watch_for_cancel(ctx: RunContext, client: c.Client, remote_id: str, watch: c.Watch, done: threading.Event,
                      sent: threading.Event) -> None:
    while not done.wait(0.05):
        if not ctx.cancelled():
            continue
        sent.set()
        if not _ours_to_stop(ctx):
            watch.close()  # the task was handed to another run (reaped): leave the remote task to it
            return
        _cancel_remote(client, remote_id)
        # The service ends the stream with CANCELLED; if it does not within the grace period, stop
        # listening so the task still ends as cancelled.
        if not done.wait(settings.CONVEYOR["CANCEL_GRACE_SECONDS"] / 2):
            watch.close()
        return


def _download(ctx: RunContext, client: c.Client, service: RemoteService, remote_id: str, blob: c.Blob) -> None:
    """Stream the result into storage; a broken transfer resumes at the last byte written."""
    sha = hashlib.sha256()
    summary = {"remote_service": service.name, "remote_task_id": remote_id, "size": blob.size}
    out = ctx.open_result(content_type=blob.content_type, summary=summary)
    written, tries = 0, 0
    try:
        while True:
            try:
                for chunk in client.fetch(remote_id, offset=written):
                    if written + len(chunk) > blob.size:  # never spool more than was announced
                        raise c.RemoteError(f"result is larger than the announced {blob.size} bytes")
                    out.write(chunk)
                    sha.update(chunk)
                    written += len(chunk)
                    if ctx.cancelled():
                        raise _Cancelled
                break
            except c.Unavailable:
                tries += 1
                if tries >= FETCH_TRIES:
                    raise
                _sleep(ctx, c.backoff(tries, base=0.2, cap=5.0))
        if written != blob.size:
            raise c.RemoteError(f"result size {written} differs from the announced {blob.size} bytes")
        if blob.sha256 and sha.hexdigest() != blob.sha256.lower():
            raise c.RemoteError("result sha256 differs from the one the service announced")
    except BaseException:
        out.abort()
        raise
    out.close()
    return None
