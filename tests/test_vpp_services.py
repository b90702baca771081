"""Services in VPP against the fake: what the plan renders into (cnat
translations, ICMP-prohibit routes, cnat SNAT) and how the descriptors keep
VPP there (update vs recreate, ownership, adoption, VPP restarts).  Every
message is checked by the fake against the declared table."""

from __future__ import annotations

import ipaddress
from collections import namedtuple
from typing import Any, Iterator

import pytest

from vpp_env import fake_vpp
from vppagent.dataplane.service_plan import Backend, Frontend, plan_service
from vppagent.dataplane.vpp import services as svc
from vppagent.dataplane.vpp.cnat_model import (
    ALLOC_PORT, FLOW_HASH_SRC_IP, INDEX_INVALID, LB_DEFAULT, LB_MAGLEV, decode_translation, encode_translation,
)
from vppagent.dataplane.vpp.cnat_sessions import Session
from vppagent.dataplane.vpp.cnat_snat import TABLE_INCLUDE_V4, TABLE_POD
from vppagent.dataplane.vpp.services import (
    Balancing, CnatInterface, CnatInterfaceKey, CnatPath, OwnershipStore, RejectRouteKey, SnatAddressesKey,
    SnatConfig, SnatExcludeKey, Translation, TranslationKey,
)
from vppagent.manifests.loader import load_objects
from vppagent.model.updates import ServiceUpdate
from vppagent.reconciler import Reconciler
from vppagent.vpp.connection import VppConnection
from vppagent.vpp.fake import FakeVpp

ip = ipaddress.ip_address
net = ipaddress.ip_network
NODE = "n1"
NODE4, NODE6 = ip("192.0.2.1"), ip("2001:db8::1")
REJECT4, REJECT6 = svc.DEFAULT_OPTIONS.reject_net4, svc.DEFAULT_OPTIONS.reject_net6
SNAT = SnatConfig.for_node([NODE4, NODE6], pool_cidrs=[net("10.0.0.0/16"), net("fd00::/64")],
                           service_cidrs=[net("10.96.0.0/12")])


def plan(spec: dict[str, Any] | None = None, endpoints: list[dict[str, Any]] | None = None,
         status: dict[str, Any] | None = None, name: str = "s", family: int = 4) -> list[Frontend]:
    base = {"type": "NodePort", "clusterIP": "10.96.0.10" if family == 4 else "fd96::10",
            "ports": [{"name": "web", "port": 80, "targetPort": 8080, "nodePort": 30080}]}
    base.update(spec or {})
    eps = endpoints if endpoints is not None else [
        {"addresses": ["10.0.0.1" if family == 4 else "fd00::1"], "nodeName": "n1", "conditions": {"ready": True}},
        {"addresses": ["10.0.0.2" if family == 4 else "fd00::2"], "nodeName": "n2", "conditions": {"ready": True}},
    ]
    objs = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "n"},
             "spec": base, "status": status or {}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": f"{name}-a", "namespace": "n", "labels": {"kubernetes.io/service-name": name}},
             "addressType": f"IPv{family}", "ports": [{"name": "web", "port": 8080, "protocol": "TCP"}],
             "endpoints": eps}]
    s, e = load_objects(objs)
    return plan_service(ServiceUpdate(s.key, s, (e,)), NODE)


def render(fes: list[Frontend], snat: SnatConfig | None = SNAT) -> dict[TranslationKey, Translation]:
    return svc.desired_translations(fes, [NODE4, NODE6], snat=snat)


def paths(t: Translation) -> list[tuple[str, int, str | None]]:
    return [(str(p.ip), p.port, None if p.snat is None else str(p.snat)) for p in t.paths]


def k(vip: str, port: int, proto: int = 6) -> TranslationKey:
    return TranslationKey(ip(vip), port, proto)


def sink(key: TranslationKey) -> str:
    return str(svc.DEFAULT_OPTIONS.sink(key))


# ------------------------------------------------------------------ rendering

def test_cluster_ip_translates_to_every_backend_without_snat() -> None:
    tr = render(plan({"type": "ClusterIP"}))
    assert set(tr) == {k("10.96.0.10", 80), k("10.96.0.10", 0)}
    web = tr[k("10.96.0.10", 80)]
    assert paths(web) == [("10.0.0.1", 8080, None), ("10.0.0.2", 8080, None)]
    assert web.balancing is Balancing.ECMP and web.role == "backends"
    anchor = tr[k("10.96.0.10", 0)]
    assert anchor.role == "anchor" and paths(anchor) == [(sink(k("10.96.0.10", 0)), 0, None)]
    assert ip(sink(k("10.96.0.10", 0))) in REJECT4


def test_internal_traffic_policy_local_keeps_local_backends() -> None:
    tr = render(plan({"type": "ClusterIP", "internalTrafficPolicy": "Local"}))
    assert paths(tr[k("10.96.0.10", 80)]) == [("10.0.0.1", 8080, None)]


def test_node_port_cluster_masquerades_to_the_node_address_per_family() -> None:
    tr = render(plan())
    np = tr[k(str(NODE4), 30080)]
    assert paths(np) == [("10.0.0.1", 8080, str(NODE4)), ("10.0.0.2", 8080, str(NODE4))]
    assert TranslationKey(NODE6, 30080, 6) not in tr          # an IPv4 service: no IPv6 NodePort


def test_node_port_local_keeps_the_client_address_and_local_backends() -> None:
    tr = render(plan({"externalTrafficPolicy": "Local"}))
    assert paths(tr[k(str(NODE4), 30080)]) == [("10.0.0.1", 8080, None)]
    assert len(tr[k("10.96.0.10", 80)].paths) == 2             # ClusterIP unaffected


def test_external_and_load_balancer_ips_masquerade_with_the_snat_address() -> None:
    fes = plan({"type": "LoadBalancer", "externalIPs": ["198.51.100.1"]},
               status={"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}})
    tr = render(fes, snat=SnatConfig(ip4=ip("192.0.2.77")))                      # type: ignore[arg-type]
    for vip in ("198.51.100.1", "203.0.113.9"):
        assert {p[2] for p in paths(tr[k(vip, 80)])} == {"192.0.2.77"}
    tr = render(fes, snat=None)                       # no SNAT config: the node's first address
    assert {p[2] for p in paths(tr[k("198.51.100.1", 80)])} == {str(NODE4)}
    local = render(plan({"type": "LoadBalancer", "externalIPs": ["198.51.100.1"],
                         "externalTrafficPolicy": "Local"}))
    assert paths(local[k("198.51.100.1", 80)]) == [("10.0.0.1", 8080, None)]


def test_session_affinity_is_maglev_on_the_source_address() -> None:
    tr = render(plan({"sessionAffinity": "ClientIP"}))
    key = k("10.96.0.10", 80)
    assert tr[key].balancing is Balancing.CLIENT_IP
    wire = encode_translation(key, tr[key])
    assert wire["lb_type"] == LB_MAGLEV and wire["flow_hash_config"] == FLOW_HASH_SRC_IP
    plain = encode_translation(key, render(plan())[key])
    assert plain["lb_type"] == LB_DEFAULT and plain["flow_hash_config"] == 0


def test_no_endpoints_never_renders_an_empty_translation() -> None:
    fes = plan({"type": "LoadBalancer", "externalIPs": ["198.51.100.1", str(NODE4)]}, endpoints=[],
               status={"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}})
    assert all(f.rejects for f in fes)
    tr = render(fes)
    for vip in ("10.96.0.10", "198.51.100.1", "203.0.113.9"):     # guarded: the guard route refuses
        assert k(vip, 80) not in tr and tr[k(vip, 0)].role == "anchor"
    for key in (k(str(NODE4), 30080), k(str(NODE4), 80)):         # node address: a reject sink each
        assert tr[key].role == "reject" and paths(tr[key]) == [(sink(key), key.port, None)]
    assert sink(k(str(NODE4), 30080)) != sink(k(str(NODE4), 80))  # VPP rate-limits per destination
    assert k(str(NODE4), 0) not in tr                             # node addresses are never guarded
    assert all(t.paths for t in tr.values())
    routes = svc.desired_reject_routes(fes, [NODE4, NODE6], tr)
    assert set(routes) == {RejectRouteKey(net(p)) for p in
                           ("10.96.0.10/32", "198.51.100.1/32", "203.0.113.9/32", str(REJECT4))}
    with pytest.raises(ValueError):
        Translation(())


def test_node_address_rejects_can_be_left_to_the_node() -> None:
    fes = plan(endpoints=[])
    options = svc.ServiceOptions(node_address_rejects=False)
    tr = svc.desired_translations(fes, [NODE4, NODE6], options=options)
    assert set(tr) == {k("10.96.0.10", 0)}                          # only the ClusterIP anchor
    routes = svc.desired_reject_routes(fes, [NODE4, NODE6], tr, options=options)
    assert set(routes) == {RejectRouteKey(net("10.96.0.10/32")), RejectRouteKey(REJECT4)}


def test_ipv6_service() -> None:
    fes = plan(family=6)
    tr = render(fes)
    assert paths(tr[k("fd96::10", 80)]) == [("fd00::1", 8080, None), ("fd00::2", 8080, None)]
    assert {p[2] for p in paths(tr[TranslationKey(NODE6, 30080, 6)])} == {str(NODE6)}
    assert paths(tr[k("fd96::10", 0)]) == [(sink(k("fd96::10", 0)), 0, None)]
    assert ip(sink(k("fd96::10", 0))) in REJECT6
    wire = encode_translation(k("fd96::10", 80), tr[k("fd96::10", 80)])
    assert wire["vip"]["if_af"] == 1 and wire["paths"][0]["src_ep"]["addr"] == "::"
    rejecting = render(plan(family=6, endpoints=[]))
    key = TranslationKey(NODE6, 30080, 6)
    assert paths(rejecting[key]) == [(sink(key), 30080, None)]


def test_two_services_on_one_external_ip_port_first_wins() -> None:
    a = plan({"type": "ClusterIP", "externalIPs": ["198.51.100.1"]}, name="a")
    b = plan({"type": "ClusterIP", "clusterIP": "10.96.0.11", "externalIPs": ["198.51.100.1"]}, name="b",
             endpoints=[{"addresses": ["10.0.0.9"], "nodeName": "n1"}])
    tr = render(a + b)
    assert tr[k("198.51.100.1", 80)].service == "n/a"


def test_wire_form_round_trips_and_pins_fixed_fields() -> None:
    key = k(str(NODE4), 30080)
    value = render(plan())[key]
    wire = encode_translation(key, value)
    assert wire["is_real_ip"] == 1 and wire["flags"] == ALLOC_PORT
    assert wire["vip"]["sw_if_index"] == INDEX_INVALID
    assert all(p["dst_ep"]["sw_if_index"] == INDEX_INVALID and p["src_ep"]["sw_if_index"] == INDEX_INVALID
               for p in wire["paths"])
    details = _as_details(wire, tid=7, path_flags=4)      # VPP adds CNAT_TRK_ACTIVE to dumped paths
    assert decode_translation(details) == (key, value, 7)


def _as_details(wire: dict[str, Any], tid: int, path_flags: int) -> Any:
    Ep = namedtuple("Ep", "addr sw_if_index if_af port")
    Path = namedtuple("Path", "dst_ep src_ep flags")
    T = namedtuple("T", "vip id ip_proto is_real_ip flags lb_type n_paths flow_hash_config paths")
    ep = lambda e: Ep(ip(e["addr"]), e["sw_if_index"], e["if_af"], e["port"])   # noqa: E731
    ps = [Path(ep(p["dst_ep"]), ep(p["src_ep"]), path_flags) for p in wire["paths"]]
    return T(ep(wire["vip"]), tid, wire["ip_proto"], 0, 0, wire["lb_type"], len(ps), 0, ps)


def test_session_ports_are_byte_swapped_back() -> None:
    Tup = namedtuple("Tup", "addr port ip_proto")
    S = namedtuple("S", "tuple ts_index flags")
    D = namedtuple("D", "session")
    s = Session.from_details(D(S(Tup([ip("10.0.0.5"), ip("10.96.0.10")], [0x3412, 0x5000], 17), 1, 0)))
    assert (s.sport, s.dport, s.protocol) == (0x1234, 80, 17)
    assert s.involves(ip("10.96.0.10"), 80) and not s.involves(ip("10.96.0.10"), 81)


# ------------------------------------------------------------ against the fake

@pytest.fixture
def fake() -> Iterator[FakeVpp]:
    with fake_vpp(host_interfaces={"eth0", "veth-a", "veth-b"}) as f:
        yield f
    assert f.crashes == 0, "a request would have crashed VPP (cnat_translation_update without paths?)"


@pytest.fixture
def conn(fake: FakeVpp) -> Iterator[VppConnection]:
    c = VppConnection(client_factory=fake.client_factory, timeout=2.0)
    c.connect()
    yield c
    c.disconnect()


class Agent:
    """A reconciler with the service descriptors, as the VPP dataplane uses them."""

    def __init__(self, conn: VppConnection, store: OwnershipStore | None = None) -> None:
        self.store = store if store is not None else OwnershipStore()
        self.engine = Reconciler(seed=1)
        for d in svc.service_descriptors(conn, store=self.store):
            self.engine.register(d)
        self.keys: set[Any] = set()

    def apply(self, state: dict[Any, Any]) -> Any:
        with self.engine.transaction() as txn:
            for key in self.keys - set(state):
                txn.delete(key)
            for key, value in state.items():
                txn.set(key, value)
        self.keys = set(state)
        self.engine.mark_in_sync()
        report = txn.report if txn.report is not None and not txn.report.deferred else self.engine.commit()
        assert not report.errors and report.failed == 0, (report, self.engine.dump())
        return report


def state(fes: list[Frontend], snat: SnatConfig | None = SNAT) -> dict[Any, Any]:
    return svc.desired_service_state(fes, [NODE4, NODE6], snat=snat)


def vpp_translations(fake: FakeVpp) -> dict[tuple[str, int, int], dict[str, Any]]:
    return {(str(t["vip"]["addr"]), t["vip"]["port"], t["ip_proto"]): t for t in fake.state.translations.values()}


def vpp_routes(fake: FakeVpp, af: int = 4) -> dict[str, int]:
    return {str(n): r.paths[0].get("type", 0) for n, r in fake.state.routes[(af, 0)].items() if r.src == 8}


def test_programs_translations_routes_and_snat(conn: VppConnection, fake: FakeVpp) -> None:
    agent = Agent(conn)
    report = agent.apply(state(plan()))
    assert report.created == len(agent.keys)
    tr = vpp_translations(fake)
    assert set(tr) == {("10.96.0.10", 80, 6), ("10.96.0.10", 0, 6), (str(NODE4), 30080, 6)}
    np = tr[(str(NODE4), 30080, 6)]
    assert np["is_real_ip"] == 1 and np["flags"] == ALLOC_PORT and np["lb_type"] == LB_DEFAULT
    assert [str(p["src_ep"]["addr"]) for p in np["paths"]] == [str(NODE4)] * 2
    assert vpp_routes(fake) == {"10.96.0.10/32": 6, str(REJECT4): 6}
    assert fake.state.snat["flags"] == 6 and fake.state.snat["sw_if_index"] == INDEX_INVALID
    assert str(fake.state.snat["snat_ip4"]) == str(NODE4) and str(fake.state.snat["snat_ip6"]) == str(NODE6)
    assert fake.state.snat_policy == 2
    assert fake.state.snat_exclude == {net("10.0.0.0/16"), net("fd00::/64"), net("10.96.0.0/12"),
                                       net(f"{NODE4}/32"), net(f"{NODE6}/128")}
    again = agent.engine.resync()
    assert again.ops == 0 and again.adopted == len(agent.keys)


def test_backend_change_updates_in_place_and_affinity_recreates(conn: VppConnection, fake: FakeVpp) -> None:
    agent = Agent(conn)
    agent.apply(state(plan({"type": "ClusterIP"})))
    tid = {key: t["id"] for key, t in vpp_translations(fake).items()}[("10.96.0.10", 80, 6)]
    report = agent.apply(state(plan({"type": "ClusterIP"}, endpoints=[
        {"addresses": ["10.0.0.1"], "nodeName": "n1"}, {"addresses": ["10.0.0.3"], "nodeName": "n1"}])))
    assert (report.updated, report.recreated, report.created, report.deleted) == (1, 0, 0, 0)
    web = vpp_translations(fake)[("10.96.0.10", 80, 6)]
    assert web["id"] == tid and [str(p["dst_ep"]["addr"]) for p in web["paths"]] == ["10.0.0.1", "10.0.0.3"]
    report = agent.apply(state(plan({"type": "ClusterIP", "sessionAffinity": "ClientIP"})))
    assert (report.recreated, report.updated) == (1, 0)       # lb_type needs a new translation
    web = vpp_translations(fake)[("10.96.0.10", 80, 6)]
    assert web["lb_type"] == LB_MAGLEV and web["flow_hash_config"] == FLOW_HASH_SRC_IP


def test_losing_every_endpoint_switches_to_reject_and_back(conn: VppConnection, fake: FakeVpp) -> None:
    agent = Agent(conn)
    agent.apply(state(plan()))
    agent.apply(state(plan(endpoints=[])))
    tr = vpp_translations(fake)
    assert ("10.96.0.10", 80, 6) not in tr                           # guard route refuses
    assert [str(p["dst_ep"]["addr"]) for p in tr[(str(NODE4), 30080, 6)]["paths"]] == [sink(k(str(NODE4), 30080))]
    assert all(t["paths"] for t in fake.state.translations.values())
    agent.apply(state(plan()))
    assert [str(p["dst_ep"]["addr"]) for p in vpp_translations(fake)[(str(NODE4), 30080, 6)]["paths"]] == \
        ["10.0.0.1", "10.0.0.2"]


def test_service_removal_deletes_only_ours(conn: VppConnection, fake: FakeVpp) -> None:
    foreign = {"vip": {"addr": "198.51.100.50", "sw_if_index": INDEX_INVALID, "if_af": 0, "port": 53},
               "id": 0, "ip_proto": 17, "is_real_ip": 0, "flags": 0, "lb_type": 0, "flow_hash_config": 0,
               "paths": [{"dst_ep": {"addr": "10.0.0.53", "sw_if_index": INDEX_INVALID, "if_af": 0, "port": 53},
                          "src_ep": {"addr": "0.0.0.0", "sw_if_index": INDEX_INVALID, "if_af": 0, "port": 0},
                          "flags": 0}]}
    conn.call("cnat_translation_update", translation=foreign)
    conn.call("ip_route_add_del", is_add=True, is_multipath=False, route={
        "table_id": 0, "prefix": "198.51.100.60/32",
        "paths": [{"sw_if_index": INDEX_INVALID, "type": 6, "weight": 1}]})
    agent = Agent(conn)
    agent.apply(state(plan()))
    agent.apply({})
    assert set(vpp_translations(fake)) == {("198.51.100.50", 53, 17)}
    assert vpp_routes(fake) == {"198.51.100.60/32": 6}
    assert not fake.state.snat_exclude
    assert str(fake.state.snat["snat_ip4"]) == str(NODE4)       # never removed (see cnat_snat)
    assert agent.engine.resync().ops == 0


def test_restarted_agent_adopts_and_cleans_up_with_a_file_store(conn: VppConnection, fake: FakeVpp,
                                                               tmp_path: Any) -> None:
    path = str(tmp_path / "cnat.json")
    first = Agent(conn, OwnershipStore(path))
    two = plan() + plan({"type": "ClusterIP", "clusterIP": "10.96.0.11"}, name="t",
                        endpoints=[{"addresses": ["10.0.0.7"], "nodeName": "n1"}])
    first.apply(state(two))
    before = vpp_translations(fake)
    updates = fake.calls["cnat_translation_update"]

    second = Agent(conn, OwnershipStore(path))             # the agent restarts; VPP does not
    desired = state(plan())                                # service t went away meanwhile
    for key, value in desired.items():
        second.engine.set(key, value)
    second.engine.mark_in_sync()
    report = second.engine.commit()
    assert report.resync and report.adopted == len(desired)
    assert report.deleted == 3                             # t's translation, anchor and guard route
    assert report.created == report.updated == 0
    after = vpp_translations(fake)
    assert set(before) - set(after) == {("10.96.0.11", 80, 6), ("10.96.0.11", 0, 6)}
    assert all(after[key]["id"] == before[key]["id"] for key in after)
    assert fake.calls["cnat_translation_update"] == updates             # adopted, not rewritten


def test_restarted_agent_without_records_leaves_unknown_objects_alone(conn: VppConnection, fake: FakeVpp) -> None:
    Agent(conn).apply(state(plan()))
    second = Agent(conn)                                   # in-memory records are gone
    for key, value in state(plan()).items():
        second.engine.set(key, value)
    second.engine.mark_in_sync()
    report = second.engine.commit()
    assert report.failed == 0 and report.deleted == 0
    tr = vpp_translations(fake)
    assert len(tr) == 3 and len({t["id"] for t in tr.values()}) == 3     # rewritten in place: same ids
    assert second.engine.resync().ops == 0                 # and now owned


def test_vpp_restart_reprograms_everything(conn: VppConnection, fake: FakeVpp) -> None:
    agent = Agent(conn)
    agent.apply(state(plan({"sessionAffinity": "ClientIP"})))
    fake.restart()
    assert conn.reconnect(max_attempts=3, sleep=lambda s: None)
    assert not fake.state.translations
    report = agent.engine.resync()
    assert report.created == len(agent.keys) and report.failed == 0
    assert vpp_translations(fake)[("10.96.0.10", 80, 6)]["lb_type"] == LB_MAGLEV
    assert fake.state.snat_policy == 2 and len(fake.state.snat_exclude) == 5


def test_a_failed_request_in_a_pipeline_fails_only_its_own_key(conn: VppConnection, fake: FakeVpp) -> None:
    agent = Agent(conn)
    fes = plan({"type": "ClusterIP"}) + plan({"type": "ClusterIP", "clusterIP": "10.96.0.11"}, name="t")
    fake.fail("cnat_translation_update", "INVALID_VALUE", nth=2)
    with agent.engine.transaction() as txn:
        for key, value in state(fes, snat=None).items():
            txn.set(key, value)
    agent.engine.mark_in_sync()
    report = agent.engine.commit()
    assert report.failed == 1
    failed = [key for key in agent.engine.keys() if agent.engine.state(key).state.value == "failed"]
    assert len(failed) == 1 and isinstance(failed[0], TranslationKey)
    assert len(fake.state.translations) == 3
    for key in agent.engine.keys():
        if key not in failed and isinstance(key, TranslationKey):
            assert agent.engine.metadata(key) == vpp_translations(fake)[(str(key.vip), key.port, 6)]["id"]


def test_sink_translations_wait_for_the_sink_route(conn: VppConnection, fake: FakeVpp) -> None:
    agent = Agent(conn)
    fake.fail("ip_route_add_del", "INVALID_VALUE", times=None)
    with agent.engine.transaction() as txn:
        for key, value in state(plan(endpoints=[]), snat=None).items():
            txn.set(key, value)
    agent.engine.mark_in_sync()
    agent.engine.commit()
    assert not fake.state.translations                     # anchor and NodePort reject need the sink
    assert agent.engine.state(TranslationKey(NODE4, 30080, 6)).state.value == "pending"


def test_interface_roles(conn: VppConnection, fake: FakeVpp) -> None:
    pod = conn.call("af_packet_create_v3", host_if_name="veth-a", mode=1, use_random_hw_addr=True,
                    flags=0, num_rx_queues=1, num_tx_queues=1).sw_if_index
    agent = Agent(conn)
    role = CnatInterface(feature=True, pod=True, nat_outgoing=frozenset({4}))
    agent.apply({**state([]), CnatInterfaceKey(pod): role})
    assert fake.state.snat_interfaces == {(pod, TABLE_POD), (pod, TABLE_INCLUDE_V4)}
    assert fake.state.cnat_features == {pod}
    agent.apply({**state([]), CnatInterfaceKey(pod): CnatInterface(feature=True, pod=True)})
    assert fake.state.snat_interfaces == {(pod, TABLE_POD)}
    assert agent.engine.resync().ops == 0
    agent.apply(state([]))
    assert not fake.state.snat_interfaces and not fake.state.cnat_features


def test_interface_roles_wait_for_the_snat_entry_and_their_interface(conn: VppConnection, fake: FakeVpp) -> None:
    agent = Agent(conn)
    iface = CnatInterfaceKey(5)
    role = CnatInterface(pod=True, after=("interface-key",))
    assert set(agent.engine.descriptor(iface).dependencies(iface, role)) == {"interface-key", SnatAddressesKey()}
    exclude = SnatExcludeKey(net("10.0.0.0/8"))
    assert list(agent.engine.descriptor(exclude).dependencies(exclude, None)) == [SnatAddressesKey()]


def test_snat_addresses_follow_the_config_but_the_entry_stays(conn: VppConnection, fake: FakeVpp) -> None:
    agent = Agent(conn)
    agent.apply(state(plan()))
    moved = SnatConfig.for_node([ip("192.0.2.9")], pool_cidrs=SNAT.pool_cidrs)
    report = agent.apply(state(plan(), snat=moved))
    assert report.updated == 1 and str(fake.state.snat["snat_ip4"]) == "192.0.2.9"
    assert fake.state.snat_exclude == {net("10.0.0.0/16"), net("fd00::/64"), net("192.0.2.9/32")}
    agent.apply(state(plan(), snat=None))
    assert str(fake.state.snat["snat_ip4"]) == "192.0.2.9" and not fake.state.snat_exclude
    report = agent.apply(state(plan()))
    assert report.created == 1 + 5 and str(fake.state.snat["snat_ip4"]) == str(NODE4)


def test_no_snat_config_means_no_snat_entry(conn: VppConnection, fake: FakeVpp) -> None:
    Agent(conn).apply(state(plan(), snat=None))
    assert not fake.state.snat and not fake.state.snat_exclude
    assert svc.desired_snat(SnatConfig()) == {}


def test_stale_udp_sessions_are_read_back(conn: VppConnection) -> None:
    assert svc.stale_sessions(conn, [Backend(ip("10.0.0.1"), 53)]) == []


def test_describe_is_readable() -> None:
    lines = svc.describe(render(plan()))
    assert any("192.0.2.1:30080/TCP ecmp [10.0.0.1:8080 snat 192.0.2.1" in line for line in lines)
    assert CnatPath(ip("10.0.0.1"), 1) < CnatPath(ip("10.0.0.2"), 1)
