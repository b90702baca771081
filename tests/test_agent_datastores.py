"""Agents and the sync layer on a real etcd: in-sync state, IPAM in the datastore,
and an etcd outage (dataplane kept, not ready, difference applied on return)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from vppagent.agent.config import parse_config
from vppagent.agent.daemon import Agent
from vppagent.ipam.etcd_store import EtcdBlockStore
from vppagent.sources.config import DatastoreConfig
from vppagent.sources.etcd import object_key
from vppagent.sources.factory import create_block_store, create_source
from vppagent.syncserver.server import SyncServer, SyncServerConfig
from vppagent.testbed.etcd import EtcdServer, etcd_missing_reason
from vppagent.testbed.wait import wait_for

pytestmark = pytest.mark.skipif(etcd_missing_reason() is not None, reason=etcd_missing_reason() or "")


def pod(name: str, node: str, ip: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop", "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c"}]}, "status": {"podIPs": [{"ip": ip}]}}


OBJECTS = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
    {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "pods"},
     "spec": {"cidr": "10.71.0.0/16"}},
    {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node2"},
     "status": {"addresses": [{"type": "InternalIP", "address": "192.168.60.2"}]}},
    pod("db", "node1", "10.71.0.1", app="db"),
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "db", "namespace": "shop"},
     "spec": {"podSelector": {"matchLabels": {"app": "db"}},
              "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}},
]


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    with EtcdServer() as server:
        for obj in OBJECTS:
            put(server, obj)
        yield server


def put(etcd: EtcdServer, obj: dict) -> None:
    etcd.put_object(object_key(obj), obj)


def run_in_thread(target: Any) -> tuple[Any, threading.Thread]:
    t = threading.Thread(target=target.run, kwargs={"install_signals": False}, daemon=True)
    t.start()
    assert target.running.wait(10)
    return target, t


def members(agent: Agent) -> set[str]:
    with agent.hub.locked_state() as st:
        return {m for _, ms in st.ipsets.values() for m in ms}


def test_agent_on_etcd_keeps_its_dataplane_through_an_outage(etcd: EtcdServer, tmp_path: Path) -> None:
    config = parse_config({
        "nodeName": "node1", "datastore": {"type": "etcd", "endpoints": [etcd.client_url]},
        "dataplane": {"type": "none"}, "grpc": {"socket": str(tmp_path / "a.sock")}, "health": {"port": 0},
        "stateDir": str(tmp_path / "state")})
    agent = Agent(config)
    agent.source.backoff = (0.05, 0.2)
    _, thread = run_in_thread(agent)
    try:
        wait_for(agent.ready, what="agent ready on etcd")
        assert agent.status()["counts"]["workload_endpoints"] == 1
        # IPAM blocks go to etcd, where every node (and the sync layer) sees them.
        ips = agent.ipam.assign("cid-1", {"namespace": "shop", "pod": "x"}, agent._ipam_pools())
        assert ips[0].ip in __import__("ipaddress").ip_network("10.71.0.0/16")
        blocks = EtcdBlockStore(endpoints=[etcd.client_url]).list_blocks()
        assert [b.affinity for b, _ in blocks] == ["node1"]
        put(etcd, pod("web", "node2", "10.71.5.5", app="web"))
        wait_for(lambda: "10.71.5.5/32" in members(agent), what="web's address in the policy's IP set")
        before = agent.hub.snapshot()[1]
        etcd.kill()
        wait_for(lambda: not agent.ready(), what="agent not ready while etcd is down")
        assert agent.hub.snapshot()[1] == before          # nothing flushed
        assert agent.status()["datastore_sync_state"] == "disconnected"
        etcd.restart()
        put(etcd, pod("web", "node2", "10.71.5.6", app="web"))
        wait_for(agent.ready, what="agent ready again")
        wait_for(lambda: "10.71.5.6/32" in members(agent) and "10.71.5.5/32" not in members(agent),
                 what="the change made right after etcd came back")
    finally:
        agent.stop()
        thread.join(10)


def test_sync_layer_on_etcd_outage_reaches_the_agents(etcd: EtcdServer, tmp_path: Path) -> None:
    ds = DatastoreConfig(type="etcd", endpoints=(etcd.client_url,))
    source = create_source(ds)
    source.backoff = (0.05, 0.2)  # type: ignore[attr-defined]
    server = SyncServer(SyncServerConfig(socket=str(tmp_path / "sync.sock"), health_port=0), source,
                        create_block_store(ds, str(tmp_path)))
    _, server_thread = run_in_thread(server)
    agent = Agent(parse_config({
        "nodeName": "node1", "datastore": {"type": "sync", "address": f"unix://{tmp_path / 'sync.sock'}"},
        "dataplane": {"type": "none"}, "grpc": {"socket": str(tmp_path / "a.sock")}, "health": {"port": 0},
        "stateDir": str(tmp_path / "state")}))
    _, agent_thread = run_in_thread(agent)
    try:
        wait_for(agent.ready, what="agent ready behind the sync layer")
        ips = agent.ipam.assign("cid-9", {"namespace": "shop", "pod": "db"})
        assert [b.affinity for b, _ in EtcdBlockStore(endpoints=[etcd.client_url]).list_blocks()] == ["node1"]
        before = agent.hub.snapshot()[1]
        etcd.kill()
        wait_for(lambda: not server.ready(), what="sync layer not ready without etcd")
        wait_for(lambda: not agent.ready(), what="the agent hears it through the sync layer's health")
        assert agent.hub.snapshot()[1] == before
        etcd.restart()
        put(etcd, pod("web", "node2", "10.71.6.6", app="web"))
        wait_for(agent.ready, what="agent ready again")
        wait_for(lambda: "10.71.6.6/32" in members(agent), what="the difference reaching the node")
        assert ips
    finally:
        agent.stop()
        agent_thread.join(10)
        server.stop()
        server_thread.join(10)
