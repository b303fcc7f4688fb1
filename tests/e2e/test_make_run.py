"""``make run`` as a newcomer uses it: scripts/run_local.py with no DATABASE_URL/REDIS_URL starts its
own PostgreSQL and Redis in a data folder, web, worker and beat; a task goes through over HTTP; SIGTERM
stops everything; a second start finds the same data and the same signing key (a login survives it).

About 30 s (initdb and the first migrate dominate). Runs the launcher as it is, so as root it also
checks that PostgreSQL runs as the unprivileged ``postgres`` user.
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import settings as test_settings
from tests.conftest import ARTIFACTS, ROOT, wait_until

pytestmark = pytest.mark.e2e

USER, PASSWORD = "launcher-admin", "launcher password 123"
# The test session's services and short timings (tests/settings.py put them in os.environ); the
# launcher must see none of it: it runs with make run's defaults. (A sub-second beat interval, stored by
# the database scheduler as a whole number of seconds, would even become "every 0 s".)
SCRUBBED = set(test_settings._DEFAULTS) | {
    "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CHANNEL_REDIS_URL", "DJANGO_SETTINGS_MODULE",
    "CONVEYOR_DATA_DIR", "PORT", "DEBUG", "LOG_FORMAT"}


def _load_launcher() -> Any:
    spec = importlib.util.spec_from_file_location("run_local", ROOT / "scripts" / "run_local.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


run_local = _load_launcher()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Launcher:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = ARTIFACTS / f"make-run-{os.getpid()}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_offset = 0

    def start(self) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
        env.update(DJANGO_SUPERUSER_USERNAME=USER, DJANGO_SUPERUSER_PASSWORD=PASSWORD)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "scripts/run_local.py", "--port", str(self.port), "--data-dir", str(self.data_dir)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self._up, timeout=120, interval=0.2, message=f"make run to come up (log: {self.log_path})")

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"run_local.py exited with {self.proc.returncode}:\n{self.log_path.read_text()[-4000:]}")
        return b"Press Ctrl-C" in self.log_path.read_bytes()[self.log_offset:]

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(90)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc = None

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        request = urllib.request.Request(f"{self.base}{path}", method=method,
                                         data=None if body is None else json.dumps(body).encode())
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def token(self) -> str:
        return self.call("POST", "/api/v1/auth/token/", {"username": USER, "password": PASSWORD})["access"]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Under /tmp (not pytest's 0700 tmp_path) so that, run as root, the postgres user can reach it.
    path = Path(tempfile.mkdtemp(prefix="conveyor-make-run-"))
    path.chmod(0o755)
    yield path / "data"
    shutil.rmtree(path, ignore_errors=True)


def test_make_run_serves_a_task_on_embedded_servers_and_keeps_it_across_a_restart(data_dir: Path) -> None:
    launcher = Launcher(data_dir)
    try:
        # given: a first start on an empty data folder
        launcher.start()
        token = launcher.token()
        names = [a["name"] for a in launcher.call("GET", "/api/v1/algorithms/", token=token)]
        assert "demo.hello" in names

        # and: the banner names the API's docs, not /api/v1/ (a 404), and the CLI's base URL
        banner = launcher.log_path.read_text()[launcher.log_offset:]
        assert f"{launcher.base}/api/docs/" in banner and f"{launcher.base}/api/v1/\n" not in banner
        assert f"CONVEYOR_URL={launcher.base} " in banner

        # when: a task is submitted over HTTP
        task = launcher.call("POST", "/api/v1/tasks/", {"algorithm": "demo.hello",
                                                        "params": {"seconds": 0.2, "steps": 2}}, token)

        # then: the worker started by the launcher runs it
        wait_until(lambda: launcher.call("GET", f"/api/v1/tasks/{task['id']}/", token=token)["status"] == "SUCCEEDED",
                   timeout=60, interval=0.2, message="the task to succeed")
        result = launcher.call("GET", f"/api/v1/tasks/{task['id']}/result/", token=token)
        assert result["result"]["greeting"] == "hello world"
        # and: its output has one line per request (ours, not daphne's access log too), and none of the
        # periodic tasks' every-2-seconds lines, while the task's own still show
        output = launcher.log_path.read_text()[launcher.log_offset:]
        assert '"GET /api/v1/algorithms/" 200' not in output and "path=/api/v1/algorithms/" in output
        assert "Sending due task" not in output and "queueing.dispatch_tick[" not in output
        assert re.search(r"Task jobs\.run_tasks?\[[\w-]+\] succeeded", output), output[-4000:]
        pg = data_dir / "postgres"
        if os.geteuid() == 0:
            assert pg.stat().st_uid != 0, "PostgreSQL data must belong to an unprivileged user"
        postmaster_pid = int((pg / "postmaster.pid").read_text().split()[0])
        assert launcher.stop() == 0
        assert not (pg / "postmaster.pid").exists(), "PostgreSQL was not shut down cleanly"
        with pytest.raises(ProcessLookupError):
            os.kill(postmaster_pid, 0)

        # and: the signing key is a random one kept in the data folder, for this user only; the shell file
        # gives a second shell that same key without holding it
        key = (data_dir / "secret_key").read_text().strip()
        assert len(key) >= 50 and (data_dir / "secret_key").stat().st_mode & 0o777 == 0o600
        shell_env = (data_dir / "env").read_text()
        assert "CONVEYOR_DEV=1" in shell_env and f"CONVEYOR_DATA_DIR={data_dir}" in shell_env
        assert key not in shell_env
        shell = subprocess.run(
            ["bash", "-c", 'source "$1" && "$2" -c "import config.settings as s; print(s.SECRET_KEY)"', "-",
             str(data_dir / "env"), sys.executable],
            cwd=ROOT, env={k: v for k, v in os.environ.items() if k not in SCRUBBED}, capture_output=True, text=True)
        assert shell.returncode == 0 and shell.stdout.strip() == key, shell.stderr

        # and: a second start finds the task and its result again, and the token of the first still works
        launcher.start()
        again = launcher.call("GET", f"/api/v1/tasks/{task['id']}/result/", token=token)
        assert again["result"] == result["result"]
        assert (data_dir / "secret_key").read_text().strip() == key
        assert launcher.stop() == 0
    finally:
        if launcher.proc is not None:
            launcher.stop()


BASE = "http://127.0.0.1:8000"


def test_the_banner_points_at_the_api_docs_and_gives_the_clis_base_url() -> None:
    prepared = run_local.Prepared(["default"], "admin", [("Dashboard", "/dashboard/"), ("API docs", "/api/docs/")])
    text = run_local.banner(base=BASE, prepared=prepared, concurrency=2, lines=[], env_file=None)
    urls = re.findall(r"https?://[^\s'\\]+", text)
    assert f"{BASE}/api/docs/" in urls
    assert f"{BASE}/api/v1/" not in urls  # no page: GET /api/v1/ is a 404
    assert f"CONVEYOR_URL={BASE} " in text


# What beat and the worker write (LOG_FORMAT=console, and json) for a periodic task, a failed one, and a task
# someone submitted.
TICK = "Task queueing.dispatch_tick[3a3923fd-dcb1-4c61-9c1e-e98266497a92]"
NOISE = [
    "2026-12-02T00:53:20.088841Z [info     ] Scheduler: Sending due task dispatch-tick (queueing.dispatch_tick) "
    "[celery.beat] request_id=None task_id=None user=None",
    f"2026-12-02T00:53:20.092816Z [info     ] {TICK} received [celery.worker.strategy] data={{}}",
    f"2026-12-02T00:53:20.095177Z [info     ] {TICK} succeeded in 0.0015s: 0 [celery.app.trace] data={{}}",
    json.dumps({"event": f"{TICK} succeeded in 0.0015s: 0", "level": "info", "logger": "celery.app.trace"}),
]
KEPT = [
    f"2026-12-02T00:53:20.095177Z [error    ] {TICK} raised unexpected: OperationalError('down') [celery.app.trace]",
    "2026-12-02T00:53:21.000000Z [info     ] Task jobs.run_task[80cf972b-5018-4312-b8a3-2512a69517f3] received "
    "[celery.worker.strategy]",
    "2026-12-02T00:53:22.000000Z [info     ] Task jobs.run_task[80cf972b-5018-4312-b8a3-2512a69517f3] succeeded "
    "in 1.2s: None [celery.app.trace]",
    "2026-12-02T00:53:23.000000Z [warning  ] reaped 1 stale RUNNING tasks [queueing.reconciler]",
]


def test_the_periodic_tasks_routine_lines_are_not_shown_but_their_failures_are(capsys) -> None:
    child = run_local.Child("worker", ["true"], env={},
                            quiet=run_local.periodic_noise({"queueing.dispatch_tick", "queueing.reconcile"}))
    child._pump(io.BytesIO("".join(f"{line}\n" for line in NOISE + KEPT).encode()))
    assert capsys.readouterr().out.splitlines() == [f"worker  | {line}" for line in KEPT]
