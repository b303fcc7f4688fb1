"""The algorithm registry.

Public surface: ``@algorithm(name=…, params=Model, queue=…)`` registers a callable ``fn(ctx, params)``;
``get(name)`` and ``all_algorithms()`` read it; ``load()`` imports the built-ins, every entry point
of the group ``conveyor.algorithms`` (a separate package adds algorithms with
``[project.entry-points."conveyor.algorithms"] mine = "mypkg.algos"``) and the operators' external
programs (``algorithms/external.py``). A broken plugin is logged and skipped, never fatal.
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
BUILTIN_MODULES = ["algorithms.builtin.demo", "algorithms.builtin.ml", "algorithms.builtin.grid",
                   "algorithms.builtin.optimize"]


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
    # Seconds a running task may go without ctx.progress() before its worker counts it as stuck
    # (killed and re-run, or FAILED when attempts are exhausted: queueing/heartbeat.py).
    progress_timeout: float | None = None
    backend: str = "python"  # or "external": a declared program run by algorithms.process

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
# Algorithms that live elsewhere (remote services, algorithms/remote/schemes.py): ``lookup(name)``
# and ``listing()``, asked only when no local algorithm has the name (a local one always wins).
_sources: list[tuple[Callable[[str], Algorithm | None], Callable[[], list[Algorithm]]]] = []


def add_source(lookup: Callable[[str], Algorithm | None], listing: Callable[[], list[Algorithm]]) -> None:
    _sources.append((lookup, listing))


def _find(name: str) -> Algorithm | None:
    found = _registry.get(name)
    for lookup, _ in _sources:
        if found is not None:
            break
        found = lookup(name)
    return found


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
    progress_timeout: float | None = None,
) -> Callable[[AlgorithmFn], AlgorithmFn]:
    """Register ``fn(ctx, params)`` under ``name``; ``params`` is a pydantic model (its JSON Schema is shown)."""

    def register_fn(fn: AlgorithmFn) -> AlgorithmFn:
        register(Algorithm(
            name=name,
            fn=fn,
            params_model=params,
            version=version,
            description=description or (fn.__doc__ or "").strip().split("\n")[0],
            queue=queue,
            resources=dict(resources or {}),
            timeout_seconds=timeout_seconds,
            examples=list(examples or []),
            progress_timeout=progress_timeout,
        ))
        return fn

    return register_fn


def register(alg: Algorithm) -> None:
    """Add (or replace) one algorithm; the decorator and the external declarations both end here."""
    _registry[alg.name] = alg


def get(name: str) -> Algorithm:
    found = _find(name)
    if found is None:
        raise NotFound(f"unknown algorithm {name!r}")
    return found


def get_for_submit(name: str) -> Algorithm:
    """Like ``get`` but an unknown name is a 400 on the ``algorithm`` field (it is the client's input)."""
    found = _find(name)
    if found is None:
        raise InvalidInput(
            f"algorithm: unknown algorithm {name!r}", fields={"algorithm": [f"unknown algorithm {name!r}"]}
        )
    return found


def all_algorithms() -> list[Algorithm]:
    found = dict(_registry)
    for _, listing in _sources:
        for alg in listing():
            found.setdefault(alg.name, alg)
    return sorted(found.values(), key=lambda a: a.name)


def load() -> None:
    from algorithms import external

    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    external.load()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception:  # a broken plugin must not take the platform down
            log.exception("algorithm plugin %s could not be loaded; skipped", ep.name)
