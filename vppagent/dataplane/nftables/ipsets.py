"""Calico IP sets → nft sets: one per address family, in nft's element spelling.

An IP set may mix IPv4 and IPv6 members, while an nft set has one type, so
each becomes a ``…-4`` and a ``…-6`` set (both always exist, so rules never
change when membership moves between families). Interval sets refuse
overlapping elements, so a network inside another member is left out.
"""

from __future__ import annotations

import ipaddress

from vppagent.dataplane.nftables import names
from vppagent.dataplane.nftables.objects import (
    NftKey, NftSet, NftValue, SetDecl, net_element, set_key, without_subsumed,
)
from vppagent.model.updates import IPSetType


def ipset_values(set_id: str, set_type: IPSetType, members: frozenset[str]) -> dict[NftKey, NftValue]:
    """An IP set as one nft set per family (members of both families may mix)."""
    by_family: dict[int, set[str]] = {4: set(), 6: set()}
    if set_type is IPSetType.IP_AND_PORT:
        for m in members:
            ip_text, _, rest = m.rpartition(",")
            proto, _, port = rest.partition(":")
            ip = ipaddress.ip_address(ip_text)
            by_family[ip.version].add(f"{ip} . {int(proto)} . {int(port)}")
        return {set_key(names.ipset(set_id, f)): NftSet(
            SetDecl(f"ipv{f}_addr . inet_proto . inet_service"), frozenset(by_family[f])) for f in (4, 6)}
    nets: dict[int, list] = {4: [], 6: []}
    for m in members:
        n = ipaddress.ip_network(m, strict=False)
        nets[n.version].append(n)
    return {set_key(names.ipset(set_id, f)): NftSet(
        SetDecl(f"ipv{f}_addr", interval=True),
        frozenset(net_element(n) for n in without_subsumed(nets[f]))) for f in (4, 6)}
