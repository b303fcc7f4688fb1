from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models


def _default_concurrency() -> int:
    return settings.CONVEYOR["QUEUE_DEFAULT_CONCURRENCY"]


class Queue(models.Model):
    """A platform queue; also the name of the Celery queue its tasks are sent to."""

    name = models.CharField(
        max_length=64,
        unique=True,
        validators=[RegexValidator(r"^[a-z0-9][a-z0-9_.-]*$", "lowercase letters, digits, '_', '.', '-'")],
    )
    paused = models.BooleanField(default=False)
    # How many of this queue's tasks may be handed to the broker or running at once, across all
    # workers. It is also the broker's in-flight window: the database keeps the rest, in order.
    concurrency = models.PositiveIntegerField(default=_default_concurrency, validators=[MinValueValidator(1)])
    default_priority = models.PositiveSmallIntegerField(default=5, validators=[MaxValueValidator(9)])
    description = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
