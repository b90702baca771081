"""Reconciler keys and values: chains, our rules in built-in chains, IP sets.

A chain's value carries a hash per rule (Felix's ``cali:<hash>`` comment, a
digest of the chain name, the previous rule's hash and the rule text). What is
read back from ``iptables-save`` is compared by these hashes only, because
iptables normalises rule text (``0.5`` becomes ``0.50000000000``) and the
hashes survive that untouched.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Iterable

TABLES = ("raw", "mangle", "nat", "filter")
BUILTIN_CHAINS = {
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}
MISPLACED = "!misplaced"   # read-back marker: our rules exist but not at the top


@dataclass(frozen=True, order=True)
class ChainKey:
    """A ``cali-`` chain in one family and table."""

    family: int
    table: str
    chain: str


@dataclass(frozen=True, order=True)
class HookKey:
    """Our rules at the top of a built-in chain (``FORWARD``, ``PREROUTING``...)."""

    family: int
    table: str
    chain: str


@dataclass(frozen=True, order=True)
class IPSetKey:
    family: int
    name: str


def rule_hashes(chain: str, bodies: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    prev = chain
    for body in bodies:
        digest = hashlib.sha224(f"{prev}\0{body}".encode()).digest()
        prev = base64.urlsafe_b64encode(digest).decode()[:16]
        out.append(prev)
    return tuple(out)


@dataclass(frozen=True)
class Rules:
    """A chain's rule bodies (what follows ``-A chain``) and their hashes."""

    bodies: tuple[str, ...] = ()
    hashes: tuple[str, ...] = ()

    @classmethod
    def render(cls, chain: str, bodies: Iterable[str]) -> "Rules":
        b = tuple(bodies)
        return cls(b, rule_hashes(chain, b))

    def lines(self, verb: str, chain: str) -> list[str]:
        """``-A chain -m comment --comment "cali:<hash>" body`` lines (or ``-I chain N``)."""
        out = []
        for i, (body, h) in enumerate(zip(self.bodies, self.hashes), 1):
            where = f"{verb} {chain} {i}" if verb == "-I" else f"{verb} {chain}"
            out.append(f'{where} -m comment --comment "cali:{h}" {body}'.rstrip())
        return out


@dataclass(frozen=True)
class IPSetValue:
    """``kind`` is the ipset type (``hash:net`` or ``hash:ip,port``); members canonical.

    ``maxelem`` is a creation parameter: a set read back with another value
    is rebuilt (through a temporary set and ``ipset swap``).
    """

    kind: str
    members: frozenset[str] = field(default_factory=frozenset)
    maxelem: int = 1048576


AnyKey = ChainKey | HookKey | IPSetKey
