"""Pod wiring on Linux (veth, /32 + /128, proxy ARP, routes) against real namespaces."""

from __future__ import annotations

import ipaddress
import os
import subprocess

import pytest

from tests.linux_harness import ROOT_ONLY, Node
from vppagent.dataplane.base import WiringError, WorkloadWiring
from vppagent.dataplane.linux import LinuxDataplane
from vppagent.dataplane.linux.netlink_ns import open_netns, run_in_netns
from vppagent.dataplane.linux.pods import HOST_MAC, LinuxPodNetwork

pytestmark = ROOT_ONLY


@pytest.fixture
def node():
    with Node(start=False) as n:
        yield n


def in_node(node: Node, fn):
    """Run ``fn`` in the node's netns (where the agent would run)."""
    fd = open_netns(node.netns)
    try:
        return run_in_netns(fd, fn)
    finally:
        os.close(fd)


def wiring(node: Node, netns: str, host: str, *ips: str, mtu: int = 1400, ifname: str = "eth0") -> WorkloadWiring:
    return WorkloadWiring(container_id=f"c-{netns}", netns=f"/var/run/netns/{netns}", interface_name=ifname,
                          host_interface_name=host, ips=tuple(ipaddress.ip_interface(i) for i in ips), mtu=mtu)


def ip(node: Node, netns: str, *argv: str) -> str:
    return subprocess.run(["ip", "-n", netns, *argv], capture_output=True, text=True, check=True).stdout


def test_wire_dual_stack_pod_reaches_node_and_client(node):
    pods = LinuxPodNetwork()
    ns = node.add_netns("pa")
    w = wiring(node, ns, f"cali{node.token}a", "10.65.0.5/32", "fd65::5/128")
    wired = in_node(node, lambda: pods.wire(w))
    assert wired.host_mac == HOST_MAC and wired.container_mac
    link = ip(node, ns, "-o", "link", "show", "eth0")
    assert "mtu 1400" in link and wired.container_mac in link and "UP" in link
    assert "10.65.0.5/32" in ip(node, ns, "-o", "addr", "show", "eth0")
    assert "fd65::5/128" in ip(node, ns, "-o", "addr", "show", "eth0")
    assert "default via 169.254.1.1 dev eth0" in ip(node, ns, "route")
    assert "default via fe80::ecee:eeff:feee:eeee dev eth0" in ip(node, ns, "-6", "route")
    host_routes = ip(node, node.netns, "route") + ip(node, node.netns, "-6", "route")
    assert f"10.65.0.5 dev cali{node.token}a" in host_routes and f"fd65::5 dev cali{node.token}a" in host_routes
    assert subprocess.run(["ip", "netns", "exec", node.netns, "cat",
                           f"/proc/sys/net/ipv4/conf/cali{node.token}a/proxy_arp"],
                          capture_output=True, text=True).stdout.strip() == "1"
    pod = _place(ns)
    assert node.ping("node", "10.65.0.5") and node.ping("node", "fd65::5")
    assert node.ping(pod, node.node_ip) and node.ping(pod, node.node_ip6)
    # Routed through the node: the client reaches the pod (TCP and UDP) and back.
    with node.listen(pod, 8080, label="pod"), node.listen(pod, 5353, proto="udp", label="pod"):
        out = node.send("client", "10.65.0.5", 8080)
        assert out.ok and out.label == "pod" and out.peer == node.client_ip
        assert node.send("client", "fd65::5", 5353, proto="udp").ok
    assert in_node(node, lambda: pods.check(w)) == []


def test_wire_is_idempotent_and_reconverges_drift(node):
    pods = LinuxPodNetwork()
    ns = node.add_netns("pb")
    w = wiring(node, ns, f"cali{node.token}b", "10.65.0.6/32")
    first = in_node(node, lambda: pods.wire(w))
    again = in_node(node, lambda: pods.wire(w))
    assert again.container_mac == first.container_mac
    ip(node, ns, "route", "del", "default")
    ip(node, node.netns, "link", "set", f"cali{node.token}b", "down")
    drift = in_node(node, lambda: pods.check(w))
    assert f"cali{node.token}b is down" in drift
    assert "default route via 169.254.1.1 on eth0 is missing" in drift
    in_node(node, lambda: pods.wire(w))           # a repeated ADD repairs
    assert in_node(node, lambda: pods.check(w)) == []
    assert node.ping("node", "10.65.0.6")


def test_bad_netns_and_name_clash_leave_nothing_behind(node):
    pods = LinuxPodNetwork()
    host = f"cali{node.token}c"
    bad = WorkloadWiring("c1", "/var/run/netns/does-not-exist-" + node.token, "eth0", host,
                         (ipaddress.ip_interface("10.65.0.7/32"),))
    with pytest.raises(WiringError, match="does not exist"):
        in_node(node, lambda: pods.wire(bad))
    ns = node.add_netns("pc")
    ip(node, ns, "link", "add", "eth0", "type", "veth", "peer", "name", "other0")
    with pytest.raises(WiringError, match="already exists"):
        in_node(node, lambda: pods.wire(wiring(node, ns, host, "10.65.0.7/32")))
    assert host not in ip(node, node.netns, "link")


def test_failure_after_creation_rolls_back(node, monkeypatch):
    pods = LinuxPodNetwork()
    ns = node.add_netns("pd")
    host = f"cali{node.token}d"

    def broken(*a, **kw):
        raise OSError(5, "simulated failure")

    monkeypatch.setattr(pods, "_configure_pod", broken)
    with pytest.raises(WiringError, match=f"cannot wire eth0 in /var/run/netns/{ns}.*simulated failure"):
        in_node(node, lambda: pods.wire(wiring(node, ns, host, "10.65.0.8/32")))
    assert host not in ip(node, node.netns, "link")
    assert "eth0" not in ip(node, ns, "link")


def test_unwire_is_idempotent_and_works_when_the_netns_is_gone(node):
    pods = LinuxPodNetwork()
    ns = node.add_netns("pe")
    w = wiring(node, ns, f"cali{node.token}e", "10.65.0.9/32")
    in_node(node, lambda: pods.wire(w))
    in_node(node, lambda: pods.unwire(w))
    in_node(node, lambda: pods.unwire(w))
    assert f"cali{node.token}e" not in ip(node, node.netns, "link")
    assert "10.65.0.9" not in ip(node, node.netns, "route")
    in_node(node, lambda: pods.wire(w))
    node.forget_netns(ns)                          # the sandbox is gone before DEL
    in_node(node, lambda: pods.unwire(w))
    assert "does not exist" in " ".join(in_node(node, lambda: pods.check(w)))


def test_a_new_sandbox_replaces_the_stale_veth_of_the_same_pod(node):
    pods = LinuxPodNetwork()
    host = f"cali{node.token}f"
    old, new = node.add_netns("pf1"), node.add_netns("pf2")
    in_node(node, lambda: pods.wire(wiring(node, old, host, "10.65.0.10/32")))
    w = wiring(node, new, host, "10.65.0.11/32")
    in_node(node, lambda: pods.wire(w))
    assert "eth0" not in ip(node, old, "link")
    assert in_node(node, lambda: pods.check(w)) == []
    assert node.ping("node", "10.65.0.11")


class _Linux(LinuxDataplane):
    def on_update(self, update, state):  # no policy: wiring only
        pass


def test_linux_dataplane_hooks_use_the_pod_network(node):
    dp = _Linux(name="linux-test")
    dp.pod_mtu = 1300
    ns = node.add_netns("pg")
    w = WorkloadWiring("c", f"/var/run/netns/{ns}", "eth0", f"cali{node.token}g",
                       (ipaddress.ip_interface("10.65.0.12/32"),), mtu=0)
    wired = in_node(node, lambda: dp.wire_workload(w))
    assert wired.host_interface_name == f"cali{node.token}g"
    assert "mtu 1300" in ip(node, ns, "-o", "link", "show", "eth0")
    assert in_node(node, lambda: dp.check_workload(w)) == []
    in_node(node, lambda: dp.unwire_workload(w))
    assert in_node(node, lambda: dp.check_workload(w))


def _place(netns: str):
    """A harness place for a bare netns (the Pod type wants CNI data we do not have here)."""
    return netns
