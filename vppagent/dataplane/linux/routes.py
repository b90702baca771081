"""Routes to other nodes' pod blocks on Linux (the iptables and nftables modes).

A ``RouteUpdate`` becomes a main-table route to the block via the node's
underlay address: resolved by the kernel on the underlay (``encap: none``),
or on the VXLAN overlay (``via <node> dev vxlan.vppagent onlink``, with the
peer's neighbour and forwarding entries and the device itself; see
``vxlan.py``). Shared keys are reference-counted here: a peer exists while
one of its blocks uses the overlay, a device while one peer does.

Ownership: every route we write carries the protocol ``ROUTE_PROTO``, so
after a restart the routes with it are ours (adopted when equal, deleted
when no longer wanted) and every other route is left alone: a create never
replaces a foreign route to the same block, it fails (and is retried)
instead.

Netlink calls run in the dataplane's ``netns`` option when set (tests),
otherwise in the calling thread's namespace, like pod wiring.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, Mapping, TypeVar

from vppagent.dataplane.linux.netlink_ns import open_netns, run_in_netns
from vppagent.dataplane.linux.vxlan import (
    DEVICES, VxlanDeviceDescriptor, VxlanDeviceKey, VxlanDeviceValue, VxlanPeerDescriptor, VxlanPeerKey,
    VxlanPeerValue, vtep_mac,
)
from vppagent.model.updates import RouteEncap, RouteInfo
from vppagent.reconciler import Descriptor

log = logging.getLogger(__name__)

T = TypeVar("T")
ROUTE_PROTO = 0x56          # rt_protos value of vppagent's routes ("V")
MAIN_TABLE = 254
RTNH_F_ONLINK = 4


class Netlink:
    """One ``IPRoute`` per call, in ``netns()`` when it names one."""

    def __init__(self, netns: Callable[[], str | None] = lambda: None) -> None:
        self.netns = netns

    def run(self, fn: Callable[[Any], T]) -> T:
        def go() -> T:
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                return fn(ipr)

        ns = self.netns()
        if not ns:
            return go()
        fd = open_netns(ns)
        try:
            return run_in_netns(fd, go)
        finally:
            os.close(fd)


# ------------------------------------------------------------------ routes


@dataclass(frozen=True, order=True)
class NodeRouteKey:
    """A route to another node's block (a canonical CIDR)."""

    dst: str


@dataclass(frozen=True)
class NodeRouteValue:
    gateway: str                  # the node's underlay address
    device: str = ""              # "": the kernel resolves the gateway; else the overlay device (onlink)


class RouteConflict(RuntimeError):
    """A route to the block exists and is not ours: we leave it alone."""


def canonical(cidr: Any) -> str:
    return str(ipaddress.ip_network(str(cidr), strict=False))


class NodeRouteDescriptor(Descriptor[NodeRouteKey, NodeRouteValue]):
    kind = NodeRouteKey
    name = "linux-node-route"

    def __init__(self, netlink: Netlink) -> None:
        super().__init__()
        self.netlink = netlink

    def dependencies(self, key: NodeRouteKey, value: NodeRouteValue) -> Iterable[Any]:
        if not value.device:
            return ()
        family = ipaddress.ip_network(key.dst).version
        return (VxlanPeerKey(family, value.gateway),)

    def _args(self, ipr: Any, key: NodeRouteKey, value: NodeRouteValue) -> dict[str, Any]:
        args: dict[str, Any] = {"dst": key.dst, "gateway": value.gateway, "proto": ROUTE_PROTO,
                                "table": MAIN_TABLE}
        if value.device:
            idx = ipr.link_lookup(ifname=value.device)
            if not idx:
                raise RuntimeError(f"{value.device} does not exist")
            args.update(oif=idx[0], flags=RTNH_F_ONLINK)
        return args

    def create(self, key: NodeRouteKey, value: NodeRouteValue) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        def go(ipr: Any) -> None:
            args = self._args(ipr, key, value)
            try:
                ipr.route("add", **args)
                return
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
            found = _occupant(ipr, key.dst)
            if found is not None and found != ROUTE_PROTO:
                raise RouteConflict(f"a route to {key.dst} with protocol {found} exists and is not "
                                    "vppagent's: left alone")
            ipr.route("replace", **args)
        self.netlink.run(go)

    def update(self, key: NodeRouteKey, old: NodeRouteValue, new: NodeRouteValue, metadata: Any) -> None:
        self.netlink.run(lambda ipr: ipr.route("replace", **self._args(ipr, key, new)))

    def delete(self, key: NodeRouteKey, value: NodeRouteValue, metadata: Any) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        def go(ipr: Any) -> None:
            try:   # the kernel matches the protocol: a foreign route to the block is never hit
                ipr.route("del", dst=key.dst, proto=ROUTE_PROTO, table=MAIN_TABLE)
            except NetlinkError as exc:
                if exc.code not in (errno.ESRCH, errno.ENOENT):
                    raise
        self.netlink.run(go)

    def dump(self) -> Mapping[NodeRouteKey, tuple[NodeRouteValue, Any]]:
        def go(ipr: Any) -> dict[NodeRouteKey, tuple[NodeRouteValue, Any]]:
            devices = {i: name for name in DEVICES.values() for i in ipr.link_lookup(ifname=name)}
            out = {}
            for r in _main_routes(ipr):
                if r["proto"] != ROUTE_PROTO:
                    continue
                dst = r.get_attr("RTA_DST") or ("0.0.0.0" if r["family"] == socket.AF_INET else "::")
                value = NodeRouteValue(gateway=r.get_attr("RTA_GATEWAY") or "",
                                       device=devices.get(r.get_attr("RTA_OIF"), ""))
                out[NodeRouteKey(canonical(f"{dst}/{r['dst_len']}"))] = (value, None)
            return out
        return self.netlink.run(go)


def _main_routes(ipr: Any) -> Iterable[Any]:
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.route("dump", family=family):
            if (r.get_attr("RTA_TABLE") or r["table"]) == MAIN_TABLE and r["type"] == 1:   # unicast
                yield r


def _occupant(ipr: Any, dst: str) -> int | None:
    """The protocol of the main-table route to exactly ``dst``, if any."""
    for r in _main_routes(ipr):
        here = r.get_attr("RTA_DST") or ("0.0.0.0" if r["family"] == socket.AF_INET else "::")
        if canonical(f"{here}/{r['dst_len']}") == dst:
            return int(r["proto"])
    return None


# ------------------------------------------------------------------ rendering


class NodeRoutes:
    """The update stream's routes as keys of a ``ReconcilingDataplane``.

    Registers its descriptors on ``dataplane.reconciler``; ``changed`` costs
    what one route touches (its key, its peer, its family's device).
    """

    def __init__(self, dataplane: Any, *, netns: Callable[[], str | None] | None = None,
                 node_name: Callable[[], str | None] | None = None,
                 vxlan_mtu: Callable[[], int] | None = None) -> None:
        self._set_group: Callable[[Hashable, Mapping[Hashable, Any]], None] = dataplane.set_group
        self._node_name = node_name or (lambda: getattr(dataplane, "node_name", None))
        self._vxlan_mtu = vxlan_mtu or (lambda: int(getattr(dataplane, "vxlan_mtu", 0) or 0))
        self.netlink = Netlink(netns or (lambda: getattr(getattr(dataplane, "config", None), "netns", None)))
        for desc in (NodeRouteDescriptor(self.netlink), VxlanDeviceDescriptor(self.netlink),
                     VxlanPeerDescriptor(self.netlink)):
            dataplane.reconciler.register(desc)
        self.routes: dict[str, RouteInfo] = {}
        self._peer_routes: dict[VxlanPeerKey, set[str]] = {}

    def local_mac(self) -> str:
        return vtep_mac(self._node_name() or socket.gethostname())

    def changed(self, route_id: str, info: RouteInfo | None) -> None:
        """Route ``route_id`` is now ``info`` (None: removed)."""
        touched: set[VxlanPeerKey] = set()
        old = self.routes.pop(route_id, None)
        if old is not None and old.encap is RouteEncap.VXLAN:
            peer = _peer(old)
            self._peer_routes.get(peer, set()).discard(route_id)
            touched.add(peer)
        items: dict[Hashable, Any] = {}
        if info is not None:
            self.routes[route_id] = info
            family = info.dst.version
            device = ""
            if info.encap is RouteEncap.VXLAN:
                peer = _peer(info)
                self._peer_routes.setdefault(peer, set()).add(route_id)
                touched.add(peer)
                device = DEVICES[family]
            items[NodeRouteKey(canonical(info.dst))] = NodeRouteValue(str(info.gateway), device)
        self._set_group(("node-route", route_id), items)
        for peer in touched:
            self._render_peer(peer)
        for family in {p.family for p in touched}:
            self._render_device(family)

    def _render_peer(self, peer: VxlanPeerKey) -> None:
        users = self._peer_routes.get(peer)
        if not users:
            self._peer_routes.pop(peer, None)
            self._set_group(("vxlan-peer", peer), {})
            return
        node = self.routes[min(users)].node
        self._set_group(("vxlan-peer", peer), {peer: VxlanPeerValue(vtep_mac(node))})

    def _render_device(self, family: int) -> None:
        used = any(p.family == family for p in self._peer_routes)
        value = VxlanDeviceValue(mac=self.local_mac(), mtu=self._vxlan_mtu())
        self._set_group(("vxlan-device", family), {VxlanDeviceKey(family): value} if used else {})


def _peer(info: RouteInfo) -> VxlanPeerKey:
    return VxlanPeerKey(info.dst.version, str(info.gateway))
