"""What every source emits: resource upserts and deletions, sync markers and status."""

from __future__ import annotations

from dataclasses import dataclass

from vppagent.model.errors import ValidationError
from vppagent.model.resources import Resource


@dataclass(frozen=True)
class Upsert:
    resource: Resource


@dataclass(frozen=True)
class Delete:
    kind: str
    key: str


@dataclass(frozen=True)
class SourceInSync:
    """The source has delivered its complete initial state."""


@dataclass(frozen=True)
class SourceStatus:
    """The connection to the store was lost (``connected=False``) or is back."""

    connected: bool
    detail: str = ""


@dataclass(frozen=True)
class SourceError:
    """A malformed object was skipped; ``error`` names the object and field."""

    error: ValidationError


SourceEvent = Upsert | Delete | SourceInSync | SourceStatus | SourceError
