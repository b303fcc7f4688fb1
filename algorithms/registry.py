"""The algorithm registry.

Public surface: ``@algorithm(name=…, params=Model, queue=…)`` registers a callable ``fn(ctx, params)``;
``get(name)`` and ``all_algorithms()`` read it; ``load()`` imports the built-ins, every entry point
of the group ``conveyor.algorithms`` (a separate package adds algorithms with
``[project.entry-points."conveyor.algorithms"] mine = "mypkg.algos"``) and the operators' external
programs (``algorithms/external.py``). A broken plugin is logged and skipped, never fatal.

Rules checked by ``register`` (docs/algorithms.md, "Registering"): a name matches ``NAME`` (also the
rule for remote schemes), a version ``VERSION``; a params model must read back what it writes (its
params are stored as JSON and validated again by the worker), so a field whose JSON is not its value
(``SecretStr``: secrets do not belong in params) is refused with ``InvalidAlgorithm``. The first
algorithm registered under a name keeps it: a later one of another origin (a plugin, an operator's
declaration) is refused with a logged error naming both; the same function registered again is not.
"""
from __future__ import annotations

import importlib
import json
import logging
import math
import re
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
# An algorithm's name (local or remote): one URL path segment, shown and typed by users.
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}\Z")
# A version: stored with each task (Task.algorithm_version, 50 characters).
VERSION = re.compile(r"^\S{1,50}\Z")


class InvalidAlgorithm(ValueError):
    """An algorithm that cannot be registered as defined (its author's mistake, not the environment's)."""


class AlgorithmFn(Protocol):
    def __call__(self, ctx: RunContext, params: Any) -> Any: ...


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


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
    # Where it was defined, named in the error when another one wants its name; by default the
    # function's module and name (external declarations: their file).
    origin: str = ""

    def params_schema(self) -> dict[str, Any]:
        return self.params_model.model_json_schema()

    def validate(self, params: Any) -> dict[str, Any]:
        """Params as the algorithm will receive them (defaults filled); a 400 naming each bad field.

        Strictly, as the published JSON Schema says, the way the declared programs' models already are
        (``algorithms/external.py``): a number is a JSON number (an integer is one), never ``true`` nor
        ``"5"``; an integer is a JSON integer, not ``5.0``; a string a JSON string. In pydantic's JSON mode,
        so what JSON has no other way to write is still taken: an array for a tuple, a string for an
        enum, a date or a UUID.
        """
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidInput("params must be a JSON object", fields={"params": ["must be a JSON object"]})
        try:  # validated as the JSON it is (the docstring)
            text = json.dumps(params)
        except (TypeError, ValueError):  # only from Python callers: a request's params are parsed JSON
            raise InvalidInput("params must be JSON values", fields={"params": ["must be JSON values"]}) from None
        try:
            model = self.params_model.model_validate_json(text, strict=True)
        except ValidationError as exc:
            fields: dict[str, list[str]] = {}
            for err in exc.errors():
                path = ".".join(["params", *(str(p) for p in err["loc"])])
                # "nan" against a bound: pydantic says "should be less than or equal to 3600" (NaN compares false);
                # the string "nan" for a number: "should be a valid number"
                numeric = err["type"] in _NUMBER_CHECKS and _is_nonfinite(err.get("input"))
                fields.setdefault(path, []).append(NONFINITE if numeric else err["msg"])
            first = next(iter(fields.items()))
            raise InvalidInput(f"{first[0]}: {first[1][0]}", fields=fields) from None
        # By alias, as the client wrote them: the worker validates this again (jobs/runner.py).
        stored = model.model_dump(mode="json", by_alias=True, round_trip=True)
        nonfinite = list(_nonfinite(model.model_dump(by_alias=True), "params"))  # (JSON may write null)
        if nonfinite:  # JSON (and jsonb) has no NaN nor infinities: the params could not be stored
            fields = {path: [NONFINITE] for path in nonfinite}
            raise InvalidInput(f"{nonfinite[0]}: {fields[nonfinite[0]][0]}", fields=fields)
        try:  # what the worker will get: the same values (SecretStr compares its secret)
            same = _values(self.params_model.model_validate(stored)) == _values(model)
        except ValidationError:
            same = False
        if not same:  # a model ``register`` could not see through (a custom serializer …)
            log.error("params model of algorithm %r does not read back what it writes (%s)", self.name, origin(self))
            message = "cannot be stored as given: the algorithm's params model does not read back what it writes"
            raise InvalidInput(f"params: {message}", fields={"params": [message]})
        return stored


def _values(value: Any) -> Any:
    """A validated model's values as they are, before any serializer (``model_dump`` would apply them)."""
    if isinstance(value, BaseModel):
        return (type(value), {k: _values(getattr(value, k)) for k in type(value).model_fields},
                _values(value.__pydantic_extra__ or {}))
    if isinstance(value, dict):
        return {k: _values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_values(v) for v in value]
    return value


NONFINITE = "must be a finite number (NaN and infinities cannot be stored)"
# pydantic's errors of a number's bounds, which a NaN fails whatever the bound, and of a number given as
# a string ("nan", "Infinity": what a client without NaN in its JSON may send for one)
_NUMBER_CHECKS = {"less_than", "less_than_equal", "greater_than", "greater_than_equal", "multiple_of",
                  "finite_number", "float_type"}


def _is_nonfinite(value: Any) -> bool:
    """A float, or a string pydantic reads as one (``"nan"``, ``"Infinity"``), that is NaN or infinite."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return False
    return isinstance(value, float) and not math.isfinite(value)


def _nonfinite(value: Any, path: str) -> Any:
    """The paths (``params.a.0``) of the floats in ``value`` that are NaN or infinite."""
    if isinstance(value, float) and not math.isfinite(value):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _nonfinite(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _nonfinite(item, f"{path}.{index}")


def _params_model_faults(model: type[BaseModel]) -> list[str]:
    """Why params validated by ``model`` would not validate again, to the same value, from their JSON."""
    try:
        reads = model.model_json_schema(mode="validation")
        writes = model.model_json_schema(mode="serialization")
    except Exception as exc:  # also what GET /api/v1/algorithms/ would fail on
        return [f"its JSON Schema cannot be made ({type(exc).__name__}: {exc})"]
    faults = []

    def objects(schema: dict[str, Any]) -> dict[str, set[str]]:
        found = {"": set(schema.get("properties") or {})}
        for key, sub in (schema.get("$defs") or {}).items():  # pydantic names a model differing by mode X-Input/X-Output
            found[key.removesuffix("-Input").removesuffix("-Output")] = set(sub.get("properties") or {})
        return found

    def masked(node: Any, name: str) -> None:  # SecretStr, SecretBytes: {"writeOnly": true}
        if isinstance(node, list):
            for sub in node:
                masked(sub, name)
        elif isinstance(node, dict):
            if node.get("writeOnly"):
                faults.append(f"field {name!r} is written as a mask, not its value (a secret?)")
            for key, sub in node.items():
                if key == "properties" and isinstance(sub, dict):
                    for field_name, spec in sub.items():
                        masked(spec, field_name)
                elif key != "$defs":
                    masked(sub, name)
            for sub in (node.get("$defs") or {}).values():
                masked(sub, name)

    masked(reads, "")
    read_names, written_names = objects(reads), objects(writes)
    for key in sorted(set(read_names) | set(written_names)):
        if read_names.get(key) != written_names.get(key):
            where = f" of {key}" if key else ""
            faults.append(f"the fields{where} are read as {sorted(read_names.get(key) or [])} but written as "
                          f"{sorted(written_names.get(key) or [])} (aliases, computed or excluded fields?)")
    return faults


def _check(alg: Algorithm) -> None:
    if not isinstance(alg.name, str) or not NAME.match(alg.name):
        raise InvalidAlgorithm(f"invalid algorithm name {alg.name!r}: letters, digits, '_', '.', '-' (not first), "
                               "at most 200 characters")
    if not isinstance(alg.version, str) or not VERSION.match(alg.version):
        raise InvalidAlgorithm(f"algorithm {alg.name!r}: invalid version {alg.version!r}: 1 to 50 characters, "
                               "no spaces")
    faults = _params_model_faults(alg.params_model)
    if faults:
        raise InvalidAlgorithm(
            f"algorithm {alg.name!r}: its params model {alg.params_model.__name__} would not give the worker the "
            f"params submitted (they are stored as JSON, shown in the API): {'; '.join(faults)}. Secrets belong "
            "in the worker's environment or a mounted file, never in params")


def origin(alg: Algorithm) -> str:
    if alg.origin:
        return alg.origin
    fn = getattr(alg.fn, "func", alg.fn)  # a functools.partial: its function
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


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


def register(alg: Algorithm) -> bool:
    """Add one algorithm; the decorator and the external declarations both end here.

    ``InvalidAlgorithm`` when it breaks a rule (module docstring). False, with a logged error, when the
    name is already taken by an algorithm of another origin: the first one keeps it, whatever the
    order plugins and declarations load in. The same origin again (a module imported again, a
    declaration file loaded again) replaces its earlier self.
    """
    _check(alg)
    earlier = _registry.get(alg.name)
    if earlier is not None and earlier.fn is not alg.fn and origin(earlier) != origin(alg):
        log.error("algorithm %r from %s refused: the name is already taken by %s (the first one registered "
                  "keeps it)", alg.name, origin(alg), origin(earlier))
        return False
    _registry[alg.name] = alg
    return True


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
