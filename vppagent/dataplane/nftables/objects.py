"""What lives in the agent's nftables table, as reconciler keys and values.

One key per chain (value: its rules), per set (value: its elements), per
verdict map (value: its type) and per verdict-map element (value: the
verdict), so a change touches exactly the objects it changes. Values carry
what they reference, which the reconciler turns into dependencies.

Chains are compared by a digest per rule, carried in each rule's comment
(Felix's ``cali:<hash>`` idea): read-back cannot reproduce the rule text nft
was given, but it returns comments verbatim.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Iterable

COMMENT_PREFIX = "vpa:"


@dataclass(frozen=True, order=True)
class NftKey:
    """``kind`` is chain, set, map or elem; an elem's ``name`` is its map."""

    kind: str
    name: str
    elem: str = ""

    def __repr__(self) -> str:
        return f"nft-{self.kind}:{self.name}" + (f"[{self.elem}]" if self.kind == "elem" else "")


def chain_key(name: str) -> NftKey:
    return NftKey("chain", name)


def set_key(name: str) -> NftKey:
    return NftKey("set", name)


def map_key(name: str) -> NftKey:
    return NftKey("map", name)


def elem_key(map_name: str, key: str) -> NftKey:
    return NftKey("elem", map_name, key)


@dataclass(frozen=True)
class Hook:
    """A base chain's hook; priorities are numbers so read-back compares exactly."""

    type: str          # filter | nat
    hook: str          # prerouting | input | forward | output | postrouting
    priority: int
    policy: str = "accept"

    def render(self) -> str:
        return f"{{ type {self.type} hook {self.hook} priority {self.priority}; policy {self.policy}; }}"


def rule_digests(rules: Iterable[str]) -> tuple[str, ...]:
    """A chained hash per rule: a rule's digest also covers every rule before it."""
    out = []
    prev = ""
    for rule in rules:
        prev = hashlib.sha256(f"{prev}\0{rule}".encode()).hexdigest()[:16]
        out.append(prev)
    return tuple(out)


@dataclass(frozen=True)
class Chain:
    """A chain's rules (desired) or just their digests (read back)."""

    rules: tuple[str, ...] = ()
    hook: Hook | None = None
    refs: frozenset[NftKey] = frozenset()
    digests: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.rules and not self.digests:
            object.__setattr__(self, "digests", rule_digests(self.rules))

    def same_as(self, other: "Chain") -> bool:
        return self.hook == other.hook and self.digests == other.digests


@dataclass(frozen=True)
class SetDecl:
    """A set's type and flags; ``timeout`` makes it a dynamic set the kernel fills."""

    type: str
    interval: bool = False
    timeout: int | None = None

    @property
    def dynamic(self) -> bool:
        return self.timeout is not None

    @property
    def family(self) -> int:
        return 6 if self.type.startswith("ipv6") else 4

    def render(self) -> str:
        parts = [f"type {self.type};"]
        if self.interval:
            parts.append("flags interval;")
        if self.timeout is not None:
            parts.append(f"flags dynamic,timeout; timeout {self.timeout}s;")
        return "{ " + " ".join(parts) + " }"


@dataclass(frozen=True)
class NftSet:
    decl: SetDecl
    elements: frozenset[str] = frozenset()

    def same_as(self, other: "NftSet") -> bool:
        if self.decl != other.decl:
            return False
        if self.decl.dynamic:
            return True            # the kernel owns a dynamic set's elements
        if self.decl.interval:
            return intervals(self.elements) == intervals(other.elements)
        return self.elements == other.elements


@dataclass(frozen=True)
class NftMap:
    """A verdict map; its elements are keys of their own."""

    type: str

    def render(self) -> str:
        return f"{{ type {self.type} : verdict; }}"


@dataclass(frozen=True)
class Element:
    """One verdict-map element: ``jump CHAIN`` or ``goto CHAIN``."""

    verdict: str

    @property
    def target(self) -> str:
        return self.verdict.split()[-1]


NftValue = Chain | NftSet | NftMap | Element


def intervals(elements: Iterable[str]) -> tuple[tuple[int, int, int], ...]:
    """Interval-set elements (addresses, prefixes, ranges) as merged (family, first, last)."""
    spans: list[tuple[int, int, int]] = []
    for e in elements:
        if "-" in e:
            a, b = (ipaddress.ip_address(x.strip()) for x in e.split("-", 1))
            spans.append((a.version, int(a), int(b)))
        else:
            n = ipaddress.ip_network(e, strict=False)
            spans.append((n.version, int(n.network_address), int(n.broadcast_address)))
    spans.sort()
    merged: list[tuple[int, int, int]] = []
    for fam, lo, hi in spans:
        if merged and merged[-1][0] == fam and lo <= merged[-1][2] + 1:
            f0, l0, h0 = merged[-1]
            merged[-1] = (f0, l0, max(h0, hi))
        else:
            merged.append((fam, lo, hi))
    return tuple(merged)


def net_element(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """How nft prints a prefix element: bare address for a host, else CIDR."""
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


def without_subsumed(nets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> list:
    """Drop networks inside another one: interval sets refuse overlapping elements."""
    out: list = []
    for n in sorted(set(nets), key=lambda n: (n.version, int(n.network_address), n.prefixlen)):
        if out and out[-1].version == n.version and n.subnet_of(out[-1]):
            continue
        out.append(n)
    return out
