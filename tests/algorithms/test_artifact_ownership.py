"""What a task shows as its result and artifacts is its last run's own, complete output: a run taken for
dead, a handed-back run, a cancelled run or a deleted task leaves nothing behind that a user could download;
odd names, content types and results are stored or refused cleanly. Runs go through ``jobs.runner.run`` on
claimed tasks (the reaper, hand-back and a second claim in between), results come out of the REST API."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from algorithms import process, registry
from algorithms.artifacts import ArtifactStore, TaskLost
from algorithms.context import RunContext, Scratch
from algorithms.models import Artifact, StoredFile
from jobs import execution, runner, services
from jobs.models import Status, Task
from jobs.execution import Outcome
from queueing import reconciler
from tests.algorithms.helpers import body
from tests.conftest import PASSWORD, ROOT, unconsumed_queue

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def algorithm(monkeypatch):
    """``algorithm("t.name", fn)`` registers ``fn`` for this test only."""
    def add(name, fn):
        monkeypatch.setitem(registry._registry, name, registry.Algorithm(name=name, fn=fn))
        return name

    return add


def submitted(owner, name):
    """A task of a queue no worker consumes: the session's worker (if running) never takes it, nor its
    re-dispatch after the reaper or a hand-back; the test runs it."""
    queue = unconsumed_queue()
    task, _ = services.submit(owner=owner, spec=services.build_spec(algorithm=name, params={}, queue=queue))
    return task


def claimed(task_id, worker="w1"):
    """QUEUED then claimed by ``worker``, as a worker's message would."""
    Task.objects.filter(id=task_id).update(status=Status.QUEUED, queued_at=timezone.now())
    task = execution.claim(task_id=task_id, worker=worker)
    assert task is not None
    return task


def run_to_the_end(task):
    return execution.finish(task_id=task.id, outcome=runner.run(task), claimed_at=task.started_at)


def store_of(task):
    return ArtifactStore(task_id=str(task.id), attempt=task.attempts, claimed_at=task.started_at,
                         scratch=Scratch("conveyor-test-"))


def listed(client, task):
    return {a["name"]: body(client.get(a["url"])) for a in client.get(f"/api/v1/tasks/{task.id}/artifacts/").json()}


def test_a_run_taken_for_dead_that_comes_back_stores_nothing_over_the_new_runs_output(alice, api, algorithm):
    def comes_back(ctx, params):
        left_open = ctx.open_artifact("out.txt")
        left_open.write(b"old run")
        # Meanwhile its heartbeat went stale: reaped, started again elsewhere, and that run succeeded.
        Task.objects.filter(id=ctx.task_id).update(heartbeat_at=timezone.now() - timedelta(hours=1))
        reconciler.reap_stale_running()
        again = claimed(ctx.task_id, worker="w2")
        with store_of(again).open("out.txt") as out:
            out.write(b"new run")
        execution.finish(task_id=again.id, outcome=Outcome(status=Status.SUCCEEDED, result={"run": 2}),
                        claimed_at=again.started_at)
        files_before = StoredFile.objects.count()
        with pytest.raises(TaskLost), ctx.open_result() as result:
            result.write(b"old run's result")
        assert StoredFile.objects.count() == files_before  # the file it had saved is deleted again
        return None

    task = submitted(alice, algorithm("t.comes_back", comes_back))
    first = claimed(task.id)

    assert run_to_the_end(first) is None  # its outcome no longer counts

    client = api(alice)
    assert client.get(f"/api/v1/tasks/{task.id}/").json()["status"] == "SUCCEEDED"
    assert client.get(f"/api/v1/tasks/{task.id}/result/").json()["result"] == {"run": 2}
    assert listed(client, task) == {"out.txt": b"new run"}


def test_a_handed_back_task_serves_its_new_runs_result_and_none_of_the_interrupted_runs_files(alice, api, algorithm):
    runs = []

    def interrupted_once(ctx, params):
        runs.append(ctx.attempt)
        if len(runs) == 1:
            with ctx.open_result() as result:
                result.write(b"result of the interrupted run")
            with ctx.open_artifact("partial.bin") as partial:
                partial.write(b"half")
            raise SystemExit("worker shutting down")  # its pool child is killed, the task handed back
        return {"fresh": True}

    task = submitted(alice, algorithm("t.interrupted", interrupted_once))
    with pytest.raises(SystemExit):
        runner.run(claimed(task.id, worker="w1"))
    stored = list(Artifact.objects.filter(task_id=task.id).values_list("storage_name", flat=True))
    assert reconciler.hand_back(worker="w1") == 1

    run_to_the_end(claimed(task.id, worker="w2"))

    client = api(alice)
    assert runs == [1, 1]  # the hand-back did not count as an attempt
    assert client.get(f"/api/v1/tasks/{task.id}/result/").json()["result"] == {"fresh": True}
    assert client.get(f"/api/v1/tasks/{task.id}/").json()["result_meta"]["storage"] == "inline"
    assert listed(client, task) == {}
    assert not StoredFile.objects.filter(name__in=stored).exists()


def test_a_nul_character_in_a_small_result_is_stored_as_its_exact_json(alice, api, algorithm):
    task = submitted(alice, algorithm("t.nul", lambda ctx, params: {"text": "a\x00b", "path": "C:\\u0000"}))

    run_to_the_end(claimed(task.id))

    client = api(alice)
    detail = client.get(f"/api/v1/tasks/{task.id}/").json()
    assert detail["status"] == "SUCCEEDED"
    assert detail["result_meta"]["storage"] == "file"
    assert detail["result_meta"]["content_type"] == "application/json"
    downloaded = body(client.get(f"/api/v1/tasks/{task.id}/result/"))
    assert json.loads(downloaded) == {"text": "a\x00b", "path": "C:\\u0000"}
    assert detail["result_meta"]["sha256"] == hashlib.sha256(downloaded).hexdigest()


def test_an_escaped_backslash_before_u0000_stays_inline(alice, api, algorithm):
    task = submitted(alice, algorithm("t.no_nul", lambda ctx, params: {"path": "C:\\u0000"}))

    run_to_the_end(claimed(task.id))

    assert api(alice).get(f"/api/v1/tasks/{task.id}/result/").json()["result"] == {"path": "C:\\u0000"}


def test_a_cancelled_task_keeps_only_the_artifacts_closed_before(alice, api, algorithm):
    def stops_as_asked(ctx, params):
        with ctx.open_artifact("done.txt") as done:
            done.write(b"complete")
        half = ctx.open_artifact("model.bin")
        half.write(b"HALF")
        Task.objects.filter(id=ctx.task_id).update(cancel_requested=True)
        deadline = time.monotonic() + 10
        while not ctx.cancelled() and time.monotonic() < deadline:
            time.sleep(0.05)
        return {"stopped": ctx.cancelled()}  # returns as asked, model.bin still open

    task = submitted(alice, algorithm("t.cancelled", stops_as_asked))

    run_to_the_end(claimed(task.id))

    client = api(alice)
    assert client.get(f"/api/v1/tasks/{task.id}/").json()["status"] == "CANCELLED"
    assert listed(client, task) == {"done.txt": b"complete"}


def test_the_same_name_written_twice_on_a_storage_that_overwrites_keeps_the_second(alice, api, algorithm, tmp_path):
    overwriting = {"default": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                               "OPTIONS": {"location": str(tmp_path), "allow_overwrite": True}},
                   "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}

    def writes_twice(ctx, params):
        for text in (b"first", b"second"):
            with ctx.open_artifact("log.txt") as log:
                log.write(text)

    with override_settings(STORAGES=overwriting):
        task = submitted(alice, algorithm("t.twice", writes_twice))
        run_to_the_end(claimed(task.id))

        assert listed(api(alice), task) == {"log.txt": b"second"}
        assert [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()] == [b"second"]


def test_deleting_a_task_deletes_its_stored_files(alice, algorithm):
    def writes(ctx, params):
        with ctx.open_artifact("a.bin") as out:
            out.write(b"y" * 3_000_000)
        with ctx.open_result() as result:
            result.write(b"z" * 1000)

    task = submitted(alice, algorithm("t.deleted", writes))
    run_to_the_end(claimed(task.id))
    names = list(Artifact.objects.filter(task_id=task.id).values_list("storage_name", flat=True))
    assert len(names) == 2 and StoredFile.objects.filter(name__in=names).count() == 2

    Task.objects.filter(id=task.id).delete()

    assert not StoredFile.objects.filter(name__in=names).exists()


def test_odd_names_and_content_types_are_refused_or_cleaned_before_anything_is_stored(alice, api, algorithm):
    task = submitted(alice, algorithm("t.odd", lambda ctx, params: None))
    store = store_of(claimed(task.id))
    files_before = StoredFile.objects.count()

    for name, problem in [("n" * 300 + ".txt", "longer than 255"), ("@@@", "invalid artifact name")]:
        with pytest.raises(ValueError, match=problem):
            store.open(name)
    with pytest.raises(ValueError, match="longer than 200"):
        store.open("x.txt", content_type="text/" + "x" * 200)
    assert StoredFile.objects.count() == files_before
    with store.open("x.txt", content_type="text/plain\nX-Injected: 1") as out:
        out.write(b"data")
    with store.open("y.csv", content_type='text/csv; charset="utf-8"') as out:
        out.write(b"1,2\n")

    client = api(alice)
    download = client.get(f"/api/v1/tasks/{task.id}/artifacts/x.txt/")
    assert download.status_code == 200 and body(download) == b"data"
    assert download["Content-Type"] == "application/octet-stream"
    assert client.get(f"/api/v1/tasks/{task.id}/artifacts/y.csv/")["Content-Type"] == 'text/csv; charset="utf-8"'


def test_external_output_files_whose_names_clean_up_alike_are_all_kept(alice, api, algorithm, tmp_path):
    task = submitted(alice, algorithm("t.outputs", lambda ctx, params: None))
    store = store_of(claimed(task.id))
    ctx = RunContext(task_id=str(task.id), attempt=1, scratch=Scratch("conveyor-test-"), cancel_event=None,
                     write_progress=None, write_logs=None, min_interval=0, artifacts=store)
    outputs = {"a b.txt": b"1", "a_b.txt": b"2", "x/y.txt": b"3", "x__y.txt": b"4"}
    for name, data in outputs.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(data)

    process._store_outputs(ctx, tmp_path, None)

    assert listed(api(alice), task) == {"a_b.txt": b"1", "a_b-2.txt": b"2", "x__y.txt": b"3", "x__y-2.txt": b"4"}
    (tmp_path / "@@@").write_bytes(b"5")
    with pytest.raises(ValueError, match="invalid artifact name '@@@'"):
        process._store_outputs(ctx, tmp_path, None)


def test_downloads_answer_odd_ranges_and_non_ascii_names_as_http_says(alice, api, algorithm):
    task = submitted(alice, algorithm("t.ranges", lambda ctx, params: None))
    store = store_of(claimed(task.id))
    with store.open("данные.csv") as out:
        out.write(b"0123456789")
    client = api(alice)
    url = f"/api/v1/tasks/{task.id}/artifacts/данные.csv/"

    huge = client.get(url, HTTP_RANGE="bytes=" + "9" * 4301 + "-")
    assert huge.status_code == 416 and huge["Content-Range"] == "bytes */10"
    assert huge.json()["error"]["code"] == "range_not_satisfiable"
    backwards = client.get(url, HTTP_RANGE="bytes=5-3")
    assert backwards.status_code == 200 and body(backwards) == b"0123456789"
    to_any_end = client.get(url, HTTP_RANGE="bytes=7-" + "9" * 4301)
    assert to_any_end.status_code == 206 and body(to_any_end) == b"789"
    assert to_any_end["Content-Disposition"] == (
        "attachment; filename=\"______.csv\"; filename*=UTF-8''%D0%B4%D0%B0%D0%BD%D0%BD%D1%8B%D0%B5.csv")


@pytest.fixture
def cli(live_web, tmp_path):
    env = dict(os.environ, CONVEYOR_CONFIG_DIR=str(tmp_path / "config"), CONVEYOR_URL=live_web)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "conveyor_cli", *args], cwd=ROOT, env=env,
                              capture_output=True, timeout=60)

    return run


@pytest.mark.e2e
def test_conveyor_result_writes_a_stored_json_result_as_it_is(alice, cli, algorithm, tmp_path):
    stored = {"t.stored_object": b'{"result": "not the wrapper", "values": [1, 2]}', "t.stored_list": b"[1, 2, 3]"}
    ids = {}
    for name, data in stored.items():
        task = claimed(submitted(alice, algorithm(name, lambda ctx, params: None)).id)
        with store_of(task).open("result", content_type="application/json", kind=Artifact.Kind.RESULT) as out:
            out.write(data)
        execution.finish(task_id=task.id, outcome=Outcome(status=Status.SUCCEEDED), claimed_at=task.started_at)
        ids[name] = str(task.id)
    inline = claimed(submitted(alice, algorithm("t.inline", lambda ctx, params: None)).id)
    execution.finish(task_id=inline.id, outcome=Outcome(status=Status.SUCCEEDED, result={"result": 1}),
                    claimed_at=inline.started_at)
    assert cli("login", "-u", alice.username, "-p", PASSWORD).returncode == 0

    for name, data in stored.items():
        out = tmp_path / f"{name}.json"
        done = cli("result", ids[name], "-o", str(out))
        assert done.returncode == 0, done.stderr
        assert out.read_bytes() == data
    assert json.loads(cli("result", str(inline.id)).stdout) == {"result": 1}
