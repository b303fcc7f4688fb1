"""Remote schemes as registry algorithms: listed with ``backend`` "grpc"/"ws", params checked
against the service's JSON Schema (``jsonschema``), run by ``bridge.run``.

They come from the discovery cache in the database (``RemoteService.schemes``), so the web process
and every worker agree without restarting; a local algorithm of the same name always wins. A name
two services' caches share (briefly, or in caches written before names had holders) is served by the
service that holds it (``RemoteSchemeName``: first come, first served, whatever the services'
names), else by the one registered first; ``holder`` is that rule, which discovery follows too.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.validators import validator_for
from pydantic import BaseModel, ConfigDict

from algorithms import registry
from config.errors import InvalidInput


class RemoteParams(BaseModel):
    """Whatever the service's schema allowed at submit; the service is the judge of its own params."""

    model_config = ConfigDict(extra="allow")


@dataclass(frozen=True)
class RemoteAlgorithm(registry.Algorithm):
    service: str = ""
    backend: str = "grpc"
    schema: dict[str, Any] = field(default_factory=dict)

    def params_schema(self) -> dict[str, Any]:
        return self.schema

    def validate(self, params: Any) -> dict[str, Any]:
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidInput("params must be a JSON object", fields={"params": ["must be a JSON object"]})
        cls = validator_for(self.schema, default=Draft202012Validator)
        fields: dict[str, list[str]] = {}
        for err in sorted(cls(self.schema).iter_errors(params), key=lambda e: list(e.absolute_path)):
            for name, message in _named(err):
                path = ".".join(["params", *(str(p) for p in err.absolute_path), *([name] if name else [])])
                fields.setdefault(path, []).append(message)
        if fields:
            first = next(iter(fields.items()))
            raise InvalidInput(f"{first[0]}: {first[1][0]}", fields=fields)
        # Top-level defaults filled in, as for local algorithms, so the task shows what will run.
        defaults = {k: p["default"] for k, p in (self.schema.get("properties") or {}).items()
                    if isinstance(p, dict) and "default" in p and k not in params}
        return {**defaults, **params}


def _named(err: Any) -> list[tuple[str | None, str]]:
    """An error as (property, message) pairs: a missing or unexpected property is the error of that
    property (``params.size``), as for local algorithms, not of the object holding it."""
    instance = err.instance if isinstance(err.instance, dict) else None
    if instance is not None and err.validator == "required":
        missing = [k for k in err.validator_value if isinstance(k, str) and k not in instance]
        named = [k for k in missing if err.message.startswith(repr(k))]  # one error per missing property
        if named:
            return [(named[0], err.message)]
    if instance is not None and err.validator == "additionalProperties" and err.validator_value is False:
        known = err.schema.get("properties") or {}
        patterns = err.schema.get("patternProperties") or {}
        extra = [k for k in instance if k not in known and not any(re.search(p, k) for p in patterns)]
        if extra:
            return [(k, f"Additional properties are not allowed ({k!r} was unexpected)") for k in extra]
    return [(None, err.message)]


def _algorithm(service: Any, scheme: dict[str, Any]) -> RemoteAlgorithm:
    from algorithms.remote import bridge

    return RemoteAlgorithm(
        name=scheme["name"], fn=functools.partial(bridge.run, service_name=service.name, scheme=scheme["name"]),
        params_model=RemoteParams, version=scheme.get("version") or "1.0",
        description=scheme.get("description") or f"remote scheme of {service.name}", queue=service.queue,
        timeout_seconds=scheme.get("timeout_seconds") or None, service=service.name, backend=service.kind,
        schema=scheme.get("params_schema") or {"type": "object"},
    )


def _services() -> Any:
    from algorithms.remote.models import RemoteService

    # Registration order: of two caches that share a name, the first registered service's wins
    # when neither holds it (a service's name never decides).
    return RemoteService.objects.filter(enabled=True).only("name", "kind", "queue", "schemes").order_by("pk")


def held_names(names: Any = None) -> dict[str, int]:
    """The enabled services holding scheme names (of ``names``, or all): {name: service pk}."""
    from algorithms.remote.models import RemoteSchemeName

    held = RemoteSchemeName.objects.filter(service__enabled=True)
    if names is not None:
        held = held.filter(name__in=names)
    return dict(held.values_list("name", "service_id"))


def holder(name: str, services: Any, holders: dict[str, int]) -> int | None:
    """The pk of the service ``name`` belongs to, or None while it is free: the enabled service that
    holds it (``holders``, from ``held_names``), else the first of the enabled ``services``
    (registration order) whose cache has it. Discovery lets no other service take it; lookup and
    listing serve it from that service's cache (from none while the holder's cache lacks it)."""
    if name in holders:
        return holders[name]
    return next((s.pk for s in services if any(x.get("name") == name for x in s.schemes)), None)


def lookup(name: str) -> RemoteAlgorithm | None:
    offering = list(_services().filter(schemes__contains=[{"name": name}]))
    owner = holder(name, offering, held_names([name])) if offering else None
    for service in offering:
        if service.pk == owner:
            return _algorithm(service, next(s for s in service.schemes if s.get("name") == name))
    return None


def listing() -> list[registry.Algorithm]:
    holders = held_names()
    seen: dict[str, registry.Algorithm] = {}
    for service in _services():  # ``holder`` for every name at once
        for scheme in service.schemes:
            if holders.get(scheme["name"], service.pk) == service.pk:
                seen.setdefault(scheme["name"], _algorithm(service, scheme))
    return list(seen.values())


registry.add_source(lookup, listing)
