"""The nftables dataplane with real packets between network namespaces.

Topology per test group: one "node" namespace per node named in the
manifests (running its own NftablesDataplane fed by ``CalcGraph(node)``),
one namespace per pod joined to its node by a veth pair (host end named as
the endpoint's interface, /32 and /128 routes, proxy ARP, Calico's
169.254.1.1 gateway), and a "client" namespace outside the nodes that routes
between them and holds every external address a case uses. A host endpoint
is the node's interface facing the client, carrying the expected IPs.

Probes run in this process: sockets are created inside the namespaces by one
worker thread that enters a namespace with setns(2) just long enough to open
the socket, then every probe of a manifest file runs in parallel under one
selector. TCP counts as delivered when the connection completes, UDP and
ICMP when the datagram reaches a socket in the destination namespace.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import selectors
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import pytest

from conformance_suite import Case, load_cases
from vppagent.calc.graph import CalcGraph
from vppagent.dataplane.nftables import NftablesConfig, NftablesDataplane
from vppagent.evaluator import Packet, build_evaluator, make_packet
from vppagent.manifests.loader import load_objects
from vppagent.model.resources import HostEndpoint, WorkloadEndpoint
from vppagent.model.updates import InSync
from vppagent.testbed.probes import IPAddr, Namespaces, NetnsSockets, Probe, ip_batch, run
from vppagent.testbed.probes import run_probes as probes_run

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"),
    reason="needs root, nft and iproute2 (network namespaces)")

RUN = f"{os.getpid() % 100000:x}{secrets.token_hex(2)}"
PROBE_TIMEOUT = 0.8


# -- namespaces and commands -------------------------------------------------------------

def sysctl(ns: str, settings: dict[str, str]) -> None:
    run(["ip", "netns", "exec", ns, "sysctl", "-qw", *(f"{k}={v}" for k, v in settings.items())])


# -- topology ---------------------------------------------------------------------------

@dataclass
class Pod:
    ns: str
    node: str
    iface: str
    ips: list[IPAddr]


@dataclass
class Node:
    name: str
    index: int
    ns: str
    host_ips: list[IPAddr] = field(default_factory=list)

    @property
    def v4(self) -> str:
        return f"172.31.{self.index}.1"

    @property
    def v6(self) -> str:
        return f"fd00:31:{self.index}::1"


class Lab:
    """Client + nodes + pods, wired; ``where(ip)`` names the namespace owning an address."""

    def __init__(self, group: str, nodes: dict[str, list[IPAddr]], pods: list[tuple[str, str, list[IPAddr]]],
                 external: Iterable[IPAddr]) -> None:
        self.spaces = Namespaces(f"vpa{RUN}{group}")
        self.nodes: dict[str, Node] = {}
        self.pods: list[Pod] = []
        self.external = sorted(set(external) - {ip for _, _, ips in pods for ip in ips}
                               - {ip for ips in nodes.values() for ip in ips}, key=lambda a: (a.version, a))
        self.dataplanes: dict[str, NftablesDataplane] = {}
        try:
            self._build(nodes, pods)
        except BaseException:
            self.close()
            raise

    def _build(self, nodes: dict[str, list[IPAddr]], pods: list[tuple[str, str, list[IPAddr]]]) -> None:
        shorts = ["c"] + [f"n{i}" for i in range(1, len(nodes) + 1)] + [f"p{j}" for j in range(len(pods))]
        names = self.spaces.add(*shorts)
        self.client = names[0]
        for i, (node, ips) in enumerate(sorted(nodes.items()), start=1):
            self.nodes[node] = Node(node, i, names[i], list(ips))
        for j, (node, iface, ips) in enumerate(pods):
            self.pods.append(Pod(names[1 + len(nodes) + j], node, iface, list(ips)))

        # Links first, both ends up, addresses after: an IPv6 address added while its
        # link has no carrier yet only becomes usable after a random delay of up to 1 s.
        client = ["link set lo up"]
        for n in self.nodes.values():
            link = f"to-n{n.index}"
            client += [f"link add {link} type veth peer name eth0 netns {n.ns}",
                       f"link set {link} addrgenmode none", f"link set {link} up"]
        ip_batch(self.client, client)

        def node_links(n: Node) -> None:
            lines = ["link set lo up", "link set eth0 addrgenmode none", "link set eth0 up"]
            for p in self.pods:
                if p.node == n.name:
                    lines += [f"link add {p.iface} type veth peer name eth0 netns {p.ns}",
                              f"link set {p.iface} addrgenmode none", f"link set {p.iface} up"]
            ip_batch(n.ns, lines)

        def pod_setup(p: Pod) -> None:
            lines = ["link set lo up", "link set eth0 addrgenmode none", "link set eth0 up",
                     "addr add fe80::2/64 dev eth0 nodad"]
            lines += [f"addr add {a}/{a.max_prefixlen} dev eth0" + (" nodad" if a.version == 6 else "")
                      for a in p.ips]
            lines += ["route add 169.254.1.1 dev eth0 scope link",
                      "route add default via 169.254.1.1 dev eth0", "route add default via fe80::1 dev eth0"]
            ip_batch(p.ns, lines)

        def node_addresses(n: Node) -> None:
            lines = ["addr add fe80::31:1/64 dev eth0 nodad", f"addr add {n.v4}/24 dev eth0",
                     f"addr add {n.v6}/64 dev eth0 nodad"]
            lines += [f"addr add {a}/{a.max_prefixlen} dev eth0" + (" nodad" if a.version == 6 else "")
                      for a in n.host_ips]
            lines += [f"route add default via 172.31.{n.index}.2", f"route add default via fd00:31:{n.index}::2"]
            # No ICMP redirects: the client routes through the node and back, and a redirect
            # would use up the ICMP rate-limit token a reject must send.
            settings = {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1",
                        "net.ipv4.conf.all.send_redirects": "0", "net.ipv4.conf.eth0.send_redirects": "0"}
            for p in self.pods:
                if p.node != n.name:
                    continue
                lines.append(f"addr add fe80::1/64 dev {p.iface} nodad")
                lines += [f"route add {a}/{a.max_prefixlen} dev {p.iface}" for a in p.ips]
                settings[f"net.ipv4.conf.{p.iface}.proxy_arp"] = "1"
                settings[f"net.ipv4.neigh.{p.iface}.proxy_delay"] = "0"
            ip_batch(n.ns, lines)
            sysctl(n.ns, settings)

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(node_links, self.nodes.values()))
            list(pool.map(pod_setup, self.pods))
            list(pool.map(node_addresses, self.nodes.values()))

        client = [f"addr add {a}/{a.max_prefixlen} dev lo" for a in self.external]
        for n in self.nodes.values():
            link = f"to-n{n.index}"
            client += [f"addr add fe80::31:2/64 dev {link} nodad", f"addr add 172.31.{n.index}.2/24 dev {link}",
                       f"addr add fd00:31:{n.index}::2/64 dev {link} nodad"]
        for n in self.nodes.values():
            owned = n.host_ips + [ip for p in self.pods if p.node == n.name for ip in p.ips]
            client += [f"route add {a}/{a.max_prefixlen} via {n.v4 if a.version == 4 else n.v6}" for a in owned]
        ip_batch(self.client, client)
        sysctl(self.client, {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"})

    def wait_ready(self, socks: NetnsSockets, timeout: float = 5.0) -> None:
        """Poll until no IPv6 address is still tentative (unusable for neighbour discovery)."""
        deadline = time.monotonic() + timeout
        for ns in self.spaces.names:
            while True:
                flags = [int(line.split()[4], 16) for line in
                         socks.read(ns, "/proc/thread-self/net/if_inet6").splitlines() if line.strip()]
                if not any(f & 0x40 for f in flags):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"IPv6 addresses in {ns} still tentative")
                time.sleep(0.02)

    def where(self, ip: IPAddr) -> str:
        for p in self.pods:
            if ip in p.ips:
                return p.ns
        for n in self.nodes.values():
            if ip in n.host_ips:
                return n.ns
        return self.client

    def start_dataplane(self, node: str, resources: list, **options: Any) -> NftablesDataplane:
        graph = CalcGraph(node)
        graph.apply_all(resources)
        cfg = NftablesConfig(netns=self.nodes[node].ns, node_name=node, refresh_interval=None, **options)
        dp = NftablesDataplane(cfg)
        dp.start()
        dp.apply([*graph.flush(), InSync()])
        status = dp.status()
        assert status.in_sync and status.failed == 0 and status.pending == 0, dp.dump()
        self.dataplanes[node] = dp
        dp.graph = graph   # type: ignore[attr-defined]
        return dp

    def close(self) -> None:
        for dp in self.dataplanes.values():
            dp.stop()
        self.spaces.close()


# -- probes -----------------------------------------------------------------------------

def run_probes(socks: NetnsSockets, probes: list[Probe], timeout: float = PROBE_TIMEOUT) -> None:
    """``probes.run_probes`` with this suite's timeout (fresh namespaces per file: no need for fresh flows)."""
    probes_run(socks, probes, timeout)


# -- conformance replay -----------------------------------------------------------------

CASES = load_cases()


@dataclass
class Outcome:
    expected: str = ""
    delivered: bool | None = None
    detail: str = ""
    skip: str | None = None
    explain: str = ""


@pytest.fixture(scope="module")
def socks() -> Iterator[NetnsSockets]:
    s = NetnsSockets()
    yield s
    s.close()


class ConformanceLab:
    """Replays one manifest file at a time: build, program, probe every case, tear down."""

    def __init__(self, socks: NetnsSockets) -> None:
        self.socks = socks
        self.results: dict[str, dict[str, Outcome]] = {}
        self.timings: dict[str, float] = {}

    def outcome(self, case: Case) -> Outcome:
        if case.file not in self.results:
            t0 = time.monotonic()
            self.results[case.file] = self._replay(case.file)
            self.timings[case.file] = time.monotonic() - t0
        return self.results[case.file][case.id]

    def _replay(self, file: str) -> dict[str, Outcome]:
        cases = [c for c in CASES if c.file == file]
        resources = load_objects(cases[0].manifests, file)
        ev = build_evaluator(resources)
        outcomes: dict[str, Outcome] = {}
        packets: dict[str, Packet] = {}
        for c in cases:
            pkt = make_packet(ev, c.src, c.dst, c.icmp)
            verdict = ev.evaluate(pkt)
            outcomes[c.id] = Outcome(expected=verdict.verdict, explain=verdict.explain())
            packets[c.id] = pkt

        nodes: dict[str, list[IPAddr]] = {}
        pods: list[tuple[str, str, list[IPAddr]]] = []
        for r in resources:
            if isinstance(r, WorkloadEndpoint):
                nodes.setdefault(r.node, [])
                pods.append((r.node, r.interface_name, [n.network_address for n in r.nets]))
            elif isinstance(r, HostEndpoint):
                nodes.setdefault(r.node, []).extend(r.expected_ips)
        external = {ip for pkt in packets.values() for ip in (pkt.src, pkt.dst)}
        lab = Lab(f"f{sorted({c.file for c in CASES}).index(file)}", nodes, pods, external)
        try:
            for node in nodes:
                lab.start_dataplane(node, resources)
            lab.wait_ready(self.socks)
            probes = []
            for i, c in enumerate(cases):
                pkt = packets[c.id]
                src_ns, dst_ns = lab.where(pkt.src), lab.where(pkt.dst)
                if src_ns == dst_ns:
                    outcomes[c.id].skip = ("source and destination share a namespace: the packet never "
                                           "crosses a node, so no dataplane sees it")
                    continue
                probes.append(Probe(i, src_ns, dst_ns, pkt))
            run_probes(self.socks, probes)
            for p in probes:
                o = outcomes[cases[p.idx].id]
                o.delivered, o.detail = p.delivered, p.detail
        finally:
            lab.close()
        return outcomes


@pytest.fixture(scope="module")
def conformance(socks: NetnsSockets) -> Iterator[ConformanceLab]:
    lab = ConformanceLab(socks)
    yield lab
    if lab.timings:
        print("\nconformance replay timings: " + ", ".join(f"{f} {t:.2f}s" for f, t in lab.timings.items()))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_conformance_case_with_packets(conformance: ConformanceLab, case: Case) -> None:
    o = conformance.outcome(case)
    if o.skip:
        pytest.skip(o.skip)
    assert o.expected == case.expect
    delivered = "allow" if o.delivered else "deny"
    assert delivered == o.expected, f"{case.id}: packets say {delivered} ({o.detail}), evaluator:\n{o.explain}"


# -- services (kube-proxy replacement) ----------------------------------------------------

SVC_NS = "svc"
BACKENDS = {"b1": "10.244.1.1", "b2": "10.244.1.2", "b3": "10.244.1.3", "c1": "10.244.1.4"}
EXTERNAL_CLIENT = "203.0.113.50"


class Servers:
    """TCP (identity, then echo) and UDP (identity) servers inside pod namespaces, on one thread."""

    def __init__(self, socks: NetnsSockets) -> None:
        self.socks = socks
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self.sel.register(self._wake_r, selectors.EVENT_READ, ("wake",))
        self._stop = False
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._loop, name="svc-servers", daemon=True)
        self._thread.start()

    def serve(self, ns: str, name: str, tcp_port: int, udp_port: int) -> None:
        t = self.socks.socket(ns, socket.AF_INET, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind(("0.0.0.0", tcp_port))
        t.listen(128)
        u = self.socks.socket(ns, socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("0.0.0.0", udp_port))
        for s, kind in ((t, "listen"), (u, "udp")):
            s.setblocking(False)
            self._sockets.append(s)
            self.sel.register(s, selectors.EVENT_READ, (kind, name))
        self._wake_w.send(b"x")

    def _loop(self) -> None:
        while not self._stop:
            for key, _ in self.sel.select(timeout=0.5):
                kind, s = key.data[0], key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    if kind == "wake":
                        s.recv(64)
                    elif kind == "listen":
                        conn, peer = s.accept()
                        conn.setblocking(False)
                        conn.send(f"{key.data[1]} {peer[0]}\n".encode())
                        self.sel.register(conn, selectors.EVENT_READ, ("conn", key.data[1]))
                    elif kind == "conn":
                        data = s.recv(4096)
                        if data:
                            s.send(data)
                        else:
                            self.sel.unregister(s)
                            s.close()
                    elif kind == "udp":
                        data, peer = s.recvfrom(4096)
                        s.sendto(f"{key.data[1]} {peer[0]}".encode(), peer)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.sel.close()
        self._wake_w.close()


def pod_manifests() -> list[dict]:
    out: list[dict] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SVC_NS}}]
    for name, ip in BACKENDS.items():
        out.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": SVC_NS,
                                                                      "labels": {"app": name}},
                    "spec": {"nodeName": "node1", "containers": [{"name": "c"}]},
                    "status": {"podIPs": [{"ip": ip}]}})
    return out


def service_manifests(name: str, cluster_ip: str, backends: list[str | tuple[str, dict]], *, port: int = 80,
                      target: int = 8080, protocol: str = "TCP", node_port: int | None = None,
                      affinity: int | None = None, local: bool = False) -> list[dict]:
    spec: dict[str, Any] = {"type": "NodePort" if node_port else "ClusterIP", "clusterIP": cluster_ip,
                            "ports": [{"name": "p", "port": port, "targetPort": target, "protocol": protocol,
                                       **({"nodePort": node_port} if node_port else {})}]}
    if affinity:
        spec.update(sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": affinity}})
    if local:
        spec["externalTrafficPolicy"] = "Local"
    endpoints = []
    for b in backends:
        pod, conditions = (b, {"ready": True}) if isinstance(b, str) else b
        endpoints.append({"addresses": [BACKENDS[pod]], "nodeName": "node1", "conditions": conditions})
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": SVC_NS}, "spec": spec},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": f"{name}-a", "namespace": SVC_NS, "labels": {"kubernetes.io/service-name": name}},
         "addressType": "IPv4", "ports": [{"name": "p", "port": target, "protocol": protocol}],
         "endpoints": endpoints},
    ]


class ServiceLab:
    def __init__(self, socks: NetnsSockets) -> None:
        resources = load_objects(pod_manifests(), "pods")
        peps = [r for r in resources if isinstance(r, WorkloadEndpoint)]
        self.socks = socks
        self.lab = Lab("s", {"node1": []}, [(w.node, w.interface_name, [n.network_address for n in w.nets])
                                           for w in peps], [ipaddress.ip_address(EXTERNAL_CLIENT)])
        self.servers: Servers | None = None
        try:
            ip_batch(self.lab.client, ["route add 10.96.0.0/16 via 172.31.1.1"])
            self.dp = self.lab.start_dataplane("node1", resources)
            self.graph: CalcGraph = self.dp.graph  # type: ignore[attr-defined]
            self.lab.wait_ready(socks)
            self.pod_ns = {w.pod: self.lab.where(w.nets[0].network_address) for w in peps}
            self.servers = Servers(socks)
            for pod, ns in self.pod_ns.items():
                self.servers.serve(ns, pod, 8080, 5353)
        except BaseException:
            self.close()
            raise

    def apply(self, manifests: list[dict]) -> None:
        for r in load_objects(manifests, "svc"):
            self.graph.update(r)
        self.dp.apply(self.graph.flush())
        st = self.dp.status()
        assert st.failed == 0 and st.pending == 0, self.dp.dump()

    def connect(self, ns: str, ip: str, port: int, source: str | None = None,
                timeout: float = 1.0) -> socket.socket:
        s = self.socks.socket(ns, socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        if source:
            s.bind((source, 0))
        try:
            s.connect((ip, port))
        except BaseException:
            s.close()
            raise
        return s

    def ask(self, ns: str, ip: str, port: int, source: str | None = None) -> tuple[str, str]:
        """Connect, read the backend's ``name peer`` line."""
        with self.connect(ns, ip, port, source) as s:
            name, peer = s.makefile().readline().split()
        return name, peer

    def ask_udp(self, ns: str, ip: str, port: int, sport: int) -> tuple[str, str]:
        with self.socks.socket(ns, socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1.0)
            s.bind(("0.0.0.0", sport))
            s.sendto(b"q", (ip, port))
            name, peer = s.recv(512).decode().split()
        return name, peer

    def conntrack(self, *args: str) -> str:
        return run(["ip", "netns", "exec", self.lab.nodes["node1"].ns, "conntrack", "-L", *args])

    def close(self) -> None:
        if self.servers:
            self.servers.close()
        self.lab.close()


@pytest.fixture(scope="module")
def svc(socks: NetnsSockets) -> Iterator[ServiceLab]:
    lab = ServiceLab(socks)
    try:
        yield lab
    finally:
        lab.close()


def test_service_spreads_over_every_backend(svc: ServiceLab) -> None:
    svc.apply(service_manifests("web", "10.96.0.10", ["b1", "b2", "b3"]))
    seen = {svc.ask(svc.lab.client, "10.96.0.10", 80)[0] for _ in range(40)}
    assert seen == {"b1", "b2", "b3"}
    from_pod = {svc.ask(svc.pod_ns["c1"], "10.96.0.10", 80)[0] for _ in range(20)}
    assert from_pod <= {"b1", "b2", "b3"} and len(from_pod) > 1


def test_session_affinity_sticks(svc: ServiceLab) -> None:
    svc.apply(service_manifests("sticky", "10.96.0.11", ["b1", "b2", "b3"], affinity=60))
    assert len({svc.ask(svc.lab.client, "10.96.0.11", 80)[0] for _ in range(15)}) == 1
    # A different client gets its own (independent) choice, and also sticks to it.
    other = {svc.ask(svc.lab.client, "10.96.0.11", 80, source=EXTERNAL_CLIENT)[0] for _ in range(10)}
    assert len(other) == 1


def test_no_endpoints_is_refused_not_dropped(svc: ServiceLab) -> None:
    svc.apply(service_manifests("empty", "10.96.0.12", []))
    t0 = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        svc.connect(svc.lab.client, "10.96.0.12", 80, timeout=2.0)
    assert time.monotonic() - t0 < 0.5
    svc.apply(service_manifests("empty-udp", "10.96.0.18", [], port=53, target=5353, protocol="UDP"))
    with svc.socks.socket(svc.lab.client, socket.AF_INET, socket.SOCK_DGRAM) as u:   # UDP: ICMP unreachable
        u.settimeout(2.0)
        u.connect(("10.96.0.18", 53))
        u.send(b"q")
        with pytest.raises(ConnectionRefusedError):
            u.recv(16)
    # Endpoints arrive: the same frontend now answers.
    svc.apply(service_manifests("empty", "10.96.0.12", ["b2"]))
    assert svc.ask(svc.lab.client, "10.96.0.12", 80)[0] == "b2"


def test_nodeport_cluster_masquerades_local_keeps_source(svc: ServiceLab) -> None:
    svc.apply(service_manifests("np-cluster", "10.96.0.13", ["b1", "b2"], node_port=30080)
              + service_manifests("np-local", "10.96.0.14", ["b3"], node_port=30081, local=True))
    node_ip = svc.lab.nodes["node1"].v4
    for _ in range(4):
        name, peer = svc.ask(svc.lab.client, node_ip, 30080, source=EXTERNAL_CLIENT)
        assert name in ("b1", "b2") and peer == node_ip          # SNATed to the node
    name, peer = svc.ask(svc.lab.client, node_ip, 30081, source=EXTERNAL_CLIENT)
    assert (name, peer) == ("b3", EXTERNAL_CLIENT)               # client source preserved


def test_hairpin_reaches_itself(svc: ServiceLab) -> None:
    svc.apply(service_manifests("self", "10.96.0.15", ["c1"]))
    name, peer = svc.ask(svc.pod_ns["c1"], "10.96.0.15", 80)
    assert name == "c1" and peer != BACKENDS["c1"]               # masqueraded, or replies would bypass NAT


def test_terminating_backend_keeps_existing_connections(svc: ServiceLab) -> None:
    svc.apply(service_manifests("term", "10.96.0.16", ["b1"]))
    with svc.connect(svc.lab.client, "10.96.0.16", 80) as conn:
        reader = conn.makefile("rb")
        assert reader.readline().split()[0] == b"b1"
        svc.apply(service_manifests("term", "10.96.0.16", [
            ("b1", {"ready": False, "serving": True, "terminating": True}), "b2"]))
        assert {svc.ask(svc.lab.client, "10.96.0.16", 80)[0] for _ in range(6)} == {"b2"}
        conn.sendall(b"still there\n")
        assert reader.readline() == b"still there\n"


def test_stale_udp_conntrack_entry_is_deleted(svc: ServiceLab) -> None:
    svc.apply(service_manifests("dns", "10.96.0.17", ["b1"], port=53, target=5353, protocol="UDP"))
    assert svc.ask_udp(svc.lab.client, "10.96.0.17", 53, sport=40053)[0] == "b1"
    assert "src=10.244.1.1" in svc.conntrack("-p", "udp", "--orig-dst", "10.96.0.17")
    svc.apply(service_manifests("dns", "10.96.0.17", ["b2"], port=53, target=5353, protocol="UDP"))
    assert "src=10.244.1.1" not in svc.conntrack("-p", "udp", "--orig-dst", "10.96.0.17")
    # The same client flow (same source port) now reaches the new backend, not the old one.
    assert svc.ask_udp(svc.lab.client, "10.96.0.17", 53, sport=40053)[0] == "b2"


def test_nat_outgoing_pool_masquerades_to_outside(svc: ServiceLab) -> None:
    listener = svc.socks.socket(svc.lab.client, socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((EXTERNAL_CLIENT, 9000))
    listener.listen(4)
    listener.settimeout(2.0)

    def source_seen() -> str:
        with svc.connect(svc.pod_ns["c1"], EXTERNAL_CLIENT, 9000) as _:
            conn, peer = listener.accept()
            conn.close()
        return peer[0]

    pool = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "pods"},
            "spec": {"cidr": "10.244.0.0/16", "natOutgoing": False}}
    try:
        svc.apply([pool])
        assert source_seen() == BACKENDS["c1"]
        pool["spec"]["natOutgoing"] = True
        svc.apply([pool])
        assert source_seen() == svc.lab.nodes["node1"].v4
    finally:
        listener.close()
