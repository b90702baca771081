"""The fixed part of the table: base chains, dispatch maps and helper chains.

Base chains hook into the kernel at the usual priorities (raw, mangle,
dstnat, filter, srcnat) inside our own table, so they coexist with other
tables: an accept here does not override a drop elsewhere, and our drops
are final. Everything per-object hangs off the verdict maps declared here.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from vppagent.dataplane.nftables import names
from vppagent.dataplane.nftables.config import NftablesConfig
from vppagent.dataplane.nftables.objects import (
    Chain, Hook, NftKey, NftMap, NftSet, NftValue, SetDecl, chain_key, map_key, net_element, set_key,
    without_subsumed,
)
from vppagent.dataplane.nftables.policy import hexmark
from vppagent.model.updates import IPPoolUpdate

PRIO_RAW, PRIO_MANGLE, PRIO_DSTNAT, PRIO_FILTER, PRIO_SRCNAT = -300, -150, -100, 0, 100
# IPv6 neighbour discovery and MLD are link plumbing (ARP's job in IPv4, which inet
# tables never see): pods and host endpoints exchange them whatever their policy says.
NDP = "icmpv6 type { 130, 131, 132, 133, 134, 135, 136, 143 } ip6 hoplimit { 1, 255 } accept"
SERVICE_TUPLE = {4: "ipv4_addr . inet_proto . inet_service", 6: "ipv6_addr . inet_proto . inet_service"}
NODEPORT_TUPLE = "inet_proto . inet_service"


def _chain(rules: Iterable[str], hook: Hook | None = None, refs: Iterable[NftKey] = ()) -> Chain:
    return Chain(tuple(rules), hook=hook, refs=frozenset(refs))


def skeleton(cfg: NftablesConfig) -> dict[NftKey, NftValue]:
    m = cfg.marks
    A, U = m.accept, m.untracked
    clear = f"meta mark set meta mark & {hexmark(~m.verdict_bits)}"
    clear_all = f"meta mark set meta mark & {hexmark(~(m.verdict_bits | m.untracked))}"
    accepted = f"meta mark & {hexmark(A)} == {hexmark(A)}"
    not_accepted = f"meta mark & {hexmark(A)} == 0"
    untracked_ok = f"meta mark & {hexmark(U)} == {hexmark(U)} accept"
    wl = [f'"{p}*"' for p in cfg.interface_prefixes]

    out: dict[NftKey, NftValue] = {}
    for name in names.ENDPOINT_MAPS:
        out[map_key(name)] = NftMap("ifname")
    for fam in (4, 6):
        out[map_key(names.svc_ips(fam))] = NftMap(SERVICE_TUPLE[fam])
        out[map_key(names.svc_noep(fam))] = NftMap(SERVICE_TUPLE[fam])
        out[map_key(names.svc_nodeports(fam))] = NftMap(NODEPORT_TUPLE)
        out[map_key(names.svc_noep_nodeports(fam))] = NftMap(NODEPORT_TUPLE)

    def vmap(direction: str, name: str) -> str:
        return f"{direction}name vmap @{name}"

    maps = {n: map_key(n) for n in names.ENDPOINT_MAPS}
    check = f"ct state new jump {names.SVC_CHECK}"

    input_rules = [check, untracked_ok, NDP, clear]
    input_rules.append(vmap("iif", names.WL_FROM))
    if cfg.endpoint_to_host_accept:
        input_rules += [f"iifname {p} {accepted} accept" for p in wl]
    input_rules += [f"iifname {p} counter drop" for p in wl]
    input_rules += [clear, vmap("iif", names.HEP_IN)]
    out[chain_key("filter-input")] = _chain(
        input_rules, Hook("filter", "input", PRIO_FILTER),
        [maps[names.WL_FROM], maps[names.HEP_IN], chain_key(names.SVC_CHECK)])

    fwd = [check, untracked_ok, clear, vmap("iif", names.WL_FROM)]
    fwd += [f"iifname {p} {not_accepted} counter drop" for p in wl]
    fwd += [clear, vmap("oif", names.WL_TO)]
    fwd += [f"oifname {p} {not_accepted} counter drop" for p in wl]
    fwd += [f"iifname {p} accept" for p in wl] + [f"oifname {p} accept" for p in wl]
    fwd += [clear, vmap("iif", names.HEP_FWD_IN), clear, vmap("oif", names.HEP_FWD_OUT)]
    out[chain_key("filter-forward")] = _chain(
        fwd, Hook("filter", "forward", PRIO_FILTER),
        [maps[names.WL_FROM], maps[names.WL_TO], maps[names.HEP_FWD_IN], maps[names.HEP_FWD_OUT],
         chain_key(names.SVC_CHECK)])

    output = [check, untracked_ok, NDP, clear]
    output.append(vmap("oif", names.WL_TO))
    output += [f"oifname {p} {not_accepted} counter drop" for p in wl]
    output += [f"oifname {p} accept" for p in wl]
    output += [clear, vmap("oif", names.HEP_OUT)]
    out[chain_key("filter-output")] = _chain(
        output, Hook("filter", "output", PRIO_FILTER),
        [maps[names.WL_TO], maps[names.HEP_OUT], chain_key(names.SVC_CHECK)])

    out[chain_key("raw-prerouting")] = _chain(
        [clear_all, vmap("iif", names.HEP_RAW_IN)], Hook("filter", "prerouting", PRIO_RAW),
        [maps[names.HEP_RAW_IN]])
    out[chain_key("raw-output")] = _chain(
        [clear_all, vmap("oif", names.HEP_RAW_OUT)], Hook("filter", "output", PRIO_RAW),
        [maps[names.HEP_RAW_OUT]])
    out[chain_key("mangle-prerouting")] = _chain(
        [clear, vmap("iif", names.HEP_PRE)], Hook("filter", "prerouting", PRIO_MANGLE),
        [maps[names.HEP_PRE]])

    # Services: frontends → service chains (nat), frontends without endpoints → reject (filter).
    def dispatch(map_of, nodeport_map_of) -> tuple[list[str], list[NftKey]]:
        rules, refs = [], []
        for fam, addr, loop in ((4, "ip", "127.0.0.0/8"), (6, "ip6", "::1")):
            rules.append(f"{addr} daddr . meta l4proto . th dport vmap @{map_of(fam)}")
            rules.append(f"fib daddr type local {addr} daddr != {loop} "
                         f"meta l4proto . th dport vmap @{nodeport_map_of(fam)}")
            refs += [map_key(map_of(fam)), map_key(nodeport_map_of(fam))]
        return rules, refs

    rules, refs = dispatch(names.svc_ips, names.svc_nodeports)
    out[chain_key(names.SVC_DISPATCH)] = _chain(rules, refs=refs)
    rules, refs = dispatch(names.svc_noep, names.svc_noep_nodeports)
    out[chain_key(names.SVC_CHECK)] = _chain(rules, refs=refs)
    out[chain_key(names.SVC_REJECT)] = _chain(
        ["meta l4proto 6 counter reject with tcp reset", "counter reject with icmpx port-unreachable"])
    out[chain_key(names.MARK_MASQ)] = _chain([f"meta mark set meta mark | {hexmark(m.masq)}"])
    out[chain_key("nat-prerouting")] = _chain(
        [f"jump {names.SVC_DISPATCH}"], Hook("nat", "prerouting", PRIO_DSTNAT), [chain_key(names.SVC_DISPATCH)])
    out[chain_key("nat-output")] = _chain(
        [f"jump {names.SVC_DISPATCH}"], Hook("nat", "output", PRIO_DSTNAT), [chain_key(names.SVC_DISPATCH)])
    post = [f"meta mark & {hexmark(m.masq)} == {hexmark(m.masq)} "
            f"meta mark set meta mark ^ {hexmark(m.masq)} counter masquerade fully-random"]
    post_refs: list[NftKey] = []
    for fam, addr in ((4, "ip"), (6, "ip6")):
        post.append(f"{addr} saddr @{names.pools_masq(fam)} {addr} daddr != @{names.pools_all(fam)} "
                    "counter masquerade fully-random")
        post_refs += [set_key(names.pools_masq(fam)), set_key(names.pools_all(fam))]
    out[chain_key("nat-postrouting")] = _chain(post, Hook("nat", "postrouting", PRIO_SRCNAT), post_refs)
    return out


def pools(updates: Iterable[IPPoolUpdate]) -> dict[NftKey, NftValue]:
    """``pools-all`` (every pool) and ``pools-masq`` (natOutgoing, enabled) per family."""
    all_nets: dict[int, list] = {4: [], 6: []}
    masq: dict[int, list] = {4: [], 6: []}
    for u in updates:
        cidr = ipaddress.ip_network(u.pool.cidr)
        all_nets[cidr.version].append(cidr)
        if u.pool.nat_outgoing and not u.pool.disabled:
            masq[cidr.version].append(cidr)
    out: dict[NftKey, NftValue] = {}
    for fam in (4, 6):
        decl = SetDecl(f"ipv{fam}_addr", interval=True)
        out[set_key(names.pools_all(fam))] = NftSet(
            decl, frozenset(net_element(n) for n in without_subsumed(all_nets[fam])))
        out[set_key(names.pools_masq(fam))] = NftSet(
            decl, frozenset(net_element(n) for n in without_subsumed(masq[fam])))
    return out
