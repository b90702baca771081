"""Names the kernel sees: chain names (≤ 28 chars) and IP set names (≤ 31).

Everything the agent owns starts with ``cali-`` (chains) or ``cali4``/``cali6``
(IP sets); read-back treats exactly those as ours, so the prefixes are the
ownership boundary and must never be generated for anything else.
"""

from __future__ import annotations

import base64
import hashlib
import re

CHAIN_PREFIX = "cali-"
MAX_CHAIN_NAME = 28          # iptables' limit is 28 usable characters
MAX_IPSET_NAME = 31

_SAFE_CHAIN = re.compile(r"^[A-Za-z0-9._-]+$")
_SAFE_SET = re.compile(r"^[A-Za-z0-9._:-]+$")


def short_hash(text: str, length: int) -> str:
    """A stable lowercase base32 digest prefix (safe in chain and set names)."""
    digest = hashlib.sha256(text.encode()).digest()
    return base64.b32encode(digest).decode().lower().rstrip("=")[:length]


def chain_name(prefix: str, ident: str) -> str:
    """``prefix + ident`` when it fits and is plain; otherwise a hashed name.

    Hashed names are ``prefix + "_" + digest`` so they stay recognisable.
    """
    name = prefix + ident
    if len(name) <= MAX_CHAIN_NAME and _SAFE_CHAIN.match(ident) and not ident.startswith("_"):
        return name
    return prefix + "_" + short_hash(ident, MAX_CHAIN_NAME - len(prefix) - 1)


def ipset_name(family: int, set_id: str, ip_and_port: bool = False) -> str:
    """``cali40<id>`` / ``cali60<id>`` (Felix's layout; ``cali41``/``cali61`` for
    ``hash:ip,port``), hashed when too long.

    The type is part of the name so that a set whose type changes becomes a
    new set: rules move to it in one table transaction and the old one is
    destroyed afterwards (ipset cannot swap sets of different types).
    """
    base = f"cali{family}{1 if ip_and_port else 0}"
    name = base + set_id
    if len(name) <= MAX_IPSET_NAME and _SAFE_SET.match(set_id):
        return name
    return base + "h:" + short_hash(set_id, MAX_IPSET_NAME - len(base) - 2)


def temp_ipset_name(name: str) -> str:
    """The scratch set used to swap in a set whose type changed (still ours)."""
    return name[:5] + "t" + name[6:]


def ipset_family(name: str) -> int | None:
    """4 or 6 for a set this agent owns, None for anybody else's."""
    if name.startswith("cali4"):
        return 4
    if name.startswith("cali6"):
        return 6
    return None


def is_our_chain(name: str) -> bool:
    return name.startswith(CHAIN_PREFIX)
