"""External programs through the real worker: the JSON-lines protocol, params on stdin / in a file /
in the argv template, artifacts from $CONVEYOR_OUTPUT_DIR, and no process left behind on cancel,
time limit or exit."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from tests.algorithms.helpers import alive, body, run, submit, wait_final
from tests.conftest import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

NATIVE = Path(__file__).resolve().parents[2] / "native" / "build" / "hello"


def in_session(sid: int) -> list[int]:
    """The processes of session ``sid`` that still run, whatever their process group."""
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            found.append(int(name))
    return found


def logged_pids(client, task_id: str) -> list[int]:
    def find() -> list[int] | None:
        for event in client.get(f"/api/v1/tasks/{task_id}/logs/").json():
            match = re.match(r"pids ([\d ]+)$", event["data"].get("line") or "")
            if match:
                return [int(p) for p in match.group(1).split()]
        return None

    return wait_until(find, timeout=30, message="the program to log its pids")


def log_lines(client, task_id: str) -> list[str]:
    return [e["data"]["line"] for e in client.get(f"/api/v1/tasks/{task_id}/logs/").json() if e["event"] == "task.log"]


def test_native_hello_c_program_reports_progress_result_log_and_artifact(live_worker, alice, api):
    assert NATIVE.exists(), "native/build/hello is missing: `make install` builds it (make test does)"
    client = api(alice)

    task = run(client, "native.hello", {"seconds": 0.6, "steps": 3})

    assert task["progress"]["percent"] == 100.0
    assert client.get(f"/api/v1/tasks/{task['id']}/result/").json()["result"] == {
        "greeting": "hello world", "completed_steps": 3, "language": "C"}
    assert "hello world" in log_lines(client, task["id"])
    artifacts = client.get(f"/api/v1/tasks/{task['id']}/artifacts/").json()
    assert [a["name"] for a in artifacts] == ["hello.txt"]
    assert body(client.get(artifacts[0]["url"])) == b"hello world from C after 3 steps\n"
    algorithm = client.get("/api/v1/algorithms/native.hello/").json()
    assert algorithm["backend"] == "external"
    assert set(algorithm["params_schema"]["properties"]) == {"seconds", "steps"}


def test_python_example_reads_params_from_stdin_and_writes_an_artifact(live_worker, alice, api):
    client = api(alice)

    task = run(client, "external.py_stats", {"values": [2, 4, 4, 4, 5, 5, 7, 9]})

    result = client.get(f"/api/v1/tasks/{task['id']}/result/").json()["result"]
    assert result == {"count": 8, "mean": 5.0, "std": 2.0, "min": 2, "max": 9}
    assert "computed the statistics of 8 values" in log_lines(client, task["id"])
    csv = client.get(f"/api/v1/tasks/{task['id']}/artifacts/").json()[0]
    assert csv["name"] == "values.csv"
    assert csv["sha256"] == hashlib.sha256(body(client.get(csv["url"]))).hexdigest()


def test_shell_example_takes_its_param_from_the_argv_template(live_worker, alice, api):
    client = api(alice)

    task = run(client, "external.sh_countdown", {"count": 3})

    assert client.get(f"/api/v1/tasks/{task['id']}/result/").json()["result"] == {"counted": 3, "params": {"count": 3}}
    assert [a["name"] for a in client.get(f"/api/v1/tasks/{task['id']}/artifacts/").json()] == ["countdown.txt"]


def test_params_arrive_on_stdin_in_a_file_and_as_whole_arguments_never_through_a_shell(live_worker, alice, api):
    client = api(alice)
    word = "$(touch /tmp/pwned); echo {n} `id`"

    task = run(client, "test.echo_params", {"word": word, "n": 2})

    result = client.get(f"/api/v1/tasks/{task['id']}/result/").json()["result"]
    assert result["argv"] == [word, "2"]
    assert result["stdin"] == result["file"] == {"word": word, "n": 2}
    assert "conveyor-" in result["cwd"] and result["cwd"].endswith("/work")
    assert result["secret_key_set"] is False  # the worker's environment is not passed on by default
    assert not Path("/tmp/pwned").exists()


def test_unknown_param_of_an_external_algorithm_is_a_400(live_worker, alice, api):
    response = api(alice).post("/api/v1/tasks/", {"algorithm": "test.echo_params",
                                                  "params": {"word": "x", "argv": ["rm"]}}, format="json")
    assert response.status_code == 400
    assert "params.argv" in response.json()["error"]["fields"]


def test_cancel_kills_a_program_that_ignores_sigterm_and_its_children(live_worker, alice, api):
    client = api(alice)
    task = submit(client, "test.stubborn")
    pids = logged_pids(client, task["id"])
    assert all(alive(pid) for pid in pids)

    client.post(f"/api/v1/tasks/{task['id']}/cancel/")

    done = wait_final(client, task["id"], timeout=30)
    # stopped by the adapter within the runner's grace (not "did not stop within 2s and was terminated"), also
    # where the killed child is left a zombie, with nobody to reap it (a worker as PID 1, with no init)
    assert (done["status"], done["error"]) == ("CANCELLED", "cancelled")
    wait_until(lambda: not any(alive(pid) for pid in pids), timeout=10, message=f"processes {pids} to be gone")


def test_a_program_silent_past_its_declared_progress_timeout_is_stopped_as_stuck(live_worker, alice, api):
    """``progress_timeout`` in the TOML, as a Python algorithm declares it: one progress line, then silence
    (and SIGTERM ignored); its worker stops the program and its child, and fails it (no retries left)."""
    client = api(alice)
    task = submit(client, "test.stalls", max_retries=0)
    pids = logged_pids(client, task["id"])
    assert client.get("/api/v1/algorithms/test.stalls/").json()["progress_timeout"] == 2

    done = wait_final(client, task["id"], timeout=60)

    assert done["status"] == "FAILED" and "no progress for 2s" in done["error"], done
    wait_until(lambda: not any(alive(pid) for pid in pids), timeout=10, message=f"processes {pids} to be gone")


def test_cancel_kills_a_child_that_moved_to_a_process_group_of_its_own(live_worker, alice, api):
    """``timeout`` puts itself in a group of its own; it stays in the program's session, and so is stopped."""
    client = api(alice)
    task = submit(client, "test.own_group")
    session, child = logged_pids(client, task["id"])
    group = lambda: int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[2])  # noqa: E731
    wait_until(lambda: group() != session, message="timeout to be in a group of its own")

    client.post(f"/api/v1/tasks/{task['id']}/cancel/")

    assert wait_final(client, task["id"], timeout=30)["status"] == "CANCELLED"
    wait_until(lambda: not in_session(session), timeout=10, message=f"session {session} to be empty")
    assert not alive(child)


def test_time_limit_terminates_the_program(live_worker, alice, api):
    client = api(alice)
    task = submit(client, "test.polite")
    pids = logged_pids(client, task["id"])

    done = wait_final(client, task["id"], timeout=30)

    assert done["status"] == "TIMED_OUT"
    wait_until(lambda: not any(alive(pid) for pid in pids), timeout=10, message=f"processes {pids} to be gone")
    lines = log_lines(client, task["id"])
    assert "not json on stdout" in lines and "[stderr] a line on stderr" in lines


def test_child_left_behind_by_a_finished_program_is_terminated(live_worker, alice, api):
    client = api(alice)

    task = run(client, "test.leaves_child")

    child = client.get(f"/api/v1/tasks/{task['id']}/result/").json()["result"]["left_behind"]
    wait_until(lambda: not alive(child), timeout=10, message=f"child {child} to be gone")


def test_non_zero_exit_fails_the_task_with_the_exit_code_and_stderr_in_the_log(live_worker, alice, api):
    client = api(alice)
    task = submit(client, "test.fails", max_retries=0)

    done = wait_final(client, task["id"])

    assert done["status"] == "FAILED"
    assert "exited with code 3" in done["error"]
    assert "[stderr] about to fail" in log_lines(client, task["id"])


def test_result_file_becomes_the_stored_result_and_other_files_artifacts(live_worker, alice, api):
    client = api(alice)

    task = run(client, "test.big_result")

    meta = task["result_meta"]
    assert meta["storage"] == "file" and meta["size"] == 600000
    assert meta["content_type"] == "text/plain" and meta["summary"] == {"bytes": 600000}
    assert body(client.get(f"/api/v1/tasks/{task['id']}/result/")) == b"x" * 600000
    assert [a["name"] for a in client.get(f"/api/v1/tasks/{task['id']}/artifacts/").json()] == ["note.txt"]


def test_programs_orphaned_by_a_killed_worker_are_stopped_when_a_worker_starts(live_worker, alice, api):
    client = api(alice)
    task = submit(client, "test.stubborn", max_retries=0)
    pids = logged_pids(client, task["id"])

    live_worker.kill()  # SIGKILL to the worker's process group; the program has a group of its own
    assert all(alive(pid) for pid in pids)

    live_worker.start()

    wait_until(lambda: not any(alive(pid) for pid in pids), timeout=30, message=f"orphans {pids} to be stopped")
    assert wait_final(client, task["id"], timeout=60)["status"] in {"FAILED", "CANCELLED", "TIMED_OUT"}


def test_a_program_whose_worker_is_a_zombie_or_a_recycled_pid_counts_as_orphaned(tmp_path, monkeypatch):
    """The pool child that ran a program dies with its parent and waits, a zombie, for init to reap it;
    or its pid is taken by an unrelated process. Either way its programs are orphans."""
    import json
    import os
    import subprocess
    import sys

    from algorithms import orphans

    monkeypatch.setattr(orphans, "RUNTIME_DIR", tmp_path)
    zombie = os.fork()
    if zombie == 0:
        os._exit(0)
    wait_until(lambda: "Z" in Path(f"/proc/{zombie}/stat").read_text().rsplit(")", 1)[1][:3], message="a zombie")
    programs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True,
                                 env={**os.environ, "CONVEYOR_TASK_ID": f"task-{i}"}) for i in range(3)]
    try:
        (tmp_path / f"{programs[0].pid}.json").write_text(json.dumps({"owner": zombie, "task_id": "task-0"}))
        (tmp_path / f"{programs[1].pid}.json").write_text(json.dumps(  # its pid now belongs to someone else
            {"owner": os.getpid(), "owner_started": orphans._started(os.getpid()) - 1, "task_id": "task-1"}))
        kept = tmp_path / f"{programs[2].pid}.json"  # its worker (this process) is alive: left alone
        kept.write_text(json.dumps({"owner": os.getpid(), "owner_started": orphans._started(os.getpid()),
                                    "task_id": "task-2"}))

        assert sorted(orphans.reap()) == sorted(p.pid for p in programs[:2])
        assert all(p.wait(timeout=5) == -9 for p in programs[:2])
        assert programs[2].poll() is None and list(tmp_path.iterdir()) == [kept]
    finally:
        os.waitpid(zombie, 0)
        for p in programs:
            p.kill()
