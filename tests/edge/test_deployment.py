"""docker/ cannot run here (no Docker, no cluster): check it with what can run. Every file parses, the
compose file has the services and wiring the README promises, the Kubernetes manifests probe the right
endpoints as non-root, and every environment variable they set is one Conveyor actually reads."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
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
    # every receiver was refused with "the host does not resolve", public ones too
    ("WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8,localhost",
     "WEBHOOK_ALLOWED_NETWORKS='127.0.0.0/8,localhost': 'localhost' is not a CIDR"),
    ("DISPATCH_TICK_SECONDS", "abc", "DISPATCH_TICK_SECONDS='abc' is not a number"),  # config/celery.py
    ("DISPATCH_TICK_SECONDS", "0", "DISPATCH_TICK_SECONDS='0' must be more than 0"),  # beat would flood the broker
    ("TASK_HEARTBEAT_SECONDS", "-1", "TASK_HEARTBEAT_SECONDS='-1' must be more than 0"),
    ("EVENT_COALESCE_MS", "nan", "EVENT_COALESCE_MS='nan' is not a finite number"),
    ("WEBHOOK_MAX_ATTEMPTS", "0", "WEBHOOK_MAX_ATTEMPTS='0' must be 1 or more"),  # no delivery ever tried
    # each would turn into a loop as fast as it can go, or fail every task at once
    ("WEBHOOK_RETRY_SCHEDULE", "5,0", "WEBHOOK_RETRY_SCHEDULE='5,0': each number must be finite and more than 0"),
    ("WEBHOOK_RETRY_SCHEDULE", "-5", "WEBHOOK_RETRY_SCHEDULE='-5': each number must be finite and more than 0"),
    ("TASK_DEFAULT_TIMEOUT_SECONDS", "0", "TASK_DEFAULT_TIMEOUT_SECONDS='0' must be 1 or more"),
    ("BROKER_VISIBILITY_TIMEOUT", "0", "BROKER_VISIBILITY_TIMEOUT='0' must be 1 or more"),
    ("REMOTE_RETRY_BASE_SECONDS", "0", "REMOTE_RETRY_BASE_SECONDS='0' must be more than 0"),
    ("QUEUE_DEFAULT_CONCURRENCY", "0", "QUEUE_DEFAULT_CONCURRENCY='0' must be 1 or more"),
    # read, and refused, also while the setting that uses them is off (SECURE_SSL, DB_POOL_MAX_SIZE)
    ("SECURE_SSL_REDIRECT", "maybe", "SECURE_SSL_REDIRECT='maybe' is not a boolean"),
    ("SECURE_HSTS_SECONDS", "-5", "SECURE_HSTS_SECONDS='-5' must be 0 or more"),
    ("DB_POOL_TIMEOUT", "abc", "DB_POOL_TIMEOUT='abc' is not a number"),
    ("JWT_ACCESS_MINUTES", "0", "JWT_ACCESS_MINUTES='0' must be 1 or more"),
    ("DB_CONNECT_TIMEOUT", "0", "DB_CONNECT_TIMEOUT='0' must be 1 or more"),  # libpq would wait for ever
    ("STORAGE_OPTIONS", "notjson", "STORAGE_OPTIONS is not valid JSON"),
    ("STORAGE_OPTIONS", "[1]", "STORAGE_OPTIONS is JSON but not an object"),
    ("DATABASE_URL", "postgres://u:hunter2@db:port/x", "DATABASE_URL is not a database URL"),
    ("LOG_LEVEL", "loud", "LOG_LEVEL='loud' is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ("LOG_FORMAT", "xml", "LOG_FORMAT='xml' is not one of json, console"),
])
def test_a_malformed_setting_stops_the_process_with_a_clear_error(name, value, says):
    env = {"PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "config.settings", "SECRET_KEY": "x" * 50,
           "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/x", name: value}
    out = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0
    # One line, not a traceback ending in it: it names the variable and what it should be.
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr[-2000:]
    assert says in out.stderr
    assert "hunter2" not in out.stderr  # a URL's password is not repeated


@pytest.mark.parametrize(("name", "value", "says"), [
    ("DB_POOL_MAX_SIZE", "abc", "DB_POOL_MAX_SIZE='abc' is not an integer"),  # Django's settings
    # beat's schedule, read while Celery's command line loads the app, which catches every Exception
    ("DISPATCH_TICK_SECONDS", "abc", "DISPATCH_TICK_SECONDS='abc' is not a number"),
], ids=["settings", "beat-schedule"])
@pytest.mark.parametrize("command", [["-m", "daphne", "-p", "1", "config.asgi:application"],
                                     ["-m", "celery", "-A", "config", "worker"], ["-m", "celery", "-A", "config", "beat"]],
                         ids=["daphne", "worker", "beat"])
def test_a_malformed_setting_stops_the_web_server_worker_and_beat_with_one_line(command, name, value, says):
    env = {"PATH": os.environ["PATH"], "SECRET_KEY": "x" * 50, "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/x",
           name: value}
    out = subprocess.run([sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr[-2000:]
    assert out.stderr == f"error: {says}\n"


def test_compose_has_every_service_wired_to_its_dependencies(compose):
    services = compose["services"]
    assert {"postgres", "redis", "web", "worker", "worker-gpu", "beat", "flower", "migrate"} <= set(services)
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert "--pool" in services["worker-gpu"]["command"] and "solo" in services["worker-gpu"]["command"]
    for name in ("web", "worker", "beat"):
        service = services[name]
        assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile",
                                    "args": {"EXTRA_PIP_PACKAGES": "${EXTRA_PIP_PACKAGES:-}"}}, name
        assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert services["beat"]["command"][:4] == ["celery", "-A", "config", "beat"]
    assert "postgres" in services["postgres"]["image"] and services["postgres"]["healthcheck"]
    assert "/api/v1/system/health/" in " ".join(services["web"]["healthcheck"]["test"])
    assert (ROOT / services["web"]["build"]["dockerfile"]).exists()


def test_compose_mounts_no_media_volume_the_default_storage_does_not_use(compose):
    """Results and artifacts live in PostgreSQL by default (DatabaseStorage): a ``media`` volume would
    suggest otherwise. FileSystemStorage's shared volume is there, commented, to uncomment with it."""
    from django.conf import settings

    assert settings.STORAGES["default"]["BACKEND"] == "algorithms.storage.DatabaseStorage"
    assert set(compose["volumes"]) == {"pgdata"}
    for name, service in compose["services"].items():
        if "build" in service:
            assert not service.get("volumes"), name
    text = (DOCKER / "compose.yaml").read_text()
    assert "#   - media:/data/media" in text and "# media: {}" in text


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
    assert dockerignored(".venv/bin/python") and dockerignored(".git/HEAD")


def test_every_role_runs_under_tini_which_reaps_zombies(compose):
    """With no init, the command is PID 1 and never reaps what is re-parented to it: an external program's
    children that outlive it stayed zombies. The image's ENTRYPOINT is tini; compose's commands keep it."""
    runtime = (DOCKER / "Dockerfile").read_text().split("AS runtime", 1)[1]
    assert re.search(r"apt-get install -y --no-install-recommends tini\b", runtime)
    assert [json.loads(e) for e in re.findall(r"^ENTRYPOINT (\[.*\])$", runtime, re.M)] == [["tini", "--"]]
    assert re.findall(r"^CMD \[\"daphne\"", runtime, re.M)  # CMD stays the command alone, tini runs it
    for name, service in compose["services"].items():
        if "build" in service:
            assert "entrypoint" not in service and "init" not in service, name


def test_dockerfile_builds_what_make_install_app_builds():
    """The git-ignored pieces (a clean clone has none): built as the Makefile builds them, each copied
    into the runtime image, and never taken from the build context (a stale local build)."""
    text = (DOCKER / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for command in ("npm ci --no-audit --no-fund --loglevel=error", "npm run build",
                    "-m algorithms.remote.proto", "-O2 -Wall -Wextra -o native/build/hello native/hello.c"):
        assert command in makefile and command in text, command
    runtime = text[text.index("AS runtime"):]
    for generated in ("dashboard/dist", "native/build", "algorithms/remote/_generated"):
        assert re.search(rf"^COPY --from=\w+ .*/{generated} {generated}$", runtime, re.M), generated
        assert dockerignored(f"{generated}/x"), generated
    assert runtime.index(" dashboard/dist") < runtime.index("collectstatic")


def test_compose_and_kubernetes_consume_every_queue_the_code_routes_to(compose, db):
    routed = routed_queues()
    assert {"default", "webhooks"} <= routed
    in_compose = consumed_queues([service.get("command", []) for service in compose["services"].values()])
    assert not routed - in_compose, f"compose: no worker consumes {routed - in_compose}"
    in_k8s = consumed_queues([container["args"] for doc in k8s_documents()
                              for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
                              if "args" in container])
    assert not routed - in_k8s, f"kubernetes: no worker consumes {routed - in_k8s}"


def web_commands(compose: dict) -> dict[str, list[str]]:
    """The production web command as the image, compose and Kubernetes each write it."""
    cmd = re.search(r"^CMD (\[.*\])$", (DOCKER / "Dockerfile").read_text(), re.M)
    web = next(d for d in k8s_documents() if d["metadata"]["name"] == "conveyor-web" and d["kind"] == "Deployment")
    return {"Dockerfile": json.loads(cmd.group(1)), "compose": compose["services"]["web"]["command"],
            "k8s": web["spec"]["template"]["spec"]["containers"][0]["args"]}


def test_the_web_command_is_the_same_everywhere_and_writes_no_access_log(compose):
    commands = web_commands(compose)
    assert commands["compose"] == commands["Dockerfile"] == commands["k8s"], commands
    command = commands["Dockerfile"]
    # daphne's access lines are not JSON; observability.middleware logs each request as JSON instead.
    assert command[command.index("--access-log") + 1] == "/dev/null"
    assert "--access-log /dev/null" in (ROOT / "Makefile").read_text()


def daphne_invocations(compose: dict) -> dict[str, str]:
    """Every daphne command line the project ships: the image's, compose's and Kubernetes' web commands,
    and each line that runs daphne in the Makefile, scripts/ and the docs."""
    found = {where: " ".join(command) for where, command in web_commands(compose).items()}
    for doc in k8s_documents():
        for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            found[f"k8s {doc['_file']} {container['name']}"] = " ".join(container.get("command", []) +
                                                                      container.get("args", []))
    for name, service in compose["services"].items():
        command = service.get("command", [])
        found[f"compose {name}"] = " ".join(command) if isinstance(command, list) else command
    texts = [ROOT / "Makefile", ROOT / "README.md", *(ROOT / "scripts").rglob("*"), *(ROOT / "docs").rglob("*.md")]
    for path in texts:
        if path.is_file():
            for number, line in enumerate(path.read_text(errors="ignore").splitlines(), 1):
                if re.search(r"\bdaphne\b.*\s-(b|p|-bind|-port)\b", line):
                    found[f"{path.relative_to(ROOT)}:{number}"] = line
    return found


def test_no_web_command_trusts_the_clients_forwarded_for(compose):
    """daphne's --proxy-headers makes the leftmost X-Forwarded-For, which the client writes, REMOTE_ADDR:
    a made-up header per request would escape the per-IP limits. TRUSTED_PROXIES (DRF's NUM_PROXIES)
    reads the header instead, trusting only the proxies in front."""
    invocations = daphne_invocations(compose)
    assert "Makefile" in " ".join(invocations) and len(invocations) >= 4, invocations
    for where, command in invocations.items():
        assert "--proxy-headers" not in command and "--proxy-headers-host" not in command, where
        assert not re.search(r"(^|\s)--?(proxy|forwarded)", command), where


def test_the_production_web_command_keeps_the_anonymous_limit_and_answers_probes_of_any_host(compose,
                                                                                             transactional_db):
    """The image's own command over real HTTP: a made-up X-Forwarded-For per request does not escape
    RATE_LIMIT_ANON (the peer's address counts), and with ALLOWED_HOSTS set to the site a probe naming
    the pod still gets its 200 while any other path naming it gets a 400."""
    import uuid

    from tests.conftest import ARTIFACTS, free_port, stop_daphne, subprocess_env
    from tests.edge.test_rate_limits import clear_of_window_edge

    command = web_commands(compose)["Dockerfile"]
    port = free_port()
    command = [str(Path(sys.executable).parent / command[0]), *command[1:]]
    command[command.index("--bind") + 1], command[command.index("--port") + 1] = "127.0.0.1", str(port)
    ARTIFACTS.mkdir(exist_ok=True)
    env = {**subprocess_env(), "RATE_LIMIT_ANON": "2", "ALLOWED_HOSTS": "conveyor.example.com",
           "TRUSTED_PROXIES": "0"}
    with open(ARTIFACTS / f"web-prodcmd-limits-{os.getpid()}.log", "wb") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        # The readiness of the pod as kubelet asks for it: Host: <podIP>:8000.
        wait_until(lambda: _answers(f"{url}/health/"), timeout=60, message="the web command to answer")
        pod = {"Host": "10.1.2.3:8000"}
        for path in ("/health/", "/api/v1/system/health/", "/metrics"):
            assert httpx.get(f"{url}{path}", headers=pod, timeout=30).status_code == 200, path
        assert httpx.get(f"{url}/api/v1/tasks/", headers=pod, timeout=30).status_code == 400

        clear_of_window_edge("ip:127.0.0.1", margin=10)
        wrong = {"username": f"nobody-{uuid.uuid4().hex[:8]}", "password": "guess"}
        codes = []
        for _ in range(3):  # a new, made-up client address each time
            forged = f"203.0.113.{uuid.uuid4().int % 250 + 1}, 198.51.100.{uuid.uuid4().int % 250 + 1}"
            codes.append(httpx.post(f"{url}/api/v1/auth/token/", json=wrong, timeout=30,
                                    headers={"Host": "conveyor.example.com", "X-Forwarded-For": forged}).status_code)
    finally:
        stop_daphne(proc)
    # Other tests' anonymous requests from 127.0.0.1 may share the minute's count: at least the third is a 429.
    assert set(codes) <= {401, 429} and codes[-1] == 429, codes


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


# --- probes, worker shutdown, connections, images, build context, compose settings ---------------------

def k8s_containers(kind: str | None = None) -> list[tuple[dict, dict]]:
    """(document, container) for every container of every pod template in docker/k8s/."""
    return [(doc, container) for doc in k8s_documents() if kind is None or doc["kind"] == kind
            for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])]


def container_env(container: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


def is_worker(command: list[str]) -> bool:
    return command[:4] == ["celery", "-A", "config", "worker"]


def seconds(duration: str | int) -> float:
    """A compose duration as this file writes them (``60s``, ``2m``, ``1m30s``)."""
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", str(duration))
    assert parts and any(parts.groups()), duration
    return int(parts.group(1) or 0) * 60 + int(parts.group(2) or 0)


def test_every_probe_and_scrape_asks_for_a_path_that_answers_whatever_the_host(compose):
    """kubelet, Prometheus and the health checks name the pod (Host: <podIP>:8000): only the paths in
    PROBE_PATHS answer such a Host (observability/probes.py), so every probe must ask for one of those."""
    from django.conf import settings

    asked = {}
    for doc, container in k8s_containers("Deployment"):
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if "httpGet" in container.get(probe, {}):
                asked[f"{doc['_file']} {probe}"] = container[probe]["httpGet"]["path"]
        annotations = doc["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "true":
            asked[f"{doc['_file']} prometheus.io/path"] = annotations["prometheus.io/path"]
    healthcheck = re.search(r"^HEALTHCHECK .*?CMD (.*?)$", (DOCKER / "Dockerfile").read_text(), re.M | re.S)
    asked["Dockerfile HEALTHCHECK"] = re.search(r"http://127\.0\.0\.1:8000(/\S*?)'", healthcheck.group(1)).group(1)
    asked["compose web healthcheck"] = re.search(r"http://127\.0\.0\.1:8000(/\S*?)'",
                                                 " ".join(compose["services"]["web"]["healthcheck"]["test"])).group(1)
    assert len(asked) >= 6, asked
    assert set(asked.values()) <= set(settings.PROBE_PATHS), asked


def test_each_worker_stops_its_tasks_before_the_platform_kills_it(compose):
    """On SIGTERM a worker gives running tasks WORKER_SHUTDOWN_GRACE_SECONDS, then stops them and hands
    them back; the platform SIGKILLs it after its own grace. The application's must be shorter, with
    room for the hand-back; left unset it would be 30 s whatever the platform's (tasks cut off early)."""
    checked = []
    for name, service in compose["services"].items():
        if is_worker(service.get("command", [])):
            app = float(service["environment"]["WORKER_SHUTDOWN_GRACE_SECONDS"])
            platform = seconds(service["stop_grace_period"])
            assert 0 < app <= platform - 5, (name, app, platform)
            checked.append(name)
    for doc, container in k8s_containers("Deployment"):
        if is_worker(container["args"]):
            app = float(container_env(container)["WORKER_SHUTDOWN_GRACE_SECONDS"])
            platform = doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            assert 0 < app <= platform - 10, (doc["metadata"]["name"], app, platform)
            checked.append(doc["metadata"]["name"])
    assert {"worker", "worker-webhooks", "worker-gpu", "conveyor-worker", "conveyor-worker-webhooks",
            "conveyor-worker-gpu"} <= set(checked), checked
    # Nothing else sets it for every role at once (the ConfigMap would override none of the above, but
    # it would make a default for a new worker that no platform grace matches).
    assert "WORKER_SHUTDOWN_GRACE_SECONDS" not in compose["x-conveyor-env"]
    config = next(d for d in k8s_documents() if d["kind"] == "ConfigMap")
    assert "WORKER_SHUTDOWN_GRACE_SECONDS" not in config["data"]


def test_the_web_server_drains_its_requests_before_the_platform_kills_it(compose):
    """On SIGTERM daphne serves its requests in flight for up to WEB_SHUTDOWN_GRACE_SECONDS (config/handlers.py);
    the platform's grace must cover that, and in Kubernetes a preStop sleep before it (the pod leaving the
    Service's endpoints while it still serves); without one a rolling deploy cut requests off."""
    from django.conf import settings

    web = compose["services"]["web"]
    app = float(web["environment"].get("WEB_SHUTDOWN_GRACE_SECONDS", settings.WEB_SHUTDOWN_GRACE_SECONDS))
    assert 0 < app <= seconds(web["stop_grace_period"]) - 5, (app, web["stop_grace_period"])
    webs = [(doc, container) for doc, container in k8s_containers("Deployment") if container["args"][0] == "daphne"]
    assert webs
    for doc, container in webs:
        app = float(container_env(container).get("WEB_SHUTDOWN_GRACE_SECONDS", settings.WEB_SHUTDOWN_GRACE_SECONDS))
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep" and 5 <= int(pre_stop[1]) <= 15, pre_stop
        platform = doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert 0 < app <= platform - int(pre_stop[1]) - 5, (doc["metadata"]["name"], app, pre_stop, platform)


def test_the_web_server_and_only_it_pools_its_database_connections(compose):
    """Each daphne request runs in a thread of its own: without a pool every thread keeps a connection."""
    for name, service in compose["services"].items():
        if "build" in service:
            pool = service["environment"].get("DB_POOL_MAX_SIZE")
            assert (int(pool) > 0) if name == "web" else pool is None, (name, pool)
    for doc, container in k8s_containers():
        pool = container_env(container).get("DB_POOL_MAX_SIZE")
        is_web = doc["metadata"]["name"] == "conveyor-web"
        assert (int(pool) > 0) if is_web else pool is None, (doc["metadata"]["name"], pool)
    config = next(d for d in k8s_documents() if d["kind"] == "ConfigMap")
    assert "DB_POOL_MAX_SIZE" not in config["data"]
    readme = (ROOT / "README.md").read_text()
    assert "max_connections" in readme and "DB_POOL_MAX_SIZE=10" in readme


def test_kubernetes_container_env_is_only_variables_conveyor_reads():
    known = known_env_vars()
    for doc, container in k8s_containers():
        assert not set(container_env(container)) - known, (doc["_file"], container_env(container))


def test_kubernetes_images_name_a_registry_and_a_release_tag():
    """``conveyor:latest`` is pulled from Docker Hub (ImagePullBackOff for a local build) and a re-applied
    ``:latest`` rolls nothing: every container names one registry image with a release tag."""
    images = {container["image"] for _, container in k8s_containers()}
    assert len(images) == 1, images
    image = images.pop()
    registry, _, rest = image.partition("/")
    name, _, tag = rest.rpartition(":")
    assert "." in registry and name and tag and tag != "latest", image
    for doc, container in k8s_containers():
        assert container["imagePullPolicy"] == "IfNotPresent", doc["_file"]


def test_the_migration_job_can_be_replaced_on_every_upgrade():
    job = next(d for d in k8s_documents() if d["kind"] == "Job")
    assert job["metadata"]["name"] == "conveyor-migrate"
    assert 0 < job["spec"]["ttlSecondsAfterFinished"] <= 24 * 3600
    text = (DOCKER / "k8s" / "migrate-job.yaml").read_text()
    assert "kubectl delete job conveyor-migrate --ignore-not-found" in text
    assert "kubectl delete job conveyor-migrate --ignore-not-found" in (ROOT / "README.md").read_text()


def test_the_scaler_says_the_queue_concurrency_its_maximum_needs():
    """Replicas beyond the queue's concurrency window sit idle: the notes next to the ScaledObject (and
    the README) give the PATCH that matches maxReplicaCount x the worker's --concurrency."""
    scaler = next(d for d in k8s_documents() if d["kind"] == "ScaledObject")
    target = scaler["spec"]["scaleTargetRef"]["name"]
    worker = next(c for d, c in k8s_containers("Deployment") if d["metadata"]["name"] == target)
    slots = scaler["spec"]["maxReplicaCount"] * int(worker["args"][worker["args"].index("--concurrency") + 1])
    text = (DOCKER / "k8s" / "worker-scaledobject.yaml").read_text()
    assert "/api/v1/queues/default/" in text and f"'{{\"concurrency\": {slots}}}'" in text, slots
    assert "QUEUE_DEFAULT_CONCURRENCY" in text
    readme = (ROOT / "README.md").read_text()
    assert "$BASE/api/v1/queues/default/" in readme and f"'{{\"concurrency\": {slots}}}'" in readme


def test_flower_does_not_turn_task_events_back_on(compose):
    from django.conf import settings

    assert settings.CELERY_WORKER_SEND_TASK_EVENTS is False
    assert "--enable_events=false" in compose["services"]["flower"]["command"]


# .dockerignore: Docker's patterns are anchored at the context's root ("**" is any number of directories,
# none included); a path is left out when it or a folder above it matches, the last matching line deciding
# ("!" lines put paths back).

def dockerignore_rules(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep, line = line.startswith("!"), line.lstrip("!").strip("/")
        regex = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?)", line):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        rules.append((keep, re.compile(regex)))
    return rules


def dockerignored(path: str, ignore_file: Path = DOCKER / "Dockerfile.dockerignore") -> bool:
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for keep, pattern in dockerignore_rules(ignore_file):
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            excluded = not keep
    return excluded


def gitignored_samples() -> list[str]:
    """For each .gitignore line, paths it ignores: at the root and, for a pattern without a slash (which
    git matches at any depth), deep inside a package too."""
    samples = []
    for line in (ROOT / ".gitignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        is_dir = line.endswith("/")
        name = line.strip("/").replace("*", "sample")
        leaf = f"{name}/file" if is_dir else name
        samples.append(leaf)
        if "/" not in line.strip("/"):
            samples.append(f"algorithms/remote/{leaf}")
    return samples


def test_both_dockerignore_files_are_one_and_the_same():
    """BuildKit reads docker/Dockerfile.dockerignore (next to the Dockerfile); other builders read the
    context root's .dockerignore. Either way the same paths must stay out."""
    assert (ROOT / ".dockerignore").read_text() == (DOCKER / "Dockerfile.dockerignore").read_text()


@pytest.mark.parametrize("ignore_file", [ROOT / ".dockerignore", DOCKER / "Dockerfile.dockerignore"],
                         ids=[".dockerignore", "Dockerfile.dockerignore"])
def test_the_build_context_leaves_out_secrets_and_everything_git_ignores(ignore_file):
    secrets = [".env", "docker/.env", "config/.env", "algorithms/remote_services.toml", ".conveyor/secret_key"]
    local = [".hypothesis/examples/x", ".pytest_cache/v/x", "conveyor.egg-info/PKG-INFO", "test-artifacts/x.log",
             "jobs/__pycache__/models.cpython-311.pyc", "dashboard/node_modules/x/index.js", ".venv/bin/python"]
    for path in secrets + local + gitignored_samples():
        assert dockerignored(path, ignore_file), path


def test_the_build_context_keeps_the_source_the_image_is_built_from():
    """Tracked files stay in, but for the folders the image has no use for (tests, benchmarks, docker/, CI)."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    tracked = [path for path in listed.stdout.splitlines() if (ROOT / path).exists()]
    assert "pyproject.toml" in tracked and "dashboard/package.json" in tracked
    left_out = [path for path in tracked if dockerignored(path)
                and not path.startswith(("tests/", "bench/", "docker/", ".ci/"))]
    assert not left_out, left_out


def test_compose_settings_live_in_a_git_ignored_env_file_next_to_the_compose_file(compose):
    """Every compose command needs the required variables (``${VAR:?}``), so they go in docker/.env, which
    Compose reads (the project directory is the first -f file's folder), git ignores, and the example
    lists; the README's compose commands use that file as written, with no key made inline."""
    text = (DOCKER / "compose.yaml").read_text()
    interpolated = set(re.findall(r"\$\{([A-Z0-9_]+)(?::?[-?+][^}]*)?\}", text))
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    assert {"SECRET_KEY", "FLOWER_BASIC_AUTH"} <= required
    assert {"POSTGRES_PASSWORD", "WEB_PORT", "FLOWER_PORT"} <= interpolated
    example = dict(line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert interpolated == set(example), interpolated ^ set(example)
    assert all(example[name] == "" for name in required)  # nothing that looks like a usable secret
    def git_ignores(path: str) -> bool:
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        if ignored.returncode == 128:
            pytest.skip("not a git checkout")
        return ignored.returncode == 0

    assert git_ignores("docker/.env") and git_ignores(".env") and not git_ignores("docker/.env.example")

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Production"):readme.index("## Configuration")]
    commands = [line for line in section.splitlines() if re.match(r"\s*docker compose\b", line)]
    assert len(commands) >= 3, commands
    for line in commands:
        assert line.split("#")[0].split()[:4] == ["docker", "compose", "-f", "docker/compose.yaml"], line
    assert "> docker/.env" in section
    assert not re.search(r"SECRET_KEY=\$\(", readme), "a SECRET_KEY made inline changes with every command"


def test_optional_packages_go_into_the_image_only_by_build_argument(compose):
    """S3 storage needs django-storages, which Conveyor's runtime does not depend on (it is the ``s3`` extra,
    which the tests install): EXTRA_PIP_PACKAGES (compose: from docker/.env) installs it under the same
    constraints, which pin it and boto3; by default nothing is added."""
    text = (DOCKER / "Dockerfile").read_text()
    build = text[text.index("AS build"):text.index("AS runtime")]
    assert 'ARG EXTRA_PIP_PACKAGES=""' in build
    assert "pip install -c constraints.txt $EXTRA_PIP_PACKAGES" in build
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if "storages" in d or "boto" in d]
    assert project["optional-dependencies"]["s3"] == ["django-storages[s3]==1.14.6"]
    pinned = (ROOT / "constraints.txt").read_text().split()
    assert "django-storages==1.14.6" in pinned and any(p.startswith("boto3==") for p in pinned)
    for name, service in compose["services"].items():
        if "build" in service:
            assert service["build"]["args"] == {"EXTRA_PIP_PACKAGES": "${EXTRA_PIP_PACKAGES:-}"}, name


def test_kubernetes_keeps_the_images_init_as_the_entrypoint():
    """The image's ENTRYPOINT is tini (a worker as PID 1 reaps no zombie: every stop of an external
    program waited out its grace). A container's ``command`` would replace it; ``args`` replace only CMD."""
    for doc, container in k8s_containers():
        assert "command" not in container and container["args"], (doc["_file"], container["name"])
