"""An external program's processes and pipes over its life: stopped at once where nobody reaps zombies (a
worker as PID 1, with no init), its output held back at a bound (the program waits on its pipe), a daemon
of its own session holding the pipes of a program that has finished, children that moved to a process
group of their own, and the records of the orphan reaper (``algorithms.orphans``)."""
from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from algorithms import orphans, process
from tests.conftest import unconsumed_queue, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

PROGRAMS = Path(__file__).resolve().parent / "programs"
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


@pytest.fixture(autouse=True)
def own_registry(monkeypatch):
    """Each test declares its own ``life.program``; the first declaration of a name would keep it."""
    from algorithms import registry

    monkeypatch.setattr(registry, "_registry", dict(registry._registry))


def stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after "pid (comm)": state, ppid, pgrp, session…; None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that may never come counts as gone)."""
    fields = stat(pid)
    return fields is not None and fields[0] not in {"Z", "X"}


def in_session(sid: int) -> list[int]:
    """The live processes of session ``sid``, whatever their process group."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and (f := stat(int(p))) and f[0] not in {"Z", "X"}
            and int(f[3]) == sid]


def marked(task_id: str) -> list[int]:
    """The live processes whose environment says ``CONVEYOR_TASK_ID=<task_id>``."""
    found = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            if f"CONVEYOR_TASK_ID={task_id}".encode() in Path(f"/proc/{p}/environ").read_bytes().split(b"\0"):
                found.append(int(p))
        except OSError:
            continue
    return [pid for pid in found if alive(pid)]


def kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_in_process(alice, tmp_path, argv: list[str], timeout: int = 20):
    """Declare ``argv`` as an external algorithm and run one task of it in this process: (outcome, task id)."""
    from algorithms import external
    from jobs import execution, runner, services
    from jobs.models import Status, Task

    (tmp_path / "x.toml").write_text(textwrap.dedent(f"""
        [[algorithm]]
        name = "life.program"
        argv = {json.dumps(argv)}
        timeout_seconds = {timeout}
    """))
    external.register_file(tmp_path / "x.toml")
    spec = services.build_spec(algorithm="life.program", params={}, queue=unconsumed_queue())
    task, _ = services.submit(owner=alice, spec=spec)
    Task.objects.filter(id=task.id).update(status=Status.QUEUED)
    return runner.run(execution.claim(task_id=task.id, worker="w-1")), str(task.id)


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("conveyor program ")]


# --- A: a zombie is not a process to wait for ----------------------------------------------------------

@pytest.fixture
def subreaper():
    """This process adopts the orphans of its descendants and, like a worker running as PID 1 with no init,
    never reaps them: they stay zombies. Yields the list to put the pids of such zombies in (reaped after)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip(f"prctl(PR_SET_CHILD_SUBREAPER) refused: {os.strerror(ctypes.get_errno())}")
    zombies: list[int] = []
    try:
        yield zombies
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        for pid in zombies:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def test_a_group_left_with_only_zombies_nobody_reaps_is_stopped_at_once(subreaper):
    """The program's child has exited, and the program dies on SIGTERM: its child, now this process's (as
    it would be PID 1's), stays a zombie. That is no process left to stop: no wait for the grace period and
    a SIGKILL (which ended cancels as "did not stop within 2s and was terminated")."""
    source = "import os, time\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nprint(pid, flush=True)\ntime.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", source], stdout=subprocess.PIPE, start_new_session=True)
    child = int(proc.stdout.readline())
    subreaper.append(child)
    try:
        wait_until(lambda: stat(child)[0] == "Z", message="the program's child to be a zombie")

        started = time.monotonic()
        process._stop_group(process._Group(proc), 5.0)
        took = time.monotonic() - started

        assert proc.returncode == -signal.SIGTERM
        assert stat(child)[0] == "Z" and int(stat(child)[2]) == proc.pid  # still in the group, unreaped
        assert orphans.members(proc.pid) == []
        assert took < 2.5, f"_stop_group took {took:.1f}s with a grace of 5s"
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


# --- B: output back-pressure ---------------------------------------------------------------------------

def test_the_readers_hold_a_bounded_amount_of_output_and_the_program_waits_on_its_pipe():
    """20 MiB of short lines while nobody takes them: the queue fills to its bound and stays there, and
    the program, blocked on its pipe, runs until they are taken."""
    proc = subprocess.Popen([sys.executable, str(PROGRAMS / "flood.py"), "20", "100", "stderr"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines = process._Lines(process.QUEUED_MAX)
    closing, gone = threading.Event(), threading.Event()
    reader = threading.Thread(target=process._pump, args=(proc.stderr, "stderr", lines, closing, gone))
    reader.start()
    try:
        wait_until(lambda: lines.qsize() >= process.QUEUED_MAX - 200, message="the queue to fill")
        held = lines.qsize()
        time.sleep(0.5)
        assert lines.qsize() == held <= process.QUEUED_MAX + 100  # nothing more read meanwhile
        assert proc.poll() is None  # the program waits on its pipe: 20 MiB fits in neither

        taken = 0
        while (item := lines.get(timeout=10))[1] is not None:
            assert item == ("stderr", "y" * 99)
            taken += 1
        assert taken == 20 * 1024 * 1024 // 100 and proc.wait(timeout=10) == 0
    finally:
        gone.set()
        proc.kill()
        reader.join(timeout=10)
        proc.wait()
        proc.stderr.close()


def rss_kib() -> int:
    return int(next(line for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmRSS:")).split()[1])


def test_a_program_flooding_its_output_succeeds_and_the_worker_holds_little_of_it(alice, tmp_path, monkeypatch):
    """Before output was bounded, the worker held whatever the program wrote faster than it was taken (a
    30 MB flood of short lines grew a pool child to 815 MB). Here each line is taken slowly, as a busy
    database has the adapter do."""
    handle = process._handle
    monkeypatch.setattr(process, "_handle", lambda *args: (time.sleep(0.0001), handle(*args))[1])
    peak, done = [rss_kib()], threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak.append(rss_kib())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        outcome, _ = run_in_process(alice, tmp_path, [sys.executable, str(PROGRAMS / "flood.py"), "40", "2048"],
                                    timeout=120)
    finally:
        done.set()
        sampler.join()

    assert outcome.status == "SUCCEEDED", outcome.error
    assert outcome.result == {"flooded": 40}
    grown = (max(peak) - peak[0]) / 1024
    assert grown < 20, f"the process grew by {grown:.0f} MiB taking a 40 MiB flood"


# --- C: a daemon of its own session holding the pipes ---------------------------------------------------

def test_a_daemon_holding_the_pipes_of_a_finished_program_neither_hangs_the_task_nor_keeps_its_pipes(alice, tmp_path):
    outcome, task_id = run_in_process(alice, tmp_path, ["/bin/sh", str(PROGRAMS / "daemon_keeps_pipes.sh")], timeout=15)
    try:
        assert outcome.status == "SUCCEEDED", outcome.error
        daemon = outcome.result["daemon"]
        assert alive(daemon)  # a session of its own: out of reach, as documented
        held = {os.readlink(f"/proc/{daemon}/fd/{fd}") for fd in (1, 2)}
        assert all(link.startswith("pipe:") for link in held), held
        mine = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                mine.add(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass
        assert not held & mine, "the worker still holds the program's pipes"
        assert not reader_threads()
    finally:
        kill(marked(task_id))


# --- D: children in a process group of their own ---------------------------------------------------------

def test_a_child_that_moved_to_a_group_of_its_own_is_stopped_when_the_program_exits(alice, tmp_path):
    outcome, task_id = run_in_process(alice, tmp_path, ["/bin/sh", str(PROGRAMS / "own_group_child.sh")])
    try:
        assert outcome.status == "SUCCEEDED", outcome.error
        session, child = outcome.result["session"], outcome.result["child"]
        wait_until(lambda: not in_session(session), timeout=10, message=f"session {session} to be empty")
        assert not alive(child)
    finally:
        kill(marked(task_id))


def orphaned_record(folder: Path, pgid: int, task_id: str, **extra) -> Path:
    """A record whose worker is gone: its pid is now another process's (this one's, started later)."""
    path = folder / f"{pgid}.json"
    path.write_text(json.dumps({"owner": os.getpid(), "owner_started": orphans._started(os.getpid()) - 1,
                                "task_id": task_id, **extra}))
    return path


def test_the_reaper_stops_a_dead_workers_whole_session_and_logs_each_groups_count(tmp_path, monkeypatch, caplog):
    """Its children in other groups (``timeout``), and one whose environment was cleaned (``env -i``):
    the session is the task's, as the marked program in it shows. Each group's own count is logged."""
    monkeypatch.setattr(orphans, "RUNTIME_DIR", tmp_path)
    tree = ("env -i /bin/sleep 60 & timeout 60 sleep 60 </dev/null >/dev/null 2>&1 & exec sleep 60")
    programs = [subprocess.Popen(["/bin/sh", "-c", script], start_new_session=True,
                                 env={**os.environ, "CONVEYOR_TASK_ID": task})
                for script, task in ((tree, "task-a"), ("exec sleep 60", "task-b"))]
    try:
        wait_until(lambda: len(in_session(programs[0].pid)) == 4, message="the program's three children")
        members = {p.pid: in_session(p.pid) for p in programs}
        for p, task in zip(programs, ("task-a", "task-b")):
            orphaned_record(tmp_path, p.pid, task, started=orphans._started(p.pid))

        with caplog.at_level(logging.WARNING, logger="algorithms.orphans"):
            killed = orphans.reap()

        assert sorted(killed) == sorted(members[programs[0].pid] + members[programs[1].pid])
        assert not in_session(programs[0].pid) and not in_session(programs[1].pid)
        assert list(tmp_path.iterdir()) == []
        said = sorted(r.getMessage() for r in caplog.records if "leftover" in r.getMessage())
        assert said == [f"killed 1 leftover process(es) of task task-b (group {programs[1].pid}): its worker died",
                        f"killed 4 leftover process(es) of task task-a (group {programs[0].pid}): its worker died"]
    finally:
        for p in programs:
            kill(in_session(p.pid))
            p.wait()


def test_the_reaper_drops_a_record_it_cannot_claim_and_kills_nothing(tmp_path, monkeypatch):
    """The program has exited and left only a child whose environment was cleaned: nothing says the session
    is still the task's (its id may be another's by now), so nothing is killed; and nothing ever will (what
    joins the session later is that child's), so the record goes at once, not once the child is gone."""
    monkeypatch.setattr(orphans, "RUNTIME_DIR", tmp_path)
    program = subprocess.Popen(["/bin/sh", "-c", "env -i /bin/sleep 60 & echo $!"], stdout=subprocess.PIPE,
                               start_new_session=True, env={**os.environ, "CONVEYOR_TASK_ID": "task-c"})
    child = int(program.stdout.readline())
    started = orphans._started(program.pid)
    program.wait()
    program.stdout.close()
    try:
        record = orphaned_record(tmp_path, program.pid, "task-c", started=started)

        assert orphans.reap() == []
        assert alive(child) and not record.exists()
    finally:
        kill([child])


def test_a_record_already_claimed_has_its_unmarked_leftovers_killed(tmp_path, monkeypatch):
    """A look that claimed the session (the program, or a marked process, in it) and could not kill all of it
    marks the record: the next look kills what is left, an ``env -i`` child included."""
    monkeypatch.setattr(orphans, "RUNTIME_DIR", tmp_path)
    program = subprocess.Popen(["/bin/sh", "-c", "env -i /bin/sleep 60 & echo $!"], stdout=subprocess.PIPE,
                               start_new_session=True, env={**os.environ, "CONVEYOR_TASK_ID": "task-e"})
    child = int(program.stdout.readline())
    program.wait()
    program.stdout.close()
    try:
        record = orphaned_record(tmp_path, program.pid, "task-e", claimed=True)

        assert orphans.reap() == [child]
        assert not alive(child) and not record.exists()
    finally:
        kill([child])


def test_a_record_whose_id_an_unrelated_session_holds_now_is_dropped_and_the_session_left_alone(tmp_path,
                                                                                               monkeypatch):
    """The program is long gone and its id leads another session (its start time is not the record's): the
    record was kept for as long as that session lived, a scan of /proc and reads of its environment at every
    heartbeat of every worker sharing the folder. It goes at the first look, and the session runs on."""
    monkeypatch.setattr(orphans, "RUNTIME_DIR", tmp_path)
    other = subprocess.Popen(["setsid", "sleep", "60"])  # setsid(1) runs sleep as the session's leader
    try:
        wait_until(lambda: in_session(other.pid) == [other.pid], message="the unrelated session")
        record = orphaned_record(tmp_path, other.pid, "task-d", started=orphans._started(other.pid) - 100)

        assert orphans.reap() == []
        assert not record.exists()
        assert alive(other.pid) and stat(other.pid)[0] != "T"
    finally:
        other.kill()
        other.wait()


# --- the program's group after it exited ---------------------------------------------------------------

def test_once_the_programs_group_is_seen_empty_its_id_is_neither_looked_for_nor_signalled_again(
        alice, tmp_path, monkeypatch):
    """The program exits and leaves nothing: its group and session are looked for once (a full /proc scan).
    They were again, three more times, after its output was drained and logged, and signalled: by then the
    id may be another program's (each leads a session of its own). Here any later look for it finds an
    unrelated session, as it would after the id was reused; it is never signalled."""
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    looks: list[tuple[int, list[int]]] = []
    members = orphans.members

    def seam(pgid: int) -> list[int]:
        found = [other.pid] if any(not pids for _, pids in looks) else members(pgid)
        looks.append((pgid, found))
        return found

    monkeypatch.setattr(orphans, "members", seam)
    try:
        outcome, _ = run_in_process(alice, tmp_path, ["/bin/sh", "-c", """echo '{"result": 1}'"""])

        assert outcome.status == "SUCCEEDED", outcome.error
        assert [pids for _, pids in looks] == [[]]
        assert alive(other.pid) and stat(other.pid)[0] != "T"
    finally:
        other.kill()
        other.wait()


def test_a_reaped_programs_group_is_never_signalled_as_a_group(alice, tmp_path, monkeypatch):
    """It leaves a child in its session, in a group of its own (``timeout``): its own group is empty, and
    ``killpg`` on its id would reach whatever group takes that id next. Only the processes found are
    signalled, each by its pid, and they are gone when the task ends."""
    killpg = os.killpg
    sent: list[tuple[int, bool]] = []  # (the id, whether the program was still unreaped then)

    def seam(pgid: int, sig: int) -> None:
        sent.append((pgid, Path(f"/proc/{pgid}").exists()))
        killpg(pgid, sig)

    monkeypatch.setattr(process.os, "killpg", seam)
    outcome, task_id = run_in_process(alice, tmp_path, ["/bin/sh", str(PROGRAMS / "own_group_child.sh")])
    try:
        assert outcome.status == "SUCCEEDED", outcome.error
        assert [pgid for pgid, unreaped in sent if not unreaped] == []
        wait_until(lambda: not in_session(outcome.result["session"]), timeout=10, message="its session empty")
        assert not alive(outcome.result["child"])
    finally:
        kill(marked(task_id))


# --- E: the record of a running program -----------------------------------------------------------------

def test_a_program_that_cannot_be_recorded_is_stopped_and_its_task_fails_saying_why(alice, tmp_path, monkeypatch):
    blocker = tmp_path / "conveyor-programs"
    blocker.write_text("not a folder")
    monkeypatch.setattr(orphans, "RUNTIME_DIR", blocker)

    outcome, task_id = run_in_process(alice, tmp_path, ["/bin/sleep", "60"])
    try:
        assert outcome.status == "FAILED"
        assert f"{blocker} is a file, not a folder of this user's" in outcome.error, outcome.error
        assert not marked(task_id)  # not left running unsupervised
    finally:
        kill(marked(task_id))


def test_the_record_folder_must_be_this_users_own_folder(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "link"
    link.symlink_to(elsewhere)
    monkeypatch.setattr(orphans, "RUNTIME_DIR", link)
    with pytest.raises(OSError, match="is a symbolic link, not a folder of this user's"):
        orphans.record(1, "task-x")
    assert orphans.reap() == [] and list(elsewhere.iterdir()) == []

    folder = tmp_path / "shared"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    monkeypatch.setattr(orphans, "RUNTIME_DIR", folder)
    orphans.record(1, "task-x")
    assert (folder.stat().st_mode & 0o777) == 0o700 and [p.name for p in folder.iterdir()] == ["1.json"]

    monkeypatch.setattr(orphans.os, "getuid", lambda: os.geteuid() + 1)
    with pytest.raises(OSError, match=rf"is a folder of uid {os.geteuid()}, not a folder of this user's"):
        orphans.record(2, "task-x")
