"""On a file-system storage, deleting a task's files deletes the folders they leave empty (``tasks/<id>/
<attempt>/``): they stayed for ever, two a task, walked by the hourly stray sweep until the inodes ran out."""
from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import override_settings

from algorithms.artifacts import delete_file
from algorithms.models import Artifact
from tests.algorithms.test_store_crash import submitted

pytestmark = pytest.mark.django_db


def test_a_tasks_folders_go_with_its_last_file(alice, tmp_path):
    task = submitted(alice, "demo.noop")
    with override_settings(STORAGES={"default": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                                                  "OPTIONS": {"location": str(tmp_path)}},
                                     "staticfiles": {"BACKEND": "django.core.files.storage.FileSystemStorage"}}):
        first = default_storage.save(f"tasks/{task.id}/1/log.txt", ContentFile(b"a"))
        second = default_storage.save(f"tasks/{task.id}/2/result.json", ContentFile(b"b"))
        rows = [Artifact.objects.create(task=task, name=name.rsplit("/", 1)[1], storage_name=name, sha256="0" * 64)
                for name in (first, second)]

        delete_file(rows[0])
        assert not (tmp_path / "tasks" / str(task.id) / "1").exists()
        assert (tmp_path / "tasks" / str(task.id) / "2" / "result.json").exists()  # a folder with a file stays

        delete_file(rows[1])
        assert not (tmp_path / "tasks" / str(task.id)).exists()
        assert (tmp_path / "tasks").is_dir()  # the storage's own folder stays
