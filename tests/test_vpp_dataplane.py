"""The VPP dataplane against the fake VPP: connection, pods, ownership, restarts.

Every message goes through ``VppConnection`` into ``FakeVpp``, which checks
it against the declared message table and keeps VPP-like state, so these
tests read back what VPP would hold.  A ``Recorder`` keeps the decoded
messages in the order VPP received them.  Pod netns work is replaced by
``FakeLinux`` (the real one is exercised by ``test_vpp_real.py``).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Iterator

import pytest

from vpp_env import fake_vpp
from vppagent.calc.graph import CalcGraph
from vppagent.dataplane import create_dataplane
from vppagent.dataplane.base import WiringError, WorkloadWiring
from vppagent.dataplane.vpp import ConfigError, VppConfig, VppDataplane
from vppagent.dataplane.vpp.config import BufferAdmission, HostInterface
from vppagent.manifests.loader import load_objects
from vppagent.model.updates import InSync
from vppagent.reconciler import Backoff, KeyState
from vppagent.vpp.connection import VppConnection
from vppagent.vpp.errors import VppApiMismatch
from vppagent.vpp.fake import FakeVpp, codec

ALL = 0xFFFFFFFF
READS = ("_dump", "control_ping", "show_version", "show_vpe_system_time")


class FakeLinux:
    """Stands in for ``PodLinux``: records what would be done in namespaces."""

    def __init__(self) -> None:
        self.veths: dict[str, tuple[str, str, tuple[str, ...], int, str]] = {}
        self.l3: list[tuple[str, str, tuple[str, ...], int]] = []
        self.fail_create = False

    def create_veth(self, host: str, netns: str, pod_ifname: str, ips: tuple[str, ...], mtu: int, pod_mac: str) -> None:
        if self.fail_create:
            raise WiringError(f"cannot create {pod_ifname} in {netns}: boom")
        self.veths[host] = (netns, pod_ifname, ips, mtu, pod_mac)

    def delete_veth(self, host: str) -> None:
        self.veths.pop(host, None)

    def host_end_exists(self, host: str) -> bool:
        return host in self.veths

    def configure_l3(self, netns: str, pod_ifname: str, ips: tuple[str, ...], mtu: int) -> None:
        self.l3.append((netns, pod_ifname, ips, mtu))

    def delete_pod_link(self, netns: str, pod_ifname: str) -> None:
        pass

    def check(self, netns: str, pod_ifname: str, ips: tuple[str, ...], mtu: int) -> list[str]:
        return []


class Recorder:
    """The messages VPP received, decoded, in order."""

    def __init__(self, fake: FakeVpp) -> None:
        self.log: list[tuple[str, Any]] = []
        serve = fake._serve

        def record(session: Any, data: bytes) -> None:
            name = fake._index_to_name.get(int.from_bytes(data[:2], "big"))
            if name is not None:
                try:
                    self.log.append((name, codec()[name].unpack(data)[0]))
                except ValueError:
                    self.log.append((name, None))
            serve(session, data)

        fake._serve = record  # type: ignore[method-assign]

    def mark(self) -> int:
        return len(self.log)

    def writes(self, since: int = 0) -> list[str]:
        return [n for n, _ in self.log[since:] if not n.endswith(READS)]

    def messages(self, name: str, since: int = 0) -> list[Any]:
        return [m for n, m in self.log[since:] if n == name]


@pytest.fixture
def fake() -> Iterator[FakeVpp]:
    with fake_vpp() as f:
        yield f


@pytest.fixture
def rec(fake: FakeVpp) -> Recorder:
    return Recorder(fake)


def make(fake: FakeVpp, tmp: Path, linux: FakeLinux | None = None, **options: Any) -> VppDataplane:
    cfg = VppConfig(**{"state_dir": str(tmp / "state"), "pod_interface": "af_packet", "refresh_interval": None,
                       **options})
    dp = VppDataplane(cfg, client_factory=fake.client_factory, linux=linux or FakeLinux(),
                      backoff=Backoff(base=0.0, max=0.0))
    dp.start()
    return dp


def wiring(name: str, *ips: str, netns: str = "", annotations: dict[str, str] | None = None,
           container: str = "") -> WorkloadWiring:
    return WorkloadWiring(container or f"c-{name}", netns or f"ns-{name}", "eth0", name,
                          tuple(ipaddress.ip_interface(i) for i in ips), annotations=tuple((annotations or {}).items()))


def tagged(fake: FakeVpp, prefix: str = "vppagent:") -> dict[str, Any]:
    return {i.tag: i for i in fake.state.interfaces.values() if i.tag.startswith(prefix)}


def our_tables(fake: FakeVpp) -> dict[tuple[int, int], str]:
    return {k: n for k, n in fake.state.tables.items() if n.startswith("vppagent:vrf:")}


PODS = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
     "spec": {"nodeName": "node1", "containers": [{"name": "c"}]}, "status": {"podIPs": [{"ip": "10.1.0.1"}]}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db", "namespace": "shop", "labels": {"app": "db"}},
     "spec": {"nodeName": "node1", "containers": [{"name": "c"}]}, "status": {"podIPs": [{"ip": "10.1.0.2"}]}},
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "db", "namespace": "shop"},
     "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
              "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 5432}]}]}},
]


def pods_and_policy(dp: VppDataplane, manifests: list[dict] = PODS) -> tuple[list[Any], CalcGraph]:
    """Wire the manifests' pods (their Calico interface names) and apply the snapshot."""
    resources = load_objects(manifests, "test")
    graph = CalcGraph(None)
    graph.apply_all(resources)
    weps = [r for r in resources if type(r).__name__ == "WorkloadEndpoint"]
    for w in weps:
        dp.wire_workload(wiring(w.interface_name, *[str(n) for n in w.nets]))
    dp.apply([*graph.flush(), InSync()])
    return weps, graph


# ------------------------------------------------------------------ config and connection

def test_config_keys_are_validated_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="'podInterfaces'"):
        create_dataplane({"type": "vpp", "podInterfaces": "tap"})
    with pytest.raises(ConfigError, match="dataplane.podInterface"):
        VppConfig.from_options({"podInterface": "veth"})
    with pytest.raises(ConfigError, match="dataplane.tapRingSize.*power of two"):
        VppConfig.from_options({"tapRingSize": 1000})
    with pytest.raises(ConfigError, match="bufferAdmission: unknown option 'free'"):
        VppConfig.from_options({"bufferAdmission": {"free": 1}})
    cfg = VppConfig.from_options({
        "socket": "/run/x.sock", "podInterface": "memif", "policy": "acl", "mtu": 1400, "uplinkInterface": "eth1",
        "nodeName": "n1", "podVrfs": False, "tapRingSize": 256, "tapQueues": 2, "bufferAdmission": False,
        "hostInterfaces": {"eth0": "host-eth0", "n1-eth1": {"interface": "tap1", "facing": "uplink"}},
        "failsafeInbound": ["tcp:22", "udp:68"]})
    assert (cfg.socket, cfg.pod_interface, cfg.policy, cfg.mtu, cfg.pod_vrfs) == ("/run/x.sock", "memif", "acl", 1400, False)
    assert cfg.buffer_admission == BufferAdmission(enabled=False)
    assert cfg.host_interfaces == {"eth0": HostInterface("host-eth0"), "n1-eth1": HostInterface("tap1", "uplink")}
    assert cfg.failsafe_inbound == ((6, 22, 22), (17, 68, 68))
    assert isinstance(create_dataplane({"type": "vpp", "stateDir": "/tmp/nowhere"}), VppDataplane)


def test_start_prepares_vpp_and_picks_the_engine(fake: FakeVpp, rec: Recorder, tmp_path: Path) -> None:
    dp = make(fake, tmp_path)
    assert dp.engine == "hybrid" and dp.status().connected
    first = rec.messages("feature_cnat_enable_disable")[0]
    assert (first.sw_if_index, first.enable_disable) == (0, False)     # cnat's lazy init, before any table
    assert [n for n in fake.state.tables.values() if n.startswith("vppagent:epoch:")] == [
        f"vppagent:epoch:{dp.store.epoch}"]
    dp.stop()
    no_npol = FakeVpp(absent=["npol"])
    try:
        assert make(no_npol, tmp_path / "a").engine == "acl"
        with pytest.raises(VppApiMismatch, match="npol"):
            make(no_npol, tmp_path / "b", policy="npol")
    finally:
        no_npol.close()
    no_acl = FakeVpp(absent=["acl"])
    try:
        assert make(no_acl, tmp_path / "c").engine == "npol"
        assert make(no_acl, tmp_path / "d", policy="npol").engine == "npol"
    finally:
        no_acl.close()
    assert make(fake, tmp_path / "e", policy="acl").engine == "acl"


def test_vpp_absent_at_start_is_retried(fake: FakeVpp, tmp_path: Path) -> None:
    fake.stop()
    dp = make(fake, tmp_path)
    assert not dp.status().connected and not dp.status().ready
    with pytest.raises(WiringError, match="VPP is not reachable"):
        dp.wire_workload(wiring("cali1", "10.1.0.1/32"))
    fake.start()
    dp.run_periodic()
    assert dp.status().connected
    dp.wire_workload(wiring("cali1", "10.1.0.1/32"))


# ------------------------------------------------------------------ pods

def test_af_packet_pod_is_wired_with_vrfs_loopback_unnumbered_and_routes(
        fake: FakeVpp, rec: Recorder, tmp_path: Path) -> None:
    linux = FakeLinux()
    dp = make(fake, tmp_path, linux=linux, mtu=1450)
    mark = rec.mark()
    wired = dp.wire_workload(wiring("cali1", "10.1.0.1/32", "fd00:1::1/128"))
    assert wired.host_interface_name == "cali1" and wired.host_mac == "ee:ee:ee:ee:ee:ee"
    netns, pod_if, ips, mtu, pod_mac = linux.veths["cali1"]
    assert (netns, pod_if, ips, mtu) == ("ns-cali1", "eth0", ("10.1.0.1/32", "fd00:1::1/128"), 1450)
    assert wired.container_mac == pod_mac
    writes = rec.writes(mark)
    # tables (+ default route into table 0), then the loopback, then the interface, then routes
    assert writes.index("ip_table_add_del") < writes.index("create_loopback_instance") \
        < writes.index("af_packet_create_v3") < writes.index("ip_neighbor_add_del")
    tables = our_tables(fake)
    assert sorted(tables.values()) == ["vppagent:vrf:cali1:4", "vppagent:vrf:cali1:6"]
    (t4,) = [k[1] for k, n in tables.items() if n.endswith(":4")]
    ours = tagged(fake)
    pod, lo = ours["vppagent:pod:cali1"], ours["vppagent:lo:cali1"]
    assert pod.kind == "af_packet" and pod.admin_up and pod.mtu[0] == 1450 and pod.ip6_enabled
    assert pod.create["hw_addr"] == "ee:ee:ee:ee:ee:ee" and pod.create["flags"] == 3   # QDISC_BYPASS|CKSUM_GSO
    assert pod.unnumbered_of == lo.sw_if_index and pod.table == {4: t4, 6: t4} == lo.table
    assert pod.sw_if_index in fake.state.cnat_features
    # The loopback holds the pod gateway, not the pod's address (which would be local to the pod's VRF
    # and break hairpin: a pod reaching itself through its Service).
    assert [str(a.prefix) for a in fake.state.addresses[lo.sw_if_index]] == ["169.254.1.1/32"]
    routes = fake.state.routes[(4, 0)]
    assert routes[ipaddress.ip_network("10.1.0.1/32")].paths[0]["sw_if_index"] == pod.sw_if_index
    assert ipaddress.ip_network("0.0.0.0/0") in fake.state.routes[(4, t4)]
    neighbor = fake.state.neighbors[(pod.sw_if_index, ipaddress.ip_address("10.1.0.1"))]
    assert str(neighbor["mac_address"]) == pod_mac and neighbor["flags"] == 1
    assert dp.check_workload(wiring("cali1", "10.1.0.1/32", "fd00:1::1/128")) == []


def test_tap_pod_is_a_persistent_attachable_tun_in_the_pod(fake: FakeVpp, rec: Recorder, tmp_path: Path) -> None:
    linux = FakeLinux()
    dp = make(fake, tmp_path, linux=linux, pod_interface="tap", tap_ring_size=512, tap_queues=2, mtu=1400)
    dp.wire_workload(wiring("cali2", "10.1.0.2/32", netns="/var/run/netns/pod2"))
    (create,) = rec.messages("tap_create_v3")
    assert create.tap_flags == 1 | 4 | 8 | 16 | 32              # GSO, PERSIST, ATTACH, TUN, GRO_COALESCE
    assert (create.host_namespace, create.host_if_name, create.host_mtu_size) == ("/var/run/netns/pod2", "eth0", 1400)
    assert (create.rx_ring_sz, create.tx_ring_sz, create.num_rx_queues) == (512, 512, 2)
    assert create.tag == "vppagent:pod:cali2"
    assert linux.l3 == [("/var/run/netns/pod2", "eth0", ("10.1.0.2/32",), 1400)]
    assert linux.veths == {}
    pod = tagged(fake)["vppagent:pod:cali2"]
    assert (pod.sw_if_index, ipaddress.ip_address("10.1.0.2")) not in fake.state.neighbors     # L3: no neighbour


def test_memif_by_annotation_keeps_its_secret_from_desired_state(fake: FakeVpp, rec: Recorder, tmp_path: Path) -> None:
    dp = make(fake, tmp_path)
    dp.wire_workload(wiring("cali3", "10.1.0.3/32", netns="pod3", annotations={"vpp.vppagent.io/interface": "memif"}))
    (sock,) = rec.messages("memif_socket_filename_add_del_v2")
    assert sock.socket_filename == "abstract:vppagent-memif-cali3,netns_name=/var/run/netns/pod3"
    (create,) = rec.messages("memif_create_v2")
    assert (create.role, create.mode, create.socket_id) == (0, 1, sock.socket_id if sock.socket_id != ALL else 1)
    assert len(create.secret) == 16
    dp.stop()
    # a restarted agent adopts it although memif_dump returns neither secret nor ring size
    mark = rec.mark()
    again = make(fake, tmp_path)
    again.apply([InSync()])
    pod_writes = [w for w in rec.writes(mark) if not w.startswith(("acl_", "npol_"))]
    assert pod_writes == ["feature_cnat_enable_disable"]          # cnat's lazy init only (policy is new)
    assert again.status().ready


def test_wiring_is_idempotent_and_del_too(fake: FakeVpp, rec: Recorder, tmp_path: Path) -> None:
    linux = FakeLinux()
    dp = make(fake, tmp_path, linux=linux)
    w = wiring("cali4", "10.1.0.4/32")
    dp.wire_workload(w)
    mark = rec.mark()
    dp.wire_workload(w)
    assert rec.writes(mark) == []
    dp.unwire_workload(w)
    dp.unwire_workload(w)
    dp.unwire_workload(wiring("never-wired", "10.9.9.9/32"))
    assert tagged(fake) == {} and our_tables(fake) == {} and linux.veths == {}
    assert not [r for r in fake.state.routes[(4, 0)] if str(r).startswith("10.1.")]


def test_a_new_container_replaces_the_old_sandbox(fake: FakeVpp, tmp_path: Path) -> None:
    linux = FakeLinux()
    dp = make(fake, tmp_path, linux=linux)
    dp.wire_workload(wiring("cali5", "10.1.0.5/32", container="old", netns="ns-old"))
    dp.wire_workload(wiring("cali5", "10.1.0.6/32", container="new", netns="ns-new"))
    assert linux.veths["cali5"][0] == "ns-new"
    lo = tagged(fake)["vppagent:lo:cali5"]
    assert ipaddress.ip_network("10.1.0.6/32") in fake.state.routes[(4, 0)]
    assert ipaddress.ip_network("10.1.0.5/32") not in fake.state.routes[(4, 0)]
    dp.unwire_workload(wiring("cali5", "10.1.0.5/32", container="old"))      # stale DEL: nothing happens
    assert "vppagent:pod:cali5" in tagged(fake)


@pytest.mark.parametrize("message", ["af_packet_create_v3", "sw_interface_set_unnumbered", "ip_route_add_del",
                                     "create_loopback_instance"])
def test_a_failed_wiring_is_rolled_back(fake: FakeVpp, tmp_path: Path, message: str) -> None:
    linux = FakeLinux()
    dp = make(fake, tmp_path, linux=linux)
    before = (set(fake.state.interfaces), dict(fake.state.tables))
    fake.fail(message, "INVALID_VALUE", times=None)
    with pytest.raises(WiringError, match=f"cannot wire cali6 into VPP.*{message}"):
        dp.wire_workload(wiring("cali6", "10.1.0.7/32"))
    fake._failures.clear()
    assert (set(fake.state.interfaces), dict(fake.state.tables)) == before
    assert linux.veths == {} and dp.pods.specs == {}
    dp.wire_workload(wiring("cali6", "10.1.0.7/32"))              # and it works once VPP does
    assert "vppagent:pod:cali6" in tagged(fake)


def test_linux_failure_leaves_nothing_in_vpp(fake: FakeVpp, tmp_path: Path) -> None:
    linux = FakeLinux()
    linux.fail_create = True
    dp = make(fake, tmp_path, linux=linux)
    with pytest.raises(WiringError, match="boom"):
        dp.wire_workload(wiring("cali7", "10.1.0.8/32"))
    assert tagged(fake) == {} and our_tables(fake) == {}


def test_buffer_admission_refuses_with_a_clear_message(fake: FakeVpp, tmp_path: Path) -> None:
    dp = make(fake, tmp_path, pod_interface="memif", memif_ring_size=1024,
              buffer_admission=BufferAdmission(buffers=6000, reserve=1000))
    dp.wire_workload(wiring("cali8", "10.1.0.9/32"))                      # 2 × 1024 buffers
    dp.wire_workload(wiring("cali9", "10.1.0.10/32"))                     # 4096
    with pytest.raises(WiringError, match=r"out of buffers: cali10 needs 2048 VPP buffers.*1904 are free"):
        dp.wire_workload(wiring("cali10", "10.1.0.11/32"))
    assert "vppagent:pod:cali10" not in tagged(fake)
    dp.wire_workload(wiring("cali10", "10.1.0.11/32", annotations={"vpp.vppagent.io/ring-size": "256"}))


def test_mtu_is_the_uplink_mtu_minus_encapsulation(fake: FakeVpp, tmp_path: Path) -> None:
    other = VppConnection(client_factory=fake.client_factory)
    other.connect()
    uplink = other.call("create_loopback_instance", is_specified=False).sw_if_index
    other.call("sw_interface_set_mtu", sw_if_index=uplink, mtu=[8950, 0, 0, 0])
    other.disconnect()
    linux = FakeLinux()
    dp = make(fake, tmp_path, linux=linux, uplink_interface="loop0", encap_overhead=50)
    dp.wire_workload(wiring("cali11", "10.1.0.12/32"))
    assert linux.veths["cali11"][3] == 8900


def test_bad_annotations_are_refused(fake: FakeVpp, tmp_path: Path) -> None:
    dp = make(fake, tmp_path)
    with pytest.raises(WiringError, match="vpp.vppagent.io/interface"):
        dp.wire_workload(wiring("cali12", "10.1.0.13/32", annotations={"vpp.vppagent.io/interface": "veth"}))
    with pytest.raises(WiringError, match="vpp.vppagent.io/allowed-sources"):
        dp.wire_workload(wiring("cali12", "10.1.0.13/32", annotations={"vpp.vppagent.io/allowed-sources": "x"}))


# ------------------------------------------------------------------ sync, ownership, restarts

def test_nothing_of_policy_is_written_before_in_sync(fake: FakeVpp, rec: Recorder, tmp_path: Path) -> None:
    dp = make(fake, tmp_path)
    resources = load_objects(PODS, "t")
    graph = CalcGraph(None)
    graph.apply_all(resources)
    for w in [r for r in resources if type(r).__name__ == "WorkloadEndpoint"]:
        dp.wire_workload(wiring(w.interface_name, *[str(n) for n in w.nets]))
    dp.apply(graph.flush())
    assert not [n for n in rec.writes() if n.startswith(("npol_", "acl_"))]
    dp.apply([InSync()])
    assert "npol_configure_policies" in rec.writes()


def test_second_sync_and_resync_send_nothing(fake: FakeVpp, rec: Recorder, tmp_path: Path) -> None:
    dp = make(fake, tmp_path)
    _, graph = pods_and_policy(dp)
    assert dp.status().ready
    mark = rec.mark()
    dp.apply([InSync()])
    dp.resync()
    dp.run_periodic()
    assert rec.writes(mark) == []


def test_agent_restart_adopts_everything_without_writes(fake: FakeVpp, rec: Recorder, tmp_path: Path) -> None:
    dp = make(fake, tmp_path)
    _, graph = pods_and_policy(dp)
    dp.stop()
    mark = rec.mark()
    again = make(fake, tmp_path)
    again.apply([*_snapshot(PODS), InSync()])
    assert rec.writes(mark) == ["feature_cnat_enable_disable"]          # cnat's lazy init: idempotent
    assert again.status().ready and len(again.pods.specs) == 2
    assert again.reconciler.history == [] or all(r.op.key.__class__.__name__ == "IfaceRefKey"
                                                 for r in again.reconciler.history)


def _snapshot(manifests: list[dict]) -> list[Any]:
    graph = CalcGraph(None)
    graph.apply_all(load_objects(manifests, "t"))
    return graph.flush()


def test_vpp_restart_is_detected_and_everything_reprogrammed(fake: FakeVpp, tmp_path: Path) -> None:
    dp = make(fake, tmp_path)
    pods_and_policy(dp)
    before = {t: i.kind for t, i in tagged(fake).items()}
    npol_before = len(fake.state.npol_interfaces)
    fake.restart()
    dp.run_periodic()                       # the ping notices the new pid
    assert not dp.status().ready
    dp.run_periodic()                       # reconnect, reprogram
    st = dp.status()
    assert st.ready and st.counts["vpp_restarts"] == 1, dp.dump()
    assert {t: i.kind for t, i in tagged(fake).items()} == before
    assert len(fake.state.npol_interfaces) == npol_before == 2
    assert len([n for n in fake.state.tables.values() if n.startswith("vppagent:epoch:")]) == 1


def test_vpp_down_then_back_with_backoff(fake: FakeVpp, tmp_path: Path) -> None:
    now = [0.0]
    cfg = VppConfig(state_dir=str(tmp_path), pod_interface="af_packet", refresh_interval=None)
    dp = VppDataplane(cfg, client_factory=fake.client_factory, linux=FakeLinux(), clock=lambda: now[0])
    dp.start()
    pods_and_policy(dp)
    fake.stop()
    dp.run_periodic()
    assert not dp.status().connected and "VPP lost" in (dp.status().last_error or "")
    dp.run_periodic()                                   # refused: retried later
    now[0] += 0.1
    dp.run_periodic()                                   # backoff not over: not even tried
    fake.start()
    now[0] += 10
    dp.run_periodic()
    assert dp.status().ready


def test_foreign_objects_are_never_touched_and_stale_ones_of_ours_are_removed(
        fake: FakeVpp, tmp_path: Path) -> None:
    other = VppConnection(client_factory=fake.client_factory, client_name="someone-else")
    other.connect()
    lo = other.call("create_loopback_instance", is_specified=False).sw_if_index
    other.call("sw_interface_tag_add_del", is_add=True, sw_if_index=lo, tag="someone-else")
    stale = other.call("create_loopback_instance", is_specified=False).sw_if_index   # ours by its tag
    other.call("sw_interface_tag_add_del", is_add=True, sw_if_index=stale, tag="vppagent:lo:ghost")
    other.call("acl_add_replace", acl_index=ALL, tag="someone-else", r=[])
    other.call("acl_add_replace", acl_index=ALL, tag="vppagent:acl:0000dead0000beef", r=[])
    other.call("ip_table_add_del", is_add=True, table={"table_id": 77, "is_ip6": False, "name": "someone-else"})
    other.call("ip_table_add_del", is_add=True, table={"table_id": 78, "is_ip6": False, "name": "vppagent:vrf:ghost:4"})
    sid = other.call("npol_ipset_create", type=2).set_id
    rid = other.call("npol_rule_create", rule={"action": 1, "filters": [{"type": 0, "value": 0, "should_match": 0}] * 3,
                                               "matches": []}).rule_id
    other.disconnect()
    dp = make(fake, tmp_path)
    pods_and_policy(dp)
    dp.resync()
    assert fake.state.interfaces[lo].tag == "someone-else" and "vppagent:lo:ghost" not in tagged(fake)
    tags = {t for t, _ in fake.state.acls.values()}
    assert "someone-else" in tags and "vppagent:acl:0000dead0000beef" not in tags
    assert (4, 77) in fake.state.tables and (4, 78) not in fake.state.tables
    assert sid in fake.state.ipsets and rid in fake.state.rules


def test_injected_failures_are_typed_errors_and_retried(fake: FakeVpp, tmp_path: Path) -> None:
    now = [0.0]
    cfg = VppConfig(state_dir=str(tmp_path), pod_interface="af_packet", refresh_interval=None)
    dp = VppDataplane(cfg, client_factory=fake.client_factory, linux=FakeLinux(), clock=lambda: now[0],
                      backoff=Backoff(base=1.0, max=4.0))
    dp.start()
    fake.fail("npol_configure_policies", "INVALID_SW_IF_INDEX", times=2)
    pods_and_policy(dp)
    st = dp.status()
    assert not st.ready and st.failed >= 1
    assert "npol_configure_policies" in (st.last_error or "") and "INVALID_SW_IF_INDEX" in st.last_error
    failed = [k for k in dp.reconciler.keys() if dp.reconciler.state(k).state is KeyState.FAILED]
    assert failed and all(type(k).__name__ == "NpolIfaceKey" for k in failed)
    for _ in range(4):
        now[0] += 5
        dp.run_periodic()
    assert dp.status().ready and len(fake.state.npol_interfaces) == 2


def test_check_reports_drift_and_resync_repairs_it(fake: FakeVpp, tmp_path: Path) -> None:
    dp = make(fake, tmp_path)
    w = wiring("cali13", "10.1.0.14/32")
    dp.wire_workload(w)
    pod = tagged(fake)["vppagent:pod:cali13"]
    other = VppConnection(client_factory=fake.client_factory, client_name="vandal")
    other.connect()
    other.call("sw_interface_set_flags", sw_if_index=pod.sw_if_index, flags=0)
    other.disconnect()
    drift = dp.check_workload(w)
    assert any("PodIfaceKey" in d for d in drift), drift
    assert tagged(fake)["vppagent:pod:cali13"].admin_up              # check's read-back repaired it
    assert dp.check_workload(w) == []


def test_bulk_programming_is_pipelined(fake: FakeVpp, tmp_path: Path) -> None:
    dp = make(fake, tmp_path)
    manifests = list(PODS[:1])
    for i in range(20):
        manifests.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p{i}", "namespace": "shop",
                                                                          "labels": {"app": f"a{i}"}},
                          "spec": {"nodeName": "node1", "containers": [{"name": "c"}]},
                          "status": {"podIPs": [{"ip": f"10.2.0.{i + 1}"}]}})
        manifests.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                          "metadata": {"name": f"p{i}", "namespace": "shop"},
                          "spec": {"podSelector": {"matchLabels": {"app": f"a{i}"}}, "policyTypes": ["Ingress"],
                                   "ingress": [{"ports": [{"port": 1000 + i}]}]}})
    resources = load_objects(manifests, "bulk")
    for w in [r for r in resources if type(r).__name__ == "WorkloadEndpoint"]:
        dp.wire_workload(wiring(w.interface_name, *[str(n) for n in w.nets]))
    graph = CalcGraph(None)
    graph.apply_all(resources)
    before = dict(dp.conn.stats)
    dp.apply([*graph.flush(), InSync()])
    messages = dp.conn.stats["messages"] - before["messages"]
    trips = dp.conn.stats["round_trips"] - before["round_trips"]
    assert dp.status().ready
    assert messages > 100 and trips * 3 < messages, (messages, trips)


def test_agent_and_vpp_both_restarted_rebuild_pods_from_the_state_dir(fake: FakeVpp, tmp_path: Path) -> None:
    dp = make(fake, tmp_path)
    pods_and_policy(dp)
    dp.stop()
    fake.restart()                                     # e.g. a node reboot of both
    again = make(fake, tmp_path)
    assert {t for t in tagged(fake) if t.startswith("vppagent:pod:")} == {
        f"vppagent:pod:{name}" for name in again.pods.specs}
    again.apply([*_snapshot(PODS), InSync()])
    assert again.status().ready and len(fake.state.npol_interfaces) == 2
    assert len([n for n in fake.state.tables.values() if n.startswith("vppagent:epoch:")]) == 1


def test_host_interfaces_appearing_later_are_picked_up(fake: FakeVpp, tmp_path: Path) -> None:
    from vppagent.model.updates import HostEndpointInfo, HostEndpointUpdate
    dp = make(fake, tmp_path, host_interfaces={"node1-eth0": HostInterface("loop0")}, uplink_interface="loop1")
    dp.apply([HostEndpointUpdate("h", HostEndpointInfo("node1-eth0", "node1", "eth0")), InSync()])
    assert dp.status().ready and fake.state.npol_interfaces == {}
    other = VppConnection(client_factory=fake.client_factory, client_name="vpp-manager")
    other.connect()
    host = other.call("create_loopback_instance", is_specified=False).sw_if_index
    uplink = other.call("create_loopback_instance", is_specified=False).sw_if_index
    other.call("sw_interface_add_del_address", sw_if_index=uplink, is_add=True, prefix="192.0.2.1/24")
    other.disconnect()
    dp.run_periodic()
    assert host in fake.state.npol_interfaces and {host, uplink} <= fake.state.cnat_features
    assert uplink not in fake.state.npol_interfaces                 # no host endpoint on the uplink: no policy


def test_services_are_rendered_through_the_services_module(fake: FakeVpp, tmp_path: Path) -> None:
    service = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": "shop"},
         "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10",
                  "ports": [{"name": "p", "port": 5432, "targetPort": 5432, "protocol": "TCP"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "db-a", "namespace": "shop", "labels": {"kubernetes.io/service-name": "db"}},
         "addressType": "IPv4", "ports": [{"name": "p", "port": 5432, "protocol": "TCP"}],
         "endpoints": [{"addresses": ["10.1.0.2"], "nodeName": "node1", "conditions": {"ready": True}}]},
    ]
    dp = make(fake, tmp_path)
    pods_and_policy(dp, PODS + service)
    assert dp.status().ready, dp.dump()
    vips = {(str(t["vip"]["addr"]), t["vip"]["port"]): [str(p["dst_ep"]["addr"]) for p in t["paths"]]
            for t in fake.state.translations.values()}
    assert vips[("10.96.0.10", 5432)] == ["10.1.0.2"]
