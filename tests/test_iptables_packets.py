"""The iptables dataplane with real packets between network namespaces.

Topology (per test, unique names, always torn down):

    client netns ──veth── node netns ──veth(caliXXXX)── pod netns (one per pod)
    (external IPs on lo)  (the agent's dataplane,        (pod IP /32, /128,
                           ip_forward, /32 routes,        default via 169.254.1.1
                           proxy ARP)                     and fe80::1)

The dataplane runs in this process with ``netns: <node>`` (every iptables,
ipset and conntrack command is prefixed with ``ip netns exec``); probes are
sockets this process opens inside each namespace (``setns`` on its own
thread), so hundreds of probes run in parallel without spawning processes.

Every case of ``tests/conformance`` is replayed: the delivery of a real
packet must equal the reference evaluator's verdict. One documented kernel
difference: an ICMP error (or other non-request ICMP type) that belongs to no
connection is INVALID to conntrack and, as in Felix, dropped before policy;
those cases are asserted dropped with the default config and then replayed
with ``dropInvalid: false``, where they must match the evaluator.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import selectors
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import pytest
import yaml

from conformance_suite import Case, load_cases
from vppagent.calc.graph import CalcGraph
from vppagent.dataplane.iptables import IptablesConfig, IptablesDataplane
from vppagent.evaluator import build_evaluator, make_packet
from vppagent.evaluator.packet import Packet
from vppagent.manifests.loader import load_objects
from vppagent.model.updates import InSync, WorkloadEndpointInfo
from vppagent.testbed.probes import Marking, NetnsSockets, Probe, run_probes

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, netfilter)"),
]

CASES = load_cases()
NODE = "node1"
_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


# -- namespaces -------------------------------------------------------------------------------

def sh(script: str) -> None:
    """Run a shell script (``set -e``); fail with its output."""
    proc = subprocess.run(["bash", "-ec", script], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"setup failed ({proc.returncode}): {proc.stderr.strip()}\n--- script:\n{script}")


def run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Switch this thread into a netns; sockets opened inside stay there."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        yield
    finally:
        _libc.setns(own, CLONE_NEWNET)
        os.close(own)
        os.close(target)


def token() -> str:
    return f"{os.getpid() % 10000:04d}{random.randrange(16 ** 3):03x}"


NS_SETUP = ("ip netns add {ns}\n"
            "ip netns exec {ns} sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0\n"
            "ip -n {ns} link set lo up\n")


class Topology:
    """A node netns, a client netns outside it, and pods wired to the node."""

    def __init__(self) -> None:
        self.tok = token()
        self.node = f"ipt{self.tok}n"
        self.client = f"ipt{self.tok}c"
        self.namespaces: list[str] = []
        self.pods: dict[str, str] = {}           # pod IP -> netns
        self.client_ips: set[str] = set()
        self.node_ips: set[str] = set()

    def __enter__(self) -> "Topology":
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _add_ns(self, name: str) -> str:
        self.namespaces.append(name)
        return NS_SETUP.format(ns=name)

    def _create(self) -> None:
        n, c = self.node, self.client
        script = self._add_ns(n) + self._add_ns(c) + f"""
ip netns exec {n} sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
ip -n {n} link add eth0 type veth peer name eth0 netns {c}
ip -n {n} addr add 192.168.200.1/24 dev eth0
ip -n {n} addr add fd99::1/64 dev eth0 nodad
ip -n {c} addr add 192.168.200.2/24 dev eth0
ip -n {c} addr add fd99::2/64 dev eth0 nodad
ip -n {n} link set eth0 up
ip -n {c} link set eth0 up
ip -n {n} route add default via 192.168.200.2
ip -n {n} -6 route add default via fd99::2
ip -n {c} route add default via 192.168.200.1
ip -n {c} -6 route add default via fd99::1
"""
        sh(script)

    def add_pods(self, endpoints: Iterable[WorkloadEndpointInfo]) -> None:
        lines: list[str] = []
        for i, ep in enumerate(endpoints):
            ns = f"ipt{self.tok}p{i}"
            lines.append(self._add_ns(ns))
            iface = ep.interface_name
            n = self.node
            lines += [
                f"ip -n {n} link add {iface} type veth peer name eth0 netns {ns}",
                f"ip netns exec {n} sysctl -qw net.ipv4.conf.{iface}.proxy_arp=1",
                f"ip -n {n} addr add fe80::1/64 dev {iface} nodad",
                f"ip -n {n} link set {iface} up",
                f"ip -n {ns} link set eth0 up",
                f"ip -n {ns} route add 169.254.1.1 dev eth0 scope link",
                f"ip -n {ns} route add default via 169.254.1.1 dev eth0",
                f"ip -n {ns} -6 route add default via fe80::1 dev eth0",
            ]
            for net in ep.nets:
                ip = net.network_address
                self.pods[str(ip)] = ns
                six = "-6 " if ip.version == 6 else ""
                extra = " nodad" if ip.version == 6 else ""
                lines += [f"ip -n {ns} addr add {net} dev eth0{extra}",
                          f"ip -n {n} {six}route add {net} dev {iface}"]
        sh("\n".join(lines))

    def add_client_ips(self, ips: Iterable[str]) -> None:
        new = sorted(set(ips) - self.client_ips)
        if new:
            sh("\n".join(f"ip -n {self.client} addr add {ip}/{32 if ':' not in ip else 128} dev lo"
                         + (" nodad" if ":" in ip else "") for ip in new))
            self.client_ips.update(new)

    def set_node_ips(self, ips: Iterable[str]) -> None:
        """Host endpoint addresses on the node's eth0 (replacing earlier ones)."""
        lines = [f"ip -n {self.node} addr del {ip}/32 dev eth0" for ip in sorted(self.node_ips)]
        self.node_ips = set(ips)
        lines += [f"ip -n {self.node} addr add {ip}/32 dev eth0" for ip in sorted(self.node_ips)]
        if lines:
            sh("\n".join(lines))

    def netns_of(self, ip: str) -> str:
        if ip in self.pods:
            return self.pods[ip]
        if ip in self.node_ips:
            return self.node
        return self.client

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.namespaces.clear()


# -- probes -----------------------------------------------------------------------------------

PROBE_SETTLE, PROBE_DEADLINE = 0.5, 3.0
# Scenarios of a file share the node's conntrack table: every probe must be a fresh flow.
IPT_MARKING = Marking(fresh_flows=True)


def probe(probes: list[Probe], names: Sequence[str], expect: set[str]) -> dict[str, bool]:
    """Run ``probes`` (``names[p.idx]`` names each), done early once everything in ``expect`` arrived."""
    socks = NetnsSockets()
    try:
        run_probes(socks, probes, PROBE_DEADLINE, IPT_MARKING, settle=PROBE_SETTLE,
                   expect={p.idx for p in probes if names[p.idx] in expect})
    finally:
        socks.close()
    return {names[p.idx]: p.delivered for p in probes}


# -- the conformance replay -----------------------------------------------------------------

def conntrack_invalid(pkt: Packet) -> bool:
    """Unsolicited ICMP that is not a request conntrack can track: INVALID in the kernel."""
    if pkt.protocol == 1:
        return pkt.icmp_type not in (8, 13, 15, 17)
    if pkt.protocol == 58:
        return pkt.icmp_type not in (128, 139)
    return False


def on_node(manifests: Sequence[dict], node: str) -> list[dict]:
    """All pods and workload endpoints scheduled on ``node`` (one node hosts every pod)."""
    out = []
    for m in manifests:
        m = yaml.safe_load(yaml.safe_dump(m))
        if m.get("kind") == "Pod":
            m.setdefault("spec", {})["nodeName"] = node
        elif m.get("kind") == "WorkloadEndpoint":
            m["spec"]["node"] = node
        out.append(m)
    return out


@dataclass
class Scenario:
    node: str
    manifests: list[dict]
    cases: list[Case]
    node_ips: list[str]


def scenarios(cases: Sequence[Case]) -> list[Scenario]:
    """One scenario for workloads (every pod on one node); one per host endpoint (its node)."""
    manifests = list(cases[0].manifests)
    heps = [m for m in manifests if m.get("kind") == "HostEndpoint"]
    if not heps:
        return [Scenario(NODE, on_node(manifests, NODE), list(cases), [])]
    ev = evaluator_for(cases[0].file, cases[0].manifests)
    out = []
    for hep in heps:
        ips = {str(ip) for ip in hep["spec"].get("expectedIPs", [])}
        mine = []
        for c in cases:
            pkt = make_packet(ev, c.src, c.dst, c.icmp)
            if {str(pkt.src), str(pkt.dst)} & ips:
                mine.append(c)
        if mine:
            out.append(Scenario(hep["spec"]["node"], manifests, mine, sorted(ips)))
    return out


_EVALUATORS: dict[str, Any] = {}


def evaluator_for(file: str, manifests: Sequence[dict]):
    if file not in _EVALUATORS:
        _EVALUATORS[file] = build_evaluator(load_objects(manifests, file))
    return _EVALUATORS[file]


def updates_for(manifests: Sequence[dict], node: str) -> list:
    graph = CalcGraph(node)
    graph.apply_all(load_objects(manifests, "test"))
    return graph.flush()


def start_dataplane(topo: Topology, updates: list, **options: Any) -> IptablesDataplane:
    config = IptablesConfig(netns=topo.node, node_name=NODE, refresh_interval=0, **options)
    dp = IptablesDataplane(config)
    dp.start()
    dp.apply(list(updates) + [InSync()])
    assert dp.last_report is not None and not dp.last_report.errors, dp.last_report
    assert dp.status().ready
    return dp


def replay(cases: Sequence[Case], backend: str = "nft") -> list[str]:
    """Run cases sharing one set of manifests; return the mismatches."""
    file = cases[0].file
    ev = evaluator_for(file, cases[0].manifests)
    problems: list[str] = []
    with Topology() as topo:
        for sc in scenarios(cases):
            updates = updates_for(sc.manifests, sc.node)
            if not topo.pods:
                topo.add_pods(u.endpoint for u in updates if type(u).__name__ == "WorkloadEndpointUpdate")
            topo.set_node_ips(sc.node_ips)
            probes: list[Probe] = []
            names: list[str] = []
            expected: dict[str, bool] = {}
            for case in sc.cases:
                pkt = make_packet(ev, case.src, case.dst, case.icmp)
                verdict = ev.evaluate(pkt).verdict
                assert verdict == case.expect, f"{case.id}: evaluator disagrees with the case file"
                for ip in (str(pkt.src), str(pkt.dst)):
                    if topo.netns_of(ip) == topo.client:
                        topo.add_client_ips([ip])
                probes.append(Probe(len(probes), topo.netns_of(str(pkt.src)), topo.netns_of(str(pkt.dst)), pkt))
                names.append(case.name)
                expected[case.name] = verdict == "allow"
            start_dataplane(topo, updates, backend=backend)
            invalid = {names[p.idx] for p in probes if conntrack_invalid(p.pkt)}
            got = probe(probes, names, {n for n, ok in expected.items() if ok and n not in invalid})
            for p in probes:
                name = names[p.idx]
                want = expected[name] and name not in invalid
                if got[name] != want:
                    problems.append(f"{file}::{name}: {p.pkt.describe()} delivered={got[name]}, "
                                    f"expected {'allow' if want else 'deny'}"
                                    + (" (conntrack INVALID, dropped before policy)" if name in invalid else ""))
            if invalid:
                # Without the INVALID check, policy alone decides: it must equal the evaluator.
                start_dataplane(topo, updates, backend=backend, drop_invalid=False)
                again = [Probe(p.idx, p.src_ns, p.dst_ns, p.pkt) for p in probes if names[p.idx] in invalid]
                got = probe(again, names, {names[p.idx] for p in again if expected[names[p.idx]]})
                for p in again:
                    name = names[p.idx]
                    if got[name] != expected[name]:
                        problems.append(f"{file}::{name} (dropInvalid false): {p.pkt.describe()} "
                                        f"delivered={got[name]}, evaluator says "
                                        f"{'allow' if expected[name] else 'deny'}")
    return problems


@pytest.mark.parametrize("file", sorted({c.file for c in CASES}))
def test_conformance_with_packets(file: str) -> None:
    problems = replay([c for c in CASES if c.file == file])
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("file", ["calico-tiers", "host-endpoints", "ipv6", "knp-ports"])
def test_conformance_with_packets_legacy_backend(file: str) -> None:
    problems = replay([c for c in CASES if c.file == file], backend="legacy")
    assert not problems, "\n".join(problems)


# Untracked (doNotTrack) and preDNAT host endpoint policy: not in tests/conformance, same rules.
UNTRACKED_MANIFESTS = tuple(yaml.safe_load("""
- apiVersion: projectcalico.org/v3
  kind: HostEndpoint
  metadata: {name: node1-eth0, labels: {role: gw}}
  spec: {node: node1, interfaceName: eth0, expectedIPs: [192.168.100.1]}
- apiVersion: projectcalico.org/v3
  kind: GlobalNetworkPolicy
  metadata: {name: raw-gw}
  spec:
    selector: role == 'gw'
    doNotTrack: true
    applyOnForward: true
    types: [Ingress]
    ingress:
      - {action: Allow, protocol: UDP, destination: {ports: [5000]}}
      - {action: Deny, protocol: UDP, destination: {ports: [5001]}}
- apiVersion: projectcalico.org/v3
  kind: GlobalNetworkPolicy
  metadata: {name: pre-gw}
  spec:
    selector: role == 'gw'
    preDNAT: true
    applyOnForward: true
    types: [Ingress]
    ingress:
      - {action: Deny, source: {nets: [198.51.100.0/24]}}
- apiVersion: projectcalico.org/v3
  kind: GlobalNetworkPolicy
  metadata: {name: gw}
  spec:
    selector: role == 'gw'
    types: [Ingress]
    ingress:
      - {action: Allow, protocol: UDP, destination: {ports: [6000, 7000]}}
"""))
UNTRACKED_CASES = [
    Case("untracked-prednat", name, UNTRACKED_MANIFESTS, src, dst, None, expect, None, None, None)
    for name, src, dst, expect in [
        ("untracked-allow", "192.0.2.10", "192.168.100.1:5000/UDP", "allow"),
        ("untracked-deny", "192.0.2.10", "192.168.100.1:5001/UDP", "deny"),
        ("untracked-allow-before-prednat-deny", "198.51.100.5", "192.168.100.1:5000/UDP", "allow"),
        ("prednat-deny", "198.51.100.5", "192.168.100.1:6000/UDP", "deny"),
        ("normal-allow-after-untracked-and-prednat", "192.0.2.10", "192.168.100.1:7000/UDP", "allow"),
        ("normal-end-of-tier", "192.0.2.10", "192.168.100.1:8080/UDP", "deny"),
        ("failsafe-beats-prednat-deny", "198.51.100.5", "192.168.100.1:22/TCP", "allow"),
        ("failsafe", "192.0.2.10", "192.168.100.1:6443/TCP", "allow"),
    ]
]


def test_untracked_and_pre_dnat_host_endpoint_policy_with_packets() -> None:
    problems = replay(UNTRACKED_CASES)
    assert not problems, "\n".join(problems)


# -- services (kube-proxy replacement) ------------------------------------------------------------

SVC_NS = "svc"


def pod(name: str, v4: str, v6: str, labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": SVC_NS, "labels": labels or {"app": name}},
            "spec": {"nodeName": NODE, "containers": [{"name": "c"}]},
            "status": {"podIPs": [{"ip": v4}, {"ip": v6}]}}


def service(name: str, spec: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": SVC_NS}, "spec": spec}


def endpoint_slice(name: str, service_name: str, endpoints: list[tuple[str, str, dict]], ports: list[dict],
                   family: str = "IPv4") -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": SVC_NS, "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": family, "ports": ports,
            "endpoints": [{"addresses": [ip], "nodeName": node, "conditions": cond} for ip, node, cond in endpoints]}


READY = {"ready": True}
TERMINATING = {"ready": False, "serving": True, "terminating": True}
BACKENDS = {"b1": ("10.0.50.1", "fd00:50::1"), "b2": ("10.0.50.2", "fd00:50::2"),
            "b3": ("10.0.50.3", "fd00:50::3"), "b4": ("10.0.50.4", "fd00:50::4"),
            "client": ("10.0.50.10", "fd00:50::10")}
TCP80 = [{"name": "web", "port": 8080, "protocol": "TCP"}]
UDP53 = [{"name": "dns", "port": 5353, "protocol": "UDP"}]


def web_slice(names: Sequence[str], cond: dict | None = None, family: int = 4, **conds: dict) -> dict:
    idx = 0 if family == 4 else 1
    eps = [(BACKENDS[n][idx], NODE if n != "b4" else "node2", conds.get(n, cond or READY)) for n in names]
    return endpoint_slice(f"web-v{family}", "web", eps, TCP80, "IPv4" if family == 4 else "IPv6")


def base_manifests() -> list[dict]:
    objs: list[dict] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SVC_NS}}]
    objs += [pod(n, v4, v6) for n, (v4, v6) in BACKENDS.items()]
    objs += [
        service("web", {"type": "NodePort", "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                        "ipFamilies": ["IPv4", "IPv6"], "externalIPs": ["198.51.100.50"],
                        "ports": [{"name": "web", "port": 80, "targetPort": 8080, "nodePort": 30080}]}),
        web_slice(["b1", "b2", "b3"]), web_slice(["b1", "b2", "b3"], family=6),
        service("sticky", {"clusterIP": "10.96.0.11", "sessionAffinity": "ClientIP",
                           "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                           "ports": [{"name": "web", "port": 80, "targetPort": 8080}]}),
        endpoint_slice("sticky", "sticky", [(BACKENDS[n][0], NODE, READY) for n in ("b1", "b2", "b3")], TCP80),
        service("empty", {"clusterIP": "10.96.0.12", "ports": [
            {"name": "web", "port": 80, "targetPort": 8080},
            {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"}]}),
        service("local", {"type": "NodePort", "clusterIP": "10.96.0.14", "externalTrafficPolicy": "Local",
                          "ports": [{"name": "web", "port": 80, "targetPort": 8080, "nodePort": 30081}]}),
        endpoint_slice("local", "local", [(BACKENDS["b1"][0], NODE, READY), (BACKENDS["b4"][0], "node2", READY)], TCP80),
        service("self", {"clusterIP": "10.96.0.15", "ports": [{"name": "web", "port": 80, "targetPort": 8080}]}),
        endpoint_slice("self", "self", [(BACKENDS["b1"][0], NODE, READY)], TCP80),
        service("dns", {"clusterIP": "10.96.0.13", "ports": [{"name": "dns", "port": 53, "targetPort": 5353,
                                                             "protocol": "UDP"}]}),
        endpoint_slice("dns", "dns", [(BACKENDS["b1"][0], NODE, READY)], UDP53),
    ]
    return objs


class Servers:
    """Backends answering ``<name> <peer-ip>`` on TCP 8080 (on connect and per message) and UDP 5353."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.sockets: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def add(self, ns: str, name: str, family: int, kind: int, port: int) -> None:
        with in_netns(ns):
            s = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == 6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(("0.0.0.0" if family == 4 else "::", port))
        if kind == socket.SOCK_STREAM:
            s.listen(64)
        s.setblocking(False)
        self.sockets.append(s)
        self.sel.register(s, selectors.EVENT_READ, ("tcp" if kind == socket.SOCK_STREAM else "udp", name))

    def _loop(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.sel.select(timeout=0.05):
                what, name = key.data
                s: socket.socket = key.fileobj   # type: ignore[assignment]
                try:
                    if what == "tcp":
                        conn, peer = s.accept()
                        conn.setblocking(False)
                        conn.send(f"{name} {peer[0]}\n".encode())
                        self.sel.register(conn, selectors.EVENT_READ, ("conn", name))
                    elif what == "udp":
                        data, peer = s.recvfrom(2048)
                        s.sendto(f"{name} {peer[0]}\n".encode(), peer)
                    else:
                        data = s.recv(2048)
                        if data:
                            s.send(f"{name}\n".encode())
                        else:
                            self.sel.unregister(s)
                            s.close()
                except (BlockingIOError, ConnectionError):
                    pass

    def __enter__(self) -> "Servers":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(5)
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()   # type: ignore[union-attr]
        self.sel.close()


class ServiceLab:
    """Topology + backends + a dataplane driven through the calculation graph."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.graph = CalcGraph(NODE)
        self.graph.apply_all(load_objects(base_manifests(), "services"))
        updates = self.graph.flush()
        topo.add_pods(u.endpoint for u in updates if type(u).__name__ == "WorkloadEndpointUpdate")
        self.dp = start_dataplane(topo, updates)

    def ns(self, name: str) -> str:
        return self.topo.pods[BACKENDS[name][0]]

    def change(self, *objects: dict) -> None:
        self.graph.apply_all(load_objects(list(objects), "change"))
        self.dp.apply(self.graph.flush())
        assert not self.dp.last_report.errors, self.dp.last_report

    def connect(self, src_ns: str, dst: str, port: int, src: str | None = None,
                timeout: float = 2.0) -> tuple[str, str]:
        """TCP connect; the backend's greeting: (backend name, source address it saw)."""
        family = 6 if ":" in dst else 4
        with in_netns(src_ns):
            s = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_STREAM)
        with s:
            s.settimeout(timeout)
            if src:
                s.bind((src, 0))
            s.connect((dst, port))
            name, seen = s.makefile().readline().split()
            return name, seen


@pytest.fixture(scope="module")
def lab() -> Iterator[ServiceLab]:
    with Topology() as topo:
        lab = ServiceLab(topo)
        with Servers() as servers:
            for name in BACKENDS:
                if name != "client":
                    for family, kind, port in ((4, socket.SOCK_STREAM, 8080), (6, socket.SOCK_STREAM, 8080),
                                               (4, socket.SOCK_DGRAM, 5353)):
                        servers.add(lab.ns(name), name, family, kind, port)
            yield lab


def test_cluster_ip_spreads_over_every_backend(lab: ServiceLab) -> None:
    client = lab.ns("client")
    for vip in ("10.96.0.10", "fd00:96::10"):
        seen = {lab.connect(client, vip, 80)[0] for _ in range(30)}
        assert seen == {"b1", "b2", "b3"}, vip
    name, source = lab.connect(client, "10.96.0.10", 80)
    assert source == BACKENDS["client"][0]     # pod to ClusterIP: no SNAT


def test_session_affinity_sticks(lab: ServiceLab) -> None:
    client = lab.ns("client")
    assert len({lab.connect(client, "10.96.0.11", 80)[0] for _ in range(12)}) == 1


def test_no_endpoints_is_refused_quickly(lab: ServiceLab) -> None:
    client = lab.ns("client")
    start = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        lab.connect(client, "10.96.0.12", 80)
    with in_netns(client):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with u:
        u.settimeout(2)
        u.connect(("10.96.0.12", 53))
        u.send(b"q")
        with pytest.raises(ConnectionRefusedError):   # the ICMP port unreachable, not a timeout
            u.recv(100)
    assert time.monotonic() - start < 1.0


def test_node_port_cluster_policy_masquerades(lab: ServiceLab) -> None:
    seen = {lab.connect(lab.topo.client, "192.168.200.1", 30080) for _ in range(20)}
    assert {name for name, _ in seen} == {"b1", "b2", "b3"}
    assert {src for _, src in seen} != {"192.168.200.2"}          # not the client's address
    assert all(src == "192.168.200.1" for _, src in seen), seen   # the node's


def test_external_ip_from_outside(lab: ServiceLab) -> None:
    seen = {lab.connect(lab.topo.client, "198.51.100.50", 80) for _ in range(20)}
    assert {name for name, _ in seen} == {"b1", "b2", "b3"}
    assert {src for _, src in seen} == {"192.168.200.1"}           # Cluster policy: masqueraded


def test_node_port_local_policy_keeps_source_and_local_backends(lab: ServiceLab) -> None:
    seen = {lab.connect(lab.topo.client, "192.168.200.1", 30081) for _ in range(12)}
    assert seen == {("b1", "192.168.200.2")}                       # b4 is on node2: never chosen


def test_hairpin_to_own_service_is_masqueraded(lab: ServiceLab) -> None:
    name, source = lab.connect(lab.ns("b1"), "10.96.0.15", 80)
    assert name == "b1" and source != BACKENDS["b1"][0]


def test_terminating_backend_keeps_its_connection(lab: ServiceLab) -> None:
    client = lab.ns("client")
    with in_netns(client):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with s:
        s.settimeout(2)
        s.connect(("10.96.0.10", 80))
        f = s.makefile("rw")
        name = f.readline().split()[0]
        lab.change(web_slice(["b1", "b2", "b3"], **{name: TERMINATING}))
        try:
            f.write("still there?\n")
            f.flush()
            assert f.readline().strip() == name                       # conntrack keeps it
            fresh = {lab.connect(client, "10.96.0.10", 80)[0] for _ in range(15)}
            assert name not in fresh and fresh
        finally:
            lab.change(web_slice(["b1", "b2", "b3"]))


def test_stale_udp_conntrack_entry_is_removed(lab: ServiceLab) -> None:
    client = lab.ns("client")
    with in_netns(client):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with u:
        u.settimeout(2)
        u.bind((BACKENDS["client"][0], 0))

        def ask() -> str:
            u.sendto(b"q", ("10.96.0.13", 53))
            return u.recvfrom(100)[0].decode().split()[0]

        assert ask() == "b1"
        entries = run("ip", "netns", "exec", lab.topo.node, "conntrack", "-L", "-p", "udp", "--orig-dst", "10.96.0.13")
        assert BACKENDS["b1"][0] in entries
        lab.change(endpoint_slice("dns", "dns", [(BACKENDS["b2"][0], NODE, READY)], UDP53))
        entries = run("ip", "netns", "exec", lab.topo.node, "conntrack", "-L", "-p", "udp", "--orig-dst", "10.96.0.13")
        assert BACKENDS["b1"][0] not in entries
        assert ask() == "b2"        # same 5-tuple: without the cleanup it would still reach b1
    lab.change(endpoint_slice("dns", "dns", [(BACKENDS["b1"][0], NODE, READY)], UDP53))


def test_nat_outgoing_pool(lab: ServiceLab) -> None:
    lab.topo.add_client_ips(["192.0.2.100"])
    with Servers() as outside:
        outside.add(lab.topo.client, "outside", 4, socket.SOCK_STREAM, 9000)
        client = lab.ns("client")
        assert lab.connect(client, "192.0.2.100", 9000)[1] == BACKENDS["client"][0]
        pool = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "pods"},
                "spec": {"cidr": "10.0.0.0/16", "natOutgoing": True}}
        lab.change(pool)
        try:
            assert lab.connect(client, "192.0.2.100", 9000)[1] == "192.168.200.1"
            # Inside the pools: no SNAT.
            assert lab.connect(client, BACKENDS["b2"][0], 8080)[1] == BACKENDS["client"][0]
        finally:
            lab.change({**pool, "spec": {"cidr": "10.0.0.0/16", "natOutgoing": False}})


# -- the agent end to end: `vppagent run` with `dataplane: {type: iptables}`, pods through CNI ------

def test_agent_with_cni_pods_policy_and_restart() -> None:
    """The daemon drives this dataplane; a restart keeps traffic flowing and rewrites nothing it need not."""
    from linux_harness import Node

    def wait(cond: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.1)

    def policy(*allowed: str) -> list[dict]:
        return [{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                 "metadata": {"name": "web", "namespace": "shop"},
                 "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                          "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": a}}} for a in allowed]}]}}]

    def forward_counters() -> list[tuple[int, int]]:
        text = run("ip", "netns", "exec", node.netns, "iptables-nft-save", "-c", "-t", "filter")
        return parse_counters(text)[("filter", "cali-FORWARD")]

    from vppagent.dataplane.iptables.readback import parse_counters

    with Node(dataplane="iptables") as node:
        web = node.add_pod("shop", "web", labels={"app": "web"})
        cli = node.add_pod("shop", "cli", labels={"app": "cli"})
        other = node.add_pod("shop", "other", labels={"app": "other"})
        node.write_manifest("policy", policy("cli"))
        wait(lambda: not node.reachable(other, web, 8080, timeout=0.3))
        assert node.reachable(cli, web, 8080)
        assert node.status()["dataplane_type"] == "iptables"
        with Servers() as servers:
            servers.add(web.netns, "web", 4, socket.SOCK_STREAM, 9000)
            with in_netns(cli.netns):
                conn = socket.create_connection((web.ip, 9000), timeout=2)
            with conn:
                assert conn.recv(100).startswith(b"web ")
                before = forward_counters()
                node.stop_agent()
                assert node.reachable(cli, web, 8080)             # programmed state stays without the agent
                node.write_manifest("policy", policy("cli", "other"))   # changed while down
                node.start_agent()
                wait(lambda: node.reachable(other, web, 8080, timeout=0.3))
                conn.send(b"x")                                   # the old connection survived it all
                assert conn.recv(100) == b"web\n"
                after = forward_counters()
        assert len(after) == len(before) and all(a >= b for (a, _), (b, _) in zip(after, before)), (before, after)
