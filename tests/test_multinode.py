"""Three nodes, one sync layer, real packets across the underlay.

Each node is a netns running ``vppagent run`` (nftables dataplane) with
``datastore: {type: sync}``; ``vppagent sync`` reads a shared file datastore
and serves IPAM. Pods are created through ``vppagent-cni`` on their node and
get addresses from their node's own blocks; the test checks cross-node
traffic, policy across nodes (podSelector, namespaceSelector, ipBlock),
services whose backends sit on other nodes, a node leaving and rejoining,
the sync layer going away, and the VXLAN overlay on a routed underlay.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Iterator

import pytest

from vppagent.testbed.cluster import Cluster

from tests.k8s_objects import namespace, netpol, service

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(nodes=3, dataplane="nftables") as c:
        # Sorted after the bare Namespaces each node writes for its pods ("01-ns-..."), so these win.
        c.write("09-namespaces", [namespace("shop", team="shop"), namespace("ext", team="ext")])
        yield c


@pytest.fixture(scope="module")
def pods(cluster: Cluster) -> dict:
    n0, n1, n2 = cluster.nodes
    out = {
        "web": n0.add_pod("shop", "web", labels={"app": "web"}),
        "db": n1.add_pod("shop", "db", labels={"app": "db"}),
        "tgt": n1.add_pod("ext", "tgt", labels={"app": "tgt"}),
        "probe": n2.add_pod("ext", "probe", labels={"app": "web"}),
    }
    for node in cluster.nodes:
        for pod in out.values():
            if pod.key not in node.pods:
                cluster.wait_for_route(node, pod)
    return out


def test_each_node_addresses_pods_from_its_own_blocks(cluster: Cluster, pods: dict) -> None:
    n0, n1, n2 = cluster.nodes
    blocks = {}
    for node, names in ((n0, ["web"]), (n1, ["db", "tgt"]), (n2, ["probe"])):
        for name in names:
            ip = ipaddress.ip_address(pods[name].ip)
            assert ip in ipaddress.ip_network(cluster.pool)
            blocks[name] = ipaddress.ip_network(f"{ip}/26", strict=False)
    assert blocks["db"] == blocks["tgt"]
    assert len({blocks["web"], blocks["db"], blocks["probe"]}) == 3
    # Node 0 routes to the others' blocks via their underlay addresses, not to its own.
    routes = "\n".join(cluster.routes_of(n0))
    assert f"{blocks['db']} via {cluster.node_address(1)}" in routes
    assert f"{blocks['probe']} via {cluster.node_address(2)}" in routes
    assert f"{blocks['web']} via" not in routes


def test_pods_reach_each_other_across_nodes(cluster: Cluster, pods: dict) -> None:
    n0, n1, n2 = cluster.nodes
    cluster.wait_for(lambda: n0.reachable(pods["web"], pods["probe"], 7001), what="web -> probe")
    assert n1.reachable(pods["tgt"], pods["probe"], 7001)
    assert n0.ping(pods["web"], pods["db"]) and n2.ping(pods["probe"], pods["web"])


def test_policy_across_nodes(cluster: Cluster, pods: dict) -> None:
    n0, n1, n2 = cluster.nodes
    web, db, tgt, probe = pods["web"], pods["db"], pods["tgt"], pods["probe"]
    cluster.write("20-policy", [
        netpol("shop", "db", {"app": "db"}, [{"podSelector": {"matchLabels": {"app": "web"}}}], 5432),
        netpol("ext", "tgt", {"app": "tgt"}, [{"namespaceSelector": {"matchLabels": {"team": "shop"}}}]),
        netpol("shop", "web", {"app": "web"}, [{"ipBlock": {"cidr": f"{probe.ip}/32"}}]),
    ])
    # podSelector: same-namespace web on node 0 allowed; ext's app=web pod on node 2 is not.
    cluster.wait_for(lambda: not n2.reachable(probe, db, 5432, timeout=0.5), what="probe -> db denied")
    assert n0.reachable(web, db, 5432)
    # namespaceSelector: shop's pods may reach tgt, ext's own pods may not.
    cluster.wait_for(lambda: not n2.reachable(probe, tgt, 8080, timeout=0.5), what="probe -> tgt denied")
    assert n0.reachable(web, tgt, 8080)
    # ipBlock: only probe's address may reach web.
    cluster.wait_for(lambda: not n1.reachable(db, web, 9000, timeout=0.5), what="db -> web denied (ipBlock)")
    assert n2.reachable(probe, web, 9000)
    cluster.remove("20-policy")
    cluster.wait_for(lambda: n2.reachable(probe, db, 5432), what="policy removed: probe -> db")


def test_service_with_backends_on_other_nodes(cluster: Cluster, pods: dict) -> None:
    n0, n1, n2 = cluster.nodes
    db, probe = pods["db"], pods["probe"]
    cluster.write("30-service", service("shop", "spread", "10.96.77.10", 6000,
                                        [(db.ip, n1.name), (probe.ip, n2.name)]))
    with n1.listen(db, 6000, label="db") as l_db, n2.listen(probe, 6000, label="probe") as l_probe:
        seen: set[str] = set()

        def both_backends_answer() -> bool:
            out = n0.send(pods["web"], "10.96.77.10", 6000, timeout=0.5)
            if out.ok and out.label:
                seen.add(out.label)
            return seen == {"db", "probe"}
        cluster.wait_for(both_backends_answer, what="the VIP spreading over both remote backends")
        assert l_db.peers and l_probe.peers
    cluster.remove("30-service")


def test_a_node_leaves_and_rejoins(cluster: Cluster, pods: dict) -> None:
    n0, _, n2 = cluster.nodes
    probe_block = str(ipaddress.ip_network(f"{pods['probe'].ip}/26", strict=False))
    cluster.wait_for(lambda: n0.reachable(pods["web"], pods["probe"], 7002), what="web -> probe")
    n2.stop_agent()
    cluster.remove(f"00-node-{n2.name}")            # the Node object goes away
    cluster.wait_for(lambda: not any(line.startswith(probe_block) for line in cluster.routes_of(n0)),
                     what="node 0 dropping the route to the departed node's block")
    assert not n0.reachable(pods["web"], pods["probe"], 7002, timeout=0.5)
    cluster.write(f"00-node-{n2.name}", [n2.node_manifest()])
    n2.start_agent()
    cluster.wait_for_route(n0, pods["probe"])
    cluster.wait_for(lambda: n0.reachable(pods["web"], pods["probe"], 7002), what="web -> probe again")


def test_sync_layer_down_keeps_dataplanes_and_resyncs(cluster: Cluster, pods: dict) -> None:
    n0, n1, _ = cluster.nodes
    cluster.wait_for(lambda: n0.reachable(pods["web"], pods["db"], 7003), what="web -> db")
    cluster.kill_sync()
    cluster.wait_for(lambda: not n0.status().get("ready"), what="node 0 not ready without the sync layer")
    assert n0.reachable(pods["web"], pods["db"], 7003)       # traffic keeps flowing
    cluster.write("40-deny", [netpol("shop", "deny-db", {"app": "db"},
                                     [{"podSelector": {"matchLabels": {"app": "nobody"}}}])])
    cluster.start_sync()
    for node in cluster.nodes:
        node.wait_ready()
    cluster.wait_for(lambda: not n0.reachable(pods["web"], pods["db"], 7003, timeout=0.5),
                     what="the change made while the sync layer was down")
    cluster.remove("40-deny")


def test_vxlan_overlay_on_a_routed_underlay() -> None:
    with Cluster(nodes=2, dataplane="nftables", encap="vxlan", underlay="routed") as c:
        a = c.nodes[0].add_pod("default", "a", labels={"app": "a"})
        b = c.nodes[1].add_pod("default", "b", labels={"app": "b"})
        c.wait_for_route(c.nodes[0], b)
        assert any("vxlan" in line for line in c.routes_of(c.nodes[0]) if line.startswith(str(
            ipaddress.ip_network(f"{b.ip}/26", strict=False))))
        c.wait_for(lambda: c.nodes[0].reachable(a, b, 7100), what="a -> b through the overlay")
        assert c.nodes[1].ping(b, a)


def test_cluster_on_the_kubernetes_datastore_survives_an_api_server_outage(tmp_path) -> None:
    """The sync layer on the (in-test) Kubernetes API: blocks as IPAMBlock CRDs, pods across
    nodes, and an API server outage that leaves every dataplane as it was."""
    from vppagent.testbed.apiserver import ApiServer, KubernetesDatastore

    with ApiServer() as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        writer = KubernetesDatastore(api)
        with Cluster(nodes=2, dataplane="nftables", writer=writer,
                     sync_args=["--datastore", "kubernetes", "--kubeconfig", str(kubeconfig)]) as c:
            c.write("09-namespaces", [namespace("shop", team="shop")])
            n0, n1 = c.nodes
            web = n0.add_pod("shop", "web", labels={"app": "web"})
            db = n1.add_pod("shop", "db", labels={"app": "db"})
            blocks = api.objects("crd.projectcalico.org/v1", "IPAMBlock")
            assert sorted(b["spec"]["affinity"] for b in blocks) == sorted(f"host:{n.name}" for n in c.nodes)
            c.wait_for_route(n0, db)
            c.wait_for(lambda: n0.reachable(web, db, 5432), what="web -> db across nodes")
            api.down()
            c.wait_for(lambda: not n0.status().get("ready"), what="node 0 not ready while the API is down")
            assert n0.reachable(web, db, 5432)                 # the dataplane is kept
            api.up()
            c.write("20-policy", [netpol("shop", "db", {"app": "db"},
                                         [{"podSelector": {"matchLabels": {"app": "nobody"}}}])])
            for node in c.nodes:
                node.wait_ready()
            c.wait_for(lambda: not n0.reachable(web, db, 5432, timeout=0.5), what="policy after the outage")
