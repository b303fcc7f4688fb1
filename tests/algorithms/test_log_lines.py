"""``ctx.log`` as an algorithm author and a watcher see it: every line kept, in the order of the calls
and of the progress reports between them, each its own event with the next ``seq``; a burst of lines is
written in a few transactions instead of one commit each (and the algorithm does not wait for them),
and a line that waits behind a burst reaches the task's log while the run goes on, not at its end."""
from __future__ import annotations

import threading
import time

import pytest

from jobs.models import Task, TaskEvent
from tests.jobs.test_nul_output import run_once

pytestmark = pytest.mark.django_db(transaction=True)


def logged(task) -> list[tuple[str, int, dict]]:
    return list(TaskEvent.objects.filter(task=task, event__in=["task.log", "task.progress"])
                .order_by("seq").values_list("event", "seq", "data"))


def test_lines_and_progress_keep_the_order_of_the_calls_with_consecutive_seqs(alice, monkeypatch):
    def chatty(ctx, params):
        for i in range(300):
            ctx.log(f"line {i}")
            if i in (99, 199):
                ctx.progress(i // 3, stage=f"stage {i}")  # a stage change always goes through
        ctx.log_lines(["last a", "last b"])

    task = run_once(alice, monkeypatch, chatty, max_retries=0)

    events = logged(task)
    lines = [data["line"] for event, _, data in events if event == "task.log"]
    assert lines == [f"line {i}" for i in range(300)] + ["last a", "last b"]
    progress_at = [n for n, (event, _, _) in enumerate(events) if event == "task.progress"]
    assert [events[n - 1][2]["line"] for n in progress_at] == ["line 99", "line 199"]
    every_seq = list(TaskEvent.objects.filter(task=task).order_by("seq").values_list("seq", flat=True))
    assert every_seq == list(range(1, len(every_seq) + 1))


def test_a_burst_of_lines_is_written_in_a_few_transactions(alice, monkeypatch):
    def burst(ctx, params):
        for i in range(1000):
            ctx.log(f"step {i}")

    task = run_once(alice, monkeypatch, burst, max_retries=0)

    stamps = TaskEvent.objects.filter(task=task, event="task.log").values_list("created_at", flat=True)
    assert len(stamps) == 1000
    assert len(set(stamps)) <= 5  # one timestamp per write: the first line at once, the rest together


def test_a_line_waiting_behind_a_burst_is_written_while_the_run_goes_on(alice, monkeypatch):
    """The watchdog writes what waits at its next heartbeat (every ``TASK_HEARTBEAT_SECONDS``): the
    algorithm, still running, finds its last line in the task's log."""
    seen = {}

    def then_quiet(ctx, params):
        ctx.log("first")
        ctx.log("second")  # within the interval of the first: waits
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if TaskEvent.objects.filter(task_id=ctx.task_id, event="task.log", data__line="second").exists():
                seen["while_running"] = True
                return
            time.sleep(0.05)

    task = run_once(alice, monkeypatch, then_quiet, max_retries=0)

    assert seen.get("while_running"), "the waiting line was written only when the run ended"
    assert [data["line"] for _, _, data in logged(task)] == ["first", "second"]


def test_lines_logged_before_a_failure_come_before_its_traceback(alice, monkeypatch):
    def fails(ctx, params):
        for i in range(50):
            ctx.log(f"line {i}")
        raise RuntimeError("boom")

    task = run_once(alice, monkeypatch, fails, max_retries=0)

    lines = [data["line"] for _, _, data in logged(task)]
    assert lines[:50] == [f"line {i}" for i in range(50)]
    assert len(lines) == 51 and "RuntimeError: boom" in lines[50]


# --- what a review of the coalescing found (each failed before its fix) ------------------------------

def lines_of(task) -> list[str]:
    return [data["line"] for event, _, data in logged(task) if event == "task.log"]


def test_a_line_the_database_cannot_store_as_is_neither_fails_the_run_nor_holds_back_later_lines(alice, monkeypatch):
    # A lone surrogate (os.fsdecode of a file name that is not UTF-8): it was kept waiting and sent again with
    # every later line, each write refused, and the run that succeeded ended FAILED with its lines lost.
    def fn(ctx, params):
        ctx.log("first")
        ctx.log("file \udcff.txt")
        for i in range(3):
            ctx.log(f"after {i}")
        time.sleep(0.8)  # heartbeats: the watchdog writes what waits
        ctx.progress(50, stage="s")
        ctx.log("late line")
        return {"ok": True}

    task = run_once(alice, monkeypatch, fn, max_retries=0)

    assert Task.objects.get(id=task.id).status == "SUCCEEDED"
    assert lines_of(task) == ["first", "file \\xff.txt", "after 0", "after 1", "after 2", "late line"]


def test_lines_committed_just_before_a_time_limit_lands_are_written_once(alice, monkeypatch):
    from jobs import execution

    real, algorithm = execution.append_log, {}

    def time_limit_lands_after_the_commit(**kw):
        real(**kw)
        if "line x" in kw["lines"] and threading.current_thread() is algorithm.get("thread"):
            time.sleep(1.5)  # the TaskTimeout (limit 1 s) is raised in this thread here, after the commit

    monkeypatch.setattr(execution, "append_log", time_limit_lands_after_the_commit)

    def fn(ctx, params):
        algorithm["thread"] = threading.current_thread()
        for i in range(10):
            ctx.log(f"line {i}")
        time.sleep(0.7)  # the watchdog writes the waiting lines meanwhile: "line x" is a write of its own
        ctx.log("line x")  # after the interval: written now, in this thread
        time.sleep(5)

    task = run_once(alice, monkeypatch, fn, max_retries=0, timeout_seconds=1)

    assert lines_of(task) == [f"line {i}" for i in range(10)] + ["line x"]
    assert Task.objects.get(id=task.id).status == "TIMED_OUT"


def test_the_watchdog_never_waits_for_a_task_row_another_transaction_holds(alice):
    # It heartbeats every task of its process: waiting lines of a task whose row is locked (a cancel, a
    # finish, the algorithm's own transaction) wait for a later write instead of holding up every other task.
    from algorithms.context import RunContext, Scratch
    from jobs import execution, runner
    from tests.conftest import queued_tasks, returns_without_waiting, row_held

    a, b = (execution.claim(task_id=t.id, worker="w") for t in queued_tasks(alice, 2))
    watches = [runner.Watch(a, threading.current_thread()), runner.Watch(b, threading.current_thread())]
    ctx = RunContext(task_id=str(a.id), attempt=1, scratch=Scratch("conveyor-test-"), cancel_event=watches[0].cancel,
                     write_progress=lambda *args: None, min_interval=0, log_interval=60,
                     write_logs=lambda lines, wait, committed: execution.append_log(
                         task_id=a.id, lines=lines, wait=wait, committed=committed, claimed_at=a.started_at))
    ctx.log("one")
    ctx.log("two")  # waits (within the interval of "one")
    watches[0].flush_logs = lambda: ctx.flush_logs(wait=False)
    watchdog = runner.Watchdog()  # not started: one tick by hand

    with row_held(a.id):
        assert returns_without_waiting(lambda: watchdog._tick(watches, [])), "the watchdog's tick waited for the row"
        assert lines_of(a) == ["one"]  # "two" still waits
    ctx.flush_logs()
    assert lines_of(a) == ["one", "two"]


def test_an_algorithm_logging_inside_its_own_transaction_goes_on(alice, monkeypatch):
    # Its progress report locks the task's row until its block commits; the watchdog's write of the waiting
    # lines waited for that row while holding the log lock the algorithm's next line waited for: both stuck.
    from django.db import transaction

    def fn(ctx, params):
        with transaction.atomic():
            ctx.log("a")
            ctx.progress(10, stage="s")
            ctx.log("b")  # waits (within the interval of "a")
            time.sleep(1.0)  # heartbeats
            ctx.log("c")

    done = {}
    running = threading.Thread(target=lambda: done.setdefault("task", run_once(alice, monkeypatch, fn, max_retries=0)),
                               daemon=True)
    running.start()
    running.join(timeout=30)

    assert not running.is_alive(), "the run and the watchdog waited for each other"
    assert lines_of(done["task"]) == ["a", "b", "c"]


def test_lines_logged_before_an_algorithms_transaction_survive_its_rollback(alice, monkeypatch):
    # They waited and were written inside the algorithm's own transaction, and rolled back with it.
    from django.db import transaction

    def fn(ctx, params):
        ctx.log("start")
        ctx.log("loaded 10 rows")  # waits (within the interval of "start")
        try:
            with transaction.atomic():
                ctx.progress(10, stage="import")
                time.sleep(0.4)
                ctx.log("importing")  # logged inside: kept too (a log is not the import's data)
                raise ValueError("bad row")
        except ValueError:
            ctx.log("import rolled back; continuing")

    task = run_once(alice, monkeypatch, fn, max_retries=0)

    assert lines_of(task) == ["start", "loaded 10 rows", "importing", "import rolled back; continuing"]


def test_lines_are_kept_when_the_algorithms_own_transaction_is_broken(alice, monkeypatch):
    # A write inside a transaction an IntegrityError broke (TransactionManagementError) is no refusal of the
    # lines themselves: they were dropped for good.
    from django.db import IntegrityError, transaction

    from algorithms.context import RunContext
    from queueing.models import Queue

    flush = RunContext.flush_logs  # the watchdog writes nothing here: the next write is this thread's
    monkeypatch.setattr(RunContext, "flush_logs", lambda self, wait=True: flush(self) if wait else None)

    def fn(ctx, params):
        ctx.log("start")
        ctx.log("importing")  # waits
        Queue.objects.create(name="dup")
        with transaction.atomic():
            try:
                Queue.objects.create(name="dup")
            except IntegrityError:
                pass  # the transaction is broken from here on (Django refuses any query in it)
            time.sleep(0.4)
            ctx.log("after the duplicate")
        return {"ok": True}

    task = run_once(alice, monkeypatch, fn, max_retries=0)

    assert lines_of(task) == ["start", "importing", "after the duplicate"]


def test_lines_waiting_past_the_cap_drop_the_oldest_and_say_how_many(alice, monkeypatch):
    # Lines logged inside an algorithm's own long transaction wait in memory until it ends: a loop that logs
    # a line per row of a big import held every one of them (no cap).
    from django.db import transaction

    from algorithms import context
    from algorithms.context import RunContext

    monkeypatch.setattr(context, "MAX_WAITING_LOG_LINES", 5)
    flush = RunContext.flush_logs  # the watchdog writes nothing here: the lines wait for this thread
    monkeypatch.setattr(RunContext, "flush_logs", lambda self, wait=True: flush(self) if wait else None)

    def fn(ctx, params):
        with transaction.atomic():
            for i in range(12):
                ctx.log(f"row {i}")
        ctx.log("imported")
        return {"ok": True}

    task = run_once(alice, monkeypatch, fn, max_retries=0)

    assert Task.objects.get(id=task.id).status == "SUCCEEDED"
    lines = lines_of(task)
    assert lines[1:] == ["row 8", "row 9", "row 10", "row 11", "imported"]
    assert lines[0].startswith("[warning] 8 earlier log lines were dropped: more than 5 waited"), lines[0]


def test_lines_past_the_cap_outside_a_transaction_are_written_not_dropped(alice, monkeypatch):
    # The cap was applied before any write: a log_lines() of more lines than it, or a tight loop within one
    # interval, dropped lines while the database was there to take them.
    from algorithms import context
    from algorithms.context import RunContext

    monkeypatch.setattr(context, "MAX_WAITING_LOG_LINES", 5)
    flush = RunContext.flush_logs
    monkeypatch.setattr(RunContext, "flush_logs", lambda self, wait=True: flush(self) if wait else None)

    def fn(ctx, params):
        ctx.log("first")  # written at once: the next lines come within the interval
        ctx.log_lines([f"line {i}" for i in range(12)])
        return {"ok": True}

    task = run_once(alice, monkeypatch, fn, max_retries=0)

    assert lines_of(task) == ["first", *(f"line {i}" for i in range(12))]


def test_lines_whose_write_committed_are_not_written_again_when_an_interrupt_lands_after_it():
    # The time limit (TaskTimeout) or a stop (TaskStopped) raised in the run's thread right after the commit,
    # before the write returns: the lines are stored, so nothing is left waiting to be written again.
    from algorithms.context import RunContext, Scratch
    from jobs.runner import TaskTimeout

    writes: list[list[str]] = []

    def write_logs(lines, wait, committed):
        writes.append(list(lines))
        committed()  # the transaction's on-commit hook ran
        if len(writes) == 1:
            raise TaskTimeout()  # … and the interrupt landed before the write returned

    ctx = RunContext(task_id="t", attempt=1, scratch=Scratch("conveyor-test-"), cancel_event=threading.Event(),
                     write_progress=lambda *args: None, write_logs=write_logs, min_interval=0, log_interval=0)
    with pytest.raises(TaskTimeout):
        ctx.log("stored")
    ctx.log("next")

    assert writes == [["stored"], ["next"]]
