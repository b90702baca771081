"""Routes to other nodes' pod blocks in VPP, plain or over VXLAN.

Pods reach table 0 through their VRF's default route, so a block of
another node is a table-0 route: via the node's address on the uplink
(``encap: none``), or via a VXLAN tunnel to that node (``encap: vxlan``).

Tunnels follow the Linux convention (``linux/vxlan.py``: VNI 4096, UDP 4789,
VTEP MACs from node names) so VPP and Linux nodes share one overlay. A VPP
VXLAN interface is an Ethernet interface whose MAC cannot be chosen, so:
decapsulated frames go to ``ethernet-input`` (not ``l2-input``, which drops
them on an interface that is not bridged), the local VTEP MAC is added as a
secondary MAC (the frames peers send carry it), the tunnel borrows the
uplink's address (unnumbered), and the peer is a static neighbour *without*
a FIB entry: with one, the /32 of the peer's address would point into the
tunnel and the tunnel's own packets would be encapsulated twice.

Ownership: tunnels carry the tag ``vppagent:vxlan:<peer>``; routes through
them are ours by construction; plain routes have no tag and are recorded in
the state store (``node-route``), whose epoch tells a restarted VPP from a
restarted agent. A plain route is never written over a route to the same
block that is not ours.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, Mapping

from vppagent.dataplane.linux.vxlan import VXLAN_PORT, VXLAN_VNI, vtep_mac
from vppagent.dataplane.vpp.batch import Calls, Plan
from vppagent.dataplane.vpp.context import ALL, Context, UpdatableVppDescriptor
from vppagent.dataplane.vpp.keys import IfaceRefKey
from vppagent.dataplane.vpp.names import PREFIX, TAG_LIMIT, parse
from vppagent.dataplane.vpp.store import register
from vppagent.model.updates import RouteEncap, RouteInfo

log = logging.getLogger(__name__)

ADMIN_UP = 1
NEIGHBOR_STATIC, NEIGHBOR_NO_FIB_ENTRY = 1, 2     # vl_api_ip_neighbor_flags_t
DECAP_NODE = "ethernet-input"
STORE_KIND = "node-route"
GONE = ("NO_SUCH_ENTRY", "INVALID_SW_IF_INDEX", "NO_SUCH_FIB")


def tunnel_tag(peer: str) -> str:
    tag = f"{PREFIX}vxlan:{peer}"
    if len(tag) > TAG_LIMIT:
        raise ValueError(f"VPP tag {tag!r} is too long")
    return tag


def _input_node(address: str) -> str:
    return "vxlan6-input" if ":" in address else "vxlan4-input"


def _ip(address: str) -> dict[str, str]:
    return {"ip6" if ":" in address else "ip4": address}


def _nh(path: Any) -> str:
    addr = path.nh.address
    return str(addr.ip6 if int(path.proto) == 1 else addr.ip4)


class RouteConflict(RuntimeError):
    """A route to the block exists in table 0 and is not ours: we leave it alone."""


# ------------------------------------------------------------------ keys


@register
@dataclass(frozen=True, order=True)
class NodeTunnelKey:
    """A VXLAN tunnel to another node, by its underlay address."""

    peer: str


@register
@dataclass(frozen=True)
class NodeTunnelValue:
    src: str                      # our uplink address of the peer's family
    uplink: str                   # the interface the tunnel borrows it from (unnumbered)
    uplink_index: int
    local_mac: str                # vtep_mac(this node): a secondary MAC (no dump shows it)
    peer_mac: str                 # vtep_mac(the peer): its static neighbour
    vni: int = VXLAN_VNI
    port: int = VXLAN_PORT
    decap: str = DECAP_NODE


@register
@dataclass(frozen=True, order=True)
class NodeRouteKey:
    """A table-0 route to another node's block (a canonical CIDR)."""

    prefix: str


@register
@dataclass(frozen=True)
class NodeRouteValue:
    gateway: str
    via: str                      # vxlan | uplink | fib (recursive, without an uplink)
    uplink: str = ""
    sw_if_index: int = ALL        # the uplink's, via uplink


# ------------------------------------------------------------------ descriptors


class NodeTunnelDescriptor(UpdatableVppDescriptor):
    kind = NodeTunnelKey
    name = "node-tunnel"

    def __init__(self, ctx: Context, desired: Callable[[Any], Any]) -> None:
        super().__init__(ctx)
        self.desired = desired
        self.index_to_peer: dict[int, str] = {}

    def dependencies(self, key: NodeTunnelKey, value: NodeTunnelValue) -> Iterable[Any]:
        return (IfaceRefKey(value.uplink),)

    @staticmethod
    def _tunnel(key: NodeTunnelKey, v: NodeTunnelValue, add: bool, decap: int = ALL) -> tuple[str, dict[str, Any]]:
        return ("vxlan_add_del_tunnel_v3", {
            "is_add": add, "instance": ALL, "src_address": v.src, "dst_address": key.peer, "src_port": v.port,
            "dst_port": v.port, "mcast_sw_if_index": ALL, "encap_vrf_id": 0, "decap_next_index": decap,
            "vni": v.vni, "is_l3": False})

    @staticmethod
    def _neighbor(idx: int, key: NodeTunnelKey, mac: str, add: bool) -> tuple[str, dict[str, Any]]:
        return ("ip_neighbor_add_del", {"is_add": add, "neighbor": {
            "sw_if_index": idx, "flags": NEIGHBOR_STATIC | NEIGHBOR_NO_FIB_ENTRY, "mac_address": mac,
            "ip_address": key.peer}})

    @staticmethod
    def _secondary(idx: int, mac: str, add: bool) -> tuple[str, dict[str, Any]]:
        return ("sw_interface_add_del_mac_address", {"sw_if_index": idx, "addr": mac, "is_add": int(add)})

    @staticmethod
    def _unnumbered(idx: int, donor: int, add: bool) -> tuple[str, dict[str, Any]]:
        return ("sw_interface_set_unnumbered", {"sw_if_index": donor, "unnumbered_sw_if_index": idx,
                                                "is_add": add})

    def plan_create(self, key: NodeTunnelKey, value: NodeTunnelValue) -> Plan:
        (nxt,) = yield Calls([("add_node_next", {"node_name": _input_node(key.peer), "next_name": value.decap})],
                             sync=True)
        (reply,) = yield Calls([self._tunnel(key, value, True, int(nxt.next_index))], sync=True, returns_ids=True)
        idx = int(reply.sw_if_index)
        try:
            calls = [("sw_interface_tag_add_del", {"is_add": True, "sw_if_index": idx, "tag": tunnel_tag(key.peer)}),
                     self._secondary(idx, value.local_mac, True),
                     self._unnumbered(idx, value.uplink_index, True)]
            if ":" in key.peer:
                calls.append(("sw_interface_ip6_enable_disable", {"sw_if_index": idx, "enable": True}))
            calls += [self._neighbor(idx, key, value.peer_mac, True),
                      ("sw_interface_set_flags", {"sw_if_index": idx, "flags": ADMIN_UP})]
            yield Calls(calls)
        except Exception:
            yield Calls([self._tunnel(key, value, False)])
            raise
        self.index_to_peer[idx] = key.peer
        return idx

    def needs_recreate(self, key: NodeTunnelKey, old: NodeTunnelValue, new: NodeTunnelValue) -> bool:
        return (old.src, old.vni, old.port, old.decap) != (new.src, new.vni, new.port, new.decap)

    def plan_update(self, key: NodeTunnelKey, old: NodeTunnelValue, new: NodeTunnelValue, idx: int) -> Plan:
        calls = []
        if old.uplink_index != new.uplink_index:
            calls += [self._unnumbered(idx, old.uplink_index, False), self._unnumbered(idx, new.uplink_index, True)]
        if old.local_mac != new.local_mac:
            if old.local_mac:
                calls.append(self._secondary(idx, old.local_mac, False))
            calls.append(self._secondary(idx, new.local_mac, True))
        if old.peer_mac != new.peer_mac:
            if old.peer_mac:
                calls.append(self._neighbor(idx, key, old.peer_mac, False))
            calls.append(self._neighbor(idx, key, new.peer_mac, True))
        yield Calls(calls, tolerate=GONE)
        return idx

    def plan_delete(self, key: NodeTunnelKey, value: NodeTunnelValue, idx: int) -> Plan:
        yield Calls([self._tunnel(key, value, False)], tolerate=GONE)
        self.index_to_peer.pop(idx, None)

    def dump(self) -> Mapping[NodeTunnelKey, tuple[NodeTunnelValue, Any]]:
        conn = self.ctx.conn
        ours: dict[int, str] = {}
        names: dict[int, str] = {}
        for d in conn.dump("sw_interface_dump", sw_if_index=ALL):
            names[int(d.sw_if_index)] = str(d.interface_name)
            parsed = parse(str(d.tag))
            if parsed and parsed[0] == "vxlan":
                ours[int(d.sw_if_index)] = parsed[1]
        self.index_to_peer = dict(ours)
        if not ours or not conn.has("vxlan_tunnel_v2_dump"):
            return {}
        donors = {int(d.sw_if_index): int(d.ip_sw_if_index) for d in conn.dump("ip_unnumbered_dump", sw_if_index=ALL)}
        macs: dict[tuple[int, str], str] = {}
        for af in (0, 1):
            for d in conn.dump("ip_neighbor_dump", sw_if_index=ALL, af=af):
                n = d.neighbor
                if int(n.sw_if_index) in ours:
                    macs[(int(n.sw_if_index), str(n.ip_address))] = str(n.mac_address)
        decap = {node: int(conn.call("add_node_next", node_name=node, next_name=DECAP_NODE).next_index)
                 for node in ("vxlan4-input", "vxlan6-input")}     # idempotent: where ethernet-input is
        out = {}
        for t in conn.dump("vxlan_tunnel_v2_dump", sw_if_index=ALL):
            idx = int(t.sw_if_index)
            if idx not in ours:
                continue
            key = NodeTunnelKey(ours[idx])
            kept = self.desired(key)
            donor = donors.get(idx, ALL)
            value = NodeTunnelValue(
                src=str(t.src_address), uplink=names.get(donor, ""), uplink_index=donor,
                local_mac=kept.local_mac if isinstance(kept, NodeTunnelValue) else "",
                peer_mac=macs.get((idx, key.peer), ""), vni=int(t.vni),
                port=int(t.src_port) if int(t.src_port) == int(t.dst_port) else -1,
                decap=DECAP_NODE if int(t.decap_next_index) == decap[_input_node(key.peer)] else "other")
            out[key] = (value, idx)
        return out


class NodeRouteDescriptor(UpdatableVppDescriptor):
    kind = NodeRouteKey
    name = "node-route"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.foreign: set[str] = set()

    def dependencies(self, key: NodeRouteKey, value: NodeRouteValue) -> Iterable[Any]:
        if value.via == "vxlan":
            return (NodeTunnelKey(value.gateway),)
        if value.via == "uplink":
            return (IfaceRefKey(value.uplink),)
        return ()

    def _route(self, key: NodeRouteKey, value: NodeRouteValue, add: bool) -> tuple[str, dict[str, Any]]:
        idx = self.ctx.need(NodeTunnelKey(value.gateway)) if value.via == "vxlan" else value.sw_if_index
        path = {"sw_if_index": idx, "table_id": 0, "proto": 1 if ":" in value.gateway else 0,
                "nh": {"address": _ip(value.gateway)}}
        return ("ip_route_add_del", {"is_add": add, "is_multipath": False, "route": {
            "table_id": 0, "prefix": key.prefix, "paths": [path]}})

    def plan_create(self, key: NodeRouteKey, value: NodeRouteValue) -> Plan:
        if key.prefix in self.foreign:
            raise RouteConflict(f"table 0 has a route to {key.prefix} that is not vppagent's: left alone")
        yield Calls([self._route(key, value, True)])
        self.ctx.store.put(STORE_KIND, key, value, None)

    def plan_update(self, key: NodeRouteKey, old: NodeRouteValue, new: NodeRouteValue, meta: Any) -> Plan:
        yield Calls([self._route(key, new, True)])      # an add of an existing prefix replaces its paths
        self.ctx.store.put(STORE_KIND, key, new, None)

    def plan_delete(self, key: NodeRouteKey, value: NodeRouteValue, meta: Any) -> Plan:
        if value.via == "vxlan" and self.ctx.metadata(NodeTunnelKey(value.gateway)) is None:
            self.ctx.store.remove(STORE_KIND, key)
            return None                  # its tunnel is gone, and the route with it
        yield Calls([self._route(key, value, False)], tolerate=GONE)
        self.ctx.store.remove(STORE_KIND, key)
        return None

    def dump(self) -> Mapping[NodeRouteKey, tuple[NodeRouteValue, Any]]:
        conn = self.ctx.conn
        recorded = self.ctx.store.objects(STORE_KIND)
        interfaces = conn.dump("sw_interface_dump", sw_if_index=ALL)
        tunnels = {int(d.sw_if_index) for d in interfaces if (p := parse(str(d.tag))) and p[0] == "vxlan"}
        names = {int(d.sw_if_index): str(d.interface_name) for d in interfaces}
        out: dict[NodeRouteKey, tuple[NodeRouteValue, Any]] = {}
        foreign: set[str] = set()
        for is6 in (False, True):
            for d in conn.dump("ip_route_v2_dump", table={"table_id": 0, "is_ip6": is6}):
                r = d.route
                key = NodeRouteKey(str(ipaddress.ip_network(str(r.prefix))))
                paths = list(r.paths)
                idx = int(paths[0].sw_if_index) if len(paths) == 1 else -1
                if idx in tunnels:
                    out[key] = (NodeRouteValue(_nh(paths[0]), "vxlan"), None)
                elif key in recorded:
                    if idx == -1:
                        out[key] = (NodeRouteValue("", "multipath"), None)
                    elif idx == ALL:
                        out[key] = (NodeRouteValue(_nh(paths[0]), "fib"), None)
                    else:
                        out[key] = (NodeRouteValue(_nh(paths[0]), "uplink", names.get(idx, ""), idx), None)
                else:
                    foreign.add(key.prefix)
        for key in recorded.keys() - out.keys():
            self.ctx.store.remove(STORE_KIND, key)       # gone from VPP: no longer ours to remember
        self.foreign = foreign
        return out


def route_descriptors(ctx: Context, desired: Callable[[Any], Any]) -> list[UpdatableVppDescriptor]:
    """Tunnels, then routes (register both on the policy reconciler)."""
    return [NodeTunnelDescriptor(ctx, desired), NodeRouteDescriptor(ctx)]


# ------------------------------------------------------------------ rendering


@dataclass(frozen=True)
class Local:
    """What this node contributes to its routes."""

    node_name: str
    uplink: str | None = None
    uplink_index: int | None = None
    addresses: tuple[Any, ...] = ()   # the uplink's addresses


class NodeRoutes:
    """The update stream's routes as keys; tunnels are shared by a peer's blocks."""

    def __init__(self, set_group: Callable[[Hashable, Mapping[Hashable, Any]], None],
                 local: Callable[[], Local]) -> None:
        self._set_group = set_group
        self._local = local
        self.routes: dict[str, RouteInfo] = {}
        self._peer_routes: dict[str, set[str]] = {}
        self.problems: dict[str, str] = {}        # route id -> why it is not programmed

    def changed(self, route_id: str, info: RouteInfo | None) -> None:
        self._render(route_id, info, self._local())

    def refresh(self) -> None:
        """Re-render everything (the uplink or its addresses may have changed)."""
        local = self._local()
        for route_id, info in list(self.routes.items()):
            self._render(route_id, info, local)

    def _render(self, route_id: str, info: RouteInfo | None, local: Local) -> None:
        touched: set[str] = set()
        old = self.routes.pop(route_id, None)
        if old is not None and old.encap is RouteEncap.VXLAN:
            self._peer_routes.get(str(old.gateway), set()).discard(route_id)
            touched.add(str(old.gateway))
        self.problems.pop(route_id, None)
        items: dict[Hashable, Any] = {}
        if info is not None:
            self.routes[route_id] = info
            gw = str(info.gateway)
            prefix = str(ipaddress.ip_network(str(info.dst)))
            if info.encap is RouteEncap.VXLAN:
                self._peer_routes.setdefault(gw, set()).add(route_id)
                touched.add(gw)
                items[NodeRouteKey(prefix)] = NodeRouteValue(gw, "vxlan")
            elif local.uplink and local.uplink_index is not None:
                items[NodeRouteKey(prefix)] = NodeRouteValue(gw, "uplink", local.uplink, local.uplink_index)
            else:
                items[NodeRouteKey(prefix)] = NodeRouteValue(gw, "fib")
        self._set_group(("node-route", route_id), items)
        for peer in touched:
            self._render_tunnel(peer, local)

    def _render_tunnel(self, peer: str, local: Local) -> None:
        users = self._peer_routes.get(peer)
        if not users:
            self._peer_routes.pop(peer, None)
            self._set_group(("node-tunnel", peer), {})
            return
        family = 6 if ":" in peer else 4
        src = next((a for a in local.addresses if a.version == family), None)
        if not local.uplink or local.uplink_index is None or src is None:
            why = (f"no uplink address of IPv{family} to source a VXLAN tunnel to {peer} from"
                   if local.uplink else "VXLAN routes need dataplane.uplinkInterface")
            for route_id in users:
                self.problems[route_id] = why
            log.warning("%s: %s", ", ".join(sorted(users)), why)
            self._set_group(("node-tunnel", peer), {})
            return
        node = self.routes[min(users)].node
        value = NodeTunnelValue(src=str(src), uplink=local.uplink, uplink_index=local.uplink_index,
                                local_mac=vtep_mac(local.node_name or socket.gethostname()),
                                peer_mac=vtep_mac(node))
        self._set_group(("node-tunnel", peer), {NodeTunnelKey(peer): value})
