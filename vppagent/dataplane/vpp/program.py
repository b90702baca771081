"""An endpoint's policy for one direction as a decision program.

The program follows the reference evaluator step by step: host endpoint
failsafe ports, untracked and pre-DNAT tiers (host endpoints), the normal
tiers (a tier applies when it has policies in this direction; first matching
rule decides; Pass jumps to the next tier; end of tier denies unless the
tier's default is Pass), then the profiles (Pass skips to the next profile)
and finally deny.  Log rules have no effect on the verdict and are left out.

Jumps are explicit (``Goto``): each policy engine either has a native jump
(npol's PASS goes to the profiles) or compiles the jump away by intersecting
the jumping rule with everything it would reach.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from vppagent.dataplane.vpp.match import ANY, Match, from_rule, ports_match
from vppagent.model.resources import Action, Direction, TierDefault
from vppagent.model.state import DataplaneState
from vppagent.model.updates import (
    HostEndpointInfo, IPSetType, PolicyID, RenderedRule, TierInfo, WorkloadEndpointInfo,
)

ALLOW = "allow"
DENY = "deny"
PROFILES = "profiles"        # the label where the profiles start
END = "end"                  # after the profiles: deny


@dataclass(frozen=True)
class Goto:
    label: str


Verdict = str | Goto


@dataclass(frozen=True)
class Entry:
    match: Match
    action: Verdict


@dataclass(frozen=True)
class Segment:
    """Consecutive entries from one source (a policy, a profile, a tier end)."""

    ref: str
    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class Program:
    """``segments`` up to the profiles, then ``profiles``; ``labels`` maps a
    jump target to the index (in ``segments + profiles``) where it starts."""

    segments: tuple[Segment, ...]
    profiles: tuple[Segment, ...]
    labels: tuple[tuple[str, int], ...]

    def label_index(self, label: str) -> int:
        return dict(self.labels)[label]

    @property
    def all_segments(self) -> tuple[Segment, ...]:
        return self.segments + self.profiles


DENY_ALL = Segment("deny-all", (Entry(ANY, DENY),))


class _Builder:
    def __init__(self, set_type: Callable[[str], IPSetType]) -> None:
        self.set_type = set_type
        self.segments: list[Segment] = []
        self.labels: dict[str, int] = {}
        self._n = 0

    def label(self, name: str) -> None:
        self.labels.setdefault(name, len(self.segments))

    def fresh(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def add(self, seg: Segment) -> None:
        self.segments.append(seg)

    def entries(self, rules: Iterable[RenderedRule], on_pass: Verdict, on_allow: Verdict = ALLOW,
                on_deny: Verdict = DENY) -> tuple[Entry, ...]:
        out = []
        for rule in rules:
            if rule.action is Action.LOG:
                continue
            action = {Action.ALLOW: on_allow, Action.DENY: on_deny, Action.PASS: on_pass}[rule.action]
            m = from_rule(rule, self.set_type)
            if not m.impossible():
                out.append(Entry(m, action))
        return tuple(out)


def _policies(tier: TierInfo, direction: Direction) -> tuple[str, ...]:
    return tier.ingress_policies if direction is Direction.INGRESS else tier.egress_policies


def _rules(state: DataplaneState, tier: str, pkey: str, direction: Direction) -> tuple[RenderedRule, ...] | None:
    p = state.policies.get(PolicyID(tier, pkey))
    if p is None:
        return None
    return p.inbound_rules if direction is Direction.INGRESS else p.outbound_rules


def policy_ref(tier: str, pkey: str, direction: Direction) -> str:
    return f"policy:{tier}/{pkey}:{direction.value.lower()}"


def _tiers(b: _Builder, state: DataplaneState, tiers: Iterable[TierInfo], direction: Direction, stage: str,
           after: str) -> None:
    """Append one stage of tiers.  ``stage`` is normal | untracked | prednat; ``after`` is where
    the stage continues when it does not decide (or where Pass out of its last tier goes)."""
    applicable = [t for t in tiers if _policies(t, direction)]
    names = [b.fresh("tier") for _ in applicable]
    for k, tier in enumerate(applicable):
        b.label(names[k])
        nxt = names[k + 1] if k + 1 < len(applicable) else after
        on_allow: Verdict = Goto(after) if stage == "prednat" else ALLOW
        for pkey in _policies(tier, direction):
            rules = _rules(state, tier.name, pkey, direction)
            if rules is None:
                continue
            entries = b.entries(rules, on_pass=Goto(nxt), on_allow=on_allow)
            b.add(Segment(policy_ref(tier.name, pkey, direction), entries))
        if tier.default_action is TierDefault.PASS:
            continue                          # falls through to the next tier
        if stage == "normal":
            b.add(DENY_ALL)
        elif nxt != after:
            b.add(Segment("goto", (Entry(ANY, Goto(after)),)))   # end of tier: on to the next stage
    if stage != "normal":
        b.label(after)


def _profiles(b: _Builder, state: DataplaneState, profile_ids: Iterable[str],
              direction: Direction) -> list[Segment]:
    present = [p for p in profile_ids if p in state.profiles]
    out = []
    for i, pid in enumerate(present):
        b.labels.setdefault(f"profile{i}", len(b.segments) + len(out))
        prof = state.profiles[pid]
        rules = prof.inbound_rules if direction is Direction.INGRESS else prof.outbound_rules
        nxt = f"profile{i + 1}" if i + 1 < len(present) else END
        out.append(Segment(f"profile:{pid}", b.entries(rules, on_pass=Goto(nxt))))
    b.labels.setdefault(END, len(b.segments) + len(out))
    out.append(DENY_ALL)
    return out


def set_type_of(state: DataplaneState) -> Callable[[str], IPSetType]:
    def lookup(sid: str) -> IPSetType:
        entry = state.ipsets.get(sid)
        return entry[0] if entry else IPSetType.NET
    return lookup


def workload_program(state: DataplaneState, ep: WorkloadEndpointInfo | None, direction: Direction) -> Program:
    """A pod's program; without an endpoint (wired but not yet known) everything is denied."""
    b = _Builder(set_type_of(state))
    if ep is None:
        b.label(PROFILES)
        b.labels[END] = 0
        return Program((), (DENY_ALL,), tuple(b.labels.items()))
    _tiers(b, state, ep.tiers, direction, "normal", PROFILES)
    b.label(PROFILES)
    profiles = _profiles(b, state, ep.profile_ids, direction)
    return Program(tuple(b.segments), tuple(profiles), tuple(b.labels.items()))


def host_program(state: DataplaneState, ep: HostEndpointInfo, direction: Direction,
                 failsafe: tuple[tuple[int, int, int], ...]) -> Program:
    """A host endpoint's program: failsafe ports first, then the evaluator's stages."""
    b = _Builder(set_type_of(state))
    if failsafe:
        b.add(Segment(f"failsafe:{direction.value.lower()}",
                      tuple(Entry(ports_match(p, lo, hi), ALLOW) for p, lo, hi in failsafe)))
    if ep.untracked_tiers:
        _tiers(b, state, ep.untracked_tiers, direction, "untracked", "after-untracked")
    if ep.pre_dnat_tiers and direction is Direction.INGRESS:
        _tiers(b, state, ep.pre_dnat_tiers, direction, "prednat", "after-prednat")
    _tiers(b, state, ep.tiers, direction, "normal", PROFILES)
    b.label(PROFILES)
    profiles = _profiles(b, state, ep.profile_ids, direction)
    return Program(tuple(b.segments), tuple(profiles), tuple(b.labels.items()))

