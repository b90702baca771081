"""Parsing what exists: ``iptables-save`` and ``ipset save`` output → keys and values.

Only what the agent owns is reported: ``cali-`` chains, our hashed rules in
built-in chains, ``cali4*``/``cali6*`` sets. Rules are identified by the hash
in their ``cali:`` comment; a rule without one (inserted by hand) reads back
with an empty hash, so its chain no longer matches and gets rewritten.
"""

from __future__ import annotations

import re
from typing import Iterator

from vppagent.dataplane.iptables.ipsets import IP_PORT, NET, set_value
from vppagent.dataplane.iptables.model import BUILTIN_CHAINS, MISPLACED, ChainKey, HookKey, IPSetKey, IPSetValue, Rules
from vppagent.dataplane.iptables.names import ipset_family, is_our_chain

_HASH = re.compile(r'--comment "?cali:([A-Za-z0-9_-]{16})"?(?:\s|$)')
_COUNTERS = re.compile(r"^\[(\d+):(\d+)\]\s+")

Tables = dict[str, dict[str, list[str]]]   # table -> chain -> rule bodies in order


def rule_hash(body: str) -> str:
    m = _HASH.search(body)
    return m.group(1) if m else ""


def parse_save(text: str) -> Tables:
    """``iptables-save`` (with or without ``-c``) → rule bodies per table and chain."""
    tables: Tables = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], {})
        elif line == "COMMIT":
            current = None
        elif current is None:
            continue
        elif line.startswith(":"):
            current.setdefault(line[1:].split()[0], [])
        else:
            line = _COUNTERS.sub("", line)
            if line.startswith("-A "):
                _, chain, *rest = line.split(" ", 2)
                current.setdefault(chain, []).append(rest[0] if rest else "")
    return tables


def parse_counters(text: str) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """``iptables-save -c`` → (table, chain) → [(packets, bytes)] per rule (for tests and status)."""
    out: dict[tuple[str, str], list[tuple[int, int]]] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        m = _COUNTERS.match(line)
        if m and line[m.end():].startswith("-A "):
            chain = line[m.end():].split(" ", 2)[1]
            out.setdefault((table, chain), []).append((int(m.group(1)), int(m.group(2))))
    return out


def owned_chains(family: int, tables: Tables) -> Iterator[tuple[ChainKey | HookKey, Rules]]:
    for table, chains in tables.items():
        builtins = BUILTIN_CHAINS.get(table, ())
        for chain, bodies in chains.items():
            if is_our_chain(chain):
                yield ChainKey(family, table, chain), Rules(tuple(bodies), tuple(rule_hash(b) for b in bodies))
            elif chain in builtins:
                ours = [(i, b, rule_hash(b)) for i, b in enumerate(bodies) if rule_hash(b)]
                if not ours:
                    continue
                hashes = tuple(h for _, _, h in ours)
                if [i for i, _, _ in ours] != list(range(len(ours))):
                    hashes += (MISPLACED,)
                yield HookKey(family, table, chain), Rules(tuple(b for _, b, _ in ours), hashes)


def parse_ipset_save(text: str) -> dict[IPSetKey, IPSetValue]:
    """``ipset save`` → our sets (others are skipped unread)."""
    kinds: dict[str, tuple[str, int]] = {}
    members: dict[str, list[str]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        verb, name = parts[0], parts[1]
        if ipset_family(name) is None:
            continue
        if verb == "create":
            opts = dict(zip(parts[3::2], parts[4::2]))
            kinds[name] = (parts[2], int(opts.get("maxelem", 65536)))
            members.setdefault(name, [])
        elif verb == "add":
            members.setdefault(name, []).append(parts[2])
    out: dict[IPSetKey, IPSetValue] = {}
    for name, (kind, maxelem) in kinds.items():
        family = ipset_family(name)
        assert family is not None
        if kind not in (NET, IP_PORT):
            out[IPSetKey(family, name)] = IPSetValue(kind, frozenset(members[name]), maxelem)
            continue
        out[IPSetKey(family, name)] = set_value(kind, members[name], family, maxelem)
    return out
