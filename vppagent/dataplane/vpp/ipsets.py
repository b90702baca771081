"""Members of npol ipsets, including the derived ones.

npol ORs the sets of one rule category, while Calico ANDs a rule's set
conditions (a selector set and a service set, two named-port conditions
after a Pass was intersected).  Such conjunctions become derived sets whose
members the agent computes: the intersection of NET sets (prefix by
prefix), of ip,port sets, of ip,port sets with NET sets, and ip,port sets
limited to a port range.  They are kept up to date like any other set.
"""

from __future__ import annotations

import ipaddress
from typing import Mapping

from vppagent.dataplane.vpp.keys import NpolSetKey
from vppagent.dataplane.vpp.match import intersect_net_lists
from vppagent.model.updates import IPSetType

IPSets = Mapping[str, tuple[IPSetType, frozenset[str]]]


def _nets(members: frozenset[str]) -> tuple:
    return tuple(ipaddress.ip_network(m, strict=False) for m in members)


def _split_ipport(member: str) -> tuple[str, int, int]:
    ip, _, rest = member.rpartition(",")
    proto, _, port = rest.partition(":")
    return ip, int(proto), int(port)


def set_members(key: NpolSetKey, ipsets: IPSets) -> frozenset[str] | None:
    """The members ``key`` should hold; None while a set it derives from is unknown."""
    parts = [ipsets.get(i) for i in key.ids]
    if any(p is None for p in parts):
        return None
    ipport = [m for t, m in parts if t is IPSetType.IP_AND_PORT]     # type: ignore[misc]
    net = [m for t, m in parts if t is not IPSetType.IP_AND_PORT]    # type: ignore[misc]
    if key.kind == "net":
        if ipport:
            return frozenset()
        result = _nets(net[0])
        for more in net[1:]:
            result = intersect_net_lists(result, _nets(more))
        return frozenset(str(n) for n in result)
    if not ipport:
        return frozenset()
    common = set(ipport[0])
    for more in ipport[1:]:
        common &= more
    if net:
        within = [_nets(m) for m in net]
        kept = set()
        for member in common:
            ip = ipaddress.ip_address(_split_ipport(member)[0])
            if all(any(ip.version == n.version and ip in n for n in nets) for nets in within):
                kept.add(member)
        common = kept
    if key.range is not None:
        lo, hi = key.range
        common = {m for m in common if lo <= _split_ipport(m)[2] <= hi}
    return frozenset(common)


def member_message(kind: str, member: str) -> dict:
    """One ``vl_api_npol_ipset_member_t``."""
    if kind == "ipport":
        ip, proto, port = _split_ipport(member)
        return {"val": {"tuple": {"address": ip, "l4_proto": proto, "port": port}}}
    return {"val": {"prefix": str(ipaddress.ip_network(member, strict=False))}}


NPOL_SET_TYPE = {"net": 2, "ipport": 1}
