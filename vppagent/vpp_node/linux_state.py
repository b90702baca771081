"""Record a Linux interface's state and put it back exactly.

Handing the uplink to VPP takes it away from Linux: moved into VPP's network
namespace (or rebound to vfio-pci) it loses its addresses, routes, permanent
neighbours and per-interface sysctls.  Calico/VPP users meet the results as
"the node loses connectivity or DNS after VPP takes the NIC".  So everything
Linux knows about the link is recorded first (and saved to a file, for a
manager that crashes), replayed onto the host interface that replaces it, and
replayed onto the uplink again when VPP stops.

What is kept: name, MAC, MTU, up/down, promiscuous mode, txqueuelen, alias;
IPv4 addresses (with labels, broadcast, flags and finite lifetimes) and static
IPv6 addresses; routes of every table whose output interface is the link
(default routes included, with protocol, scope, metric, source, metrics,
onlink); permanent neighbours; a set of per-interface sysctls.  The kernel
recreates its own entries (connected and local routes, the EUI-64 link-local
address) once addresses are back; SLAAC addresses and RA routes are learned
again.  Multipath routes through the link are recorded but not replayed.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vppagent.dataplane.linux.netlink_ns import read_sysctl, write_sysctl
from vppagent.vpp_node.netns import Netns

log = logging.getLogger(__name__)

IFF_UP, IFF_PROMISC = 0x1, 0x100
IFA_F_SECONDARY, IFA_F_NODAD, IFA_F_OPTIMISTIC, IFA_F_DADFAILED = 0x01, 0x02, 0x04, 0x08
IFA_F_HOMEADDRESS, IFA_F_DEPRECATED, IFA_F_TENTATIVE, IFA_F_PERMANENT = 0x10, 0x20, 0x40, 0x80
IFA_F_MANAGETEMPADDR, IFA_F_NOPREFIXROUTE = 0x100, 0x200
SETTABLE_ADDR_FLAGS = IFA_F_NODAD | IFA_F_HOMEADDRESS | IFA_F_MANAGETEMPADDR | IFA_F_NOPREFIXROUTE
VOLATILE_ADDR_FLAGS = IFA_F_TENTATIVE | IFA_F_OPTIMISTIC | IFA_F_DADFAILED | IFA_F_DEPRECATED
FOREVER = 0xFFFFFFFF
RTPROT_REDIRECT, RTPROT_KERNEL, RTPROT_RA = 1, 2, 9
RTNH_F_ONLINK = 0x4
NUD_PERMANENT = 0x80
RT_TABLE_LOCAL = 255
SYSCTLS = {
    "ipv4": ("forwarding", "rp_filter", "arp_ignore", "arp_announce", "arp_filter", "proxy_arp",
             "accept_local", "accept_redirects", "send_redirects", "route_localnet"),
    "ipv6": ("disable_ipv6", "forwarding", "accept_ra", "autoconf", "accept_dad", "accept_redirects",
             "addr_gen_mode", "use_tempaddr"),
}
FAMILY = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}


class LinuxStateError(RuntimeError):
    """The link is missing or Linux refused part of the state."""


@dataclass(frozen=True)
class AddrState:
    family: int
    address: str
    prefixlen: int
    scope: int = 0
    flags: int = 0
    broadcast: str | None = None
    label: str | None = None
    valid_lft: int = FOREVER
    preferred_lft: int = FOREVER

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.family, self.address, self.prefixlen)

    @property
    def kernel_made(self) -> bool:
        """Addresses Linux creates or learns by itself: the link-local from
        the MAC (no IFA_F_PERMANENT on v6 means SLAAC/temporary)."""
        return self.family == socket.AF_INET6 and not self.flags & IFA_F_PERMANENT

    def comparable(self) -> tuple:
        """What must match after a restore (lifetimes count down; DAD flags pass)."""
        finite = self.valid_lft != FOREVER
        return (self.family, self.address, self.prefixlen, self.scope, self.flags & ~VOLATILE_ADDR_FLAGS,
                self.broadcast, self.label, finite)


@dataclass(frozen=True)
class RouteState:
    family: int
    table: int
    dst: str | None            # None: default route
    dst_len: int
    gateway: str | None = None
    prefsrc: str | None = None
    proto: int = 3              # RTPROT_BOOT, what `ip route add` uses
    scope: int = 0
    type: int = 1               # RTN_UNICAST
    priority: int | None = None
    tos: int = 0
    onlink: bool = False
    metrics: tuple[tuple[str, int], ...] = ()
    multipath: bool = False

    @property
    def kernel_made(self) -> bool:
        return self.proto in (RTPROT_KERNEL, RTPROT_REDIRECT, RTPROT_RA) or self.table == RT_TABLE_LOCAL

    @property
    def learned(self) -> bool:
        """Routes Linux learns again by itself (not verified after a restore)."""
        return self.proto in (RTPROT_REDIRECT, RTPROT_RA)

    def describe(self) -> str:
        dst = f"{self.dst}/{self.dst_len}" if self.dst else "default"
        via = f" via {self.gateway}" if self.gateway else ""
        return f"{dst}{via} table {self.table} proto {self.proto} metric {self.priority}"


@dataclass(frozen=True)
class NeighState:
    family: int
    dst: str
    lladdr: str


@dataclass(frozen=True)
class LinkState:
    """One interface as Linux had it."""

    name: str
    ifindex: int
    kind: str | None
    mac: str
    mtu: int
    up: bool
    promisc: bool = False
    txqlen: int | None = None
    alias: str | None = None
    addresses: tuple[AddrState, ...] = ()
    routes: tuple[RouteState, ...] = ()
    neighbours: tuple[NeighState, ...] = ()
    sysctls: tuple[tuple[str, str], ...] = ()      # ("ipv4/rp_filter", "1")

    # ------------------------------------------------------------ persistence

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LinkState":
        d = dict(data)
        d["addresses"] = tuple(AddrState(**a) for a in d.get("addresses", ()))
        d["routes"] = tuple(RouteState(**{**r, "metrics": tuple(tuple(m) for m in r.get("metrics", ()))})
                            for r in d.get("routes", ()))
        d["neighbours"] = tuple(NeighState(**n) for n in d.get("neighbours", ()))
        d["sysctls"] = tuple(tuple(s) for s in d.get("sysctls", ()))
        return cls(**d)

    def save(self, path: str, **extra: Any) -> None:
        """Write atomically (with ``extra`` keys beside ``link``)."""
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump({"link": self.to_json(), **extra}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)

    # ------------------------------------------------------------- comparing

    def comparable(self) -> dict[str, Any]:
        """Everything a restore must reproduce, independent of ifindex."""
        return {
            "name": self.name, "mac": self.mac, "mtu": self.mtu, "up": self.up, "promisc": self.promisc,
            "txqlen": self.txqlen, "alias": self.alias,
            "addresses": sorted(a.comparable() for a in self.addresses if not a.kernel_made
                                or a.address.startswith("fe80:")),
            "routes": sorted(replace(r, multipath=False).describe() + f" {r.scope} {r.type} {r.prefsrc} "
                             f"{r.tos} {r.onlink} {r.metrics}" for r in self.routes if not r.learned),
            "neighbours": sorted((n.family, n.dst, n.lladdr) for n in self.neighbours),
            "sysctls": dict(self.sysctls),
        }

    def differences(self, other: "LinkState") -> list[str]:
        """Human-readable differences (``other`` is what Linux has now)."""
        mine, theirs = self.comparable(), other.comparable()
        out = []
        for key in mine:
            if mine[key] != theirs[key]:
                if isinstance(mine[key], list):
                    missing = [x for x in mine[key] if x not in theirs[key]]
                    extra = [x for x in theirs[key] if x not in mine[key]]
                    out.append(f"{key}: missing {missing}, unexpected {extra}")
                else:
                    out.append(f"{key}: recorded {mine[key]!r}, now {theirs[key]!r}")
        return out


def load_state(path: str) -> tuple[LinkState, dict[str, Any]] | None:
    """A state file written by ``LinkState.save``: (link, extra) or None."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    extra = {k: v for k, v in data.items() if k != "link"}
    return LinkState.from_json(data["link"]), extra


# ---------------------------------------------------------------- recording

def _link_msg(ipr: IPRoute, name: str) -> Any:
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as e:
        if e.code in (errno.ENODEV, errno.ENOENT):
            raise LinuxStateError(f"no interface {name!r}") from None
        raise


def link_index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def _kind(msg: Any) -> str | None:
    info = msg.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def _route_state(r: Any) -> RouteState:
    metrics = r.get_attr("RTA_METRICS")
    mlist: list[tuple[str, int]] = []
    if metrics is not None:
        for name, value in metrics.get("attrs", []):
            mlist.append((name, int(value)))
    dst = r.get_attr("RTA_DST")
    return RouteState(
        family=r["family"], table=r.get_attr("RTA_TABLE") or r["table"], dst=dst, dst_len=r["dst_len"],
        gateway=r.get_attr("RTA_GATEWAY"), prefsrc=r.get_attr("RTA_PREFSRC"), proto=r["proto"],
        scope=r["scope"], type=r["type"], priority=r.get_attr("RTA_PRIORITY"), tos=r["tos"],
        onlink=bool(r["flags"] & RTNH_F_ONLINK), metrics=tuple(sorted(mlist)),
        multipath=r.get_attr("RTA_MULTIPATH") is not None)


def _routes_of(ipr: IPRoute, index: int) -> list[RouteState]:
    out = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.route("dump", family=family):          # every table
            if r.get_attr("RTA_OIF") == index:
                out.append(_route_state(r))
            elif any(hop.get("oif") == index for hop in (r.get_attr("RTA_MULTIPATH") or [])):
                st = _route_state(r)
                log.warning("multipath route %s uses the link; it is recorded but not replayed", st.describe())
                out.append(replace(st, multipath=True))
    return out


def _addresses_of(ipr: IPRoute, index: int) -> list[AddrState]:
    out = []
    for a in ipr.get_addr(index=index):
        info = a.get_attr("IFA_CACHEINFO")
        flags = a.get_attr("IFA_FLAGS")
        out.append(AddrState(
            family=a["family"], address=a.get_attr("IFA_ADDRESS"), prefixlen=a["prefixlen"], scope=a["scope"],
            flags=flags if flags is not None else a["flags"], broadcast=a.get_attr("IFA_BROADCAST"),
            label=a.get_attr("IFA_LABEL"),
            valid_lft=info["ifa_valid"] if info else FOREVER, preferred_lft=info["ifa_preferred"] if info else FOREVER))
    return out


def _neighbours_of(ipr: IPRoute, index: int) -> list[NeighState]:
    out = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for n in ipr.get_neighbours(family=family, ifindex=index):
            if n["state"] & NUD_PERMANENT and n.get_attr("NDA_LLADDR"):
                out.append(NeighState(family=family, dst=n.get_attr("NDA_DST"), lladdr=n.get_attr("NDA_LLADDR")))
    return out


def _read_sysctls(name: str) -> tuple[tuple[str, str], ...]:
    out = []
    for fam, keys in SYSCTLS.items():
        for key in keys:
            v = read_sysctl(f"net/{fam}/conf/{name}/{key}")
            if v is not None:
                out.append((f"{fam}/{key}", v))
    return tuple(out)


def record(netns: Netns, name: str) -> LinkState:
    """Everything Linux has for interface ``name`` in ``netns``."""
    def work(ipr: IPRoute) -> LinkState:
        msg = _link_msg(ipr, name)
        index = msg["index"]
        flags = msg["flags"]
        return LinkState(
            name=name, ifindex=index, kind=_kind(msg), mac=msg.get_attr("IFLA_ADDRESS"),
            mtu=msg.get_attr("IFLA_MTU"), up=bool(flags & IFF_UP), promisc=bool(flags & IFF_PROMISC),
            txqlen=msg.get_attr("IFLA_TXQLEN"), alias=msg.get_attr("IFLA_IFALIAS"),
            addresses=tuple(_addresses_of(ipr, index)), routes=tuple(_routes_of(ipr, index)),
            neighbours=tuple(_neighbours_of(ipr, index)))
    state = netns.run(work)
    return replace(state, sysctls=netns.call(lambda: _read_sysctls(name)))


# ------------------------------------------------------------------ applying

def _ignore(codes: Iterable[int], fn: Any, *args: Any, **kw: Any) -> None:
    try:
        fn(*args, **kw)
    except NetlinkError as e:
        if e.code not in codes:
            raise


def _addr_kwargs(a: AddrState, index: int) -> dict[str, Any]:
    kw: dict[str, Any] = {"index": index, "address": a.address, "prefixlen": a.prefixlen, "scope": a.scope}
    if a.family == socket.AF_INET:
        if a.broadcast:
            kw["broadcast"] = a.broadcast
        if a.label:
            kw["label"] = a.label
    flags = a.flags & SETTABLE_ADDR_FLAGS
    if flags:
        kw["flags"] = flags
    if a.valid_lft != FOREVER:
        kw["valid_lft"], kw["preferred_lft"] = a.valid_lft, min(a.preferred_lft, a.valid_lft)
    return kw


def _route_kwargs(r: RouteState, index: int) -> dict[str, Any]:
    kw: dict[str, Any] = {"family": r.family, "dst_len": r.dst_len, "table": r.table, "proto": r.proto,
                          "scope": r.scope, "type": r.type, "tos": r.tos, "oif": index}
    if r.dst:
        kw["dst"] = r.dst
    if r.gateway:
        kw["gateway"] = r.gateway
    if r.prefsrc:
        kw["prefsrc"] = r.prefsrc
    if r.priority is not None:
        kw["priority"] = r.priority
    if r.onlink:
        kw["flags"] = RTNH_F_ONLINK
    if r.metrics:
        kw["metrics"] = {name: value for name, value in r.metrics}
    return kw


def apply(netns: Netns, state: LinkState, name: str | None = None, *, identity: bool = True,
          dad_timeout: float = 5.0) -> list[str]:
    """Give link ``name`` (default ``state.name``) the recorded state: MTU,
    sysctls, addresses, up/down, routes, neighbours (and with ``identity``,
    MAC, promiscuity, txqueuelen and alias).  Returns what Linux refused
    (each item logged); the caller decides whether that is fatal."""
    name = name or state.name
    problems: list[str] = []

    def note(what: str, e: Exception) -> None:
        msg = f"{name}: {what}: {e}"
        log.warning("restoring %s", msg)
        problems.append(msg)

    def write_sysctls() -> None:
        for key, value in state.sysctls:
            fam, opt = key.split("/", 1)
            try:
                write_sysctl(f"net/{fam}/conf/{name}/{opt}", value)
            except OSError as e:
                note(f"sysctl {key}={value}", e)
    netns.call(write_sysctls)

    def work(ipr: IPRoute) -> None:
        msg = _link_msg(ipr, name)
        index = msg["index"]
        link: dict[str, Any] = {}
        if msg.get_attr("IFLA_MTU") != state.mtu:
            link["mtu"] = state.mtu
        if identity:
            if msg.get_attr("IFLA_ADDRESS") != state.mac:
                link["address"] = state.mac
            if state.txqlen is not None and msg.get_attr("IFLA_TXQLEN") != state.txqlen:
                link["txqlen"] = state.txqlen
            if state.alias and msg.get_attr("IFLA_IFALIAS") != state.alias:
                link["ifalias"] = state.alias
        if link:
            try:
                ipr.link("set", index=index, **link)
            except NetlinkError as e:
                note(f"link {link}", e)
        if identity and bool(msg["flags"] & IFF_PROMISC) != state.promisc:
            try:
                ipr.link("set", index=index, flags=IFF_PROMISC if state.promisc else 0, mask=IFF_PROMISC)
            except NetlinkError as e:
                note("promisc", e)
        for a in state.addresses:
            if a.kernel_made:
                continue
            try:
                _ignore((errno.EEXIST,), ipr.addr, "add", **_addr_kwargs(a, index))
            except NetlinkError as e:
                note(f"address {a.address}/{a.prefixlen}", e)
        ipr.link("set", index=index, state="up")      # routes need an up link
        for r in state.routes:
            if r.kernel_made or r.multipath:
                continue
            try:
                _ignore((errno.EEXIST,), ipr.route, "add", **_route_kwargs(r, index))
            except NetlinkError as e:
                note(f"route {r.describe()}", e)
        for n in state.neighbours:
            try:
                ipr.neigh("replace", family=n.family, dst=n.dst, lladdr=n.lladdr, ifindex=index,
                          state=NUD_PERMANENT)
            except NetlinkError as e:
                note(f"neighbour {n.dst}", e)
        if not state.up:
            ipr.link("set", index=index, state="down")
        else:
            _wait_dad(ipr, index, dad_timeout)
    netns.run(work)
    return problems


def _wait_dad(ipr: IPRoute, index: int, timeout: float) -> None:
    """Poll until no address is tentative (a restored link is only "exact"
    once IPv6 duplicate address detection has finished)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tentative = [a for a in ipr.get_addr(index=index)
                     if (a.get_attr("IFA_FLAGS") or a["flags"]) & IFA_F_TENTATIVE]
        if not tentative:
            return
        time.sleep(0.05)


def flush(netns: Netns, name: str) -> None:
    """Remove the addresses (and so their routes) and permanent neighbours of ``name``."""
    def work(ipr: IPRoute) -> None:
        index = link_index(ipr, name)
        if index is None:
            return
        for a in _addresses_of(ipr, index):
            _ignore((errno.EADDRNOTAVAIL, errno.ENODEV), ipr.addr, "del", index=index, address=a.address,
                    prefixlen=a.prefixlen)
        for n in _neighbours_of(ipr, index):
            _ignore((errno.ENOENT,), ipr.neigh, "del", family=n.family, dst=n.dst, ifindex=index)
    netns.run(work)

