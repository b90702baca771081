"""nftables rendering without a kernel: names, rules, chains, services, transactions.

A recording runner stands in for ``nft``: it keeps every script and reads
back an empty table, so these tests run anywhere (no root).
"""

from __future__ import annotations

from ipaddress import ip_network
from typing import Any

import pytest

from vppagent.dataplane import create_dataplane
from vppagent.dataplane.nftables import CommandRunner, ConfigError, NftablesConfig, NftablesDataplane, names
from vppagent.dataplane.nftables.ipsets import ipset_values
from vppagent.dataplane.nftables.match import rule_alternatives
from vppagent.dataplane.nftables.objects import (
    Chain, Element, NftSet, SetDecl, chain_key, elem_key, intervals, set_key,
)
from vppagent.dataplane.nftables.policy import PolicyRenderer
from vppagent.dataplane.nftables.readback import parse_table
from vppagent.dataplane.nftables.services import conntrack_filters, render_frontend
from vppagent.dataplane.nftables.transaction import Change, build_script, net_changes
from vppagent.dataplane.service_plan import plan_service
from vppagent.manifests.loader import load_objects
from vppagent.model.resources import Action, PortRange, TierDefault
from vppagent.model.updates import (
    HostEndpointInfo, InSync, IPSetDeltaUpdate, IPSetType, IPSetUpdate, PolicyID,
    PolicyRemove, PolicyUpdate, ProfileUpdate, RenderedPolicy, RenderedRule, RuleOrigin, ServiceUpdate,
    TierInfo, Update, WorkloadEndpointInfo, WorkloadEndpointUpdate,
)
from vppagent.reconciler import Op, OpKind

CFG = NftablesConfig()
R = PolicyRenderer(CFG)
A, P = "0x00010000", "0x00020000"


class RecordingRunner(CommandRunner):
    """Records transactions; the kernel table always reads back empty."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []

    def nft_apply(self, script: str) -> None:
        self.scripts.append(script)

    def nft_list_table(self, family: str, table: str) -> list[dict[str, Any]] | None:
        return None


def rule(action: Action = Action.ALLOW, **kw: Any) -> RenderedRule:
    return RenderedRule(action=action, origin=RuleOrigin("p", 0), **kw)


def types(kind: IPSetType = IPSetType.NET):
    return lambda sid: kind


def texts(r: RenderedRule, kind: IPSetType = IPSetType.NET) -> list[str]:
    return [a.text for a in rule_alternatives(r, types(kind))]


# -- configuration ----------------------------------------------------------------------------

def test_config_defaults_and_registry() -> None:
    dp = create_dataplane({"type": "nftables", "table": "agent", "refreshInterval": 3,
                           "failsafeInbound": ["tcp:22", {"protocol": "udp", "port": "5000-5001"}]})
    assert isinstance(dp, NftablesDataplane)
    assert dp.config.table == "agent" and dp.config.refresh_interval == 3.0
    assert dp.config.failsafe_inbound == ((6, 22, 22), (17, 5000, 5001))
    assert NftablesConfig().failsafe_outbound[0] == (17, 53, 53)
    m = NftablesConfig(mark_mask=0x3F00).marks
    assert (m.accept, m.pass_, m.masq, m.untracked) == (0x100, 0x200, 0x1000, 0x2000)


@pytest.mark.parametrize("options, key", [
    ({"tabel": "x"}, "'tabel'"),
    ({"markMask": "0x7"}, "markMask"),
    ({"markMask": "lots"}, "markMask"),
    ({"failsafeInbound": ["icmp:1"]}, "failsafeInbound[0]"),
    ({"failsafeOutbound": ["tcp:90-80"]}, "failsafeOutbound[0]"),
    ({"refreshInterval": -1}, "refreshInterval"),
    ({"endpointToHostAction": "Return"}, "endpointToHostAction"),
    ({"table": "bad name"}, "table"),
])
def test_config_errors_name_the_key(options: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        NftablesDataplane.from_config(options)


# -- names ------------------------------------------------------------------------------------

def test_names_are_stable_distinct_identifiers() -> None:
    assert names.ipset("s:0123456789abcdef0123", 4) == "s-0123456789abcdef0123-4"
    assert names.ipset("n:0123456789abcdef0123", 6) == "n-0123456789abcdef0123-6"
    odd = names.ipset("my set/with spaces", 4)
    assert odd.startswith("x-") and odd == names.ipset("my set/with spaces", 4)
    a, b = PolicyID("default", "ns/a"), PolicyID("sec", "ns/a")
    assert names.policy_chain(a, True) != names.policy_chain(b, True) != names.policy_chain(a, False)
    assert names.policy_chain(a, True).startswith("pi-") and names.profile_chain("kns.x", False).startswith("pro-")
    assert names.workload_chain("cali12345", True) == "tw-cali12345"
    assert names.workload_chain("cali12345", False) == "fw-cali12345"
    assert names.workload_chain("eth0:weird!", True).startswith("tw-h")
    every = [names.WL_FROM, names.svc_ips(4), names.pools_all(6), names.service_chain("x"),
             names.backend_chain("x", "1.2.3.4:80"), names.affinity_set("x", "y", 10), names.host_chain("hi", "eth0")]
    assert all("-" in n for n in every)       # never an nft keyword


# -- rule matching ----------------------------------------------------------------------------

def test_protocol_nets_and_ports() -> None:
    r = rule(protocol=6, src_nets=(ip_network("10.0.0.0/8"), ip_network("10.1.0.0/16")),
             dst_ports=(PortRange(80, 80), PortRange(443, 443), PortRange(8000, 8100), PortRange(8050, 8200)))
    assert texts(r) == ["meta nfproto ipv4 meta l4proto 6 ip saddr { 10.0.0.0/8 } "
                        "th dport { 80, 443, 8000-8200 }"]     # v6 variant impossible: v4-only nets


def test_family_neutral_rule_is_rendered_once() -> None:
    assert texts(rule(protocol=17, not_dst_ports=(PortRange(53, 53),))) == ["meta l4proto 17 th dport != { 53 }"]
    assert texts(rule()) == [""]


def test_ports_or_named_ports_become_exclusive_alternatives() -> None:
    r = rule(protocol=6, dst_ports=(PortRange(80, 80),), dst_named_port_ip_set_ids=("n:0123456789abcdef0123",))
    v4 = [t for t in texts(r) if "ipv4" in t]
    assert v4 == [
        "meta nfproto ipv4 meta l4proto 6 th dport { 80 }",
        "meta nfproto ipv4 meta l4proto 6 th dport != { 80 } ip daddr . meta l4proto . th dport "
        "@n-0123456789abcdef0123-4",
    ]


def test_negative_ports_only_exclude_packets_with_ports() -> None:
    assert texts(rule(not_dst_ports=(PortRange(22, 22),))) == [
        "meta l4proto != { 6, 17, 132, 136 }",
        "meta l4proto { 6, 17, 132, 136 } th dport != { 22 }",
    ]


def test_ip_sets_per_family_and_negated() -> None:
    r = rule(src_ip_set_ids=("s:0123456789abcdef0123",), not_dst_ip_set_ids=("s:aaaaaaaaaaaaaaaaaaaa",))
    alts = rule_alternatives(r, types())
    assert [a.text for a in alts] == [
        "meta nfproto ipv4 ip saddr @s-0123456789abcdef0123-4 ip daddr != @s-aaaaaaaaaaaaaaaaaaaa-4",
        "meta nfproto ipv6 ip6 saddr @s-0123456789abcdef0123-6 ip6 daddr != @s-aaaaaaaaaaaaaaaaaaaa-6",
    ]
    assert alts[0].refs == {set_key("s-0123456789abcdef0123-4"), set_key("s-aaaaaaaaaaaaaaaaaaaa-4")}
    # A service's ip+port set in destination position matches address, protocol and port together.
    svc = rule(dst_ip_set_ids=("v:0123456789abcdef0123",))
    assert texts(svc, IPSetType.IP_AND_PORT)[0] == (
        "meta nfproto ipv4 meta l4proto { 6, 17, 132, 136 } ip daddr . meta l4proto . th dport "
        "@v-0123456789abcdef0123-4")


def test_icmp_type_code_and_not_icmp() -> None:
    assert texts(rule(protocol=1, icmp_type=8, icmp_code=0)) == [
        "meta nfproto ipv4 meta l4proto 1 icmp type 8 icmp code 0"]
    assert texts(rule(protocol=58, icmp_type=128)) == ["meta nfproto ipv6 meta l4proto 58 icmpv6 type 128"]
    assert texts(rule(protocol=1, not_icmp_type=8)) == ["meta nfproto ipv4 meta l4proto 1 icmp type != 8"]
    # Without a protocol, notICMP also lets every non-ICMP packet through.
    v4 = [t for t in texts(rule(not_icmp_type=3, not_icmp_code=1)) if "ipv4" in t]
    assert v4 == ["meta nfproto ipv4 meta l4proto != 1",
                  "meta nfproto ipv4 meta l4proto 1 icmp type != 3",
                  "meta nfproto ipv4 icmp type 3 icmp code != 1"]
    assert texts(rule(ip_version=6, protocol=1)) == []


# -- policy, profile and endpoint chains ------------------------------------------------------

def test_policy_and_profile_verdicts() -> None:
    rules = (rule(Action.LOG), rule(Action.PASS, protocol=17), rule(Action.DENY, protocol=6), rule(Action.ALLOW))
    pol = R.policy(PolicyID("t", "p"), RenderedPolicy(inbound_rules=rules), types())
    chain = pol[chain_key(names.policy_chain(PolicyID("t", "p"), True))]
    assert isinstance(chain, Chain)
    assert chain.rules == (
        'counter log prefix "calico-packet: "',
        f"meta l4proto 17 counter meta mark set meta mark | {P} return",
        "meta l4proto 6 counter drop",
        f"counter meta mark set meta mark | {A} return",
    )
    prof = R.profile("kns.x", rules, (), types())[chain_key(names.profile_chain("kns.x", True))]
    assert prof.rules[1] == "meta l4proto 17 counter return"      # Pass leaves a profile, no mark
    untracked = R.policy(PolicyID("t", "u"), RenderedPolicy(inbound_rules=(rule(),), untracked=True), types())
    assert "notrack return" in untracked[chain_key(names.policy_chain(PolicyID("t", "u"), True))].rules[0]


def wep(tiers: tuple[TierInfo, ...], profiles: tuple[str, ...] = ("kns.ns",)) -> WorkloadEndpointInfo:
    return WorkloadEndpointInfo(namespace="ns", pod="a", node="n1", endpoint="eth0", interface_name="cali1",
                                nets=(ip_network("10.0.0.1/32"),), profile_ids=profiles, tiers=tiers)


def test_tiers_pass_default_pass_profiles_and_final_drop() -> None:
    tiers = (TierInfo("sec", TierDefault.DENY, ingress_policies=("p1", "p2")),
             TierInfo("open", TierDefault.PASS, ingress_policies=("p3",)),
             TierInfo("egress-only", TierDefault.DENY, egress_policies=("p4",)))
    out = R.workload(wep(tiers), known=lambda ref: ref != "policy:sec/p2")
    tw = out[chain_key("tw-cali1")]
    pi = {p: names.policy_chain(PolicyID(t, p), True) for t, p in (("sec", "p1"), ("open", "p3"))}
    assert tw.rules == (
        "ct state established,related accept",
        "ct state invalid meta l4proto != { 1, 58 } counter drop",
        "meta mark set meta mark & 0xfff0ffff",
        f"meta mark & {P} == 0 jump {pi['p1']}",          # p2 is unknown: skipped, the tier still applies
        f"meta mark & {A} == {A} return",
        f"meta mark & {P} == 0 counter drop",             # end of tier sec
        "meta mark set meta mark & 0xfffdffff",           # a Pass from sec goes no further
        f"meta mark & {P} == 0 jump {pi['p3']}",
        f"meta mark & {A} == {A} return",                 # tier open defaults to Pass: no drop
        f"jump {names.profile_chain('kns.ns', True)}",
        f"meta mark & {A} == {A} return",
        "counter drop",
    )
    fw = out[chain_key("fw-cali1")]
    assert f"jump {names.policy_chain(PolicyID('egress-only', 'p4'), False)}" in " ".join(fw.rules)
    assert out[elem_key("wl-to", '"cali1"')] == Element("jump tw-cali1")
    assert out[elem_key("wl-from", '"cali1"')] == Element("jump fw-cali1")
    assert chain_key(pi["p1"]) in tw.refs and chain_key(names.policy_chain(PolicyID("sec", "p2"), True)) not in tw.refs


def test_host_endpoint_failsafe_untracked_and_prednat() -> None:
    hep = HostEndpointInfo(name="eth0", node="n1", interface_name="eth0")
    out = R.host(hep, known=lambda ref: True)
    hi, ho = out[chain_key("hi-eth0")], out[chain_key("ho-eth0")]
    assert f"meta l4proto 6 th dport {{ 22, 179, 2379-2380, 6443 }} meta mark set meta mark | {A} return" in hi.rules
    assert f"meta l4proto 17 th dport {{ 68 }} meta mark set meta mark | {A} return" in hi.rules
    assert f"meta l4proto 17 th dport {{ 53, 67 }} meta mark set meta mark | {A} return" in ho.rules
    assert hi.rules[-1] == "counter drop"               # no policy, no profile: deny except failsafe
    assert chain_key("hui-eth0") not in out and chain_key("hp-eth0") not in out
    cfg = NftablesConfig(failsafe_inbound=((6, 2222, 2222),))
    assert "meta l4proto 6 th dport { 2222 }" in PolicyRenderer(cfg).host(hep, lambda r: True)[
        chain_key("hi-eth0")].rules[2]
    hep2 = HostEndpointInfo(name="eth0", node="n1", interface_name="eth0",
                            untracked_tiers=(TierInfo("default", ingress_policies=("u",)),),
                            pre_dnat_tiers=(TierInfo("default", ingress_policies=("d",)),))
    out2 = R.host(hep2, known=lambda ref: True)
    assert out2[chain_key("hui-eth0")].rules[-1] == f"meta mark & {P} == 0 return"   # end of tier: no verdict
    assert out2[chain_key("hp-eth0")].rules[-1] == f"meta mark & {P} == 0 return"
    assert out2[elem_key("hep-raw-in", '"eth0"')] == Element("jump hui-eth0")
    assert chain_key("huo-eth0") not in out2


# -- services ---------------------------------------------------------------------------------

def service(spec: dict, endpoints: list[dict], port: int = 8080) -> ServiceUpdate:
    objs = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "n"}, "spec": spec},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": "s-a", "namespace": "n", "labels": {"kubernetes.io/service-name": "s"}},
             "addressType": "IPv4", "ports": [{"name": "web", "port": port, "protocol": "TCP"}],
             "endpoints": endpoints}]
    svc, eps = load_objects(objs)
    return ServiceUpdate(svc.key, svc, (eps,))


def eps(*ips: str, node: str = "n1") -> list[dict]:
    return [{"addresses": [ip], "nodeName": node, "conditions": {"ready": True}} for ip in ips]


WEB = {"clusterIP": "10.96.0.10", "ports": [{"name": "web", "port": 80, "targetPort": 8080}]}


def test_service_frontend_backends_and_random_choice() -> None:
    fe = plan_service(service(WEB, eps("10.0.0.1", "10.0.0.2", "10.0.0.3")), "n1")[0]
    out = render_frontend(fe)
    svc_chain = names.service_chain("n/s|web|cluster-ip|10.96.0.10|80|6|4")
    assert out[elem_key("svc-ips-4", "10.96.0.10 . 6 . 80")] == Element(f"goto {svc_chain}")
    seps = [names.backend_chain("n/s|web|cluster-ip|10.96.0.10|80|6|4", f"10.0.0.{i}:8080") for i in (1, 2, 3)]
    assert out[chain_key(svc_chain)].rules == (
        f"numgen random mod 3 vmap {{ 0 : goto {seps[0]}, 1 : goto {seps[1]}, 2 : goto {seps[2]} }}",)
    assert out[chain_key(seps[0])].rules == ("ip saddr 10.0.0.1 jump mark-masq",          # hairpin
                                             "meta l4proto 6 counter dnat ip to 10.0.0.1:8080")


def test_service_affinity_one_dynamic_set_per_backend() -> None:
    spec = {**WEB, "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 30}}}
    fe = plan_service(service(spec, eps("10.0.0.1", "10.0.0.2")), "n1")[0]
    out = render_frontend(fe)
    sets = {k.name: v for k, v in out.items() if k.kind == "set"}
    assert len(sets) == 2 and all(v == NftSet(SetDecl("ipv4_addr", timeout=30)) for v in sets.values())
    svc_rules = next(v.rules for k, v in out.items() if k.name.startswith("svc-"))
    lookups = {r.split()[2][1:]: r.split()[-1] for r in svc_rules[:2]}   # client in backend k's set → backend k
    assert set(lookups) == set(sets) and all(r.startswith("ip saddr @aff-") for r in svc_rules[:2])
    for aff, sep in lookups.items():
        assert f"update @{aff} {{ ip saddr }}" in out[chain_key(sep)].rules
    assert svc_rules[-1].startswith("numgen random mod 2 vmap")


def test_service_external_traffic_policy_and_reject() -> None:
    spec = {**WEB, "type": "NodePort", "ports": [{"name": "web", "port": 80, "targetPort": 8080, "nodePort": 30080}]}
    fes = {f.kind.value: f for f in plan_service(service(spec, eps("10.0.0.1", node="n2")), "n1")}
    np_out = render_frontend(fes["node-port"])
    assert elem_key("svc-nodeports-4", "6 . 30080") in np_out
    assert next(v for k, v in np_out.items() if k.name.startswith("svc-")).rules[0] == "jump mark-masq"
    local = {f.kind.value: f for f in plan_service(
        service({**spec, "externalTrafficPolicy": "Local"}, eps("10.0.0.1", node="n2")), "n1")}
    assert render_frontend(local["node-port"]) == {
        elem_key("svc-noep-np-4", "6 . 30080"): Element("goto svc-reject")}    # no local backend: reject
    none = plan_service(service(WEB, []), "n1")[0]
    assert render_frontend(none) == {elem_key("svc-noep-4", "10.96.0.10 . 6 . 80"): Element("goto svc-reject")}
    assert conntrack_filters(fes["node-port"], "10.0.0.1") == [
        "-f", "ipv4", "-p", "udp", "--orig-port-dst", "30080", "--dst-nat", "10.0.0.1"]


# -- sets, transactions, read-back ------------------------------------------------------------

def test_ipset_values_split_families_and_drop_subsumed_nets() -> None:
    out = ipset_values("s:0123456789abcdef0123", IPSetType.NET,
                       frozenset({"10.0.0.0/8", "10.1.2.3/32", "192.0.2.1/32", "fd00::/64", "fd00::5/128"}))
    assert out[set_key("s-0123456789abcdef0123-4")] == NftSet(SetDecl("ipv4_addr", interval=True),
                                                              frozenset({"10.0.0.0/8", "192.0.2.1"}))
    assert out[set_key("s-0123456789abcdef0123-6")].elements == frozenset({"fd00::/64"})
    named = ipset_values("n:0123456789abcdef0123", IPSetType.IP_AND_PORT, frozenset({"10.0.0.1,6:80", "fd00::1,17:53"}))
    assert named[set_key("n-0123456789abcdef0123-4")].elements == frozenset({"10.0.0.1 . 6 . 80"})
    assert named[set_key("n-0123456789abcdef0123-6")].decl.type == "ipv6_addr . inet_proto . inet_service"
    assert intervals({"10.0.0.0/25", "10.0.0.128/25"}) == intervals({"10.0.0.0-10.0.0.255"})


def test_script_phases_are_always_valid() -> None:
    old_chain, new_chain = Chain(("accept",)), Chain(("drop",))
    changes = [
        Change(set_key("s-gone"), NftSet(SetDecl("ipv4_addr")), None),
        Change(chain_key("c-gone"), Chain(("jump x",)), None),
        Change(elem_key("wl-to", '"cali1"'), Element("jump c-gone"), None),
        Change(chain_key("c-new"), None, new_chain),
        Change(elem_key("wl-to", '"cali2"'), None, Element("jump c-new")),
        Change(set_key("s-new"), None, NftSet(SetDecl("ipv4_addr", interval=True), frozenset({"10.0.0.0/8"}))),
        Change(chain_key("c-upd"), old_chain, new_chain),
    ]
    lines = build_script("t", changes).splitlines()
    order = [next(i for i, line in enumerate(lines) if line.startswith(p)) for p in (
        "add table", "add set inet t s-new", "add element inet t s-new", "add chain inet t c-new",
        "flush chain inet t c-upd", "delete element inet t wl-to", "add element inet t wl-to",
        "flush chain inet t c-gone", "delete chain inet t c-gone", "delete set inet t s-gone")]
    assert order == sorted(order)
    assert lines[lines.index("flush chain inet t c-upd") + 1].startswith('add rule inet t c-upd drop comment "vpa:')


def test_delete_then_create_of_the_same_chain_becomes_a_refill() -> None:
    key = chain_key("tw-cali1")
    ops = [Op(OpKind.DELETE, key, Chain(("jump pi-old",))), Op(OpKind.CREATE, key, Chain(("drop",)))]
    script = build_script("t", net_changes(ops))
    assert "delete chain" not in script and script.startswith("flush chain inet t tw-cali1\n")
    same = [Op(OpKind.DELETE, key, Chain(("drop",))), Op(OpKind.CREATE, key, Chain(("drop",)))]
    assert build_script("t", net_changes(same)) == ""


def test_read_back_normalises_to_rendered_values() -> None:
    objects = [
        {"set": {"family": "inet", "name": "n-x-4", "table": "t", "type": ["ipv4_addr", "inet_proto", "inet_service"],
                 "handle": 1, "elem": [{"concat": ["10.0.0.1", "tcp", 80]}]}},
        {"set": {"family": "inet", "name": "s-x-4", "table": "t", "type": "ipv4_addr", "handle": 2,
                 "flags": ["interval"], "elem": [{"prefix": {"addr": "10.0.0.0", "len": 24}}, "10.1.0.1",
                                                 {"range": ["10.2.0.0", "10.2.0.5"]}]}},
        {"set": {"family": "inet", "name": "aff-x", "table": "t", "type": "ipv4_addr", "handle": 3,
                 "flags": ["timeout"], "timeout": 30, "elem": [{"elem": {"val": "1.2.3.4", "expires": 20}}]}},
        {"map": {"family": "inet", "name": "wl-to", "table": "t", "type": "ifname", "map": "verdict", "handle": 4,
                 "elem": [["cali1", {"jump": {"target": "tw-cali1"}}]]}},
        {"chain": {"family": "inet", "table": "t", "name": "tw-cali1", "handle": 5}},
        {"chain": {"family": "inet", "table": "t", "name": "filter-input", "handle": 6, "type": "filter",
                   "hook": "input", "prio": 0, "policy": "accept"}},
        {"rule": {"family": "inet", "table": "t", "chain": "tw-cali1", "handle": 7, "comment": "vpa:abc",
                  "expr": [{"match": {"op": "==", "left": {}, "right": "@s-x-4"}}, {"drop": None}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "tw-cali1", "handle": 8,
                  "expr": [{"jump": {"target": "pi-1"}}]}},
    ]
    got = {k: v for k, (v, _) in parse_table(objects).items()}
    assert got[set_key("n-x-4")].elements == frozenset({"10.0.0.1 . 6 . 80"})
    assert got[set_key("s-x-4")].elements == frozenset({"10.0.0.0/24", "10.1.0.1", "10.2.0.0-10.2.0.5"})
    assert got[set_key("aff-x")] == NftSet(SetDecl("ipv4_addr", timeout=30))          # kernel-owned elements
    assert got[elem_key("wl-to", '"cali1"')] == Element("jump tw-cali1")
    tw = got[chain_key("tw-cali1")]
    assert tw.digests == ("abc", "!foreign-8") and tw.refs == {set_key("s-x-4"), chain_key("pi-1")}
    assert got[chain_key("filter-input")].hook.hook == "input"


# -- the dataplane: O(changed) transactions -----------------------------------------------------

PID = PolicyID("default", "ns/web")


def snapshot(n: int) -> list[Update]:
    ups: list[Update] = [
        IPSetUpdate("s:0123456789abcdef0123", IPSetType.NET, frozenset({"10.0.0.1/32"})),
        PolicyUpdate(PID, RenderedPolicy(inbound_rules=(rule(src_ip_set_ids=("s:0123456789abcdef0123",)),))),
        ProfileUpdate("kns.ns", inbound_rules=(rule(),), outbound_rules=(rule(),)),
    ]
    for i in range(n):
        ups.append(WorkloadEndpointUpdate(f"wep{i}", WorkloadEndpointInfo(
            namespace="ns", pod=f"p{i}", node="n1", endpoint="eth0", interface_name=f"cali{i}",
            nets=(ip_network(f"10.0.1.{i + 1}/32"),), profile_ids=("kns.ns",),
            tiers=(TierInfo("default", ingress_policies=("ns/web",)),))))
    return ups


def started(n: int) -> tuple[NftablesDataplane, RecordingRunner]:
    runner = RecordingRunner()
    dp = NftablesDataplane(NftablesConfig(refresh_interval=None), runner=runner)
    dp.start()
    dp.apply(snapshot(n))
    assert runner.scripts == []                                  # nothing before InSync
    dp.apply([InSync()])
    assert len(runner.scripts) == 1 and dp.status().failed == 0
    return dp, runner


def test_ip_set_delta_sends_only_element_changes() -> None:
    dp, runner = started(5)
    dp.apply([IPSetDeltaUpdate("s:0123456789abcdef0123", added=frozenset({"10.0.0.2/32", "fd00::2/128"}),
                               removed=frozenset({"10.0.0.1/32"}))])
    assert runner.scripts[-1].splitlines() == [
        "delete element inet vppagent s-0123456789abcdef0123-4 { 10.0.0.1 }",
        "add element inet vppagent s-0123456789abcdef0123-4 { 10.0.0.2 }",
        "add element inet vppagent s-0123456789abcdef0123-6 { fd00::2 }",
    ]


def test_one_endpoint_change_touches_only_its_chains_and_elements() -> None:
    dp, runner = started(5)
    changed = snapshot(5)[-1]
    assert isinstance(changed, WorkloadEndpointUpdate)
    info = changed.endpoint
    dp.apply([WorkloadEndpointUpdate(changed.id, WorkloadEndpointInfo(
        **{**info.__dict__, "tiers": ()}))])                       # its policy no longer applies
    lines = runner.scripts[-1].splitlines()
    assert lines and all("cali4" in line for line in lines)
    assert {line.split()[:2][0] for line in lines} <= {"flush", "add"}
    # A new endpoint: its two chains and two dispatch elements, nothing else.
    dp.apply([WorkloadEndpointUpdate("wep9", WorkloadEndpointInfo(**{**info.__dict__, "interface_name": "cali9"}))])
    lines = runner.scripts[-1].splitlines()
    assert [line for line in lines if not line.startswith("add rule")] == [
        "add table inet vppagent", "add chain inet vppagent fw-cali9", "add chain inet vppagent tw-cali9",
        'add element inet vppagent wl-from { "cali9" : jump fw-cali9 }',
        'add element inet vppagent wl-to { "cali9" : jump tw-cali9 }']


def test_policy_change_size_does_not_depend_on_endpoint_count() -> None:
    sizes = []
    for n in (3, 80):
        dp, runner = started(n)
        dp.apply([PolicyUpdate(PID, RenderedPolicy(inbound_rules=(rule(Action.DENY),)))])
        sizes.append(runner.scripts[-1])
        dp.apply([PolicyUpdate(PID, RenderedPolicy(inbound_rules=(rule(Action.DENY),)))])   # no-op
        assert len(runner.scripts) == 2
    assert sizes[0] == sizes[1] and sizes[0].count("\n") == 2


def test_removing_a_policy_rerenders_the_endpoints_naming_it() -> None:
    dp, runner = started(2)
    dp.apply([PolicyRemove(PID)])
    script = runner.scripts[-1]
    pi = names.policy_chain(PID, True)
    assert f"delete chain inet vppagent {pi}" in script
    assert f"jump {pi}" not in script and "flush chain inet vppagent tw-cali0" in script
    assert "delete chain inet vppagent tw-cali0" not in script         # refilled in place
    assert dp.status().failed == 0 and dp.status().pending == 0


def test_dump_reports_transactions() -> None:
    dp, runner = started(1)
    d = dp.dump()
    assert d["table"] == "inet vppagent" and d["transactions"]["sent"] == 1 and d["in_sync"]
    assert any(k["key"].startswith("nft-chain:tw-cali0") for k in d["keys"])
