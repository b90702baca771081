"""``natOutgoing`` pools: masquerade pod traffic leaving for outside every pool.

Two IP sets per family, as Felix: all pools' CIDRs and the natOutgoing ones.
"""

from __future__ import annotations

from typing import Iterable

from vppagent.dataplane.iptables.ipsets import NET, set_value
from vppagent.dataplane.iptables.model import ChainKey, IPSetKey, Rules
from vppagent.dataplane.iptables.static import NAT_OUTGOING
from vppagent.model.updates import IPPoolUpdate


def pool_set_names(family: int) -> tuple[str, str]:
    return f"cali{family}0all-ipam-pools", f"cali{family}0masq-ipam-pools"


def pool_items(pools: Iterable[IPPoolUpdate], families: Iterable[int]) -> dict:
    pools = list(pools)
    out: dict = {}
    for fam in families:
        all_cidrs = [str(p.pool.cidr) for p in pools if p.pool.cidr.version == fam]
        masq_cidrs = [str(p.pool.cidr) for p in pools if p.pool.cidr.version == fam and p.pool.nat_outgoing]
        bodies: list[str] = []
        if masq_cidrs:
            all_name, masq_name = pool_set_names(fam)
            out[IPSetKey(fam, all_name)] = set_value(NET, all_cidrs, fam)
            out[IPSetKey(fam, masq_name)] = set_value(NET, masq_cidrs, fam)
            bodies.append(f"-m set --match-set {masq_name} src -m set ! --match-set {all_name} dst "
                          "-j MASQUERADE --random-fully")
        out[ChainKey(fam, "nat", NAT_OUTGOING)] = Rules.render(NAT_OUTGOING, bodies)
    return out
