"""Vocabulary shared by the engine and its descriptors: states, ops, ordering.

Kept apart from the engine so descriptors and backends can import the types
without pulling in the scheduling logic.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Hashable

Key = Hashable


class KeyState(str, enum.Enum):
    """Where one key stands relative to the dataplane."""

    PENDING = "pending"        # desired but not (yet) written: deps missing, or before in-sync
    CONFIGURED = "configured"  # exists and is equivalent to the desired value
    FAILED = "failed"          # the last operation on it raised; see the error
    REMOVED = "removed"        # neither desired nor present


@dataclass(frozen=True)
class KeyStatus:
    """A snapshot of one key's state, safe to hand to callers."""

    state: KeyState
    error: str | None = None
    attempts: int = 0
    next_retry_at: float | None = None
    retriable: bool = True


class OpKind(str, enum.Enum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True)
class Op:
    """One write the engine asks a descriptor to perform.

    ``value`` is the value to write (create/update) or the value being
    removed (delete); ``old`` and ``metadata`` describe what exists now.
    """

    kind: OpKind
    key: Key
    value: Any
    old: Any = None
    metadata: Any = None
    reason: str = ""


@dataclass(frozen=True)
class OpRecord:
    """An executed op and its outcome, for history, reports and ``Dump``."""

    seq: int
    at: float
    op: Op
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Failure:
    """Why a key is FAILED and when it may be tried again (engine-internal)."""

    error: str
    kind: OpKind
    attempts: int
    retriable: bool
    next_retry_at: float | None


def key_order(key: Key) -> tuple[str, str, str]:
    """A total order over keys of mixed types, so plans are deterministic."""
    t = type(key)
    return (t.__qualname__, t.__module__, repr(key))
