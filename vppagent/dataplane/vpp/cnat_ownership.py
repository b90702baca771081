"""Which cnat objects, reject routes and SNAT settings this agent made.

cnat translations, routes and SNAT settings carry no tag in VPP, and several
of them cannot be dumped at all (SNAT exclusions, the SNAT policy), so
ownership is our own record: the objects we wrote into one VPP instance,
identified by its pid.  Kept in memory, and in a JSON file when ``path`` is
given, so a restarted agent adopts what it made and removes what is no
longer wanted, while everything else in VPP stays untouched.  A different
VPP pid means VPP restarted and lost all of it: the record starts over.

Inside ``batch()`` (the dataplane wraps each commit in one, every descriptor
each pipelined batch) changes are written once at the end rather than once
per object: rewriting the whole file per translation made N services cost
O(N²) in file writes.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import contextmanager
from typing import Iterable, Iterator

log = logging.getLogger(__name__)


class OwnershipStore:
    """Sets of opaque identities per kind, bound to one VPP instance."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.vpe_pid: int | None = None
        self._kinds: dict[str, dict[str, str]] = {}
        self._depth = 0            # open batch() blocks
        self._dirty = False        # changed inside a batch, not yet written
        if path is not None:
            self._load()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Write the file once when the outermost block ends (also after an error: what
        was done by then is recorded) instead of after every change."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self._dirty:
                self._save()

    def _changed(self) -> None:
        if self._depth:
            self._dirty = True
        else:
            self._save()

    def bind(self, vpe_pid: int | None) -> None:
        """Forget everything when VPP is not the instance we wrote into."""
        if vpe_pid is None or vpe_pid == self.vpe_pid:
            return
        if self.vpe_pid is not None and any(self._kinds.values()):
            log.info("VPP pid %s -> %s: forgetting the cnat objects of the old instance",
                     self.vpe_pid, vpe_pid)
        self.vpe_pid = vpe_pid
        self._kinds = {}
        self._changed()

    def has(self, kind: str, ident: str) -> bool:
        return ident in self._kinds.get(kind, {})

    def get(self, kind: str, ident: str) -> str | None:
        return self._kinds.get(kind, {}).get(ident)

    def items(self, kind: str) -> dict[str, str]:
        return dict(self._kinds.get(kind, {}))

    def add(self, kind: str, ident: str, data: str = "") -> None:
        mine = self._kinds.setdefault(kind, {})
        if mine.get(ident) != data:
            mine[ident] = data
            self._changed()

    def discard(self, kind: str, ident: str) -> None:
        if self._kinds.get(kind, {}).pop(ident, None) is not None:
            self._changed()

    def replace(self, kind: str, entries: Iterable[tuple[str, str]]) -> None:
        new = dict(entries)
        if self._kinds.get(kind, {}) != new:
            self._kinds[kind] = new
            self._changed()

    # -------------------------------------------------------------- file

    def _load(self) -> None:
        assert self.path is not None
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            self.vpe_pid = data.get("vpe_pid")
            self._kinds = {k: dict(v) for k, v in data.get("kinds", {}).items()}
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, AttributeError) as e:
            log.warning("ignoring unreadable cnat ownership file %s: %s", self.path, e)
            self.vpe_pid, self._kinds = None, {}

    def _save(self) -> None:
        self._dirty = False
        if self.path is None:
            return
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".cnat-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"vpe_pid": self.vpe_pid, "kinds": self._kinds}, f, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
