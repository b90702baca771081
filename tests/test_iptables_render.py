"""Rendering for the iptables dataplane, without root: names, hashes, rules, chains, config."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from vppagent.dataplane import create_dataplane
from vppagent.dataplane.iptables import IptablesConfig, IptablesDataplane
from vppagent.dataplane.iptables.commands import Runner
from vppagent.dataplane.iptables.config import parse_port_spec
from vppagent.dataplane.iptables.endpoints import (
    EndpointSettings, dispatch_chains, host_chains, host_dispatch, workload_chains,
)
from vppagent.dataplane.iptables.ipsets import IP_PORT, NET, set_value, write_script
from vppagent.dataplane.iptables.marks import Marks
from vppagent.dataplane.iptables.match import MatchContext, compile_rule, port_chunks
from vppagent.dataplane.iptables.model import ChainKey, HookKey, IPSetKey, IPSetValue, Rules, rule_hashes
from vppagent.dataplane.iptables.names import MAX_CHAIN_NAME, MAX_IPSET_NAME, chain_name, ipset_name
from vppagent.dataplane.iptables.policy import policy_chain, policy_chains, profile_chain, rule_bodies
from vppagent.dataplane.iptables.readback import owned_chains, parse_counters, parse_ipset_save, parse_save
from vppagent.dataplane.iptables.services import backend_chain, frontend_chain, render_service, shared_chains
from vppagent.dataplane.service_plan import plan_service
from vppagent.manifests.loader import load_objects
from vppagent.model.resources import Action, PortRange, TierDefault
from vppagent.model.updates import (
    HostEndpointInfo, HostEndpointUpdate, InSync, IPSetType, IPSetUpdate, PolicyID, PolicyUpdate,
    ProfileUpdate, RenderedPolicy, RenderedRule, RuleOrigin, ServiceUpdate, TierInfo, WorkloadEndpointInfo,
    WorkloadEndpointUpdate,
)

MARKS = Marks.from_mask(0xFFFF0000)
A, P, S0, S1, Q = MARKS.accept, MARKS.pass_, MARKS.scratch0, MARKS.scratch1, MARKS.masq
SETS = {"s:a": IPSetType.NET, "s:b": IPSetType.NET, "n:http": IPSetType.IP_AND_PORT}
CTX4 = MatchContext(4, MARKS, SETS)
CTX6 = MatchContext(6, MARKS, SETS)
SETTINGS = EndpointSettings(marks=MARKS, failsafe_inbound=IptablesConfig().failsafe_inbound,
                            failsafe_outbound=IptablesConfig().failsafe_outbound)


def r(action: Action = Action.ALLOW, **kw: Any) -> RenderedRule:
    return RenderedRule(action=action, origin=RuleOrigin("p", 0), **kw)


def nets(*texts: str) -> tuple:
    return tuple(ipaddress.ip_network(t) for t in texts)


def ports(*spec: int | tuple[int, int]) -> tuple[PortRange, ...]:
    return tuple(PortRange(p, p) if isinstance(p, int) else PortRange(*p) for p in spec)


# -- names and hashes ----------------------------------------------------------------------------

def test_chain_names_fit_and_long_ones_are_hashed() -> None:
    assert chain_name("cali-pri-", "kns.shop") == "cali-pri-kns.shop"
    long = chain_name("cali-pi-", "default/a-very-long-namespace/knp.default.allow-everything")
    assert len(long) <= MAX_CHAIN_NAME and long.startswith("cali-pi-_")
    assert chain_name("cali-pi-", "x/y") != chain_name("cali-pi-", "x/z")
    assert chain_name("cali-pi-", "x/y") == chain_name("cali-pi-", "x/y")
    assert chain_name("cali-tw-", "cali1234567890a") == "cali-tw-cali1234567890a"


def test_ipset_names_fit() -> None:
    assert ipset_name(4, "s:0123456789abcdef0123") == "cali40s:0123456789abcdef0123"
    assert ipset_name(6, "s:x") == "cali60s:x"
    assert ipset_name(4, "n:x", ip_and_port=True) == "cali41n:x"
    long = ipset_name(4, "s:" + "f" * 40)
    assert len(long) <= MAX_IPSET_NAME and long.startswith("cali40h:")


def test_every_rendered_name_respects_the_limits() -> None:
    dp = IptablesDataplane(IptablesConfig(backend="nft", node_name="node1"), runner=FakeRunner())
    pid = PolicyID("security-tier-with-a-long-name", "some-namespace/knp.default.a-long-policy-name")
    dp.apply([
        IPSetUpdate("s:" + "a" * 50, IPSetType.NET, frozenset({"10.0.0.1/32"})),
        PolicyUpdate(pid, RenderedPolicy(inbound_rules=(r(src_ip_set_ids=("s:" + "a" * 50,)),))),
        ProfileUpdate("kns.a-namespace-with-quite-a-long-name-indeed"),
        WorkloadEndpointUpdate("w", WorkloadEndpointInfo("ns", "p", "node1", "eth0", "cali0123456789a",
                                                         profile_ids=("kns.a-namespace-with-quite-a-long-name-indeed",),
                                                         tiers=(TierInfo(pid.tier, ingress_policies=(pid.name,)),))),
    ])
    for key in dp.reconciler.desired():
        if isinstance(key, (ChainKey, HookKey)):
            assert len(key.chain) <= MAX_CHAIN_NAME, key
        else:
            assert len(key.name) <= MAX_IPSET_NAME, key


def test_rule_hashes_chain_through_previous_rules() -> None:
    a = rule_hashes("cali-x", ["-j ACCEPT", "-j DROP", "-j RETURN"])
    b = rule_hashes("cali-x", ["-j LOG", "-j DROP", "-j RETURN"])
    c = rule_hashes("cali-y", ["-j ACCEPT", "-j DROP", "-j RETURN"])
    assert len(set(a)) == 3 and all(len(h) == 16 for h in a)
    assert a[0] != b[0] and a[1] != b[1] and a[2] != b[2]       # a change ripples down the chain
    assert a != c                                              # the chain name is part of it
    assert rule_hashes("cali-x", ["-j ACCEPT", "-j DROP", "-j RETURN"]) == a
    lines = Rules.render("cali-x", ["-j ACCEPT"]).lines("-A", "cali-x")
    assert lines == [f'-A cali-x -m comment --comment "cali:{a[0]}" -j ACCEPT']


def test_read_back_by_hash_marks_hand_edits_and_misplaced_hooks() -> None:
    rules = Rules.render("cali-x", ["-j ACCEPT", "-j DROP"])
    hook = Rules.render("FORWARD", ["-j cali-FORWARD"])
    text = "\n".join([
        "*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [5:300]", ":cali-x - [0:0]", ":THEIRS - [0:0]",
        "[1:60] -A FORWARD -s 10.0.0.1/32 -j THEIRS",
        f'[7:420] -A FORWARD -m comment --comment "cali:{hook.hashes[0]}" -j cali-FORWARD',
        f'[2:120] -A cali-x -m comment --comment cali:{rules.hashes[0]} -j ACCEPT',
        "[0:0] -A cali-x -j LOG",
        f'[0:0] -A cali-x -m comment --comment "cali:{rules.hashes[1]}" -j DROP',
        "-A THEIRS -j ACCEPT", "COMMIT",
    ])
    found = dict(owned_chains(4, parse_save(text)))
    assert found[ChainKey(4, "filter", "cali-x")].hashes == (rules.hashes[0], "", rules.hashes[1])
    assert found[HookKey(4, "filter", "FORWARD")].hashes == (hook.hashes[0], "!misplaced")
    assert ChainKey(4, "filter", "THEIRS") not in found
    assert parse_counters(text)[("filter", "cali-x")] == [(2, 120), (0, 0), (0, 0)]


def test_ipset_members_are_canonical_both_ways() -> None:
    v = set_value(NET, ["10.0.0.1/32", "10.1.0.0/16", "fd00::1/128", "0.0.0.0/0"], 4)
    assert v.members == {"10.0.0.1/32", "10.1.0.0/16", "0.0.0.0/1", "128.0.0.0/1"}
    p = set_value(IP_PORT, ["10.0.0.1,6:80", "fd00::1,17:53", "10.0.0.2,udp:53", "10.0.0.3,1:0"], 4)
    assert p.members == {"10.0.0.1,tcp:80", "10.0.0.2,udp:53"}
    saved = ("create cali40s:a hash:net family inet hashsize 1024 maxelem 1048576 bucketsize 12\n"
             "add cali40s:a 10.0.0.1\nadd cali40s:a 10.1.0.0/16\n"
             "create theirs hash:ip family inet\nadd theirs 1.2.3.4\n"
             "create cali61n:b hash:ip,port family inet6 hashsize 1024 maxelem 65536\nadd cali61n:b fd00::1,tcp:80\n")
    found = parse_ipset_save(saved)
    assert found == {IPSetKey(4, "cali40s:a"): IPSetValue(NET, frozenset({"10.0.0.1/32", "10.1.0.0/16"})),
                     IPSetKey(6, "cali61n:b"): IPSetValue(IP_PORT, frozenset({"fd00::1,tcp:80"}), 65536)}


def test_ipset_scripts_write_deltas_or_swap() -> None:
    key = IPSetKey(4, "cali40s:a")
    old = IPSetValue(NET, frozenset({"10.0.0.1/32", "10.0.0.2/32"}))
    new = IPSetValue(NET, frozenset({"10.0.0.2/32", "10.0.0.3/32"}))
    assert write_script(key, new, old) == ["del cali40s:a 10.0.0.1/32", "add cali40s:a 10.0.0.3/32"]
    fresh = write_script(key, new, None)
    assert fresh[0].startswith("create cali40s:a hash:net family inet") and fresh[1] == "flush cali40s:a"
    swap = write_script(key, new, IPSetValue(NET, old.members, maxelem=65536))
    assert swap[0].startswith("create cali4ts:a hash:net") and "swap cali4ts:a cali40s:a" in swap
    assert swap[-1] == "destroy cali4ts:a"


# -- rules ----------------------------------------------------------------------------------------

def test_simple_rule_is_one_iptables_rule() -> None:
    m = compile_rule(r(protocol=6, src_nets=nets("10.0.0.0/8"), dst_ports=ports(80, (1000, 2000)),
                       src_ip_set_ids=("s:a",), not_dst_ip_set_ids=("s:b",)), CTX4)
    assert m is not None and m.setup == ()
    assert m.final == ("-p tcp -s 10.0.0.0/8 -m set --match-set cali40s:a src "
                       "-m set ! --match-set cali40s:b dst -m multiport --dports 80,1000:2000")


def test_more_than_fifteen_ports_are_split() -> None:
    many = ports(*range(1, 21))
    assert [len(c.split(",")) for c in port_chunks(many)] == [15, 5]
    assert [c.count(",") + 1 for c in port_chunks(ports(*[(i * 10, i * 10 + 1) for i in range(1, 10)]))] == [7, 2]
    m = compile_rule(r(protocol=6, dst_ports=many), CTX4)
    assert m is not None
    alternatives = [s for s in m.setup if "--dports" in s]
    assert len(alternatives) == 2
    assert all(s.count(",") + 1 <= 15 for s in alternatives)
    bodies = rule_bodies(r(protocol=6, dst_ports=many), CTX4, "x")
    assert sum("--dports" in b for b in bodies) == 2 and bodies[-2].endswith(f"--set-xmark {A:#x}/{A:#x}")


def test_or_and_negations_use_the_scratch_marks() -> None:
    m = compile_rule(r(src_nets=nets("10.0.0.0/8", "192.168.0.0/16"),
                       not_src_nets=nets("10.1.0.0/16", "10.2.0.0/16"), dst_ports=ports(80),
                       dst_named_port_ip_set_ids=("n:http",), protocol=6), CTX4)
    assert m is not None
    assert m.setup[0] == f"-j MARK --set-xmark {S0:#x}/{S0 | S1:#x}"
    text = "\n".join(m.setup)
    assert f"-s 10.0.0.0/8 -j MARK --set-xmark {S1:#x}/{S1:#x}" in text
    assert f"-s 192.168.0.0/16 -j MARK --set-xmark {S1:#x}/{S1:#x}" in text
    assert f"-m mark --mark {S0:#x}/{S0 | S1:#x} -j MARK --set-xmark 0x0/{S0:#x}" in text
    assert "--match-set cali41n:http dst,dst" in text and "--dports 80" in text
    assert f"-s 10.2.0.0/16 -j MARK --set-xmark 0x0/{S0:#x}" in text      # the second negation
    assert m.final == f"-m mark --mark {S0:#x}/{S0:#x} -p tcp ! -s 10.1.0.0/16"


def test_rules_that_cannot_match_in_a_family_are_left_out() -> None:
    assert compile_rule(r(ip_version=6), CTX4) is None
    assert compile_rule(r(src_nets=nets("fd00::/64")), CTX4) is None
    assert compile_rule(r(src_nets=nets("fd00::/64", "10.0.0.0/8")), CTX4).final == "-s 10.0.0.0/8"
    assert compile_rule(r(protocol=1), CTX6) is None
    assert compile_rule(r(src_ip_set_ids=("s:missing",)), CTX4) is None       # a missing set is empty
    assert compile_rule(r(not_src_ip_set_ids=("s:missing",)), CTX4).final == ""
    assert compile_rule(r(not_dst_nets=nets("0.0.0.0/0")), CTX4) is None
    assert compile_rule(r(protocol=1, dst_ports=ports(80)), CTX4) is None


def test_icmp_and_protocol_matches() -> None:
    assert compile_rule(r(protocol=1, icmp_type=8, icmp_code=0), CTX4).final == "-p icmp -m icmp --icmp-type 8/0"
    assert compile_rule(r(protocol=58, icmp_type=128), CTX6).final == "-p ipv6-icmp -m icmp6 --icmpv6-type 128"
    assert compile_rule(r(protocol=1, not_icmp_type=8), CTX4).final == "-p icmp -m icmp ! --icmp-type 8"
    assert compile_rule(r(not_protocol=17), CTX4).final == "! -p udp"
    assert compile_rule(r(protocol=132), CTX4).final == "-p sctp"
    no_proto_ports = compile_rule(r(dst_ports=ports(80)), CTX4)
    assert no_proto_ports.setup and {s.split()[5] for s in no_proto_ports.setup if "--dports" in s} == {
        "tcp", "udp", "sctp", "udplite"}


def test_actions() -> None:
    assert rule_bodies(r(Action.DENY, protocol=6), CTX4, "x") == ["-p tcp -j DROP"]
    assert rule_bodies(r(Action.ALLOW), CTX4, "x") == [
        f"-j MARK --set-xmark {A:#x}/{A:#x}", f"-m mark --mark {A:#x}/{A:#x} -j RETURN"]
    assert rule_bodies(r(Action.PASS), CTX4, "x") == [
        f"-j MARK --set-xmark {P:#x}/{P:#x}", f"-m mark --mark {P:#x}/{P:#x} -j RETURN"]
    assert rule_bodies(r(Action.LOG, protocol=17), CTX4, "calico-packet: ") == [
        '-p udp -j LOG --log-prefix "calico-packet: "']


# -- endpoint chains --------------------------------------------------------------------------------

POLICIES = {
    PolicyID("security", "sec"): RenderedPolicy(inbound_rules=(r(Action.PASS),)),
    PolicyID("security", "sec2"): RenderedPolicy(inbound_rules=(r(Action.DENY),)),
    PolicyID("lenient", "len"): RenderedPolicy(inbound_rules=(r(Action.DENY, protocol=17),)),
    PolicyID("default", "ns/web"): RenderedPolicy(inbound_rules=(r(protocol=6),)),
}
PROFILES = {"kns.ns": ProfileUpdate("kns.ns", (r(),), (r(),))}


def wep(tiers: tuple[TierInfo, ...], profiles: tuple[str, ...] = ("kns.ns", "ksa.ns.default")) -> WorkloadEndpointInfo:
    return WorkloadEndpointInfo("ns", "web", "node1", "eth0", "cali0123456789a", tiers=tiers, profile_ids=profiles)


def test_workload_chain_walks_tiers_pass_default_pass_and_profiles() -> None:
    tiers = (
        TierInfo("security", ingress_policies=("sec", "sec2", "gone")),
        TierInfo("lenient", TierDefault.PASS, ingress_policies=("len",)),
        TierInfo("egress-only", egress_policies=("x",)),
        TierInfo("default", ingress_policies=("ns/web",)),
    )
    chains = workload_chains(wep(tiers), 4, POLICIES, PROFILES, SETTINGS)
    tw = chains[ChainKey(4, "filter", "cali-tw-cali0123456789a")].bodies
    pass_clear = f"-j MARK --set-xmark 0x0/{P:#x}"
    guard = f"-m mark --mark 0x0/{P:#x}"
    ret = f"-m mark --mark {A:#x}/{A:#x} -j RETURN"
    assert list(tw[:3]) == ["-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                            "-m conntrack --ctstate INVALID -j DROP",
                            f"-j MARK --set-xmark 0x0/{MARKS.policy_bits:#x}"]
    pi = {pid: policy_chains(pid, pol, CTX4, "x") for pid, pol in POLICIES.items()}
    name = {pid: next(k.chain for k in c if k.chain.startswith("cali-pi-")) for pid, c in pi.items()}
    expected = [
        pass_clear,
        f"{guard} -j {name[PolicyID('security', 'sec')]}", ret,
        f"{guard} -j {name[PolicyID('security', 'sec2')]}", ret,
        f"{guard} -j DROP",                       # end of tier security ("gone" is unknown: skipped)
        pass_clear,
        f"{guard} -j {name[PolicyID('lenient', 'len')]}", ret,   # default Pass: no drop
        pass_clear,                               # egress-only tier does not apply to ingress
        f"{guard} -j {name[PolicyID('default', 'ns/web')]}", ret,
        f"{guard} -j DROP",
        pass_clear, f"-j {profile_chain(True, 'kns.ns')}", ret,   # ksa.ns.default unknown: skipped
        "-j DROP",
    ]
    assert list(tw[3:]) == expected
    fw = chains[ChainKey(4, "filter", "cali-fw-cali0123456789a")].bodies
    assert f"-j {profile_chain(False, 'kns.ns')}" in fw and fw[-1] == "-j DROP"


def test_no_policy_no_profile_denies() -> None:
    chains = workload_chains(wep((), ()), 4, {}, {}, SETTINGS)
    assert chains[ChainKey(4, "filter", "cali-tw-cali0123456789a")].bodies[-2:] == (
        f"-j MARK --set-xmark 0x0/{MARKS.policy_bits:#x}", "-j DROP")


def test_dispatch_is_a_shallow_trie_with_drop_for_unknown_interfaces() -> None:
    few = dispatch_chains(4, "filter", "cali-to-wl-dispatch", "-o", {"cali1": "cali-tw-cali1"}, ("cali",), "DROP")
    assert few[ChainKey(4, "filter", "cali-to-wl-dispatch")].bodies == ("-o cali1 -g cali-tw-cali1", "-j DROP")
    targets = {f"cali{c}{i:03d}": f"cali-tw-cali{c}{i:03d}" for c in "ab" for i in range(12)}
    many = dispatch_chains(4, "filter", "cali-to-wl-dispatch", "-o", targets, ("cali",), "DROP")
    root = many[ChainKey(4, "filter", "cali-to-wl-dispatch")].bodies
    assert root == ("-o calia+ -g cali-to-wl-dispatch-a", "-o calib+ -g cali-to-wl-dispatch-b", "-j DROP")
    sub = many[ChainKey(4, "filter", "cali-to-wl-dispatch-a")].bodies
    assert len(sub) == 13 and sub[0] == "-o calia000 -g cali-tw-calia000" and sub[-1] == "-j DROP"


def test_host_endpoint_chains_have_failsafe_and_default_deny() -> None:
    hep = HostEndpointInfo("eth0-hep", "node1", "eth0", profile_ids=())
    chains = host_chains(hep, 4, {}, {}, SETTINGS)
    fh = chains[ChainKey(4, "filter", "cali-fh-eth0")].bodies
    th = chains[ChainKey(4, "filter", "cali-th-eth0")].bodies
    assert fh[2] == "-j cali-failsafe-in" and th[2] == "-j cali-failsafe-out"
    assert fh[-1] == "-j DROP" and th[-1] == "-j DROP"
    dp = IptablesDataplane(IptablesConfig(backend="nft"), runner=FakeRunner())
    desired = dp.reconciler.desired()
    assert desired[ChainKey(4, "filter", "cali-failsafe-in")].bodies == (
        "-p tcp -m multiport --dports 22,179,2379:2380,6443 -j ACCEPT",
        "-p udp -m multiport --dports 68 -j ACCEPT")
    assert desired[ChainKey(4, "filter", "cali-failsafe-out")].bodies == (
        "-p tcp -m multiport --dports 179,2379:2380,6443 -j ACCEPT",
        "-p udp -m multiport --dports 53,67 -j ACCEPT")
    custom = IptablesDataplane(IptablesConfig.from_mapping({"failsafeInbound": ["tcp:2222", "udp:500-501"]}),
                               runner=FakeRunner())
    assert custom.reconciler.desired()[ChainKey(4, "filter", "cali-failsafe-in")].bodies == (
        "-p tcp -m multiport --dports 2222 -j ACCEPT", "-p udp -m multiport --dports 500:501 -j ACCEPT")


def test_host_endpoint_untracked_and_pre_dnat_tiers() -> None:
    pols = {PolicyID("default", "raw"): RenderedPolicy(inbound_rules=(r(),), untracked=True),
            PolicyID("default", "pre"): RenderedPolicy(inbound_rules=(r(Action.DENY),), pre_dnat=True)}
    hep = HostEndpointInfo("h", "node1", "eth0",
                           untracked_tiers=(TierInfo("default", ingress_policies=("raw",)),),
                           pre_dnat_tiers=(TierInfo("default", ingress_policies=("pre",)),))
    chains = host_chains(hep, 4, pols, {}, SETTINGS)
    raw = chains[ChainKey(4, "raw", "cali-fh-eth0")].bodies
    assert f"-m mark --mark {A:#x}/{A:#x} -j CT --notrack" in raw and raw[-1] == f"-m mark --mark 0x0/{P:#x} -j RETURN"
    assert any("-j RETURN" in b and "--dports 22," in b for b in raw)        # failsafe skips untracked policy
    mangle = chains[ChainKey(4, "mangle", "cali-fh-eth0")].bodies
    assert mangle[0] == "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
    assert any(b.endswith(f"-j {policy_chain(True, PolicyID('default', 'pre'))}") for b in mangle)
    disp = host_dispatch(4, "filter", [hep, HostEndpointInfo("iponly", "node1", "",
                                                             expected_ips=(ipaddress.ip_address("192.0.2.5"),))],
                         True, ("cali",))
    assert disp[ChainKey(4, "filter", "cali-from-host-endpoint")].bodies == (
        "-i eth0 -g cali-fh-eth0", "-d 192.0.2.5 -g cali-fh-hep.iponly")


# -- services -----------------------------------------------------------------------------------

def svc_update(spec: dict, endpoints: list[str], status: dict | None = None) -> ServiceUpdate:
    objs = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "n"},
             "spec": spec, "status": status or {}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": "s-a", "namespace": "n", "labels": {"kubernetes.io/service-name": "s"}},
             "addressType": "IPv4", "ports": [{"name": "web", "port": 8080, "protocol": "TCP"}],
             "endpoints": [{"addresses": [ip], "nodeName": "node1", "conditions": {"ready": True}} for ip in endpoints]}]
    svc, eps = load_objects(objs)
    return ServiceUpdate(svc.key, svc, (eps,))


SPEC = {"type": "NodePort", "clusterIP": "10.96.0.10", "ports": [{"name": "web", "port": 80, "targetPort": 8080,
                                                                 "nodePort": 30080}]}


def test_service_chains_pick_backends_with_probabilities() -> None:
    fes = plan_service(svc_update(SPEC, ["10.0.0.1", "10.0.0.2", "10.0.0.3"]), "node1")
    render = render_service(fes, MARKS)
    cluster = next(f for f in fes if f.ip is not None)
    chain = render.chains[ChainKey(4, "nat", frontend_chain(cluster))].bodies
    seps = [backend_chain(cluster, b) for b in cluster.backends]
    assert chain == (f"-m statistic --mode random --probability 0.3333333333 -j {seps[0]}",
                     f"-m statistic --mode random --probability 0.5000000000 -j {seps[1]}",
                     f"-j {seps[2]}")
    assert render.chains[ChainKey(4, "nat", seps[0])].bodies == (
        f"-s 10.0.0.1/32 -j MARK --set-xmark {Q:#x}/{Q:#x}",
        "-p tcp -j DNAT --to-destination 10.0.0.1:8080")
    assert render.services[4] == [f"-d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j {frontend_chain(cluster)}"]
    nodeport = next(f for f in fes if f.ip is None)
    assert render.nodeports[4] == [f"-p tcp -m tcp --dport 30080 -j {frontend_chain(nodeport)}"]
    np_chain = render.chains[ChainKey(4, "nat", frontend_chain(nodeport))].bodies
    assert np_chain[0] == f"-j MARK --set-xmark {Q:#x}/{Q:#x}"         # external clients are masqueraded
    shared = shared_chains([render], (4,))
    assert shared[ChainKey(4, "nat", "cali-SERVICES")].bodies[-1] == "-m addrtype --dst-type LOCAL -j cali-NODEPORTS"


def test_service_affinity_local_policy_and_reject() -> None:
    sticky = dict(SPEC, sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}})
    fes = plan_service(svc_update(sticky, ["10.0.0.1", "10.0.0.2"]), "node1")
    render = render_service(fes, MARKS)
    f = fes[0]
    seps = [backend_chain(f, b) for b in f.backends]
    chain = render.chains[ChainKey(4, "nat", frontend_chain(f))].bodies
    assert chain[0] == f"-m recent --name {seps[0]} --rcheck --seconds 60 --reap -j {seps[0]}"
    assert render.chains[ChainKey(4, "nat", seps[1])].bodies[1] == (
        f"-p tcp -m recent --name {seps[1]} --set -j DNAT --to-destination 10.0.0.2:8080")
    local = plan_service(svc_update(dict(SPEC, externalTrafficPolicy="Local"), ["10.0.0.1"]), "node1")
    np = next(x for x in local if x.ip is None)
    assert render_service(local, MARKS).chains[ChainKey(4, "nat", frontend_chain(np))].bodies[0] == (
        f"-m addrtype --src-type LOCAL -j MARK --set-xmark {Q:#x}/{Q:#x}")
    empty = render_service(plan_service(svc_update(dict(SPEC, ports=[
        {"name": "web", "port": 80, "targetPort": 8080, "nodePort": 30080},
        {"name": "dns", "port": 53, "targetPort": 53, "protocol": "UDP"}]), []), "node1"), MARKS)
    assert not empty.chains and not empty.services
    assert empty.rejects[4] == [
        "-d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j REJECT --reject-with tcp-reset",
        "-m addrtype --dst-type LOCAL -p tcp -m tcp --dport 30080 -j REJECT --reject-with tcp-reset",
        "-d 10.96.0.10/32 -p udp -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable",
    ]


# -- config and the dataplane without a kernel ------------------------------------------------------

class FakeRunner(Runner):
    """Answers reads with an empty system and records every command."""

    def __init__(self) -> None:
        super().__init__(None)
        self.calls: list[list[str]] = []

    def run(self, argv, input=None, check=True):  # type: ignore[override]
        import subprocess
        self.calls.append(list(argv))
        return subprocess.CompletedProcess(argv, 0, "", "")


def test_config_parsing_and_errors() -> None:
    cfg = IptablesConfig.from_mapping({"backend": "legacy", "markMask": "0xff000000", "refreshInterval": 5,
                                       "logPrefix": "drop: ", "netns": "n1", "dropInvalid": False})
    assert (cfg.backend, cfg.mark_mask, cfg.refresh_interval, cfg.netns, cfg.drop_invalid) == (
        "legacy", 0xFF000000, 5.0, "n1", False)
    assert cfg.marks.accept == 0x01000000
    with pytest.raises(ValueError, match="'refreshIntreval'"):
        IptablesConfig.from_mapping({"refreshIntreval": 5})
    with pytest.raises(ValueError, match="backend"):
        IptablesConfig.from_mapping({"backend": "bpf"})
    with pytest.raises(ValueError, match="at least 5"):
        IptablesConfig.from_mapping({"markMask": "0x3"})
    with pytest.raises(ValueError, match="failsafeInbound"):
        IptablesConfig.from_mapping({"failsafeInbound": ["icmp:1"]})
    assert str(parse_port_spec("tcp:2379-2380", "x")) == "tcp:2379-2380"
    dp = create_dataplane({"type": "iptables", "backend": "nft", "netns": "x"})
    assert isinstance(dp, IptablesDataplane) and dp.runner.argv(["iptables-nft-save"])[:4] == [
        "ip", "netns", "exec", "x"]
    with pytest.raises(ValueError, match="'bogus'"):
        create_dataplane({"type": "iptables", "bogus": 1})


def test_no_write_before_in_sync_and_one_restore_per_table() -> None:
    runner = FakeRunner()
    dp = IptablesDataplane(IptablesConfig(backend="nft", node_name="node1"), runner=runner)
    dp.start()
    pid = PolicyID("default", "ns/web")
    dp.apply([
        IPSetUpdate("s:a", IPSetType.NET, frozenset({"10.0.0.1/32"})),
        PolicyUpdate(pid, RenderedPolicy(inbound_rules=(r(src_ip_set_ids=("s:a",)),))),
        ProfileUpdate("kns.ns", (r(),), (r(),)),
        WorkloadEndpointUpdate("w", wep((TierInfo("default", ingress_policies=("ns/web",)),))),
        HostEndpointUpdate("h", HostEndpointInfo("h", "node1", "eth0")),
    ])
    writes = [c for c in runner.calls if c[0].endswith("-restore") or c[:2] == ["ipset", "restore"]]
    assert writes == []
    dp.apply([InSync()])
    restores = [c[0] for c in runner.calls if c[0].endswith("tables-nft-restore")]
    assert sorted(restores) == sorted(["iptables-nft-restore", "ip6tables-nft-restore"] * 2)  # filter + nat
    assert sum(c[:2] == ["ipset", "restore"] for c in runner.calls) == 1


def test_several_interface_prefixes() -> None:
    dp = IptablesDataplane(IptablesConfig.from_mapping({"interfacePrefixes": ["cali", "tap"], "backend": "nft"}),
                           runner=FakeRunner())
    forward = dp.reconciler.desired()[ChainKey(4, "filter", "cali-FORWARD")].bodies
    assert "-i cali+ -j cali-from-wl-dispatch" in forward and "-i tap+ -j cali-from-wl-dispatch" in forward
    targets = {f"{p}{c}{i:02d}": f"cali-fw-{p}{c}{i:02d}" for p in ("cali", "tap") for c in "ab" for i in range(5)}
    root = dispatch_chains(4, "filter", "cali-from-wl-dispatch", "-i", targets, ("cali", "tap"), "DROP")[
        ChainKey(4, "filter", "cali-from-wl-dispatch")].bodies
    assert root[:2] == ("-i calia+ -g cali-from-wl-dispatch-calia", "-i calib+ -g cali-from-wl-dispatch-calib")
    assert "-i tapa+ -g cali-from-wl-dispatch-tapa" in root and root[-1] == "-j DROP"


def test_node_name_is_learned_from_endpoints_and_dump_is_json() -> None:
    import json

    dp = IptablesDataplane(IptablesConfig(backend="nft"), runner=FakeRunner())
    dp.start()
    reject = ChainKey(4, "filter", "cali-svc-reject")
    dp.apply([svc_update(dict(SPEC, externalTrafficPolicy="Local"), ["10.0.0.1"]), InSync()])
    assert any("30080" in b for b in dp.reconciler.desired()[reject].bodies)   # backend not on this node
    dp.apply([WorkloadEndpointUpdate("w", wep(()))])
    assert dp.node_name == "node1"
    assert not any("30080" in b for b in dp.reconciler.desired()[reject].bodies)   # now it is local
    out = json.loads(json.dumps(dp.dump()))
    assert out["backend"] == "nft" and out["node"] == "node1" and out["keys"]
