"""External programs whose worker died outright (``kill -9``, the OOM killer, a cold shutdown).

Each program runs in a process group of its own, so it outlives a worker killed that way. The adapter
records every running group in a small file (``<tmp>/conveyor-programs/<pgid>.json``: owner pid, task
id) and removes it when the program is stopped. When a worker starts on the machine, and at each of its
heartbeats after that (queueing/heartbeat.py), ``reap()`` kills the groups whose owner is gone (exited,
a zombie, or its pid now another process's). A process counts as a member only if its environment still says
``CONVEYOR_TASK_ID=<that task>``, so a recycled group id never hits an unrelated process.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

RUNTIME_DIR = Path(tempfile.gettempdir()) / "conveyor-programs"


def record(pgid: int, task_id: str) -> None:
    RUNTIME_DIR.mkdir(mode=0o700, exist_ok=True)
    owner = os.getpid()
    (RUNTIME_DIR / f"{pgid}.json").write_text(json.dumps(
        {"owner": owner, "owner_started": _started(owner), "task_id": task_id}))


def forget(pgid: int) -> None:
    (RUNTIME_DIR / f"{pgid}.json").unlink(missing_ok=True)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after "pid (comm)": state, ppid, pgrp, …; None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def _started(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None  # starttime, in clock ticks since boot


def _alive(pid: int, started: int | None) -> bool:
    """The worker process that recorded a group still runs: not gone, not a zombie (a killed pool child
    whose parent died with it waits for init to reap it), and not another process that got its pid."""
    fields = _stat(pid)
    if fields is None or fields[0] in {"Z", "X"}:
        return False
    return started is None or int(fields[19]) == started


def _members(pgid: int, task_id: str) -> list[int]:
    marker = f"CONVEYOR_TASK_ID={task_id}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat(int(entry.name))
            if fields is None or int(fields[2]) != pgid or fields[0] == "Z":
                continue
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
    return pids


def reap() -> list[int]:
    """SIGKILL the members of every recorded group whose worker is gone; returns the pids killed."""
    killed: list[int] = []
    for path in sorted(RUNTIME_DIR.glob("*.json")) if RUNTIME_DIR.exists() else []:
        try:
            record_ = json.loads(path.read_text())
            pgid, owner, task_id = int(path.stem), int(record_["owner"]), str(record_["task_id"])
            started = record_.get("owner_started")
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)
            continue
        if _alive(owner, started):
            continue
        for pid in _members(pgid, task_id):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        path.unlink(missing_ok=True)
        log.warning("killed %d leftover process(es) of task %s (group %d): its worker died", len(killed), task_id, pgid)
    return killed
