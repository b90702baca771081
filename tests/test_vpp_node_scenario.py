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

The steps share one node (module fixture) and run in file order; each
asserts only what it set up.  Everything (agent, manager, VPP, netns,
veths, temp dirs) is removed at the end, also after a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from vpp_env import REQUIRES_VPP, RUN, VPP_BIN, VPP_PLUGIN_PATH, poll
from vppagent.testbed import Node, Pod
from vppagent.testbed.netns import call_in
from vppagent.testbed.traffic import exchange
from vppagent.vpp.connection import VppConnection
from vppagent.vpp_node.process import remove_stale_files

pytestmark = REQUIRES_VPP

CLUSTER_IP = "10.96.0.10"
NODE_PORT, LOCAL_NODE_PORT, EMPTY_NODE_PORT = 30080, 30081, 30082
BUFFERS = 16384


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
        try:
            self.node = Node("vpp", start=False, log_level="info")
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

    def cli(self, command: str) -> str:
        vppctl = Path(VPP_BIN).with_name("vppctl")
        return subprocess.run([str(vppctl), "-s", str(self.run_dir / "cli.sock"), *command.split()],
                              capture_output=True, text=True, timeout=10).stdout

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
        if self.manager is not None and self.manager.poll() is None:
            self.manager.send_signal(signal.SIGTERM)
            try:
                self.manager.wait(30)
            except subprocess.TimeoutExpired:
                self.manager.kill()
                self.manager.wait(10)
        for pid in self._vpp_pids():
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

def pods(vnode: VppNode) -> dict[str, Pod]:
    assert vnode.node is not None
    return {p.name: p for p in vnode.node.pods.values()}


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


def writes(vnode: VppNode) -> int:
    """How many VPP writes the running agent's reconcilers made since it started."""
    assert vnode.node is not None
    from vppagent.testbed import api
    return int(api.actual(vnode.node.socket).get("writes", {}).get("total", -1))


# ---------------------------------------------------------------- steps

def test_1_cni_pods_reach_each_other_and_policy_is_enforced(vnode: VppNode) -> None:
    node = vnode.node
    assert node is not None
    t0 = time.monotonic()
    cli = node.add_pod("shop", "cli", labels={"app": "cli"})
    db = node.add_pod("shop", "db", labels={"app": "db"})
    web0 = node.add_pod("shop", "web-0", labels={"app": "web"}, ports=[("http", 8080, "TCP")])
    web1 = node.add_pod("shop", "web-1", labels={"app": "web"}, ports=[("http", 8080, "TCP")])
    added = time.monotonic() - t0
    everyone = [cli, db, web0, web1]
    addresses = [p.ip for p in everyone]
    assert len(set(addresses)) == 4 and all(a.startswith("10.65.") for a in addresses), addresses
    node.wait_synced({"workload_endpoints": 4})
    assert node.reachable(cli, db, 5432) and node.reachable(db, cli, 7000), vnode.diag()
    assert node.reachable(web0, web1, 8080) and node.reachable(web1, db, 5433)
    assert node.reachable("client", web0, 8080), "no route from outside the node to a pod"

    node.write_manifest("policy-db", [db_policy()])
    node.wait_synced({"policies": 1})
    with node.listen(db, 5432), node.listen(db, 5433):
        assert node.send(cli, db, 5432).ok, vnode.diag()             # allowed: app=cli, port 5432
        for src, port in ((web0, 5432), (cli, 5433), ("client", 5432)):
            got = node.send(src, db, port, timeout=0.5)
            assert not got.ok and got.error == "timeout", (src, port, got)
    assert node.reachable(web0, cli, 7000)                            # others are not affected
    print(f"\n[vpp node] 4 CNI ADDs in {added:.2f}s")


def test_2_service_spreads_over_backends_and_node_ports_answer(vnode: VppNode) -> None:
    node = vnode.node
    assert node is not None
    p = pods(vnode)
    cli, web0, web1 = p["cli"], p["web-0"], p["web-1"]
    node.write_manifest("svc", service("web", CLUSTER_IP, NODE_PORT, [web0, web1], node.name)
                        + service("web-local", "10.96.0.11", LOCAL_NODE_PORT, [web0, web1], node.name, local=True)
                        + service("empty", "10.96.0.12", EMPTY_NODE_PORT, [], node.name))
    node.wait_synced({"services": 3})
    for pod in (web0, web1):
        node.listen(pod, 8080, label=pod.name)
        node.listen(pod, 9090, echo=True)

    seen = answers(vnode, cli, CLUSTER_IP, 80, 24)
    assert {b for b, _ in seen} == {"web-0", "web-1"}, seen               # both backends
    assert {c for _, c in seen} == {cli.ip}                               # a pod client keeps its address
    seen = answers(vnode, "client", node.node_ip, NODE_PORT, 24)
    assert {b for b, _ in seen} == {"web-0", "web-1"}, seen
    # externalTrafficPolicy Cluster: with the cnat feature on the uplink (which npol needs to
    # see external traffic) VPP 26.10 SNATs external clients only towards remote backends, so a
    # local backend sees the client (see dataplane/vpp/services.py); both are replies through us.
    assert {c for _, c in seen} <= {node.client_ip, node.node_ip}, seen
    local = answers(vnode, "client", node.node_ip, LOCAL_NODE_PORT, 12)
    assert {b for b, _ in local} == {"web-0", "web-1"} and {c for _, c in local} == {node.client_ip}, local
    refused = node.send("client", node.node_ip, EMPTY_NODE_PORT, timeout=2)
    assert not refused.ok and refused.error == "refused" and refused.elapsed < 1, refused
