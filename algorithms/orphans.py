"""External programs whose worker died outright (``kill -9``, the OOM killer, a cold shutdown).

Each program runs in a session (and process group) of its own, so it outlives a worker killed that way.
The adapter records every running program in a small file (``<tmp>/conveyor-programs/<pgid>.json``: owner
pid, task id, the program's start time) and removes it when the program is stopped. When a worker starts
on the machine, and at each of its heartbeats after that (queueing/heartbeat.py), ``reap()`` kills what is
left of the programs whose owner is gone (exited, a zombie, or its pid now another process's).

Its members are the processes of its group and of its session (a child may move to a group of its own, as
``timeout`` does; one that starts a session of its own escapes, as from any supervisor). The session is
taken for the task's only while something in it shows it: a process whose environment still says
``CONVEYOR_TASK_ID=<that task>``, or the program itself (its pid and start time); an id in use is never
given to another process, so then every member is the task's, an ``env -i`` child included (and the record,
kept while any is left, says so for the next look). Otherwise (the id may be another program's by now)
nothing is killed, and the record is dropped, as nothing can claim it later: the program is gone for good
(a pid with its start time never comes back), and a process joins a session or group only as a member's
child, with the environment that member gives it, so none will carry the marker if no member does now. An
unmarked process of the task's (``env -i``) that outlived the program is then out of reach. Kept, the record
would cost a scan of /proc, at every heartbeat of every worker sharing the folder, for as long as something
uses the id (an unrelated long-lived session may, for months).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import stat
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

RUNTIME_DIR = Path(tempfile.gettempdir()) / "conveyor-programs"
KILL_WAIT = 1.0  # seconds reap() waits for the processes it killed to be gone, before it drops their record
_refused: str | None = None  # the last reason reap() could not use RUNTIME_DIR (logged once, not every heartbeat)


def record(pgid: int, task_id: str) -> None:
    """Note a running program (``OSError`` if it cannot be: the caller stops the program)."""
    try:
        RUNTIME_DIR.mkdir(mode=0o700)
    except FileExistsError:
        pass
    _check_folder()
    owner = os.getpid()
    (RUNTIME_DIR / f"{pgid}.json").write_text(json.dumps(
        {"owner": owner, "owner_started": _started(owner), "task_id": task_id, "started": _started(pgid)}))


def forget(pgid: int) -> None:
    """Drop the record of a program that was stopped (never raises: the reaper drops one left behind)."""
    try:
        (RUNTIME_DIR / f"{pgid}.json").unlink(missing_ok=True)
    except OSError as exc:  # the folder gone wrong meanwhile (record() said why, or will)
        log.warning("the record of external program %d could not be removed: %s", pgid, exc)


def _check_folder() -> None:
    """``RUNTIME_DIR`` must be a folder of this user's, not a link: in a shared /tmp another user may have made
    it first, to read the records or plant some (groups for the reaper to kill). One of ours that others may
    enter is closed to them."""
    info = RUNTIME_DIR.lstat()
    if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid():
        if info.st_mode & 0o077:
            RUNTIME_DIR.chmod(0o700)
        return
    what = ("a symbolic link" if stat.S_ISLNK(info.st_mode) else "a file" if not stat.S_ISDIR(info.st_mode)
            else f"a folder of uid {info.st_uid}")
    raise OSError(f"{RUNTIME_DIR} is {what}, not a folder of this user's (uid {os.getuid()}): remove it, or "
                  "give the worker a TMPDIR of its own")


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after "pid (comm)": state, ppid, pgrp, session, …; None when gone.
    Read as bytes: a process may name itself (its comm) in anything but UTF-8."""
    try:
        stat_ = Path(f"/proc/{pid}/stat").read_bytes().decode(errors="replace")
    except OSError:
        return None
    return stat_[stat_.rindex(")") + 2:].split()


def _started(pid: int) -> int | None:
    fields = proc_stat(pid)
    return int(fields[19]) if fields else None  # starttime, in clock ticks since boot


def _alive(pid: int, started: int | None) -> bool:
    """The worker process that recorded a group still runs: not gone, not a zombie (a killed pool child
    whose parent died with it waits for init to reap it), and not another process that got its pid."""
    fields = proc_stat(pid)
    if fields is None or fields[0] in {"Z", "X"}:
        return False
    return started is None or int(fields[19]) == started


def members(pgid: int) -> list[int]:
    """The processes of the program started as ``pgid`` (its pid, process group and session id are one), in
    its group or its session, that still run. A zombie is none: it is dead, only not yet reaped, which may
    take long (a worker running as PID 1 with no init to reap them) or never happen."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = proc_stat(int(name))
        try:
            if fields and fields[0] not in {"Z", "X"} and pgid in (int(fields[2]), int(fields[3])):
                pids.append(int(name))
        except (ValueError, IndexError):
            continue
    return pids


def _claimed(pids: list[int], pgid: int, task_id: str, started: int | None) -> bool:
    """Something among ``pids`` shows the session is still the task's: the program itself, or a process
    whose environment says so."""
    if pgid in pids and started is not None and _started(pgid) == started:
        return True
    marker = f"CONVEYOR_TASK_ID={task_id}".encode()
    for pid in pids:
        try:
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return True
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return False


def _kill_all(pgid: int, pids: list[int]) -> tuple[list[int], list[int]]:
    """SIGKILL ``pids``, and what joins them meanwhile (a child forked before its parent died), until none is
    left or ``KILL_WAIT`` has passed: (the pids killed, those still there)."""
    killed: list[int] = []
    deadline = time.monotonic() + KILL_WAIT
    while pids and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                if pid not in killed:
                    killed.append(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
        pids = members(pgid)
    return killed, pids


def reap() -> list[int]:
    """SIGKILL the members of every recorded program whose worker is gone; returns the pids killed."""
    global _refused
    if not RUNTIME_DIR.exists() and not RUNTIME_DIR.is_symlink():
        return []
    try:
        _check_folder()
    except OSError as exc:
        if str(exc) != _refused:
            log.warning("orphaned external programs are not looked for: %s", exc)
        _refused = str(exc)
        return []
    killed: list[int] = []
    for path in sorted(RUNTIME_DIR.glob("*.json")):
        try:
            record_ = json.loads(path.read_text())
            pgid, owner, task_id = int(path.stem), int(record_["owner"]), str(record_["task_id"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if _alive(owner, record_.get("owner_started")):
            continue
        left = members(pgid)
        claimed = bool(left) and (record_.get("claimed") or _claimed(left, pgid, task_id, record_.get("started")))
        if claimed:
            group_killed, left = _kill_all(pgid, left)
            killed += group_killed
            if group_killed:
                log.warning("killed %d leftover process(es) of task %s (group %d): its worker died",
                            len(group_killed), task_id, pgid)
        if not left or not claimed:  # gone, or not the task's (and never to be again: see the module's docstring)
            path.unlink(missing_ok=True)
        elif not record_.get("claimed"):  # the next look kills the rest, marked or not
            path.write_text(json.dumps({**record_, "claimed": True}))
    return killed
