"""What an algorithm, an external program or a remote service says may hold NUL characters, which
PostgreSQL's text and jsonb refuse: it is recorded (NUL shown as U+FFFD) and the task still ends,
instead of a DataError that left it RUNNING for the reaper to run again."""
from __future__ import annotations

import pytest

from algorithms import registry
from jobs import runner, services
from jobs.models import Status, Task
from queueing.models import Queue

pytestmark = pytest.mark.django_db(transaction=True)


def test_nul_in_logs_progress_and_error_is_recorded_and_the_task_ends(alice, api, monkeypatch):
    def says_nul(ctx, params):
        ctx.log("a\x00b")
        ctx.progress(50, stage="st\x00age", message="half\x00way", metrics={"lo\x00ss": ["x\x00"]})
        ctx.flush()
        raise RuntimeError("remote said: boom\x00")

    monkeypatch.setitem(registry._registry, "t.says_nul", registry.Algorithm(name="t.says_nul", fn=says_nul))
    queue = Queue.objects.get_or_create(name="unconsumed")[0].name  # no worker takes it: the test runs it
    task, _ = services.submit(owner=alice, spec=services.build_spec(algorithm="t.says_nul", queue=queue,
                                                                     max_retries=0))
    Task.objects.filter(id=task.id).update(status=Status.QUEUED)
    claimed = services.claim(task_id=task.id, worker="w")

    outcome = runner.run(claimed)
    services.finish(task_id=task.id, outcome=outcome, claimed_at=claimed.started_at)

    body = api(alice).get(f"/api/v1/tasks/{task.id}/").json()
    assert body["status"] == "FAILED" and body["error"] == "RuntimeError: remote said: boom\ufffd"
    assert body["progress"]["stage"] == "st\ufffdage" and body["progress"]["message"] == "half\ufffdway"
    logs = api(alice).get(f"/api/v1/tasks/{task.id}/logs/").json()
    lines = [e["data"]["line"] for e in logs if e["event"] == "task.log"]
    assert "a\ufffdb" in lines and any("boom\ufffd" in line for line in lines)  # and the traceback
