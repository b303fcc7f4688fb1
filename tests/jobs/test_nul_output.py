"""What an algorithm, an external program or a remote service says ends up in its task as it should:
NUL characters, which PostgreSQL's text and jsonb refuse, are recorded (shown as U+FFFD) and the task
still ends, instead of a DataError that left it RUNNING for the reaper to run again; an error that says
running again cannot help (a remote service's answer out of protocol) is not retried."""
from __future__ import annotations

import pytest

from algorithms import registry
from jobs import execution, runner, services
from jobs.models import Status, Task
from tests.conftest import unconsumed_queue

pytestmark = pytest.mark.django_db(transaction=True)


def run_once(owner, monkeypatch, fn, *, max_retries: int, **spec) -> Task:
    """Submit ``fn`` as an algorithm to a queue no worker consumes (``spec``: more of the submit, such as
    ``timeout_seconds``), claim it, run it, record its end."""
    monkeypatch.setitem(registry._registry, "t.fn", registry.Algorithm(name="t.fn", fn=fn))
    queue = unconsumed_queue()
    task, _ = services.submit(owner=owner, spec=services.build_spec(algorithm="t.fn", queue=queue,
                                                                     max_retries=max_retries, **spec))
    Task.objects.filter(id=task.id).update(status=Status.QUEUED)
    claimed = execution.claim(task_id=task.id, worker="w")
    execution.finish(task_id=task.id, outcome=runner.run(claimed), claimed_at=claimed.started_at)
    return task


def test_nul_in_logs_progress_and_error_is_recorded_and_the_task_ends(alice, api, monkeypatch):
    def says_nul(ctx, params):
        ctx.log("a\x00b")
        ctx.progress(50, stage="st\x00age", message="half\x00way", metrics={"lo\x00ss": ["x\x00"]})
        ctx.flush()
        raise RuntimeError("remote said: boom\x00")

    task = run_once(alice, monkeypatch, says_nul, max_retries=0)

    body = api(alice).get(f"/api/v1/tasks/{task.id}/").json()
    assert body["status"] == "FAILED" and body["error"] == "RuntimeError: remote said: boom\ufffd"
    assert body["progress"]["stage"] == "st\ufffdage" and body["progress"]["message"] == "half\ufffdway"
    logs = api(alice).get(f"/api/v1/tasks/{task.id}/logs/").json()
    lines = [e["data"]["line"] for e in logs if e["event"] == "task.log"]
    assert "a\ufffdb" in lines and any("boom\ufffd" in line for line in lines)  # and the traceback


def test_a_remote_answer_out_of_protocol_fails_the_task_without_retries(alice, api, monkeypatch):
    from algorithms.remote.client import Malformed

    def talks_to_an_odd_service(ctx, params):
        raise Malformed("malformed answer from the service: progress.percent is str '50%'")

    task = run_once(alice, monkeypatch, talks_to_an_odd_service, max_retries=3)

    row = Task.objects.get(id=task.id)
    assert row.status == Status.FAILED and "progress.percent" in row.error
    assert not row.events.filter(event="task.retrying").exists()
