"""State changes racing each other, interleaved step by step (two connections, events, no sleeps):
a hold for a remote service against a cancel and against a later run; cancel and priority changes
against a running task going back to PENDING; liveness by one clock, the database's; a stuck run's
kill against the task's next run."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from algorithms.remote import hold
from jobs import events, execution, services, transitions
from jobs.execution import Outcome
from jobs.models import Status, Task
from queueing import dispatch, heartbeat, reconciler
from queueing.models import WorkerRecord
from tests.conftest import another_session, unconsumed_queue, wait_until
from tests.fake_pool import ActiveRequest, host_clock, pool  # noqa: F401 (pool: a fixture)

pytestmark = pytest.mark.django_db(transaction=True)


def _queued(owner: Any, algorithm: str = "demo.noop", max_retries: int = 3) -> Task:
    """A QUEUED task of a queue no worker consumes (the session's worker may be running)."""
    spec = services.build_spec(algorithm=algorithm, queue=unconsumed_queue(), max_retries=max_retries)
    task = services._new_task(owner, spec, None)
    with transaction.atomic():
        task.save(force_insert=True)
        events.record([task], "task.created")
        transitions.apply([task.id], frm=[Status.PENDING], to=Status.QUEUED, event="task.queued",
                          values={"queued_at": timezone.now()})
    return task


def _reap(task: Task) -> list[Task]:
    """The reaper finds the task's heartbeat stale; in one transaction, so that no other reaper (the session
    worker's beat) ever sees that stale heartbeat committed."""
    with transaction.atomic():
        Task.objects.filter(id=task.id).update(heartbeat_at=timezone.now() - timedelta(hours=1))
        reconciler.reap_stale_running()
    return []


def _run_again(task: Task, worker: str) -> Task:
    """The task, back in PENDING, dispatched and claimed again: its next run."""
    Task.objects.filter(id=task.id).update(not_before=None)
    dispatch.dispatch([task.queue_id])
    again = execution.claim(task_id=task.id, worker=worker)
    assert again is not None
    return again


class _Open:
    """``fn`` run on another connection in a transaction left open until ``commit()``: another process's
    change in progress, holding the rows it changed."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._ready, self._go = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,))
        self._thread.start()
        assert self._ready.wait(30), "the other transaction never got going"
        if self.error:
            raise self.error

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            with transaction.atomic():
                fn()
                self._ready.set()
                assert self._go.wait(30)
        except BaseException as exc:  # noqa: BLE001 - raised in the test's thread
            self.error = exc
        finally:
            self._ready.set()
            connection.close()

    def commit(self) -> None:
        self._go.set()
        self._thread.join(30)
        if self.error:
            raise self.error


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except Exception as exc:  # noqa: BLE001 - the answer under test
            box["result"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def _lock_waiters() -> int:
    with contextlib.closing(another_session()) as s:
        return s.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                         "AND datname = current_database()").fetchone()[0]


# --- 3. a hold for a remote service: the claim guard and the cancel check of every RUNNING -> PENDING -

def _hold(running: Task, claimed_at: Any) -> str | None:
    return hold.hold_for_service(task_id=running.id, service="svc", error="down", delay=0, claimed_at=claimed_at)


def _past_its_timeout(task: Task) -> None:
    Task.objects.filter(id=task.id).update(created_at=timezone.now() - timedelta(hours=2), timeout_seconds=60)


@pytest.mark.parametrize("timed_out", [False, True], ids=["held", "timed-out"])
def test_a_cancel_requested_before_a_hold_for_the_service_ends_the_task_cancelled(alice, timed_out):
    task = _queued(alice)
    running = execution.claim(task_id=task.id, worker="w")
    if timed_out:
        _past_its_timeout(task)
    assert services.cancel(task_id=task.id).cancel_requested  # the user is told it will stop

    # within one heartbeat, before the bridge saw the flag, it holds the task for its (down) service
    assert _hold(running, running.started_at) == Status.CANCELLED

    row = Task.objects.get(id=task.id)
    last = row.events.order_by("-seq").first()
    assert (row.status, last.event, last.data["reason"]) == (Status.CANCELLED, "task.cancelled", "cancelled by user")
    assert row.finished_at is not None
    assert not row.events.filter(event__in=["task.requeued", "task.timed_out"]).exists()
    assert execution.claim(task_id=task.id, worker="w2") is None  # a late message finds nothing to run


@pytest.mark.parametrize("timed_out", [False, True], ids=["held", "timed-out"])
def test_a_hold_from_a_run_taken_for_dead_changes_nothing_of_the_tasks_new_run(alice, timed_out):
    task = _queued(alice)
    first = execution.claim(task_id=task.id, worker="w1")
    _reap(first)  # w1 went silent: its task runs again on w2
    second = _run_again(task, "w2")
    if timed_out:
        _past_its_timeout(task)

    assert _hold(first, first.started_at) is None  # w1, alive after all, holds "its" task for its service

    row = Task.objects.get(id=task.id)
    assert (row.status, row.worker, row.started_at) == (Status.RUNNING, "w2", second.started_at)
    done = execution.finish(task_id=task.id, outcome=Outcome(status=Status.SUCCEEDED, result="w2"),
                           claimed_at=second.started_at)
    assert done is not None and done.status == Status.SUCCEEDED and done.result == "w2"


def test_a_hold_of_its_own_run_goes_back_to_the_queue_without_counting_the_attempt(alice):
    task = _queued(alice)
    running = execution.claim(task_id=task.id, worker="w")

    assert _hold(running, running.started_at) == Status.PENDING

    row = Task.objects.get(id=task.id)
    assert (row.status, row.attempts) == (Status.PENDING, 0) and row.not_before > timezone.now()
    last = row.events.order_by("-seq").first()
    assert (last.event, last.data["reason"]) == ("task.requeued", hold.HOLD_REASON)


# --- 4. cancel and priority changes racing a running task going back to PENDING ------------------

def _fail_retryably(running: Task) -> None:
    execution.finish(task_id=running.id, outcome=Outcome(status=Status.FAILED, error="boom", retryable=True),
                    claimed_at=running.started_at, dispatch_next=False)


def _reaped(running: Task) -> None:
    Task.objects.filter(id=running.id).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    reconciler.reap_stale_running()


def _handed_back(running: Task) -> None:
    execution.release(task_ids=[running.id], worker="w", reason="worker shutdown", event="task.retrying",
                     claimed_at=running.started_at)


def _held(running: Task) -> None:
    _hold(running, running.started_at)


BACK = pytest.mark.parametrize("back", [_fail_retryably, _reaped, _handed_back, _held],
                               ids=["retry", "reaped", "handed-back", "held"])


def _while_it_goes_back(back: Callable[[Task], None], running: Task, call: Callable[[], Any]) -> Any:
    """``call`` while another transaction moves ``running`` back to PENDING: started once that change is
    made, still uncommitted (``call``'s statements see the task RUNNING), and the change commits while
    ``call`` waits for the row, or at once if it does not wait."""
    other = _Open(lambda: back(running))
    thread, box = _in_thread(call)
    wait_until(lambda: _lock_waiters() >= 1 or not thread.is_alive(), message="the call waiting for the row")
    other.commit()
    thread.join(30)
    return box["result"]


def _when_it_went_back_just_after_the_first_statement(monkeypatch: pytest.MonkeyPatch, back: Callable[[Task], None],
                                                      running: Task, call: Callable[[], Any]) -> Any:
    """``call``, whose first statement sees the task RUNNING (another transaction is moving it back to
    PENDING), and whose next ones see it PENDING: that transaction commits in between."""
    other = _Open(lambda: back(running))
    real, first = transitions.apply, []  # apply_one goes through it too

    def then_the_other_commits(*args: Any, **kwargs: Any) -> Any:
        done = real(*args, **kwargs)
        if not first:
            first.append(done)
            other.commit()
        return done

    monkeypatch.setattr(transitions, "apply", then_the_other_commits)
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - the answer under test
        return exc


def _running(owner: Any) -> Task:
    task = _queued(owner)
    running = execution.claim(task_id=task.id, worker="w")
    assert running is not None
    return running


def _cancelled_by_its_user(task: Task) -> None:
    row = Task.objects.get(id=task.id)
    assert row.status == Status.CANCELLED and row.finished_at is not None
    cancelled = row.events.filter(event="task.cancelled")
    assert cancelled.count() == 1 and cancelled.get().data["reason"] == "cancelled by user"
    assert execution.claim(task_id=task.id, worker="w2") is None  # it never runs again


@BACK
def test_a_cancel_waiting_for_a_running_task_going_back_to_pending_cancels_it(alice, back):
    running = _running(alice)

    answer = _while_it_goes_back(back, running, lambda: services.cancel(task_id=running.id))

    assert isinstance(answer, Task) and answer.status == Status.CANCELLED, f"cancel answered {answer!r}"
    _cancelled_by_its_user(running)


@BACK
def test_a_cancel_seeing_a_running_task_that_went_back_to_pending_meanwhile_cancels_it(alice, back, monkeypatch):
    running = _running(alice)

    answer = _when_it_went_back_just_after_the_first_statement(
        monkeypatch, back, running, lambda: services.cancel(task_id=running.id))

    assert isinstance(answer, Task) and answer.status == Status.CANCELLED, f"cancel answered {answer!r}"
    _cancelled_by_its_user(running)


def test_a_cancel_of_a_running_task_still_only_flags_it_and_of_a_final_one_is_a_409(alice):
    from jobs.errors import InvalidTransition

    running = _running(alice)
    assert services.cancel(task_id=running.id).cancel_requested
    assert Task.objects.get(id=running.id).status == Status.RUNNING
    assert not Task.objects.get(id=running.id).events.filter(event="task.cancelled").exists()
    execution.finish(task_id=running.id, outcome=Outcome(status=Status.CANCELLED), claimed_at=running.started_at)
    with pytest.raises(InvalidTransition):
        services.cancel(task_id=running.id)


def _reprioritised(task: Task, answer: Any) -> None:
    assert isinstance(answer, Task) and answer.priority == 9, f"change_priority answered {answer!r}"
    row = Task.objects.get(id=task.id)
    assert row.status in (Status.PENDING, Status.QUEUED) and row.priority == 9
    assert row.events.filter(event="task.priority_changed").count() == 1


@BACK
def test_a_priority_change_waiting_for_a_running_task_going_back_to_pending_changes_it(alice, back):
    running = _running(alice)

    answer = _while_it_goes_back(back, running,
                                 lambda: services.change_priority(task_id=running.id, priority=9))

    _reprioritised(running, answer)


@BACK
def test_a_priority_change_seeing_a_running_task_that_went_back_to_pending_meanwhile_changes_it(alice, back, monkeypatch):
    running = _running(alice)

    answer = _when_it_went_back_just_after_the_first_statement(
        monkeypatch, back, running, lambda: services.change_priority(task_id=running.id, priority=9))

    _reprioritised(running, answer)


# --- 6. liveness by one clock, the database's ----------------------------------------------------

TASK_STALE = timedelta(seconds=settings.CONVEYOR["HEARTBEAT_STALE_SECONDS"] + 1)
WORKER_STALE = timedelta(seconds=settings.CONVEYOR["WORKER_STALE_SECONDS"] + 1)


def test_a_task_beaten_just_now_is_not_reaped_when_the_beat_hosts_clock_runs_ahead_of_the_databases(alice):
    running = _running(alice)
    assert execution.heartbeat(claims={str(running.id): running.started_at}) == {str(running.id): False}

    with host_clock(TASK_STALE):
        assert reconciler.reap_stale_running() == 0

    assert Task.objects.get(id=running.id).status == Status.RUNNING


def test_a_task_claimed_by_a_worker_whose_clock_runs_behind_the_databases_is_not_reaped(alice):
    task = _queued(alice)
    with host_clock(-TASK_STALE):
        running = execution.claim(task_id=task.id, worker="w")

    assert reconciler.reap_stale_running() == 0
    assert Task.objects.get(id=running.id).status == Status.RUNNING


def test_a_task_whose_heartbeat_stopped_is_reaped_whatever_the_beat_hosts_clock(alice):
    running = _running(alice)
    with transaction.atomic():  # (no other reaper sees the stale heartbeat: see _reap)
        with connection.cursor() as cur:
            cur.execute("UPDATE jobs_task SET heartbeat_at = now() - make_interval(secs => %s) WHERE id = %s",
                        [TASK_STALE.total_seconds(), running.id])
        with host_clock(-timedelta(hours=2)):
            assert reconciler.reap_stale_running() == 1
    assert Task.objects.get(id=running.id).status in (Status.PENDING, Status.QUEUED)


def _beat(hostname: str) -> None:
    heartbeat.beat(hostname, {"queues": ["default"], "concurrency": 2, "pool": "prefork", "pid": 1,
                              "version": "celery test"}, started_at=timezone.now())


@pytest.mark.parametrize("worker_clock, reader_clock", [(-WORKER_STALE, timedelta(0)), (timedelta(0), WORKER_STALE)],
                         ids=["worker-clock-behind", "beat-and-web-clock-ahead"])
def test_a_worker_beating_now_is_alive_whatever_the_hosts_clocks(db, worker_clock, reader_clock):
    from queueing import selectors

    with host_clock(worker_clock):
        _beat("celery@drifting")
    with host_clock(reader_clock):  # the beat's liveness check, the API's and the admin's readers
        assert reconciler.check_workers() == 0
        assert "celery@drifting" in set(selectors.live_workers().values_list("hostname", flat=True))
        [shown] = [w for w in selectors.workers() if w["hostname"] == "celery@drifting"]
        assert shown["alive"] and shown["status"] == "online"
    assert WorkerRecord.objects.get(hostname="celery@drifting").lost_at is None


def test_a_silent_worker_is_found_lost_even_when_the_beat_hosts_clock_runs_behind(db):
    _beat("celery@silent")
    WorkerRecord.objects.filter(hostname="celery@silent").update(last_heartbeat=timezone.now() - timedelta(hours=1))

    with host_clock(-timedelta(hours=2)):
        assert reconciler.check_workers() == 1

    assert WorkerRecord.objects.get(hostname="celery@silent").lost_at is not None


# --- 10. a stuck run's kill and give-up: that run's, never the task's next one ------------------

HOST = "celery@stuck-test"


def _stuck(owner: Any) -> Task:
    """A task of ``demo.stall`` (progress_timeout 3 s) running on HOST, started 10 s ago, no progress since."""
    task = _queued(owner, algorithm="demo.stall")
    execution.claim(task_id=task.id, worker=HOST)
    Task.objects.filter(id=task.id).update(started_at=timezone.now() - timedelta(seconds=10))
    return Task.objects.get(id=task.id)


def test_a_stuck_run_has_its_child_killed_and_runs_again(alice, pool):
    stuck = _stuck(alice)
    pool.active.add(ActiveRequest(stuck.id, 4_000_001))

    heartbeat._stop_stuck(HOST)

    assert pool.killed == [4_000_001]
    row = Task.objects.get(id=stuck.id)
    assert row.status in (Status.PENDING, Status.QUEUED) and "progress_timeout" in row.error


def test_a_stuck_run_that_ended_and_ran_again_before_the_kill_leaves_the_new_run_alone(alice, pool, monkeypatch):
    stuck = _stuck(alice)
    pool.active.add(ActiveRequest(stuck.id, 4_000_001))
    found_stuck, later = reconciler.stuck_running, {}

    def then_it_ends_and_starts_again(**kwargs: Any) -> Any:
        found = found_stuck(**kwargs)
        # after the stuck run was found, it ends (a retryable failure) and the task starts again, in
        # another child of the same worker, before that worker reads its active requests
        _fail_retryably(stuck)
        later["run"] = _run_again(stuck, HOST)
        pool.active.clear()
        pool.active.add(ActiveRequest(stuck.id, 4_000_002))
        return found

    monkeypatch.setattr(reconciler, "stuck_running", then_it_ends_and_starts_again)
    heartbeat._stop_stuck(HOST)

    assert pool.killed == []
    row = Task.objects.get(id=stuck.id)
    assert (row.status, row.started_at) == (Status.RUNNING, later["run"].started_at)


def test_a_stuck_run_that_finishes_just_before_the_kill_is_not_killed(alice, pool, monkeypatch):
    stuck = _stuck(alice)
    request = ActiveRequest(stuck.id, 4_000_001)
    pool.active.add(request)
    looked = reconciler.still_running

    def then_it_finishes(**kwargs: Any) -> bool:
        running = looked(**kwargs)
        # it reports, finishes, and Celery lets its child take another message
        execution.finish(task_id=stuck.id, outcome=Outcome(status=Status.SUCCEEDED, result=1),
                        claimed_at=stuck.started_at)
        pool.active.discard(request)
        return running

    monkeypatch.setattr(reconciler, "still_running", then_it_finishes)
    heartbeat._stop_stuck(HOST)

    assert pool.killed == []
    assert Task.objects.get(id=stuck.id).status == Status.SUCCEEDED


def test_a_task_with_two_active_requests_is_not_killed_until_only_one_is_left(alice, pool):
    stuck = _stuck(alice)
    pool.active.update({ActiveRequest(stuck.id, 4_000_001), ActiveRequest(stuck.id, 4_000_002)})  # a duplicate message

    heartbeat._stop_stuck(HOST)

    assert pool.killed == [] and Task.objects.get(id=stuck.id).status == Status.RUNNING


def test_giving_up_a_stuck_run_leaves_a_later_run_of_the_task_alone(alice):
    stuck = _stuck(alice)
    _fail_retryably(stuck)
    later = _run_again(stuck, HOST)

    assert not reconciler.give_up_stuck(task_id=str(stuck.id), worker=HOST, timeout=3, claimed_at=stuck.started_at)

    row = Task.objects.get(id=stuck.id)
    assert (row.status, row.started_at) == (Status.RUNNING, later.started_at)


def test_the_reaper_steps_over_a_running_task_whose_row_another_transaction_holds(alice):
    # A run's own transaction (a progress report in it) holds the row, so its heartbeat cannot be written:
    # the reaper waited for the row, then found that heartbeat stale and ran the healthy task again.
    from tests.conftest import returns_without_waiting, row_held

    running = _running(alice)
    Task.objects.filter(id=running.id).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    with row_held(running.id):
        assert returns_without_waiting(reconciler.reap_stale_running), "the reaper waited for the row"
    assert Task.objects.get(id=running.id).status == Status.RUNNING  # stepped over, not reaped

    reconciler.reap_stale_running()  # the row free, the heartbeat still stale: reaped now (and queued again)
    assert Task.objects.get(id=running.id).status in {Status.PENDING, Status.QUEUED}
    assert running.events.filter(event="task.retrying").exists()
