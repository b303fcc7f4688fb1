"""``make run`` as a newcomer uses it: scripts/run_local.py with no DATABASE_URL/REDIS_URL starts its
own PostgreSQL and Redis in a data folder, web, worker and beat; a task goes through over HTTP; SIGTERM
stops everything; a second start finds the same data and the same signing key (a login survives it).

About 30 s (initdb and the first migrate dominate). Runs the launcher as it is, so as root it also
checks that PostgreSQL runs as the unprivileged ``postgres`` user.
"""
from __future__ import annotations

import json
import os
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

        # when: a task is submitted over HTTP
        task = launcher.call("POST", "/api/v1/tasks/", {"algorithm": "demo.hello",
                                                        "params": {"seconds": 0.2, "steps": 2}}, token)

        # then: the worker started by the launcher runs it
        wait_until(lambda: launcher.call("GET", f"/api/v1/tasks/{task['id']}/", token=token)["status"] == "SUCCEEDED",
                   timeout=60, interval=0.2, message="the task to succeed")
        result = launcher.call("GET", f"/api/v1/tasks/{task['id']}/result/", token=token)
        assert result["result"]["greeting"] == "hello world"
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
