"""What a worker writes as JSON (progress metrics, results, artifact summaries), made storable: the one
place where a value an algorithm hands over becomes JSON.

Non-finite floats. JSON has no NaN nor infinities: PostgreSQL's jsonb refuses Python's ``NaN`` literal
(``DataError``: "invalid input syntax for type json"), a strict encoder raises ``ValueError`` ("Out of
range float values are not JSON compliant"), and either failed the task, which then ran again for
nothing. A diverging loss is ordinary in training, so such a value is recorded instead, the way
protobuf's JSON mapping writes it: as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``.

NumPy. What NumPy (and scikit-learn, pandas…) code naturally returns, ``(y == 1).sum()`` or
``np.float32(0.75)``, is a NumPy scalar, which ``json`` refuses (``TypeError: Object of type int64 is
not JSON serializable``): the task failed after its work was done, and was retried. A NumPy scalar is
written as the Python number or bool it holds (``.item()``; then the NaN rule applies) and an array as
nested lists (``.tolist()``). NumPy is never imported here: a value can only be a NumPy one once
NumPy is loaded (``sys.modules``).

Text. A lone surrogate (``os.fsdecode``/``os.listdir`` of a file name that is not UTF-8 gives one) cannot
be encoded in UTF-8, nor stored by PostgreSQL: the task failed after its work was done, and was retried
for ever. Each is written as an escape (``without_surrogates``: ``caf\\xe9.txt``), the rest of the text
as it is.

Datetimes and UUIDs are written as the API writes its own: ``datetime``, ``date`` and ``time`` in ISO
8601 (``isoformat()``, offset and microseconds kept), a ``UUID`` as its string.

Anything else has no faithful JSON form, and no choice made for the author would be right for every
algorithm: a ``Decimal`` (a float drops digits, a string changes its type), a ``set`` (no order: its
array would differ from run to run, and so would the result's sha256), ``bytes`` (write an artifact),
a complex number, a ``timedelta``, a NumPy datetime, an object (a model, a DataFrame). Such a value
raises ``NotJsonSerialisable``, naming where it is and its type (``result['model']: object of type
Booster is not JSON-serialisable``); its ``retryable = False`` fails the task at once: running it again
would end the same way.
"""
from __future__ import annotations

import datetime
import math
import re
import sys
import uuid
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def without_surrogates(text: str) -> str:
    """``text`` with each lone surrogate written as an escape: ``\\xe9`` for the byte ``os.fsdecode`` kept
    of a file name that is not UTF-8 (``surrogateescape``), ``\\udXXX`` for any other; distinct bytes stay
    distinct (two such file names as keys of one dict are two keys). The same string when it has none."""
    return _SURROGATE.sub(_escaped, text) if _SURROGATE.search(text) else text


_KEY_TYPES = (str, int, float, type(None))  # what a JSON object's key can be written from (bool is an int)


class NotJsonSerialisable(TypeError):
    """A value with no faithful JSON form; the message names where it is and its type. Not retried."""

    retryable = False


class _Refused(Exception):
    """Raised from where the value is, its path filled in on the way out."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what, self.path = what, []  # type: list[str]


def nonfinite_text(number: float) -> str:
    """``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` for a float that is not finite."""
    if math.isnan(number):
        return "NaN"
    return "Infinity" if number > 0 else "-Infinity"


def json_safe(value: Any, where: str = "value") -> Any:
    """``value`` as JSON can hold it, in nested dicts, lists and tuples too (dict keys included): each
    non-finite float written as its string (``nonfinite_text``), NumPy scalars and arrays as Python
    numbers and lists, datetimes in ISO 8601, UUIDs as strings. A value with nothing to change is
    returned as it is, not copied: a large result costs one walk, no second copy in memory.

    Anything else raises ``NotJsonSerialisable``, ``where`` (``"result"``, ``"metrics"``…) and the path
    in it naming the value: ``result['model']: object of type Booster is not JSON-serialisable``."""
    try:
        return _clean(value)
    except _Refused as refused:
        raise NotJsonSerialisable(f"{where}{''.join(reversed(refused.path))}: {refused.what}") from None


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return without_surrogates(value)
    if value is None or isinstance(value, int):  # bool is an int
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return nonfinite_text(value)
        return value if type(value) is float else float(value)  # numpy.float64 is a float: a plain one
    if isinstance(value, dict):
        changed: dict[Any, Any] | None = None
        for n, (key, item) in enumerate(value.items()):
            try:
                new_key = _key(key)
                new_item = _clean(item)
            except _Refused as refused:
                refused.path.append(f"[{key!r}]")
                raise
            if changed is None and (new_key is not key or new_item is not item):
                changed = dict(list(value.items())[:n])
            if changed is not None:
                changed[new_key] = new_item
        return value if changed is None else changed
    if isinstance(value, list | tuple):
        items: list[Any] | None = None
        for n, item in enumerate(value):
            try:
                new = _clean(item)
            except _Refused as refused:
                refused.path.append(f"[{n}]")
                raise
            if items is None and new is not item:
                items = list(value[:n])
            if items is not None:
                items.append(new)
        if items is None:
            return value
        return items if isinstance(value, list) else tuple(items)
    return _converted(value)


def _key(key: Any) -> Any:
    """A dict key as ``json`` writes one (a string, or a number, bool or None it turns into one)."""
    new = _clean(key)
    if not isinstance(new, _KEY_TYPES):
        raise _Refused(f"key of type {type(key).__name__} is not JSON-serialisable (keys are strings or numbers)")
    return new


def _converted(value: Any) -> Any:
    """A value of none of JSON's own types: its JSON form, or ``_Refused``."""
    numpy = sys.modules.get("numpy")  # loaded by whoever made a NumPy value; never imported here
    if numpy is not None and isinstance(value, numpy.ndarray | numpy.generic):
        if value.dtype.kind not in "mM":  # datetime64 / timedelta64: .item() may be an int of nanoseconds
            plain = value.tolist() if isinstance(value, numpy.ndarray) else value.item()
            if isinstance(plain, numpy.generic) and isinstance(value, numpy.floating):
                plain = float(value)  # longdouble: .item() gives itself back
            if not isinstance(plain, numpy.generic):
                return _clean(plain)
        if isinstance(value, numpy.ndarray):
            raise _Refused(f"array of {value.dtype} is not JSON-serialisable")
    elif isinstance(value, datetime.date | datetime.time):  # datetime is a date
        return value.isoformat()
    elif isinstance(value, uuid.UUID):
        return str(value)
    raise _Refused(f"object of type {type(value).__name__} is not JSON-serialisable")
