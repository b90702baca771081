"""Rendering programs for VPP's ACL plugin (first match, no IP sets, no jumps).

A program is flattened (``flatten``) into allow/deny entries, and each entry
into ACL rules: IP sets are expanded into their members' prefixes, named
ports into (address, protocol, port) rules, and every negated condition
("not these nets", "not this protocol") into *skip* rules: a packet that
matches one does not take this entry but what follows, so the skip rule is
intersected with every later rule (the same trick as a Pass).  Permits are
reflexive (PERMIT_REFLECT): the plugin lets the replies of an allowed flow
back in both directions.
"""

from __future__ import annotations

import collections
import ipaddress
from dataclasses import dataclass
from typing import Callable, Iterable

from vppagent.dataplane.vpp.flatten import flatten
from vppagent.dataplane.vpp.keys import AclRule, Range
from vppagent.dataplane.vpp.match import (
    FULL_PORTS, IPNetwork, Match, Side, intersect_net, intersect_net_lists, intersect_range, port_items,
    side_prefixes,
)
from vppagent.dataplane.vpp.program import ALLOW, Program

DENY_RULE, PERMIT, PERMIT_REFLECT = 0, 1, 2
PORT_PROTOCOLS = (6, 17, 132)     # UDPLite (136) is not in the API's ip_proto enum (nor parsed by the plugin)
ACL_PROTOCOLS = frozenset({0, 1, 2, 6, 17, 47, 50, 51, 58, 88, 89, 132, 255})   # vl_api_ip_proto_t
ICMP = {4: 1, 6: 58}
ANY_NET = {4: ipaddress.ip_network("0.0.0.0/0"), 6: ipaddress.ip_network("::/0")}
ND_TYPES = (133, 136)          # router solicitation .. neighbour advertisement
NPOL_PROTOS = (6, 17, 132)

Members = Callable[[str], frozenset[str]]


@dataclass(frozen=True)
class Atom:
    """One ACL rule's match."""

    family: int
    src: IPNetwork
    dst: IPNetwork
    proto: int = 0
    sport: Range = FULL_PORTS
    dport: Range = FULL_PORTS

    def conj(self, o: "Atom") -> "Atom | None":
        if self.family != o.family:
            return None
        src, dst = intersect_net(self.src, o.src), intersect_net(self.dst, o.dst)
        if src is None or dst is None:
            return None
        if self.proto and o.proto and self.proto != o.proto:
            return None
        sport, dport = intersect_range(self.sport, o.sport), intersect_range(self.dport, o.dport)
        if sport == () or dport == ():
            return None
        return Atom(self.family, src, dst, self.proto or o.proto, sport, dport)  # type: ignore[arg-type]


def _any(family: int, proto: int = 0, sport: Range = FULL_PORTS, dport: Range = FULL_PORTS) -> Atom:
    return Atom(family, ANY_NET[family], ANY_NET[family], proto, sport, dport)


def _parse_ipport(member: str) -> tuple[IPNetwork, int, int]:
    ip, _, rest = member.rpartition(",")
    proto, _, port = rest.partition(":")
    return ipaddress.ip_network(ip), int(proto), int(port)


def _nets(members: Iterable[str], family: int) -> tuple[IPNetwork, ...]:
    out = []
    for m in members:
        n = ipaddress.ip_network(m, strict=False)
        if n.version == family:
            out.append(n)
    return tuple(out)


@dataclass(frozen=True)
class _Cand:
    prefix: IPNetwork
    proto: int | None = None      # a named-port member fixes the protocol
    ports: Range | None = None


def _side(side: Side, family: int, members: Members) -> list[_Cand]:
    nets = side_prefixes(side, family)
    prefixes: tuple[IPNetwork, ...] = (ANY_NET[family],) if nets is None else nets
    for sid in side.sets:
        prefixes = intersect_net_lists(prefixes, _nets(members(sid), family))
    items = port_items(side)
    if items is None:
        return [_Cand(p) for p in prefixes]
    out: list[_Cand] = []
    for item in items:
        if not item.sets:
            out += [_Cand(p, None, item.range) for p in prefixes]
            continue
        common: set[str] | None = None
        for sid in item.sets:
            mine = set(members(sid))
            common = mine if common is None else common & mine
        for member in sorted(common or ()):
            ip, proto, port = _parse_ipport(member)
            if ip.version != family or (item.range and not item.range[0] <= port <= item.range[1]):
                continue
            for p in prefixes:
                if (x := intersect_net(ip, p)) is not None:
                    out.append(_Cand(x, proto, (port, port)))
    return out


def positive(m: Match, members: Members) -> list[Atom]:
    """The atoms whose union is what ``m`` matches, ignoring its negations."""
    families = [m.version] if m.version else [4, 6]
    if m.protocol is not None:
        protos = [m.protocol]
    elif m.icmp_type is not None:
        protos = [1, 58]
    elif m.src.wants_ports or m.dst.wants_ports:
        protos = list(PORT_PROTOCOLS)
    else:
        protos = [0]
    out: list[Atom] = []
    for fam in families:
        srcs, dsts = _side(m.src, fam, members), _side(m.dst, fam, members)
        for proto in protos:
            if proto in (1, 58) and ICMP[fam] != proto:
                continue
            icmp_t: Range = FULL_PORTS
            icmp_c: Range = FULL_PORTS
            if m.icmp_type is not None:
                icmp_t = (m.icmp_type, m.icmp_type)
                if m.icmp_code is not None:
                    icmp_c = (m.icmp_code, m.icmp_code)
            for s in srcs:
                if s.proto is not None and s.proto != proto:
                    continue
                for d in dsts:
                    if d.proto is not None and d.proto != proto:
                        continue
                    sport = s.ports or icmp_t
                    dport = d.ports or icmp_c
                    out.append(Atom(fam, s.prefix, d.prefix, proto, sport, dport))
    return list(dict.fromkeys(out))


def negative(m: Match, members: Members) -> list[Atom]:
    """Atoms a packet must not match for ``m`` to apply (skip rules)."""
    families = [m.version] if m.version else [4, 6]
    port_protos = [m.protocol] if m.protocol in PORT_PROTOCOLS else list(PORT_PROTOCOLS)
    out: list[Atom] = []
    for is_src, side in ((True, m.src), (False, m.dst)):
        nets = list(side.not_nets) + [n for sid in side.not_sets for fam in families
                                      for n in _nets(members(sid), fam)]
        for n in nets:
            if n.version in families:
                a = _any(n.version)
                out.append(Atom(a.family, n, a.dst) if is_src else Atom(a.family, a.src, n))
        for lo, hi in side.not_ranges:
            for fam in families:
                for p in port_protos:
                    out.append(_any(fam, p, (lo, hi)) if is_src else _any(fam, p, FULL_PORTS, (lo, hi)))
        for sid in side.not_port_sets:
            for member in sorted(members(sid)):
                ip, proto, port = _parse_ipport(member)
                if ip.version not in families:
                    continue
                a = _any(ip.version, proto)
                out.append(Atom(a.family, ip, a.dst, proto, (port, port)) if is_src
                           else Atom(a.family, a.src, ip, proto, FULL_PORTS, (port, port)))
    for p in m.not_protocols:
        for fam in families:
            if p not in (1, 58) or ICMP[fam] == p:
                out.append(_any(fam, p))
    for t, c in m.not_icmp:
        for fam in families:
            out.append(_any(fam, ICMP[fam], (t, t), (c, c) if c is not None else FULL_PORTS))
    return list(dict.fromkeys(out))


def compile_entries(flat: list[tuple[Match, str]], members: Members) -> list[tuple[Atom, str]]:
    """First-match (atom, verdict) list equivalent to ``flat``."""
    lowered = [(positive(m, members), negative(m, members), v) for m, v in flat]
    tail: collections.deque[tuple[Atom, str]] = collections.deque()
    for pos, skip, verdict in reversed(lowered):
        if not pos:
            continue
        block: list[tuple[Atom, str]] = []
        for s in skip:
            narrowed = [x for p in pos if (x := s.conj(p)) is not None] if len(pos) <= 4 else [s]
            for n in narrowed:
                block += [(x, v) for a, v in tail if (x := n.conj(a)) is not None]
        block += [(p, verdict) for p in pos]
        for item in reversed(block):
            tail.appendleft(item)
    seen: set[Atom] = set()
    out = []
    for atom, verdict in tail:
        if atom.proto not in ACL_PROTOCOLS:
            continue                     # cannot be said in an ACL rule (see ACL_PROTOCOLS)
        if atom not in seen:
            seen.add(atom)
            out.append((atom, verdict))
    return out


def _guarded(entries: list[tuple[Atom, str]], allowed: tuple[str, ...] | None) -> list[tuple[Atom, str]]:
    if allowed is None:
        return entries
    nets = [ipaddress.ip_network(a, strict=False) for a in allowed]
    fences = [Atom(n.version, n, ANY_NET[n.version]) for n in nets]
    return [(x, v) for a, v in entries for f in fences if (x := a.conj(f)) is not None]


def _rule(atom: Atom, permit: int) -> AclRule:
    return AclRule(permit, str(atom.src), str(atom.dst), atom.proto, atom.sport, atom.dport)


def direction_rules(program: Program, members: Members, *, hybrid: bool,
                    allowed_sources: tuple[str, ...] | None = None) -> list[AclRule]:
    """The ACL rules for one interface direction.

    ``hybrid``: npol decides TCP, UDP and SCTP, so those are permitted here
    (after the source check) and only the other protocols follow the program.
    ``allowed_sources``: the strict source check of a pod's egress.
    """
    rules = [AclRule(PERMIT, "::/0", "::/0", 58, ND_TYPES, FULL_PORTS)]
    if hybrid:
        for fam in (4, 6):
            for p in NPOL_PROTOS:
                rules += [_rule(a, PERMIT) for a, _ in _guarded([(_any(fam, p), ALLOW)], allowed_sources)]
        keep = lambda m: m.protocol not in NPOL_PROTOS   # noqa: E731
    else:
        keep = None
    entries = compile_entries(flatten(program, keep), members)
    if hybrid:
        entries = [(a, v) for a, v in entries if a.proto not in NPOL_PROTOS]
    for atom, verdict in _guarded(entries, allowed_sources):
        rules.append(_rule(atom, PERMIT_REFLECT if verdict == ALLOW else DENY_RULE))
    rules += [_rule(_any(4), DENY_RULE), _rule(_any(6), DENY_RULE)]
    return list(dict.fromkeys(rules))


def rule_message(rule: AclRule) -> dict:
    return {
        "is_permit": rule.is_permit, "src_prefix": rule.src, "dst_prefix": rule.dst, "proto": rule.proto,
        "srcport_or_icmptype_first": rule.sport[0], "srcport_or_icmptype_last": rule.sport[1],
        "dstport_or_icmpcode_first": rule.dport[0], "dstport_or_icmpcode_last": rule.dport[1],
        "tcp_flags_mask": 0, "tcp_flags_value": 0,
    }


def rule_from_details(r: object) -> AclRule:
    """A dumped ``vl_api_acl_rule_t`` back into our form (for adoption)."""
    g = lambda name: getattr(r, name)   # noqa: E731
    return AclRule(int(g("is_permit")), str(g("src_prefix")), str(g("dst_prefix")), int(g("proto")),
                   (g("srcport_or_icmptype_first"), g("srcport_or_icmptype_last")),
                   (g("dstport_or_icmpcode_first"), g("dstport_or_icmpcode_last")))
