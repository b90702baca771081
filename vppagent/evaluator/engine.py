"""The reference evaluator: Calico's policy semantics in plain Python.

It interprets exactly what dataplanes receive (the folded update stream), so
a dataplane test can compare real packets with ``evaluate``'s verdict, and
``vppagent eval`` explains which tier, policy and rule decided.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterable

from vppagent.evaluator.packet import Packet
from vppagent.model.resources import Action, Direction, IPAddress, PortRange, TierDefault
from vppagent.model.state import DataplaneState
from vppagent.model.updates import (
    HostEndpointInfo, IPSetType, PolicyID, RenderedRule, TierInfo, WorkloadEndpointInfo,
)

# Calico's default failsafe ports: (protocol, first, last).
FAILSAFE_INBOUND: tuple[tuple[int, int, int], ...] = (
    (6, 22, 22), (17, 68, 68), (6, 179, 179), (6, 2379, 2380), (6, 6443, 6443),
)
FAILSAFE_OUTBOUND: tuple[tuple[int, int, int], ...] = (
    (17, 53, 53), (17, 67, 67), (6, 179, 179), (6, 2379, 2380), (6, 6443, 6443),
)


@dataclass(frozen=True)
class Step:
    """One thing that happened while evaluating (a Log rule, a Pass, a tier end)."""

    what: str
    tier: str = ""
    policy: str = ""
    rule: int | None = None


@dataclass(frozen=True)
class DirectionVerdict:
    verdict: str                  # "allow" | "deny"
    kind: str                     # rule | end-of-tier | profile | no-profile | failsafe | no-endpoint
    endpoint: str = ""
    tier: str = ""
    policy: str = ""
    rule: int | None = None
    action: str = ""
    steps: tuple[Step, ...] = ()

    @property
    def decided_by(self) -> str:
        if self.kind in ("rule", "end-of-tier"):
            return f"{self.tier}/{self.policy}"
        if self.kind == "profile":
            return f"profile/{self.policy}"
        return self.kind

    def to_json(self) -> dict:
        return {
            "verdict": self.verdict, "kind": self.kind, "decided_by": self.decided_by,
            "endpoint": self.endpoint, "tier": self.tier or None, "policy": self.policy or None,
            "rule": self.rule, "action": self.action or None,
            "steps": [s.__dict__ for s in self.steps],
        }

    def explain(self) -> str:
        who = self.endpoint or "not an endpoint"
        if self.kind == "rule":
            why = f"rule {self.rule} ({self.action}) of policy {self.policy} in tier {self.tier}"
        elif self.kind == "end-of-tier":
            why = f"end of tier {self.tier}: no policy rule matched (last policy {self.policy})"
        elif self.kind == "profile":
            why = f"profile {self.policy}" + (f" rule {self.rule} ({self.action})" if self.rule is not None else "")
        elif self.kind == "no-profile":
            why = "no policy applied and no profile allowed it"
        elif self.kind == "failsafe":
            why = "host endpoint failsafe port"
        else:
            why = "no policy: the address is not an endpoint"
        return f"{self.verdict.upper()} [{who}] by {why}"


@dataclass(frozen=True)
class Verdict:
    packet: Packet
    egress: DirectionVerdict
    ingress: DirectionVerdict

    @property
    def verdict(self) -> str:
        return "allow" if self.egress.verdict == "allow" and self.ingress.verdict == "allow" else "deny"

    @property
    def deciding(self) -> DirectionVerdict:
        """The direction that settled the overall verdict."""
        return self.egress if self.egress.verdict == "deny" else self.ingress

    def to_json(self) -> dict:
        return {
            "verdict": self.verdict,
            "packet": self.packet.describe(),
            "decided_by": self.deciding.decided_by,
            "egress": self.egress.to_json(),
            "ingress": self.ingress.to_json(),
        }

    def explain(self) -> str:
        lines = [f"{self.packet.describe()}: {self.verdict.upper()}",
                 f"  egress:  {self.egress.explain()}",
                 f"  ingress: {self.ingress.explain()}"]
        for label, d in (("egress", self.egress), ("ingress", self.ingress)):
            for s in d.steps:
                lines.append(f"    {label} {s.what}: tier {s.tier} policy {s.policy}"
                             + (f" rule {s.rule}" if s.rule is not None else ""))
        return "\n".join(lines)


class _Undecided(Exception):
    pass


@dataclass
class Evaluator:
    """Evaluates packets against a folded update stream."""

    state: DataplaneState
    failsafe_inbound: tuple[tuple[int, int, int], ...] = FAILSAFE_INBOUND
    failsafe_outbound: tuple[tuple[int, int, int], ...] = FAILSAFE_OUTBOUND
    _nets: dict[str, list] = field(default_factory=dict, init=False)

    # -- lookups ---------------------------------------------------------------

    def workload_by_ip(self, ip: IPAddress) -> tuple[str, WorkloadEndpointInfo] | None:
        for key, ep in sorted(self.state.workload_endpoints.items()):
            if any(ip in n for n in ep.nets):
                return key, ep
        return None

    def host_by_ip(self, ip: IPAddress) -> tuple[str, HostEndpointInfo] | None:
        for key, ep in sorted(self.state.host_endpoints.items()):
            if ip in ep.expected_ips:
                return key, ep
        return None

    def workload_by_name(self, namespace: str, pod: str) -> WorkloadEndpointInfo | None:
        for _, ep in sorted(self.state.workload_endpoints.items()):
            if ep.namespace == namespace and ep.pod == pod:
                return ep
        return None

    def _in_set(self, set_id: str, ip: IPAddress, proto: int, port: int | None) -> bool:
        entry = self.state.ipsets.get(set_id)
        if entry is None:
            return False
        kind, members = entry
        if kind is IPSetType.IP_AND_PORT:
            return port is not None and f"{ip},{proto}:{port}" in members
        nets = self._nets.get(set_id)
        if nets is None or len(nets) != len(members):
            nets = [ipaddress.ip_network(m, strict=False) for m in members]
            self._nets[set_id] = nets
        return any(ip.version == n.version and ip in n for n in nets)

    # -- rule matching -----------------------------------------------------------

    def rule_matches(self, rule: RenderedRule, pkt: Packet) -> bool:
        if rule.ip_version is not None and rule.ip_version != pkt.version:
            return False
        if rule.protocol is not None and rule.protocol != pkt.protocol:
            return False
        if rule.not_protocol is not None and rule.not_protocol == pkt.protocol:
            return False
        if not self._side(pkt, pkt.src, pkt.src_port, rule.src_nets, rule.not_src_nets, rule.src_ports,
                          rule.not_src_ports, rule.src_named_port_ip_set_ids,
                          rule.not_src_named_port_ip_set_ids, rule.src_ip_set_ids, rule.not_src_ip_set_ids):
            return False
        if not self._side(pkt, pkt.dst, pkt.dst_port, rule.dst_nets, rule.not_dst_nets, rule.dst_ports,
                          rule.not_dst_ports, rule.dst_named_port_ip_set_ids,
                          rule.not_dst_named_port_ip_set_ids, rule.dst_ip_set_ids, rule.not_dst_ip_set_ids):
            return False
        if rule.icmp_type is not None:
            if pkt.icmp_type != rule.icmp_type:
                return False
            if rule.icmp_code is not None and pkt.icmp_code != rule.icmp_code:
                return False
        if rule.not_icmp_type is not None and pkt.icmp_type == rule.not_icmp_type:
            if rule.not_icmp_code is None or pkt.icmp_code == rule.not_icmp_code:
                return False
        return True

    def _side(self, pkt: Packet, ip: IPAddress, port: int | None, nets: tuple, not_nets: tuple,
              ports: tuple[PortRange, ...], not_ports: tuple[PortRange, ...], named: tuple[str, ...],
              not_named: tuple[str, ...], sets: tuple[str, ...], not_sets: tuple[str, ...]) -> bool:
        if nets and not any(ip.version == n.version and ip in n for n in nets):
            return False
        if any(ip.version == n.version and ip in n for n in not_nets):
            return False
        if ports or named:
            if port is None:
                return False
            if not (any(port in r for r in ports)
                    or any(self._in_set(s, ip, pkt.protocol, port) for s in named)):
                return False
        if port is not None and (any(port in r for r in not_ports)
                                 or any(self._in_set(s, ip, pkt.protocol, port) for s in not_named)):
            return False
        for s in sets:
            if not self._in_set(s, ip, pkt.protocol, port):
                return False
        return not any(self._in_set(s, ip, pkt.protocol, port) for s in not_sets)

    # -- policy evaluation -------------------------------------------------------

    def _tiers(self, tiers: Iterable[TierInfo], direction: Direction, pkt: Packet,
               steps: list[Step], endpoint: str) -> DirectionVerdict | None:
        """Walk the tiers; None means every applicable tier passed (or none applied)."""
        for tier in tiers:
            policies = tier.ingress_policies if direction is Direction.INGRESS else tier.egress_policies
            if not policies:
                continue
            passed = False
            for pkey in policies:
                rendered = self.state.policies.get(PolicyID(tier.name, pkey))
                if rendered is None:
                    continue
                rules = rendered.inbound_rules if direction is Direction.INGRESS else rendered.outbound_rules
                for index, rule in enumerate(rules):
                    if not self.rule_matches(rule, pkt):
                        continue
                    if rule.action is Action.LOG:
                        steps.append(Step("log", tier.name, pkey, rule.origin.index))
                        continue
                    if rule.action is Action.PASS:
                        steps.append(Step("pass", tier.name, pkey, rule.origin.index))
                        passed = True
                        break
                    return DirectionVerdict(
                        "allow" if rule.action is Action.ALLOW else "deny", "rule", endpoint,
                        tier.name, pkey, rule.origin.index, rule.action.value, tuple(steps))
                if passed:
                    break
            if passed:
                continue
            if tier.default_action is TierDefault.PASS:
                steps.append(Step("tier default pass", tier.name, policies[-1]))
                continue
            return DirectionVerdict("deny", "end-of-tier", endpoint, tier.name, policies[-1],
                                    None, "Deny", tuple(steps))
        return None

    def _profiles(self, profile_ids: Iterable[str], direction: Direction, pkt: Packet,
                  steps: list[Step], endpoint: str) -> DirectionVerdict:
        for pid in profile_ids:
            prof = self.state.profiles.get(pid)
            if prof is None:
                continue
            rules = prof.inbound_rules if direction is Direction.INGRESS else prof.outbound_rules
            for rule in rules:
                if not self.rule_matches(rule, pkt):
                    continue
                if rule.action is Action.LOG:
                    steps.append(Step("log", "profile", pid, rule.origin.index))
                    continue
                if rule.action is Action.PASS:
                    break
                return DirectionVerdict("allow" if rule.action is Action.ALLOW else "deny", "profile",
                                        endpoint, "", pid, rule.origin.index, rule.action.value, tuple(steps))
        return DirectionVerdict("deny", "no-profile", endpoint, steps=tuple(steps))

    def _failsafe(self, pkt: Packet, table: tuple[tuple[int, int, int], ...], port: int | None) -> bool:
        return port is not None and any(pkt.protocol == p and lo <= port <= hi for p, lo, hi in table)

    def direction(self, ip: IPAddress, direction: Direction, pkt: Packet) -> DirectionVerdict:
        """The verdict of ``direction`` at the endpoint that owns ``ip``."""
        steps: list[Step] = []
        wep = self.workload_by_ip(ip)
        if wep is not None:
            key, ep = wep
            name = f"{ep.namespace}/{ep.pod}"
            verdict = self._tiers(ep.tiers, direction, pkt, steps, name)
            return verdict or self._profiles(ep.profile_ids, direction, pkt, steps, name)
        hep = self.host_by_ip(ip)
        if hep is not None:
            key, hp = hep
            name = f"host/{hp.name}"
            if direction is Direction.INGRESS and self._failsafe(pkt, self.failsafe_inbound, pkt.dst_port):
                return DirectionVerdict("allow", "failsafe", name)
            if direction is Direction.EGRESS and self._failsafe(pkt, self.failsafe_outbound, pkt.dst_port):
                return DirectionVerdict("allow", "failsafe", name)
            for tiers in (hp.untracked_tiers, hp.pre_dnat_tiers if direction is Direction.INGRESS else ()):
                verdict = self._tiers(tiers, direction, pkt, steps, name)
                if verdict is not None and (verdict.verdict == "deny" or tiers is hp.untracked_tiers):
                    if verdict.kind != "end-of-tier":
                        return verdict
            verdict = self._tiers(hp.tiers, direction, pkt, steps, name)
            return verdict or self._profiles(hp.profile_ids, direction, pkt, steps, name)
        return DirectionVerdict("allow", "no-endpoint")

    def evaluate(self, pkt: Packet) -> Verdict:
        return Verdict(pkt, self.direction(pkt.src, Direction.EGRESS, pkt),
                       self.direction(pkt.dst, Direction.INGRESS, pkt))
