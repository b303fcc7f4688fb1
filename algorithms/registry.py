"""The algorithm registry.

Public surface: ``@algorithm(name=…, params=Model, queue=…)`` registers a callable ``fn(ctx, params)``;
``get(name)`` and ``all_algorithms()`` read it; ``load()`` imports the built-ins and every entry point
of the group ``conveyor.algorithms`` (a separate package adds algorithms with
``[project.entry-points."conveyor.algorithms"] mine = "mypkg.algos"``). A broken plugin is logged
and skipped, never fatal.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Callable, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from config.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from algorithms.context import RunContext

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "conveyor.algorithms"
BUILTIN_MODULES = ["algorithms.builtin.demo"]


class AlgorithmFn(Protocol):
    def __call__(self, ctx: RunContext, params: Any) -> Any: ...


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Algorithm:
    name: str
    fn: AlgorithmFn
    params_model: type[BaseModel] = NoParams
    version: str = "1.0"
    description: str = ""
    queue: str = "default"
    resources: dict[str, int] = field(default_factory=dict)
    timeout_seconds: int | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)

    def params_schema(self) -> dict[str, Any]:
        return self.params_model.model_json_schema()

    def validate(self, params: Any) -> dict[str, Any]:
        """Params as the algorithm will receive them (defaults filled); a 400 naming each bad field."""
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidInput("params must be a JSON object", fields={"params": ["must be a JSON object"]})
        try:
            model = self.params_model.model_validate(params)
        except ValidationError as exc:
            fields: dict[str, list[str]] = {}
            for err in exc.errors():
                path = ".".join(["params", *(str(p) for p in err["loc"])])
                fields.setdefault(path, []).append(err["msg"])
            first = next(iter(fields.items()))
            raise InvalidInput(f"{first[0]}: {first[1][0]}", fields=fields) from None
        return model.model_dump(mode="json")


_registry: dict[str, Algorithm] = {}


def algorithm(
    name: str,
    *,
    params: type[BaseModel] = NoParams,
    version: str = "1.0",
    description: str = "",
    queue: str = "default",
    resources: dict[str, int] | None = None,
    timeout_seconds: int | None = None,
    examples: list[dict[str, Any]] | None = None,
) -> Callable[[AlgorithmFn], AlgorithmFn]:
    """Register ``fn(ctx, params)`` under ``name``; ``params`` is a pydantic model (its JSON Schema is shown)."""

    def register(fn: AlgorithmFn) -> AlgorithmFn:
        _registry[name] = Algorithm(
            name=name,
            fn=fn,
            params_model=params,
            version=version,
            description=description or (fn.__doc__ or "").strip().split("\n")[0],
            queue=queue,
            resources=dict(resources or {}),
            timeout_seconds=timeout_seconds,
            examples=list(examples or []),
        )
        return fn

    return register


def get(name: str) -> Algorithm:
    try:
        return _registry[name]
    except KeyError:
        raise NotFound(f"unknown algorithm {name!r}") from None


def get_for_submit(name: str) -> Algorithm:
    """Like ``get`` but an unknown name is a 400 on the ``algorithm`` field (it is the client's input)."""
    try:
        return _registry[name]
    except KeyError:
        raise InvalidInput(
            f"algorithm: unknown algorithm {name!r}", fields={"algorithm": [f"unknown algorithm {name!r}"]}
        ) from None


def all_algorithms() -> list[Algorithm]:
    return sorted(_registry.values(), key=lambda a: a.name)


def load() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception:  # a broken plugin must not take the platform down
            log.exception("algorithm plugin %s could not be loaded; skipped", ep.name)
