"""``ctx.log`` as an algorithm author and a watcher see it: every line kept, in the order of the calls
and of the progress reports between them, each its own event with the next ``seq``; a burst of lines is
written in a few transactions instead of one commit each (and the algorithm does not wait for them),
and a line that waits behind a burst reaches the task's log while the run goes on, not at its end."""
from __future__ import annotations

import time

import pytest

from jobs.models import TaskEvent
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
