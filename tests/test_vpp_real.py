"""The VPP dataplane against a real VPP, with real packets.

Run with ``VPP_BIN=/path/to/vpp VPP_PLUGIN_PATH=/path/to/vpp_plugins`` as
root; skipped otherwise.  One VPP per policy engine runs in a namespace of
its own (``vpp_env.Topology``); the dataplane runs in this process with
``podInterface: af_packet`` and wires every pod of a manifest file into a
namespace, a client namespace behind an uplink holds external addresses, and
host endpoints are namespaces behind their own VPP interfaces.  All nodes'
endpoints are local to the one VPP (the evaluator's verdicts do not depend
on which node an endpoint is on).

- every conformance case, with the npol engine (npol for TCP/UDP/SCTP plus
  the ACL plugin for ICMP and other protocols) and with the ACL fallback;
  after each file the dataplane is torn down and a fresh agent must leave no
  object of ours behind, while objects someone else made stay untouched;
- VPP killed and started again: the dataplane notices, reconnects,
  reprograms, traffic and policy are back;
- the agent restarted: it adopts everything without a single write and an
  established TCP connection keeps working throughout.
"""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass
from typing import Any, Iterator

import pytest

from conformance_suite import Case, load_cases
from vpp_env import REQUIRES_VPP, NetnsSockets, Probe, Topology, exchange, poll, run_probes, tcp_pair
from vppagent.calc.graph import CalcGraph
from vppagent.dataplane.base import WorkloadWiring
from vppagent.dataplane.vpp import VppConfig, VppDataplane
from vppagent.dataplane.vpp.config import HostInterface
from vppagent.evaluator import build_evaluator, make_packet
from vppagent.manifests.loader import load_objects
from vppagent.model.resources import HostEndpoint, WorkloadEndpoint
from vppagent.model.updates import InSync
from vppagent.vpp import VppConnection

pytestmark = REQUIRES_VPP

CASES = load_cases()
ENGINES = ("npol", "acl")
# The ACL plugin reads ports for TCP and UDP only (plugins/acl/public_inlines.h
# acl_fill_5tuple_l4_and_pkt_data): an SCTP rule with ports cannot match there.
ACL_LIMITS = {"knp-ports::sctp-port-allowed": "the ACL plugin does not parse SCTP ports"}


def config(topo: Topology, engine: str, hosts: dict[str, str] | None = None) -> VppConfig:
    return VppConfig(socket=topo.vpp.api_socket, pod_interface="af_packet", policy=engine,  # type: ignore[union-attr]
                     vpp_netns=topo.vpp_ns, state_dir=topo.state_dir, uplink_interface=topo.uplink_vpp,
                     host_interfaces={n: HostInterface(i) for n, i in (hosts or {}).items()},
                     refresh_interval=None)


def wiring(w: WorkloadEndpoint, ns: str) -> WorkloadWiring:
    return WorkloadWiring(f"c-{ns}", ns, "eth0", w.interface_name, tuple(ipaddress.ip_interface(n) for n in w.nets),
                          namespace=w.namespace, pod=w.pod)


def ours_in_vpp(topo: Topology) -> list[str]:
    """Everything in VPP that carries our marks (the epoch marker aside)."""
    conn = VppConnection(topo.vpp.api_socket, "vppagent-test-audit")  # type: ignore[union-attr]
    conn.connect()
    try:
        left = [f"interface {d.interface_name} tag {d.tag}" for d in conn.dump("sw_interface_dump", sw_if_index=0xFFFFFFFF)
                if str(d.tag).startswith("vppagent:")]
        left += [f"acl {d.acl_index} {d.tag}" for d in conn.dump("acl_dump", acl_index=0xFFFFFFFF)
                 if str(d.tag).startswith("vppagent:")]
        left += [f"table {d.table.table_id} {d.table.name}" for d in conn.dump("ip_table_dump")
                 if str(d.table.name).startswith("vppagent:") and ":epoch:" not in str(d.table.name)]
        left += [f"memif socket {d.socket_filename}" for d in conn.dump("memif_socket_filename_dump")
                 if "vppagent" in str(d.socket_filename)]
        return left
    finally:
        conn.disconnect()


FOREIGN_CLI = [
    "create loopback interface instance 4242",
    "set interface tag loop4242 someone-else",
    "set acl-plugin acl permit src 10.99.0.0/16 tag someone-else",
    "npol ipset add 10.99.0.0/16",
    "npol rule add deny",
    "ip table add 4242",
]


def foreign_state(topo: Topology) -> dict[str, str]:
    """Objects made by someone else (``FOREIGN_CLI``), as VPP shows them."""
    vpp = topo.vpp
    assert vpp is not None
    return {
        "interface": "loop4242" if "loop4242" in vpp.cli("show interface loop4242") else "",
        "acl": " ".join(line.strip() for line in vpp.cli("show acl-plugin acl").splitlines() if "someone-else" in line),
        "npol ipsets": re.sub(r"\s+", " ", vpp.cli("show npol ipsets")).strip(),
        "npol rules": re.sub(r"\s+", " ", vpp.cli("show npol rules")).strip(),
        "table": "4242" if "4242" in vpp.cli("show ip fib summary") else "",
    }


@dataclass
class Outcome:
    expected: str = ""
    delivered: bool | None = None
    detail: str = ""
    skip: str | None = None
    explain: str = ""


class ConformanceLab:
    """One VPP for one engine; replays a manifest file at a time and cleans up after it."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.topo = Topology(engine[:1])
        self.socks = NetnsSockets()
        self.results: dict[str, dict[str, Outcome]] = {}
        self.timings: dict[str, float] = {}
        self.leftovers: dict[str, list[str]] = {}
        self.errors: dict[str, Exception] = {}
        try:
            for command in FOREIGN_CLI:
                self.topo.vpp.cli(command)  # type: ignore[union-attr]
            self.foreign = foreign_state(self.topo)
            assert all(self.foreign.values()), self.foreign
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.socks.close()
        self.topo.close()

    def outcome(self, case: Case) -> Outcome:
        if case.file not in self.results:
            t0 = time.monotonic()
            try:
                self.results[case.file] = self._replay(case.file)
            except Exception as exc:      # reported once per case, not replayed again
                self.errors[case.file] = exc
                self.results[case.file] = {}
            self.timings[case.file] = time.monotonic() - t0
        if case.file in self.errors:
            raise RuntimeError(f"replaying {case.file} failed: {self.errors[case.file]!r}")
        return self.results[case.file][case.id]

    def _replay(self, file: str) -> dict[str, Outcome]:
        topo = self.topo
        cases = [c for c in CASES if c.file == file]
        resources = load_objects(cases[0].manifests, file)
        ev = build_evaluator(resources)
        outcomes: dict[str, Outcome] = {}
        packets = {}
        for c in cases:
            pkt = make_packet(ev, c.src, c.dst, c.icmp)
            verdict = ev.evaluate(pkt)
            outcomes[c.id] = Outcome(expected=verdict.verdict, explain=verdict.explain())
            packets[c.id] = pkt
        peps = [r for r in resources if isinstance(r, WorkloadEndpoint)]
        heps = [r for r in resources if isinstance(r, HostEndpoint)]
        pod_ns = topo.pod_namespaces([f"p{i}" for i in range(len(peps))]) if peps else []
        where: dict[Any, str] = {}
        dp: VppDataplane | None = None
        try:
            hosts = {}
            for h in heps:
                host = topo.add_host(list(h.expected_ips))
                hosts[h.name] = host.vpp_interface
                for ip in h.expected_ips:
                    where[ip] = host.ns
            owned = {n.network_address for w in peps for n in w.nets} | set(where)
            topo.set_external({ip for p in packets.values() for ip in (p.src, p.dst)} - owned)
            dp = VppDataplane(config(topo, self.engine, hosts))
            dp.start()
            for w, ns in zip(peps, pod_ns):
                dp.wire_workload(wiring(w, ns))
                for n in w.nets:
                    where[n.network_address] = ns
            graph = CalcGraph(None)
            graph.apply_all(resources)
            dp.apply([*graph.flush(), InSync()])
            status = dp.status()
            assert status.ready and status.failed == 0 and status.pending == 0, dp.dump()
            probes = []
            for i, c in enumerate(cases):
                pkt = packets[c.id]
                src, dst = where.get(pkt.src, topo.client), where.get(pkt.dst, topo.client)
                if src == dst:
                    outcomes[c.id].skip = "source and destination share a namespace: no dataplane sees it"
                    continue
                probes.append(Probe(i, src, dst, pkt))
            run_probes(self.socks, probes)
            for p in probes:
                o = outcomes[cases[p.idx].id]
                o.delivered, o.detail = p.delivered, p.detail
        finally:
            self._teardown(file, dp, peps, pod_ns)
        return outcomes

    def _teardown(self, file: str, dp: VppDataplane | None, peps: list[WorkloadEndpoint], pod_ns: list[str]) -> None:
        topo = self.topo
        try:
            if dp is not None:
                for w, ns in zip(peps, pod_ns):
                    dp.unwire_workload(wiring(w, ns))
                dp.stop()
                # A fresh agent with nothing desired removes everything of ours, and only that.
                cleaner = VppDataplane(config(topo, self.engine))
                cleaner.start()
                cleaner.apply([InSync()])
                cleaner.stop()
                self.leftovers[file] = ours_in_vpp(topo)
        finally:
            topo.remove_hosts()
            topo.spaces.remove(pod_ns)


@pytest.fixture(scope="module", params=ENGINES)
def lab(request: pytest.FixtureRequest) -> Iterator[ConformanceLab]:
    lab = ConformanceLab(request.param)
    try:
        yield lab
        assert foreign_state(lab.topo) == lab.foreign, "objects someone else made were touched"
    finally:
        if lab.timings:
            total = sum(lab.timings.values())
            print(f"\n[vpp {lab.engine}] conformance replay {total:.1f}s: "
                  + ", ".join(f"{f} {t:.1f}s" for f, t in lab.timings.items()))
        lab.close()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_conformance_case_with_packets(lab: ConformanceLab, case: Case) -> None:
    o = lab.outcome(case)
    if o.skip:
        pytest.skip(o.skip)
    assert o.expected == case.expect
    delivered = "allow" if o.delivered else "deny"
    if lab.engine == "acl" and case.id in ACL_LIMITS:
        if delivered != o.expected:
            pytest.xfail(ACL_LIMITS[case.id])
    assert delivered == o.expected, f"{case.id} [{lab.engine}]: packets say {delivered} ({o.detail}), evaluator:\n{o.explain}"
    assert lab.leftovers.get(case.file) == [], f"objects left behind after {case.file}: {lab.leftovers.get(case.file)}"


# ---------------------------------------------------------------- restarts

POLICY = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "rs"}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "namespace": "rs", "labels": {"app": "client"}},
     "spec": {"nodeName": "node1", "containers": [{"name": "c"}]}, "status": {"podIPs": [{"ip": "10.7.0.1"}]}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "server", "namespace": "rs", "labels": {"app": "server"}},
     "spec": {"nodeName": "node1", "containers": [{"name": "c"}]}, "status": {"podIPs": [{"ip": "10.7.0.2"}]}},
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "server", "namespace": "rs"},
     "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
              "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                           "ports": [{"port": 8080}, {"port": 8081}]}]}},
]


class RestartLab:
    """Two pods and a policy (8080/8081 allowed, 9090 not) on one VPP."""

    def __init__(self, engine: str = "npol") -> None:
        self.topo = Topology("r")
        self.socks = NetnsSockets()
        self.dp: VppDataplane | None = None
        try:
            self.resources = load_objects(POLICY, "restart")
            self.peps = [r for r in self.resources if isinstance(r, WorkloadEndpoint)]
            self.ns = dict(zip((w.pod for w in self.peps), self.topo.pod_namespaces(["pa", "pb"])))
            self.engine = engine
            self.dp = self.agent()
            for w in self.peps:
                self.dp.wire_workload(wiring(w, self.ns[w.pod]))
            self.dp.apply([*self.snapshot(), InSync()])
            assert self.dp.status().ready, self.dp.dump()
        except BaseException:
            self.close()
            raise

    def agent(self) -> VppDataplane:
        dp = VppDataplane(config(self.topo, self.engine))
        dp.start()
        return dp

    def snapshot(self) -> list[Any]:
        graph = CalcGraph(None)
        graph.apply_all(self.resources)
        return graph.flush()

    def verdicts(self) -> dict[int, bool]:
        from vppagent.evaluator import Packet
        src, dst = ipaddress.ip_address("10.7.0.1"), ipaddress.ip_address("10.7.0.2")
        probes = [Probe(port, self.ns["client"], self.ns["server"], Packet(src, dst, 6, dst_port=port))
                  for port in (8080, 9090)]
        run_probes(self.socks, probes)
        return {p.idx: p.delivered for p in probes}

    def close(self) -> None:
        try:
            if self.dp is not None:
                for w in self.peps:
                    self.dp.unwire_workload(wiring(w, self.ns[w.pod]))
                self.dp.stop()
        finally:
            self.socks.close()
            self.topo.close()


@pytest.fixture()
def restart_lab() -> Iterator[RestartLab]:
    lab = RestartLab()
    try:
        yield lab
    finally:
        lab.close()


def test_vpp_restart_is_detected_and_everything_is_reprogrammed(restart_lab: RestartLab) -> None:
    lab, vpp = restart_lab, restart_lab.topo.vpp
    assert vpp is not None and lab.dp is not None
    assert lab.verdicts() == {8080: True, 9090: False}
    old_pid = lab.dp.conn.vpe_pid
    t0 = time.monotonic()
    vpp.kill()
    vpp.start()
    poll(lambda: (lab.dp.run_periodic(), lab.dp.status().ready)[1], 30, "the dataplane to reprogram VPP")  # type: ignore[union-attr]
    took = time.monotonic() - t0
    assert lab.dp.conn.vpe_pid != old_pid
    assert lab.dp.status().counts["vpp_restarts"] == 1
    assert poll(lambda: lab.verdicts()[8080], 10, "traffic to flow again") is True
    assert lab.verdicts() == {8080: True, 9090: False}
    print(f"\n[vpp restart] kill + start + reprogram: {took:.2f}s")


def test_agent_restart_adopts_without_writes_and_keeps_flows(restart_lab: RestartLab) -> None:
    lab = restart_lab
    assert lab.dp is not None
    client, server = tcp_pair(lab.socks, lab.ns["client"], lab.ns["server"], "10.7.0.2", 8081)
    try:
        assert exchange(client, server, b"before")
        lab.dp.stop()                                    # SIGTERM: the dataplane stays as it is
        assert exchange(client, server, b"while the agent is away")
        t0 = time.monotonic()
        lab.dp = lab.agent()
        lab.dp.apply([*lab.snapshot(), InSync()])
        took = time.monotonic() - t0
        assert lab.dp.status().ready, lab.dp.dump()
        writes = [r.op for r in lab.dp.reconciler.history + lab.dp.pods.reconciler.history
                  if r.op.key.__class__.__name__ != "IfaceRefKey"]
        assert writes == [], f"a restarted agent rewrote {writes}"
        assert exchange(client, server, b"after")
        assert lab.verdicts() == {8080: True, 9090: False}
        print(f"\n[agent restart] start + adopt: {took:.2f}s, 0 writes")
    finally:
        client.close()
        server.close()


# ---------------------------------------------------------------- the agent and its CNI plugin

def test_agent_wires_pods_through_cni_and_enforces_policy() -> None:
    """The whole path: kubelet-style CNI ADD/CHECK/DEL through ``vppagent-cni`` to the agent,
    which runs the VPP dataplane (``podInterface: af_packet``) in-process."""
    from linux_harness import Node

    topo = Topology("g")
    try:
        def factory() -> VppDataplane:
            return VppDataplane(VppConfig(socket=topo.vpp.api_socket, pod_interface="af_packet",  # type: ignore[union-attr]
                                          vpp_netns=topo.vpp_ns, state_dir=str(topo.tmp / "agent-state"),
                                          refresh_interval=None))

        with Node(dataplane=factory) as node:
            web = node.add_pod("shop", "web", labels={"app": "web"})
            db = node.add_pod("shop", "db", labels={"app": "db"})
            other = node.add_pod("shop", "other", labels={"app": "other"})
            assert node.reachable(web, db, 5432) and node.reachable(other, db, 5432)
            node.write_manifest("db-policy", [{
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "db", "namespace": "shop"},
                "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                         "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                      "ports": [{"port": 5432}]}]}}])
            poll(lambda: not node.reachable(other, db, 5432, timeout=0.5), 15, "the policy to apply")
            assert node.reachable(web, db, 5432)
            check = node.cni("CHECK", container_id=db.container_id, netns=db.netns_path, namespace="shop", pod="db",
                             config={"prevResult": db.result})
            assert check.ok, check.output
            assert node.delete_pod(db).ok
            left = [t for t in ours_in_vpp(topo) if db.host_interface in t]
            assert left == [], left
            assert node.reachable(web, other, 80)
    finally:
        topo.close()
