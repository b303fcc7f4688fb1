"""Remote algorithm services (registered by operators) and the bridge's memory of remote task ids.

Imported by ``algorithms.models`` so they belong to the ``algorithms`` app.
"""
from __future__ import annotations

from django.db import models


class RemoteService(models.Model):
    class Kind(models.TextChoices):
        GRPC = "grpc", "gRPC"
        WS = "ws", "WebSocket + MsgPack"

    class Health(models.TextChoices):
        UNKNOWN = "unknown"
        UP = "up"
        DOWN = "down"

    class Source(models.TextChoices):
        ADMIN = "admin"
        FILE = "file"  # REMOTE_SERVICES_FILE; the file wins on every sync

    name = models.SlugField(max_length=100, unique=True)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    # gRPC: "host:port"; WebSocket: "ws://host:port/path" or "wss://…".
    address = models.CharField(max_length=500)
    tls = models.BooleanField(default=False, help_text="gRPC only: a TLS channel (system roots).")
    auth_token = models.CharField(max_length=500, blank=True, help_text="Sent as 'authorization: Bearer …'.")
    queue = models.CharField(max_length=100, default="default", help_text="Conveyor queue its schemes run in.")
    connect_timeout = models.FloatField(default=5.0)
    call_timeout = models.FloatField(default=30.0, help_text="Deadline of every call but the progress stream.")
    max_concurrent_calls = models.PositiveIntegerField(default=16)
    enabled = models.BooleanField(default=True)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.ADMIN)

    # Discovery cache: the schemes the service offered, validated; what was rejected and why.
    schemes = models.JSONField(default=list, blank=True)
    discovered_at = models.DateTimeField(null=True, blank=True)
    discovery_error = models.TextField(blank=True)
    # Health check (beat, every REMOTE_HEALTH_SECONDS).
    health = models.CharField(max_length=10, choices=Health.choices, default=Health.UNKNOWN)
    checked_at = models.DateTimeField(null=True, blank=True)
    health_error = models.TextField(blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind} {self.address})"


class RemoteSchemeName(models.Model):
    """Which service holds a scheme name: first come, first served (``discovery.refresh``).

    A service takes a name at the discovery that first accepts it there, and holds it while it goes
    on advertising it (an unreachable service, or one that advertises it with a broken scheme, still
    holds it); a later service that advertises the name is rejected. The holder's discovery that no
    longer advertises the name releases it; deleting the holder deletes its names (CASCADE); a
    disabled holder keeps its names until another service's discovery takes them.
    """

    name = models.CharField(max_length=200, unique=True)  # registry.NAME: at most 200 characters
    service = models.ForeignKey(RemoteService, on_delete=models.CASCADE, related_name="held_names")
    claimed_at = models.DateTimeField()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} → {self.service_id}"


class RemoteRun(models.Model):
    """Which remote task runs a Conveyor task, so a re-run after a worker death re-attaches to it."""

    task = models.OneToOneField("jobs.Task", on_delete=models.CASCADE, related_name="remote_run")
    service = models.ForeignKey(RemoteService, on_delete=models.CASCADE, related_name="runs")
    remote_id = models.CharField(max_length=200)
    attempt = models.PositiveIntegerField(default=1)
    attached = models.PositiveIntegerField(default=0, help_text="How many times a re-run re-attached.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.task_id} → {self.service_id}:{self.remote_id}"
