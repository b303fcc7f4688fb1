"""An artifact row deleted (its task deleted, its user deleted, a run discarded) takes its file with it,
once the deletion commits. An expired row's file is already gone (``results.expire``)."""
from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete
from django.dispatch import receiver

from algorithms.artifacts import delete_after_commit
from algorithms.models import Artifact


@receiver(post_delete, sender=Artifact, dispatch_uid="algorithms.artifact_file")
def delete_artifact_file(sender: type[Artifact], instance: Artifact, **kwargs: Any) -> None:
    if instance.expired_at is None:
        delete_after_commit(instance.storage_name)
