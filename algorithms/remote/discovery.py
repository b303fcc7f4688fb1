"""Registering services from the operators' file, discovering their schemes, checking their health.

Discovery asks each enabled service for its schemes and caches the valid ones in
``RemoteService.schemes`` (that cache is what ``GET /api/v1/algorithms/`` and submit read). A
scheme with a bad name, an invalid JSON Schema or a name already taken is rejected and explained in
``discovery_error`` (shown in the admin); the rest of the service still works. An unreachable
service, or one whose answer is malformed, keeps its last good cache; a failure of one service's
discovery never stops the discovery of the others.

Names are first come, first served (``RemoteSchemeName``): a local algorithm's name is never a
service's; a service holds a name from the discovery that first accepts it there for as long as it
advertises it, whatever the services are called, so a service registered later cannot take it (nor
the tasks already queued under it: the worker looks the name up when it runs them). The holder's
discovery that no longer advertises the name frees it, so does deleting the holder; a disabled
holder keeps it until another service's discovery takes it. Discoveries decide one at a time.
"""
from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for

from algorithms import registry
from algorithms.remote import client as c
from algorithms.remote import schemes as remote_schemes
from algorithms.remote.models import RemoteSchemeName, RemoteService

log = logging.getLogger(__name__)

NAME = registry.NAME  # the same rule as for local algorithms
# The class of the advisory lock that makes discoveries decide names one at a time (jobs/services.py
# uses another class for idempotency keys).
_NAMES_LOCK = 0x5C4E
FILE_FIELDS = ("kind", "address", "tls", "auth_token", "queue", "connect_timeout", "call_timeout",
               "max_concurrent_calls", "enabled")


@dataclass
class Discovery:
    service: str
    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    error: str = ""


def sync_file(path: str | os.PathLike[str] | None = None) -> list[str]:
    """Create/update the services declared in REMOTE_SERVICES_FILE; ones removed from it are disabled.

    ``[[service]] name, kind, address, tls, auth_token | auth_token_env, queue, connect_timeout,
    call_timeout, max_concurrent_calls, enabled`` — see docs/remote.md.
    """
    path = Path(path or settings.REMOTE["SERVICES_FILE"])
    if not path.exists():
        return []
    with path.open("rb") as fh:
        declared = tomllib.load(fh).get("service", [])
    names = []
    with transaction.atomic():
        for entry in declared:
            entry = dict(entry)
            if "auth_token_env" in entry:
                entry["auth_token"] = os.environ.get(entry.pop("auth_token_env"), "")
            values = {k: entry[k] for k in FILE_FIELDS if k in entry}
            RemoteService.objects.update_or_create(name=entry["name"], defaults={**values, "source": "file"})
            names.append(entry["name"])
        RemoteService.objects.filter(source="file").exclude(name__in=names).update(enabled=False)
    return names


def check_scheme(scheme: dict[str, Any], *, taken: set[str]) -> str | None:
    """Why this scheme cannot be offered, or None."""
    name = scheme.get("name") or ""
    if not isinstance(name, str) or not NAME.match(name):
        return f"invalid scheme name {name!r}"
    if not isinstance(scheme.get("version"), str) or not isinstance(scheme.get("description"), str):
        return "version and description must be strings"
    if not registry.VERSION.match(scheme["version"]):  # stored with each task: the local rule
        return f"invalid version {scheme['version']!r}: 1 to 50 characters, no whitespace"
    timeout = scheme.get("timeout_seconds")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0):
        return "timeout_seconds must be a positive integer"
    schema = scheme.get("params_schema")
    if isinstance(schema, Exception):
        return str(schema)
    if not isinstance(schema, dict):
        return "params_schema must be a JSON object"
    try:
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as exc:
        return f"params_schema is not a valid JSON Schema: {exc.message}"
    if name in taken:
        return f"name {name!r} is already taken by another algorithm"
    return None


def _held_by_others(service: RemoteService, names: set[str]) -> dict[str, str]:
    """Of ``names``, those another service holds: {name: that service's name} (``schemes.holder``).
    Called under the names lock, so no other discovery takes one of them meanwhile."""
    enabled = list(RemoteService.objects.filter(enabled=True).only("name", "schemes").order_by("pk"))
    holders = remote_schemes.held_names(names)
    by_pk = {s.pk: s.name for s in enabled}
    held = {}
    for name in names:
        owner = remote_schemes.holder(name, enabled, holders)
        if owner is not None and owner != service.pk:
            held[name] = by_pk[owner]
    return held


def _keep_names(service: RemoteService, accepted: list[str], advertised: set[str], now: Any) -> None:
    """``service`` holds the names it was accepted for (taking over one a disabled holder left, or no
    one held), and keeps those it still advertises; it releases the rest."""
    RemoteSchemeName.objects.filter(service=service).exclude(name__in=advertised).delete()
    mine = set(RemoteSchemeName.objects.filter(service=service).values_list("name", flat=True))
    for name in accepted:
        if name not in mine:
            RemoteSchemeName.objects.update_or_create(name=name, defaults={"service": service, "claimed_at": now})


def refresh(service: RemoteService) -> Discovery:
    """Ask ``service`` for its schemes and cache the valid ones (never raises for the service's faults)."""
    report = Discovery(service=service.name)
    now = timezone.now()
    try:
        offered = c.client_for(service).schemes()
    except c.RemoteError as exc:
        report.error = f"discovery failed: {exc}"
        RemoteService.objects.filter(pk=service.pk).update(
            discovery_error=report.error, health=RemoteService.Health.DOWN, health_error=str(exc), checked_at=now)
        return report
    advertised = {s.get("name") for s in offered if isinstance(s.get("name"), str) and NAME.match(s["name"])}
    with transaction.atomic():
        with connection.cursor() as cur:  # until commit: one discovery at a time decides names
            cur.execute("SELECT pg_advisory_xact_lock(%s, 0)", [_NAMES_LOCK])
        held = _held_by_others(service, advertised)
        taken = {a.name for a in registry._registry.values()}  # local algorithms come first
        schemes = []
        for scheme in offered:
            why = check_scheme(scheme, taken=taken)
            if not why and scheme["name"] in held:
                why = (f"name {scheme['name']!r} is already taken by another algorithm: remote service "
                       f"{held[scheme['name']]!r} has it (first come, first served)")
            if why:
                report.rejected[str(scheme.get("name"))] = why
                continue
            taken.add(scheme["name"])  # the same name twice in one answer: the first one
            report.accepted.append(scheme["name"])
            schemes.append(scheme)
        report.error = "; ".join(f"scheme {n!r} rejected: {why}" for n, why in report.rejected.items())
        _keep_names(service, report.accepted, advertised, now)
        RemoteService.objects.filter(pk=service.pk).update(
            schemes=schemes, discovered_at=now, discovery_error=report.error,
            health=RemoteService.Health.UP, health_error="", checked_at=now)
    if report.rejected:
        log.warning("remote service %s: %s", service.name, report.error)
    return report


def refresh_guarded(service: RemoteService) -> Discovery:
    """``refresh``, with any failure of ours reported like the service's (beat and the admin call this)."""
    try:
        return refresh(service)
    except Exception as exc:  # noqa: BLE001 - one service's discovery must never stop the others'
        log.exception("discovery of remote service %s failed", service.name)
        report = Discovery(service=service.name, error=f"discovery failed: {type(exc).__name__}: {exc}")
        RemoteService.objects.filter(pk=service.pk).update(discovery_error=report.error)
        return report


def refresh_all() -> list[Discovery]:
    try:
        sync_file()
    except (OSError, ValueError, KeyError) as exc:  # a broken file must not stop discovery of the rest
        log.error("cannot read REMOTE_SERVICES_FILE: %s", exc)
    return [refresh_guarded(s) for s in RemoteService.objects.filter(enabled=True)]


def check_health(service: RemoteService) -> bool:
    """Ping the service; record up/down. True when it answered."""
    try:
        c.client_for(service).ping()
        health, error = RemoteService.Health.UP, ""
    except c.RemoteError as exc:
        health, error = RemoteService.Health.DOWN, str(exc)
    except Exception as exc:  # noqa: BLE001 - one service's check must never stop the others'
        log.exception("health check of remote service %s failed", service.name)
        health, error = RemoteService.Health.DOWN, f"health check failed: {type(exc).__name__}: {exc}"
    if health != service.health:
        log.warning("remote service %s is %s %s", service.name, health, error)
    RemoteService.objects.filter(pk=service.pk).update(health=health, health_error=error, checked_at=timezone.now())
    return health == RemoteService.Health.UP


def check_all() -> dict[str, bool]:
    return {s.name: check_health(s) for s in RemoteService.objects.filter(enabled=True)}


def health_report() -> dict[str, Any]:
    """For ``/api/v1/system/health/`` (reported, not required): each enabled service as its last
    health check saw it; ``ok`` is false while any of them is down."""
    services = {
        s.name: {"kind": s.kind, "health": s.health, "checked_at": s.checked_at.isoformat() if s.checked_at else None,
                 "schemes": len(s.schemes), **({"error": s.health_error} if s.health_error else {})}
        for s in RemoteService.objects.filter(enabled=True)
    }
    down = sorted(name for name, s in services.items() if s["health"] == RemoteService.Health.DOWN)
    return {"ok": not down, "services": services, **({"error": f"down: {', '.join(down)}"} if down else {})}
