"""Non-finite floats in what a worker writes as JSON (progress metrics, results, artifact summaries).

JSON has no NaN nor infinities: PostgreSQL's jsonb refuses Python's ``NaN`` literal (``DataError``:
"invalid input syntax for type json"), a strict encoder raises ``ValueError`` ("Out of range float
values are not JSON compliant"), and either failed the task, which then ran again for nothing. A
diverging loss is ordinary in training, so such a value is recorded instead, the way protobuf's JSON
mapping writes it: as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``.
"""
from __future__ import annotations

import math
from typing import Any


def nonfinite_text(number: float) -> str:
    """``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` for a float that is not finite."""
    if math.isnan(number):
        return "NaN"
    return "Infinity" if number > 0 else "-Infinity"


def finite_json(value: Any) -> Any:
    """``value`` with each non-finite float, in nested dicts, lists and tuples too (dict keys included),
    written as its string (``nonfinite_text``). A value with none is returned as it is, not copied: a
    large result costs one walk, no second copy in memory."""
    if isinstance(value, float):
        return value if math.isfinite(value) else nonfinite_text(value)
    if isinstance(value, dict):
        changed: dict[Any, Any] | None = None
        for n, (key, item) in enumerate(value.items()):
            new_key, new_item = finite_json(key), finite_json(item)
            if changed is None and (new_key is not key or new_item is not item):
                changed = dict(list(value.items())[:n])
            if changed is not None:
                changed[new_key] = new_item
        return value if changed is None else changed
    if isinstance(value, list | tuple):
        items: list[Any] | None = None
        for n, item in enumerate(value):
            new = finite_json(item)
            if items is None and new is not item:
                items = list(value[:n])
            if items is not None:
                items.append(new)
        if items is None:
            return value
        return items if isinstance(value, list) else tuple(items)
    return value
