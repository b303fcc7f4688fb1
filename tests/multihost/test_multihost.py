"""Multi-host operation, proven with network namespaces (bench/multihost_stack.py): PostgreSQL, Redis, daphne
and beat in cv-svc (10.77.0.1), one Celery worker in each of cv-w1 and cv-w2, reaching the services only over
veth links, every host with its own MEDIA_ROOT. The hosts come up once for the module, the check runs, and
everything (namespaces included) is taken down before the assertions, also when something failed.

Needs root and ``ip netns``: without them the tests fail, they do not skip (CI runs as root). ``-m multihost``
selects them; ``-m "not multihost"`` leaves them out. ``python -m bench.multihost`` runs the same check and
only records it.
"""
from __future__ import annotations

from typing import Any

import pytest

from bench.multihost_stack import WORKERS, MultiHost, NetnsUnavailable, check
from tests.conftest import ARTIFACTS

pytestmark = pytest.mark.multihost

TASKS = 6


@pytest.fixture(scope="module")
def seen() -> dict[str, Any]:
    unavailable = ""
    try:
        with MultiHost(logs=ARTIFACTS / "multihost") as hosts:
            observations = check(hosts, tasks=TASKS)
            observations["logs"] = hosts.log_tails()
    except NetnsUnavailable as exc:
        unavailable = str(exc)
    if unavailable:
        pytest.fail(f"{unavailable}: the multi-host test needs root and `ip netns` (it fails, it does not skip)",
                    pytrace=False)
    return observations


def _context(seen: dict[str, Any], *keys: str) -> str:
    return "\n".join(f"{k}: {seen.get(k)!r}" for k in keys) + f"\nlogs ({ARTIFACTS / 'multihost'}):\n{seen['logs']}"


def test_every_task_succeeded(seen: dict[str, Any]) -> None:
    statuses = [t["status"] for t in seen["tasks"]]
    assert len(statuses) == TASKS, _context(seen, "tasks")
    assert seen["all_succeeded"] and statuses == ["SUCCEEDED"] * TASKS, (
        f"not every task submitted to the web host SUCCEEDED: {statuses}\n" + _context(seen, "tasks"))


def test_tasks_ran_on_both_worker_hosts(seen: dict[str, Any]) -> None:
    by_worker = seen["tasks_by_worker"]
    assert set(by_worker) == set(WORKERS) and all(by_worker[w] >= 1 for w in WORKERS), (
        f"{TASKS} tasks should run on both worker hosts {WORKERS}, each at least one; ran on {by_worker}\n"
        + _context(seen, "tasks"))


def test_progress_from_a_worker_host_reaches_a_websocket_client_of_the_web_host(seen: dict[str, Any]) -> None:
    events, task = seen["websocket_events"], seen["websocket_task"]
    assert task["status"] == "SUCCEEDED" and (task["worker"] or "?").split("@")[0] in WORKERS, _context(seen, "websocket_task")
    assert seen["websocket_progress_seen"] >= 1, (
        f"the WebSocket client of the web host saw no task.progress of a task run on {task['worker']}: {events}\n"
        + _context(seen, "websocket_task"))
    assert events[-1] == "task.succeeded", f"the WebSocket client did not see the task end: {events}"


def test_a_result_written_on_a_worker_host_downloads_through_the_web_host(seen: dict[str, Any]) -> None:
    r = seen["result_download"]
    assert r["task_status"] == "SUCCEEDED" and (r["worker"] or "?").split("@")[0] in WORKERS, _context(
        seen, "result_download")
    assert r["status"] == 200, f"result download through the web host answered {r['status']}: {r['body']}"
    assert (r["bytes"], r["sha256"]) == (2 * 1024 * 1024, r["expected_sha256"]), (
        f"the downloaded result is not what demo.blob wrote on {r['worker']}: {r}")


def test_artifacts_written_on_a_worker_host_download_through_the_web_host(seen: dict[str, Any]) -> None:
    a = seen["artifacts"]
    assert a["task_status"] == "SUCCEEDED" and (a["worker"] or "?").split("@")[0] in WORKERS, _context(
        seen, "artifacts")
    assert a["names"] == ["file-0.txt", "file-1.txt"], f"artifact listing through the web host: {a}"
    for d in seen["artifact_downloads"]:
        assert d["status"] == 200, f"artifact {d['name']} download through the web host answered {d['status']}"
        assert d["sha256"] == d["expected_sha256"], f"artifact {d['name']} is not what {a['worker']} wrote: {d}"


def test_each_host_has_its_own_media_root(seen: dict[str, Any]) -> None:
    roots = seen["process_media_roots"]
    assert None not in roots.values() and len(set(roots.values())) == len(roots), (
        f"the web host and the worker hosts must not share a MEDIA_ROOT: {roots}")
    # The bytes did not reach the web host through its own disk.
    on_web_disk = set(seen["media_files"]["svc"].values())
    served = {seen["result_download"]["sha256"], *(d["sha256"] for d in seen["artifact_downloads"])}
    assert not on_web_disk & served, f"downloads were files in the web host's MEDIA_ROOT: {seen['media_files']}"
