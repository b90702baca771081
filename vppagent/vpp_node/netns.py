"""Work inside a network namespace with pyroute2, without moving the caller.

pyroute2 opens its netlink socket lazily in whatever namespace the *using*
thread is in, so every piece of netlink work runs start to finish on a thread
that entered the namespace (``Netns.run``).  ``Netns(None)`` is the process's
own namespace: the node's, for ``vppagent vpp run``.
"""

from __future__ import annotations

import os
import subprocess
from typing import Callable, TypeVar

from pyroute2 import IPRoute

from vppagent.dataplane.linux.netlink_ns import netns_exists, netns_path, open_netns, run_in_netns

T = TypeVar("T")


class Netns:
    """A namespace by name (``/var/run/netns/<name>``) or the process's own (None)."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name

    @property
    def path(self) -> str:
        return "/proc/self/ns/net" if self.name is None else netns_path(self.name)

    def open_fd(self) -> int:
        """An fd on the namespace (for IFLA_NET_NS_FD); the caller closes it."""
        return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC) if self.name is None else open_netns(self.name)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` inside the namespace (sysctl files, sockets)."""
        if self.name is None:
            return fn()
        fd = open_netns(self.name)
        try:
            return run_in_netns(fd, fn)
        finally:
            os.close(fd)

    def run(self, fn: Callable[[IPRoute], T]) -> T:
        """Run ``fn(ipr)`` with a netlink socket of the namespace."""
        def work() -> T:
            with IPRoute() as ipr:
                return fn(ipr)
        return self.call(work)

    def exists(self) -> bool:
        return self.name is None or netns_exists(self.name)

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"


def create_netns(name: str) -> Netns:
    """``ip netns add`` (the shared /var/run/netns mount ``ip`` maintains)
    with loopback up."""
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, text=True)
    ns = Netns(name)
    ns.run(lambda ipr: ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up"))
    return ns


def delete_netns(name: str) -> None:
    """Remove a named namespace (no error when it is already gone)."""
    if netns_exists(name):
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
