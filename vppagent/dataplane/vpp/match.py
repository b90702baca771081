"""What a rule matches, as a conjunction that can be intersected.

Both policy engines need to AND two rules together: a Calico ``Pass`` jumps
over the rest of its tier, which neither npol nor the ACL plugin can express,
so the passing rule is intersected with every rule it would reach instead
(and a negated condition in the ACL plugin is handled the same way).  A
``Match`` is therefore kept in a form closed under conjunction: every field
is a list of constraints that must all hold.

Semantics are exactly the reference evaluator's (``evaluator/engine.py``):
nets match addresses of their own family, port constraints need a packet
with ports, ``notICMP`` only excludes ICMP packets.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Callable

from vppagent.model.resources import PortRange as ModelPortRange
from vppagent.model.updates import IPSetType, RenderedRule

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Range = tuple[int, int]
FULL_PORTS: Range = (0, 65535)
ICMP_PROTOCOLS = {4: 1, 6: 58}


def _sorted_nets(nets: object) -> tuple[IPNetwork, ...]:
    return tuple(sorted(set(nets), key=lambda n: (n.version, int(n.network_address), n.prefixlen)))  # type: ignore[arg-type]


@dataclass(frozen=True)
class PortItem:
    """One alternative of a port constraint: a plain range (``sets`` empty) or
    membership of (address, protocol, port) in every named-port set, with
    the port inside ``range`` when one is given."""

    sets: tuple[str, ...] = ()
    range: Range | None = None

    def conj(self, other: "PortItem") -> "PortItem | None":
        r = intersect_range(self.range, other.range)
        if r == ():
            return None
        return PortItem(tuple(sorted(set(self.sets) | set(other.sets))), r or None)  # type: ignore[arg-type]


def intersect_range(a: Range | None, b: Range | None) -> Range | None | tuple[()]:
    """None means unconstrained; ``()`` means empty."""
    if a is None:
        return b
    if b is None:
        return a
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if lo <= hi else ()


@dataclass(frozen=True)
class Side:
    """Constraints on one end (source or destination) of a packet."""

    nets: tuple[tuple[IPNetwork, ...], ...] = ()      # AND of any-of groups
    not_nets: tuple[IPNetwork, ...] = ()
    sets: tuple[str, ...] = ()                        # address in every NET set
    not_sets: tuple[str, ...] = ()
    ports: tuple[tuple[PortItem, ...], ...] = ()      # AND of any-of groups
    not_ranges: tuple[Range, ...] = ()
    not_port_sets: tuple[str, ...] = ()

    def conj(self, o: "Side") -> "Side":
        return Side(
            nets=tuple(sorted(set(self.nets) | set(o.nets), key=repr)),
            not_nets=_sorted_nets(self.not_nets + o.not_nets),
            sets=tuple(sorted(set(self.sets) | set(o.sets))),
            not_sets=tuple(sorted(set(self.not_sets) | set(o.not_sets))),
            ports=tuple(sorted(set(self.ports) | set(o.ports), key=repr)),
            not_ranges=tuple(sorted(set(self.not_ranges) | set(o.not_ranges))),
            not_port_sets=tuple(sorted(set(self.not_port_sets) | set(o.not_port_sets))),
        )

    @property
    def wants_ports(self) -> bool:
        """A positive port condition: only packets with ports can match."""
        return bool(self.ports)

    def set_ids(self) -> set[str]:
        out = set(self.sets) | set(self.not_sets) | set(self.not_port_sets)
        for group in self.ports:
            for item in group:
                out.update(item.sets)
        return out


@dataclass(frozen=True)
class Match:
    """A conjunction of conditions on a packet; the empty Match matches all."""

    version: int | None = None
    protocol: int | None = None
    not_protocols: tuple[int, ...] = ()
    icmp_type: int | None = None
    icmp_code: int | None = None
    not_icmp: tuple[tuple[int, int | None], ...] = ()
    src: Side = field(default_factory=Side)
    dst: Side = field(default_factory=Side)

    def conj(self, o: "Match") -> "Match | None":
        """Both conditions; None when that is obviously impossible."""
        version = _same(self.version, o.version)
        protocol = _same(self.protocol, o.protocol)
        icmp_type = _same(self.icmp_type, o.icmp_type)
        icmp_code = _same(self.icmp_code, o.icmp_code)
        if _CONFLICT in (version, protocol, icmp_type, icmp_code):
            return None
        not_protocols = tuple(sorted(set(self.not_protocols) | set(o.not_protocols)))
        if protocol is not None and protocol in not_protocols:
            return None
        m = Match(version, protocol, not_protocols, icmp_type, icmp_code,  # type: ignore[arg-type]
                  tuple(sorted(set(self.not_icmp) | set(o.not_icmp), key=repr)),
                  self.src.conj(o.src), self.dst.conj(o.dst))
        return None if m.impossible() else m

    def impossible(self) -> bool:
        """Cheap static checks (the engines drop rules that can never match)."""
        if self.icmp_type is not None:
            if self.protocol is not None and self.protocol not in (1, 58):
                return True
            if self.src.wants_ports or self.dst.wants_ports:
                return True
            for t, c in self.not_icmp:
                if t == self.icmp_type and (c is None or c == self.icmp_code):
                    return True
        if self.protocol in (1, 58) and self.version is not None and ICMP_PROTOCOLS[self.version] != self.protocol:
            return True
        if self.protocol is not None and self.protocol not in (6, 17, 132, 136) and (
                self.src.wants_ports or self.dst.wants_ports):
            return True
        for side in (self.src, self.dst):
            if side.nets and not side_prefixes(side, self.version):
                return True
            for group in side.ports:
                if not group:
                    return True
        return False

    def set_ids(self) -> set[str]:
        return self.src.set_ids() | self.dst.set_ids()


ANY = Match()
_CONFLICT = object()


def _same(a: int | None, b: int | None) -> object:
    if a is None:
        return b
    if b is None or a == b:
        return a
    return _CONFLICT


# ------------------------------------------------------------- prefixes

def intersect_net(a: IPNetwork, b: IPNetwork) -> IPNetwork | None:
    """Two prefixes overlap only when one contains the other."""
    if a.version != b.version:
        return None
    if a.prefixlen >= b.prefixlen:
        return a if a.subnet_of(b) else None  # type: ignore[arg-type]
    return b if b.subnet_of(a) else None  # type: ignore[arg-type]


def intersect_net_lists(a: tuple[IPNetwork, ...], b: tuple[IPNetwork, ...]) -> tuple[IPNetwork, ...]:
    out = {n for x in a for y in b if (n := intersect_net(x, y)) is not None}
    return collapse(out)


def collapse(nets: object) -> tuple[IPNetwork, ...]:
    """Sorted, with prefixes inside another one of the list removed."""
    items = sorted(set(nets), key=lambda n: (n.version, n.prefixlen, int(n.network_address)))  # type: ignore[arg-type]
    kept: list[IPNetwork] = []
    for n in items:
        if not any(n.version == k.version and n.subnet_of(k) for k in kept):  # type: ignore[arg-type]
            kept.append(n)
    return _sorted_nets(kept)


def side_prefixes(side: Side, version: int | None) -> tuple[IPNetwork, ...] | None:
    """The side's positive nets as one any-of list (None: unconstrained)."""
    if not side.nets:
        return None
    result: tuple[IPNetwork, ...] = side.nets[0]
    for group in side.nets[1:]:
        result = intersect_net_lists(result, group)
    if version is not None:
        result = tuple(n for n in result if n.version == version)
    return collapse(result)


def port_items(side: Side) -> tuple[PortItem, ...] | None:
    """The side's port groups multiplied out into one any-of list (None: no port condition)."""
    if not side.ports:
        return None
    items: list[PortItem] = list(side.ports[0])
    for group in side.ports[1:]:
        items = [c for a in items for b in group if (c := a.conj(b)) is not None]
    return tuple(dict.fromkeys(items))


# ------------------------------------------------------------- from the model

def _ranges(ports: tuple[ModelPortRange, ...]) -> tuple[Range, ...]:
    return tuple(sorted({(p.first, p.last) for p in ports}))


def _side(nets: tuple, not_nets: tuple, ports: tuple, not_ports: tuple, named: tuple, not_named: tuple,
          sets: tuple, not_sets: tuple, set_type: Callable[[str], IPSetType]) -> Side:
    port_groups: list[tuple[PortItem, ...]] = []
    if ports or named:
        port_groups.append(tuple([PortItem((), r) for r in _ranges(ports)] + [PortItem((s,)) for s in named]))
    net_sets: list[str] = []
    for s in sets:
        if set_type(s) is IPSetType.IP_AND_PORT:
            port_groups.append((PortItem((s,)),))       # a service's ip,port set: its own AND-ed condition
        else:
            net_sets.append(s)
    not_port_sets = set(not_named)
    not_net_sets = []
    for s in not_sets:
        (not_port_sets.add(s) if set_type(s) is IPSetType.IP_AND_PORT else not_net_sets.append(s))
    return Side(
        nets=(_sorted_nets(nets),) if nets else (),
        not_nets=_sorted_nets(not_nets),
        sets=tuple(sorted(set(net_sets))),
        not_sets=tuple(sorted(set(not_net_sets))),
        ports=tuple(sorted(set(port_groups), key=repr)),
        not_ranges=_ranges(not_ports),
        not_port_sets=tuple(sorted(not_port_sets)),
    )


def from_rule(rule: RenderedRule, set_type: Callable[[str], IPSetType]) -> Match:
    """A rendered rule's conditions (its action is the caller's business)."""
    not_icmp: tuple[tuple[int, int | None], ...] = ()
    if rule.not_icmp_type is not None:
        not_icmp = ((rule.not_icmp_type, rule.not_icmp_code),)
    return Match(
        version=rule.ip_version,
        protocol=rule.protocol,
        not_protocols=(rule.not_protocol,) if rule.not_protocol is not None else (),
        icmp_type=rule.icmp_type,
        icmp_code=rule.icmp_code if rule.icmp_type is not None else None,
        not_icmp=not_icmp,
        src=_side(rule.src_nets, rule.not_src_nets, rule.src_ports, rule.not_src_ports,
                  rule.src_named_port_ip_set_ids, rule.not_src_named_port_ip_set_ids,
                  rule.src_ip_set_ids, rule.not_src_ip_set_ids, set_type),
        dst=_side(rule.dst_nets, rule.not_dst_nets, rule.dst_ports, rule.not_dst_ports,
                  rule.dst_named_port_ip_set_ids, rule.not_dst_named_port_ip_set_ids,
                  rule.dst_ip_set_ids, rule.not_dst_ip_set_ids, set_type),
    )


def ports_match(proto: int, first: int, last: int) -> Match:
    """``proto`` with a destination port in ``first..last`` (failsafe entries)."""
    return Match(protocol=proto, dst=Side(ports=((PortItem((), (first, last)),),)))


def source_in(nets: tuple[IPNetwork, ...]) -> Match:
    return Match(src=Side(nets=(_sorted_nets(nets),)))
