"""One RenderedRule → nft match expressions, with the reference semantics.

The evaluator's rule is a conjunction whose parts are sometimes ORs (a port
matches any range *or* any named-port set) or negated conjunctions (notICMP
type+code). nft rules are conjunctions only, so each rule becomes a list of
*mutually exclusive* alternatives: alternative i of an OR also negates the
alternatives before it. Exclusivity matters for Log rules (one log line per
packet) and keeps counters honest.

IP sets are per family (``…-4``/``…-6``), so a rule that names addresses is
rendered once per family it can match in.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

from vppagent.dataplane.nftables import names
from vppagent.dataplane.nftables.objects import NftKey, net_element, set_key, without_subsumed
from vppagent.model.resources import PORT_PROTOCOLS, PortRange
from vppagent.model.updates import IPSetType, RenderedRule

PORT_PROTOS = "{ " + ", ".join(str(p) for p in sorted(PORT_PROTOCOLS)) + " }"
ICMP_PROTO = {4: 1, 6: 58}

SetTypes = Callable[[str], IPSetType]


@dataclass(frozen=True)
class Alt:
    """One conjunction of matches and the sets it references."""

    matches: tuple[str, ...] = ()
    refs: frozenset[NftKey] = frozenset()

    def __add__(self, other: "Alt") -> "Alt":
        return Alt(self.matches + other.matches, self.refs | other.refs)

    @property
    def text(self) -> str:
        return " ".join(self.matches)


Constraint = list[Alt]          # OR of mutually exclusive alternatives; [] = impossible
ALWAYS: Constraint = [Alt()]


def _one(*matches: str, refs: Sequence[NftKey] = ()) -> Constraint:
    return [Alt(tuple(matches), frozenset(refs))]


def needs_family(rule: RenderedRule) -> bool:
    return bool(
        rule.ip_version or rule.protocol in (1, 58) or rule.src_nets or rule.dst_nets
        or rule.not_src_nets or rule.not_dst_nets or rule.ip_set_ids()
        or rule.icmp_type is not None or rule.not_icmp_type is not None
    )


def rule_alternatives(rule: RenderedRule, set_type: SetTypes) -> list[Alt]:
    """Every conjunction that together match exactly the packets the rule matches."""
    if needs_family(rule):
        families: list[int | None] = [f for f in (4, 6) if rule.ip_version in (None, f)]
    else:
        families = [None]
    out: list[Alt] = []
    for fam in families:
        constraints = _constraints(rule, fam, set_type)
        for combo in itertools.product(*constraints):
            alt = Alt()
            for part in combo:
                alt = alt + part
            out.append(alt)
    return out


def _constraints(rule: RenderedRule, fam: int | None, set_type: SetTypes) -> list[Constraint]:
    cons: list[Constraint] = []
    if fam is not None:
        cons.append(_one(f"meta nfproto ipv{fam}"))
        other_icmp = ICMP_PROTO[6 if fam == 4 else 4]
        if rule.protocol is not None and rule.protocol == other_icmp:
            return [[]]
    if rule.protocol is not None:
        cons.append(_one(f"meta l4proto {rule.protocol}"))
    if rule.not_protocol is not None:
        cons.append(_one(f"meta l4proto != {rule.not_protocol}"))
    if (rule.src_ports or rule.dst_ports or rule.src_named_port_ip_set_ids
            or rule.dst_named_port_ip_set_ids):
        if rule.protocol is None:
            cons.append(_one(f"meta l4proto {PORT_PROTOS}"))
        elif rule.protocol not in PORT_PROTOCOLS:
            return [[]]
    for src in (True, False):
        cons.extend(_side(rule, src, fam, set_type))
    if fam is not None:
        cons.extend(_icmp(rule, fam))
    return cons


def _side(rule: RenderedRule, src: bool, fam: int | None, set_type: SetTypes) -> list[Constraint]:
    s = "s" if src else "d"
    nets = rule.src_nets if src else rule.dst_nets
    not_nets = rule.not_src_nets if src else rule.not_dst_nets
    ports = rule.src_ports if src else rule.dst_ports
    not_ports = rule.not_src_ports if src else rule.not_dst_ports
    named = rule.src_named_port_ip_set_ids if src else rule.dst_named_port_ip_set_ids
    not_named = rule.not_src_named_port_ip_set_ids if src else rule.not_dst_named_port_ip_set_ids
    sets = rule.src_ip_set_ids if src else rule.dst_ip_set_ids
    not_sets = rule.not_src_ip_set_ids if src else rule.not_dst_ip_set_ids
    addr = f"{'ip' if fam == 4 else 'ip6'} {s}addr"
    port = f"th {s}port"
    tuple_ = f"{addr} . meta l4proto . {port}"
    out: list[Constraint] = []

    if fam is not None:
        mine = [n for n in nets if n.version == fam]
        if nets and not mine:
            return [[]]
        if mine:
            out.append(_one(f"{addr} {_net_set(mine)}"))
        mine_not = [n for n in not_nets if n.version == fam]
        if mine_not:
            out.append(_one(f"{addr} != {_net_set(mine_not)}"))

    def set_ref(sid: str) -> tuple[str, NftKey]:
        name = names.ipset(sid, fam or 4)
        return name, set_key(name)

    for sid in sets:
        name, key = set_ref(sid)
        if set_type(sid) is IPSetType.IP_AND_PORT:
            out.append(_one(f"meta l4proto {PORT_PROTOS}", f"{tuple_} @{name}", refs=[key]))
        else:
            out.append(_one(f"{addr} @{name}", refs=[key]))
    for sid in not_sets:
        name, key = set_ref(sid)
        if set_type(sid) is IPSetType.IP_AND_PORT:
            out.append([Alt((f"meta l4proto != {PORT_PROTOS}",)),
                        Alt((f"meta l4proto {PORT_PROTOS}", f"{tuple_} != @{name}"), frozenset([key]))])
        else:
            out.append(_one(f"{addr} != @{name}", refs=[key]))

    # Positive ports: any range OR any named-port set (the protocol is already a port protocol).
    items: list[tuple[str, str, list[NftKey]]] = []   # (positive, negative, refs)
    if ports:
        items.append((f"{port} {_port_set(ports)}", f"{port} != {_port_set(ports)}", []))
    for sid in named:
        name, key = set_ref(sid)
        items.append((f"{tuple_} @{name}", f"{tuple_} != @{name}", [key]))
    if items:
        alts = []
        for i, (pos, _, refs) in enumerate(items):
            before = [neg for _, neg, _ in items[:i]]
            all_refs = [k for _, _, r in items[: i + 1] for k in r]
            alts.append(Alt(tuple(before) + (pos,), frozenset(all_refs)))
        out.append(alts)

    # Negative ports exclude only packets that have ports.
    excl: list[str] = []
    excl_refs: list[NftKey] = []
    if not_ports:
        excl.append(f"{port} != {_port_set(not_ports)}")
    for sid in not_named:
        name, key = set_ref(sid)
        excl.append(f"{tuple_} != @{name}")
        excl_refs.append(key)
    if excl:
        has_ports = bool(ports or named or rule.src_ports or rule.dst_ports
                         or rule.src_named_port_ip_set_ids or rule.dst_named_port_ip_set_ids)
        if rule.protocol in PORT_PROTOCOLS or has_ports:
            out.append([Alt(tuple(excl), frozenset(excl_refs))])
        elif rule.protocol is None:
            out.append([Alt((f"meta l4proto != {PORT_PROTOS}",)),
                        Alt((f"meta l4proto {PORT_PROTOS}", *excl), frozenset(excl_refs))])
        # any other protocol has no ports: nothing to exclude
    return out


def _icmp(rule: RenderedRule, fam: int) -> list[Constraint]:
    kw = "icmp" if fam == 4 else "icmpv6"
    proto = ICMP_PROTO[fam]
    out: list[Constraint] = []
    if rule.icmp_type is not None:
        m = [f"{kw} type {rule.icmp_type}"]
        if rule.icmp_code is not None:
            m.append(f"{kw} code {rule.icmp_code}")
        out.append(_one(*m))
    if rule.not_icmp_type is not None and rule.protocol in (None, proto):
        t, c = rule.not_icmp_type, rule.not_icmp_code
        alts = []
        if rule.protocol is None:
            alts.append(Alt((f"meta l4proto != {proto}",)))
        alts.append(Alt(((f"meta l4proto {proto}",) if rule.protocol is None else ()) + (f"{kw} type != {t}",)))
        if c is not None:
            alts.append(Alt((f"{kw} type {t}", f"{kw} code != {c}")))
        out.append(alts)
    return out


def _net_set(nets: Sequence) -> str:
    return "{ " + ", ".join(net_element(n) for n in without_subsumed(nets)) + " }"


def _port_set(ports: Sequence[PortRange]) -> str:
    """Overlapping ranges merged: anonymous interval sets refuse overlaps."""
    merged: list[list[int]] = []
    for p in sorted(ports, key=lambda r: (r.first, r.last)):
        if merged and p.first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], p.last)
        else:
            merged.append([p.first, p.last])
    return "{ " + ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in merged) + " }"
