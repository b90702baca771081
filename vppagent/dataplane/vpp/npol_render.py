"""Rendering programs for VPP's npol plugin.

npol evaluates, per interface and direction, a list of policies (first rule
that matches in a policy decides; ALLOW and DENY are final, PASS goes to the
profiles, no match goes to the next policy), then a default, then the
profiles.  So one Calico policy becomes one npol policy (per direction), a
tier's implicit deny is a shared deny-all policy after it, the last tier's
Pass is npol's own PASS, and a Pass out of an earlier tier is intersected
with what it reaches (``flatten.Resolver``).  A pod's egress is VPP rx.

Two npol behaviours shape the rendering (plugins/npol/npol_match.c):
- a matching LOG rule ends its policy, so Log rules are left out (they never
  change a verdict);
- matching runs on cnat's 5-tuple, which only carries real addresses and
  ports for TCP, UDP, SCTP and ICMP echo (other ICMP messages and protocols
  arrive as all-zero tuples, and ICMP "ports" are the echo identifier).  When
  the ACL plugin is there ("hybrid"), npol lets everything but TCP, UDP and
  SCTP through (``bypass``) and the ACL plugin decides those packets with the
  same program; without it npol does its best with what the tuple holds.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from vppagent.dataplane.vpp.flatten import PASS, Resolver
from vppagent.dataplane.vpp.keys import (
    NpolEntry, NpolIfaceValue, NpolPolicyKey, NpolPolicyValue, NpolRule, NpolSetKey,
)
from vppagent.dataplane.vpp.match import Match, Side, port_items, side_prefixes
from vppagent.dataplane.vpp.names import digest
from vppagent.dataplane.vpp.program import ALLOW, DENY, PROFILES, Program

NPOL_PROTOS = (6, 17, 132)
ACTIONS = {ALLOW: 0, DENY: 1, PASS: 3}
F_ICMP_TYPE, F_ICMP_CODE, F_L4 = 1, 2, 3
CIDR, PORT_RANGE, PORT_IP_SET, IP_SET = 0, 1, 2, 3
DEFAULT_ALLOW, DEFAULT_DENY, DEFAULT_PASS = 0, 1, 2
UNPARSED_SOURCES = ("0.0.0.0/32", "::/128")      # cnat's all-zero tuple


class RenderError(ValueError):
    """A rule npol cannot express (e.g. more than three filters)."""


def _filter_sets(m: Match, hybrid: bool) -> list[tuple[tuple[int, int, int], ...]]:
    """Alternatives (OR) of filter lists (AND) for a match; [] when npol never sees a match."""
    if hybrid:
        if m.icmp_type is not None or (m.protocol is not None and m.protocol not in NPOL_PROTOS):
            return []
        protos = [m.protocol]
        nots = [p for p in m.not_protocols if p in NPOL_PROTOS]
        icmp_alts: list[list[tuple[int, int, int]]] = [[]]
    else:
        wants_ports = m.src.wants_ports or m.dst.wants_ports
        protos = [m.protocol] if m.protocol is not None or not wants_ports else list(NPOL_PROTOS)
        nots = list(m.not_protocols)
        base: list[tuple[int, int, int]] = []
        if m.icmp_type is not None:
            base.append((F_ICMP_TYPE, m.icmp_type, 1))
            if m.icmp_code is not None:
                base.append((F_ICMP_CODE, m.icmp_code, 1))
        icmp_alts = [base]
        for t, c in m.not_icmp:
            alts = [[(F_ICMP_TYPE, t, 0)]]
            if c is not None:
                alts.append([(F_ICMP_TYPE, t, 1), (F_ICMP_CODE, c, 0)])
            if m.protocol is None and m.icmp_type is None:
                alts.append([(F_L4, 1, 0), (F_L4, 58, 0)])
            icmp_alts = [a + b for a in icmp_alts for b in alts]
    out = []
    for proto in protos:
        for alt in icmp_alts:
            filters = ([(F_L4, proto, 1)] if proto is not None else []) + \
                [(F_L4, p, 0) for p in nots if p != proto] + alt
            filters = list(dict.fromkeys(filters))
            if len(filters) > 3:
                raise RenderError(f"npol rules take at most 3 filters, this one needs {filters}")
            out.append(tuple(filters))
    return out


def _side_entries(side: Side, is_src: bool, version: int | None) -> list[NpolEntry] | None:
    """None when the side can never match."""
    out: list[NpolEntry] = []
    nets = side_prefixes(side, version)
    if nets is not None:
        if not nets:
            return None
        out += [NpolEntry(is_src, False, CIDR, str(n)) for n in nets]
    out += [NpolEntry(is_src, True, CIDR, str(n)) for n in side.not_nets]
    if side.sets:
        out.append(NpolEntry(is_src, False, IP_SET, NpolSetKey("net", side.sets)))
    out += [NpolEntry(is_src, True, IP_SET, NpolSetKey("net", (s,))) for s in side.not_sets]
    items = port_items(side)
    if items is not None:
        if not items:
            return None
        for item in items:
            if item.sets:
                out.append(NpolEntry(is_src, False, PORT_IP_SET, NpolSetKey("ipport", item.sets, item.range)))
            elif item.range is not None:
                out.append(NpolEntry(is_src, False, PORT_RANGE, item.range))
    out += [NpolEntry(is_src, True, PORT_RANGE, r) for r in side.not_ranges]
    out += [NpolEntry(is_src, True, PORT_IP_SET, NpolSetKey("ipport", (s,))) for s in side.not_port_sets]
    return out


def lower(m: Match, verdict: str, hybrid: bool) -> list[NpolRule]:
    """One match as npol rules (alternatives, same action)."""
    filter_sets = _filter_sets(m, hybrid)
    if not filter_sets:
        return []
    src = _side_entries(m.src, True, m.version)
    dst = _side_entries(m.dst, False, m.version)
    if src is None or dst is None:
        return []
    entries = src + dst
    if m.version is not None and not m.src.nets and not m.dst.nets:
        entries.insert(0, NpolEntry(True, False, CIDR, "0.0.0.0/0" if m.version == 4 else "::/0"))
    return [NpolRule(ACTIONS[verdict], f, tuple(entries)) for f in filter_sets]


def _policy(ref: str, items: list[tuple[bool, NpolRule]]) -> tuple[NpolPolicyKey, NpolPolicyValue]:
    value = NpolPolicyValue(tuple(items))
    return NpolPolicyKey(ref, digest(repr(value))), value


def bypass_policy(is_inbound: bool) -> tuple[NpolPolicyKey, NpolPolicyValue]:
    """Allow what npol cannot see properly; the ACL plugin decides it."""
    rule = NpolRule(ACTIONS[ALLOW], tuple((F_L4, p, 0) for p in NPOL_PROTOS), ())
    return _policy(f"bypass:{'rx' if is_inbound else 'tx'}", [(is_inbound, rule)])


def guard_policy(ifname: str, allowed: tuple[str, ...]) -> tuple[NpolPolicyKey, NpolPolicyValue]:
    """Strict source check without an ACL plugin: deny sources that are not the pod's."""
    nets = sorted(set(allowed) | set(UNPARSED_SOURCES),
                  key=lambda n: (ipaddress.ip_network(n, strict=False).version, n))
    rule = NpolRule(ACTIONS[DENY], (), tuple(NpolEntry(True, True, CIDR, n) for n in nets))
    return _policy(f"guard:{ifname}", [(True, rule)])


@dataclass
class NpolPlan:
    """Everything one interface needs in npol."""

    policies: dict[NpolPolicyKey, NpolPolicyValue] = field(default_factory=dict)
    rx: list[NpolPolicyKey] = field(default_factory=list)
    tx: list[NpolPolicyKey] = field(default_factory=list)
    profiles: list[NpolPolicyKey] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def sets(self) -> set[NpolSetKey]:
        return {k for v in self.policies.values() for _, r in v.items for k in r.set_keys()}

    def iface(self, sw_if_index: int, invert: bool) -> NpolIfaceValue:
        return NpolIfaceValue(sw_if_index, tuple(self.rx), tuple(self.tx), tuple(self.profiles), invert,
                              DEFAULT_PASS, DEFAULT_DENY)


def _lower_all(flat: list[tuple[Match, str]], hybrid: bool, errors: list[str], where: str) -> list[NpolRule]:
    rules: list[NpolRule] = []
    for m, verdict in flat:
        try:
            rules += lower(m, verdict, hybrid)
        except RenderError as exc:
            errors.append(f"{where}: {exc}")
    return list(dict.fromkeys(rules))


def plan_interface(egress: Program, ingress: Program, *, hybrid: bool, ifname: str,
                   guard: tuple[str, ...] | None = None) -> NpolPlan:
    """npol objects and configuration for one interface (egress is VPP rx)."""
    plan = NpolPlan()
    if guard is not None and not hybrid:
        k, v = guard_policy(ifname, guard)
        plan.policies[k] = v
        plan.rx.append(k)
    resolvers = {}
    for is_inbound, program, out in ((True, egress, plan.rx), (False, ingress, plan.tx)):
        if hybrid:
            k, v = bypass_policy(is_inbound)
            plan.policies[k] = v
            out.append(k)
        res = Resolver(program, native=PROFILES)
        resolvers[is_inbound] = res
        for i, seg in enumerate(program.segments):
            rules = _lower_all(res.segment(i), hybrid, plan.errors, seg.ref)
            if not rules:
                continue
            ref = seg.ref if seg.ref != "deny-all" else f"deny-all:{'rx' if is_inbound else 'tx'}"
            k, v = _policy(ref, [(is_inbound, r) for r in rules])
            plan.policies[k] = v
            out.append(k)
    profile_refs = [s.ref for s in egress.profiles]
    if profile_refs != [s.ref for s in ingress.profiles]:
        plan.errors.append("profiles differ between directions")
    for j, ref in enumerate(profile_refs):
        if ref == "deny-all":
            continue
        items: list[tuple[bool, NpolRule]] = []
        for is_inbound, program in ((True, egress), (False, ingress)):
            rules = _lower_all(resolvers[is_inbound].segment(len(program.segments) + j), hybrid, plan.errors, ref)
            items += [(is_inbound, r) for r in rules]
        if items:
            k, v = _policy(ref, items)
            plan.policies[k] = v
            plan.profiles.append(k)
    return plan


def rule_message(rule: NpolRule, set_id: dict[NpolSetKey, int]) -> dict:
    """The ``vl_api_npol_rule_t`` for a rule, with set keys resolved to VPP ids."""
    filters = [{"type": t, "value": v, "should_match": s} for t, v, s in rule.filters]
    filters += [{"type": 0, "value": 0, "should_match": 0}] * (3 - len(filters))
    matches = []
    for e in rule.entries:
        if e.type == CIDR:
            data: dict = {"cidr": e.value}
        elif e.type == PORT_RANGE:
            lo, hi = e.value  # type: ignore[misc]
            data = {"port_range": {"start": lo, "end": hi}}
        else:
            data = {"set_id": {"set_id": set_id[e.value]}}  # type: ignore[index]
        matches.append({"is_src": e.is_src, "is_not": e.is_not, "type": e.type, "data": data})
    return {"action": rule.action, "filters": filters, "matches": matches}

