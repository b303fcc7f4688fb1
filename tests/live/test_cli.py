"""The ``conveyor`` command line against a real daphne server and a real worker, as a user runs it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, ROOT, unconsumed_queue

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def cli(live_web: str, tmp_path: Path):
    """``cli("ls")`` runs ``python -m conveyor_cli --url <server> ls`` with its own config dir."""
    env = dict(os.environ, CONVEYOR_CONFIG_DIR=str(tmp_path / "config"), CONVEYOR_URL=live_web)

    def run(*args: str, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "conveyor_cli", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout, input=input)

    return run


def login(cli, user) -> None:
    done = cli("login", "-u", user.username, "-p", PASSWORD)
    assert done.returncode == 0, done.stderr
    assert f"as {user.username}" in done.stdout


def test_submit_wait_draws_progress_to_100_and_exits_0(live_worker, cli, alice, tmp_path):
    login(cli, alice)
    config = tmp_path / "config" / "config.json"
    assert oct(config.stat().st_mode & 0o777) == "0o600"

    done = cli("submit", "demo.hello", "seconds=1", "steps=5", "--priority", "high", "--wait")

    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    task_id = lines[0]
    assert len(task_id) == 36
    bars = [line for line in lines if line.startswith("[")]
    percents = [float(line.split("]")[1].split("%")[0]) for line in bars]
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert any("step 5/5" in line for line in bars)
    assert "  | hello world" in lines
    assert lines[-1] == "SUCCEEDED"


def test_watch_exits_3_for_a_cancelled_task_and_ls_logs_result_show_the_rest(live_worker, cli, alice, tmp_path):
    login(cli, alice)
    sleeper = cli("submit", "demo.sleep", "seconds=30").stdout.strip()
    hello = cli("submit", "demo.hello", "seconds=0.2", "steps=2").stdout.strip()

    cancelled = cli("cancel", sleeper)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.split()[:2] in ([sleeper, "CANCELLED"], [sleeper, "RUNNING"])
    assert cli("watch", sleeper).returncode == 3
    assert cli("watch", hello).returncode == 0

    listing = cli("ls").stdout
    assert sleeper in listing and hello in listing and "CANCELLED" in listing and "SUCCEEDED" in listing
    assert json.loads(cli("--json", "ls", "--status", "CANCELLED").stdout)[0]["id"] == sleeper

    logs = cli("logs", hello, "--lines-only")
    assert logs.stdout.splitlines() == ["hello world"]

    out = tmp_path / "result.json"
    assert cli("result", hello, "-o", str(out)).returncode == 0
    assert json.loads(out.read_text()) == {"greeting": "hello world", "completed_steps": 2}
    refused = cli("result", sleeper)
    assert refused.returncode == 1 and "CANCELLED" in refused.stderr


def test_cancel_takes_many_ids_or_a_label_and_prints_the_summary(live_web, cli, alice, bob):
    from jobs import services
    from jobs.models import Status, Task

    login(cli, alice)
    queue = unconsumed_queue()
    first, second, third = (cli("submit", "demo.noop", "--queue", queue, "--label", "sweep-42").stdout.strip()
                            for _ in range(3))
    bobs, _ = services.submit(owner=bob, spec=services.build_spec(algorithm="demo.noop", queue=queue,
                                                                  labels=["sweep-42"]))

    by_ids = cli("cancel", first, second)
    assert by_ids.returncode == 0, by_ids.stderr
    assert by_ids.stdout.strip() == "cancelled 2, cancelling 0 (running: their workers stop them), already final 0"

    by_label = cli("--json", "cancel", "--label", "sweep-42", "--queue", queue)
    assert by_label.returncode == 0, by_label.stderr
    assert json.loads(by_label.stdout) == {"cancelled": 1, "cancelling": 0, "already_final": 2, "not_found": []}
    assert set(Task.objects.filter(id__in=[first, second, third]).values_list("status", flat=True)) == {Status.CANCELLED}
    assert Task.objects.get(id=bobs.id).status != Status.CANCELLED

    foreign = cli("cancel", third, str(bobs.id))
    assert foreign.returncode == 1 and f"not found: {bobs.id}" in foreign.stderr
    assert "already final 1" in foreign.stdout

    one = cli("cancel", third)  # one id: that task's own cancel, refused once it has finished
    assert one.returncode == 1 and "finished" in one.stderr
    assert cli("cancel").returncode == 2
    assert cli("cancel", first, "--label", "sweep-42").returncode == 2


def test_retry_takes_one_id_many_ids_or_a_label_and_status_and_prints_the_new_ids(live_web, cli, alice, bob):
    from jobs import services
    from jobs.models import Status, Task

    login(cli, alice)
    queue = unconsumed_queue()
    first, second, third = (cli("submit", "demo.noop", "--queue", queue, "--label", "sweep-42").stdout.strip()
                            for _ in range(3))
    waiting = cli("submit", "demo.noop", "--queue", queue, "--label", "sweep-42").stdout.strip()
    assert cli("cancel", first, second, third).returncode == 0
    bobs, _ = services.submit(owner=bob, spec=services.build_spec(algorithm="demo.noop", queue=queue))
    services.cancel(task_id=bobs.id)

    one = cli("retry", first)  # one id: that task's own retry, the new task's id printed
    assert one.returncode == 0, one.stderr
    assert Task.objects.get(id=one.stdout.strip()).retry_of_id == Task.objects.get(id=first).id

    by_ids = cli("retry", second, waiting)
    assert by_ids.returncode == 0, by_ids.stderr
    summary, *new_ids = by_ids.stdout.splitlines()
    assert summary == "retried 1, already retried 0 (not again), not finished 1 (left alone)"
    assert [str(Task.objects.get(id=i).retry_of_id) for i in new_ids] == [second]

    by_label = cli("--json", "retry", "--label", "sweep-42", "--status", "CANCELLED", "--queue", queue)
    assert by_label.returncode == 0, by_label.stderr
    answer = json.loads(by_label.stdout)
    # first and second have their retries already: only third is retried now, and all three answered
    assert (answer["retried"], answer["already_retried"]) == (1, 2) and set(answer["retries"]) == {first, second, third}
    assert Task.objects.get(id=waiting).status != Status.CANCELLED

    foreign = cli("retry", third, str(bobs.id))
    assert foreign.returncode == 1 and f"not found: {bobs.id}" in foreign.stderr
    assert "retried 0, already retried 1" in foreign.stdout  # the same again makes nothing twice
    assert cli("retry", waiting).returncode == 1  # one task not finished: its retry is refused
    no_status = cli("retry", "--label", "sweep-42")
    assert no_status.returncode == 1 and "filters.status" in no_status.stderr
    assert cli("retry").returncode == 2
    assert cli("retry", first, "--label", "sweep-42").returncode == 2


def test_logs_prints_a_history_longer_than_the_servers_page(live_web, cli, alice):
    from jobs import services
    from jobs.models import Status, Task, TaskEvent

    queue = unconsumed_queue()
    task, _ = services.submit(owner=alice, spec=services.build_spec(algorithm="demo.noop", queue=queue))
    first = Task.objects.get(id=task.id).last_seq
    TaskEvent.objects.bulk_create(TaskEvent(task_id=task.id, seq=seq, event="task.log", status=Status.RUNNING,
                                            data={"line": f"line {seq}"}) for seq in range(first + 1, first + 12_001))
    Task.objects.filter(id=task.id).update(last_seq=first + 12_000)
    login(cli, alice)

    logs = cli("logs", str(task.id), "--lines-only")

    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.splitlines() == [f"line {seq}" for seq in range(first + 1, first + 12_001)]


def test_queues_and_workers_answer_or_say_the_server_lacks_them(live_worker, cli, olga):
    login(cli, olga)
    assert cli("submit", "demo.noop", "--wait").returncode == 0  # the default queue exists once used
    for command, expected in (("queues", "default"), ("workers", "WORKER")):
        done = cli(command)
        if done.returncode == 0:
            assert expected in done.stdout
        else:  # a server without the queueing API
            assert "does not offer" in done.stderr, done.stderr


def test_without_login_or_with_a_bad_password_exit_5(live_web, cli, alice):
    assert cli("ls").returncode == 5
    bad = cli("login", "-u", alice.username, "-p", "wrong")
    assert bad.returncode == 5 and "login failed" in bad.stderr
    assert cli("watch", "00000000-0000-0000-0000-000000000000").returncode == 5


def test_watch_of_a_task_that_is_not_yours_exits_1(live_web, cli, alice, bob, api):
    task = api(alice).post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json").json()
    login(cli, bob)
    done = cli("watch", task["id"])
    assert done.returncode == 1 and "not found" in done.stderr


def test_watch_survives_a_server_restart_and_misses_nothing(live_worker, alice, tmp_path):
    # given: a server of our own, so that this test may kill it
    from tests.conftest import free_port, start_daphne, stop_daphne, subprocess_env

    env = subprocess_env()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_daphne(port, env, name="daphne-restart")
    cli_env = dict(os.environ, CONVEYOR_CONFIG_DIR=str(tmp_path / "config"), CONVEYOR_URL=url)
    run = lambda *a: subprocess.run([sys.executable, "-m", "conveyor_cli", *a], cwd=ROOT, env=cli_env,  # noqa: E731
                                    capture_output=True, text=True, timeout=60)
    try:
        assert run("login", "-u", alice.username, "-p", PASSWORD).returncode == 0
        task_id = run("submit", "demo.hello", "seconds=4", "steps=8").stdout.strip()
        watcher = subprocess.Popen([sys.executable, "-m", "conveyor_cli", "watch", task_id], cwd=ROOT, env=cli_env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # when: the server goes away mid-run and comes back on the same port
        first = ""
        while "RUNNING" not in first:
            first += watcher.stdout.readline()
        stop_daphne(server, signal.SIGKILL)
        time.sleep(1.0)  # the task goes on meanwhile; its events are only in the database
        server = start_daphne(port, env, name="daphne-restart")
        out = watcher.stdout.read()  # the same buffered reader: nothing read ahead is lost
        err = watcher.stderr.read()
        watcher.wait(timeout=60)
    finally:
        stop_daphne(server)

    # then: the bar went on from where it was, to 100 %, and the exit status says SUCCEEDED
    assert watcher.returncode == 0, out + err
    bars = [line for line in (first + out).splitlines() if line.startswith("[")]
    percents = [float(line.split("]")[1].split("%")[0]) for line in bars]
    assert percents == sorted(percents) and percents[-1] == 100.0
    steps = [line.rsplit("step ", 1)[1] for line in bars if "step " in line and "RUNNING" in line]
    assert steps == [f"{n}/8" for n in range(1, 9)], first + out + err  # every step once, none lost
    assert out.splitlines()[-1] == "SUCCEEDED"
    assert "reconnecting" in err  # it did lose the server on the way


def test_submit_wait_piped_into_head_exits_quietly_once_head_is_done(live_worker, cli, alice, live_web, tmp_path):
    # `conveyor submit demo.hello … --wait | head -1`: head takes the id and leaves
    login(cli, alice)
    env = dict(os.environ, CONVEYOR_CONFIG_DIR=str(tmp_path / "config"), CONVEYOR_URL=live_web)
    waiter = subprocess.Popen([sys.executable, "-m", "conveyor_cli", "submit", "demo.hello", "seconds=1", "steps=3",
                               "--wait"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    task_id = waiter.stdout.readline().strip()
    waiter.stdout.close()
    err = waiter.stderr.read()
    assert waiter.wait(timeout=60) == 141, err  # 128 + SIGPIPE, as the shell reports for `yes | head -1`
    assert len(task_id) == 36 and err == ""  # no traceback, no "reconnecting" over and over


def test_ls_filters_by_label_and_by_several_statuses(live_web, cli, alice):
    from jobs.models import Task

    login(cli, alice)
    queue = unconsumed_queue()
    first, second = (cli("submit", "demo.noop", "--queue", queue, "--label", "sweep-2").stdout.strip() for _ in range(2))
    other = cli("submit", "demo.noop", "--queue", queue, "--label", "sweep-1").stdout.strip()
    assert cli("cancel", first).returncode == 0
    waiting = Task.objects.get(id=second).status  # PENDING or QUEUED: what a task no worker takes is

    by_label = cli("ls", "--label", "sweep-2")
    assert by_label.returncode == 0, by_label.stderr
    assert first in by_label.stdout and second in by_label.stdout and other not in by_label.stdout

    def listed(*args: str) -> set[str]:
        done = cli("--json", "ls", *args)
        assert done.returncode == 0, done.stderr
        return {t["id"] for t in json.loads(done.stdout)}

    assert listed("--label", "sweep-2", "--status", "CANCELLED") == {first}
    assert listed("--status", "CANCELLED", "--status", waiting) == {first, second, other}
    assert listed("--label", "sweep-1", "--status", "CANCELLED", "--status", waiting, "--queue", queue) == {other}
    assert listed("--label", "sweep-2", "--status", "SUCCEEDED") == set()
    refused = cli("ls", "--status", "SOMETIMES")
    assert refused.returncode == 1 and "status" in refused.stderr


def write_lines(path: Path, items: list[object]) -> Path:
    path.write_text("".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in items))
    return path


def test_submit_from_file_makes_every_line_a_task_in_chunks_and_a_resend_makes_nothing_twice(live_web, cli, alice,
                                                                                               tmp_path):
    from jobs.models import Task

    login(cli, alice)
    queue = unconsumed_queue()
    lines = [{"algorithm": "demo.hello", "params": {"seconds": n, "steps": 1}} for n in range(5)]
    lines[3] = {"algorithm": "demo.noop", "priority": "high", "queue": queue, "labels": ["odd-one"]}
    sweep = write_lines(tmp_path / "sweep.jsonl", [*lines[:2], "", *lines[2:]])  # a blank line is skipped

    done = cli("submit", "--from-file", str(sweep), "--batch-size", "2", "--queue", queue, "--label", "sweep-2",
               "--priority", "low", "--idempotency-key", "sweep-2")

    assert done.returncode == 0, done.stderr
    ids = done.stdout.split()
    assert len(ids) == 5 and len(set(ids)) == 5
    tasks = [Task.objects.get(id=i) for i in ids]
    assert [t.algorithm for t in tasks] == ["demo.hello"] * 3 + ["demo.noop", "demo.hello"]
    assert [t.params.get("seconds") for t in tasks] == [0, 1, 2, None, 4]
    assert [t.queue_id for t in tasks] == [queue] * 5
    assert [t.labels for t in tasks] == [["sweep-2"]] * 3 + [["odd-one", "sweep-2"]] + [["sweep-2"]]
    assert tasks[3].priority > tasks[0].priority  # a line's own priority wins over --priority
    assert sorted({t.idempotency_key.rsplit("#", 1)[0] for t in tasks}) == [
        "sweep-2#chunk-1", "sweep-2#chunk-2", "sweep-2#chunk-3"]

    # the same command again (after a timeout, say): the same tasks, none made twice
    again = cli("submit", "--from-file", str(sweep), "--batch-size", "2", "--queue", queue, "--label", "sweep-2",
                "--priority", "low", "--idempotency-key", "sweep-2")
    assert again.returncode == 0, again.stderr
    assert again.stdout.split() == ids and "sent before" in again.stderr
    assert Task.objects.filter(owner=alice).count() == 5
    assert {t["id"] for t in json.loads(cli("--json", "ls", "--label", "sweep-2").stdout)} == set(ids)

    # stdin, and --json: the API's answer, {"tasks": [...]}
    piped = cli("--json", "submit", "--from-file", "-", "--queue", queue,
                input="".join(json.dumps({"algorithm": "demo.noop"}) + "\n" for _ in range(3)))
    assert piped.returncode == 0, piped.stderr
    made = json.loads(piped.stdout)["tasks"]
    assert len(made) == 3 and all(t["algorithm"] == "demo.noop" and t["queue"] == queue for t in made)


def test_submit_from_file_sends_a_chunk_per_thousand_lines(live_web, cli, alice, tmp_path):
    from jobs.models import Task

    login(cli, alice)
    queue = unconsumed_queue()
    sweep = write_lines(tmp_path / "big.jsonl", [{"algorithm": "demo.noop", "queue": queue}] * 1001)

    done = cli("submit", "--from-file", str(sweep), "--idempotency-key", "big", timeout=120)

    assert done.returncode == 0, done.stderr
    ids = done.stdout.split()
    assert len(set(ids)) == 1001
    keys = set(Task.objects.filter(id__in=ids).values_list("idempotency_key", flat=True))
    assert {k.rsplit("#", 1)[0] for k in keys} == {"big#chunk-1", "big#chunk-2"}
    assert Task.objects.get(id=ids[-1]).idempotency_key == "big#chunk-2#0"


def test_submit_from_file_names_bad_lines_and_sends_nothing(live_web, cli, alice, tmp_path):
    from jobs.models import Task

    login(cli, alice)
    good = {"algorithm": "demo.noop"}
    bad = write_lines(tmp_path / "bad.jsonl", [good, "{not json", good, ["demo.noop"], {"params": {}},
                                               {"algorithm": "demo.noop", "prams": {"n": 1}},
                                               '{"algorithm": "demo.noop", "params": {"x": NaN}}'])

    done = cli("submit", "--from-file", str(bad))

    assert done.returncode == 2 and done.stdout == ""
    for number, what in ((2, "not JSON"), (4, "not a JSON object"), (5, "algorithm"), (6, "prams"), (7, "NaN")):
        assert f"line {number}: " in done.stderr and what in done.stderr, done.stderr
    assert "line 1:" not in done.stderr and "line 3:" not in done.stderr
    assert "nothing was sent" in done.stderr
    assert not Task.objects.filter(owner=alice).exists()

    empty = cli("submit", "--from-file", str(write_lines(tmp_path / "empty.jsonl", [""])))
    assert empty.returncode == 2 and "no tasks" in empty.stderr
    missing = cli("submit", "--from-file", str(tmp_path / "nowhere.jsonl"))
    assert missing.returncode == 2 and "nowhere.jsonl" in missing.stderr
    one = str(write_lines(tmp_path / "one.jsonl", [good]))
    for usage in (("submit",), ("submit", "demo.noop", "--from-file", one), ("submit", "--from-file", one, "--wait"),
                  ("submit", "demo.noop", "--batch-size", "2"),
                  ("submit", "--from-file", one, "--idempotency-key", "k" * 195)):
        refused = cli(*usage)
        assert refused.returncode == 2, (usage, refused.stderr)
    assert not Task.objects.filter(owner=alice).exists()


def test_submit_from_file_refused_by_the_server_names_the_line_and_a_fixed_resend_completes_it(live_web, cli, alice,
                                                                                                tmp_path):
    from jobs.models import Task

    login(cli, alice)
    queue = unconsumed_queue()
    lines = [{"algorithm": "demo.noop", "queue": queue, "labels": [f"n{n}"]} for n in range(4)]
    lines[2] = {"algorithm": "demo.hello", "queue": queue, "params": {"seconds": "abc"}}
    sweep = write_lines(tmp_path / "sweep.jsonl", lines)
    command = ("submit", "--from-file", str(sweep), "--batch-size", "2", "--idempotency-key", "fix-me")

    failed = cli(*command)

    # the first chunk was made and its ids printed; the second was refused, naming the file's line 3
    assert failed.returncode == 1
    made = failed.stdout.split()
    assert len(made) == 2 and Task.objects.filter(owner=alice).count() == 2
    assert "line 3: params.seconds" in failed.stderr, failed.stderr
    assert "2 tasks" in failed.stderr and "fix-me" in failed.stderr

    lines[2] = {"algorithm": "demo.hello", "queue": queue, "params": {"seconds": 0}}
    write_lines(sweep, lines)
    fixed = cli(*command)
    assert fixed.returncode == 0, fixed.stderr
    ids = fixed.stdout.split()
    assert ids[:2] == made and len(set(ids)) == 4
    assert Task.objects.filter(owner=alice).count() == 4


def test_logs_prints_the_reason_of_a_state_change(live_web, cli, alice):
    from jobs import services
    from jobs.models import Status, Task, TaskEvent

    queue = unconsumed_queue()
    task, _ = services.submit(owner=alice, spec=services.build_spec(algorithm="demo.noop", queue=queue))
    first = Task.objects.get(id=task.id).last_seq
    events = [("task.requeued", Status.PENDING, {"reason": "queue paused"}),
              ("task.log", Status.RUNNING, {"line": "working"}),
              ("task.retrying", Status.PENDING, {"error": "no progress for 3s (progress_timeout)", "attempt": 1}),
              ("task.cancelled", Status.CANCELLED,
               {"error": "cancelled; the algorithm did not stop within 5s and was terminated",
                "reason": "cancelled by user"})]
    TaskEvent.objects.bulk_create(TaskEvent(task_id=task.id, seq=first + n, event=event, status=status, data=data)
                                  for n, (event, status, data) in enumerate(events, 1))
    Task.objects.filter(id=task.id).update(last_seq=first + len(events))
    login(cli, alice)

    logs = cli("logs", str(task.id), "--after-seq", str(first))

    assert logs.returncode == 0, logs.stderr
    shown = [line.split(" ", 2)[2] if line.startswith("# ") else line for line in logs.stdout.splitlines()]
    assert shown == ["task.requeued PENDING: queue paused",
                     "working",
                     "task.retrying PENDING: no progress for 3s (progress_timeout)",
                     "task.cancelled CANCELLED: cancelled; the algorithm did not stop within 5s and was terminated "
                     "(cancelled by user)"]
    assert cli("logs", str(task.id), "--after-seq", str(first), "--lines-only").stdout.splitlines() == ["working"]
