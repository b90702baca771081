"""Policy rendering for npol and the ACL plugin, checked by the messages VPP gets.

Small cases whose expected messages can be read off the rules; the
semantics of whole programs are checked with real packets against the
reference evaluator in ``test_vpp_real.py`` (every conformance case, both
engines).  Updates are built by hand here, so each case says exactly what
the dataplane receives.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Iterator

import pytest

from test_vpp_dataplane import FakeLinux, Recorder, make, tagged, wiring
from vpp_env import fake_vpp
from vppagent.dataplane.vpp import VppDataplane
from vppagent.dataplane.vpp.acl_render import PERMIT, PERMIT_REFLECT
from vppagent.dataplane.vpp.config import HostInterface
from vppagent.dataplane.vpp.keys import NpolIfaceKey, NpolIfaceValue, NpolPolicyKey, NpolSetKey
from vppagent.dataplane.vpp.match import Match, PortItem, Side
from vppagent.dataplane.vpp.program import ALLOW, DENY, Goto, workload_program
from vppagent.model.resources import Action, Direction, NamedPort, PortRange, TierDefault
from vppagent.model.state import DataplaneState
from vppagent.model.updates import (
    HostEndpointInfo, HostEndpointUpdate, InSync, IPSetDeltaUpdate, IPSetType, IPSetUpdate, PolicyID,
    PolicyUpdate, ProfileUpdate, RenderedPolicy, RenderedRule, RuleOrigin, TierInfo, WorkloadEndpointInfo,
    WorkloadEndpointUpdate,
)
from vppagent.vpp.fake import FakeVpp

WEB, DB = "caliweb", "calidb"
ALLOW_ALL = RenderedRule(Action.ALLOW, RuleOrigin("p", 0))
L4, ICMP_TYPE = 3, 1
CIDR, PORT_RANGE, PORT_IP_SET, IP_SET = 0, 1, 2, 3


def rule(action: Action = Action.ALLOW, **kw: Any) -> RenderedRule:
    return RenderedRule(action, RuleOrigin("p", 0), **kw)


def tier(name: str, ingress: tuple[str, ...] = (), egress: tuple[str, ...] = (),
         default: TierDefault = TierDefault.DENY) -> TierInfo:
    return TierInfo(name, default, ingress, egress)


def wep(ifname: str, ip: str, tiers: tuple[TierInfo, ...] = (), profiles: tuple[str, ...] = ("open",),
        ports: tuple[NamedPort, ...] = ()) -> WorkloadEndpointUpdate:
    return WorkloadEndpointUpdate(ifname, WorkloadEndpointInfo(
        "ns", ifname, "node1", "eth0", ifname, nets=(ipaddress.ip_network(ip),), profile_ids=profiles, tiers=tiers,
        ports=ports))


def policy(tier_name: str, name: str, inbound: tuple[RenderedRule, ...] = (),
           outbound: tuple[RenderedRule, ...] = ()) -> PolicyUpdate:
    return PolicyUpdate(PolicyID(tier_name, name), RenderedPolicy(inbound, outbound))


OPEN = ProfileUpdate("open", (ALLOW_ALL,), (ALLOW_ALL,))
WEB_SET = IPSetUpdate("s:web", IPSetType.NET, frozenset({"10.1.0.1/32"}))


@pytest.fixture
def fake() -> Iterator[FakeVpp]:
    with fake_vpp() as f:
        yield f


def program(fake: FakeVpp, tmp: Path, updates: list[Any], **options: Any) -> tuple[VppDataplane, Recorder]:
    rec = Recorder(fake)
    dp = make(fake, tmp, linux=FakeLinux(), **options)
    dp.wire_workload(wiring(WEB, "10.1.0.1/32"))
    dp.wire_workload(wiring(DB, "10.1.0.2/32"))
    dp.apply([*updates, InSync()])
    assert dp.status().ready, dp.dump()
    return dp, rec


def npol_config(fake: FakeVpp, ifname: str) -> dict[str, Any]:
    """What VPP holds for the interface (ids of npol policies)."""
    idx = tagged(fake)[f"vppagent:pod:{ifname}"].sw_if_index
    return fake.state.npol_interfaces[idx]


def iface(dp: VppDataplane, ifname: str) -> NpolIfaceValue:
    return dp.reconciler.desired()[NpolIfaceKey(ifname)]


def rules(dp: VppDataplane, key: NpolPolicyKey) -> list[tuple[bool, int, list, list]]:
    """(is_inbound, action, filters, entries) with sets shown as (kind, members)."""
    desired = dp.reconciler.desired()
    out = []
    for inbound, r in desired[key].items:
        ents = []
        for e in r.entries:
            value = e.value
            if isinstance(value, NpolSetKey):
                value = (value.kind, sorted(desired[value].members))
            ents.append((e.is_src, e.is_not, e.type, value))
        out.append((inbound, r.action, [f for f in r.filters], ents))
    return out


def configured_ids(dp: VppDataplane, keys: tuple[NpolPolicyKey, ...]) -> list[int]:
    return [dp.reconciler.metadata(k)[0] for k in keys]


def acl_lists(fake: FakeVpp, ifname: str) -> tuple[list[dict], list[dict]]:
    idx = tagged(fake)[f"vppagent:pod:{ifname}"].sw_if_index
    n_input, acls = fake.state.acl_bindings[idx]
    rules = [[r for r in fake.state.acls[a][1]] for a in acls]
    flat_in = [r for lst in rules[:n_input] for r in lst]
    flat_out = [r for lst in rules[n_input:] for r in lst]
    return flat_in, flat_out


def acl(r: dict[str, Any]) -> tuple:
    return (r["is_permit"], str(r["src_prefix"]), str(r["dst_prefix"]), r["proto"],
            (r["srcport_or_icmptype_first"], r["srcport_or_icmptype_last"]),
            (r["dstport_or_icmpcode_first"], r["dstport_or_icmpcode_last"]))


INGRESS_5432 = [
    WEB_SET,
    policy("default", "ns/db", inbound=(rule(protocol=6, src_ip_set_ids=("s:web",), dst_ports=(PortRange(5432, 5432),)),)),
    OPEN,
    wep(WEB, "10.1.0.1/32"),
    wep(DB, "10.1.0.2/32", tiers=(tier("default", ingress=("ns/db",)),)),
]


# ------------------------------------------------------------------ npol

F_TCP, F_UDP = (L4, 6, 1), (L4, 17, 1)
WEB_MEMBERS = (IP_SET_KIND := "net", ["10.1.0.1/32"])


def test_an_ingress_policy_in_npol(fake: FakeVpp, tmp_path: Path) -> None:
    dp, rec = program(fake, tmp_path, INGRESS_5432, policy="npol")
    db = iface(dp, DB)
    assert (db.policy_default, db.profile_default, db.invert) == (2, 1, False)      # PASS on, then DENY
    (bypass_rx,) = db.rx                                 # no egress policy: only npol's bypass
    bypass, pol, deny_all = db.tx                        # a pod's ingress is VPP tx
    assert rules(dp, bypass) == [(False, 0, [(L4, 6, 0), (L4, 17, 0), (L4, 132, 0)], [])]
    assert rules(dp, pol) == [(False, 0, [F_TCP], [(True, False, IP_SET, WEB_MEMBERS),
                                                    (False, False, PORT_RANGE, (5432, 5432))])]
    assert rules(dp, deny_all) == [(False, 1, [], [])]
    (profile,) = db.profiles
    assert sorted(i for i, *_ in rules(dp, profile)) == [False, True]              # both directions
    assert iface(dp, WEB).profiles == db.profiles                                  # shared objects
    # what VPP holds and the messages that made it
    cfg = npol_config(fake, DB)
    assert cfg["tx_policies"] == configured_ids(dp, db.tx) and cfg["profiles"] == configured_ids(dp, db.profiles)
    (create,) = [m for m in rec.messages("npol_rule_create") if m.rule.num_entries == 2]
    src, dport = create.rule.matches
    assert (src.is_src, src.type, dport.type) == (True, IP_SET, PORT_RANGE)
    assert src.data.set_id.set_id == dp.reconciler.metadata(NpolSetKey("net", ("s:web",)))
    assert (dport.data.port_range.start, dport.data.port_range.end) == (5432, 5432)
    assert [(f.type, f.value, f.should_match) for f in create.rule.filters] == [F_TCP, (0, 0, 0), (0, 0, 0)]
    (members,) = rec.messages("npol_ipset_add_del_members")
    assert [str(m.val.prefix) for m in members.members] == ["10.1.0.1/32"]


def test_pass_from_an_earlier_tier_is_intersected_with_the_next_tier(fake: FakeVpp, tmp_path: Path) -> None:
    updates = [
        WEB_SET,
        policy("sec", "sec.db", inbound=(rule(Action.LOG), rule(Action.PASS, src_ip_set_ids=("s:web",)),
                                         rule(Action.DENY))),
        policy("default", "ns/db", inbound=(rule(protocol=6, dst_ports=(PortRange(5432, 5432),)),)),
        policy("last", "last.db", inbound=(rule(Action.PASS, protocol=17),)),
        OPEN, wep(WEB, "10.1.0.1/32"),
        wep(DB, "10.1.0.2/32", tiers=(tier("sec", ingress=("sec.db",)), tier("default", ingress=("ns/db",)),
                                       tier("last", ingress=("last.db",)))),
    ]
    dp, _ = program(fake, tmp_path, updates, policy="npol")
    _, sec, deny1, t2, deny2, last, deny3 = iface(dp, DB).tx
    web = (True, False, IP_SET, WEB_MEMBERS)
    # Log left out; Pass(web) reaches tier 2 (5432 allowed, else its end-of-tier deny);
    # tier 3's Pass out of the last tier stays npol's own PASS (to the profiles)
    assert rules(dp, sec) == [
        (False, 0, [F_TCP], [web, (False, False, PORT_RANGE, (5432, 5432))]),
        (False, 1, [], [web]),
        (False, 1, [], []),
    ]
    assert rules(dp, last) == [(False, 3, [F_UDP], [])]
    assert deny1 == deny2 == deny3 and rules(dp, deny1) == [(False, 1, [], [])]


def test_derived_sets_hold_intersections_and_follow_deltas(fake: FakeVpp, tmp_path: Path) -> None:
    updates = [
        WEB_SET, IPSetUpdate("s:team", IPSetType.NET, frozenset({"10.1.0.0/24", "10.9.0.0/16"})),
        policy("sec", "sec.db", inbound=(rule(Action.PASS, src_ip_set_ids=("s:web",)),)),
        policy("default", "ns/db", inbound=(rule(src_ip_set_ids=("s:team",)),)),
        OPEN, wep(WEB, "10.1.0.1/32"),
        wep(DB, "10.1.0.2/32", tiers=(tier("sec", ingress=("sec.db",)), tier("default", ingress=("ns/db",)))),
    ]
    dp, rec = program(fake, tmp_path, updates, policy="npol")
    sec = iface(dp, DB).tx[1]
    assert rules(dp, sec)[0] == (False, 0, [], [(True, False, IP_SET, ("net", ["10.1.0.1/32"]))])   # web ∧ team
    assert NpolSetKey("net", ("s:team", "s:web")) in dp.reconciler.desired()
    mark = rec.mark()
    dp.apply([IPSetDeltaUpdate("s:web", added=frozenset({"10.9.1.0/24", "10.77.0.1/32"}))])
    deltas = rec.messages("npol_ipset_add_del_members", mark)
    derived_id = dp.reconciler.metadata(NpolSetKey("net", ("s:team", "s:web")))
    (derived,) = [m for m in deltas if m.set_id == derived_id]
    assert derived.is_add and [str(m.val.prefix) for m in derived.members] == ["10.9.1.0/24"]
    assert not [n for n in rec.writes(mark) if n.startswith(("npol_rule", "npol_policy"))]


def test_named_ports_use_ip_and_port_sets(fake: FakeVpp, tmp_path: Path) -> None:
    updates = [
        IPSetUpdate("s:http", IPSetType.IP_AND_PORT, frozenset({"10.1.0.2,6:8080"})),
        policy("default", "ns/db", inbound=(rule(protocol=6, dst_named_port_ip_set_ids=("s:http",),
                                                 dst_ports=(PortRange(80, 80),)),)),
        OPEN, wep(WEB, "10.1.0.1/32"),
        wep(DB, "10.1.0.2/32", tiers=(tier("default", ingress=("ns/db",)),), ports=(NamedPort("http", 6, 8080),)),
    ]
    dp, rec = program(fake, tmp_path, updates, policy="npol")
    assert rules(dp, iface(dp, DB).tx[1]) == [(False, 0, [F_TCP], [
        (False, False, PORT_RANGE, (80, 80)), (False, False, PORT_IP_SET, ("ipport", ["10.1.0.2,6:8080"]))])]
    ipport = [m for m in rec.messages("npol_ipset_add_del_members")
              if m.set_id == dp.reconciler.metadata(NpolSetKey("ipport", ("s:http",)))]
    (member,) = ipport[0].members
    assert (str(member.val.tuple.address), member.val.tuple.l4_proto, member.val.tuple.port) == ("10.1.0.2", 6, 8080)
    assert [m.type for m in rec.messages("npol_ipset_create")].count(1) == 1        # NPOL_IP_AND_PORT


def test_ip_version_and_negations_in_npol(fake: FakeVpp, tmp_path: Path) -> None:
    updates = [
        WEB_SET,
        policy("default", "ns/db", inbound=(rule(ip_version=6, protocol=6),
                                            rule(not_protocol=17, not_src_nets=(ipaddress.ip_network("10.5.0.0/16"),),
                                                 not_src_ip_set_ids=("s:web",), not_dst_ports=(PortRange(1, 1023),)))),
        OPEN, wep(WEB, "10.1.0.1/32"), wep(DB, "10.1.0.2/32", tiers=(tier("default", ingress=("ns/db",)),)),
    ]
    dp, _ = program(fake, tmp_path, updates, policy="npol")
    assert rules(dp, iface(dp, DB).tx[1]) == [
        (False, 0, [F_TCP], [(True, False, CIDR, "::/0")]),
        (False, 0, [(L4, 17, 0)], [(True, True, CIDR, "10.5.0.0/16"), (True, True, IP_SET, WEB_MEMBERS),
                                   (False, True, PORT_RANGE, (1, 1023))]),
    ]


def test_policy_change_switches_over_without_a_gap(fake: FakeVpp, tmp_path: Path) -> None:
    dp, rec = program(fake, tmp_path, INGRESS_5432, policy="npol")
    mark = rec.mark()
    dp.apply([policy("default", "ns/db", inbound=(rule(protocol=6, src_ip_set_ids=("s:web",),
                                                       dst_ports=(PortRange(5433, 5433),)),))])
    writes = [w for w in rec.writes(mark) if w.startswith("npol_")]
    assert writes == ["npol_rule_create", "npol_policy_create", "npol_configure_policies", "npol_policy_delete",
                      "npol_rule_delete"]
    assert len(fake.state.policies) == 5                 # bypass rx/tx, the policy, deny-all, the profile


def test_npol_without_acl_guards_sources_and_matches_icmp_itself(tmp_path: Path) -> None:
    fake = FakeVpp(absent=["acl"])
    try:
        updates = [
            policy("default", "ns/db", inbound=(rule(protocol=1, icmp_type=8, icmp_code=0),)),
            OPEN, wep(WEB, "10.1.0.1/32"), wep(DB, "10.1.0.2/32", tiers=(tier("default", ingress=("ns/db",)),)),
        ]
        rec = Recorder(fake)
        dp = make(fake, tmp_path, linux=FakeLinux(), policy="npol")
        dp.wire_workload(wiring(WEB, "10.1.0.1/32"))
        dp.wire_workload(wiring(DB, "10.1.0.2/32", annotations={"vpp.vppagent.io/allowed-sources": "192.0.2.0/24"}))
        dp.apply([*updates, InSync()])
        assert dp.engine == "npol" and dp.status().ready and not rec.messages("acl_add_replace")
        db = iface(dp, DB)
        ((inbound, action, flt, ents),) = rules(dp, db.rx[0])          # the strict source check comes first
        assert (inbound, action, flt) == (True, 1, [])
        assert ents == [(True, True, CIDR, n) for n in ("0.0.0.0/32", "10.1.0.2/32", "192.0.2.0/24", "::/128")]
        pol, _ = db.tx
        assert rules(dp, pol) == [(False, 0, [(L4, 1, 1), (ICMP_TYPE, 8, 1), (2, 0, 1)], [])]
    finally:
        fake.close()
        assert not fake.errors


# ------------------------------------------------------------------ the ACL plugin

def test_icmp_goes_to_the_acl_plugin_in_hybrid_mode(fake: FakeVpp, tmp_path: Path) -> None:
    updates = [
        policy("default", "ns/db", inbound=(rule(protocol=1, icmp_type=8, icmp_code=0),
                                            rule(protocol=1, not_icmp_type=3))),
        OPEN, wep(WEB, "10.1.0.1/32"), wep(DB, "10.1.0.2/32", tiers=(tier("default", ingress=("ns/db",)),)),
    ]
    dp, _ = program(fake, tmp_path, updates)
    assert len(iface(dp, DB).tx) == 2                    # bypass + deny-all: no ICMP rule is npol's business
    inputs, outputs = acl_lists(fake, DB)
    assert [acl(r) for r in outputs] == [
        (PERMIT, "::/0", "::/0", 58, (133, 136), (0, 65535)),                       # neighbour discovery
        *[(PERMIT, n, n, p, (0, 65535), (0, 65535)) for n in ("0.0.0.0/0", "::/0") for p in (6, 17, 132)],
        (PERMIT_REFLECT, "0.0.0.0/0", "0.0.0.0/0", 1, (8, 8), (0, 0)),             # type 8 code 0
        (0, "0.0.0.0/0", "0.0.0.0/0", 1, (3, 3), (0, 65535)),                       # notICMP 3: skip -> end of tier
        (PERMIT_REFLECT, "0.0.0.0/0", "0.0.0.0/0", 1, (0, 65535), (0, 65535)),
        (0, "0.0.0.0/0", "0.0.0.0/0", 0, (0, 65535), (0, 65535)),
        (0, "::/0", "::/0", 0, (0, 65535), (0, 65535)),
    ]
    # egress: the strict source check fences everything to the pod's own address
    assert {str(r["src_prefix"]) for r in inputs if r["is_permit"] and r["proto"] != 58} == {"10.1.0.2/32"}


def test_acl_fallback_expands_sets_and_reflects(fake: FakeVpp, tmp_path: Path) -> None:
    updates = [IPSetUpdate("s:http", IPSetType.IP_AND_PORT, frozenset({"10.1.0.2,6:8080"})), *INGRESS_5432[:1],
               policy("default", "ns/db", inbound=(
                   rule(protocol=6, src_ip_set_ids=("s:web",), dst_ports=(PortRange(5432, 5432),)),
                   rule(protocol=6, dst_named_port_ip_set_ids=("s:http",)))),
               *INGRESS_5432[2:]]
    program(fake, tmp_path, updates, policy="acl")
    assert not [i for i in fake.state.npol_interfaces]
    inputs, outputs = acl_lists(fake, DB)
    assert [acl(r) for r in outputs[1:]] == [
        (PERMIT_REFLECT, "10.1.0.1/32", "0.0.0.0/0", 6, (0, 65535), (5432, 5432)),
        (PERMIT_REFLECT, "0.0.0.0/0", "10.1.0.2/32", 6, (0, 65535), (8080, 8080)),
        (0, "0.0.0.0/0", "0.0.0.0/0", 0, (0, 65535), (0, 65535)),
        (0, "::/0", "::/0", 0, (0, 65535), (0, 65535)),
    ]
    # no tier for egress: the profile allows, from the pod's own address only
    assert [acl(r) for r in inputs[1:]] == [
        (PERMIT_REFLECT, "10.1.0.2/32", "0.0.0.0/0", 0, (0, 65535), (0, 65535)),
        (0, "0.0.0.0/0", "0.0.0.0/0", 0, (0, 65535), (0, 65535)),
        (0, "::/0", "::/0", 0, (0, 65535), (0, 65535)),
    ]


def test_acl_content_change_replaces_the_acl_before_deleting_the_old_one(fake: FakeVpp, tmp_path: Path) -> None:
    dp, rec = program(fake, tmp_path, INGRESS_5432, policy="acl")
    mark = rec.mark()
    dp.apply([IPSetDeltaUpdate("s:web", added=frozenset({"10.1.0.9/32"}))])
    assert [w for w in rec.writes(mark)] == ["acl_add_replace", "acl_interface_set_acl_list", "acl_del"]
    _, outputs = acl_lists(fake, DB)
    assert sorted(str(r["src_prefix"]) for r in outputs if r["proto"] == 6 and r["is_permit"] == 2) == [
        "10.1.0.1/32", "10.1.0.9/32"]


@pytest.mark.parametrize("engine", ["auto", "acl"])
def test_host_endpoint_facing_the_uplink_is_inverted_with_failsafes(fake: FakeVpp, tmp_path: Path, engine: str) -> None:
    from vppagent.vpp.connection import VppConnection
    other = VppConnection(client_factory=fake.client_factory, client_name="node-setup")
    other.connect()
    uplink = other.call("create_loopback_instance", is_specified=False).sw_if_index
    other.disconnect()
    hep = HostEndpointUpdate("node1/eth0", HostEndpointInfo(
        "node1-eth0", "node1", "eth0", expected_ips=(ipaddress.ip_address("192.168.1.1"),),
        tiers=(tier("default", ingress=("hp",)),)))
    updates = [policy("default", "hp", inbound=(rule(protocol=6, dst_ports=(PortRange(80, 80),)),)), hep]
    dp = make(fake, tmp_path, linux=FakeLinux(), policy=engine,
              host_interfaces={"eth0": HostInterface("loop0", "uplink")})
    dp.apply([*updates, InSync()])
    assert dp.status().ready, dp.dump()
    assert uplink in fake.state.cnat_features
    if engine == "auto":
        cfg = fake.state.npol_interfaces[uplink]
        assert cfg["invert_rx_tx"] is True             # VPP rx on an uplink is the host's ingress
        _, failsafe, pol, _ = iface(dp, "loop0").tx
        assert [(r[2], r[3]) for r in rules(dp, failsafe)] == [
            ([(L4, p, 1)], [(False, False, PORT_RANGE, ports)])
            for p, ports in ((6, (22, 22)), (17, (68, 68)), (6, (179, 179)), (6, (2379, 2380)), (6, (6443, 6443)))]
    else:
        n_input, acls = fake.state.acl_bindings[uplink]
        inputs = [acl(r) for a in acls[:n_input] for r in fake.state.acls[a][1]]   # input: the host's ingress
        assert inputs[1:4] == [(PERMIT_REFLECT, "0.0.0.0/0", "0.0.0.0/0", 6, (0, 65535), (22, 22)),
                               (PERMIT_REFLECT, "::/0", "::/0", 6, (0, 65535), (22, 22)),
                               (PERMIT_REFLECT, "0.0.0.0/0", "0.0.0.0/0", 17, (0, 65535), (68, 68))]
        assert (PERMIT_REFLECT, "0.0.0.0/0", "0.0.0.0/0", 6, (0, 65535), (80, 80)) in inputs
    dp.apply([HostEndpointUpdate("node1/eth0", HostEndpointInfo("node1-eth0", "node1", "eth9"))])  # moved away
    assert uplink not in fake.state.acl_bindings
    if engine == "auto":
        left = fake.state.npol_interfaces[uplink]
        assert (left["rx_policies"], left["tx_policies"], left["policy_default_rx"]) == ([], [], 0)  # allows all


def test_unwired_endpoint_denies_and_wired_without_endpoint_too(fake: FakeVpp, tmp_path: Path) -> None:
    dp, _ = program(fake, tmp_path, [OPEN, wep(WEB, "10.1.0.1/32")], policy="acl")
    _, outputs = acl_lists(fake, DB)                     # DB is wired, but no endpoint says who it is
    assert [r["is_permit"] for r in outputs if r["proto"] not in (58,)] == [0, 0]


# ------------------------------------------------------------------ programs

def test_program_follows_the_evaluator_structure() -> None:
    state = DataplaneState()
    state.apply(IPSetUpdate("s:a", IPSetType.NET, frozenset({"10.0.0.1/32"})))
    state.apply(policy("t1", "p1", inbound=(rule(Action.LOG), rule(Action.PASS, src_ip_set_ids=("s:a",)))))
    state.apply(policy("t2", "p2", inbound=(rule(Action.DENY, protocol=17),)))
    state.apply(OPEN)
    ep = wep(DB, "10.1.0.2/32", tiers=(tier("t1", ingress=("p1",)), tier("t2", ingress=("p2",), default=TierDefault.PASS),
                                       tier("none", egress=("x",)))).endpoint
    prog = workload_program(state, ep, Direction.INGRESS)
    refs = [s.ref for s in prog.segments]
    assert refs == ["policy:t1/p1:ingress", "deny-all", "policy:t2/p2:ingress"]   # t2 passes by default: no deny
    (pass_entry,) = prog.segments[0].entries                                           # the Log rule is gone
    assert pass_entry.action == Goto("tier2") and dict(prog.labels)["tier2"] == 2
    assert prog.segments[2].entries[0].action == DENY
    assert [s.ref for s in prog.profiles] == ["profile:open", "deny-all"]
    assert prog.profiles[0].entries[0].action == ALLOW


def test_match_conjunction() -> None:
    a = Match(protocol=6, dst=Side(ports=((PortItem((), (80, 90)),),)))
    b = Match(dst=Side(ports=((PortItem((), (85, 100)), PortItem(("s:named",))),)))
    both = a.conj(b)
    assert both is not None and both.protocol == 6 and len(both.dst.ports) == 2
    assert a.conj(Match(protocol=17)) is None
    assert a.conj(Match(not_protocols=(6,))) is None
    assert Match(version=6, src=Side(nets=((ipaddress.ip_network("10.0.0.0/8"),),))).impossible()
