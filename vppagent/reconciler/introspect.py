"""Turning keys and values into JSON for ``Dump`` and ``vppagent status``.

Values are usually frozen dataclasses holding enums, frozensets and ipaddress
objects; json.dumps understands none of those.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Mapping


def jsonable(obj: Any) -> Any:
    """A JSON-serialisable rendering of ``obj`` (sets sorted, unknowns as str)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, enum.Enum):
        return jsonable(obj.value)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k if isinstance(k, str) else repr(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (set, frozenset)):
        return sorted((jsonable(v) for v in obj), key=repr)
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bytes):
        return obj.hex()
    return str(obj)
