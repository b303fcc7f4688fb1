"""Recovers what the broker or a dead worker lost; PostgreSQL says what should be happening.

* QUEUED too long without a claim (the broker lost the message: Redis restarted, FLUSHDB) → re-sent.
  A duplicate is harmless: the guarded claim lets one message run the task, the other is dropped.
* RUNNING with a stale heartbeat (its worker was killed) → back to PENDING while attempts remain,
  otherwise FAILED. Stale by the database's clock, which also stamps every heartbeat (``db_cutoff``).
* RUNNING without progress for its algorithm's ``progress_timeout`` while its worker is alive: the
  worker's own heartbeat thread finds it (``stuck_running``, timed by that host's monotonic clock, which no
  clock step moves), kills the pool child running it, and only then re-runs or fails it (``give_up_stuck``),
  so it never runs twice at once.

Only beat's ``queueing.reconcile`` runs the first two, on a worker consuming the ``default`` queue. Each
completed pass is stamped in Redis (``record_pass``) so that readiness and ``/metrics`` can say when none
ran for a while (``last_pass_age``): recovery is off while beat, or every such worker, is down.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from datetime import timedelta
from typing import Any, NamedTuple

import redis
from django.conf import settings
from django.db import transaction
from django.db.models import Count, DateTimeField, Q
from django.db.models.expressions import RawSQL
from django.db.models.functions import Now
from django.utils import timezone
from redis.backoff import NoBackoff
from redis.retry import Retry

from jobs import execution
from jobs.models import Status, Task, TaskEvent
from queueing import dispatch

log = logging.getLogger(__name__)


def resend_lost_queued() -> int:
    """Re-send QUEUED tasks no worker claimed within ``TASK_QUEUED_RESEND_SECONDS``, in the queues whose
    broker queue holds fewer messages than their QUEUED tasks need (``_lost_in``)."""
    cutoff = timezone.now() - timedelta(seconds=settings.CONVEYOR["QUEUED_RESEND_SECONDS"])
    queues = _lost_in(cutoff)
    if not queues:
        return 0
    with transaction.atomic():
        rows = list(
            Task.objects.filter(status=Status.QUEUED, queued_at__lt=cutoff, queue__in=queues)
            .select_for_update(skip_locked=True).values_list("id", "queue")[:1000]
        )
        if not rows:
            return 0
        Task.objects.filter(id__in=[r[0] for r in rows], status=Status.QUEUED).update(queued_at=timezone.now())
        by_queue: dict[str, list[str]] = {}
        for task_id, queue in rows:
            by_queue.setdefault(queue, []).append(str(task_id))
        transaction.on_commit(lambda: [dispatch.send(q, ids) for q, ids in by_queue.items()], robust=True)
    log.warning("re-sent %d QUEUED tasks that no worker claimed", len(rows))
    return len(rows)


def _lost_in(cutoff: Any) -> list[str]:
    """The queues with a QUEUED task older than ``cutoff`` whose broker queue holds fewer messages than
    their QUEUED tasks need (one each, or one per ``DISPATCH_BATCH`` ids): a message was lost (Redis
    restarted, FLUSHDB). A queue no worker reads keeps its messages, and re-sending them on every pass
    grew its broker list by one message per task per pass, for ever (a queue whose workers are scaled to
    0, a busy window of long tasks). When the broker cannot say (unreachable), every such queue counts.
    Counting cannot tell whose message is missing: one lost beside other messages (duplicates of tasks
    cancelled since; in ``default``, beat's) is re-sent once a worker has drained those, as the count
    falls below what is needed."""
    waiting = list(Task.objects.filter(status=Status.QUEUED).values("queue")
                   .annotate(total=Count("id"), stale=Count("id", filter=Q(queued_at__lt=cutoff)))
                   .filter(stale__gt=0))
    depths = broker_depths([row["queue"] for row in waiting])
    lost = []
    for row in waiting:
        size, depth = settings.CONVEYOR["DISPATCH_BATCH"].get(row["queue"], 1), depths.get(row["queue"])
        if depth is None or depth < math.ceil(row["total"] / size):
            lost.append(row["queue"])
    return lost


def broker_depths(queues: list[str]) -> dict[str, int | None]:
    """Messages waiting in each broker queue (not those a worker holds), by a passive declare, which Redis
    (LLEN) and RabbitMQ both answer, over one connection whose sockets time out (readiness'); None for a
    queue the broker cannot say about (RabbitMQ has no such queue yet; the broker is down)."""
    from observability.health import broker_connection

    depths: dict[str, int | None] = dict.fromkeys(queues)
    if not queues:
        return depths
    try:
        with broker_connection() as conn:
            for name in queues:
                try:
                    with conn.channel() as channel:  # RabbitMQ closes the channel of a NOT_FOUND
                        depths[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
                except conn.channel_errors:
                    continue
    except Exception:  # noqa: BLE001 - the broker down: the callers send, as before
        log.warning("the broker's queue depths could not be read", exc_info=True)
    return depths


def db_cutoff(seconds: float) -> RawSQL:
    """``seconds`` before now by the database's clock, as an expression: liveness timestamps
    (``heartbeat_at``, ``last_heartbeat``) are written by the database's clock and compared with it
    only, so that hosts whose clocks drift from it (a worker's, the beat's) neither reap live tasks nor
    keep dead ones."""
    return RawSQL(_DB_CUTOFF_SQL, [seconds], output_field=DateTimeField())


_DB_CUTOFF_SQL = "now() - make_interval(secs => %s)"


def reap_stale_running() -> int:
    """RUNNING tasks whose heartbeat stopped: re-run while attempts remain, else FAILED."""
    stale_seconds = settings.CONVEYOR["HEARTBEAT_STALE_SECONDS"]
    stale = list(Task.objects.filter(status=Status.RUNNING, heartbeat_at__lt=db_cutoff(stale_seconds))
                 .values_list("id", "attempts", "max_retries")[:1000])
    retry = [tid for tid, attempts, max_retries in stale if attempts <= max_retries]
    fail = [tid for tid, attempts, max_retries in stale if attempts > max_retries]
    with transaction.atomic():
        # Heartbeat guard repeated in SQL: a worker that came back to life in between keeps its task. A row
        # another transaction holds is stepped over, as the heartbeat steps over it: someone alive is
        # changing it (a finish, a cancel, a run's own transaction, which keeps its heartbeat from being
        # written meanwhile), and waiting for it would find the heartbeat it held back stale.
        guard = {"where_sql": f"heartbeat_at < {_DB_CUTOFF_SQL} AND id IN (SELECT id FROM {Task._meta.db_table} "
                              "WHERE id = ANY(%s::uuid[]) FOR NO KEY UPDATE SKIP LOCKED)",
                 "where_params": [stale_seconds, [str(i) for i in retry + fail]]}
        rerun = execution.back_to_pending(retry, event="task.retrying",
                                         values={"queued_at": None, "error": "worker lost (heartbeat stale)"},
                                         **guard, data={"reason": "worker lost"})
        failed = execution.give_up(fail, error="worker lost (heartbeat stale); no retries left", **guard,
                                  data={"error": "worker lost"})
        queues = {t.queue_id for t in rerun + failed}
        if queues:
            transaction.on_commit(lambda: dispatch.dispatch(sorted(queues)), robust=True)
    if stale:
        ended = rerun + failed
        log.warning("reaped %d stale RUNNING tasks (%d re-run, %d cancelled as asked, %d failed)", len(stale),
                    sum(t.status == Status.PENDING for t in ended), sum(t.status == Status.CANCELLED for t in ended),
                    sum(t.status == Status.FAILED for t in ended))
    return len(rerun) + len(failed)


def hand_back(*, worker: str) -> int:
    """RUNNING tasks of a worker that is shutting down (its pool children already killed) → PENDING.

    The interrupted attempt does not count against ``max_retries``: the task did nothing wrong.
    """
    with transaction.atomic():
        ids = list(Task.objects.filter(status=Status.RUNNING, worker=worker).values_list("id", flat=True))
        back = execution.release(task_ids=ids, worker=worker, reason="worker shutdown", event="task.retrying",
                                error="worker shut down before the task finished")
    if back:
        log.warning("handed back %d tasks of %s, which shut down before they finished", len(back), worker)
    return len(back)


class Stuck(NamedTuple):
    timeout: float  # its algorithm's progress_timeout
    claimed_at: Any  # the started_at of the claim found stuck: only that run is stopped


# What the worker's watchdog saw of each RUNNING task, by (worker, task id): its claim and last progress event,
# and when that last changed by this host's monotonic clock (``stuck_running``).
_seen: dict[tuple[str, str], tuple[Any, float]] = {}
_seen_lock = threading.Lock()
# A change the watchdog had not seen is taken to be as old as the task's timestamps say, up to one worker
# heartbeat (it looks at every one) and this much more: the claim and a report stamp their time before their
# transaction commits, and a beat may run late. Beyond it, this host's clock stepped.
FIRST_SIGHT_SLACK = 10.0


def stuck_running(*, worker: str) -> dict[str, Stuck]:
    """RUNNING tasks of ``worker`` whose algorithm declares ``progress_timeout`` and that reported no
    progress (nor started) within it: ``{task_id: Stuck(timeout, claimed_at)}``.

    Timed by this host's monotonic clock, not its wall clock, which an NTP step or a VM resume moves (a step
    forward of an hour found every healthy task stuck at once and killed it; a step back hid stuck ones for
    as long): only the worker's own watchdog calls this, on the host that runs the tasks, at every heartbeat.
    It remembers the claim (``started_at``) and last ``task.progress`` event (``seq``) it saw of each task,
    and when (``time.monotonic()``) they last changed. A change it had not seen yet (a task seen for the first
    time) happened as long ago as its timestamps say by this host's clock, trusted up to one heartbeat plus
    ``FIRST_SIGHT_SLACK``. A worker restart starts afresh: the tasks it finds are seen for the first time."""
    from algorithms import registry

    timeouts = {a.name: a.progress_timeout for a in registry.all_algorithms() if a.progress_timeout}
    if not timeouts:
        return {}
    now, clock = timezone.now(), time.monotonic()
    trust = settings.CONVEYOR["WORKER_HEARTBEAT_SECONDS"] + FIRST_SIGHT_SLACK
    stuck, seen = {}, {}
    rows = Task.objects.filter(status=Status.RUNNING, worker=worker, algorithm__in=timeouts)
    for task_id, algorithm, started_at in rows.values_list("id", "algorithm", "started_at"):
        seq, last = (TaskEvent.objects.filter(task_id=task_id, event="task.progress").order_by("-seq")
                     .values_list("seq", "created_at").first()) or (None, None)
        key, progress = (worker, str(task_id)), (started_at, seq)
        with _seen_lock:
            before = _seen.get(key)
        if before is not None and before[0] == progress:
            changed = before[1]
        else:  # first seen, or changed since the last look: as old as its timestamps, within the trust
            at = max((t for t in (started_at, last) if t is not None), default=now)
            changed = clock - min(max((now - at).total_seconds(), 0.0), trust)
        seen[key] = (progress, changed)
        if clock - changed > timeouts[algorithm]:
            stuck[str(task_id)] = Stuck(timeouts[algorithm], started_at)
    with _seen_lock:  # the tasks no longer running here are forgotten
        for key in [key for key in _seen if key[0] == worker]:
            del _seen[key]
        _seen.update(seen)
    return stuck


def still_running(*, task_id: str, worker: str, claimed_at: Any) -> bool:
    """Whether ``task_id`` still runs on ``worker`` under the claim ``claimed_at``."""
    return Task.objects.filter(id=task_id, status=Status.RUNNING, worker=worker, started_at=claimed_at).exists()


def give_up_stuck(*, task_id: str, worker: str, timeout: float, claimed_at: Any = None) -> bool:
    """A stuck task whose process was already killed: re-run while attempts remain, else FAILED.
    ``claimed_at``: the claim found stuck; a later run of the task (the stuck one ended meanwhile and
    the task started again) is not touched."""
    why = f"no progress for {timeout:g}s (progress_timeout); its process was stopped"
    with transaction.atomic():
        task = Task.objects.filter(id=task_id).only("attempts", "max_retries", "queue").first()
        if task is None:
            return False
        guard = {"where_sql": "worker = %s", "where_params": [worker]}
        if claimed_at is not None:
            guard = {"where_sql": f"worker = %s AND {execution.CLAIM_SQL}", "where_params": [worker, claimed_at]}
        if task.attempts <= task.max_retries:
            done = next(iter(execution.back_to_pending([task_id], event="task.retrying",
                                                      values={"queued_at": None, "error": why}, **guard,
                                                      data={"reason": "no progress", "error": why})), None)
        else:
            done = next(iter(execution.give_up([task_id], error=why, **guard, data={"error": why})), None)
        if done is not None:
            transaction.on_commit(lambda: dispatch.dispatch([done.queue_id]), robust=True)
    outcome = {Status.PENDING: "re-run", Status.CANCELLED: "cancelled as asked"}
    log.warning("task %s stuck (%s): %s", task_id, why, outcome.get(done.status, "failed") if done else "gone")
    return done is not None


def check_workers() -> int:
    """Liveness: a worker whose heartbeat went stale is marked lost once (``worker.lost``)."""
    from queueing.events import publish_worker_event
    from queueing.models import WorkerRecord

    stale = settings.CONVEYOR["WORKER_STALE_SECONDS"]
    # By the database's clock, which also wrote last_heartbeat (heartbeat.beat). Guarded UPDATE: with
    # two beat processes, each lost worker is reported by exactly one of them.
    lost = list(WorkerRecord.objects.filter(stopped_at__isnull=True, lost_at__isnull=True,
                                            last_heartbeat__lt=db_cutoff(stale)).values_list("hostname", flat=True))
    reported = [h for h in lost if WorkerRecord.objects.filter(hostname=h, lost_at__isnull=True,
                                                                last_heartbeat__lt=db_cutoff(stale)).update(lost_at=Now())]
    for hostname in reported:
        log.warning("worker %s lost: no heartbeat for %gs", hostname, stale)
        publish_worker_event(hostname=hostname, event="worker.lost")
    # Every pod of a Kubernetes Deployment has a hostname of its own: the records of the gone ones would be
    # listed (and counted ``dead`` in /metrics, which operators alert on) for ever. A worker that comes
    # back under its name makes its row again at start.
    WorkerRecord.objects.filter(last_heartbeat__lt=db_cutoff(FORGET_WORKERS_AFTER)).delete()
    return len(reported)


FORGET_WORKERS_AFTER = 7 * 24 * 3600  # seconds after a worker's last heartbeat (stopped or dead) that its row goes


def reconcile() -> dict[str, int]:
    """One pass of every recovery step, then the dispatcher's safety tick; stamped once it completed."""
    done = {
        "resent": resend_lost_queued(),
        "reaped": reap_stale_running(),
        "workers_lost": check_workers(),
        "dispatched": dispatch.dispatch(),
    }
    record_pass()
    return done


# The end of the last completed pass, in seconds by Redis' own clock (TIME), under REDIS_URL (the cache's
# Redis). Written and read by that one clock, so a beat or web host whose clock drifts changes nothing.
# No expiry: an old stamp must read old, not "never". Redis, not a row: no table, no migration, and a
# FLUSHDB that loses it (as it loses broker messages) only reads "none recorded" until the next pass.
LAST_PASS_KEY = "conveyor:reconciler:last_pass"
# A pass is late after this many intervals plus STALE_SLACK seconds (a busy worker, a beat restart).
STALE_INTERVALS = 3
STALE_SLACK = 10.0

_client_lock = threading.Lock()
_client: tuple[str, float, redis.Redis] | None = None


def _redis() -> redis.Redis:
    """One client per process (a pool of its own; redis-py renews it after a fork), whose sockets give up
    after ``HEALTH_CHECK_TIMEOUT``, no retry: readiness and a scrape read it, and must not hang on it."""
    global _client
    url, timeout = settings.REDIS_URL, settings.HEALTH_CHECK_TIMEOUT
    with _client_lock:
        if _client is None or _client[:2] != (url, timeout):
            _client = (url, timeout, redis.Redis.from_url(url, socket_connect_timeout=timeout,
                                                          socket_timeout=timeout, retry=Retry(NoBackoff(), 0)))
        return _client[2]


def record_pass() -> None:
    """Stamp a completed pass. A Redis that fails is logged, not raised: the pass itself was done."""
    try:
        client = _redis()
        seconds, micros = client.time()
        client.set(LAST_PASS_KEY, f"{seconds}.{micros:06d}")
    except redis.RedisError as exc:
        log.warning("could not record the reconciler pass in Redis: %s", exc)


def last_pass_age() -> float | None:
    """Seconds since the last completed pass by Redis' clock, ``None`` when none is recorded. Raises
    ``redis.RedisError`` when Redis cannot be read."""
    pipe = _redis().pipeline(transaction=False)
    pipe.get(LAST_PASS_KEY)
    pipe.time()
    stamp, (seconds, micros) = pipe.execute()
    if stamp is None:
        return None
    return max(0.0, seconds + micros / 1e6 - float(stamp))


def interval() -> float:
    """Beat's interval for ``queueing.reconcile``: its ``beat_schedule`` entry (config/celery.py reads
    ``RECONCILE_EVERY_SECONDS``)."""
    from config.celery import app

    schedule = app.conf.beat_schedule["reconcile"]["schedule"]
    schedule = getattr(schedule, "run_every", schedule)  # a celery schedule object
    return schedule.total_seconds() if isinstance(schedule, timedelta) else float(schedule)


def stale_after() -> float:
    """How old the last pass may be before readiness and alerts call the reconciler not running."""
    return STALE_INTERVALS * interval() + STALE_SLACK
