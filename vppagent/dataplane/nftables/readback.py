"""``nft -j list table`` → the same keys and values the renderer produces.

Rules come back as digests (from their comments; a rule without our comment
gets a digest that can never match, so a hand-added rule forces a rewrite)
and the chains/sets they reference, which the reconciler needs to delete
things in a valid order. Element keys are normalised to the renderer's
spelling (numeric protocols, quoted interface names).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Iterable

from vppagent.dataplane.nftables.objects import (
    COMMENT_PREFIX, Chain, Element, Hook, NftKey, NftMap, NftSet, NftValue, SetDecl, chain_key,
    elem_key, map_key, set_key,
)

_PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132, "udplite": 136, "icmp": 1, "ipv6-icmp": 58,
              "icmpv6": 58, "dccp": 33}

Dump = dict[NftKey, tuple[NftValue, Any]]


def parse_table(objects: Iterable[dict[str, Any]]) -> Dump:
    out: Dump = {}
    chains: dict[str, dict[str, Any]] = {}
    rules: dict[str, list[dict[str, Any]]] = {}
    sets: set[str] = set()
    maps: set[str] = set()
    for obj in objects:
        if "set" in obj:
            s = obj["set"]
            flags = set(s.get("flags", []))
            decl = SetDecl(_type(s["type"]), interval="interval" in flags,
                           timeout=s.get("timeout") if "timeout" in flags else None)
            elems = () if decl.dynamic else s.get("elem", [])
            out[set_key(s["name"])] = (NftSet(decl, frozenset(_element(e) for e in elems)),
                                       {"handle": s.get("handle")})
            sets.add(s["name"])
        elif "map" in obj:
            m = obj["map"]
            if m.get("map") != "verdict":
                continue
            typ = _type(m["type"])
            out[map_key(m["name"])] = (NftMap(typ), {"handle": m.get("handle")})
            maps.add(m["name"])
            quote = typ == "ifname"
            for key, verdict in m.get("elem", []):
                text = f'"{key}"' if quote else _element(key)
                out[elem_key(m["name"], text)] = (Element(_verdict(verdict)), None)
        elif "chain" in obj:
            chains[obj["chain"]["name"]] = obj["chain"]
        elif "rule" in obj:
            rules.setdefault(obj["rule"]["chain"], []).append(obj["rule"])
    for name, c in chains.items():
        hook = Hook(c["type"], c["hook"], int(c["prio"]), c.get("policy", "accept")) if "hook" in c else None
        digests = []
        refs: set[NftKey] = set()
        handles = []
        for r in rules.get(name, []):
            comment = r.get("comment", "")
            digests.append(comment[len(COMMENT_PREFIX):] if comment.startswith(COMMENT_PREFIX)
                           else f"!foreign-{r.get('handle')}")
            handles.append(r.get("handle"))
            _refs(r.get("expr", []), refs, sets, maps)
        out[chain_key(name)] = (Chain(hook=hook, refs=frozenset(refs), digests=tuple(digests)),
                                {"handle": c.get("handle"), "rule_handles": handles})
    return out


def _type(value: Any) -> str:
    return " . ".join(value) if isinstance(value, list) else str(value)


def _atom(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if text in _PROTOCOLS:
        return str(_PROTOCOLS[text])
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    try:
        return str(socket.getprotobyname(text))
    except OSError:
        return text


def _element(e: Any) -> str:
    """One set element or map key in the renderer's spelling."""
    if isinstance(e, dict):
        if "elem" in e:
            return _element(e["elem"].get("val"))
        if "prefix" in e:
            p = e["prefix"]
            net = ipaddress.ip_network(f"{p['addr']}/{p['len']}", strict=False)
            return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
        if "range" in e:
            a, b = e["range"]
            return f"{_atom(a)}-{_atom(b)}"
        if "concat" in e:
            return " . ".join(_element(x) for x in e["concat"])
    return _atom(e)


def _verdict(v: Any) -> str:
    if isinstance(v, dict):
        for kind in ("jump", "goto"):
            if kind in v:
                return f"{kind} {v[kind]['target']}"
        return " ".join(v)
    return str(v)


def _refs(node: Any, refs: set[NftKey], sets: set[str], maps: set[str]) -> None:
    """Collect ``@set``/``@map`` and jump/goto targets anywhere in a rule's expressions."""
    if isinstance(node, dict):
        for kind in ("jump", "goto"):
            target = node.get(kind)
            if isinstance(target, dict) and "target" in target:
                refs.add(chain_key(target["target"]))
        for value in node.values():
            _refs(value, refs, sets, maps)
    elif isinstance(node, list):
        for value in node:
            _refs(value, refs, sets, maps)
    elif isinstance(node, str) and node.startswith("@"):
        name = node[1:]
        if name in maps:
            refs.add(map_key(name))
        elif name in sets:
            refs.add(set_key(name))
