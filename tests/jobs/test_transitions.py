"""The state machine's guards under races: two connections, one winner."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from jobs import events, execution, services, transitions
from jobs.models import Status, Task
from jobs.execution import Outcome
from queueing.models import Queue
from tests.conftest import another_session, queued_tasks, terminate_this_backend, unconsumed_queue, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def queued_task(alice) -> Task:
    # A queue no worker consumes: the session's worker (if one runs) never claims it, not even after its
    # beat re-sends the id (QUEUED a few seconds without a claim).
    spec = services.build_spec(algorithm="demo.noop", queue=unconsumed_queue())
    task = services._new_task(alice, spec, None)
    with transaction.atomic():  # what submit + dispatch do, without handing the id to a broker
        task.save(force_insert=True)
        events.record([task], "task.created")
        transitions.apply([task.id], frm=[Status.PENDING], to=Status.QUEUED, event="task.queued",
                          values={"queued_at": timezone.now()})
    return task


def race(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls at the same moment, each on its own database connection."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 - the loser's exception is a result too
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_two_claims_of_the_same_message_start_the_task_once(queued_task):
    results = race(*[lambda: execution.claim(task_id=queued_task.id, worker="w")] * 4)

    assert sum(r is not None for r in results) == 1
    task = Task.objects.get(id=queued_task.id)
    assert task.status == Status.RUNNING and task.attempts == 1
    assert task.events.filter(event="task.started").count() == 1


def test_a_new_attempt_does_not_show_the_previous_attempts_error_while_it_runs(queued_task):
    """The last attempt's error stays in its ``task.retrying`` event; the running task shows none."""
    Task.objects.filter(id=queued_task.id).update(error="worker lost (heartbeat stale)")
    claimed = execution.claim(task_id=queued_task.id, worker="w")
    assert claimed is not None and claimed.error == ""
    assert Task.objects.get(id=queued_task.id).error == ""


def test_cancel_racing_a_claim_ends_in_exactly_one_consistent_state(queued_task):
    claimed, cancelled = race(lambda: execution.claim(task_id=queued_task.id, worker="w"),
                              lambda: services.cancel(task_id=queued_task.id))

    task = Task.objects.get(id=queued_task.id)
    if claimed is not None:  # the claim won: the cancel became a request the worker will see
        assert task.status == Status.RUNNING and task.cancel_requested
    else:  # the cancel won: the message will be dropped
        assert task.status == Status.CANCELLED and task.attempts == 0
    assert task.events.filter(event__in=["task.started", "task.cancelled"]).count() == 1


def test_finish_after_the_task_was_reaped_changes_nothing(queued_task):
    execution.claim(task_id=queued_task.id, worker="w")
    services.cancel(task_id=queued_task.id)
    Task.objects.filter(id=queued_task.id).update(status=Status.CANCELLED)

    assert execution.finish(task_id=queued_task.id, outcome=Outcome(status=Status.SUCCEEDED, result=1)) is None
    assert Task.objects.get(id=queued_task.id).result is None


def _fail_retryably(task: Task) -> None:
    execution.finish(task_id=task.id, outcome=Outcome(status=Status.FAILED, error="boom", retryable=True))


def _reap(task: Task) -> None:
    """The reaper finds the task's heartbeat stale. In one transaction: the session worker's beat (which
    reaps every second) never sees the stale heartbeat, so this reaper is the one that acts, and its
    dispatch runs here after the commit (not in the worker, some time later)."""
    from queueing import reconciler

    with transaction.atomic():
        Task.objects.filter(id=task.id).update(heartbeat_at=timezone.now() - timedelta(hours=1))
        reconciler.reap_stale_running()


def _hand_back(task: Task) -> None:
    execution.release(task_ids=[task.id], worker="w", reason="worker shutdown", event="task.retrying")


@pytest.mark.parametrize("back", [_fail_retryably, _reap, _hand_back], ids=["retry", "reaped", "handed-back"])
def test_a_running_task_cancelled_before_it_would_run_again_ends_cancelled_and_never_runs_again(alice, back):
    queued_task = _queued(alice, 1)[0]
    Task.objects.filter(id=queued_task.id).update(max_retries=3)
    execution.claim(task_id=queued_task.id, worker="w")
    assert services.cancel(task_id=queued_task.id).cancel_requested  # the user is told it will stop

    back(queued_task)  # it failed, its worker died or shut down, before the worker saw the cancel

    task = Task.objects.get(id=queued_task.id)
    assert task.status == Status.CANCELLED and task.finished_at is not None
    last = task.events.order_by("-seq").first()
    assert last.event == "task.cancelled" and last.data["reason"] == "cancelled by user"
    assert not task.events.filter(event="task.retrying").exists()
    assert execution.claim(task_id=queued_task.id, worker="w2") is None  # a late message finds nothing to run


@pytest.mark.parametrize("back", [_fail_retryably, _reap, _hand_back], ids=["retry", "reaped", "handed-back"])
def test_a_running_task_nobody_cancelled_goes_back_to_pending_to_run_again(alice, back):
    queued_task = _queued(alice, 1)[0]
    Task.objects.filter(id=queued_task.id).update(max_retries=3)
    execution.claim(task_id=queued_task.id, worker="w")

    back(queued_task)

    task = Task.objects.get(id=queued_task.id)  # PENDING, or already dispatched again (nobody consumes it)
    assert task.status in (Status.PENDING, Status.QUEUED) and task.finished_at is None
    assert task.events.filter(event="task.retrying").exists() and not task.events.filter(event="task.cancelled").exists()


def _give_up_stuck(task: Task) -> None:
    from queueing import reconciler

    reconciler.give_up_stuck(task_id=str(task.id), worker="w", timeout=5)


@pytest.mark.parametrize("cancelled", [True, False], ids=["cancelled", "not-cancelled"])
@pytest.mark.parametrize("lose", [_reap, _give_up_stuck], ids=["reaped", "stuck"])
def test_a_task_lost_with_no_retries_left_ends_cancelled_if_its_user_asked_else_failed(alice, lose, cancelled):
    task = _queued(alice, 1)[0]
    Task.objects.filter(id=task.id).update(max_retries=0)
    execution.claim(task_id=task.id, worker="w")
    if cancelled:
        services.cancel(task_id=task.id)

    lose(task)  # its worker died, or its process was stopped for making no progress, on its last attempt

    row = Task.objects.get(id=task.id)
    last = row.events.order_by("-seq").first()
    if cancelled:
        assert (row.status, row.error, last.event) == (Status.CANCELLED, "cancelled", "task.cancelled")
    else:
        why = "worker lost" if lose is _reap else "progress_timeout"
        assert (row.status, last.event) == (Status.FAILED, "task.failed") and why in row.error
    assert row.finished_at is not None and not row.events.filter(event="task.retrying").exists()


def test_a_worker_taken_for_dead_changes_nothing_of_its_tasks_new_run_and_stops_its_own(alice):
    from jobs import runner
    from queueing import dispatch

    task = _queued(alice, 1)[0]
    Task.objects.filter(id=task.id).update(max_retries=3)
    first = execution.claim(task_id=task.id, worker="w1")
    _reap(first)  # w1 went silent (a partition, a long call holding the GIL): its task runs again on w2
    # QUEUED by now; should the session worker's beat have reaped it first, its dispatch runs in that
    # process after its commit, possibly still to come: this one takes the queue's lock after it, or does it
    dispatch.dispatch([task.queue_id])
    second = execution.claim(task_id=task.id, worker="w2")
    assert second is not None and second.started_at != first.started_at

    # w1 comes back: its heartbeat, progress and finish are no longer its task's
    assert execution.heartbeat(claims={str(task.id): first.started_at}) == {}
    assert not execution.report_progress(task_id=task.id, percent=90, stage="stale", message="", metrics={},
                                        claimed_at=first.started_at)
    assert execution.finish(task_id=task.id, outcome=Outcome(status=Status.SUCCEEDED, result="stale"),
                           claimed_at=first.started_at) is None
    watch = runner.Watch(first, threading.current_thread())
    watch.grace = 0
    runner.Watchdog()._tick([watch], [])  # its watchdog stops the stale run (and would end its process)
    assert watch.cancel.is_set()

    row = Task.objects.get(id=task.id)
    assert (row.status, row.worker, row.result, row.progress_stage) == (Status.RUNNING, "w2", None, "")
    assert execution.heartbeat(claims={str(task.id): second.started_at}) == {str(task.id): False}
    done = execution.finish(task_id=task.id, outcome=Outcome(status=Status.SUCCEEDED, result="fresh"),
                           claimed_at=second.started_at)
    assert done.status == Status.SUCCEEDED and done.result == "fresh"


def test_claim_in_a_paused_queue_sends_the_task_back_to_pending(queued_task):
    from queueing.models import Queue

    Queue.objects.filter(name=queued_task.queue_id).update(paused=True)

    assert execution.claim(task_id=queued_task.id, worker="w") is None
    task = Task.objects.get(id=queued_task.id)
    assert task.status == Status.PENDING and task.attempts == 0
    assert task.events.order_by("-seq").first().event == "task.requeued"


def test_once_a_pause_has_answered_no_task_of_its_queue_starts(alice):
    """A claim whose statement began before the pause committed (here it waits for the task's row, which
    another session holds) finishes before the pause answers, or does not start the task at all."""
    from queueing import services as queues

    task = _queued(alice, 1)[0]
    holder = another_session()
    holder.execute("BEGIN")
    holder.execute("SELECT 1 FROM jobs_task WHERE id = %s FOR UPDATE", [task.id])
    seen: dict[str, Any] = {}

    def claim() -> None:
        try:
            seen["claimed"] = execution.claim(task_id=task.id, worker="w")
        finally:
            connection.close()

    def pause() -> None:
        try:
            queues.pause(name=task.queue_id)
            seen["at_answer"] = Task.objects.get(id=task.id).status
        finally:
            connection.close()

    def claim_waits() -> bool:
        with connection.cursor() as cur:  # autocommit: a fresh look at pg_stat_activity each time
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND datname = current_database()")
            return cur.fetchone()[0] == 1

    claiming, pausing = threading.Thread(target=claim), threading.Thread(target=pause)
    try:
        claiming.start()
        wait_until(claim_waits, message="the claim waiting for the row")
        pausing.start()
        pausing.join(0.5)  # the old pause answered here, with the claim still to come
    finally:
        holder.execute("COMMIT")
        holder.close()
    claiming.join(10)
    pausing.join(10)

    final = Task.objects.get(id=task.id)
    if seen["at_answer"] == Status.RUNNING:  # the claim came first: it committed before the pause answered
        assert seen["claimed"] is not None and final.status == Status.RUNNING
    else:
        assert seen["claimed"] is None and final.status == seen["at_answer"] == Status.PENDING
        assert final.started_at is None and final.events.order_by("-seq").first().event == "task.requeued"


def test_event_sequence_numbers_are_gapless_per_task(queued_task):
    execution.claim(task_id=queued_task.id, worker="w")
    for i in range(3):
        execution.report_progress(task_id=queued_task.id, percent=i * 10, stage="s", message="", metrics={})
    execution.finish(task_id=queued_task.id, outcome=Outcome(status=Status.SUCCEEDED, result={}))

    seqs = list(Task.objects.get(id=queued_task.id).events.order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))


def _queued(owner: Any, n: int) -> list[Task]:
    return queued_tasks(owner, n)


def test_finishing_a_batch_in_one_statement_keeps_each_tasks_own_result_and_outcome(alice):
    a, b, c, d = _queued(alice, 4)
    assert len(execution.claim_many(task_ids=[a.id, b.id, c.id, d.id], worker="w")) == 4

    done = execution.finish_many(outcomes=[
        (a.id, Outcome(status=Status.SUCCEEDED, result={"n": 1})),
        (b.id, Outcome(status=Status.FAILED, error="boom", retryable=False)),
        (c.id, Outcome(status=Status.SUCCEEDED, result=[2, "two"])),
        (d.id, Outcome(status=Status.SUCCEEDED, result=None)),
    ])

    assert [t.status for t in done] == [Status.SUCCEEDED, Status.FAILED, Status.SUCCEEDED, Status.SUCCEEDED]
    rows = {t.id: t for t in Task.objects.filter(id__in=[a.id, b.id, c.id, d.id])}
    assert rows[a.id].result == {"n": 1} and rows[c.id].result == [2, "two"] and rows[d.id].result is None
    assert rows[b.id].error == "boom" and rows[b.id].result is None
    for task, final in ((a, "task.succeeded"), (b, "task.failed"), (c, "task.succeeded"), (d, "task.succeeded")):
        names = list(rows[task.id].events.order_by("seq").values_list("event", flat=True))
        assert names == ["task.created", "task.queued", "task.started", final]


def test_two_workers_claiming_overlapping_batches_start_each_task_once(alice):
    tasks = _queued(alice, 6)
    ids = [t.id for t in tasks]

    first, second = race(lambda: execution.claim_many(task_ids=ids[:4], worker="w1"),
                         lambda: execution.claim_many(task_ids=ids[2:], worker="w2"))

    claimed = [t.id for t in first] + [t.id for t in second]
    assert sorted(claimed) == sorted(ids)  # each exactly once, between them
    assert all(t.events.filter(event="task.started").count() == 1 for t in Task.objects.filter(id__in=ids))


def test_a_batch_cut_short_records_the_finished_task_and_hands_back_the_unstarted_ones(alice):
    from jobs import runner

    tasks = _queued(alice, 3)
    claimed = execution.claim_many(task_ids=[t.id for t in tasks], worker="w")
    batch = runner.Batch(claimed, "w")
    batch.run(claimed[0])  # a no-op: its outcome waits for the batch's next record

    batch.settle()  # what the watchdog does before it kills a pool child

    first, *rest = (Task.objects.get(id=t.id) for t in tasks)
    assert first.status == Status.SUCCEEDED and first.result == {"ok": True}
    for task in rest:  # back in the queue (and dispatched again at once), the claim not counted
        assert task.status in {Status.PENDING, Status.QUEUED} and task.attempts == 0
        assert list(task.events.order_by("seq").values_list("event", flat=True))[2:4] == ["task.started", "task.requeued"]


def _connection_lost_in_the_first(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The first call of ``execution.<name>`` finds its database connection gone (its backend terminated,
    as by a PostgreSQL restart), the later ones a fresh connection."""
    real, calls = getattr(execution, name), []

    def first_fails(*args: Any, **kwargs: Any) -> Any:
        if not calls:
            calls.append(name)
            terminate_this_backend()
        return real(*args, **kwargs)

    monkeypatch.setattr(execution, name, first_fails)


def test_a_batch_whose_record_fails_keeps_its_finished_tasks_beaten_and_records_them_next_time(alice, monkeypatch):
    from django.db import DatabaseError

    from jobs import runner

    tasks = _queued(alice, 2)
    claimed = execution.claim_many(task_ids=[t.id for t in tasks], worker="w")
    batch = runner.Batch(claimed, "w")
    batch.flush_every = 3600  # recorded only when asked below
    batch.run(claimed[0])
    _connection_lost_in_the_first(monkeypatch, "finish_many")

    with pytest.raises(DatabaseError):
        batch.flush()
    connection.close()  # what the watchdog does after a failed beat

    assert str(claimed[0].id) in batch.waiting_ids()  # still beaten: the reaper does not run it again
    assert Task.objects.get(id=claimed[0].id).status == Status.RUNNING
    batch.flush()
    assert Task.objects.get(id=claimed[0].id).status == Status.SUCCEEDED


def test_a_watchdog_that_cannot_record_a_terminated_task_tries_again_at_the_next_beat(alice, monkeypatch):
    from jobs import runner

    task = _queued(alice, 1)[0]
    claimed = execution.claim(task_id=task.id, worker="w")
    services.cancel(task_id=task.id)  # and the algorithm ignores it
    watch = runner.Watch(claimed, threading.current_thread())
    watch.grace = 0
    watchdog = runner.Watchdog()  # not started: its beats are run here, one by one
    _connection_lost_in_the_first(monkeypatch, "finish")

    watchdog._tick([watch], [])  # the grace is over; recording CANCELLED fails with the connection
    assert Task.objects.get(id=task.id).status == Status.RUNNING
    watchdog._tick([watch], [])

    done = Task.objects.get(id=task.id)
    assert done.status == Status.CANCELLED and "did not stop" in done.error


def test_a_submit_into_a_full_queue_does_not_wait_for_a_dispatcher_and_the_next_finish_starts_it(alice):
    Queue.objects.create(name="full", concurrency=1)
    spec = services.build_spec(algorithm="demo.noop", queue="full")
    first, _ = services.submit(owner=alice, spec=spec)
    assert execution.claim(task_id=first.id, worker="w") is not None  # the window (1) is taken

    locked, release = threading.Event(), threading.Event()

    def hold_the_queue_lock() -> None:  # a dispatcher of this queue in the middle of its transaction
        try:
            with transaction.atomic():
                list(Queue.objects.select_for_update(no_key=True).filter(name="full"))
                locked.set()
                release.wait(30)
        finally:
            connection.close()

    submitted: list[Task] = []

    def submit_second() -> None:
        try:
            submitted.append(services.submit(owner=alice, spec=spec)[0])
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_queue_lock)
    holder.start()
    assert locked.wait(10)
    submitter = threading.Thread(target=submit_second)
    submitter.start()
    submitter.join(10)
    blocked = submitter.is_alive()
    release.set()
    holder.join()
    submitter.join()
    assert not blocked, "the submit waited for the dispatcher's lock on the queue row although the queue was full"
    second = Task.objects.get(id=submitted[0].id)
    assert second.status == Status.PENDING

    execution.finish(task_id=first.id, outcome=Outcome(status=Status.SUCCEEDED))  # frees the slot, dispatches
    assert Task.objects.get(id=second.id).status == Status.QUEUED


def test_a_finish_queues_the_next_task_in_its_own_commit_and_sends_it_only_after(alice, monkeypatch):
    """One transaction for both: a finish that does not commit leaves the next task waiting, and its id
    reaches the broker only once both are committed."""
    from queueing import dispatch

    Queue.objects.create(name="one-txn", concurrency=1)
    spec = services.build_spec(algorithm="demo.noop", queue="one-txn")
    first, _ = services.submit(owner=alice, spec=spec)
    second, _ = services.submit(owner=alice, spec=spec)
    assert execution.claim(task_id=first.id, worker="w") is not None
    sent: list[tuple[str, list[str], bool]] = []
    monkeypatch.setattr(dispatch, "send", lambda name, ids: sent.append(
        (name, ids, connection.in_atomic_block)))

    with pytest.raises(RuntimeError), transaction.atomic():  # e.g. the commit never happens
        execution.finish(task_id=first.id, outcome=Outcome(status=Status.SUCCEEDED))
        assert Task.objects.get(id=second.id).status == Status.QUEUED  # inside the finish's transaction
        raise RuntimeError("rolled back")
    assert Task.objects.get(id=first.id).status == Status.RUNNING
    assert Task.objects.get(id=second.id).status == Status.PENDING
    assert sent == []

    execution.finish(task_id=first.id, outcome=Outcome(status=Status.SUCCEEDED))
    assert Task.objects.get(id=first.id).status == Status.SUCCEEDED
    assert Task.objects.get(id=second.id).status == Status.QUEUED
    assert sent == [("one-txn", [str(second.id)], False)]  # after the commit


def test_a_submit_into_a_queue_with_room_queues_its_task_in_its_own_commit_and_sends_it_only_after(alice, monkeypatch):
    """One transaction for the INSERT and the dispatch: the task is QUEUED by the submit's one commit, its
    id reaches the broker after it, and a submit that is rolled back leaves nothing and sends nothing."""
    from queueing import dispatch

    Queue.objects.create(name="room", concurrency=2)
    spec = services.build_spec(algorithm="demo.noop", queue="room")
    sent: list[tuple[str, list[str], bool]] = []
    monkeypatch.setattr(dispatch, "send", lambda name, ids: sent.append((name, ids, connection.in_atomic_block)))
    commits: list[int] = []
    commit = connection.commit
    monkeypatch.setattr(connection, "commit", lambda: (commits.append(1), commit())[1])

    task, _ = services.submit(owner=alice, spec=spec)
    assert len(commits) == 1
    assert Task.objects.get(id=task.id).status == Status.QUEUED
    assert sent == [("room", [str(task.id)], False)]

    with pytest.raises(RuntimeError), transaction.atomic():  # the submit's commit never happens
        undone, _ = services.submit(owner=alice, spec=spec)
        assert Task.objects.get(id=undone.id).status == Status.QUEUED  # inside the submit's transaction
        raise RuntimeError("rolled back")
    assert not Task.objects.filter(id=undone.id).exists()
    assert sent == [("room", [str(task.id)], False)]


def test_a_task_submitted_while_a_finish_commits_is_queued_by_that_finish_not_the_beat_tick(alice, monkeypatch):
    """The finish dispatches inside its transaction and finds nothing waiting; meanwhile a submit commits
    a task, and its own look sees the slot still taken (the finish has not committed). The finish looks
    again after its commit, so the new task starts now rather than at the next safety-net tick."""
    from queueing import dispatch

    Queue.objects.create(name="meanwhile", concurrency=1)
    spec = services.build_spec(algorithm="demo.noop", queue="meanwhile")
    first, _ = services.submit(owner=alice, spec=spec)
    assert execution.claim(task_id=first.id, worker="w") is not None
    monkeypatch.setattr(dispatch, "send", lambda name, ids: None)  # no broker: only the rows matter here
    submitted: list[Task] = []
    original = dispatch._dispatch_queue

    def then_a_submit_commits(name: str) -> tuple[int, bool]:
        found = original(name)
        if not submitted:  # inside the finish's transaction, which has found nothing to queue

            def submit() -> None:
                submitted.append(services.submit(owner=alice, spec=spec)[0])
                connection.close()

            thread = threading.Thread(target=submit)
            thread.start()
            thread.join(10)
            assert submitted and Task.objects.get(id=submitted[0].id).status == Status.PENDING
        return found

    monkeypatch.setattr(dispatch, "_dispatch_queue", then_a_submit_commits)
    execution.finish(task_id=first.id, outcome=Outcome(status=Status.SUCCEEDED))
    assert Task.objects.get(id=submitted[0].id).status == Status.QUEUED


def test_a_finish_in_a_queue_with_nothing_waiting_takes_the_queue_lock_once(alice, monkeypatch):
    """Its look after the commit sees nothing waiting and stops: no second dispatcher transaction."""
    Queue.objects.create(name="drained", concurrency=2)
    first, _ = services.submit(owner=alice, spec=services.build_spec(algorithm="demo.noop", queue="drained"))
    assert execution.claim(task_id=first.id, worker="w") is not None
    locks: list[str] = []

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if "FOR NO KEY UPDATE" in sql:
            locks.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        execution.finish(task_id=first.id, outcome=Outcome(status=Status.SUCCEEDED))
    assert len(locks) == 1


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "client-bound"])
def test_a_task_goes_through_dispatch_claim_and_finish_with_and_without_prepared_statements(alice, settings, prepared):
    settings.DB_PREPARED_STATEMENTS = prepared
    connection.close()  # a new connection: no statement prepared by an earlier test
    Queue.objects.create(name="prep", concurrency=1)
    spec = services.build_spec(algorithm="demo.noop", queue="prep")
    first, _ = services.submit(owner=alice, spec=spec)
    second, _ = services.submit(owner=alice, spec=spec)  # waits: the window is 1
    assert Task.objects.get(id=second.id).status == Status.PENDING

    assert execution.claim(task_id=first.id, worker="w") is not None
    execution.finish(task_id=first.id, outcome=Outcome(status=Status.SUCCEEDED, result={"n": 1}))

    done, next_up = Task.objects.get(id=first.id), Task.objects.get(id=second.id)
    assert done.status == Status.SUCCEEDED and done.result == {"n": 1}
    assert list(done.events.order_by("seq").values_list("event", flat=True)) == [
        "task.created", "task.queued", "task.started", "task.succeeded"]
    assert next_up.status == Status.QUEUED  # the finish dispatched the next one
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s", ["%UPDATE jobs_task%"])
        assert (cur.fetchone()[0] > 0) is prepared


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "client-bound"])
def test_relaxed_reads_turn_off_the_wal_wait_only_for_their_own_outermost_transaction(settings, prepared):
    settings.DB_PREPARED_STATEMENTS = prepared
    setting = ["SELECT current_setting('synchronous_commit')"]
    with transaction.atomic():
        assert transitions.read_together(setting, {}, relax=True) == [[("off",)]]
    with transaction.atomic():
        assert transitions.read_together(setting, {}) == [[("on",)]]
        with transaction.atomic():  # inside a caller's transaction: the caller's commit stays synchronous
            assert transitions.read_together(setting, {}, relax=True) == [[("on",)]]
    with transaction.atomic():  # several statements, each one's rows
        assert transitions.read_together(["SELECT 1", "SELECT %(a)s UNION ALL SELECT %(b)s"], {"a": 2, "b": 3}) == [
            [(1,)], [(2,), (3,)]]


def _backend_of_the_old_stripe() -> Any:
    """A second PostgreSQL session whose ``pg_backend_pid() % 8`` is this test connection's: until the
    counters had a stripe per backend (queueing/counters.py), the two shared their counter rows, as two
    worker connections' could."""
    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        (mine,) = cur.fetchone()
    for _ in range(64):
        other = another_session()
        if other.info.backend_pid % 8 == mine % 8:
            return other
        other.close()
    raise AssertionError("no backend of the same old stripe in 64 connections")


def test_two_backends_changing_statuses_in_opposite_orders_never_wait_on_each_others_counters(alice):
    """A worker's finish of a success and a failure while another backend, in an open transaction, has
    moved other tasks of the queue to the opposite states: with counter rows shared by stripe (pid % 8)
    the finish waited for that transaction, and with the other backend's next statement the two
    deadlocked. Each backend counts on rows of its own now: the finish goes through at once."""
    mine_ok, mine_failed, theirs_failed, theirs_ok = _queued(alice, 4)
    assert len(execution.claim_many(task_ids=[mine_ok.id, mine_failed.id, theirs_ok.id], worker="w")) == 3
    with _in_a_transaction_beside(_backend_of_the_old_stripe()) as other:
        other.execute("UPDATE jobs_task SET status = 'FAILED', finished_at = now() WHERE id = %s", [theirs_failed.id])
        done = execution.finish_many(outcomes=[
            (mine_ok.id, Outcome(status=Status.SUCCEEDED, result={"ok": True})),
            (mine_failed.id, Outcome(status=Status.FAILED, error="boom", retryable=False)),
        ])
        other.execute("UPDATE jobs_task SET status = 'SUCCEEDED', finished_at = now() WHERE id = %s", [theirs_ok.id])
        other.execute("COMMIT")
    assert [t.status for t in done] == [Status.SUCCEEDED, Status.FAILED]
    from queueing.selectors import queue_state

    assert queue_state("unconsumed").counts == {"PENDING": 0, "QUEUED": 0, "RUNNING": 0}


def test_a_batch_finish_chosen_as_a_deadlock_victim_runs_again_and_records_every_outcome(alice, monkeypatch):
    """A worker's finish of a success and a failure (two statements), and another backend touching the
    same two task rows in the opposite order (the watchdog's heartbeat could, before it stepped around
    held rows: the test above): the row locks form a cycle and PostgreSQL ends one transaction. The worker's finish
    runs its transaction again instead of leaving its tasks RUNNING for the reaper to hand back and run
    a second time."""
    mine_ok, mine_failed = _queued(alice, 2)
    assert len(execution.claim_many(task_ids=[mine_ok.id, mine_failed.id], worker="w")) == 2
    other = another_session()
    other.execute("SET deadlock_timeout = '60s'")  # so that the worker's side is the one PostgreSQL ends
    other_moved = threading.Event()
    other_done: list[Any] = []

    def the_other_backend() -> None:
        try:
            with other.transaction():
                other.execute("UPDATE jobs_task SET heartbeat_at = now() WHERE id = %s", [mine_failed.id])
                other_moved.set()
                # held by the finish's first statement (the successes) below
                other.execute("UPDATE jobs_task SET heartbeat_at = now() WHERE id = %s", [mine_ok.id])
            other_done.append("committed")
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            other_done.append(exc)

    thread = threading.Thread(target=the_other_backend)
    original = execution._finish_other
    attempts: list[int] = []

    def finish_other_once_the_other_backend_waits(*args: Any) -> Any:
        attempts.append(1)
        if len(attempts) == 1:  # the successes' statement holds mine_ok's row now
            thread.start()
            assert other_moved.wait(10)
            wait_until(lambda: waits_on_a_lock(other.info.backend_pid), timeout=4, interval=0.02,
                       message="the other backend to wait on a task row")
        return original(*args)  # wants mine_failed's row, which the other backend holds

    monkeypatch.setattr(execution, "_finish_other", finish_other_once_the_other_backend_waits)
    try:
        done = execution.finish_many(outcomes=[
            (mine_ok.id, Outcome(status=Status.SUCCEEDED, result={"ok": True})),
            (mine_failed.id, Outcome(status=Status.FAILED, error="boom", retryable=False)),
        ])
    finally:
        if thread.is_alive():
            thread.join(30)
        other.close()

    assert other_done == ["committed"]
    assert len(attempts) == 2  # ended once as the deadlock's victim, then run again
    assert [t.status for t in done] == [Status.SUCCEEDED, Status.FAILED]
    rows = {t.id: t for t in Task.objects.filter(id__in=[mine_ok.id, mine_failed.id])}
    assert rows[mine_ok.id].status == Status.SUCCEEDED and rows[mine_ok.id].result == {"ok": True}
    assert rows[mine_failed.id].status == Status.FAILED and rows[mine_failed.id].error == "boom"
    for task, final in ((mine_ok, "task.succeeded"), (mine_failed, "task.failed")):
        assert rows[task.id].events.filter(event=final).count() == 1


def test_a_heartbeat_steps_around_a_row_another_transaction_holds_and_still_answers_for_it(alice):
    """The watchdog's heartbeat never waits for a task row another session holds (which could close a
    lock cycle with a batch's finish): it beats the other rows, leaves that one for next time, and still
    reports it RUNNING with its committed cancel flag, so the watchdog does not take it for gone."""
    free, held = _queued(alice, 2)
    # No stale heartbeat is ever committed here: the session worker's beat reaps stale RUNNING tasks
    # every second, and would take these two away from the heartbeat under test.
    with _in_a_transaction_beside(another_session()) as other:  # connected before the claim: it takes a while
        claimed = {t.id: t for t in execution.claim_many(task_ids=[free.id, held.id], worker="w")}
        assert len(claimed) == 2
        Task.objects.filter(id=held.id).update(cancel_requested=True)
        other.execute("UPDATE jobs_task SET progress_message = 'busy' WHERE id = %s", [held.id])
        with transaction.atomic():  # free's stale heartbeat is seen only by the heartbeat below
            Task.objects.filter(id=free.id).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
            flags = execution.heartbeat(claims={str(t.id): t.started_at for t in claimed.values()})
    assert flags == {str(free.id): False, str(held.id): True}
    beaten = dict(Task.objects.filter(id__in=[free.id, held.id]).values_list("id", "heartbeat_at"))
    assert beaten[free.id] > timezone.now() - timedelta(minutes=1)  # beaten
    assert beaten[held.id] == claimed[held.id].heartbeat_at  # left for the next beat: still the claim's


@contextlib.contextmanager
def _in_a_transaction_beside(other: Any) -> Iterator[Any]:
    """``other`` (a second session) in an open transaction, rolled back at the end unless the test
    commits it; meanwhile this connection waits at most 5 s for a lock, so that a wait fails the test
    instead of hanging it."""
    try:
        other.execute("BEGIN")
        with connection.cursor() as cur:
            cur.execute("SET lock_timeout = '5s'")
        yield other
    finally:
        other.close()
        with connection.cursor() as cur:
            cur.execute("RESET lock_timeout")


def waits_on_a_lock(pid: int) -> bool:
    with connection.cursor() as cur:
        cur.execute("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cur.fetchone()
    return bool(row and row[0])
