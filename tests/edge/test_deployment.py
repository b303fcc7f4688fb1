"""docker/ cannot run here (no Docker, no cluster): check it with what can run. Every file parses, the
compose file has the services and wiring the README promises, the Kubernetes manifests probe the right
endpoints as non-root, and every environment variable they set is one Conveyor actually reads."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT, wait_until

DOCKER = ROOT / "docker"
# The images we do not build read their own variables.
FOREIGN_IMAGES = ("postgres:", "redis:", "mher/flower")


def known_env_vars() -> set[str]:
    """Every variable the project's code reads (env_str/env_bool/... in settings, os.environ elsewhere)."""
    names = {"DJANGO_SETTINGS_MODULE", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONPATH", "PATH"}
    return names | code_matches(r'(?:env_[a-z_]+|_every|os\.environ\.get|os\.getenv)\(\s*"([A-Z0-9_]+)"')


def code_matches(pattern: str) -> set[str]:
    """What ``pattern``'s group matches in the project's own code (not its tests, benchmarks or venv)."""
    found: set[str] = set()
    for path in ROOT.glob("*/**/*.py"):
        if not {".venv", "tests", "bench"} & set(path.parts):
            found |= set(re.findall(pattern, path.read_text(errors="ignore")))
    return found


def k8s_documents() -> list[dict]:
    docs = []
    for path in sorted((DOCKER / "k8s").glob("*.yaml")):
        docs += [dict(doc, _file=path.name) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def routed_queues() -> set[str]:
    """Every queue something is sent to: the default, each shipped algorithm's, the literal ``queue="…"``
    (apply_async) or ``{"queue": "…"}`` (beat options) in the project's code."""
    from django.conf import settings

    from algorithms import registry

    names = {settings.CELERY_TASK_DEFAULT_QUEUE}
    names |= {alg.queue for alg in registry.all_algorithms() if not alg.name.startswith("test.")}
    return names | code_matches(r'(?:\bqueue=|"queue":\s*)"([\w.-]+)"')


def consumed_queues(commands: list[list[str]]) -> set[str]:
    """The queues of every ``celery … worker -Q a,b`` command."""
    names = set()
    for command in commands:
        if command[:4] == ["celery", "-A", "config", "worker"] and "-Q" in command:
            names |= set(command[command.index("-Q") + 1].split(","))
    return names


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_settings_read_every_variable_the_tests_rely_on():
    known = known_env_vars()
    assert {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "SECURE_SSL", "RATE_LIMIT_STANDARD", "LOG_FORMAT"} <= known


@pytest.mark.parametrize(("name", "value", "says"), [
    ("DEBUG", "maybe", "DEBUG='maybe' is not a boolean"),
    ("DISPATCH_BATCH", "fast", "DISPATCH_BATCH='fast': 'fast' is not name:size"),
    ("DISPATCH_BATCH", "fast:8,bench:x", "DISPATCH_BATCH='fast:8,bench:x': 'bench:x' is not name:size"),
    ("WEBHOOK_RETRY_SCHEDULE", "5,abc", "WEBHOOK_RETRY_SCHEDULE='5,abc' is not a comma-separated list of numbers"),
    ("WEBHOOK_RETRY_SCHEDULE", ",", "WEBHOOK_RETRY_SCHEDULE=',' is not a comma-separated list of numbers"),
    ("DISPATCH_TICK_SECONDS", "abc", "DISPATCH_TICK_SECONDS='abc' is not a number"),  # config/celery.py
    ("DISPATCH_TICK_SECONDS", "0", "DISPATCH_TICK_SECONDS='0' must be more than 0"),  # beat would flood the broker
    ("TASK_HEARTBEAT_SECONDS", "-1", "TASK_HEARTBEAT_SECONDS='-1' must be more than 0"),
    ("EVENT_COALESCE_MS", "nan", "EVENT_COALESCE_MS='nan' is not a finite number"),
    ("WEBHOOK_MAX_ATTEMPTS", "-3", "WEBHOOK_MAX_ATTEMPTS='-3' must be 0 or more"),
    ("JWT_ACCESS_MINUTES", "0", "JWT_ACCESS_MINUTES='0' must be 1 or more"),
    ("STORAGE_OPTIONS", "notjson", "STORAGE_OPTIONS is not valid JSON"),
    ("STORAGE_OPTIONS", "[1]", "STORAGE_OPTIONS is JSON but not an object"),
    ("DATABASE_URL", "postgres://u:hunter2@db:port/x", "DATABASE_URL is not a database URL"),
    ("LOG_LEVEL", "loud", "LOG_LEVEL='loud' is not one of CRITICAL"),
    ("LOG_FORMAT", "xml", "LOG_FORMAT='xml' is not one of json, console"),
])
def test_a_malformed_setting_stops_the_process_with_a_clear_error(name, value, says):
    env = {"PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "config.settings", "SECRET_KEY": "x" * 50,
           "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/x", name: value}
    out = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0
    # The last line, which is what a log shows first, names the variable and what it should be.
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: ") and says in last, out.stderr[-2000:]
    assert "hunter2" not in out.stderr  # a URL's password is not repeated


def test_compose_has_every_service_wired_to_its_dependencies(compose):
    services = compose["services"]
    assert {"postgres", "redis", "web", "worker", "worker-gpu", "beat", "flower", "migrate"} <= set(services)
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert "--pool" in services["worker-gpu"]["command"] and "solo" in services["worker-gpu"]["command"]
    for name in ("web", "worker", "beat"):
        service = services[name]
        assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}, name
        assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert services["beat"]["command"][:4] == ["celery", "-A", "config", "beat"]
    assert "postgres" in services["postgres"]["image"] and services["postgres"]["healthcheck"]
    assert "/api/v1/system/health/" in " ".join(services["web"]["healthcheck"]["test"])
    assert set(compose["volumes"]) == {"pgdata", "media"}
    assert (ROOT / services["web"]["build"]["dockerfile"]).exists()


def test_compose_roles_without_http_do_not_inherit_the_images_web_health_check(compose):
    """The image's HEALTHCHECK asks :8000, which only the web server answers: a worker, beat or migrate
    container left with it would show as unhealthy for ever. Workers ping their own node instead."""
    assert "HEALTHCHECK" in (DOCKER / "Dockerfile").read_text() and "8000" in (DOCKER / "Dockerfile").read_text()
    for name, service in compose["services"].items():
        if "build" not in service or name == "web":
            continue
        check = service.get("healthcheck")
        assert check, f"compose service {name} inherits the image's HTTP health check"
        if service["command"][:4] == ["celery", "-A", "config", "worker"]:
            assert "inspect ping -d celery@$$HOSTNAME" in " ".join(check["test"]), name
        else:
            assert check == {"disable": True}, name


def test_compose_sets_only_variables_conveyor_reads_and_requires_a_secret_key(compose):
    known = known_env_vars()
    for name, service in compose["services"].items():
        if str(service.get("image", "")).startswith(FOREIGN_IMAGES):
            continue
        unknown = set(service.get("environment", {})) - known
        assert not unknown, f"compose service {name} sets variables nothing reads: {unknown}"
        assert service["environment"]["SECRET_KEY"].startswith("${SECRET_KEY:?")


def test_kubernetes_manifests_probe_health_and_run_as_non_root():
    docs = k8s_documents()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Deployment", "conveyor-web"), ("Deployment", "conveyor-worker"), ("Deployment", "conveyor-beat"),
            ("Service", "conveyor-web"), ("ConfigMap", "conveyor"), ("Job", "conveyor-migrate")} <= kinds
    known = known_env_vars()
    for doc in docs:
        if doc["kind"] in {"ConfigMap", "Secret"}:
            assert not set(doc.get("data", {}) | doc.get("stringData", {})) - known, doc["_file"]
        pod = doc.get("spec", {}).get("template", {}).get("spec")
        if pod:
            assert pod["securityContext"]["runAsNonRoot"] is True, doc["_file"]
            for container in pod["containers"]:
                assert container["securityContext"]["allowPrivilegeEscalation"] is False
                assert {e.get("configMapRef", e.get("secretRef"))["name"] for e in container["envFrom"]} == {"conveyor"}
    web = next(d for d in docs if d["metadata"]["name"] == "conveyor-web" and d["kind"] == "Deployment")
    container = web["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/"
    assert container["readinessProbe"]["httpGet"]["path"] == "/api/v1/system/health/"
    beat = next(d for d in docs if d["metadata"]["name"] == "conveyor-beat")
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"
    scaler = next(d for d in docs if d["kind"] == "ScaledObject")
    assert scaler["spec"]["scaleTargetRef"]["name"] == "conveyor-worker"
    assert "conveyor_queue_depth" in scaler["spec"]["triggers"][0]["metadata"]["query"]


def test_probe_paths_in_the_manifests_answer(client, db):
    for path in ("/health/", "/api/v1/system/health/", "/metrics"):
        assert client.get(path).status_code == 200, path


def test_dockerfile_is_multi_stage_slim_and_non_root():
    text = (DOCKER / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\w+))?", text, re.M)
    assert len(stages) >= 2 and all("slim" in image for image, _ in stages)
    assert re.search(r"^COPY --from=build ", text, re.M)
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in {"root", "0"}
    assert "collectstatic" in text and "HEALTHCHECK" in text
    runtime = text[text.index("AS runtime"):]
    env = set(re.findall(r"^\s+([A-Z_]+)=", runtime, re.M)) | set(re.findall(r"ENV ([A-Z_]+)=", runtime))
    assert not env - known_env_vars(), env - known_env_vars()
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore


def test_dockerfile_builds_what_make_install_app_builds():
    """The git-ignored pieces (a clean clone has none): built as the Makefile builds them, each copied
    into the runtime image, and never taken from the build context (a stale local build)."""
    text = (DOCKER / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for command in ("npm ci --no-audit --no-fund --loglevel=error", "npm run build",
                    "-m algorithms.remote.proto", "-O2 -Wall -Wextra -o native/build/hello native/hello.c"):
        assert command in makefile and command in text, command
    runtime = text[text.index("AS runtime"):]
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    for generated in ("dashboard/dist", "native/build", "algorithms/remote/_generated"):
        assert re.search(rf"^COPY --from=\w+ .*/{generated} {generated}$", runtime, re.M), generated
        assert generated in ignore, generated
    assert runtime.index(" dashboard/dist") < runtime.index("collectstatic")


def test_compose_and_kubernetes_consume_every_queue_the_code_routes_to(compose, db):
    routed = routed_queues()
    assert {"default", "webhooks"} <= routed
    in_compose = consumed_queues([service.get("command", []) for service in compose["services"].values()])
    assert not routed - in_compose, f"compose: no worker consumes {routed - in_compose}"
    in_k8s = consumed_queues([container["command"] for doc in k8s_documents()
                              for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
                              if "command" in container])
    assert not routed - in_k8s, f"kubernetes: no worker consumes {routed - in_k8s}"


def web_commands(compose: dict) -> dict[str, list[str]]:
    """The production web command as the image, compose and Kubernetes each write it."""
    cmd = re.search(r"^CMD (\[.*\])$", (DOCKER / "Dockerfile").read_text(), re.M)
    web = next(d for d in k8s_documents() if d["metadata"]["name"] == "conveyor-web" and d["kind"] == "Deployment")
    return {"Dockerfile": json.loads(cmd.group(1)), "compose": compose["services"]["web"]["command"],
            "k8s": web["spec"]["template"]["spec"]["containers"][0]["command"]}


def test_the_web_command_is_the_same_everywhere_and_writes_no_access_log(compose):
    commands = web_commands(compose)
    assert commands["compose"] == commands["Dockerfile"] == commands["k8s"], commands
    command = commands["Dockerfile"]
    # daphne's access lines are not JSON; observability.middleware logs each request as JSON instead.
    assert command[command.index("--access-log") + 1] == "/dev/null"
    assert "--access-log /dev/null" in (ROOT / "Makefile").read_text()


def test_the_production_web_command_writes_only_json_lines(compose, transactional_db):
    """Run the image's command (on a loopback port), serve a few requests: every line of its output is a
    JSON object (no daphne access line, no raw Python warning such as whitenoise's about STATIC_ROOT)."""
    from tests.conftest import ARTIFACTS, free_port, stop_daphne, subprocess_env

    command = web_commands(compose)["Dockerfile"]
    port = free_port()
    command = [str(Path(sys.executable).parent / command[0]), *command[1:]]
    command[command.index("--bind") + 1], command[command.index("--port") + 1] = "127.0.0.1", str(port)
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / f"web-prodcmd-{os.getpid()}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env={**subprocess_env(), "LOG_FORMAT": "json"}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(f"{url}/health/"), timeout=60, message="the web command to answer")
        for path in ("/health/", "/api/v1/tasks/", "/metrics", "/static/rest_framework/css/default.css"):
            httpx.get(f"{url}{path}", timeout=30)
    finally:
        stop_daphne(proc)
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    assert any('"event": "request"' in line for line in lines), lines[-20:]
    for line in lines:
        assert isinstance(json.loads(line), dict), line


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
