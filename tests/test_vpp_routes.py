"""Routes to other nodes' blocks in the VPP dataplane: fake VPP (CI) and real VPP.

Against the fake: the messages VPP receives and the state it keeps (tunnel,
decap arc, secondary MAC, unnumbered, neighbour without FIB entry, table-0
routes), shared tunnels, ownership after agent and VPP restarts, foreign
routes. Against a real VPP (``vpp`` marker): a pod behind VPP reaches a pod
on a Linux node (the agent's own Linux dataplane in the client namespace)
with plain routes and over the VXLAN overlay, with ICMP and TCP.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from vpp_env import fake_vpp
from vppagent.dataplane.base import WorkloadWiring
from vppagent.dataplane.linux.vxlan import vtep_mac
from vppagent.dataplane.vpp import VppConfig, VppDataplane
from vppagent.dataplane.vpp.routes import NodeRouteKey, NodeTunnelKey
from vppagent.model.resources import Action, IPPool
from vppagent.model.updates import (
    InSync, IPPoolUpdate, ProfileUpdate, RenderedRule, RouteEncap, RouteInfo, RouteRemove, RouteUpdate,
    RuleOrigin, Update, WorkloadEndpointInfo, WorkloadEndpointUpdate,
)
from vppagent.reconciler import Backoff, KeyState
from vppagent.vpp.connection import VppConnection
from vppagent.vpp.fake import FakeVpp, codec

ALL = 0xFFFFFFFF
NODE = "vpp-node"
ROUTE_WRITES = {"ip_route_add_del", "vxlan_add_del_tunnel_v3", "ip_neighbor_add_del",
                "sw_interface_add_del_mac_address", "sw_interface_set_unnumbered", "sw_interface_tag_add_del"}


class FakeLinux:
    """No pods here: the pod side of ``PodLinux`` is never called."""

    def host_end_exists(self, host: str) -> bool:
        return False


class Log:
    """The names of the messages VPP received, in order."""

    def __init__(self, fake: FakeVpp) -> None:
        self.names: list[str] = []
        serve = fake._serve

        def record(session: Any, data: bytes) -> None:
            name = fake._index_to_name.get(int.from_bytes(data[:2], "big"))
            if name is not None:
                self.names.append(name)
            serve(session, data)

        fake._serve = record  # type: ignore[method-assign]

    def since(self, mark: int) -> set[str]:
        return set(self.names[mark:])


@pytest.fixture
def fake() -> Iterator[FakeVpp]:
    with fake_vpp() as f:
        codec()
        yield f


def uplink(fake: FakeVpp, *prefixes: str) -> int:
    """An interface someone else made (vpp-manager's uplink), with the node's addresses."""
    other = VppConnection(client_factory=fake.client_factory, client_name="vpp-manager")
    other.connect()
    try:
        idx = int(other.call("create_loopback_instance", is_specified=False).sw_if_index)
        for p in prefixes:
            other.call("sw_interface_add_del_address", sw_if_index=idx, is_add=True, prefix=p)
        other.call("sw_interface_set_flags", sw_if_index=idx, flags=1)
        return idx
    finally:
        other.disconnect()


def make(fake: FakeVpp, tmp: Path, **options: Any) -> VppDataplane:
    cfg = VppConfig(**{"state_dir": str(tmp / "state"), "pod_interface": "af_packet", "refresh_interval": None,
                       "node_name": NODE, "uplink_interface": "loop0", **options})
    dp = VppDataplane(cfg, client_factory=fake.client_factory, linux=FakeLinux(),  # type: ignore[arg-type]
                      backoff=Backoff(base=0.0, max=0.0))
    dp.start()
    return dp


def route(block: str, node: str, gateway: str, encap: RouteEncap = RouteEncap.VXLAN) -> RouteUpdate:
    return RouteUpdate(block, RouteInfo(ipaddress.ip_network(block), node, ipaddress.ip_address(gateway), encap))


SNAPSHOT: list[Update] = [
    route("10.65.2.0/26", "node-b", "192.0.2.2", RouteEncap.NONE),
    route("10.65.3.0/26", "node-c", "192.0.2.3"),
    route("10.65.3.64/26", "node-c", "192.0.2.3"),
    route("fd65:0:0:3::/122", "node-c", "fd00:2::3"),
    InSync(),
]


def routes(fake: FakeVpp, af: int = 4) -> dict[str, list[dict[str, Any]]]:
    return {str(net): r.paths for net, r in fake.state.routes[(af, 0)].items()}


def tunnels(fake: FakeVpp) -> dict[str, tuple[int, dict[str, Any]]]:
    return {str(t["dst_address"]): (idx, t) for idx, t in fake.state.vxlan.items()}


def nh(path: dict[str, Any]) -> str:
    """The next hop of a stored path (the fake keeps the address union as its widest arm)."""
    addr = path["nh"]["address"]
    if "ip4" in addr:
        return str(addr["ip4"])
    packed = bytes(getattr(addr["ip6"], "packed", addr["ip6"]))
    return str(ipaddress.ip_address(packed if path["proto"] == 1 else packed[:4]))


def failed(dp: VppDataplane) -> dict[Any, str | None]:
    return {k: st.error for k in dp.reconciler.keys() if (st := dp.reconciler.state(k)).state is KeyState.FAILED}


# ------------------------------------------------------------------ fake VPP


def test_plain_and_vxlan_routes_are_programmed(fake: FakeVpp, tmp_path: Path) -> None:
    up = uplink(fake, "192.0.2.1/24", "fd00:2::1/64")
    dp = make(fake, tmp_path)
    dp.apply(SNAPSHOT)
    assert failed(dp) == {} and dp.status().ready

    plain = routes(fake)["10.65.2.0/26"]
    assert len(plain) == 1 and plain[0]["sw_if_index"] == up and nh(plain[0]) == "192.0.2.2"

    (idx, t), (idx6, t6) = tunnels(fake)["192.0.2.3"], tunnels(fake)["fd00:2::3"]
    assert len(fake.state.vxlan) == 2                               # one per peer, shared by its blocks
    assert (str(t["src_address"]), t["vni"], t["src_port"], t["dst_port"]) == ("192.0.2.1", 4096, 4789, 4789)
    assert str(t6["src_address"]) == "fd00:2::1"
    assert fake.state.node_nexts["vxlan4-input"][t["decap_next_index"]] == "ethernet-input"
    assert fake.state.node_nexts["vxlan6-input"][t6["decap_next_index"]] == "ethernet-input"
    iface = fake.state.interfaces[idx]
    assert iface.tag == "vppagent:vxlan:192.0.2.3" and iface.admin_up and iface.unnumbered_of == up
    assert iface.secondary_macs == {bytes.fromhex(vtep_mac(NODE).replace(":", ""))}
    assert fake.state.interfaces[idx6].ip6_enabled
    neighbor = fake.state.neighbors[(idx, ipaddress.ip_address("192.0.2.3"))]
    assert str(neighbor["mac_address"]) == vtep_mac("node-c") and neighbor["flags"] == 1 | 2   # static, no FIB entry
    for block in ("10.65.3.0/26", "10.65.3.64/26"):
        (path,) = routes(fake)[block]
        assert path["sw_if_index"] == idx and nh(path) == "192.0.2.3"
    (path6,) = routes(fake, 6)["fd65:0:0:3::/122"]
    assert path6["sw_if_index"] == idx6 and nh(path6) == "fd00:2::3"

    # The tunnel stays while one of the peer's blocks uses it, and goes with the last one.
    dp.apply([RouteRemove("10.65.3.0/26")])
    assert "10.65.3.0/26" not in routes(fake) and "192.0.2.3" in tunnels(fake)
    dp.apply([RouteRemove("10.65.3.64/26")])
    assert "192.0.2.3" not in tunnels(fake) and idx not in fake.state.interfaces
    assert "10.65.3.64/26" not in routes(fake)

    # A block moving to the overlay: the same route key now goes through a tunnel.
    dp.apply([route("10.65.2.0/26", "node-b", "192.0.2.2")])
    (path,) = routes(fake)["10.65.2.0/26"]
    assert path["sw_if_index"] == tunnels(fake)["192.0.2.2"][0]
    dp.apply([route("10.65.2.0/26", "node-b", "192.0.2.2", RouteEncap.NONE)])
    assert routes(fake)["10.65.2.0/26"][0]["sw_if_index"] == up and "192.0.2.2" not in tunnels(fake)
    assert failed(dp) == {}


def test_agent_restart_adopts_routes_and_tunnels_without_a_write(fake: FakeVpp, tmp_path: Path) -> None:
    uplink(fake, "192.0.2.1/24", "fd00:2::1/64")
    make(fake, tmp_path).apply(SNAPSHOT)
    before = (routes(fake), routes(fake, 6), dict(fake.state.vxlan))
    log = Log(fake)
    again = make(fake, tmp_path)
    again.apply(SNAPSHOT)
    assert not log.since(0) & ROUTE_WRITES, log.since(0)
    assert (routes(fake), routes(fake, 6), dict(fake.state.vxlan)) == before
    assert failed(again) == {} and again.status().ready
    assert again.last_report is not None and again.last_report.adopted >= 6


def test_stale_routes_are_deleted_and_foreign_ones_left_alone(fake: FakeVpp, tmp_path: Path) -> None:
    up = uplink(fake, "192.0.2.1/24", "fd00:2::1/64")
    make(fake, tmp_path).apply(SNAPSHOT)
    other = VppConnection(client_factory=fake.client_factory, client_name="someone-else")
    other.connect()
    for block in ("10.65.9.0/26", "10.65.4.0/26"):
        other.call("ip_route_add_del", is_add=True, is_multipath=False, route={
            "table_id": 0, "prefix": block, "paths": [{"sw_if_index": up, "proto": 0,
                                                       "nh": {"address": {"ip4": "192.0.2.9"}}}]})
    other.disconnect()

    # Restarted with node-b gone, node-c down to one IPv4 block, and a block of node-d's that
    # someone else routes already.
    again = make(fake, tmp_path)
    again.apply([SNAPSHOT[1], route("10.65.4.0/26", "node-d", "192.0.2.4", RouteEncap.NONE), InSync()])
    assert "10.65.2.0/26" not in routes(fake) and "10.65.3.64/26" not in routes(fake)
    assert "fd65:0:0:3::/122" not in routes(fake, 6) and set(tunnels(fake)) == {"192.0.2.3"}
    assert "10.65.3.0/26" in routes(fake)
    assert nh(routes(fake)["10.65.9.0/26"][0]) == "192.0.2.9"             # foreign: untouched
    assert nh(routes(fake)["10.65.4.0/26"][0]) == "192.0.2.9"             # foreign, and not overwritten
    assert "not vppagent's" in str(failed(again).get(NodeRouteKey("10.65.4.0/26")))
    assert set(failed(again)) == {NodeRouteKey("10.65.4.0/26")}


def test_a_restarted_vpp_gets_routes_and_tunnels_again(fake: FakeVpp, tmp_path: Path) -> None:
    uplink(fake, "192.0.2.1/24", "fd00:2::1/64")
    dp = make(fake, tmp_path)
    dp.apply(SNAPSHOT)
    fake.restart()
    uplink(fake, "192.0.2.1/24", "fd00:2::1/64")
    dp.run_periodic()                      # notices
    dp.run_periodic()                      # reconnects and reprograms
    assert dp.status().connected and failed(dp) == {}
    assert set(tunnels(fake)) == {"192.0.2.3", "fd00:2::3"}
    assert {"10.65.2.0/26", "10.65.3.0/26", "10.65.3.64/26"} <= set(routes(fake))


def test_without_an_uplink_plain_routes_resolve_in_the_fib_and_vxlan_waits(fake: FakeVpp, tmp_path: Path) -> None:
    dp = make(fake, tmp_path, uplink_interface=None)
    dp.apply(SNAPSHOT)
    (path,) = routes(fake)["10.65.2.0/26"]
    assert path["sw_if_index"] == ALL and nh(path) == "192.0.2.2"       # recursive through table 0
    assert fake.state.vxlan == {} and "10.65.3.0/26" not in routes(fake)
    assert "uplinkInterface" in dp.node_routes.problems["10.65.3.0/26"]
    assert NodeTunnelKey("192.0.2.3") not in dp.reconciler.desired()


def test_fake_add_node_next_and_decap_arcs(fake: FakeVpp) -> None:
    conn = VppConnection(client_factory=fake.client_factory)
    conn.connect()
    first = conn.call("add_node_next", node_name="vxlan4-input", next_name="ethernet-input").next_index
    assert first == 2 == conn.call("add_node_next", node_name="vxlan4-input", next_name="ethernet-input").next_index
    from vppagent.vpp.errors import VppApiError
    with pytest.raises(VppApiError, match="NO_SUCH_NODE"):
        conn.call("add_node_next", node_name="nope", next_name="ethernet-input")
    with pytest.raises(VppApiError, match="INVALID_DECAP_NEXT"):
        conn.call("vxlan_add_del_tunnel_v3", is_add=True, src_address="192.0.2.1", dst_address="192.0.2.2",
                  vni=1, decap_next_index=7)
    idx = conn.call("vxlan_add_del_tunnel_v3", is_add=True, src_address="192.0.2.1", dst_address="192.0.2.2",
                    vni=1, decap_next_index=first).sw_if_index
    conn.call("sw_interface_add_del_mac_address", sw_if_index=idx, addr="02:00:00:00:00:01", is_add=1)
    assert fake.state.interfaces[idx].secondary_macs == {bytes.fromhex("020000000001")}
    with pytest.raises(VppApiError, match="UNIMPLEMENTED"):
        conn.call("sw_interface_add_del_mac_address", sw_if_index=0, addr="02:00:00:00:00:01", is_add=1)
    conn.disconnect()


# ------------------------------------------------------------------ real VPP

ALLOW = RenderedRule(action=Action.ALLOW, origin=RuleOrigin("allow", 0))


def _endpoint(node: str, host_if: str, ip: str) -> WorkloadEndpointUpdate:
    return WorkloadEndpointUpdate(f"{node}/p", WorkloadEndpointInfo(
        namespace="ns", pod="p", node=node, endpoint="eth0", interface_name=host_if,
        nets=(ipaddress.ip_network(f"{ip}/32"),), profile_ids=("allow",)))


@pytest.mark.vpp
@pytest.mark.parametrize("encap", [RouteEncap.VXLAN, RouteEncap.NONE])
@pytest.mark.skipif(not os.environ.get("VPP_BIN") or os.geteuid() != 0, reason="needs root and a VPP in $VPP_BIN")
def test_real_vpp_pod_reaches_a_linux_node_pod(encap: RouteEncap) -> None:
    from vpp_env import Topology
    from vppagent.dataplane.nftables import NftablesConfig, NftablesDataplane
    from vppagent.testbed.netns import call_in, run
    from vppagent.testbed.traffic import Listener, ping, probe

    topo = Topology("rt")
    linux: NftablesDataplane | None = None
    dp: VppDataplane | None = None
    try:
        assert topo.vpp is not None
        vpp_block, linux_block = "10.66.1.0/26", "10.66.2.0/26"
        vpp_pod_ip, linux_pod_ip = "10.66.1.5", "10.66.2.5"
        linux_node_ip, vpp_node_ip = "172.31.0.2", "172.31.0.1"
        # Nothing but our routes may carry pod addresses: drop the test topology's defaults.
        topo.vpp.cli(f"ip route del 0.0.0.0/0 via 172.31.0.2 {topo.uplink_vpp}")
        run(["ip", "-n", topo.client, "route", "del", "default"])
        vpp_pod_ns, linux_pod_ns = topo.pod_namespaces(["vp", "lp"])

        dp = VppDataplane(VppConfig(socket=topo.vpp.api_socket, pod_interface="af_packet", vpp_netns=topo.vpp_ns,
                                    state_dir=topo.state_dir, uplink_interface=topo.uplink_vpp, node_name="vpp-node",
                                    refresh_interval=None))
        dp.start()
        dp.wire_workload(WorkloadWiring("c-vp", vpp_pod_ns, "eth0", "calivp",
                                        (ipaddress.ip_interface(f"{vpp_pod_ip}/32"),)))
        pool = IPPoolUpdate("pool", IPPool("pool", ipaddress.ip_network("10.66.0.0/16"), 26))
        common: list[Update] = [ProfileUpdate("allow", inbound_rules=(ALLOW,), outbound_rules=(ALLOW,)), pool]
        dp.apply(common + [_endpoint("vpp-node", "calivp", vpp_pod_ip),
                           route(linux_block, "linux-node", linux_node_ip, encap), InSync()])
        assert failed(dp) == {}, failed(dp)

        # The Linux node: the client namespace, running the agent's own nftables dataplane.
        linux = NftablesDataplane(NftablesConfig(node_name="linux-node", refresh_interval=None))
        call_in(topo.client, linux.start)
        call_in(topo.client, lambda: linux.wire_workload(WorkloadWiring(  # type: ignore[union-attr]
            "c-lp", linux_pod_ns, "eth0", "calilp", (ipaddress.ip_interface(f"{linux_pod_ip}/32"),))))
        updates = common + [_endpoint("linux-node", "calilp", linux_pod_ip),
                            route(vpp_block, "vpp-node", vpp_node_ip, encap), InSync()]
        call_in(topo.client, lambda: linux.apply(updates))  # type: ignore[union-attr]

        if encap is RouteEncap.VXLAN:
            conn = dp.conn
            (t,) = conn.dump("vxlan_tunnel_v2_dump", sw_if_index=ALL)
            assert (str(t.src_address), str(t.dst_address), int(t.vni)) == (vpp_node_ip, linux_node_ip, 4096)
            assert "vxlan_tunnel" in topo.vpp.cli(f"show ip fib {linux_block}")
        else:
            assert topo.uplink_vpp in topo.vpp.cli(f"show ip fib {linux_block}")

        assert any(ping(vpp_pod_ns, linux_pod_ip, timeout=1.0) for _ in range(5)), topo.vpp.cli("show errors")
        assert ping(linux_pod_ns, vpp_pod_ip, timeout=1.0)
        with Listener(linux_pod_ns, 7080, label="linux").start(), Listener(vpp_pod_ns, 7081, label="vpp").start():
            there = probe(vpp_pod_ns, linux_pod_ip, 7080, timeout=3.0)
            back = probe(linux_pod_ns, vpp_pod_ip, 7081, timeout=3.0)
        assert there.ok and there.peer == vpp_pod_ip, there               # TCP: checksums survive the overlay
        assert back.ok and back.peer == linux_pod_ip, back

        # Without the route, nothing crosses (the underlay does not route pod addresses).
        dp.apply([RouteRemove(linux_block)])
        assert not ping(vpp_pod_ns, linux_pod_ip, timeout=0.5)
        assert dp.conn.dump("vxlan_tunnel_v2_dump", sw_if_index=ALL) == []
    finally:
        if dp is not None:
            dp.stop()
        topo.close()
