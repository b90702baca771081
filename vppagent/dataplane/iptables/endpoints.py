"""Endpoint chains and the dispatch chains that lead to them.

Workload endpoints: ``cali-tw-<iface>`` (to the workload: ingress policy) and
``cali-fw-<iface>`` (from the workload: egress policy), reached through
``cali-to-wl-dispatch``/``cali-from-wl-dispatch`` (unknown ``cali`` interface:
DROP). Host endpoints: ``cali-fh-<iface>`` (from the host endpoint: traffic
arriving, ingress) and ``cali-th-<iface>`` (to it: traffic leaving, egress),
with failsafe ports first so the node can never be locked out; untracked
tiers render into the raw table, preDNAT tiers into mangle.

Every endpoint chain walks the tiers the way the reference evaluator does:
per tier, clear the pass mark, jump to each policy while the pass mark is
clear and return as soon as the accept mark is set; at the end of a tier
that did not pass, DROP (unless the tier's default action is Pass); then the
profiles; then DROP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from vppagent.dataplane.iptables.config import PortSpec
from vppagent.dataplane.iptables.marks import Marks, hexmark
from vppagent.dataplane.iptables.match import proto_name
from vppagent.dataplane.iptables.model import ChainKey, Rules
from vppagent.dataplane.iptables.names import chain_name
from vppagent.dataplane.iptables.policy import policy_chain, policy_table, profile_chain
from vppagent.model.resources import TierDefault
from vppagent.model.updates import (
    HostEndpointInfo, PolicyID, ProfileUpdate, RenderedPolicy, TierInfo, WorkloadEndpointInfo,
)

WL_FROM_DISPATCH = "cali-from-wl-dispatch"
WL_TO_DISPATCH = "cali-to-wl-dispatch"
HEP_FROM_DISPATCH = "cali-from-host-endpoint"
HEP_TO_DISPATCH = "cali-to-host-endpoint"
FAILSAFE_IN = "cali-failsafe-in"
FAILSAFE_OUT = "cali-failsafe-out"
FLAT_DISPATCH_MAX = 16     # beyond this, dispatch splits by the next interface character

CT_ACCEPT = "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
CT_INVALID_DROP = "-m conntrack --ctstate INVALID -j DROP"


@dataclass(frozen=True)
class EndpointSettings:
    """The slice of configuration endpoint rendering depends on."""

    marks: Marks
    drop_invalid: bool = True
    failsafe_inbound: tuple[PortSpec, ...] = ()
    failsafe_outbound: tuple[PortSpec, ...] = ()
    interface_prefixes: tuple[str, ...] = ("cali",)


def wl_chain(inbound: bool, iface: str) -> str:
    return chain_name("cali-tw-" if inbound else "cali-fw-", iface)


def hep_ident(hep: HostEndpointInfo) -> str:
    iface = hep.interface_name
    return iface if iface and iface != "*" else f"hep.{hep.name}"


def hep_chain(inbound: bool, hep: HostEndpointInfo) -> str:
    return chain_name("cali-fh-" if inbound else "cali-th-", hep_ident(hep))


def tier_rules(tiers: Iterable[TierInfo], inbound: bool, policies: Mapping[PolicyID, RenderedPolicy],
               table: str, marks: Marks, on_accept: Sequence[str], end_of_tier: str) -> list[str]:
    """Jumps through the applicable tiers (see the module docstring)."""
    p = marks.pass_
    out: list[str] = []
    for tier in tiers:
        names = tier.ingress_policies if inbound else tier.egress_policies
        if not names:
            continue                    # the tier does not apply in this direction
        out.append(f"-j MARK --set-xmark {hexmark(0, p)}")
        for pkey in names:
            pid = PolicyID(tier.name, pkey)
            pol = policies.get(pid)
            if pol is None or policy_table(pol) != table:
                continue                # unknown here: like the evaluator, skip it
            out.append(f"-m mark --mark {hexmark(0, p)} -j {policy_chain(inbound, pid)}")
            out.extend(on_accept)
        if tier.default_action is not TierDefault.PASS:
            out.append(f"-m mark --mark {hexmark(0, p)} {end_of_tier}")
    return out


def profile_rules(profile_ids: Iterable[str], inbound: bool, profiles: Mapping[str, ProfileUpdate],
                  marks: Marks) -> list[str]:
    a, p = marks.accept, marks.pass_
    out: list[str] = []
    for pid in profile_ids:
        if pid not in profiles:
            continue
        out += [f"-j MARK --set-xmark {hexmark(0, p)}", f"-j {profile_chain(inbound, pid)}",
                f"-m mark --mark {hexmark(a, a)} -j RETURN"]
    return out


def _policy_chain_bodies(tiers: Sequence[TierInfo], profile_ids: Sequence[str], inbound: bool,
                         policies: Mapping[PolicyID, RenderedPolicy], profiles: Mapping[str, ProfileUpdate],
                         settings: EndpointSettings, head: Sequence[str]) -> list[str]:
    m = settings.marks
    bodies = [CT_ACCEPT]
    if settings.drop_invalid:
        bodies.append(CT_INVALID_DROP)
    bodies += head
    bodies.append(f"-j MARK --set-xmark {hexmark(0, m.policy_bits)}")
    bodies += tier_rules(tiers, inbound, policies, "filter", m,
                         [f"-m mark --mark {hexmark(m.accept, m.accept)} -j RETURN"], "-j DROP")
    bodies += profile_rules(profile_ids, inbound, profiles, m)
    bodies.append("-j DROP")
    return bodies


def workload_chains(ep: WorkloadEndpointInfo, family: int, policies: Mapping[PolicyID, RenderedPolicy],
                    profiles: Mapping[str, ProfileUpdate], settings: EndpointSettings) -> dict[ChainKey, Rules]:
    out: dict[ChainKey, Rules] = {}
    for inbound in (True, False):
        name = wl_chain(inbound, ep.interface_name)
        bodies = _policy_chain_bodies(ep.tiers, ep.profile_ids, inbound, policies, profiles, settings, ())
        out[ChainKey(family, "filter", name)] = Rules.render(name, bodies)
    return out


def failsafe_rules(specs: Iterable[PortSpec], target: str) -> list[str]:
    by_proto: dict[int, list[str]] = {}
    for s in sorted(set(specs)):
        by_proto.setdefault(s.protocol, []).append(str(s.first) if s.first == s.last else f"{s.first}:{s.last}")
    out = []
    for proto, ports in sorted(by_proto.items()):
        for i in range(0, len(ports), 7):   # ranges take two multiport slots
            out.append(f"-p {proto_name(proto)} -m multiport --dports {','.join(ports[i:i + 7])} -j {target}")
    return out


def failsafe_chains(family: int, settings: EndpointSettings) -> dict[ChainKey, Rules]:
    return {
        ChainKey(family, "filter", FAILSAFE_IN): Rules.render(FAILSAFE_IN, failsafe_rules(settings.failsafe_inbound, "ACCEPT")),
        ChainKey(family, "filter", FAILSAFE_OUT): Rules.render(FAILSAFE_OUT, failsafe_rules(settings.failsafe_outbound, "ACCEPT")),
    }


def host_chains(hep: HostEndpointInfo, family: int, policies: Mapping[PolicyID, RenderedPolicy],
                profiles: Mapping[str, ProfileUpdate], settings: EndpointSettings) -> dict[ChainKey, Rules]:
    m = settings.marks
    out: dict[ChainKey, Rules] = {}
    for inbound in (True, False):
        name = hep_chain(inbound, hep)
        head = [f"-j {FAILSAFE_IN if inbound else FAILSAFE_OUT}"]
        bodies = _policy_chain_bodies(hep.tiers, hep.profile_ids, inbound, policies, profiles, settings, head)
        out[ChainKey(family, "filter", name)] = Rules.render(name, bodies)
    clear = f"-j MARK --set-xmark {hexmark(0, m.policy_bits)}"
    accepted = f"-m mark --mark {hexmark(m.accept, m.accept)}"
    if hep.untracked_tiers:
        # Allowed: untrack and accept (filter accepts it by the mark); end of
        # tier: leave the raw table and let normal policy decide.
        for inbound in (True, False):
            name = hep_chain(inbound, hep)
            specs = settings.failsafe_inbound if inbound else settings.failsafe_outbound
            bodies = failsafe_rules(specs, "RETURN") + [clear] + tier_rules(
                hep.untracked_tiers, inbound, policies, "raw", m,
                [f"{accepted} -j CT --notrack", f"{accepted} -j ACCEPT"], "-j RETURN")
            out[ChainKey(family, "raw", name)] = Rules.render(name, bodies)
    if hep.pre_dnat_tiers:
        # Deny drops before DNAT; allow and end of tier hand over to normal policy.
        name = hep_chain(True, hep)
        bodies = ["-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"]
        bodies += failsafe_rules(settings.failsafe_inbound, "RETURN") + [clear] + tier_rules(
            hep.pre_dnat_tiers, True, policies, "mangle", m, [f"{accepted} -j RETURN"], "-j RETURN")
        out[ChainKey(family, "mangle", name)] = Rules.render(name, bodies)
    return out


def dispatch_chains(family: int, table: str, root: str, flag: str, targets: Mapping[str, str],
                    prefixes: Sequence[str], default: str | None) -> dict[ChainKey, Rules]:
    """``flag iface -g chain`` for every interface, as a shallow trie when there are many.

    ``default`` ends every level (DROP for unknown workload interfaces) or
    nothing (host endpoints: other interfaces are not policed).
    """
    tail = [f"-j {default}"] if default else []
    out: dict[ChainKey, Rules] = {}
    items = sorted(targets.items())
    if len(items) <= FLAT_DISPATCH_MAX:
        out[ChainKey(family, table, root)] = Rules.render(root, [f"{flag} {i} -g {c}" for i, c in items] + tail)
        return out
    groups: dict[str, list[tuple[str, str]]] = {}
    direct: list[str] = []
    longest_first = sorted(prefixes, key=len, reverse=True)
    for iface, chain in items:
        prefix = next((p for p in longest_first if iface.startswith(p) and len(iface) > len(p)), None)
        if prefix is None:
            direct.append(f"{flag} {iface} -g {chain}")
        else:
            groups.setdefault(iface[:len(prefix) + 1], []).append((iface, chain))
    root_bodies = list(direct)
    for group, members in sorted(groups.items()):
        # One prefix (the usual case): sub-chains named by the next character.
        sub = chain_name(root + "-", group[-1] if len(prefixes) == 1 else group)
        root_bodies.append(f"{flag} {group}+ -g {sub}")
        out[ChainKey(family, table, sub)] = Rules.render(sub, [f"{flag} {i} -g {c}" for i, c in members] + tail)
    out[ChainKey(family, table, root)] = Rules.render(root, root_bodies + tail)
    return out


def host_dispatch(family: int, table: str, heps: Sequence[HostEndpointInfo], inbound: bool,
                  prefixes: Sequence[str] = ()) -> dict[ChainKey, Rules]:
    """Host endpoints by interface; expected-IP-only ones by address; ``*`` last."""
    root = HEP_FROM_DISPATCH if inbound else HEP_TO_DISPATCH
    flag = "-i" if inbound else "-o"
    by_iface: dict[str, str] = {}
    extra: list[str] = []
    wildcard: list[str] = []
    for hep in heps:
        chain = hep_chain(inbound, hep)
        if hep.interface_name == "*":
            wildcard.append(f"-g {chain}")
        elif hep.interface_name:
            by_iface.setdefault(hep.interface_name, chain)
        else:
            addr_flag = "-d" if inbound else "-s"
            for ip in hep.expected_ips:
                if ip.version == family:
                    extra.append(f"{addr_flag} {ip} -g {chain}")
    out = dispatch_chains(family, table, root, flag, by_iface, prefixes, None)
    key = ChainKey(family, table, root)
    out[key] = Rules.render(root, out[key].bodies + tuple(extra) + tuple(wildcard[:1]))
    return out
