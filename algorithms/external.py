"""External algorithms declared by operators in TOML (``algorithms/external.toml`` and the files named
in ``EXTERNAL_ALGORITHMS``), registered like any other algorithm and run by ``algorithms.process``.

A declaration::

    [[algorithm]]
    name = "native.hello"
    description = "…"
    argv = ["native/build/hello", "--seconds", "{seconds}"]   # relative to this file; no shell
    workdir = "scratch"                                      # or "project", or a path
    timeout_seconds = 60
    progress_timeout = 30                                    # optional: stuck after 30 s without progress
    queue = "default"
    kill_grace_seconds = 3
    env = { LANG = "C.UTF-8" }
    [algorithm.params.seconds]                               # a small JSON-Schema-like field spec
    type = "number"
    default = 3
    minimum = 0
    maximum = 60

Field types: string, integer, number, boolean, array (of ``items``), object; keys ``default``,
``description``, ``minimum``, ``maximum``, ``enum``, ``min_length``/``max_length`` (strings and arrays).
A field without ``default`` is required. Unknown params are rejected at submit (400), like every algorithm.
Values are taken as the JSON Schema shown says, strictly: an integer is a JSON integer (not ``7.0`` nor
``"7"``), a number a finite JSON number, a boolean ``true``/``false``, a string a JSON string.

Each entry stands alone: a bad one (no name or argv, an unknown type, a name already taken, a name or
version against ``registry.NAME``/``VERSION``) is logged with its file and name and skipped; the file's
other entries are registered. A file that cannot be read or is not TOML is logged and skipped whole.
"""
from __future__ import annotations

import logging
import tomllib
from functools import partial
from pathlib import Path
from typing import Any, Literal

from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, create_model

from algorithms import process, registry

log = logging.getLogger(__name__)

DEFAULT_FILE = Path(__file__).resolve().parent / "external.toml"
_TYPES: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool, "object": dict[str, Any]}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _field_type(spec: dict[str, Any]) -> Any:
    kind = spec.get("type", "string")
    if "enum" in spec:
        return Literal[tuple(spec["enum"])]
    if kind == "array":
        return list[_field_type(spec.get("items", {"type": "string"}))]  # type: ignore[misc]
    if kind not in _TYPES:
        raise ValueError(f"unknown param type {kind!r}")
    return _TYPES[kind]


def params_model(name: str, fields: dict[str, dict[str, Any]]) -> type[BaseModel]:
    """A pydantic model (extra params forbidden) from the declaration's field specs."""
    definitions: dict[str, Any] = {}
    for key, spec in fields.items():
        constraints = {k: spec[k] for k in ("description", "min_length", "max_length") if k in spec}
        if "minimum" in spec:
            constraints["ge"] = spec["minimum"]
        if "maximum" in spec:
            constraints["le"] = spec["maximum"]
        default = spec.get("default", ...)
        definitions[key] = (_field_type(spec), Field(default, **constraints))
    model_name = "".join(part.capitalize() for part in name.replace("-", ".").replace("_", ".").split(".")) + "Params"
    return create_model(model_name, __base__=_Strict, **definitions)


def _run(spec: process.ProgramSpec, ctx: Any, params: BaseModel) -> Any:
    return process.run_program(spec, ctx, params.model_dump(mode="json"))


def _register_entry(path: Path, entry: dict[str, Any]) -> bool:
    spec = process.ProgramSpec(
        name=entry["name"], argv=list(entry["argv"]), workdir=entry.get("workdir", "scratch"),
        env={str(k): str(v) for k, v in entry.get("env", {}).items()},
        inherit_env=bool(entry.get("inherit_env", False)),
        kill_grace_seconds=float(entry.get("kill_grace_seconds", 3.0)), base_dir=path.parent)
    if not spec.argv:
        raise ValueError("argv must not be empty")
    progress_timeout = entry.get("progress_timeout")
    if progress_timeout is not None and not (isinstance(progress_timeout, int | float) and progress_timeout > 0):
        raise ValueError(f"progress_timeout must be a number of seconds above 0, not {progress_timeout!r}")
    return registry.register(registry.Algorithm(
        name=spec.name, fn=partial(_run, spec), params_model=params_model(spec.name, entry.get("params", {})),
        version=str(entry.get("version", "1.0")), description=entry.get("description", ""),
        queue=entry.get("queue", "default"), resources=dict(entry.get("resources", {})),
        timeout_seconds=entry.get("timeout_seconds"), examples=list(entry.get("examples", [])),
        progress_timeout=float(progress_timeout) if progress_timeout is not None else None,
        backend="external", origin=f"the declarations in {path}"))


def register_file(path: Path) -> list[str]:
    """Register every good ``[[algorithm]]`` of one TOML file (a bad one is logged and skipped); their names."""
    with open(path, "rb") as fh:
        document = tomllib.load(fh)
    names: list[str] = []
    for index, entry in enumerate(document.get("algorithm", []), start=1):
        name = entry.get("name") if isinstance(entry, dict) else None
        where = f"{path}: [[algorithm]] #{index} {name!r}"
        if name in names:
            log.error("%s skipped: the name is declared earlier in the same file", where)
            continue
        try:
            if _register_entry(path, entry):  # False: the name is another algorithm's (logged by the registry)
                names.append(name)
        except Exception as exc:  # an operator's typo: this entry only
            log.error("%s skipped: %s: %s", where, type(exc).__name__, exc)
    return names


def load() -> None:
    """The project's declarations, then every file in ``EXTERNAL_ALGORITHMS``; a broken one is skipped."""
    extra = [Path(p) if Path(p).is_absolute() else Path(settings.BASE_DIR) / p
             for p in settings.CONVEYOR.get("EXTERNAL_ALGORITHMS", [])]
    for path in [DEFAULT_FILE, *extra]:
        try:
            register_file(path)
        except Exception:  # an operator's typo must not take the platform down
            log.exception("external algorithm declarations in %s could not be loaded; skipped", path)
