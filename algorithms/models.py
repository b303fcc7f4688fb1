"""Files that tasks produce: every artifact, and every result too large to keep inline.

A result up to ``RESULT_INLINE_MAX`` bytes of JSON stays in ``Task.result``; a larger one (or one an
algorithm streams with ``ctx.open_result()``) is an ``Artifact`` of kind ``result`` whose bytes live in
Django storage. A row outlives its bytes: retention deletes the file, sets ``expired_at`` and keeps
size, sha256 and summary, so the task still says what it produced (and downloads answer 410).
"""
from __future__ import annotations

from django.db import models
from django.db.models import Q


class Artifact(models.Model):
    class Kind(models.TextChoices):
        RESULT = "result"
        FILE = "file"

    task = models.ForeignKey("jobs.Task", on_delete=models.CASCADE, related_name="artifacts")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.FILE)
    name = models.CharField(max_length=255)
    # Name in Django's default storage; empty for an inline result that expired (nothing was stored).
    storage_name = models.CharField(max_length=500, blank=True)
    size = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64)
    content_type = models.CharField(max_length=200, default="application/octet-stream")
    summary = models.JSONField(default=dict, blank=True)
    attempt = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    expired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["task", "kind", "name"]
        constraints = [
            models.UniqueConstraint(fields=["task", "kind", "name"], name="artifact_task_kind_name_uniq"),
        ]
        indexes = [
            # Retention's scan: live rows, oldest first.
            models.Index(fields=["created_at"], name="artifact_live_created_idx", condition=Q(expired_at__isnull=True)),
        ]

    def __str__(self) -> str:
        return f"{self.task_id}/{self.kind}/{self.name}"

    @property
    def expired(self) -> bool:
        return self.expired_at is not None


class StoredFile(models.Model):
    """A file in ``algorithms.storage.DatabaseStorage`` (the default storage); bytes in ``StoredChunk``."""

    name = models.CharField(max_length=500, unique=True)
    size = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class StoredChunk(models.Model):
    """``CHUNK`` bytes of a stored file; the column is kept uncompressed out of line (migration 0003)."""

    file = models.ForeignKey(StoredFile, on_delete=models.CASCADE, related_name="chunks")
    index = models.PositiveIntegerField()
    data = models.BinaryField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["file", "index"], name="storedchunk_file_index_uniq")]


# Remote services, docs/remote.md.
from algorithms.remote.models import RemoteRun, RemoteSchemeName, RemoteService  # noqa: E402,F401
