"""Network-namespace helpers for pyroute2, without subprocesses.

pyroute2 opens sockets in another netns by forking a helper process, which is
slow and unsafe in a threaded agent. ``setns(2)`` only changes the calling
*thread*, so instead we run a function on a short-lived thread that first
enters the namespace: sockets it creates (an ``IPRoute``) and ``/proc/sys/net``
files it opens belong to that namespace, and the agent's own threads never
leave theirs.

The link helpers import pyroute2 only when called, so importing this module is cheap.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")

NETNS_RUN_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000

_libc: ctypes.CDLL | None = None


class NetnsGone(OSError):
    """The network namespace path does not exist (any more)."""


def netns_path(netns: str) -> str:
    """A CNI netns reference as a path: bare names live in /var/run/netns."""
    if not netns:
        raise NetnsGone(errno.ENOENT, "no network namespace given")
    return netns if "/" in netns else os.path.join(NETNS_RUN_DIR, netns)


def netns_exists(netns: str) -> bool:
    try:
        return os.path.exists(netns_path(netns))
    except NetnsGone:
        return False


def open_netns(netns: str) -> int:
    """An O_RDONLY fd on the namespace; ``NetnsGone`` when it is missing."""
    path = netns_path(netns)
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsGone(errno.ENOENT, f"network namespace {path} does not exist") from None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns failed: {os.strerror(err)}")


def run_in_netns(fd: int, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a thread that has entered the namespace ``fd``; re-raise its error."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            _setns(fd)
            box["value"] = fn()
        except BaseException as exc:  # handed back to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name="netns-worker", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def read_sysctl(path: str) -> str | None:
    """A /proc/sys value of the calling thread's netns, or None when absent."""
    try:
        with open(f"/proc/sys/{path}") as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def write_sysctl(path: str, value: str) -> None:
    """Write a /proc/sys value of the calling thread's netns unless it already holds it."""
    if read_sysctl(path) == value:
        return
    with open(f"/proc/sys/{path}", "w") as f:
        f.write(value)


def spawn_in_netns(fd: int, fn: Callable[[], object], name: str = "netns-thread") -> threading.Thread:
    """Start a long-lived daemon thread that enters the namespace ``fd`` and runs ``fn``.

    Sockets and /proc/sys files the thread opens belong to that namespace
    (e.g. an in-process agent under test). ``fd`` may be closed once this
    returns: the thread has entered the namespace by then.
    """
    entered = threading.Event()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            _setns(fd)
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)
            entered.set()
            return
        entered.set()
        fn()

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    entered.wait()
    if failure:
        raise failure[0]
    return thread


def get_link(ipr: Any, name: str) -> Any | None:
    """The link message for ``name`` or None (one RTM_GETLINK, no dump)."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return None
        raise


def link_kind(link: Any) -> str | None:
    """A link message's ``IFLA_INFO_KIND`` ("veth", "vxlan", …), or None."""
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def delete_link(ipr: Any, index: int) -> None:
    """Delete the link ``index``; one already gone is fine."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if exc.code not in (errno.ENODEV, errno.ENOENT):
            raise
