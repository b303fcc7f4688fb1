from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils import timezone


class Scope(models.TextChoices):
    READ = "read", "read: GET anything the owner may see"
    SUBMIT = "submit", "submit: submit, cancel, retry, re-prioritise the owner's tasks"
    OPERATE = "operate", "operate: operator actions (queues, workers), if the owner is an operator"
    WEBHOOKS = "webhooks", "webhooks: create, change, delete the owner's webhooks, rotate secrets, redeliver"


class ApiKey(models.Model):
    """A service account's credential. Only ``prefix`` and the SHA-256 of the whole key are stored:
    the key is shown once, at creation. Keys carry 190 bits of randomness, so a fast hash is enough
    (a password hash is for guessable secrets)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    scopes = ArrayField(models.CharField(max_length=16, choices=Scope.choices), default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > timezone.now())
