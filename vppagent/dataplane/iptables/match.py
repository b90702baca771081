"""One ``RenderedRule`` → iptables match text, with exactly Calico's meaning.

A rule is an AND of conditions, some of which are ORs (several source nets;
ports *or* named-port sets; more than 15 ports for one multiport match) or
several negations of the same option (iptables allows one ``-s`` per rule).
Whatever fits in one iptables rule goes in it; the rest becomes a short
mark program (Felix's scratch bits):

    set S0, clear S1
    per OR group:  [S0 set] <alternative> -> set S1   (once per alternative)
                   [S0 set, S1 clear] -> clear S0;  clear S1
    per negation:  [S0 set] <excluded> -> clear S0
    final rule:    [S0 set] <everything inline> -> action

``compile_rule`` returns None when the rule can never match in this IP family
(wrong ``ipVersion``, nets of the other family only, an IP set that does not
exist: like the reference evaluator, a missing set is empty).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from vppagent.dataplane.iptables.marks import Marks, hexmark
from vppagent.dataplane.iptables.names import ipset_name
from vppagent.model.resources import PortRange
from vppagent.model.updates import IPSetType, RenderedRule

PORT_PROTOCOLS = (6, 17, 132, 136)
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp", 136: "udplite"}
MULTIPORT_SLOTS = 15   # xt_multiport's limit; a range takes two slots


def proto_name(proto: int) -> str:
    return PROTO_NAMES.get(proto, str(proto))


def icmp_protocol(family: int) -> int:
    return 1 if family == 4 else 58


@dataclass(frozen=True)
class MatchContext:
    """What compiling needs besides the rule: family, mark bits, known IP sets."""

    family: int
    marks: Marks
    set_types: Mapping[str, IPSetType]

    def set_ref(self, set_id: str, direction: str) -> str | None:
        """``NAME src`` / ``NAME dst,dst`` for a known set; None if it does not exist."""
        kind = self.set_types.get(set_id)
        if kind is None:
            return None
        ip_port = kind is IPSetType.IP_AND_PORT
        flags = f"{direction},{direction}" if ip_port else direction
        return f"{ipset_name(self.family, set_id, ip_port)} {flags}"


@dataclass(frozen=True)
class Match:
    setup: tuple[str, ...]   # complete rules run before the final one (mark program)
    final: str               # match text of the rule that carries the action ("" = all)


def port_chunks(ranges: Iterable[PortRange]) -> list[str]:
    """Multiport lists of at most 15 slots each, in port order."""
    chunks: list[str] = []
    current: list[str] = []
    used = 0
    for r in sorted(set(ranges)):
        cost = 1 if r.first == r.last else 2
        if used + cost > MULTIPORT_SLOTS:
            chunks.append(",".join(current))
            current, used = [], 0
        current.append(str(r.first) if r.first == r.last else f"{r.first}:{r.last}")
        used += cost
    if current:
        chunks.append(",".join(current))
    return chunks


def _family_nets(nets: Sequence, family: int) -> list:
    seen: list = []
    for n in nets:
        n = ipaddress.ip_network(n, strict=False)
        if n.version == family and n not in seen:
            seen.append(n)
    return seen


def _icmp_match(family: int, icmp_type: int, code: int | None, negate: bool) -> str:
    spec = str(icmp_type) if code is None else f"{icmp_type}/{code}"
    bang = "! " if negate else ""
    if family == 4:
        return f"-m icmp {bang}--icmp-type {spec}"
    return f"-m icmp6 {bang}--icmpv6-type {spec}"


class _Builder:
    def __init__(self) -> None:
        self.inline: list[str] = []
        self.groups: list[list[str]] = []
        self.negations: list[str] = []


def compile_rule(rule: RenderedRule, ctx: MatchContext) -> Match | None:
    fam = ctx.family
    icmp_p = icmp_protocol(fam)
    if rule.ip_version is not None and rule.ip_version != fam:
        return None
    proto = rule.protocol
    if proto is not None:
        if proto in (1, 58) and proto != icmp_p:
            return None
        if rule.not_protocol == proto:
            return None
    if rule.icmp_type is not None:     # an ICMP type/code only matches ICMP packets
        if proto is None:
            if rule.not_protocol == icmp_p:
                return None
            proto = icmp_p
        elif proto != icmp_p:
            return None
    not_proto = rule.not_protocol if proto is None else None

    b = _Builder()
    if proto is not None:
        b.inline.append(f"-p {proto_name(proto)}")
    elif not_proto is not None:
        b.inline.append(f"! -p {proto_name(not_proto)}")

    for flag, nets, not_nets in (("-s", rule.src_nets, rule.not_src_nets),
                                 ("-d", rule.dst_nets, rule.not_dst_nets)):
        if not _addresses(b, flag, nets, not_nets, fam):
            return None

    for direction, ids, not_ids in (("src", rule.src_ip_set_ids, rule.not_src_ip_set_ids),
                                    ("dst", rule.dst_ip_set_ids, rule.not_dst_ip_set_ids)):
        for sid in ids:
            ref = ctx.set_ref(sid, direction)
            if ref is None:
                return None            # a missing set is empty: the rule cannot match
            b.inline.append(f"-m set --match-set {ref}")
        for sid in not_ids:
            ref = ctx.set_ref(sid, direction)
            if ref is not None:        # excluding an empty set excludes nothing
                b.inline.append(f"-m set ! --match-set {ref}")

    for direction, opt, ranges, named, not_ranges, not_named in (
        ("src", "--sports", rule.src_ports, rule.src_named_port_ip_set_ids,
         rule.not_src_ports, rule.not_src_named_port_ip_set_ids),
        ("dst", "--dports", rule.dst_ports, rule.dst_named_port_ip_set_ids,
         rule.not_dst_ports, rule.not_dst_named_port_ip_set_ids),
    ):
        if not _ports(b, ctx, proto, not_proto, direction, opt, ranges, named, not_ranges, not_named):
            return None

    if rule.icmp_type is not None:
        b.inline.append(_icmp_match(fam, rule.icmp_type, rule.icmp_code, negate=False))
    if rule.not_icmp_type is not None:
        if proto == icmp_p:
            b.inline.append(_icmp_match(fam, rule.not_icmp_type, rule.not_icmp_code, negate=True))
        elif proto is None and not_proto != icmp_p:
            b.negations.append(f"-p {proto_name(icmp_p)} "
                               + _icmp_match(fam, rule.not_icmp_type, rule.not_icmp_code, negate=False))
        # any other protocol: the exclusion can never apply
    return _assemble(b, ctx.marks)


def _addresses(b: _Builder, flag: str, nets: Sequence, not_nets: Sequence, fam: int) -> bool:
    pos = _family_nets(nets, fam)
    if nets and not pos:
        return False                   # only nets of the other family
    neg = _family_nets(not_nets, fam)
    if any(n.prefixlen == 0 for n in neg):
        return False                   # excludes every address
    if any(n.prefixlen == 0 for n in pos):
        pos = []                       # admits every address
    used = False
    if len(pos) == 1:
        b.inline.append(f"{flag} {pos[0]}")
        used = True
    elif pos:
        b.groups.append([f"{flag} {n}" for n in pos])
    for n in neg:
        if not used:
            b.inline.append(f"! {flag} {n}")
            used = True
        else:
            b.negations.append(f"{flag} {n}")
    return True


def _port_protocols(proto: int | None, not_proto: int | None) -> list[int]:
    if proto is not None:
        return [proto] if proto in PORT_PROTOCOLS else []
    return [p for p in PORT_PROTOCOLS if p != not_proto]


def _ports(b: _Builder, ctx: MatchContext, proto: int | None, not_proto: int | None, direction: str,
           opt: str, ranges: Sequence[PortRange], named: Sequence[str], not_ranges: Sequence[PortRange],
           not_named: Sequence[str]) -> bool:
    if ranges or named:
        if proto is not None and proto not in PORT_PROTOCOLS:
            return False               # the packet has no port
        alternatives: list[tuple[str, str]] = []   # (with protocol, inline form)
        for chunk in port_chunks(ranges):
            for p in _port_protocols(proto, not_proto):
                alternatives.append((f"-p {proto_name(p)} -m multiport {opt} {chunk}",
                                     f"-m multiport {opt} {chunk}"))
        for sid in named:
            ref = ctx.set_ref(sid, direction)
            if ref is not None:
                text = f"-m set --match-set {ref}"
                alternatives.append((text, text))
        if not alternatives:
            return False
        if len(alternatives) == 1 and (proto is not None or not alternatives[0][0].startswith("-p ")):
            b.inline.append(alternatives[0][1])
        else:
            b.groups.append([full for full, _ in alternatives])
    if not_ranges:
        for chunk in port_chunks(not_ranges):
            if proto is not None:
                if proto in PORT_PROTOCOLS:
                    b.inline.append(f"-m multiport ! {opt} {chunk}")
            else:
                for p in _port_protocols(None, not_proto):
                    b.negations.append(f"-p {proto_name(p)} -m multiport {opt} {chunk}")
    for sid in not_named:
        ref = ctx.set_ref(sid, direction)
        if ref is not None:
            b.inline.append(f"-m set ! --match-set {ref}")
    return True


def _assemble(b: _Builder, marks: Marks) -> Match:
    inline = " ".join(b.inline)
    if not b.groups and not b.negations:
        return Match((), inline)
    s0, s1 = marks.scratch0, marks.scratch1
    on = f"-m mark --mark {hexmark(s0, s0)}"
    setup = [f"-j MARK --set-xmark {hexmark(s0, s0 | s1)}"]
    for group in b.groups:
        setup += [f"{on} {alt} -j MARK --set-xmark {hexmark(s1, s1)}" for alt in group]
        setup.append(f"-m mark --mark {hexmark(s0, s0 | s1)} -j MARK --set-xmark {hexmark(0, s0)}")
        setup.append(f"-j MARK --set-xmark {hexmark(0, s1)}")
    setup += [f"{on} {neg} -j MARK --set-xmark {hexmark(0, s0)}" for neg in b.negations]
    return Match(tuple(setup), f"{on} {inline}".rstrip())
