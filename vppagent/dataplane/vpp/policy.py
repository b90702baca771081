"""From the update stream to the policy keys of one interface.

An interface (a pod's, or one carrying a host endpoint) gets a program per
direction (``program.py``), rendered for the engine chosen at connect time:

- ``npol``: npol only (ICMP matched as well as npol's 5-tuple allows);
- ``hybrid``: npol for TCP, UDP and SCTP, the ACL plugin for the rest
  (exact ICMP type/code matching), same program;
- ``acl``: the ACL plugin only, IP sets expanded into prefixes.

The strict source check of a pod is part of its egress: the ACL plugin's
input list only admits the pod's addresses (and annotated prefixes), or,
without it, an npol policy first on rx denies other sources.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vppagent.dataplane.vpp.acl_render import direction_rules
from vppagent.dataplane.vpp.ipsets import set_members
from vppagent.dataplane.vpp.keys import (
    AclBindingKey, AclBindingValue, AclKey, AclRule, AclValue, IfaceRefValue, NpolIfaceKey, NpolSetKey,
    NpolSetValue,
)
from vppagent.dataplane.vpp.names import digest
from vppagent.dataplane.vpp.npol_render import plan_interface
from vppagent.dataplane.vpp.program import Program, host_program, workload_program
from vppagent.model.resources import Direction
from vppagent.model.state import DataplaneState
from vppagent.model.updates import HostEndpointInfo, PolicyID, WorkloadEndpointInfo

ACL_CHUNK = 1000
ENGINES = ("npol", "hybrid", "acl")


@dataclass
class Rendered:
    """One interface's keys, and what they were computed from (for invalidation)."""

    items: dict[Any, Any] = field(default_factory=dict)
    policies: set[PolicyID] = field(default_factory=set)
    profiles: set[str] = field(default_factory=set)
    acl_sets: set[str] = field(default_factory=set)     # sets expanded into ACL rules
    errors: list[str] = field(default_factory=list)


def _acl_keys(rules: list[AclRule]) -> list[tuple[AclKey, AclValue]]:
    out = []
    for i in range(0, len(rules), ACL_CHUNK):
        value = AclValue(tuple(rules[i:i + ACL_CHUNK]))
        out.append((AclKey(digest(repr(value))), value))
    return out


def _program_sets(*programs: Program) -> set[str]:
    return {sid for p in programs for seg in p.all_segments for e in seg.entries for sid in e.match.set_ids()}


def render(ifname: str, ref: IfaceRefValue, engine: str, state: DataplaneState,
           wep: WorkloadEndpointInfo | None, hep: HostEndpointInfo | None,
           failsafe_in: tuple[tuple[int, int, int], ...],
           failsafe_out: tuple[tuple[int, int, int], ...]) -> Rendered:
    out = Rendered()
    if ref.kind == "pod":
        egress = workload_program(state, wep, Direction.EGRESS)
        ingress = workload_program(state, wep, Direction.INGRESS)
        if wep is not None:
            out.policies = {PolicyID(t.name, p) for t in wep.tiers for p in t.ingress_policies + t.egress_policies}
            out.profiles = set(wep.profile_ids)
        guard = ref.allowed_sources
    else:
        if hep is None:
            return out                                   # no host endpoint here: no policy at all
        egress = host_program(state, hep, Direction.EGRESS, failsafe_out)
        ingress = host_program(state, hep, Direction.INGRESS, failsafe_in)
        tiers = hep.tiers + hep.untracked_tiers + hep.pre_dnat_tiers
        out.policies = {PolicyID(t.name, p) for t in tiers for p in t.ingress_policies + t.egress_policies}
        out.profiles = set(hep.profile_ids)
        guard = None
    invert = ref.facing == "uplink"
    if engine in ("npol", "hybrid"):
        plan = plan_interface(egress, ingress, hybrid=engine == "hybrid", ifname=ifname,
                              guard=guard if engine == "npol" else None)
        out.errors += plan.errors
        out.items.update(plan.policies)
        for sk in plan.sets():
            members = set_members(sk, state.ipsets)
            if members is not None:
                out.items[sk] = NpolSetValue(members)
        out.items[NpolIfaceKey(ifname)] = plan.iface(ref.sw_if_index, invert)
    if engine in ("hybrid", "acl"):
        def members(sid: str) -> frozenset[str]:
            entry = state.ipsets.get(sid)
            return entry[1] if entry else frozenset()
        hybrid = engine == "hybrid"
        first, second = (ingress, egress) if invert else (egress, ingress)
        inputs = _acl_keys(direction_rules(first, members, hybrid=hybrid,
                                           allowed_sources=guard if not invert else None))
        outputs = _acl_keys(direction_rules(second, members, hybrid=hybrid))
        out.items.update(inputs)
        out.items.update(outputs)
        out.items[AclBindingKey(ifname)] = AclBindingValue(ref.sw_if_index, tuple(k for k, _ in inputs),
                                                           tuple(k for k, _ in outputs))
        out.acl_sets = _program_sets(egress, ingress)
    return out


def derived_sets(items: dict[Any, Any]) -> set[NpolSetKey]:
    return {k for k in items if isinstance(k, NpolSetKey)}
