"""VPP's side of the node: the uplink holds the node's addresses and routes,
the host interface connects Linux to them.

Uplink: MTU, the recorded addresses (IPv6 link-local only as /128), up, and
the recorded main-table routes with a gateway or an explicit device (default
routes included) via the uplink.

Host interface (the Calico/VPP arrangement): it lives in its own VRF whose
default route looks up table 0, holds the node's addresses as /32 and /128
(which enables IP on it; Linux never sends to its own addresses), answers ARP
for everything (proxy ARP range from the startup CLI script, enabled here),
and receives what VPP punts: local traffic VPP does not consume (TCP, UDP to
ports VPP does not serve, via ``set punt ... all``) is redirected to a fixed
next hop on the host interface whose static neighbour is Linux's MAC.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Any

from vppagent.vpp_node.config import NodeConfig
from vppagent.vpp_node.linux_state import AddrState, LinkState, RouteState

log = logging.getLogger(__name__)

ALL = 0xFFFFFFFF
ADMIN_UP = 1
MAIN_TABLE = 254
PUNT_NH4 = "169.254.0.1"
PUNT_NH6 = "fc00:ffff:ffff:ffff:ca11:c000:fd10:fffe"
NEIGHBOR_STATIC, NEIGHBOR_NO_FIB_ENTRY = 1, 2


def _v6(family: int) -> bool:
    return family == socket.AF_INET6


def _path(sw_if_index: int, family: int, gateway: str | None = None, table_id: int = 0) -> dict[str, Any]:
    proto = 1 if _v6(family) else 0
    path: dict[str, Any] = {"sw_if_index": sw_if_index, "table_id": table_id, "rpf_id": 0, "weight": 1,
                            "preference": 0, "type": 0, "flags": 0, "proto": proto, "n_labels": 0}
    if gateway:
        path["nh"] = {"address": {"ip6" if _v6(family) else "ip4": gateway}, "via_label": 0, "obj_id": 0,
                      "classify_table_index": ALL}
    return path


def _prefix(family: int, dst: str | None, dst_len: int) -> str:
    if dst is None:
        return "::/0" if _v6(family) else "0.0.0.0/0"
    return str(ipaddress.ip_network(f"{dst}/{dst_len}", strict=False))


def vpp_addresses(state: LinkState) -> list[AddrState]:
    """The recorded addresses VPP can hold (IPv6 link-local only as /128)."""
    out = []
    for a in state.addresses:
        ip = ipaddress.ip_address(a.address)
        if a.kernel_made and not ip.is_link_local:
            continue
        if ip.is_link_local and a.prefixlen != 128:
            continue
        out.append(a)
    return out


def vpp_routes(state: LinkState) -> list[RouteState]:
    """Main-table routes Linux had through the uplink that VPP must have too."""
    return [r for r in state.routes
            if r.table == MAIN_TABLE and not r.kernel_made and not r.multipath and r.type == 1]


def wire_uplink(conn: Any, cfg: NodeConfig, sw_if_index: int, state: LinkState) -> None:
    """Give VPP's uplink the node's MTU, addresses and routes, and bring it up."""
    assert cfg.uplink is not None
    mtu = cfg.uplink.mtu or state.mtu
    calls: list[tuple[str, dict[str, Any]]] = [
        ("sw_interface_set_mtu", {"sw_if_index": sw_if_index, "mtu": [mtu, 0, 0, 0]})]
    addrs = vpp_addresses(state)
    if any(_v6(a.family) for a in addrs) or any(_v6(r.family) for r in vpp_routes(state)):
        calls.append(("sw_interface_ip6_enable_disable", {"sw_if_index": sw_if_index, "enable": True}))
    for a in addrs:
        calls.append(("sw_interface_add_del_address", {"sw_if_index": sw_if_index, "is_add": True,
                                                       "prefix": f"{a.address}/{a.prefixlen}"}))
    calls.append(("sw_interface_set_flags", {"sw_if_index": sw_if_index, "flags": ADMIN_UP}))
    for r in vpp_routes(state):
        if r.gateway is None and r.dst is None:
            continue
        calls.append(("ip_route_add_del", {"is_add": True, "is_multipath": False, "route": {
            "table_id": 0, "prefix": _prefix(r.family, r.dst, r.dst_len),
            "paths": [_path(sw_if_index, r.family, r.gateway)]}}))
    skipped = [r.describe() for r in state.routes if r.table != MAIN_TABLE and not r.kernel_made]
    if skipped:
        log.info("routes outside the main table stay Linux-only: %s", "; ".join(skipped))
    conn.pipeline(calls)


def wire_host_interface(conn: Any, cfg: NodeConfig, host_sw_if_index: int, state: LinkState) -> None:
    """VRF, addresses, proxy ARP, punt redirect and neighbours of the host interface."""
    vrf = cfg.host_interface.vrf
    idx = host_sw_if_index
    calls: list[tuple[str, dict[str, Any]]] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        v6 = _v6(family)
        calls += [
            ("ip_table_add_del", {"is_add": True, "table": {"table_id": vrf, "is_ip6": v6,
                                                            "name": f"vppagent-host-{'ip6' if v6 else 'ip4'}"}}),
            ("sw_interface_set_table", {"sw_if_index": idx, "is_ipv6": v6, "vrf_id": vrf}),
            ("ip_route_add_del", {"is_add": True, "is_multipath": False, "route": {
                "table_id": vrf, "prefix": _prefix(family, None, 0), "paths": [_path(ALL, family, table_id=0)]}}),
        ]
    calls += [("sw_interface_set_mtu", {"sw_if_index": idx, "mtu": [state.mtu, 0, 0, 0]}),
              ("sw_interface_ip6_enable_disable", {"sw_if_index": idx, "enable": True})]
    for a in vpp_addresses(state):
        if ipaddress.ip_address(a.address).is_link_local:
            continue
        host = 128 if _v6(a.family) else 32
        calls.append(("sw_interface_add_del_address", {"sw_if_index": idx, "is_add": True,
                                                       "prefix": f"{a.address}/{host}"}))
    calls += [
        ("proxy_arp_intfc_enable_disable", {"sw_if_index": idx, "enable": True}),
        ("sw_interface_set_flags", {"sw_if_index": idx, "flags": ADMIN_UP}),
    ]
    for nh in (PUNT_NH4, PUNT_NH6):
        calls += [
            ("ip_neighbor_add_del", {"is_add": True, "neighbor": {
                "sw_if_index": idx, "flags": NEIGHBOR_STATIC | NEIGHBOR_NO_FIB_ENTRY,
                "mac_address": state.mac, "ip_address": nh}}),
            ("ip_punt_redirect", {"is_add": True, "punt": {"rx_sw_if_index": ALL, "tx_sw_if_index": idx,
                                                           "nh": nh}}),
        ]
    conn.pipeline(calls)


def route_via_uplink(conn: Any, prefix: str, next_hop: str, uplink_sw_if_index: int, *,
                     is_add: bool = True, table_id: int = 0) -> None:
    """Route another node's pod block (``prefix``) via that node's address
    (``next_hop``) out of the uplink: plain routing, no overlay (Calico's
    default when the underlay is one L2 segment or routes pod addresses)."""
    net = ipaddress.ip_network(prefix, strict=False)
    nh = ipaddress.ip_address(next_hop)
    if net.version != nh.version:
        raise ValueError(f"{prefix} and next hop {next_hop} are of different IP versions")
    family = socket.AF_INET6 if net.version == 6 else socket.AF_INET
    conn.call("ip_route_add_del", is_add=is_add, is_multipath=False, route={
        "table_id": table_id, "prefix": str(net), "paths": [_path(uplink_sw_if_index, family, str(nh))]})
