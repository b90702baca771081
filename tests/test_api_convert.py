"""Model <-> protobuf conversion: exact round trips, validation with field paths,
batch reference checks, and the code generator."""

from __future__ import annotations

import ipaddress
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vppagent.api import gen_modules, protogen
from vppagent.api.convert import (
    key_from_proto, key_to_proto, keys_from_proto, update_from_proto, update_to_proto,
    updates_from_proto, validate_batch,
)
from vppagent.model.errors import ValidationError
from vppagent.model.resources import (
    Action, EndpointAddress, EndpointPort, EndpointSlice, IPPool, NamedPort, PortRange, Service,
    ServicePort, TierDefault,
)
from vppagent.model.state import DataplaneState
from vppagent.model.updates import (
    ConfigUpdate, HostEndpointInfo, HostEndpointRemove, HostEndpointUpdate, InSync, IPPoolRemove,
    IPPoolUpdate, RouteEncap, RouteInfo, RouteRemove, RouteUpdate, IPSetDeltaUpdate, IPSetRemove, IPSetType, IPSetUpdate, PolicyID, PolicyRemove,
    PolicyUpdate, ProfileRemove, ProfileUpdate, RenderedPolicy, RenderedRule, RuleOrigin,
    ServiceRemove, ServiceUpdate, TierInfo, WorkloadEndpointInfo, WorkloadEndpointRemove,
    WorkloadEndpointUpdate,
)
from vppagent.selector import ALL, parse

pb = gen_modules().dataplane_pb2

# ---------------------------------------------------------------- strategies

ident = st.text(alphabet=string.ascii_letters + string.digits + "-_./:", min_size=1, max_size=12)
name_or_empty = st.text(alphabet=string.ascii_lowercase + string.digits + "-", max_size=10)
free_text = st.text(max_size=12)
v4_net = st.builds(
    lambda a, p: ipaddress.IPv4Network((a, p), strict=False), st.integers(0, 2**32 - 1), st.integers(0, 32))
v6_net = st.builds(
    lambda a, p: ipaddress.IPv6Network((a, p), strict=False), st.integers(0, 2**128 - 1), st.integers(0, 128))
any_net = st.one_of(v4_net, v6_net)
any_ip = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))
port = st.integers(0, 65535)
port_range = st.integers(0, 65535).flatmap(lambda a: st.integers(a, 65535).map(lambda b: PortRange(a, b)))
protocol_number = st.integers(0, 255)
pairs = st.dictionaries(ident, free_text, max_size=4).map(lambda d: tuple(d.items()))
tuple_of = lambda s, n=3: st.lists(s, max_size=n).map(tuple)  # noqa: E731
mac = st.one_of(
    st.just(""),
    st.lists(st.integers(0, 255), min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b)),
)


@st.composite
def rules(draw: st.DrawFn) -> RenderedRule:
    ipv = draw(st.sampled_from([None, 4, 6]))
    nets = {None: any_net, 4: v4_net, 6: v6_net}[ipv]
    icmp_protocols = {None: [1, 58], 4: [1], 6: [58]}[ipv]
    protocol = draw(st.one_of(
        st.none(), st.sampled_from([6, 17, 132, 136]), st.sampled_from(icmp_protocols), protocol_number))
    kw = {}
    ports_ok = protocol is None or protocol in (6, 17, 132, 136)
    icmp_ok = protocol is None or protocol in icmp_protocols
    for name in ("src_ports", "not_src_ports", "dst_ports", "not_dst_ports"):
        kw[name] = draw(tuple_of(port_range)) if ports_ok else ()
    for t, c in (("icmp_type", "icmp_code"), ("not_icmp_type", "not_icmp_code")):
        kw[t] = draw(st.one_of(st.none(), st.integers(0, 255))) if icmp_ok else None
        kw[c] = draw(st.one_of(st.none(), st.integers(0, 255))) if kw[t] is not None else None
    for name in ("src_nets", "not_src_nets", "dst_nets", "not_dst_nets"):
        kw[name] = draw(tuple_of(nets))
    for name in (
        "src_named_port_ip_set_ids", "not_src_named_port_ip_set_ids", "dst_named_port_ip_set_ids",
        "not_dst_named_port_ip_set_ids", "src_ip_set_ids", "not_src_ip_set_ids", "dst_ip_set_ids",
        "not_dst_ip_set_ids",
    ):
        kw[name] = draw(tuple_of(ident, 2))
    return RenderedRule(
        action=draw(st.sampled_from(list(Action))),
        origin=RuleOrigin(draw(free_text), draw(st.integers(0, 2**32 - 1))),
        ip_version=ipv, protocol=protocol,
        not_protocol=draw(st.one_of(st.none(), protocol_number)),
        **kw,
    )


tiers = st.lists(
    st.builds(
        TierInfo, name=ident, default_action=st.sampled_from(list(TierDefault)),
        ingress_policies=tuple_of(ident), egress_policies=tuple_of(ident),
    ),
    max_size=3, unique_by=lambda t: t.name,
).map(tuple)
named_ports = tuple_of(st.builds(NamedPort, name=ident, protocol=protocol_number, port=port))

ip_and_port_member = st.builds(
    lambda ip, proto, p: f"{ip},{proto}:{p}", any_ip, st.sampled_from(["tcp", "udp", "sctp"]), port)
net_member = any_net.map(str)

ipset_update = st.one_of(
    st.builds(IPSetUpdate, id=ident, type=st.just(IPSetType.NET),
              members=st.frozensets(net_member, max_size=5)),
    st.builds(IPSetUpdate, id=ident, type=st.just(IPSetType.IP_AND_PORT),
              members=st.frozensets(ip_and_port_member, max_size=5)),
)
ipset_delta = st.one_of(
    st.tuples(st.frozensets(net_member, max_size=4), st.frozensets(net_member, max_size=4)),
    st.tuples(st.frozensets(ip_and_port_member, max_size=4), st.frozensets(ip_and_port_member, max_size=4)),
).flatmap(lambda ar: st.builds(IPSetDeltaUpdate, id=ident, added=st.just(ar[0] - ar[1]), removed=st.just(ar[1])))

policy_id = st.builds(PolicyID, tier=ident, name=ident)


@st.composite
def rendered_policies(draw: st.DrawFn) -> RenderedPolicy:
    untracked = draw(st.booleans())
    pre_dnat = draw(st.booleans()) and not untracked
    return RenderedPolicy(
        inbound_rules=draw(tuple_of(rules(), 2)),
        outbound_rules=() if pre_dnat else draw(tuple_of(rules(), 2)),
        untracked=untracked, pre_dnat=pre_dnat, apply_on_forward=draw(st.booleans()),
    )


wep_info = st.builds(
    WorkloadEndpointInfo, namespace=name_or_empty, pod=name_or_empty, node=name_or_empty,
    endpoint=name_or_empty, interface_name=name_or_empty, mac=mac, nets=tuple_of(any_net),
    profile_ids=tuple_of(ident), tiers=tiers, ports=named_ports, labels=pairs, annotations=pairs,
)
hep_info = st.builds(
    HostEndpointInfo, name=ident, node=name_or_empty, interface_name=name_or_empty,
    expected_ips=tuple_of(any_ip), profile_ids=tuple_of(ident), tiers=tiers,
    untracked_tiers=tiers, pre_dnat_tiers=tiers, forward_tiers=tiers,
)

service_ports = st.lists(
    st.builds(
        ServicePort, name=name_or_empty, protocol=st.sampled_from([6, 17, 132]), port=port,
        target_port=st.one_of(port, ident), node_port=st.one_of(st.none(), port),
    ),
    max_size=3, unique_by=lambda p: (p.protocol, p.port),
).map(tuple)
services = st.builds(
    Service, namespace=ident, name=ident,
    type=st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]),
    cluster_ips=tuple_of(any_ip), ports=service_ports, external_ips=tuple_of(any_ip),
    load_balancer_ips=tuple_of(any_ip), session_affinity=st.booleans(),
    affinity_timeout=st.integers(0, 86400), external_traffic_local=st.booleans(),
    internal_traffic_local=st.booleans(), selector=pairs,
)


@st.composite
def slices(draw: st.DrawFn) -> EndpointSlice:
    addr_type = draw(st.sampled_from(["IPv4", "IPv6", "FQDN"]))
    addr = {"IPv4": st.ip_addresses(v=4), "IPv6": st.ip_addresses(v=6), "FQDN": any_ip}[addr_type]
    endpoints = draw(tuple_of(st.builds(
        EndpointAddress, addresses=tuple_of(addr), ready=st.booleans(), serving=st.booleans(),
        terminating=st.booleans(), node=name_or_empty, target=name_or_empty,
    )))
    ports = draw(tuple_of(st.builds(EndpointPort, name=name_or_empty, protocol=protocol_number, port=port)))
    return EndpointSlice(
        namespace=draw(name_or_empty), name=draw(ident), service=draw(name_or_empty),
        address_type=addr_type, endpoints=endpoints, ports=ports,
    )


@st.composite
def pools(draw: st.DrawFn) -> IPPool:
    cidr = draw(any_net)
    return IPPool(
        name=draw(ident), cidr=cidr,
        block_size=draw(st.integers(cidr.prefixlen, cidr.max_prefixlen)),
        nat_outgoing=draw(st.booleans()), disabled=draw(st.booleans()),
        node_selector=draw(st.sampled_from(["all()", "has(a)", "zone == 'b'", "x in {'1', '2'}"]).map(parse)),
        ipip_mode=draw(st.sampled_from(["Never", "Always", "CrossSubnet"])),
        vxlan_mode=draw(st.sampled_from(["Never", "Always", "CrossSubnet"])),
    )


updates = st.one_of(
    st.builds(ConfigUpdate, config=pairs),
    st.just(InSync()),
    ipset_update,
    ipset_delta,
    st.builds(IPSetRemove, id=ident),
    st.builds(PolicyUpdate, id=policy_id, policy=rendered_policies()),
    st.builds(PolicyRemove, id=policy_id),
    st.builds(ProfileUpdate, id=ident, inbound_rules=tuple_of(rules(), 2), outbound_rules=tuple_of(rules(), 2)),
    st.builds(ProfileRemove, id=ident),
    st.builds(WorkloadEndpointUpdate, id=ident, endpoint=wep_info),
    st.builds(WorkloadEndpointRemove, id=ident),
    st.builds(HostEndpointUpdate, id=ident, endpoint=hep_info),
    st.builds(HostEndpointRemove, id=ident),
    st.builds(ServiceUpdate, id=ident, service=services, slices=tuple_of(slices(), 2)),
    st.builds(ServiceRemove, id=ident),
    st.builds(IPPoolUpdate, id=ident, pool=pools()),
    st.builds(IPPoolRemove, id=ident),
)


# ---------------------------------------------------------------- round trips

@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(updates)
def test_round_trip_every_update_type(u):
    msg = update_to_proto(u)
    assert update_from_proto(msg) == u
    # ...and through the wire bytes too.
    again = pb.Update.FromString(msg.SerializeToString())
    assert update_from_proto(again) == u


@settings(max_examples=100, deadline=None)
@given(st.lists(updates, max_size=5))
def test_round_trip_lists(us):
    assert updates_from_proto(update_to_proto(u) for u in us) == us


def test_every_oneof_field_is_covered():
    covered = {
        ConfigUpdate(), InSync(), IPSetUpdate("s", IPSetType.NET, frozenset()),
        IPSetDeltaUpdate("s"), IPSetRemove("s"), PolicyUpdate(PolicyID("t", "p"), RenderedPolicy()),
        PolicyRemove(PolicyID("t", "p")), ProfileUpdate("p"), ProfileRemove("p"),
        WorkloadEndpointUpdate("w", WorkloadEndpointInfo("n", "p", "node", "eth0", "cali1")),
        WorkloadEndpointRemove("w"), HostEndpointUpdate("h", HostEndpointInfo("h", "node", "eth0")),
        HostEndpointRemove("h"), ServiceUpdate("s", Service("ns", "n")), ServiceRemove("s"),
        IPPoolUpdate("p", IPPool("p", ipaddress.ip_network("10.0.0.0/16"), 26)), IPPoolRemove("p"),
        RouteUpdate("10.1.0.0/26", RouteInfo(ipaddress.ip_network("10.1.0.0/26"), "n2",
                                             ipaddress.ip_address("192.168.0.2"), RouteEncap.VXLAN)),
        RouteRemove("10.1.0.0/26"),
    }
    kinds = {update_to_proto(u).WhichOneof("kind") for u in covered}
    assert kinds == {f.name for f in pb.Update.DESCRIPTOR.oneofs_by_name["kind"].fields}
    for u in covered:
        assert update_from_proto(update_to_proto(u)) == u


def test_defaults_for_unset_optional_fields():
    m = pb.Update()
    m.service.id = "ns/svc"
    m.service.service.namespace = "ns"
    m.service.service.name = "svc"
    m.service.service.ports.add(protocol=6, port=80)
    sl = m.service.slices.add(name="svc-abc")
    sl.endpoints.add(addresses=["10.0.0.1"])
    u = update_from_proto(m)
    assert u.service.type == "ClusterIP"
    assert u.service.affinity_timeout == 10800
    assert u.service.ports[0].target_port == 80
    assert u.slices[0].address_type == "IPv4"
    assert u.slices[0].endpoints[0].ready and u.slices[0].endpoints[0].serving

    m = pb.Update()
    m.ip_pool.id = "p"
    m.ip_pool.pool.name = "p"
    m.ip_pool.pool.cidr = "fd00::/48"
    u = update_from_proto(m)
    assert u.pool.block_size == 122
    assert u.pool.node_selector == ALL
    assert u.pool.ipip_mode == "Never" and u.pool.vxlan_mode == "Never"


@given(st.one_of(
    st.builds(IPSetRemove, id=ident), st.builds(PolicyRemove, id=policy_id),
    st.builds(ProfileRemove, id=ident), st.builds(WorkloadEndpointRemove, id=ident),
    st.builds(HostEndpointRemove, id=ident), st.builds(ServiceRemove, id=ident),
    st.builds(IPPoolRemove, id=ident),
))
def test_removal_keys_round_trip(key):
    assert key_from_proto(key_to_proto(key)) == key


# ---------------------------------------------------------------- validation

def _policy_msg() -> object:
    m = pb.Update()
    m.policy.id.tier = "default"
    m.policy.id.name = "ns/allow-web"
    r = m.policy.inbound_rules.add(action=pb.ACTION_ALLOW, protocol=6)
    r.dst_ports.add(first=80, last=80)
    return m


def _raises(msg, path: str, text: str, at: str = "updates[0]") -> None:
    with pytest.raises(ValidationError) as info:
        update_from_proto(msg, at)
    assert info.value.path == path, str(info.value)
    assert text in info.value.message, str(info.value)
    assert str(info.value).startswith(f"{path}: ")


def test_valid_policy_converts():
    u = update_from_proto(_policy_msg())
    assert u.policy.inbound_rules[0].dst_ports == (PortRange(80, 80),)


def test_bad_port_range_names_field():
    m = _policy_msg()
    m.policy.inbound_rules[0].dst_ports.add(first=90, last=80)
    with pytest.raises(ValidationError) as info:
        update_from_proto(m, "updates[2]")
    assert str(info.value) == "updates[2].policy.inbound_rules[0].dst_ports[1]: invalid port range 90:80"


def test_port_out_of_range():
    m = _policy_msg()
    m.policy.inbound_rules[0].src_ports.add(first=1, last=70000)
    _raises(m, "updates[0].policy.inbound_rules[0].src_ports[0]", "0-65535")


def test_bad_ipset_member_cidr():
    m = pb.Update()
    m.ipset.id = "s1"
    m.ipset.type = pb.IPSET_TYPE_NET
    m.ipset.members.extend(["10.0.0.1/32", "10.0.0.0/8", "fd00::/64", "10.0.0.300/32"])
    with pytest.raises(ValidationError) as info:
        update_from_proto(m)
    assert str(info.value) == "updates[0].ipset.members[3]: invalid CIDR '10.0.0.300/32'"


def test_ipset_member_host_bits_and_ip_and_port_format():
    m = pb.Update()
    m.ipset.id = "s1"
    m.ipset.type = pb.IPSET_TYPE_NET
    m.ipset.members.append("10.0.0.1/24")
    _raises(m, "updates[0].ipset.members[0]", "host bits")
    m = pb.Update()
    m.ipset.id = "s1"
    m.ipset.type = pb.IPSET_TYPE_IP_AND_PORT
    m.ipset.members.extend(["10.0.0.1,tcp:80", "fd00::1,udp:53", "10.0.0.1,tcp:99999"])
    _raises(m, "updates[0].ipset.members[2]", "invalid port")
    m.ipset.members[2] = "10.0.0.1:80"
    _raises(m, "updates[0].ipset.members[2]", "expected 'ip,proto:port'")


def test_ipset_type_required():
    m = pb.Update()
    m.ipset.id = "s1"
    _raises(m, "updates[0].ipset.type", "required")


def test_unknown_and_missing_action():
    m = _policy_msg()
    m.policy.inbound_rules[0].action = 7
    _raises(m, "updates[0].policy.inbound_rules[0].action", "unknown action 7")
    m.policy.inbound_rules[0].action = pb.ACTION_UNSPECIFIED
    _raises(m, "updates[0].policy.inbound_rules[0].action", "required")


def test_unknown_tier_default_action():
    m = pb.Update()
    m.workload_endpoint.id = "w1"
    m.workload_endpoint.tiers.add(name="default", default_action=9)
    _raises(m, "updates[0].workload_endpoint.tiers[0].default_action", "unknown tier default action 9")


@pytest.mark.parametrize("field", ["ipset_remove", "profile_remove", "workload_endpoint_remove",
                                   "host_endpoint_remove", "service_remove", "ip_pool_remove"])
def test_empty_ids(field):
    m = pb.Update()
    getattr(m, field).SetInParent()
    _raises(m, f"updates[0].{field}.id", "must not be empty")


def test_empty_policy_id_parts():
    m = _policy_msg()
    m.policy.id.tier = ""
    _raises(m, "updates[0].policy.id.tier", "must not be empty")
    m = pb.Update()
    m.policy_remove.SetInParent()
    _raises(m, "updates[0].policy_remove.id", "required")


def test_empty_update():
    with pytest.raises(ValidationError) as info:
        update_from_proto(pb.Update(), "updates[4]")
    assert info.value.path == "updates[4]"


def test_bad_ips_and_cidrs():
    m = pb.Update()
    m.workload_endpoint.id = "w1"
    m.workload_endpoint.nets.extend(["10.0.0.1/32", "banana"])
    _raises(m, "updates[0].workload_endpoint.nets[1]", "invalid CIDR 'banana'")
    m = pb.Update()
    m.host_endpoint.id = "h1"
    m.host_endpoint.name = "h1"
    m.host_endpoint.expected_ips.append("10.0.0.256")
    _raises(m, "updates[0].host_endpoint.expected_ips[0]", "invalid IP address")
    m = pb.Update()
    m.service.id = "s"
    m.service.service.namespace = "ns"
    m.service.service.name = "n"
    m.service.service.cluster_ips.append("10.96.0.1/32")
    _raises(m, "updates[0].service.service.cluster_ips[0]", "invalid IP address")


def test_icmp_code_without_type_and_protocol_range():
    m = _policy_msg()
    r = m.policy.inbound_rules[0]
    r.ClearField("dst_ports")
    r.protocol = 1
    r.icmp_code = 3
    _raises(m, "updates[0].policy.inbound_rules[0].icmp_code", "without icmp type")
    r.icmp_type = 300
    _raises(m, "updates[0].policy.inbound_rules[0].icmp_type", "out of range 0-255")
    r.ClearField("icmp_code")
    r.ClearField("icmp_type")
    r.protocol = 256
    _raises(m, "updates[0].policy.inbound_rules[0].protocol", "protocol 256 out of range 0-255")
    r.protocol = -1
    _raises(m, "updates[0].policy.inbound_rules[0].protocol", "out of range")
    r.ClearField("protocol")
    r.not_protocol = 999
    _raises(m, "updates[0].policy.inbound_rules[0].not_protocol", "out of range")


def test_rule_consistency_checks():
    m = _policy_msg()
    m.policy.inbound_rules[0].protocol = 1  # ICMP with ports
    _raises(m, "updates[0].policy.inbound_rules[0].dst_ports", "requires protocol TCP")
    m = _policy_msg()
    m.policy.inbound_rules[0].ip_version = 4
    m.policy.inbound_rules[0].src_nets.append("fd00::/64")
    _raises(m, "updates[0].policy.inbound_rules[0].src_nets[0]", "IPv6 network")
    m.policy.inbound_rules[0].ip_version = 5
    _raises(m, "updates[0].policy.inbound_rules[0].ip_version", "4 or 6")


def test_service_and_pool_validation():
    m = pb.Update()
    m.service.id = "s"
    m.service.service.namespace = "ns"
    m.service.service.name = "n"
    m.service.service.ports.add(protocol=6, port=80, target_port_number=70000)
    _raises(m, "updates[0].service.service.ports[0].target_port_number", "out of range")
    m.service.service.ports[0].target_port_number = 8080
    m.service.service.type = "Weird"
    _raises(m, "updates[0].service.service.type", "unknown service type")
    m.service.service.type = ""
    sl = m.service.slices.add(name="x", address_type="IPv4")
    sl.endpoints.add(addresses=["fd00::1"])
    _raises(m, "updates[0].service.slices[0].endpoints[0].addresses[0]", "IPv6 address")

    m = pb.Update()
    m.ip_pool.id = "p"
    m.ip_pool.pool.name = "p"
    m.ip_pool.pool.cidr = "10.0.0.0/16"
    m.ip_pool.pool.block_size = 8
    _raises(m, "updates[0].ip_pool.pool.block_size", "between")
    m.ip_pool.pool.block_size = 26
    m.ip_pool.pool.node_selector = "a == "
    _raises(m, "updates[0].ip_pool.pool.node_selector", "invalid selector")


def test_labels_duplicates_and_mac():
    m = pb.Update()
    m.workload_endpoint.id = "w"
    m.workload_endpoint.labels.add(key="a", value="1")
    m.workload_endpoint.labels.add(key="a", value="2")
    _raises(m, "updates[0].workload_endpoint.labels[1].key", "duplicate label key 'a'")
    m = pb.Update()
    m.workload_endpoint.id = "w"
    m.workload_endpoint.mac = "zz:00:00:00:00:00"
    _raises(m, "updates[0].workload_endpoint.mac", "invalid MAC")


def test_removal_key_validation():
    k = pb.ResourceKey(kind=pb.ResourceKey.POLICY, id="p")
    with pytest.raises(ValidationError) as info:
        keys_from_proto([pb.ResourceKey(kind=pb.ResourceKey.IPSET, id="s"), k])
    assert str(info.value) == "keys[1].tier: tier must not be empty"
    with pytest.raises(ValidationError, match=r"keys\[0\].kind: kind is required"):
        keys_from_proto([pb.ResourceKey(id="x")])
    with pytest.raises(ValidationError, match=r"keys\[0\].kind: unknown kind 42"):
        keys_from_proto([pb.ResourceKey(kind=42, id="x")])
    with pytest.raises(ValidationError, match=r"keys\[0\].id"):
        keys_from_proto([pb.ResourceKey(kind=pb.ResourceKey.SERVICE)])


# ---------------------------------------------------------------- batch references

def _rule(**kw) -> RenderedRule:
    return RenderedRule(action=Action.ALLOW, origin=RuleOrigin("p", 0), **kw)


def _wep(tiers=(), profiles=()) -> WorkloadEndpointInfo:
    return WorkloadEndpointInfo("ns", "pod", "node", "eth0", "cali1", tiers=tiers, profile_ids=profiles)


PID = PolicyID("default", "ns/p")
NET_SET = IPSetUpdate("s1", IPSetType.NET, frozenset({"10.0.0.1/32"}))


def test_batch_unknown_ipset_reference():
    pol = PolicyUpdate(PID, RenderedPolicy(inbound_rules=(_rule(), _rule(dst_ip_set_ids=("s1", "s2")))))
    with pytest.raises(ValidationError) as info:
        validate_batch([NET_SET, pol])
    assert str(info.value) == "updates[1].policy.inbound_rules[1].dst_ip_set_ids[1]: unknown IP set 's2'"
    state = DataplaneState()
    state.apply(IPSetUpdate("s2", IPSetType.NET, frozenset()))
    validate_batch([NET_SET, pol], state)


def test_batch_named_port_reference_needs_ip_and_port_set():
    pol = PolicyUpdate(PID, RenderedPolicy(outbound_rules=(_rule(dst_named_port_ip_set_ids=("s1",)),)))
    with pytest.raises(ValidationError, match=r"updates\[1\]\.policy\.outbound_rules\[0\]\.dst_named_port_ip_set_ids\[0\]"):
        validate_batch([NET_SET, pol])
    validate_batch([IPSetUpdate("s1", IPSetType.IP_AND_PORT, frozenset({"10.0.0.1,tcp:80"})), pol])


def test_batch_unknown_policy_and_profile_on_endpoint():
    wep = WorkloadEndpointUpdate("w1", _wep(tiers=(TierInfo("default", ingress_policies=("ns/p", "ns/q")),)))
    with pytest.raises(ValidationError) as info:
        validate_batch([PolicyUpdate(PID, RenderedPolicy()), wep])
    assert str(info.value) == (
        "updates[1].workload_endpoint.tiers[0].ingress_policies[1]: unknown policy 'default/ns/q'")
    wep = WorkloadEndpointUpdate("w1", _wep(profiles=("kns.ns",)))
    with pytest.raises(ValidationError, match=r"updates\[0\]\.workload_endpoint\.profile_ids\[0\]: unknown profile 'kns.ns'"):
        validate_batch([wep])
    validate_batch([ProfileUpdate("kns.ns"), wep])
    hep = HostEndpointUpdate("h1", HostEndpointInfo("h1", "node", "eth0", pre_dnat_tiers=(TierInfo("t", ingress_policies=("x",)),)))
    with pytest.raises(ValidationError, match=r"updates\[0\]\.host_endpoint\.pre_dnat_tiers\[0\]\.ingress_policies\[0\]"):
        validate_batch([hep])


def test_batch_delta_needs_known_set_and_matching_members():
    with pytest.raises(ValidationError, match=r"updates\[0\]\.ipset_delta\.id: unknown IP set 's1'"):
        validate_batch([IPSetDeltaUpdate("s1", added=frozenset({"10.0.0.2/32"}))])
    validate_batch([NET_SET, IPSetDeltaUpdate("s1", added=frozenset({"10.0.0.2/32"}))])
    with pytest.raises(ValidationError, match=r"updates\[1\]\.ipset_delta\.added"):
        validate_batch([NET_SET, IPSetDeltaUpdate("s1", added=frozenset({"10.0.0.2,tcp:80"}))])


def test_batch_removal_must_not_leave_dangling_references():
    state = DataplaneState()
    state.apply_all([
        NET_SET,
        PolicyUpdate(PID, RenderedPolicy(inbound_rules=(_rule(src_ip_set_ids=("s1",)),))),
        ProfileUpdate("kns.ns"),
        WorkloadEndpointUpdate("w1", _wep(tiers=(TierInfo("default", ingress_policies=("ns/p",)),), profiles=("kns.ns",))),
    ])
    with pytest.raises(ValidationError, match=r"updates\[0\]\.ipset_remove\.id: IP set 's1' is still referenced by policy 'default/ns/p'"):
        validate_batch([IPSetRemove("s1")], state)
    with pytest.raises(ValidationError, match=r"updates\[0\]\.policy_remove\.id: .*still referenced by workload endpoint 'w1'"):
        validate_batch([PolicyRemove(PID)], state)
    with pytest.raises(ValidationError, match=r"updates\[0\]\.profile_remove\.id"):
        validate_batch([ProfileRemove("kns.ns")], state)
    # Felix removal order in one batch: endpoints, policies, profiles, then IP sets.
    validate_batch([WorkloadEndpointRemove("w1"), PolicyRemove(PID), ProfileRemove("kns.ns"), IPSetRemove("s1")], state)
    # Replacing the policy with one that no longer uses the set is fine too.
    validate_batch([PolicyUpdate(PID, RenderedPolicy()), IPSetRemove("s1")], state)
    # A custom locate spells paths the Remove RPC way.
    with pytest.raises(ValidationError, match=r"keys\[0\]\.id: IP set 's1'"):
        validate_batch([IPSetRemove("s1")], state, locate=lambda i, u: f"keys[{i}]")


# ---------------------------------------------------------------- generator

def test_protogen_is_idempotent_and_fast_when_up_to_date():
    protogen.generate()
    assert not protogen.is_stale()
    assert protogen.generate() == []


def test_protogen_generates_into_fresh_dir(tmp_path):
    out = tmp_path / "gen"
    written = protogen.generate(gen_dir=out)
    names = {p.relative_to(out).as_posix() for p in written}
    assert {"__init__.py", "vppagent/v1/dataplane_pb2.py", "cni/cnibackend_pb2_grpc.py",
            "grpc/health/v1/health_pb2.py", "grpc/health/v1/__init__.py"} <= names
    text = (out / "vppagent/v1/dataplane_pb2_grpc.py").read_text()
    assert "from vppagent.api.gen.vppagent.v1 import dataplane_pb2" in text
    assert "\nimport grpc\n" in text
    assert not protogen.is_stale(gen_dir=out)
    assert protogen.generate(gen_dir=out) == []
    assert protogen.generate(gen_dir=out, force=True)


def test_rewrite_imports_only_touches_generated_modules():
    text = "import grpc\nfrom google.protobuf import timestamp_pb2 as t\nfrom cni import cnibackend_pb2 as c\n"
    out = protogen._rewrite_imports(text, {"cni.cnibackend_pb2"})
    assert out == ("import grpc\nfrom google.protobuf import timestamp_pb2 as t\n"
                   "from vppagent.api.gen.cni import cnibackend_pb2 as c\n")


def test_route_errors_name_the_field():
    m = pb.Update()
    m.route.id = "10.1.0.0/26"
    m.route.route.dst = "10.1.0.0/26"
    m.route.route.node = "n2"
    m.route.route.gateway = "not-an-ip"
    with pytest.raises(ValidationError, match=r"updates\[0\]\.route\.route\.gateway"):
        update_from_proto(m)
    m.route.route.gateway = "192.168.0.2"
    m.route.route.encap = "gre"
    with pytest.raises(ValidationError, match=r"route\.route\.encap: unknown encap 'gre'"):
        update_from_proto(m)
    m.route.route.encap = ""
    m.route.id = "10.2.0.0/26"
    with pytest.raises(ValidationError, match=r"route\.id: must equal route\.dst"):
        update_from_proto(m)
