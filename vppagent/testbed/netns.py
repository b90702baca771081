"""Named network namespaces the testbed creates, and running things inside them.

Every namespace is tracked from the moment ``ip netns add`` succeeds, so a
failure half-way through a set-up still deletes everything on ``close()``.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any, Callable, Sequence, TypeVar

from vppagent.dataplane.linux.netlink_ns import netns_path, open_netns, run_in_netns

T = TypeVar("T")


def run(argv: Sequence[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
    """A command with text output captured; ``check`` raises with its stderr in the message."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def call_in(netns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a thread inside ``netns`` (a name or a path): sockets it opens live there."""
    fd = open_netns(netns)
    try:
        return run_in_netns(fd, fn)
    finally:
        os.close(fd)


class Namespaces:
    """The namespaces one testbed owns; ``on_change`` hears every add and delete."""

    def __init__(self, on_change: Callable[[list[str]], None] | None = None) -> None:
        self.names: list[str] = []
        self._on_change = on_change

    def add(self, name: str) -> str:
        """``ip netns add`` with ``lo`` up. Tracked first: an interruption (SIGTERM → SystemExit)
        while ``ip`` runs must not leave an untracked namespace."""
        self.names.append(name)
        self._changed()
        try:
            run(["ip", "netns", "add", name])
        except RuntimeError:
            self.names.remove(name)
            self._changed()
            raise
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def delete(self, name: str) -> None:
        """Delete one now (fine if it is already gone)."""
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        if name in self.names:
            self.names.remove(name)
            self._changed()

    def close(self) -> None:
        for name in reversed(list(self.names)):
            self.delete(name)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(list(self.names))


def exists(name: str) -> bool:
    return os.path.exists(netns_path(name))
