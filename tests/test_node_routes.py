"""Pod-to-pod across nodes on the Linux dataplanes, with real packets.

Each "node" is a network namespace running its own dataplane in this
process (every call made from a thread inside the node's namespace, as the
agent runs), with pods wired by ``wire_workload`` and fed the routes the
calculation would send. Underlays:

- ``l2``: the nodes share one bridged segment (a bridge in a namespace of its
  own): plain routes via the node addresses work;
- ``routed``: every node sits in its own subnet behind a router namespace
  that routes node addresses and nothing else: pod addresses only cross it
  inside the VXLAN overlay.

Everything is named with a per-test token and removed on teardown, also
after failures; a run killed outright is reaped by the next one (the
testbed registry).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import struct
import tempfile
import time
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_interface, ip_network
from typing import Any, Callable, Iterator

import pytest

from vppagent.dataplane.base import ReconcilingDataplane, WorkloadWiring
from vppagent.dataplane.linux.routes import ROUTE_PROTO, NodeRouteKey
from vppagent.dataplane.linux.vxlan import (
    DEVICES, ETHTOOL_GTXCSUM, VxlanDeviceKey, VxlanPeerKey, ethtool_value, vtep_mac,
)
from vppagent.model.resources import Action, IPPool
from vppagent.model.updates import (
    InSync, IPPoolUpdate, ProfileUpdate, RenderedRule, RouteEncap, RouteInfo, RouteRemove, RouteUpdate,
    RuleOrigin, Update, WorkloadEndpointInfo, WorkloadEndpointUpdate,
)
from vppagent.reconciler import KeyState
from vppagent.testbed.netns import Namespaces, call_in, run
from vppagent.testbed.registry import Record, reap_stale
from vppagent.testbed.traffic import Listener, ping, probe

pytestmark = [pytest.mark.root, pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nft"),
    reason="needs root, iproute2 and nft (network namespaces)")]

POOL = "10.77.0.0/16"
POOL6 = "fd77::/48"
ALLOW = RenderedRule(action=Action.ALLOW, origin=RuleOrigin("allow", 0))


# ------------------------------------------------------------------ topology


@dataclass
class Pod:
    ns: str
    ip: str
    ip6: str
    host_if: str


@dataclass
class Node:
    name: str
    ns: str
    ip: str
    ip6: str
    block: str
    block6: str
    dp: ReconcilingDataplane | None = None
    pods: list[Pod] = field(default_factory=list)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on a thread inside the node (netlink and tools act there)."""
        return call_in(self.ns, fn)

    def sh(self, *argv: str) -> str:
        return run(["ip", "netns", "exec", self.ns, *argv]).stdout


class Cluster:
    """Nodes on an underlay, their pods and dataplanes; ``close`` removes it all."""

    def __init__(self, kind: str, dataplane: str, count: int = 2) -> None:
        reap_stale()
        self.kind, self.dataplane = kind, dataplane
        self.token = f"nr{os.getpid() % 1000:03d}{secrets.token_hex(2)}"
        self.tmp = tempfile.mkdtemp(prefix=f"vppagent-{self.token}-")
        self.record = Record(self.token, os.getpid(), self.tmp)
        self.spaces = Namespaces(on_change=self.record.set_netns)
        self.nodes: list[Node] = []
        try:
            self._build(count)
        except BaseException:
            self.close()
            raise

    def _ip(self, ns: str | None, *lines: str) -> None:
        run(["ip", *(["-n", ns] if ns else []), "-batch", "-"], input="\n".join(lines) + "\n")

    def _build(self, count: int) -> None:
        hub = self.spaces.add(f"{self.token}-ul")
        run(["ip", "netns", "exec", hub, "sysctl", "-qw", "net.ipv4.ip_forward=1",
             "net.ipv6.conf.all.forwarding=1"])
        if self.kind == "l2":
            self._ip(hub, "link add br0 type bridge", "link set br0 up")
        for i in range(1, count + 1):
            ns = self.spaces.add(f"{self.token}-n{i}")
            if self.kind == "l2":
                ip, ip6, gw, gw6 = f"192.168.50.{i}", f"fd50::{i}", None, None
                self._ip(hub, f"link add v{i} type veth peer name eth0 netns {ns}",
                         f"link set v{i} master br0", f"link set v{i} up")
                self._ip(ns, "link set lo up", "link set eth0 up", f"addr add {ip}/24 dev eth0",
                         f"addr add {ip6}/64 dev eth0 nodad")
            else:
                ip, ip6, gw, gw6 = f"192.168.{i}.2", f"fd50:{i}::2", f"192.168.{i}.1", f"fd50:{i}::1"
                self._ip(hub, f"link add r{i} type veth peer name eth0 netns {ns}", f"link set r{i} up",
                         f"addr add {gw}/24 dev r{i}", f"addr add {gw6}/64 dev r{i} nodad")
                self._ip(ns, "link set lo up", "link set eth0 up", f"addr add {ip}/24 dev eth0",
                         f"addr add {ip6}/64 dev eth0 nodad", f"route add default via {gw}",
                         f"route add default via {gw6}")
            self.nodes.append(Node(f"node-{self.token}-{i}", ns, ip, ip6, f"10.77.{i}.0/26", f"fd77:0:0:{i}::/122"))

    # -- dataplanes and pods --------------------------------------------------------------

    def start(self, node: Node) -> ReconcilingDataplane:
        """A fresh dataplane on ``node`` (a restart when one ran before), read back."""
        if self.dataplane == "nftables":
            from vppagent.dataplane.nftables import NftablesConfig, NftablesDataplane
            dp: ReconcilingDataplane = NftablesDataplane(NftablesConfig(node_name=node.name, refresh_interval=None))
        else:
            from vppagent.dataplane.iptables import IptablesConfig, IptablesDataplane
            dp = IptablesDataplane(IptablesConfig(node_name=node.name, refresh_interval=90.0))
        node.call(dp.start)
        node.dp = dp
        return dp

    def add_pod(self, node: Node) -> Pod:
        i, j = self.nodes.index(node) + 1, len(node.pods) + 1
        ns = self.spaces.add(f"{self.token}-n{i}p{j}")
        pod = Pod(ns, f"10.77.{i}.{10 + j}", f"fd77:0:0:{i}::{10 + j:x}", f"calin{i}p{j}")
        wiring = WorkloadWiring(f"{self.token}{i}{j}", ns, "eth0", pod.host_if,
                                (ip_interface(f"{pod.ip}/32"), ip_interface(f"{pod.ip6}/128")))
        assert node.dp is not None
        node.call(lambda: node.dp.wire_workload(wiring))  # type: ignore[union-attr]
        node.pods.append(pod)
        return pod

    def start_with_pods(self) -> list[Node]:
        """Start every node's dataplane and give each node one pod; returns the nodes."""
        for node in self.nodes:
            self.start(node)
            self.add_pod(node)
        return self.nodes

    def route(self, to: Node, encap: RouteEncap, v6: bool = False) -> RouteUpdate:
        block = to.block6 if v6 else to.block
        info = RouteInfo(dst=ip_network(block), node=to.name, gateway=ip_address(to.ip6 if v6 else to.ip),
                         encap=encap)
        return RouteUpdate(block, info)

    def snapshot(self, node: Node, encap: RouteEncap, nat_outgoing: bool = False, v6: bool = False) -> list[Update]:
        """What the calculation would send ``node``: profile, pool, its endpoints, routes to the others."""
        out: list[Update] = [
            ProfileUpdate("allow", inbound_rules=(ALLOW,), outbound_rules=(ALLOW,)),
            IPPoolUpdate("pool", IPPool("pool", ip_network(POOL), 26, nat_outgoing=nat_outgoing)),
            IPPoolUpdate("pool6", IPPool("pool6", ip_network(POOL6), 122, nat_outgoing=nat_outgoing)),
        ]
        for k, pod in enumerate(node.pods):
            out.append(WorkloadEndpointUpdate(f"{node.name}/p{k}", WorkloadEndpointInfo(
                namespace="ns", pod=f"p{k}", node=node.name, endpoint="eth0", interface_name=pod.host_if,
                nets=(ip_network(f"{pod.ip}/32"), ip_network(f"{pod.ip6}/128")), profile_ids=("allow",))))
        for other in self.nodes:
            if other is not node:
                out.append(self.route(other, encap))
                if v6:
                    out.append(self.route(other, encap, v6=True))
        return out + [InSync()]

    def apply(self, node: Node, updates: list[Update]) -> None:
        assert node.dp is not None
        node.call(lambda: node.dp.apply(updates))  # type: ignore[union-attr]

    def close(self) -> None:
        try:
            self.spaces.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.record.drop()


@pytest.fixture
def clusters() -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(kind: str, dataplane: str = "nftables", count: int = 2) -> Cluster:
        c = Cluster(kind, dataplane, count)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


# ------------------------------------------------------------------ helpers


def reaches(src: Pod | str, dst: str, timeout: float = 5.0) -> bool:
    """ICMP echo answered within ``timeout`` (retried: the first packet may wait for ARP/ND)."""
    ns = src.ns if isinstance(src, Pod) else src
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ping(ns, dst, timeout=0.5):
            return True
    return False


def our_routes(node: Node, family: str = "-4", proto: str = str(ROUTE_PROTO)) -> dict[str, str]:
    text = node.sh("ip", family, "route", "show", "proto", proto)
    return {line.split()[0]: line for line in text.splitlines()}


def key_errors(dp: ReconcilingDataplane) -> dict[Any, str | None]:
    return {k: st.error for k in dp.reconciler.keys()
            if (st := dp.reconciler.state(k)).state is KeyState.FAILED}


class RouteEvents:
    """Route, neighbour and link changes in a namespace, from a netlink multicast socket."""

    GROUPS = 0x1 | 0x4 | 0x40 | 0x400        # RTMGRP_LINK, _NEIGH, _IPV4_ROUTE, _IPV6_ROUTE

    def __init__(self, node: Node) -> None:
        def open_socket() -> socket.socket:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
            s.bind((0, self.GROUPS))
            s.setblocking(False)
            return s
        self.sock = node.call(open_socket)

    def read(self) -> list[tuple[int, int]]:
        """(message type, route protocol or -1) of everything seen so far."""
        out = []
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return out
            while len(data) >= 16:
                length, kind = struct.unpack("=IH", data[:6])
                proto = data[16 + 5] if kind in (24, 25) and length >= 28 else -1   # rtmsg.rtm_protocol
                out.append((kind, proto))
                data = data[(length + 3) & ~3:]

    def close(self) -> None:
        self.sock.close()


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("dataplane", ["nftables", "iptables"])
def test_plain_routes_carry_pod_traffic_across_nodes(clusters: Callable[..., Cluster], dataplane: str) -> None:
    c = clusters("l2", dataplane, count=3)
    a, b, x = c.start_with_pods()
    assert not reaches(a.pods[0], b.pods[0].ip, timeout=0.5)         # nobody routes pod addresses yet
    for node in c.nodes:
        c.apply(node, c.snapshot(node, RouteEncap.NONE, v6=True))
        assert key_errors(node.dp) == {}                             # type: ignore[arg-type]
    assert our_routes(a)[b.block].split()[:3] == [b.block, "via", b.ip]
    for src, dst in ((a, b), (b, x), (x, a)):
        assert reaches(src.pods[0], dst.pods[0].ip), f"{src.name} -> {dst.name}"
        assert reaches(src.pods[0], dst.pods[0].ip6), f"{src.name} -> {dst.name} (IPv6)"
    assert not any(DEVICES[f] in a.sh("ip", "link") for f in (4, 6))  # no overlay without VXLAN

    # RouteRemove takes the route (and the traffic) away; the others stay.
    c.apply(a, [RouteRemove(b.block)])
    assert b.block not in our_routes(a) and x.block in our_routes(a)
    assert not reaches(a.pods[0], b.pods[0].ip, timeout=0.5)
    assert reaches(a.pods[0], x.pods[0].ip)


def test_vxlan_crosses_an_underlay_that_does_not_route_pods(clusters: Callable[..., Cluster]) -> None:
    c = clusters("routed", count=3)
    a, b, x = c.start_with_pods()
    assert reaches(a.ns, b.ip) and reaches(a.ns, b.ip6)             # the underlay routes node addresses...
    for node in c.nodes:                                            # ...but not pods: plain routes can't help
        c.apply(node, c.snapshot(node, RouteEncap.NONE))
    assert not reaches(a.pods[0], b.pods[0].ip, timeout=1.0)
    assert NodeRouteKey(b.block) in key_errors(a.dp)                # type: ignore[arg-type]  # not on-link

    for node in c.nodes:
        c.apply(node, [c.route(o, RouteEncap.VXLAN, v6) for o in c.nodes if o is not node for v6 in (False, True)])
        assert key_errors(node.dp) == {}                            # type: ignore[arg-type]
    for src, dst in ((a, b), (b, x), (x, a), (b, a)):
        assert reaches(src.pods[0], dst.pods[0].ip), f"{src.name} -> {dst.name}"
        assert reaches(src.pods[0], dst.pods[0].ip6), f"{src.name} -> {dst.name} (IPv6)"

    link = a.sh("ip", "-d", "link", "show", DEVICES[4])
    assert f"link/ether {vtep_mac(a.name)}" in link and "mtu 1450" in link
    assert "vxlan id 4096" in link and "dstport 4789" in link and "nolearning" in link
    assert "mtu 1430" in a.sh("ip", "link", "show", DEVICES[6])
    assert a.call(lambda: ethtool_value(DEVICES[4], ETHTOOL_GTXCSUM)) == 0      # inner checksums leave complete
    route = our_routes(a)[b.block]
    assert f"via {b.ip} dev {DEVICES[4]}" in route and "onlink" in route
    assert f"{b.ip} lladdr {vtep_mac(b.name)} PERMANENT" in a.sh("ip", "neigh", "show", "dev", DEVICES[4])
    assert f"{vtep_mac(b.name)} dst {b.ip}" in a.sh("bridge", "fdb", "show", "dev", DEVICES[4])

    # Removing routes removes the peers they used, and the device with the last one.
    c.apply(a, [RouteRemove(b.block), RouteRemove(b.block6)])
    assert not reaches(a.pods[0], b.pods[0].ip, timeout=0.5)
    assert b.ip not in a.sh("ip", "neigh", "show", "dev", DEVICES[4])
    assert reaches(a.pods[0], x.pods[0].ip)
    c.apply(a, [RouteRemove(x.block), RouteRemove(x.block6)])
    assert DEVICES[4] not in a.sh("ip", "link") and DEVICES[6] not in a.sh("ip", "link")
    assert our_routes(a) == {} and our_routes(a, "-6") == {}


def test_vxlan_on_iptables(clusters: Callable[..., Cluster]) -> None:
    c = clusters("routed", "iptables")
    for node in c.nodes:
        c.start(node)
        c.add_pod(node)
        c.apply(node, c.snapshot(node, RouteEncap.VXLAN))
    a, b = c.nodes
    assert reaches(a.pods[0], b.pods[0].ip) and reaches(b.pods[0], a.pods[0].ip)


@pytest.mark.parametrize("dataplane", ["nftables", "iptables"])
def test_nat_outgoing_keeps_pod_to_pod_sources(clusters: Callable[..., Cluster], dataplane: str) -> None:
    """natOutgoing masquerades traffic leaving the pools, never traffic to another node's pods."""
    c = clusters("l2", dataplane)
    for node in c.nodes:
        c.start(node)
        c.add_pod(node)
        c.apply(node, c.snapshot(node, RouteEncap.NONE, nat_outgoing=True))
    a, b = c.nodes
    with Listener(b.pods[0].ns, 7070, label="pod").start() as pod_srv, \
            Listener(b.ns, 7071, label="node").start() as node_srv:
        to_pod = probe(a.pods[0].ns, b.pods[0].ip, 7070, timeout=3.0)
        to_node = probe(a.pods[0].ns, b.ip, 7071, timeout=3.0)
    assert to_pod.ok and to_pod.peer == a.pods[0].ip, to_pod         # pod to pod: the pod's own address
    assert to_node.ok and to_node.peer == a.ip, to_node              # leaving the pools: masqueraded
    assert pod_srv.peers == [a.pods[0].ip] and node_srv.peers == [a.ip]


def test_restart_adopts_ours_deletes_stale_and_leaves_foreign_routes(clusters: Callable[..., Cluster]) -> None:
    c = clusters("l2", count=3)
    a, b, x = c.start_with_pods()

    def routes_of_a() -> list[Update]:      # a <-> b over the overlay, a <-> x plain
        return c.snapshot(a, RouteEncap.VXLAN)[:-1] + [c.route(x, RouteEncap.NONE), InSync()]

    c.apply(a, routes_of_a())
    c.apply(b, c.snapshot(b, RouteEncap.VXLAN))
    c.apply(x, c.snapshot(x, RouteEncap.NONE))
    assert reaches(a.pods[0], b.pods[0].ip) and reaches(a.pods[0], x.pods[0].ip)
    before_link = a.sh("ip", "-o", "link", "show", DEVICES[4]).split(":")[0]

    # While the agent is down: a stale route of ours, and a foreign one.
    a.sh("ip", "route", "add", "10.77.9.0/26", "via", "192.168.50.99", "proto", str(ROUTE_PROTO))
    a.sh("ip", "route", "add", "10.77.8.0/26", "via", "192.168.50.99", "proto", "static")
    events = RouteEvents(a)
    try:
        dp = c.start(a)
        c.apply(a, routes_of_a())
        seen = events.read()
    finally:
        events.close()
    assert [kind for kind, proto in seen if proto == ROUTE_PROTO] == [25], seen   # one RTM_DELROUTE: the stale one
    assert not [kind for kind, _ in seen if kind == 17], seen                      # no link deleted
    assert set(our_routes(a)) == {b.block, x.block}
    assert "10.77.8.0/26" in our_routes(a, proto="static")
    assert a.sh("ip", "-o", "link", "show", DEVICES[4]).split(":")[0] == before_link
    writes = [r.op for r in dp.reconciler.history
              if isinstance(r.op.key, (NodeRouteKey, VxlanPeerKey, VxlanDeviceKey))]
    assert [(op.kind.value, op.key) for op in writes] == [("delete", NodeRouteKey("10.77.9.0/26"))]
    assert reaches(a.pods[0], b.pods[0].ip) and reaches(a.pods[0], x.pods[0].ip)

    # A foreign route to a block we want is never replaced: the key fails and says why.
    c.apply(a, [RouteRemove(x.block)])
    a.sh("ip", "route", "add", x.block, "via", "192.168.50.99", "proto", "static")
    c.apply(a, [c.route(x, RouteEncap.NONE)])
    assert "not vppagent's" in str(key_errors(dp).get(NodeRouteKey(x.block)))
    assert our_routes(a, proto="static")[x.block].startswith(f"{x.block} via 192.168.50.99")
    assert x.block not in our_routes(a)
