"""What the VPP benchmarks found slow, against the fake VPP: af_packet ring sizes, services
planned once per update batch, the cnat ownership file and the state store written once per
commit, pod VRF ids chosen without a table dump per ADD, and replies read from the API socket
by the connection itself (no vpp_papi reader thread)."""

from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from test_vpp_dataplane import Recorder, make, wiring
from vpp_env import fake_vpp
from vppagent.dataplane.base import WiringError
from vppagent.dataplane.vpp import ConfigError, VppConfig
from vppagent.dataplane.vpp.cnat_ownership import OwnershipStore
from vppagent.dataplane.vpp.config import AfPacketRing
from vppagent.dataplane.vpp.pods import PodSpec
from vppagent.dataplane.vpp.store import StateStore, decode, encode
from vppagent.manifests.loader import load_objects
from vppagent.model.updates import InSync, ServiceRemove
from vppagent.vpp.connection import VppConnection
from vppagent.vpp.errors import VppApiError, VppRestarted
from vppagent.vpp.fake import FakeVpp

MIB = 1 << 20


@pytest.fixture
def fake() -> Iterator[FakeVpp]:
    with fake_vpp() as f:
        yield f


# ------------------------------------------------------------------ af_packet rings

def test_af_packet_ring_default_is_small_and_fits_gso() -> None:
    ring = VppConfig().af_packet_ring
    assert ring == AfPacketRing(2048, 32, 67584, 64)
    assert ring.problems(1500) == [] and ring.problems(9000) == []
    assert 14 * MIB <= ring.ring_bytes() < 15 * MIB
    assert AfPacketRing(0, 0, 0, 0).ring_bytes() > 75 * MIB           # what VPP maps when left alone


def test_af_packet_ring_options_are_validated() -> None:
    cfg = VppConfig.from_options({"afPacketRing": {"txFramesPerBlock": 256}})
    assert cfg.af_packet_ring == AfPacketRing(tx_frames_per_block=256)
    assert VppConfig.from_options({"afPacketRing": {"txFramesPerBlock": 0}}).af_packet_ring.effective()[3] == 1024
    with pytest.raises(ConfigError, match="unknown option 'txFrames'"):
        VppConfig.from_options({"afPacketRing": {"txFrames": 64}})
    with pytest.raises(ConfigError, match="TX frame of 9216 bytes cannot hold a GSO packet"):
        VppConfig.from_options({"afPacketRing": {"txFrameSize": 9216, "txFramesPerBlock": 4}})
    with pytest.raises(ConfigError, match="not a whole number of 4096-byte pages"):
        VppConfig.from_options({"afPacketRing": {"txFramesPerBlock": 63}})
    with pytest.raises(ConfigError, match="not a multiple of 16"):
        VppConfig.from_options({"afPacketRing": {"rxFrameSize": 2056}})
    with pytest.raises(ConfigError, match="RX block of 32768 bytes"):
        VppConfig.from_options({"afPacketRing": {"rxFramesPerBlock": 16}})
    with pytest.raises(ConfigError, match="dataplane.afPacketRing: expected"):
        VppConfig.from_options({"afPacketRing": 64})


def test_af_packet_pod_gets_explicit_ring_sizes(fake: FakeVpp, tmp_path: Path) -> None:
    dp = make(fake, tmp_path, af_packet_ring=AfPacketRing(tx_frames_per_block=128))
    dp.wire_workload(wiring("cali1", "10.1.0.1/32"))
    created = next(i.create for i in fake.state.interfaces.values() if i.kind == "af_packet")
    assert (created["rx_frame_size"], created["rx_frames_per_block"], created["tx_frame_size"],
            created["tx_frames_per_block"]) == (2048, 32, 67584, 128)
    assert dp.pods.specs["cali1"].af_packet_ring == (2048, 32, 67584, 128)     # kept with the pod
    dp.stop()


def test_pod_spec_of_an_older_agent_keeps_vpp_default_rings() -> None:
    spec = PodSpec("cali1", "c", "ns", "eth0", ("10.1.0.1/32",), "af_packet", 1500, (1, 1), ("10.1.0.1/32",))
    data = encode(spec)
    del data["af_packet_ring"]
    assert decode(json.loads(json.dumps(data))).iface_value().af_packet_ring == (0, 0, 0, 0)


def test_af_packet_pod_whose_mtu_does_not_fit_is_refused(fake: FakeVpp, tmp_path: Path) -> None:
    dp = make(fake, tmp_path, mtu=65535)
    with pytest.raises(WiringError, match="RX block of 65536 bytes cannot hold"):
        dp.wire_workload(wiring("cali1", "10.1.0.1/32"))
    assert not [i for i in fake.state.interfaces.values() if i.kind == "af_packet"]
    dp.stop()


def test_fake_refuses_ring_geometry_the_kernel_refuses(fake: FakeVpp) -> None:
    c = VppConnection(client_factory=fake.client_factory)
    c.connect()
    with pytest.raises(VppApiError, match="SYSCALL_ERROR_1"):
        c.call("af_packet_create_v3", mode=1, host_if_name="veth0", use_random_hw_addr=True,
               tx_frame_size=67584, tx_frames_per_block=3)
    assert c.call("af_packet_create_v3", mode=1, host_if_name="veth0", use_random_hw_addr=True,
                  tx_frame_size=67584, tx_frames_per_block=64).sw_if_index > 0
    c.disconnect()


# ------------------------------------------------------------------ services

def services(n: int, start: int = 0, backend: str = "10.1.0.{}") -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(start, start + n):
        out.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"s{i}", "namespace": "default"},
                    "spec": {"clusterIP": f"10.96.{i // 250}.{i % 250 + 1}",
                             "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}})
        out.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": f"s{i}-x", "namespace": "default",
                                 "labels": {"kubernetes.io/service-name": f"s{i}"}},
                    "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                    "endpoints": [{"addresses": [backend.format(i % 250 + 1)], "conditions": {"ready": True}}]})
    return out


class PlanCounter:
    """Counts ``plan_service`` calls the dataplane makes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from vppagent.dataplane import service_plan
        self.calls = 0
        real = service_plan.plan_service

        def counted(update: Any, node: str) -> Any:
            self.calls += 1
            return real(update, node)

        monkeypatch.setattr(service_plan, "plan_service", counted)

    def take(self) -> int:
        n, self.calls = self.calls, 0
        return n


def test_services_are_planned_once_per_batch_and_only_when_changed(fake: FakeVpp, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from vppagent.calc.graph import CalcGraph
    plans = PlanCounter(monkeypatch)
    dp = make(fake, tmp_path, node_name="node1")
    graph = CalcGraph("node1")
    graph.apply_all(load_objects(services(60), "t"))
    dp.apply([*graph.flush(), InSync()])
    assert plans.take() == 60                           # was 60 * 61 / 2: every update re-planned all
    assert len(fake.state.translations) == 120          # a translation and an anchor per service
    for r in load_objects(services(1, start=60), "t"):
        graph.update(r)
    dp.apply(graph.flush())
    assert plans.take() == 1
    for r in load_objects(services(1, start=5, backend="10.2.0.{}"), "t"):
        graph.update(r)
    dp.apply(graph.flush())
    assert plans.take() == 1
    paths = {str(p["dst_ep"]["addr"]) for t in fake.state.translations.values()
             if str(t["vip"]["addr"]) == "10.96.0.6" and t["vip"]["port"] == 80 for p in t["paths"]}
    assert paths == {"10.2.0.6"}
    dp.apply([ServiceRemove("default/s7")])
    assert plans.take() == 0 and len(fake.state.translations) == 120
    dp.stop()


def test_ownership_file_is_written_once_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "cnat.json")
    store = OwnershipStore(path)
    writes: list[int] = []
    real = store._save
    monkeypatch.setattr(store, "_save", lambda: (writes.append(1), real())[1])
    store.bind(7)
    assert len(writes) == 1                              # outside a batch: at once, as before
    with store.batch():
        for i in range(50):
            store.add("t", f"k{i}", str(i))
        with store.batch():
            store.discard("t", "k0")
        assert len(writes) == 1
    assert len(writes) == 2
    with pytest.raises(RuntimeError), store.batch():
        store.add("t", "k99")
        raise RuntimeError("boom")
    assert len(writes) == 3                              # what was done before the error is recorded
    again = OwnershipStore(path)
    assert again.vpe_pid == 7 and len(again.items("t")) == 50 and again.has("t", "k99")


def test_dataplane_writes_the_ownership_file_once_per_commit(fake: FakeVpp, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from vppagent.calc.graph import CalcGraph
    writes: list[str] = []
    real = OwnershipStore._save

    def counted(self: OwnershipStore) -> None:
        writes.append(str(self.path))
        real(self)

    monkeypatch.setattr(OwnershipStore, "_save", counted)
    dp = make(fake, tmp_path, node_name="node1")
    graph = CalcGraph("node1")
    graph.apply_all(load_objects(services(40), "t"))
    writes.clear()
    dp.apply([*graph.flush(), InSync()])
    assert len(writes) <= 2                              # was one per translation and route (~120)
    saved = json.loads(Path(tmp_path / "state" / "cnat-ownership.json").read_text())
    assert len(saved["kinds"]["cnat-translation"]) == 80
    dp.stop()


# ------------------------------------------------------------------ pods: tables and state files

def test_pod_add_does_not_dump_every_table(fake: FakeVpp, tmp_path: Path) -> None:
    rec = Recorder(fake)
    dp = make(fake, tmp_path)
    dp.apply([InSync()])
    mark = rec.mark()
    for i in range(1, 4):
        dp.wire_workload(wiring(f"cali{i}", f"10.1.0.{i}/32"))
    assert rec.messages("ip_table_dump", mark) == []
    tables = [dp.pods.specs[f"cali{i}"].tables for i in range(1, 4)]
    assert len(set(tables)) == 3
    # someone else takes the next id: the next resync sees it, and the next pod avoids it
    base = dp.config.vrf_base
    taken = max(t for t, _ in tables) + 1
    dp.conn.call("ip_table_add_del", is_add=True, table={"table_id": taken, "is_ip6": False, "name": "theirs"})
    dp.resync()
    dp.wire_workload(wiring("cali4", "10.1.0.4/32"))
    assert dp.pods.specs["cali4"].tables[0] not in {taken, base} | {t for t, _ in tables}
    dp.stop()


def test_state_files_are_written_once_per_operation(fake: FakeVpp, tmp_path: Path) -> None:
    from vppagent.calc.graph import CalcGraph
    dp = make(fake, tmp_path, node_name="node1")
    graph = CalcGraph("node1")
    graph.apply_all(load_objects([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}], "t"))
    dp.apply([*graph.flush(), InSync()])
    for i in range(1, 4):
        before = dp.store.writes
        dp.wire_workload(wiring(f"cali{i}", f"10.1.0.{i}/32"))
        assert dp.store.writes - before <= 2                 # the pod's spec, the recorded objects
    dp.stop()


def test_state_store_round_trips_with_cached_rows(tmp_path: Path) -> None:
    from vppagent.dataplane.vpp.keys import NpolSetKey, NpolSetValue
    store = StateStore(tmp_path)
    store.new_epoch()
    a, b = NpolSetKey(("s1",), 4), NpolSetKey(("s2",), 4)
    store.put("sets", a, NpolSetValue(frozenset({"10.0.0.1/32"})), 1)
    store.put("sets", b, NpolSetValue(frozenset()), 2)
    store.save()
    again = StateStore(tmp_path)
    again.put("sets", a, NpolSetValue(frozenset({"10.0.0.2/32"})), 3)
    again.remove("sets", b)
    again.save()
    third = StateStore(tmp_path)
    assert third.epoch == store.epoch
    assert third.objects("sets") == {a: (NpolSetValue(frozenset({"10.0.0.2/32"})), 3)}


# ------------------------------------------------------------------ the connection reads the socket

@pytest.fixture
def conn(fake: FakeVpp) -> Iterator[VppConnection]:
    c = VppConnection(client_factory=fake.client_factory, timeout=2.0)
    c.connect()
    yield c
    if c._client is not None:
        c.disconnect()


def test_events_sent_between_calls_are_polled(conn: VppConnection, fake: FakeVpp) -> None:
    conn.call("want_interface_events", enable_disable=1, pid=os.getpid())
    other = VppConnection(client_factory=fake.client_factory)
    other.connect()
    idx = other.call("create_loopback_instance", is_specified=False).sw_if_index
    other.call("sw_interface_set_flags", sw_if_index=idx, flags=1)
    other.call("control_ping")
    other.disconnect()
    assert [(e.sw_if_index, int(e.flags)) for e in conn.poll_events()] == [(idx, 0), (idx, 3)]
    assert conn.poll_events() == []


def test_messages_outside_the_declared_table_are_skipped(conn: VppConnection, fake: FakeVpp) -> None:
    session = next(iter(fake._sessions.values()))
    body = (9999).to_bytes(2, "big") + b"\0" * 8             # an index VPP has, but not one of ours
    session.replies.put(struct.pack(">QII", 0, len(body), 0) + body)
    assert conn.call("control_ping").vpe_pid == fake.pid


def test_large_dumps_and_pipelines_are_read_whole(conn: VppConnection) -> None:
    n = 1500
    conn.pipeline([("create_loopback_instance", {"is_specified": False})] * n)
    assert len(conn.dump("sw_interface_dump")) == n + 1
    assert [r.retval for r in conn.pipeline([("control_ping", {})] * 3000)] == [0] * 3000


def test_vpp_closing_the_socket_between_calls_is_reported(conn: VppConnection, fake: FakeVpp) -> None:
    fake.stop()
    assert conn.poll_events() == []
    assert not conn.connected
    with pytest.raises(VppRestarted):
        conn.call("control_ping")


def test_no_reader_thread_once_connected(fake: FakeVpp) -> None:
    before = {t.ident for t in threading.enumerate()}
    c = VppConnection(client_factory=fake.client_factory)
    c.connect()
    c.pipeline([("control_ping", {})] * 100)
    new = [t.name for t in threading.enumerate() if t.ident not in before]
    assert new in ([], ["fake-vpp-main"])                 # the fake VPP's own thread, nothing of ours
    c.disconnect()
