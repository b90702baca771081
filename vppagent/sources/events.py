"""What every source emits: resource upserts and deletions, and sync markers."""

from __future__ import annotations

from dataclasses import dataclass

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


SourceEvent = Upsert | Delete | SourceInSync
