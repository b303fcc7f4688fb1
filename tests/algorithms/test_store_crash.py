"""A worker killed while it stores a file leaves nothing behind for ever: with the default DatabaseStorage the
file and its row are one transaction (a process killed between the two leaves neither), the hourly sweep
deletes old files under tasks/ that no live row names (other storages, files left before), and a worker
starting on the machine removes the scratch directories of runs whose process is gone."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import override_settings
from django.utils import timezone

from algorithms import results
from algorithms.context import Scratch, reap_scratch
from algorithms.models import Artifact, StoredFile
from algorithms.orphans import _started
from tests.algorithms.test_artifact_ownership import claimed, submitted
from tests.conftest import ROOT, subprocess_env

pytestmark = pytest.mark.django_db(transaction=True)

# Runs in a process of its own that SIGKILLs itself right after the file is written, before its row
# (the moment a worker's process group was killed in the reported case): no handler, no finally runs.
KILLED_WHILE_STORING = textwrap.dedent("""
    import os, signal, sys
    import django
    django.setup()
    from algorithms.artifacts import ArtifactStore
    from algorithms.context import Scratch
    from jobs.models import Task

    def killed(self):
        os.kill(os.getpid(), signal.SIGKILL)

    ArtifactStore._hold_claim = killed
    task = Task.objects.get(id=sys.argv[1])
    store = ArtifactStore(task_id=str(task.id), attempt=task.attempts, claimed_at=task.started_at,
                          scratch=Scratch(f"conveyor-{task.id}-"))
    with store.open("big.bin") as out:
        for _ in range(3):
            out.write(os.urandom(1 << 20))
""")


def strays() -> list[tuple[str, int]]:
    """What an operator's query shows: stored files no artifact row names."""
    names = set(Artifact.objects.values_list("storage_name", flat=True))
    return [(f.name, f.size) for f in StoredFile.objects.all() if f.name not in names]


def test_a_worker_killed_between_storing_a_file_and_its_row_leaves_no_file_and_its_scratch_goes(alice, tmp_path):
    task = claimed(submitted(alice, "demo.noop").id)
    env = {**subprocess_env(), "TMPDIR": str(tmp_path)}

    proc = subprocess.run([sys.executable, "-c", KILLED_WHILE_STORING, str(task.id)], cwd=ROOT, env=env,
                          capture_output=True, timeout=120)

    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert not Artifact.objects.filter(task=task).exists()
    assert strays() == []  # no 3 MiB StoredFile with its chunks and no row, for ever
    left = list(tmp_path.glob(f"conveyor-{task.id}-*"))
    assert len(left) == 1 and any(left[0].iterdir())  # its spool stays on disk: a SIGKILL skips every finally

    assert reap_scratch(tmp_path) == left  # a worker starting on the machine removes it
    assert not left[0].exists()


def test_reaping_scratch_keeps_a_live_process_directory_and_one_that_names_no_owner(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    live = Scratch("conveyor-live-")
    path = live.path
    assert path.name.startswith(f"conveyor-live-w{os.getpid()}.{_started(os.getpid())}-")
    recycled = tmp_path / f"conveyor-recycled-w{os.getpid()}.{_started(os.getpid()) + 1}-abc_123"
    recycled.mkdir()  # this pid, another start time: the owner died and the pid went to this process
    unowned = tmp_path / "conveyor-0b5c2b4e-8b6f-4b8e-9a55-2f1f0c1a8f00-abcd1234"
    unowned.mkdir()  # the name of a run made before names said whose they were
    other = tmp_path / "something-w1.1-else"
    other.mkdir()

    assert reap_scratch(tmp_path) == [recycled]
    assert path.is_dir() and unowned.is_dir() and other.is_dir()
    live.remove()


def _backdate(name: str, hours: float) -> None:
    StoredFile.objects.filter(name=name).update(created_at=timezone.now() - timedelta(hours=hours))


def test_the_sweep_deletes_old_database_files_no_live_row_names_and_nothing_else(alice):
    task = submitted(alice, "demo.noop")
    save = default_storage.save
    orphan = save(f"tasks/{task.id}/1/file-orphan", ContentFile(b"x" * 3000))
    young = save(f"tasks/{task.id}/1/file-young", ContentFile(b"y"))
    named = save(f"tasks/{task.id}/1/file-named", ContentFile(b"z"))
    expired = save(f"tasks/{task.id}/1/file-expired", ContentFile(b"e"))
    odd = save("tasks/not-a-task/1/file-odd", ContentFile(b"o"))
    outside = save("elsewhere/file", ContentFile(b"w"))
    Artifact.objects.create(task=task, name="named", storage_name=named, sha256="0" * 64)
    Artifact.objects.create(task=task, name="expired", storage_name=expired, sha256="0" * 64,
                            expired_at=timezone.now())  # retention marked it, its deletion failed
    for name in (orphan, named, expired, odd, outside):
        _backdate(name, 2)
    _backdate(young, 0.5)  # could be a write whose row is about to be recorded

    assert results.sweep_strays(batch=2) == {"files": 2}  # bounded: the next sweep takes the rest
    assert results.sweep_strays() == {"files": 1}
    assert results.sweep_strays() == {"files": 0}

    assert set(StoredFile.objects.values_list("name", flat=True)) == {young, named, outside}


def test_the_sweep_walks_a_filesystem_storage(alice, tmp_path):
    task = submitted(alice, "demo.noop")
    with override_settings(STORAGES={"default": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                                                  "OPTIONS": {"location": str(tmp_path)}},
                                     "staticfiles": {"BACKEND": "django.core.files.storage.FileSystemStorage"}}):
        orphan = default_storage.save(f"tasks/{task.id}/1/file-orphan", ContentFile(b"o"))
        young = default_storage.save(f"tasks/{task.id}/1/file-young", ContentFile(b"y"))
        named = default_storage.save(f"tasks/{task.id}/2/result-named", ContentFile(b"n"))
        Artifact.objects.create(task=task, name="named", storage_name=named, sha256="0" * 64)
        old = (timezone.now() - timedelta(hours=2)).timestamp()
        for name in (orphan, named):
            os.utime(default_storage.path(name), (old, old))

        assert results.sweep_strays() == {"files": 1}

        assert not default_storage.exists(orphan)
        assert default_storage.exists(young) and default_storage.exists(named)


def test_the_sweep_runs_on_beat():
    from config.celery import app

    entry = app.conf.beat_schedule["sweep-strays"]
    assert entry["task"] == "algorithms.sweep_strays" and entry["schedule"] == 3600.0
    import algorithms.tasks  # noqa: F401  (what the worker's autodiscovery imports)
    assert "algorithms.sweep_strays" in app.tasks
