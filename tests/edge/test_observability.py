"""What an operator sees: /metrics after a small run, X-Request-ID from request to task events, and JSON
log lines with request_id / task_id / user from web and worker, without secrets."""
from __future__ import annotations

import json
import logging
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ARTIFACTS, PASSWORD, wait_until
from tests.e2e.test_spine import wait_final


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    text = response.content.decode()
    (ARTIFACTS / "metrics-sample.txt").write_text(text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def json_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


@pytest.mark.django_db(transaction=True)
def test_metrics_after_a_small_run(live_worker, alice, api):
    client = api(alice)
    ids = [client.post("/api/v1/tasks/", {"algorithm": "demo.noop"}, format="json").json()["id"] for _ in range(3)]
    ids.append(client.post("/api/v1/tasks/", {"algorithm": "demo.flaky", "params": {"fail_times": 1}},
                           format="json").json()["id"])
    for task_id in ids:
        assert wait_final(client, task_id)["status"] == "SUCCEEDED"

    samples = scrape(client)

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("conveyor_metrics_up") == 1
    assert value("conveyor_tasks", state="SUCCEEDED", queue="default") == 4
    assert value("conveyor_queue_depth", queue="default") == 0
    assert value("conveyor_queue_oldest_wait_seconds", queue="default") == 0
    assert value("conveyor_task_retries", queue="default") == 1
    assert value("conveyor_task_run_seconds_count", queue="default") == 4
    assert value("conveyor_task_wait_seconds_count", queue="default") == 4
    assert value("conveyor_task_wait_seconds_bucket", queue="default", le="+Inf") == 4
    assert any(name == "django_http_requests_total_by_method_total" for name, _ in samples)
    # The worker's heartbeat thread, in its main process, may be kept from writing for longer than the
    # tests' WORKER_STALE_SECONDS (3 s) on a busy machine (and the end of the test before deleted its row):
    # what a scrape polling it sees, as in test_health's readiness probe.
    wait_until(lambda: scrape(client)[("conveyor_workers", (("state", "alive"),))] >= 1, timeout=30, interval=0.5,
               message="a scrape counting the live worker")


@pytest.mark.django_db
def test_totals_over_stored_rows_are_gauges_so_a_deletion_is_no_counter_reset(alice, api):
    from jobs.models import Task
    from queueing.models import Queue

    Queue.objects.update_or_create(name="edge-paused", defaults={"paused": True})
    client = api(alice)
    task_id = client.post("/api/v1/tasks/", {"algorithm": "demo.noop", "queue": "edge-paused"}, format="json").json()["id"]
    Task.objects.filter(id=task_id).update(attempts=4)
    response = client.get("/metrics")
    families = {f.name: f for f in text_string_to_metric_families(response.content.decode())}
    for name in ("conveyor_task_retries", "conveyor_webhook_attempts", "conveyor_webhook_failures"):
        assert families[name].type == "gauge", name
    before = {s.labels.get("queue"): s.value for s in families["conveyor_task_retries"].samples}
    Task.objects.filter(id=task_id).delete()  # a lower value next time: fine for a gauge, a "reset" for a counter
    after = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").content.decode())}
    assert sum(s.value for s in after["conveyor_task_retries"].samples) == sum(before.values()) - 3


@pytest.mark.django_db
def test_metrics_show_waiting_tasks_and_paused_queues(alice, api):
    from queueing.models import Queue

    Queue.objects.update_or_create(name="edge-paused", defaults={"paused": True})
    client = api(alice)
    client.post("/api/v1/tasks/", {"algorithm": "demo.noop", "queue": "edge-paused"}, format="json")
    samples = scrape(client)
    # Paused: nothing of it can start, so no depth for KEDA; the task is counted as held by the pause.
    assert samples[("conveyor_queue_depth", (("queue", "edge-paused"),))] == 0
    assert samples[("conveyor_queue_paused_waiting", (("queue", "edge-paused"),))] == 1
    assert samples[("conveyor_queue_paused", (("queue", "edge-paused"),))] == 1
    assert samples[("conveyor_queue_oldest_wait_seconds", (("queue", "edge-paused"),))] == 0
    assert samples[("conveyor_tasks", (("queue", "edge-paused"), ("state", "PENDING")))] == 1


@pytest.mark.django_db
def test_workers_that_stopped_cleanly_are_not_counted_dead(alice, api):
    """After a deploy the old workers are ``stopped``: an alert on ``conveyor_workers{state="dead"}`` must
    not fire for them; a worker whose heartbeat went stale without a clean stop is dead."""
    from datetime import timedelta

    from django.utils import timezone

    from queueing.models import WorkerRecord

    now, old = timezone.now(), timezone.now() - timedelta(hours=1)
    common = {"queues": ["default"], "concurrency": 2, "pool": "prefork", "pid": 1, "version": "celery 5"}
    WorkerRecord.objects.create(hostname="alive@h", last_heartbeat=now, started_at=now, **common)
    WorkerRecord.objects.create(hostname="stopped@h", last_heartbeat=old, started_at=old, stopped_at=old, **common)
    WorkerRecord.objects.create(hostname="dead@h", last_heartbeat=old, started_at=old, **common)

    samples = scrape(api(alice))

    counts = {state: samples[("conveyor_workers", (("state", state),))] for state in ("alive", "stopped", "dead")}
    assert counts["stopped"] == 1 and counts["dead"] == 1 and counts["alive"] >= 1, counts


@pytest.mark.django_db
def test_request_id_is_echoed_or_made(client):
    assert client.get("/health/", HTTP_X_REQUEST_ID="trace-abc.123")["X-Request-ID"] == "trace-abc.123"
    made = client.get("/health/")["X-Request-ID"]
    assert len(made) == 32 and int(made, 16) >= 0
    # Anything odd (newlines, quotes, huge) is replaced rather than copied into logs.
    assert client.get("/health/", HTTP_X_REQUEST_ID='bad"\nid')["X-Request-ID"] != 'bad"\nid'


@pytest.mark.django_db(transaction=True)
def test_request_id_follows_the_task_into_its_events_and_worker_logs(live_worker, alice, api):
    client = api(alice)
    request_id = f"edge-{uuid.uuid4().hex[:12]}"
    response = client.post("/api/v1/tasks/", {"algorithm": "demo.flaky", "params": {"fail_times": 1}},
                           format="json", HTTP_X_REQUEST_ID=request_id)
    assert response["X-Request-ID"] == request_id
    task_id = response.json()["id"]
    wait_final(client, task_id)

    events = client.get(f"/api/v1/tasks/{task_id}/logs/").json()
    carried = {e["event"] for e in events if e["data"].get("request_id") == request_id}
    assert {"task.created", "task.started", "task.succeeded"} <= carried, events

    def lines_through_success() -> list[dict] | None:
        """The task's worker log lines once the trace's "succeeded" line is among them: the pool child
        writes it after committing SUCCEEDED, so it may come after wait_final (the failed first
        attempt's lines are there before)."""
        lines = [line for line in json_lines(live_worker.log_path) if line.get("task_id") == task_id]
        done = any(line["logger"] == "celery.app.trace" and "succeeded" in line["event"] for line in lines)
        return lines if done else None

    lines = wait_until(lines_through_success, timeout=30, message="the worker's 'succeeded' log line for the task")
    assert all(line["request_id"] == request_id for line in lines)


@pytest.mark.django_db(transaction=True)
def test_events_written_by_workers_carry_each_tasks_own_request_id(live_worker, alice, api):
    """A task queued by another task's finish (in the worker) and the tasks of a multi-id message get the
    request id they were submitted with, not the one of the task the worker happened to be running."""
    from tests.queueing.conftest import make_queue

    client = api(alice)
    make_queue("default", concurrency=1)
    make_queue("batched", concurrency=4)
    first, second = (f"edge-{uuid.uuid4().hex[:12]}" for _ in range(2))
    ids = [client.post("/api/v1/tasks/", {"algorithm": "demo.sleep", "params": {"seconds": 0.3}}, format="json",
                       HTTP_X_REQUEST_ID=rid).json()["id"] for rid in (first, second)]
    batch_rid = f"edge-{uuid.uuid4().hex[:12]}"
    batch = client.post("/api/v1/tasks/batch/", {"tasks": [{"algorithm": "demo.noop", "queue": "batched"}] * 3},
                        format="json", HTTP_X_REQUEST_ID=batch_rid).json()
    batch_ids = [t["id"] for t in batch["tasks"]]
    for task_id in ids + batch_ids:
        assert wait_final(client, task_id)["status"] == "SUCCEEDED"

    for task_id, rid in [(ids[0], first), (ids[1], second)] + [(i, batch_rid) for i in batch_ids]:
        events = client.get(f"/api/v1/tasks/{task_id}/logs/").json()
        carried = {e["event"]: e["data"].get("request_id") for e in events}
        assert carried["task.started"] == rid and carried["task.succeeded"] == rid, events
    # the second task waited for the first (concurrency 1): queued by the worker as the first finished
    queued = [e for e in client.get(f"/api/v1/tasks/{ids[1]}/logs/").json() if e["event"] == "task.queued"]
    assert queued and queued[0]["data"]["request_id"] == second


def test_web_log_lines_are_json_with_request_id_user_and_no_secrets(web_process, django_user_model):
    django_user_model.objects.create_user("dana", password=PASSWORD)
    web = web_process("logs")
    token = httpx.post(f"{web.url}/api/v1/auth/token/", json={"username": "dana", "password": PASSWORD}).json()
    httpx.get(f"{web.url}/api/v1/tasks/", headers={"Authorization": f"Bearer {token['access']}",
                                                   "X-Request-ID": "edge-log-1"})
    lines = wait_until(lambda: [l for l in json_lines(web.log_path) if l.get("request_id") == "edge-log-1"] or None,
                       timeout=10, message="the request's log line")
    access = next(line for line in lines if line["event"] == "request")
    assert access["user"] == "dana" and access["status"] == 200 and access["path"] == "/api/v1/tasks/"
    text = web.log_path.read_text()
    assert PASSWORD not in text and token["access"] not in text
    for line in json_lines(web.log_path):
        assert {"request_id", "task_id", "user", "level", "timestamp", "event"} <= set(line)


def json_log_line(record: logging.LogRecord) -> dict:
    """``record`` as the JSON log formatter writes it (LOG_FORMAT=json)."""
    from observability.logs import logging_config

    config = logging_config(level="INFO", fmt="json")["formatters"]["structured"]
    return json.loads(config.pop("()")(**config).format(record))


def test_secrets_are_redacted_from_log_lines(capsys):
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "calling %s with %s", (
        "postgres://u:hunter2@db/x", "Authorization: Bearer abc.def.ghi"), None)
    record.api_key = "cvk_1234abcd_secretsecret"
    line = json_log_line(record)
    assert "hunter2" not in line["event"] and "abc.def.ghi" not in line["event"]
    assert line["api_key"] == "[redacted]"
