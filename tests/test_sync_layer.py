"""The shared sync layer: one calculation, each node agent gets its share over gRPC.

Sync server and agents run in this process (threads) with the file
datastore and the ``none`` dataplane wrapped in a recorder, so the tests
see exactly which updates reached each node's dataplane.
"""

from __future__ import annotations

import ipaddress
import threading
from pathlib import Path
from typing import Iterator, Sequence

import pytest
import yaml

from vppagent.agent.config import parse_config
from vppagent.agent.daemon import Agent
from vppagent.dataplane.none import NoneDataplane
from vppagent.ipam import FileBlockStore
from vppagent.model.updates import (
    REMOVALS, InSync, PolicyUpdate, RouteUpdate, Update, WorkloadEndpointUpdate,
)
from vppagent.sources.file import FileSource
from vppagent.syncserver.fanout import Fanout
from vppagent.syncserver.server import SyncServer, SyncServerConfig
from vppagent.testbed.wait import wait_for


class RecordingDataplane(NoneDataplane):
    """The none dataplane, remembering every update it was handed."""

    def __init__(self) -> None:
        super().__init__()
        self.applied: list[Update] = []

    def apply(self, updates: Sequence[Update]) -> None:
        self.applied.extend(updates)
        super().apply(updates)


def pod(ns: str, name: str, node: str, ip: str | None = None, **labels: str) -> dict:
    obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
           "spec": {"nodeName": node, "containers": [{"name": "c"}]}, "status": {}}
    if ip:
        obj["status"]["podIPs"] = [{"ip": ip}]
    return obj


BASE = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
    {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "pods"},
     "spec": {"cidr": "10.70.0.0/16", "blockSize": 26}},
    *[{"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"node{i}"},
       "status": {"addresses": [{"type": "InternalIP", "address": f"192.168.50.{i}"}]}} for i in (1, 2, 3)],
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "db", "namespace": "shop"},
     "spec": {"podSelector": {"matchLabels": {"app": "db"}},
              "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
     "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "protocol": "TCP"}], "selector": {"app": "web"}}},
]


class Cluster:
    """A sync server on a file datastore and node agents that follow it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.manifests = tmp / "manifests"
        self.manifests.mkdir()
        self.socket = str(tmp / "sync.sock")
        self.server: SyncServer | None = None
        self._server_thread: threading.Thread | None = None
        self.agents: dict[str, tuple[Agent, threading.Thread, RecordingDataplane]] = {}
        self.write("00-base.yaml", BASE)

    def write(self, name: str, objs: list[dict]) -> None:
        tmp = self.manifests / f".{name}.tmp"
        tmp.write_text(yaml.safe_dump_all(objs))
        tmp.rename(self.manifests / name)

    def start_server(self) -> SyncServer:
        config = SyncServerConfig(socket=self.socket, health_port=0)
        server = SyncServer(config, FileSource(self.manifests, interval=0.02),
                            FileBlockStore(self.tmp / "sync-state"))
        t = threading.Thread(target=server.run, kwargs={"install_signals": False}, daemon=True)
        t.start()
        assert server.running.wait(10)
        wait_for(server.ready, what="sync server ready")
        self.server, self._server_thread = server, t
        return server

    def stop_server(self) -> None:
        assert self.server is not None and self._server_thread is not None
        self.server.stop()
        self._server_thread.join(10)
        assert not self._server_thread.is_alive()
        self.server = None

    def start_agent(self, node: str) -> tuple[Agent, RecordingDataplane]:
        config = parse_config({
            "nodeName": node,
            "datastore": {"type": "sync", "address": f"unix://{self.socket}"},
            "dataplane": {"type": "none"},
            "grpc": {"socket": str(self.tmp / f"{node}.sock")},
            "health": {"port": 0},
            "stateDir": str(self.tmp / f"{node}-state"),
        })
        dp = RecordingDataplane()
        agent = Agent(config, dataplane=dp)
        t = threading.Thread(target=agent.run, kwargs={"install_signals": False}, daemon=True)
        t.start()
        assert agent.running.wait(10)
        wait_for(agent.ready, what=f"agent {node} ready")
        self.agents[node] = (agent, t, dp)
        return agent, dp

    def close(self) -> None:
        for agent, t, _ in self.agents.values():
            agent.stop()
            t.join(10)
        if self.server is not None:
            self.stop_server()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def held(agent: Agent):
    with agent.hub.locked_state() as st:
        return set(st.workload_endpoints), set(st.policies), set(st.ipsets), set(st.routes), set(st.services)


def test_each_node_gets_only_its_share_and_ipam_comes_from_its_own_blocks(cluster: Cluster) -> None:
    cluster.write("10-pods.yaml", [pod("shop", "db", "node1", app="db"), pod("shop", "web", "node2", app="web"),
                                   pod("shop", "other", "node3", app="other")])
    cluster.start_server()
    a1, dp1 = cluster.start_agent("node1")
    a2, dp2 = cluster.start_agent("node2")
    # Kubelet's part: CNI ADD on each node. Addresses come from the sync layer's IPAM.
    ip_db = a1.ipam.assign("cid-db", {"namespace": "shop", "pod": "db", "interface": "eth0"})[0]
    ip_web = a2.ipam.assign("cid-web", {"namespace": "shop", "pod": "web", "interface": "eth0"})[0]
    assert a1.ipam.assign("cid-db", {"namespace": "shop", "pod": "db"}) == [ip_db]     # idempotent
    blocks = {str(b.cidr): b.affinity for b, _ in FileBlockStore(cluster.tmp / "sync-state").list_blocks()}
    block_of = {ip: next(c for c in blocks if ip.ip in ipaddress.ip_network(c)) for ip in (ip_db, ip_web)}
    assert blocks[block_of[ip_db]] == "node1" and blocks[block_of[ip_web]] == "node2"
    assert block_of[ip_db] != block_of[ip_web]

    def node1_sees_web_in_the_policy_set() -> bool:
        with a1.hub.locked_state() as st:
            return any(f"{ip_web.ip}/32" in members for _, members in st.ipsets.values())
    wait_for(node1_sees_web_in_the_policy_set, what="node1's policy IP set holding web's IPAM address")
    weps1, pols1, _, routes1, svcs1 = held(a1)
    weps2, pols2, sets2, routes2, svcs2 = held(a2)
    assert weps1 == {"node1/k8s/shop/db/eth0"} and weps2 == {"node2/k8s/shop/web/eth0"}
    assert [p.name for p in pols1] == ["shop/knp.default.db"] and not pols2 and not sets2
    assert svcs1 == svcs2 == {"shop/web"}
    wait_for(lambda: held(a1)[3] == {block_of[ip_web]} and held(a2)[3] == {block_of[ip_db]},
             what="routes to the other node's block")
    with a1.hub.locked_state() as st:
        route = st.routes[block_of[ip_web]].route
        assert route.node == "node2" and str(route.gateway) == "192.168.50.2"
        assert st.workload_endpoints["node1/k8s/shop/db/eth0"].nets == (ipaddress.ip_network(f"{ip_db.ip}/32"),)
    assert not any(isinstance(u, WorkloadEndpointUpdate) and u.endpoint.node != "node1" for u in dp1.applied)

    # A release takes the address out of everyone's view.
    a2.ipam.release("cid-web")
    wait_for(lambda: not node1_sees_web_in_the_policy_set(), what="web's address gone from node1's IP set")


def test_sync_layer_restart_converges_by_diff_without_flushing(cluster: Cluster) -> None:
    cluster.write("10-pods.yaml", [pod("shop", "db", "node1", "10.70.9.1", app="db"),
                                   pod("shop", "web", "node2", "10.70.9.2", app="web")])
    cluster.start_server()
    a1, dp1 = cluster.start_agent("node1")
    before = held(a1)
    assert before[1], "node1 should hold the db policy"
    cluster.stop_server()
    wait_for(lambda: not a1.ready(), what="agent not ready while the sync layer is down")
    assert held(a1) == before                      # the dataplane is kept as it was
    # While it is down: one change that concerns node1, one that does not.
    cluster.write("10-pods.yaml", [pod("shop", "db", "node1", "10.70.9.1", app="db"),
                                   pod("shop", "web", "node2", "10.70.9.3", app="web"),
                                   pod("shop", "late", "node2", "10.70.9.4", app="other")])
    mark = len(dp1.applied)
    cluster.start_server()
    wait_for(a1.ready, what="agent ready again")

    def resynced() -> bool:
        with a1.hub.locked_state() as st:
            return any("10.70.9.3/32" in m for _, m in st.ipsets.values())
    wait_for(resynced, what="node1 sees web's new address")
    after = dp1.applied[mark:]
    assert not any(isinstance(u, REMOVALS) for u in after), after      # nothing flushed
    assert not any(isinstance(u, (PolicyUpdate, WorkloadEndpointUpdate, InSync)) for u in after), after
    assert len(after) == 1, after                  # exactly the IP set delta
    assert held(a1)[0] == before[0]


def test_a_slow_node_is_snapshotted_again_and_does_not_stall_others() -> None:
    from test_node_view import node_obj  # noqa: F401  (same fixtures as the view's tests)
    from vppagent.calc.graph import CalcGraph
    from vppagent.manifests.loader import load_objects

    fan = Fanout(max_queue=5)
    graph = CalcGraph(None)
    graph.apply_all(load_objects(BASE))
    fan.publish(graph.flush() + [InSync()])
    slow = fan.subscribe("node1", "slow")
    fast = fan.subscribe("node1", "fast")
    other = fan.subscribe("node2", "other")
    for sub in (slow, fast, other):
        while sub.get(0) is not None:
            pass
    for i in range(20):
        graph.update(load_objects([{"apiVersion": "v1", "kind": "Service",
                                    "metadata": {"name": f"s{i}", "namespace": "shop"},
                                    "spec": {"clusterIP": f"10.96.1.{i}", "ports": [{"port": 80}]}}])[0])
        fan.publish(graph.flush())
        assert fast.get(0) is not None and other.get(0) is not None    # readers that keep up
    assert slow.overflows == 1 and fast.overflows == 0 and other.overflows == 0
    first = slow.get(0)
    assert first is not None and first.resync                         # a fresh snapshot
    rest = []
    while (item := slow.get(0)) is not None:
        rest.append(item.update)
    assert sum(isinstance(u, type(first.update)) for u in [first.update, *rest]) >= 1
    assert len([u for u in [first.update, *rest] if type(u).__name__ == "ServiceUpdate"]) == 21


def test_the_sync_layer_rejects_apply_and_nameless_nodes(cluster: Cluster) -> None:
    import grpc

    from vppagent.api import gen_modules

    cluster.start_server()
    g = gen_modules()
    with grpc.insecure_channel(f"unix://{cluster.socket}") as ch:
        stub = g.dataplane_pb2_grpc.DataplaneStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.Apply(g.dataplane_pb2.ApplyRequest(updates=[g.dataplane_pb2.Update(in_sync={})]), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "change the datastore" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            next(iter(stub.Sync(g.dataplane_pb2.SyncRequest(), timeout=5)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "node_name" in err.value.details()
        ipam = g.ipam_pb2_grpc.IpamStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            ipam.Assign(g.ipam_pb2.AssignRequest(node="node1"), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "handle" in err.value.details()


def test_a_malformed_object_is_reported_and_skipped(cluster: Cluster) -> None:
    cluster.write("10-pods.yaml", [pod("shop", "db", "node1", "10.70.9.1", app="db")])
    server = cluster.start_server()
    a1, _ = cluster.start_agent("node1")
    bad = {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": "broken"},
           "spec": {"selector": "app == ", "ingress": [{"action": "Allow"}]}}
    cluster.write("20-bad.yaml", [bad])
    cluster.write("30-more.yaml", [pod("shop", "db2", "node1", "10.70.9.5", app="db")])
    wait_for(lambda: "node1/k8s/shop/db2/eth0" in held(a1)[0], what="the good change still flowing")
    errors = wait_for(lambda: [e for e in server.status()["errors"] if "20-bad.yaml" in e], what="error reported")
    assert "spec.selector" in errors[0]
    assert server.ready() and a1.ready()


def test_the_sync_layer_counts_every_published_batch(cluster: Cluster) -> None:
    server = cluster.start_server()
    registry = server.metrics.registry
    before = registry.get_sample_value("vppagent_sync_latency_seconds_count") or 0
    cluster.write("10-pods.yaml", [pod("shop", "late", "node1", "10.70.9.9", app="db")])
    wait_for(lambda: (registry.get_sample_value("vppagent_sync_latency_seconds_count") or 0) > before,
             what="the change's latency observed")
    assert registry.get_sample_value("vppagent_updates_applied_total",
                                     {"type": "WorkloadEndpointUpdate"}) >= 1
