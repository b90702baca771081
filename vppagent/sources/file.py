"""The file datastore: a directory of manifests, re-read when it changes.

A document that fails validation is reported and its previous version kept,
so a typo in one policy never tears down (or opens) anything else.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vppagent.manifests.loader import load_path, manifest_files
from vppagent.model.errors import ValidationError
from vppagent.model.resources import Resource, resource_key
from vppagent.sources.events import Delete, SourceEvent, SourceInSync, Upsert

log = logging.getLogger(__name__)


@dataclass
class FileSource:
    """Implements :class:`vppagent.sources.base.Source`; re-reads at most every ``interval`` seconds."""

    path: Path
    interval: float = 1.0
    name: str = "file"
    _fingerprint: tuple = ()
    _by_source: dict[str, list[Resource]] = field(default_factory=dict)
    _current: dict[tuple[str, str], Resource] = field(default_factory=dict)
    errors: list[ValidationError] = field(default_factory=list)
    synced: bool = False
    _last_check: float = -1e9
    _parsed: dict = field(default_factory=dict)      # per-file parse cache (see load_path)
    _closed: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        """Nothing to start: the files are read in ``poll``."""

    def close(self) -> None:
        self._closed.set()

    @property
    def ready(self) -> bool:
        return self.synced

    def poll(self, timeout: float = 0.0) -> list[SourceEvent]:
        """Changes since the last read.

        ``timeout`` 0 reads now; otherwise waits (up to ``timeout``) until the
        next re-read is due, so a loop calling ``poll(t)`` re-reads every
        ``interval`` seconds without spinning.
        """
        if timeout > 0:
            wait = self._last_check + self.interval - time.monotonic()
            if wait > 0 and (self._closed.wait(min(timeout, wait)) or wait > timeout):
                return []
        self._last_check = time.monotonic()
        return self.read()

    def _stat(self) -> tuple:
        if not self.path.exists():
            return ("missing",)
        out = []
        for f in manifest_files(self.path):
            try:
                st = f.stat()
            except OSError:
                continue
            out.append((str(f), st.st_mtime_ns, st.st_size))
        return tuple(out)

    def read(self) -> list[SourceEvent]:
        """Events for whatever changed since the last read (all of it, the first time)."""
        fingerprint = self._stat()
        if fingerprint == self._fingerprint and self.synced:
            return []
        self._fingerprint = fingerprint
        if not self.path.exists():
            self.errors = [ValidationError("", "no such file or directory", str(self.path))]
            return [] if self.synced else self._mark_synced([])
        result = load_path(self.path, cache=self._parsed)
        by_source = dict(result.sources)
        failed_sources = {e.source for e in result.errors}
        for source in failed_sources:
            if source in self._by_source:
                by_source[source] = self._by_source[source]   # keep the last good version
        for err in result.errors:
            log.error("manifest rejected: %s", err)
        self.errors = result.errors
        self._by_source = by_source
        desired: dict[tuple[str, str], Resource] = {}
        for resources in by_source.values():
            for r in resources:
                desired[resource_key(r)] = r
        events: list[SourceEvent] = []
        for key, r in desired.items():
            if self._current.get(key) != r:
                events.append(Upsert(r))
        for key in self._current.keys() - desired.keys():
            events.append(Delete(*key))
        self._current = desired
        return events if self.synced else self._mark_synced(events)

    def _mark_synced(self, events: list[SourceEvent]) -> list[SourceEvent]:
        self.synced = True
        return events + [SourceInSync()]

    @property
    def resources(self) -> list[Resource]:
        return list(self._current.values())


def default_manifest_dir() -> Path:
    """``examples/`` beside the working directory, the embedded default."""
    return Path(os.environ.get("VPPAGENT_MANIFESTS", "examples"))
