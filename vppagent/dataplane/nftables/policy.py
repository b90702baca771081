"""Policy, profile and endpoint chains: Calico's evaluation order in nft.

Felix's structure with mark bits: an endpoint chain clears the verdict bits,
then per tier jumps to each policy chain while the pass bit is clear and
returns as soon as the accept bit is set; a tier that applies and passes
nothing drops (unless its default is Pass); after the tiers come the
profiles, then a final drop. A policy chain's Allow sets accept and returns,
Pass sets pass and returns, Deny drops, Log logs and goes on.

Endpoint chains only reference policies and profiles that exist (the
reference evaluator skips unknown ones), so callers re-render an endpoint
when one of its policies appears or disappears.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

from vppagent.dataplane.nftables import names
from vppagent.dataplane.nftables.config import Failsafe, NftablesConfig
from vppagent.dataplane.nftables.match import SetTypes, rule_alternatives
from vppagent.dataplane.nftables.objects import Chain, Element, NftKey, NftValue, chain_key, elem_key
from vppagent.model.resources import Action, TierDefault
from vppagent.model.updates import (
    HostEndpointInfo, PolicyID, RenderedPolicy, RenderedRule, TierInfo, WorkloadEndpointInfo,
)

Known = Callable[[str], bool]          # "policy:<tier>/<name>" or "profile:<id>" → exists?


def hexmark(value: int) -> str:
    return f"0x{value & 0xFFFFFFFF:08x}"


def policy_ref(pid: PolicyID) -> str:
    return f"policy:{pid}"


def profile_ref(profile_id: str) -> str:
    return f"profile:{profile_id}"


class PolicyRenderer:
    """Pure rendering; holds only configuration."""

    def __init__(self, config: NftablesConfig) -> None:
        self.config = config
        m = config.marks
        self.A, self.P, self.U = m.accept, m.pass_, m.untracked
        self.clear = f"meta mark set meta mark & {hexmark(~m.verdict_bits)}"
        self.log = f'log prefix "{config.log_prefix}: "'

    # -- mark helpers -------------------------------------------------------------------

    def is_set(self, bits: int) -> str:
        return f"meta mark & {hexmark(bits)} == {hexmark(bits)}"

    def is_clear(self, bits: int) -> str:
        return f"meta mark & {hexmark(bits)} == 0"

    def set_bits(self, bits: int) -> str:
        return f"meta mark set meta mark | {hexmark(bits)}"

    # -- policies and profiles -----------------------------------------------------------

    def _verdict(self, action: Action, *, profile: bool, untracked: bool) -> str:
        if action is Action.ALLOW:
            if untracked:
                return f"counter {self.set_bits(self.A | self.U)} notrack return"
            return f"counter {self.set_bits(self.A)} return"
        if action is Action.DENY:
            return "counter drop"
        if action is Action.PASS:
            return "counter return" if profile else f"counter {self.set_bits(self.P)} return"
        return f"counter {self.log}"

    def rule_chain(self, rules: Sequence[RenderedRule], set_type: SetTypes, *,
                   profile: bool = False, untracked: bool = False) -> Chain:
        lines: list[str] = []
        refs: set[NftKey] = set()
        for rule in rules:
            verdict = self._verdict(rule.action, profile=profile, untracked=untracked)
            for alt in rule_alternatives(rule, set_type):
                lines.append(f"{alt.text} {verdict}".strip())
                refs |= alt.refs
        return Chain(tuple(lines), refs=frozenset(refs))

    def policy(self, pid: PolicyID, policy: RenderedPolicy, set_type: SetTypes) -> dict[NftKey, NftValue]:
        untracked = policy.untracked
        return {
            chain_key(names.policy_chain(pid, True)):
                self.rule_chain(policy.inbound_rules, set_type, untracked=untracked),
            chain_key(names.policy_chain(pid, False)):
                self.rule_chain(policy.outbound_rules, set_type, untracked=untracked),
        }

    def profile(self, profile_id: str, inbound: Sequence[RenderedRule], outbound: Sequence[RenderedRule],
                set_type: SetTypes) -> dict[NftKey, NftValue]:
        return {
            chain_key(names.profile_chain(profile_id, True)): self.rule_chain(inbound, set_type, profile=True),
            chain_key(names.profile_chain(profile_id, False)): self.rule_chain(outbound, set_type, profile=True),
        }

    # -- endpoint chain building blocks -------------------------------------------------------

    def _tiers(self, tiers: Iterable[TierInfo], inbound: bool, known: Known, end_of_tier: str,
               lines: list[str], refs: set[NftKey]) -> None:
        first = True
        for tier in tiers:
            policies = tier.ingress_policies if inbound else tier.egress_policies
            if not policies:
                continue      # the tier does not apply in this direction
            if not first:     # only a Pass can be left over from the tier before
                lines.append(f"meta mark set meta mark & {hexmark(~self.P)}")
            first = False
            for pol in policies:
                pid = PolicyID(tier.name, pol)
                if not known(policy_ref(pid)):
                    continue
                chain = names.policy_chain(pid, inbound)
                refs.add(chain_key(chain))
                lines.append(f"{self.is_clear(self.P)} jump {chain}")
                lines.append(f"{self.is_set(self.A)} return")
            if tier.default_action is TierDefault.DENY:
                lines.append(f"{self.is_clear(self.P)} {end_of_tier}")

    def _profiles(self, profile_ids: Iterable[str], inbound: bool, known: Known,
                  lines: list[str], refs: set[NftKey]) -> None:
        for pid in profile_ids:
            if not known(profile_ref(pid)):
                continue
            chain = names.profile_chain(pid, inbound)
            refs.add(chain_key(chain))
            lines.append(f"jump {chain}")
            lines.append(f"{self.is_set(self.A)} return")

    def _conntrack(self, established: str) -> list[str]:
        # Stray ICMP errors (no connection to relate to) are left to policy rather
        # than dropped as invalid, so ICMP type rules behave as written.
        return [f"ct state established,related {established}",
                "ct state invalid meta l4proto != { 1, 58 } counter drop"]

    def _failsafe(self, table: Failsafe, verdict: str) -> list[str]:
        by_proto: dict[int, list[str]] = {}
        for proto, lo, hi in table:
            by_proto.setdefault(proto, []).append(str(lo) if lo == hi else f"{lo}-{hi}")
        return [f"meta l4proto {proto} th dport {{ {', '.join(ports)} }} {verdict}"
                for proto, ports in sorted(by_proto.items())]

    def _endpoint_chain(self, tiers: Sequence[TierInfo], profile_ids: Sequence[str], inbound: bool,
                        known: Known, head: list[str]) -> Chain:
        lines = list(head)
        refs: set[NftKey] = set()
        lines.append(self.clear)
        self._tiers(tiers, inbound, known, "counter drop", lines, refs)
        self._profiles(profile_ids, inbound, known, lines, refs)
        lines.append("counter drop")
        return Chain(tuple(lines), refs=frozenset(refs))

    # -- endpoints ----------------------------------------------------------------------------

    def workload(self, info: WorkloadEndpointInfo, known: Known) -> dict[NftKey, NftValue]:
        """tw- (ingress) and fw- (egress) chains plus their dispatch elements."""
        iface = info.interface_name
        out: dict[NftKey, NftValue] = {}
        for inbound, map_name in ((True, names.WL_TO), (False, names.WL_FROM)):
            chain = names.workload_chain(iface, inbound)
            out[chain_key(chain)] = self._endpoint_chain(info.tiers, info.profile_ids, inbound, known,
                                                         self._conntrack("accept"))
            out[elem_key(map_name, f'"{iface}"')] = Element(f"jump {chain}")
        return out

    def host(self, info: HostEndpointInfo, known: Known) -> dict[NftKey, NftValue]:
        """Filter (with failsafe), untracked, preDNAT and forward chains of a host endpoint."""
        iface = info.interface_name
        cfg = self.config
        out: dict[NftKey, NftValue] = {}

        def add(kind: str, map_name: str, chain: Chain) -> None:
            name = names.host_chain(kind, iface)
            out[chain_key(name)] = chain
            out[elem_key(map_name, f'"{iface}"')] = Element(f"jump {name}")

        for inbound, kind, map_name, failsafe in ((True, "hi", names.HEP_IN, cfg.failsafe_inbound),
                                                  (False, "ho", names.HEP_OUT, cfg.failsafe_outbound)):
            head = self._conntrack("accept") + self._failsafe(failsafe, f"{self.set_bits(self.A)} return")
            add(kind, map_name, self._endpoint_chain(info.tiers, info.profile_ids, inbound, known, head))

        # Untracked and preDNAT policy decide only on a matching rule; an unmatched
        # tier ends that stage without a verdict (the reference evaluator's rule).
        for inbound, kind, map_name, failsafe in ((True, "hui", names.HEP_RAW_IN, cfg.failsafe_inbound),
                                                  (False, "huo", names.HEP_RAW_OUT, cfg.failsafe_outbound)):
            if any(t.ingress_policies if inbound else t.egress_policies for t in info.untracked_tiers):
                lines = self._failsafe(failsafe, "return") + [self.clear]
                refs: set[NftKey] = set()
                self._tiers(info.untracked_tiers, inbound, known, "return", lines, refs)
                add(kind, map_name, Chain(tuple(lines), refs=frozenset(refs)))
        if any(t.ingress_policies for t in info.pre_dnat_tiers):
            lines = ["ct state established,related return",
                     *self._failsafe(cfg.failsafe_inbound, "return"), self.clear]
            refs = set()
            self._tiers(info.pre_dnat_tiers, True, known, "return", lines, refs)
            add("hp", names.HEP_PRE, Chain(tuple(lines), refs=frozenset(refs)))
        for inbound, kind, map_name in ((True, "hfi", names.HEP_FWD_IN), (False, "hfo", names.HEP_FWD_OUT)):
            if any(t.ingress_policies if inbound else t.egress_policies for t in info.forward_tiers):
                add(kind, map_name, self._endpoint_chain(info.forward_tiers, (), inbound, known,
                                                         self._conntrack("accept")))
        return out


def endpoint_refs(tiers: Iterable[TierInfo], profile_ids: Iterable[str]) -> frozenset[str]:
    """Every policy/profile an endpoint names, known or not (for re-rendering)."""
    refs = {profile_ref(p) for p in profile_ids}
    for t in tiers:
        for pol in t.ingress_policies + t.egress_policies:
            refs.add(policy_ref(PolicyID(t.name, pol)))
    return frozenset(refs)


def host_refs(info: HostEndpointInfo) -> frozenset[str]:
    tiers = info.tiers + info.untracked_tiers + info.pre_dnat_tiers + info.forward_tiers
    return endpoint_refs(tiers, info.profile_ids)
