"""What a datastore source looks like to the agent and the sync layer.

Sources that watch a remote store (Kubernetes, etcd) run their own threads
and hand events over through ``poll``; the file source is polled in place.
Either way the consumer's owner thread is the only one that applies them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from vppagent.model.errors import ValidationError
from vppagent.sources.events import SourceEvent


@runtime_checkable
class Source(Protocol):
    """A datastore as a stream of :data:`SourceEvent`.

    Contract:
    - the first complete listing ends with ``SourceInSync``;
    - after a reconnect, a relist or a compaction the source emits only the
      difference from what it emitted before (never a flush);
    - ``SourceStatus`` reports loss and return of the connection, so the
      consumer can go not-ready while keeping its dataplane;
    - a malformed object is reported as ``SourceError`` and skipped; the
      previous good version of that object (if any) stays in effect.
    """

    name: str

    def start(self) -> None:
        """Begin listing/watching (threads start here, not in __init__)."""

    def poll(self, timeout: float) -> list[SourceEvent]:
        """Events since the last call; waits up to ``timeout`` seconds for the first."""

    def close(self) -> None:
        """Stop watching; idempotent."""

    @property
    def ready(self) -> bool:
        """Connected and in sync with the store."""

    @property
    def errors(self) -> list[ValidationError]:
        """Objects currently rejected (malformed), newest last."""
