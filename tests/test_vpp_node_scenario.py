"""One VPP node end to end (issue 4 §7), as a node runs it.

The node is the testbed's (``vppagent.testbed.Node``): a node netns whose
uplink veth leads to a client netns.  On it run two processes from one
config file, exactly as on a real node:

- ``vppagent vpp run``: renders startup.conf from ``startup-conf/`` (4k
  pages, ``poll-sleep-usec``, the cnat stanza), hands the uplink to VPP as
  an af_packet interface in VPP's own netns, gives Linux a veth host
  interface carrying the uplink's identity, and supervises VPP
  (``restartPolicy: on-failure``);
- ``vppagent run`` with ``dataplane: {type: vpp, podInterface: af_packet}``,
  serving CNI on its gRPC socket.

Pods are created by ``vppagent-cni`` invoked as a runtime does (CNI_*
environment, config on stdin).  Then, with real TCP:

1. pods get addresses and reach each other; a NetworkPolicy written to the
   manifests dir is enforced (allowed flow passes, denied flows, including
   one from outside the node, are blocked);
2. a Service with two backends: the ClusterIP from a pod spreads over both;
   NodePorts from the client netns through the af_packet uplink reach them
   (externalTrafficPolicy Cluster and Local), a NodePort without endpoints
   is refused;
3. VPP is SIGKILLed; the manager restarts it, the agent's readiness goes
   false then true, it reprograms VPP, pod-to-pod and service traffic is
   back;
4. the agent is SIGKILLed and restarted while a pod-to-pod and a
   through-a-Service TCP connection are open: both keep working
   throughout, and the restarted agent adopts everything (same VPP
   objects, same indexes, no write);
5. CNI DEL removes a pod's interfaces (VPP and Linux); a second DEL is fine.

The steps share one node (module fixture) and run in file order; each also
runs alone (``-k test_3``): it creates the pods, policy and Services it
needs when no earlier step has.  Everything (agent, manager, VPP, netns,
veths, temp dirs) is removed at the end, also after a failure
(``VPPAGENT_SCENARIO_LOGS=<dir>`` keeps the agent's, the manager's and VPP's
logs; ``VPPAGENT_SCENARIO_LOG_LEVEL=debug`` makes the agent verbose).

The unit tests at the end pin, against the fake VPP, the fixes this
scenario needed; they run everywhere.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from vpp_env import REQUIRES_VPP, RUN, VPP_BIN, VPP_PLUGIN_PATH, fake_vpp, poll
from vppagent.testbed import Node, Pod, api
from vppagent.testbed.netns import call_in
from vppagent.testbed.traffic import exchange
from vppagent.vpp.connection import VppConnection
from vppagent.vpp_node.process import remove_stale_files

CLUSTER_IP = "10.96.0.10"
NODE_PORT, LOCAL_NODE_PORT, EMPTY_NODE_PORT = 30080, 30081, 30082
BUFFERS = 16384


def needs_vpp(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The scenario's marks (``vpp``; skipped without $VPP_BIN or root), per test: the unit
    tests at the end of this file run everywhere."""
    for mark in reversed(REQUIRES_VPP):
        fn = mark(fn)
    return fn


# ---------------------------------------------------------------- the node

class VppNode:
    """A testbed node whose dataplane is VPP under ``vppagent vpp run``."""

    def __init__(self) -> None:
        self.node: Node | None = None
        self.manager: subprocess.Popen[bytes] | None = None
        self.tmp = Path(tempfile.mkdtemp(prefix=f"vpn{RUN}-", dir="/tmp"))   # short: socket paths
        self.run_dir = self.tmp / "run"
        self.vpp_netns = f"vpn{RUN}-vpp"
        self.manager_log = self.tmp / "manager.log"
        self.manager_started = 0.0
        self.written: set[str] = set()              # manifests the steps wrote
        self.deleted: set[str] = set()              # pods a step deleted on purpose
        try:
            self.node = Node("vpp", start=False, log_level=os.environ.get("VPPAGENT_SCENARIO_LOG_LEVEL", "info"))
            uplink = f"{self.node.token}n"                   # the node's veth towards the client
            vpp = {"binary": VPP_BIN, "runtimeDir": str(self.run_dir), "heapSize": "256M", "buffers": BUFFERS,
                   "pageSize": "4k", "pollSleepUsec": 100, "netns": self.vpp_netns,
                   "uplink": {"interface": uplink, "driver": "af_packet"}, "hostInterface": {"kind": "veth"},
                   "supervise": {"restartPolicy": "on-failure", "restartDelay": 0.2, "maxRestarts": 3,
                                 "readyTimeout": 30, "stopTimeout": 10}}
            if VPP_PLUGIN_PATH:
                vpp["pluginPath"] = VPP_PLUGIN_PATH
            self.node.extra_config.update({
                "vpp": vpp,
                "dataplane": {"socket": str(self.run_dir / "api.sock"), "podInterface": "af_packet",
                              "vppNetns": self.vpp_netns, "uplinkInterface": f"host-{uplink}",
                              "stateDir": str(self.tmp / "vpp-state"), "refreshInterval": None,
                              "bufferAdmission": {"buffers": BUFFERS}},
            })
            self.node.config_path.write_text(yaml.safe_dump(self.node.agent_config()))
            self.start_manager()
            self.wait_manager_ready()
            self.node.start_agent()
        except BaseException:
            self.close()
            raise

    # -- manager -------------------------------------------------------------------------

    @property
    def status_file(self) -> Path:
        return self.run_dir / "manager-status.json"

    def start_manager(self) -> None:
        assert self.node is not None
        self.manager_started = time.time()
        argv = [sys.executable, "-m", "vppagent", "vpp", "run", "--config", str(self.node.config_path)]

        def spawn() -> subprocess.Popen[bytes]:
            # Forked from a thread inside the node netns, not through ``ip netns exec``: that
            # gives the child a mount namespace of its own, and the netns VPP gets (``ip netns
            # add`` by the manager) would be mounted where nobody else sees it.
            with open(self.manager_log, "ab") as out:
                return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                        cwd=str(Path(__file__).resolve().parent.parent))
        self.manager = call_in(self.node.netns, spawn)

    def manager_status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def wait_manager_ready(self, restarts: int = 0, timeout: float = 40.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            assert self.manager is not None
            if self.manager.poll() is not None:
                raise AssertionError(f"vppagent vpp run exited with {self.manager.returncode}\n{self.diag()}")
            s = self.manager_status()
            fresh = s.get("time", 0) >= self.manager_started
            return s if fresh and s.get("state") == "ready" and s.get("restarts", 0) >= restarts else None
        try:
            return poll(ready, timeout, "VPP to be up under vppagent vpp run", interval=0.05)
        except TimeoutError:
            raise AssertionError(f"VPP not ready\n{self.diag()}") from None

    def diag(self) -> str:
        parts = [f"manager status: {self.manager_status()}"]
        for path in (self.manager_log, self.run_dir / "vpp.log", self.run_dir / "vpp.out"):
            with contextlib.suppress(OSError):
                parts.append(f"--- {path}\n{path.read_text(errors='replace')[-4000:]}")
        if self.node is not None:
            parts.append(f"--- agent log\n{self.node.agent_log()[-4000:]}")
        return "\n".join(parts)

    # -- state ---------------------------------------------------------------------------

    def readiness(self) -> bool:
        """The agent's HTTP ``/readiness`` (inside the node netns)."""
        assert self.node is not None
        port = self.node.health_port

        def get() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readiness", timeout=2) as r:
                    return r.status == 200
            except (urllib.error.URLError, OSError):
                return False
        return call_in(self.node.netns, get)

    def vpp(self) -> VppConnection:
        conn = VppConnection(str(self.run_dir / "api.sock"), client_name=f"scenario-{RUN}")
        conn.connect()
        return conn

    # -- cleanup -------------------------------------------------------------------------

    def _vpp_pids(self) -> list[int]:
        """VPP processes started with a config under our run dir (whoever started them)."""
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                with contextlib.suppress(OSError):
                    argv = (d / "cmdline").read_bytes().split(b"\0")
                    if argv and Path(argv[0].decode(errors="replace")).name == "vpp" and \
                            any(str(self.run_dir).encode() in a for a in argv):
                        out.append(int(d.name))
        return out

    def close(self) -> None:
        """Agent, manager (which stops VPP and restores the uplink), VPP, netns, files."""
        node, self.node = self.node, None
        with contextlib.suppress(Exception):
            if node is not None:
                node.kill_agent()
        keep = os.environ.get("VPPAGENT_SCENARIO_LOGS")         # a directory: keep the logs there
        if keep:
            with contextlib.suppress(OSError):
                os.makedirs(keep, exist_ok=True)
                for path in (self.manager_log, self.run_dir / "vpp.log", *([node.log] if node else [])):
                    if path.exists():
                        shutil.copy(path, os.path.join(keep, path.name))
        try:
            if self.manager is not None and self.manager.poll() is None:
                self.manager.send_signal(signal.SIGTERM)           # VPP stopped, uplink given back
                try:
                    self.manager.wait(30)
                except subprocess.TimeoutExpired:
                    self.manager.kill()
                    self.manager.wait(10)
        finally:
            for pid in self._vpp_pids():                           # a VPP the manager left behind
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if node is not None:
                node.close()
            subprocess.run(["ip", "netns", "del", self.vpp_netns], capture_output=True)
            with contextlib.suppress(Exception):
                from vppagent.vpp_node.config import _default_prefix
                remove_stale_files(_default_prefix(str(self.run_dir)))
            shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def vnode() -> Iterator[VppNode]:
    n = VppNode()
    try:
        yield n
    finally:
        n.close()


# ---------------------------------------------------------------- helpers

PODS = (("cli", "cli"), ("db", "db"), ("web-0", "web"), ("web-1", "web"))


def db_policy() -> dict[str, Any]:
    """shop/db accepts TCP 5432 from app=cli pods only."""
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "cli"}}}],
                                  "ports": [{"port": 5432, "protocol": "TCP"}]}]}}


def service(name: str, cluster_ip: str, node_port: int, backends: list[Pod], node_name: str,
            local: bool = False) -> list[dict[str, Any]]:
    """A NodePort Service (http 80 -> 8080, echo 90 -> 9090) and its EndpointSlice."""
    ports = [("http", 80, 8080, node_port), ("echo", 90, 9090, node_port + 100)]
    spec: dict[str, Any] = {"type": "NodePort", "clusterIP": cluster_ip, "selector": {"app": name},
                            "ports": [{"name": n, "port": p, "targetPort": t, "protocol": "TCP", "nodePort": np}
                                      for n, p, t, np in ports]}
    if local:
        spec["externalTrafficPolicy"] = "Local"
    return [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"}, "spec": spec},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": f"{name}-1", "namespace": "shop",
                          "labels": {"kubernetes.io/service-name": name}},
             "addressType": "IPv4", "ports": [{"name": n, "port": t, "protocol": "TCP"} for n, _, t, _ in ports],
             "endpoints": [{"addresses": [b.ip], "nodeName": node_name, "conditions": {"ready": True},
                            "targetRef": {"kind": "Pod", "namespace": b.namespace, "name": b.name}}
                           for b in backends]}]


def pods(vnode: VppNode) -> dict[str, Pod]:
    """The scenario's pods by name, created through CNI ADD the first time (so that each step
    also runs alone, ``-k test_3``)."""
    node = vnode.node
    assert node is not None
    for name, app in PODS:
        if f"shop/{name}" not in node.pods and not vnode.deleted & {name}:
            ports = [("http", 8080, "TCP")] if app == "web" else []
            node.add_pod("shop", name, labels={"app": app}, ports=ports)
    return {p.name: p for p in node.pods.values()}


def policy(vnode: VppNode) -> None:
    """The db policy, written to the manifests dir once, applied by the dataplane."""
    assert vnode.node is not None
    pods(vnode)                                      # the namespace exists with its pods
    if "policy" not in vnode.written:
        vnode.node.write_manifest("policy-db", [db_policy()])
        vnode.written.add("policy")
    vnode.node.wait_synced({"policies": 1})


def services(vnode: VppNode) -> None:
    """web (Cluster), web-local (Local) and empty (no endpoints), and the backends' servers:
    8080 answers "<pod> <client address>", 9090 echoes and keeps connections."""
    node = vnode.node
    assert node is not None
    p = pods(vnode)
    if "services" not in vnode.written:
        web = [p["web-0"], p["web-1"]]
        node.write_manifest("svc", service("web", CLUSTER_IP, NODE_PORT, web, node.name)
                            + service("web-local", "10.96.0.11", LOCAL_NODE_PORT, web, node.name, local=True)
                            + service("empty", "10.96.0.12", EMPTY_NODE_PORT, [], node.name))
        for backend in web:
            node.listen(backend, 8080, label=backend.name)
            node.listen(backend, 9090, echo=True)
        vnode.written.add("services")
    node.wait_synced({"services": 3})


def answers(vnode: VppNode, src: Any, dst: str, port: int, n: int, timeout: float = 1.0) -> list[tuple[str, str]]:
    """(backend label, client address it saw) of ``n`` fresh TCP connections; failures fail."""
    assert vnode.node is not None
    out = []
    for _ in range(n):
        o = vnode.node.send(src, dst, port, timeout=timeout)
        assert o.ok, f"{src} -> {dst}:{port}: {o.error}"
        out.append((o.label, o.peer))
    return out


def vpp_objects(vnode: VppNode) -> dict[str, Any]:
    """What VPP holds, with the indexes a re-creation would change."""
    conn = vnode.vpp()
    try:
        return {
            "interfaces": sorted((int(d.sw_if_index), str(d.interface_name), str(d.tag), int(d.flags))
                                 for d in conn.dump("sw_interface_dump", sw_if_index=0xFFFFFFFF)),
            "tables": sorted((int(d.table.table_id), bool(d.table.is_ip6), str(d.table.name))
                             for d in conn.dump("ip_table_dump")),
            "translations": sorted((int(d.translation.id), str(d.translation.vip.addr),
                                    int(d.translation.vip.port), int(d.translation.ip_proto))
                                   for d in conn.dump("cnat_translation_dump")),
            "acls": sorted((int(d.acl_index), str(d.tag)) for d in conn.dump("acl_dump", acl_index=0xFFFFFFFF)),
        }
    finally:
        conn.disconnect()


def writes(vnode: VppNode) -> dict[str, Any]:
    """The VPP writes the running agent's reconcilers made since it started."""
    assert vnode.node is not None
    return dict(api.actual(vnode.node.socket).get("writes", {}))


# ---------------------------------------------------------------- steps

@needs_vpp
def test_1_cni_pods_reach_each_other_and_policy_is_enforced(vnode: VppNode) -> None:
    node = vnode.node
    assert node is not None
    t0 = time.monotonic()
    p = pods(vnode)
    added = time.monotonic() - t0
    cli, db, web0, web1 = (p[name] for name, _ in PODS)
    addresses = [x.ip for x in (cli, db, web0, web1)]
    assert len(set(addresses)) == 4 and all(a.startswith("10.65.") for a in addresses), addresses
    assert all(x.result["interfaces"][0]["name"].startswith("cali") for x in (cli, db, web0, web1))
    node.wait_synced({"workload_endpoints": 4})
    # VPP runs the project's own startup.conf: what `vppagent vpp render-config` shows for this config
    shown = subprocess.run([sys.executable, "-m", "vppagent", "vpp", "render-config", "--config",
                            str(node.config_path)], capture_output=True, text=True, check=True).stdout
    running = (vnode.run_dir / "startup.conf").read_text()
    assert shown.startswith(running) and "poll-sleep-usec 100" in running and "cnat {" in running, running
    assert node.reachable(cli, db, 5432) and node.reachable(db, cli, 7000), vnode.diag()
    assert node.reachable(web0, web1, 8080) and node.reachable(web1, db, 5433)
    assert node.reachable("client", web0, 8080), "no route from outside the node to a pod"

    policy(vnode)
    with node.listen(db, 5432), node.listen(db, 5433):
        assert node.send(cli, db, 5432).ok, vnode.diag()             # allowed: app=cli, port 5432
        for src, port in ((web0, 5432), (cli, 5433), ("client", 5432)):
            got = node.send(src, db, port, timeout=0.5)
            assert not got.ok and got.error == "timeout", (src, port, got)
    assert node.reachable(web0, cli, 7000)                            # others are not affected
    print(f"\n[vpp node] 4 CNI ADDs in {added:.2f}s")


@needs_vpp
def test_2_service_spreads_over_backends_and_node_ports_answer(vnode: VppNode) -> None:
    node = vnode.node
    assert node is not None
    services(vnode)
    p = pods(vnode)
    cli, web0 = p["cli"], p["web-0"]

    seen = answers(vnode, cli, CLUSTER_IP, 80, 24)
    assert {b for b, _ in seen} == {"web-0", "web-1"}, seen               # both backends
    assert {c for _, c in seen} == {cli.ip}                               # a pod client keeps its address
    seen = answers(vnode, "client", node.node_ip, NODE_PORT, 24)
    assert {b for b, _ in seen} == {"web-0", "web-1"}, seen
    # externalTrafficPolicy Cluster, local backends: kube-proxy masquerades; with the cnat
    # feature on the uplink (npol needs it to see external traffic) VPP 26.10 ignores a path's
    # source rewrite and keeps the client's address (dataplane/vpp/services.py, a known gap).
    # Replies still come back through this node, which is what the masquerade is for.
    assert {c for _, c in seen} == {node.client_ip}, seen
    local = answers(vnode, "client", node.node_ip, LOCAL_NODE_PORT, 16)
    assert {b for b, _ in local} == {"web-0", "web-1"} and {c for _, c in local} == {node.client_ip}, local
    refused = node.send("client", node.node_ip, EMPTY_NODE_PORT, timeout=2)
    assert not refused.ok and refused.error == "refused" and refused.elapsed < 1, refused
    # hairpin: a backend reaching its own Service lands on itself now and then: source-NATed
    # (Linux would drop a packet from its own address), while the other backend sees web-0
    seen = answers(vnode, web0, CLUSTER_IP, 80, 16)
    assert set(seen) == {("web-0", node.node_ip), ("web-1", web0.ip)}, seen


@needs_vpp
def test_3_vpp_crash_is_survived(vnode: VppNode) -> None:
    node = vnode.node
    assert node is not None
    policy(vnode)
    services(vnode)
    p = pods(vnode)
    cli, db, web0 = p["cli"], p["db"], p["web-0"]
    restarts = int(api.actual(node.socket)["vpp_restarts"])
    before = vnode.manager_status()
    t0 = time.monotonic()
    os.kill(before["vppPid"], signal.SIGKILL)
    poll(lambda: not vnode.readiness(), 10, "the agent to notice VPP is gone (readiness false)")
    noticed = time.monotonic() - t0
    after = vnode.wait_manager_ready(restarts=before.get("restarts", 0) + 1)
    assert after["vppPid"] != before["vppPid"]
    poll(vnode.readiness, 30, "the agent to reprogram the new VPP (readiness true)")
    ready = time.monotonic() - t0
    assert api.actual(node.socket)["vpp_restarts"] == restarts + 1
    with node.listen(db, 5432):
        poll(lambda: node.send(cli, db, 5432, timeout=0.5).ok, 10, "pod-to-pod traffic to resume")
        resumed = time.monotonic() - t0
        assert not node.send(web0, db, 5432, timeout=0.5).ok        # the policy is back too
    seen = answers(vnode, cli, CLUSTER_IP, 80, 16)
    assert {b for b, _ in seen} == {"web-0", "web-1"} and {c for _, c in seen} == {cli.ip}, seen
    assert {b for b, _ in answers(vnode, "client", node.node_ip, NODE_PORT, 16)} == {"web-0", "web-1"}
    print(f"\n[vpp node] VPP SIGKILL: agent not ready after {noticed:.2f}s, ready again after {ready:.2f}s, "
          f"pod-to-pod traffic after {resumed:.2f}s")


@needs_vpp
def test_4_agent_crash_keeps_established_flows_and_is_adopted(vnode: VppNode) -> None:
    node = vnode.node
    assert node is not None
    policy(vnode)
    services(vnode)
    p = pods(vnode)
    cli, db = p["cli"], p["db"]
    server = node.listen(db, 5432, echo=True)
    direct = node.connect(cli, db, 5432)                       # pod to pod, through the policy
    via_service = node.connect(cli, CLUSTER_IP, 90)             # through the Service (echo port)
    assert exchange(direct, b"direct\n") and exchange(via_service, b"service\n")
    before = vpp_objects(vnode)

    node.kill_agent()                                           # SIGKILL: no goodbye
    failures: list[str] = []
    stop = threading.Event()

    def keep_talking() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            for name, conn in (("direct", direct), ("service", via_service)):
                if not exchange(conn, f"{name} {n}\n".encode()):
                    failures.append(f"{name} exchange {n}")
            stop.wait(0.05)                                    # pacing, not waiting for a condition
    talker = threading.Thread(target=keep_talking, daemon=True)
    talker.start()
    try:
        assert answers(vnode, cli, CLUSTER_IP, 80, 4)           # new flows too, with no agent
        t0 = time.monotonic()
        node.start_agent()                                      # returns once ready (gRPC health)
        took = time.monotonic() - t0
        poll(vnode.readiness, 10, "HTTP readiness")
    finally:
        stop.set()
        talker.join(5)
    assert failures == [], failures
    assert exchange(direct, b"after\n") and exchange(via_service, b"after\n")
    done = writes(vnode)
    assert done.get("total") == 0, done                          # adopted, nothing rewritten
    assert vpp_objects(vnode) == before                         # same objects, same indexes
    server.close()
    with node.listen(db, 5432):
        assert not node.send(p["web-0"], db, 5432, timeout=0.5).ok   # the policy is still enforced
        assert node.send(cli, db, 5432).ok
    print(f"\n[vpp node] agent SIGKILL: restarted and ready in {took:.2f}s, 0 writes, flows kept")


@needs_vpp
def test_5_cni_del_removes_the_pod_and_twice_is_fine(vnode: VppNode) -> None:
    node = vnode.node
    assert node is not None
    p = pods(vnode)
    web1 = p["web-1"]
    host = web1.host_interface
    tag = f"vppagent:pod:{host}"

    def in_vpp() -> list[str]:
        return [name for _, name, t, _ in vpp_objects(vnode)["interfaces"] if t == tag or host in name]

    def in_linux() -> bool:
        out = subprocess.run(["ip", "-n", vnode.vpp_netns, "-o", "link", "show", host], capture_output=True,
                             text=True)
        return out.returncode == 0 and host in out.stdout

    assert in_vpp() and in_linux()
    netns, container = web1.netns_path, web1.container_id
    call = node.delete_pod(web1)
    vnode.deleted.add("web-1")
    assert call.ok, call.output
    assert in_vpp() == [] and not in_linux()
    poll(lambda: "shop/web-1" not in node.endpoints(), 10, "the endpoint to go")
    again = node.cni("DEL", container_id=container, netns=netns, namespace="shop", pod="web-1")
    assert again.ok, again.output
    assert node.reachable(p["cli"], p["web-0"], 8081)                # the others are unaffected


# ---------------------------------------------------------------- what the scenario needed, unit-tested
# Against the fake VPP (no VPP needed): each check pins one fix the node scenario depends on.

from vppagent.dataplane.base import WorkloadWiring  # noqa: E402
from vppagent.dataplane.vpp import VppConfig, VppDataplane  # noqa: E402
from vppagent.dataplane.vpp.cnat_snat import TABLE_INCLUDE_V4, TABLE_POD  # noqa: E402
from vppagent.manifests.loader import load_objects  # noqa: E402
from vppagent.model.errors import ValidationError  # noqa: E402
from vppagent.model.resources import IPPool  # noqa: E402
from vppagent.model.updates import InSync, IPPoolUpdate, ServiceUpdate  # noqa: E402
from vppagent.reconciler import Backoff  # noqa: E402
from vppagent.vpp.fake import FakeVpp  # noqa: E402
from vppagent.vpp_node.config import HostFacts  # noqa: E402
from vppagent.vpp_node.conf_syntax import check_startup_conf  # noqa: E402
from vppagent.vpp_node.startup import render_startup_conf  # noqa: E402

HOST = HostFacts(cpu_count=4, mem_available=16 << 30)


class PodLinuxStub:
    """``PodLinux`` without namespaces: the veths that would exist."""

    def __init__(self) -> None:
        self.veths: dict[str, tuple[str, str, tuple[str, ...], int, str]] = {}

    def create_veth(self, host: str, netns: str, pod_ifname: str, ips: tuple[str, ...], mtu: int,
                    pod_mac: str) -> None:
        self.veths[host] = (netns, pod_ifname, ips, mtu, pod_mac)

    def delete_veth(self, host: str) -> None:
        self.veths.pop(host, None)

    def host_end_exists(self, host: str) -> bool:
        return host in self.veths

    def configure_l3(self, *args: Any) -> None:
        pass

    def delete_pod_link(self, *args: Any) -> None:
        pass

    def check(self, *args: Any) -> list[str]:
        return []


@pytest.fixture
def fake() -> Iterator[FakeVpp]:
    with fake_vpp() as f:
        yield f


def uplink(fake: FakeVpp, prefix: str | None = "192.0.2.1/24") -> int:
    """What ``vppagent vpp run`` leaves in VPP: an uplink (here ``loop0``) with the node address."""
    conn = VppConnection(client_factory=fake.client_factory, client_name="vpp-manager")
    conn.connect()
    try:
        idx = int(conn.call("create_loopback_instance", is_specified=False).sw_if_index)
        if prefix:
            conn.call("sw_interface_add_del_address", sw_if_index=idx, is_add=True, prefix=prefix)
        return idx
    finally:
        conn.disconnect()


def dataplane(fake: FakeVpp, tmp: Path, linux: PodLinuxStub, **options: Any) -> VppDataplane:
    cfg = VppConfig(**{"state_dir": str(tmp / "state"), "pod_interface": "af_packet", "refresh_interval": None,
                       "uplink_interface": "loop0", "node_name": "n1", **options})
    dp = VppDataplane(cfg, client_factory=fake.client_factory, linux=linux, backoff=Backoff(base=0.0, max=0.0))
    dp.start()
    return dp


def pod(name: str, ip: str) -> WorkloadWiring:
    return WorkloadWiring(f"c-{name}", f"ns-{name}", "eth0", name, (ipaddress.ip_interface(ip),))


def pod_index(fake: FakeVpp, name: str) -> int:
    return next(i.sw_if_index for i in fake.state.interfaces.values() if i.tag == f"vppagent:pod:{name}")


def node_port_service(backends: list[str]) -> list[Any]:
    """A NodePort Service (30080) and its update, as the calc graph sends it."""
    objs = load_objects([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
         "spec": {"type": "NodePort", "clusterIP": "10.96.0.10",
                  "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30080}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
         "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
         "endpoints": [{"addresses": [b], "nodeName": "n1", "conditions": {"ready": True}} for b in backends]},
    ], "svc")
    svc, eps = objs
    return [ServiceUpdate(svc.key, svc, (eps,))]


def translations_on(fake: FakeVpp, vip: str) -> dict[int, list[str]]:
    return {t["vip"]["port"]: [str(p["dst_ep"]["addr"]) for p in t["paths"]]
            for t in fake.state.translations.values() if str(t["vip"]["addr"]) == vip}


def test_startup_conf_sizes_cnat_for_a_node() -> None:
    base = {"pageSize": "4k", "heapSize": "512M", "binary": "/usr/bin/vpp"}
    text = render_startup_conf(base, host=HOST, exec_script=False)
    assert "cnat {\n  session-max 262144\n  session-cleanup-timeout 0.1\n}\n" in text
    check_startup_conf(text)
    tuned = render_startup_conf({**base, "cnat": {"sessionMax": 65536, "sessionCleanupTimeout": 0.5}}, host=HOST,
                                exec_script=False)
    assert "session-max 65536" in tuned and "session-cleanup-timeout 0.5" in tuned
    assert "cnat {" not in render_startup_conf({**base, "plugins": ["af_packet"]}, host=HOST, exec_script=False)
    with pytest.raises(ValidationError, match=r"vpp.cnat.sessionMax.*of main heap"):
        render_startup_conf({**base, "heapSize": "256M", "cnat": {"sessionMax": 1 << 21}}, host=HOST)
    with pytest.raises(ValidationError, match="vpp.cnat.sessionsMax"):
        render_startup_conf({**base, "cnat": {"sessionsMax": 1}}, host=HOST)


def test_pods_are_cnat_pods_and_nat_outgoing_pools_are_included(fake: FakeVpp, tmp_path: Path) -> None:
    uplink(fake)
    linux = PodLinuxStub()
    dp = dataplane(fake, tmp_path, linux)
    dp.apply([IPPoolUpdate("nat", IPPool("nat", ipaddress.ip_network("10.2.0.0/16"), 26, nat_outgoing=True)),
              InSync()])
    dp.wire_workload(pod("cali1", "10.1.0.1/32"))
    dp.wire_workload(pod("cali2", "10.2.0.1/32"))
    one, two = pod_index(fake, "cali1"), pod_index(fake, "cali2")
    assert fake.state.snat_interfaces == {(one, TABLE_POD), (two, TABLE_POD), (two, TABLE_INCLUDE_V4)}
    assert ipaddress.ip_network("10.2.0.0/16") in fake.state.snat_exclude        # pod to pod: never NATed
    dp.unwire_workload(pod("cali2", "10.2.0.1/32"))
    # the role goes before the interface: VPP keeps roles by index and a new pod may reuse it
    assert fake.state.snat_interfaces == {(one, TABLE_POD)}
    assert dp.status().ready


def test_a_pod_deleted_before_the_restarted_agent_is_in_sync(fake: FakeVpp, tmp_path: Path) -> None:
    """CNI DEL does not wait for the datastore, policy and cnat roles do: once in sync, the
    gone interface's leftovers must not fail the dataplane (not ready = no CNI ADD)."""
    uplink(fake)
    linux = PodLinuxStub()
    dp = dataplane(fake, tmp_path, linux)
    dp.apply([InSync()])
    dp.wire_workload(pod("cali1", "10.1.0.1/32"))
    dp.wire_workload(pod("cali2", "10.1.0.2/32"))
    dp.stop()
    again = dataplane(fake, tmp_path, linux)
    again.unwire_workload(pod("cali2", "10.1.0.2/32"))            # before InSync
    again.apply([InSync()])
    st = again.status()
    assert st.ready and st.failed == 0, again.dump()
    assert (pod_index(fake, "cali1"), TABLE_POD) in fake.state.snat_interfaces


def test_a_pod_loopback_does_not_own_the_pod_address(fake: FakeVpp, tmp_path: Path) -> None:
    """Hairpin: DNATed to itself, a pod's packet must leave VPP again, so the pod's address
    must not be local in its VRF."""
    dp = dataplane(fake, tmp_path, PodLinuxStub())
    dp.wire_workload(pod("cali1", "10.1.0.1/32"))
    lo = next(i for i in fake.state.interfaces.values() if i.tag == "vppagent:lo:cali1")
    assert [str(a.prefix) for a in fake.state.addresses[lo.sw_if_index]] == ["169.254.1.1/32"]


def test_node_port_rejects_are_left_to_the_node(fake: FakeVpp, tmp_path: Path) -> None:
    """The cnat feature is on the uplink (npol sees external traffic there), where a reject
    sink on a node address cannot work: those ports go to the node's Linux (punt)."""
    uplink(fake)
    dp = dataplane(fake, tmp_path, PodLinuxStub())
    dp.apply([*node_port_service([]), InSync()])
    assert translations_on(fake, "192.0.2.1") == {}
    assert list(translations_on(fake, "10.96.0.10")) == [0]                   # the ClusterIP's anchor only
    dp.apply(node_port_service(["10.1.0.1"]))
    assert translations_on(fake, "192.0.2.1") == {30080: ["10.1.0.1"]}


def test_node_addresses_that_appear_later_are_picked_up(fake: FakeVpp, tmp_path: Path) -> None:
    """The agent may connect before ``vppagent vpp run`` has addressed the uplink."""
    idx = uplink(fake, prefix=None)
    dp = dataplane(fake, tmp_path, PodLinuxStub())
    dp.apply([*node_port_service(["10.1.0.1"]), InSync()])
    assert translations_on(fake, "192.0.2.1") == {} and not fake.state.snat
    conn = VppConnection(client_factory=fake.client_factory, client_name="vpp-manager")
    conn.connect()
    conn.call("sw_interface_add_del_address", sw_if_index=idx, is_add=True, prefix="192.0.2.1/24")
    conn.disconnect()
    dp.run_periodic()
    assert translations_on(fake, "192.0.2.1") == {30080: ["10.1.0.1"]} and fake.state.snat


def test_a_restarted_agent_writes_nothing_and_says_so(fake: FakeVpp, tmp_path: Path) -> None:
    uplink(fake)
    linux = PodLinuxStub()
    dp = dataplane(fake, tmp_path, linux)
    dp.apply([*node_port_service(["10.1.0.1"]), InSync()])
    dp.wire_workload(pod("cali1", "10.1.0.1/32"))
    assert dp.dump()["writes"]["total"] > 0
    dp.stop()
    again = dataplane(fake, tmp_path, linux)
    again.apply([*node_port_service(["10.1.0.1"]), InSync()])
    assert again.status().ready and again.dump()["writes"] == {"total": 0, "last": []}


def test_a_new_vpp_gets_back_pod_veths_that_went_with_its_netns(fake: FakeVpp, tmp_path: Path) -> None:
    linux = PodLinuxStub()
    dp = dataplane(fake, tmp_path, linux)
    dp.apply([InSync()])
    dp.wire_workload(pod("cali1", "10.1.0.1/32"))
    veth = linux.veths["cali1"]
    linux.veths.clear()                        # VPP's netns was deleted with VPP
    fake.restart()
    dp.run_periodic()                          # notices
    dp.run_periodic()                          # reconnects, re-creates the veth, reprograms
    assert linux.veths == {"cali1": veth} and dp.status().ready
    assert dp.status().last_error is None              # "VPP lost" is not reported once it is back
    assert "vppagent:pod:cali1" in {i.tag for i in fake.state.interfaces.values()}


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
def test_vpp_netns_outlives_vpp_while_pod_interfaces_live_there(tmp_path: Path) -> None:
    from vppagent.vpp_node.config import parse_node_config
    from vppagent.vpp_node.manager import Manager, ManagerError, _processes_in
    from vppagent.vpp_node.netns import Netns
    name = f"vpn{RUN}-unit"
    cfg = parse_node_config({"runtimeDir": str(tmp_path), "netns": name, "uplink": {"interface": "eth9"},
                             "hostInterface": {"kind": "veth"}}, host=HOST)
    ns = Netns(name)
    sleeper: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "add", "podx", "type", "veth", "peer", "name", "pody"],
                       check=True)                     # a pod veth's host end (no dummy module here)
        m = Manager(cfg)
        m._delete_netns()
        assert ns.exists(), "VPP's netns was deleted with a pod interface in it"
        assert _processes_in(ns) == []
        sleeper = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "30"])
        poll(lambda: sleeper is not None and sleeper.pid in _processes_in(ns), 5, "the process in the netns")
        with pytest.raises(ManagerError, match="in use by process"):
            m._claim_netns()                  # never two VPPs in one netns
        sleeper.kill()
        sleeper.wait()
        m._claim_netns()                      # kept for the next VPP
        subprocess.run(["ip", "-n", name, "link", "del", "podx"], check=True)
        m._delete_netns()
        assert not ns.exists()
    finally:
        if sleeper is not None and sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
