"""One node's share of the cluster-wide update stream.

The sync layer calculates once for every node (``CalcGraph(None)``) and
then, per node, keeps only what that node's dataplane needs: its own
endpoints, the policies and profiles they name, the IP sets those rules
use, every service and pool, and the routes to *other* nodes' blocks.
Reference counts decide when something becomes needed (sent in full from
the global state) or stops being needed (removed), so a node sees the same
stream a calculation for that node alone would produce, in Felix's order:
IP sets, policies, profiles, other adds, endpoints; then endpoint removals,
other removals, profile, policy and IP set removals.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

from vppagent.model.state import DataplaneState
from vppagent.model.updates import (
    ConfigUpdate, HostEndpointInfo, HostEndpointRemove, HostEndpointUpdate, InSync, IPPoolRemove,
    IPPoolUpdate, IPSetDeltaUpdate, IPSetRemove, IPSetUpdate, PolicyID, PolicyRemove, PolicyUpdate,
    ProfileRemove, ProfileUpdate, RenderedRule, RouteRemove, RouteUpdate, ServiceRemove, ServiceUpdate,
    TierInfo, Update, WorkloadEndpointInfo, WorkloadEndpointRemove, WorkloadEndpointUpdate,
)

EndpointKey = tuple[str, str]          # ("wep" | "hep", id)


def _tier_policies(tiers: Iterable[TierInfo]) -> set[PolicyID]:
    return {PolicyID(t.name, p) for t in tiers for p in (*t.ingress_policies, *t.egress_policies)}


def endpoint_refs(info: WorkloadEndpointInfo | HostEndpointInfo) -> tuple[set[PolicyID], set[str]]:
    """Policies and profiles an endpoint names."""
    tiers: list[TierInfo] = list(info.tiers)
    if isinstance(info, HostEndpointInfo):
        tiers += [*info.untracked_tiers, *info.pre_dnat_tiers, *info.forward_tiers]
    return _tier_policies(tiers), set(info.profile_ids)


def rule_sets(rules: Iterable[RenderedRule]) -> frozenset[str]:
    return frozenset(s for r in rules for s in r.ip_set_ids())


class NodeView:
    """Translates cluster-wide batches into one node's batches.

    ``translate(batch, state)`` must be called with ``state`` already
    holding the batch (the sync layer folds first, then asks every view).
    """

    def __init__(self, node: str) -> None:
        self.node = node
        self._endpoints: dict[EndpointKey, tuple[set[PolicyID], set[str]]] = {}
        self._policy_refs: Counter[PolicyID] = Counter()
        self._profile_refs: Counter[str] = Counter()
        self._set_refs: Counter[str] = Counter()
        # The IP sets each policy/profile contributes to _set_refs, as the node last got it.
        self._policy_sets: dict[PolicyID, frozenset[str]] = {}
        self._profile_sets: dict[str, frozenset[str]] = {}
        self._routes: set[str] = set()
        self._sent_sets: set[str] = set()
        # Ids whose reference count moved in the batch being translated: only these are looked at,
        # so a change costs what it touches, not what the node holds.
        self._touched_policies: set[PolicyID] = set()
        self._touched_profiles: set[str] = set()
        self._touched_sets: set[str] = set()

    # ------------------------------------------------------------ references

    def _ref_endpoint(self, key: EndpointKey, info: WorkloadEndpointInfo | HostEndpointInfo | None) -> None:
        old = self._endpoints.pop(key, None)
        if old is not None:
            self._policy_refs.subtract(old[0])
            self._profile_refs.subtract(old[1])
            self._touched_policies.update(old[0])
            self._touched_profiles.update(old[1])
        if info is not None:
            refs = endpoint_refs(info)
            self._endpoints[key] = refs
            self._policy_refs.update(refs[0])
            self._profile_refs.update(refs[1])
            self._touched_policies.update(refs[0])
            self._touched_profiles.update(refs[1])

    def _set_contribution(self, table: dict, key: object, sets: frozenset[str] | None) -> None:
        old = table.pop(key, None)
        if old:
            self._set_refs.subtract(old)
            self._touched_sets.update(old)
        if sets is not None:
            table[key] = sets
            self._set_refs.update(sets)
            self._touched_sets.update(sets)

    @staticmethod
    def _prune(counter: Counter, keys: Iterable) -> None:
        for k in keys:
            if counter.get(k, 0) <= 0:
                counter.pop(k, None)

    # ------------------------------------------------------------ translation

    def translate(self, batch: Sequence[Update], state: DataplaneState) -> list[Update]:
        self._touched_policies, self._touched_profiles, self._touched_sets = set(), set(), set()
        changed_policies: set[PolicyID] = set()
        changed_profiles: set[str] = set()
        raw_sets: dict[str, list[Update]] = {}
        endpoint_adds: list[Update] = []
        endpoint_removes: list[Update] = []
        other_adds: list[Update] = []
        other_removes: list[Update] = []
        in_sync = False
        for u in batch:
            match u:
                case WorkloadEndpointUpdate(id=i, endpoint=e) | HostEndpointUpdate(id=i, endpoint=e):
                    key = ("wep" if isinstance(u, WorkloadEndpointUpdate) else "hep", i)
                    if e.node == self.node:
                        self._ref_endpoint(key, e)
                        endpoint_adds.append(u)
                    elif key in self._endpoints:          # moved to another node
                        self._ref_endpoint(key, None)
                        endpoint_removes.append(WorkloadEndpointRemove(i) if key[0] == "wep"
                                                else HostEndpointRemove(i))
                case WorkloadEndpointRemove(id=i) | HostEndpointRemove(id=i):
                    key = ("wep" if isinstance(u, WorkloadEndpointRemove) else "hep", i)
                    if key in self._endpoints:
                        self._ref_endpoint(key, None)
                        endpoint_removes.append(u)
                case PolicyUpdate(id=pid) | PolicyRemove(id=pid):
                    changed_policies.add(pid)
                case ProfileUpdate(id=name) | ProfileRemove(id=name):
                    changed_profiles.add(name)
                case IPSetUpdate(id=sid) | IPSetDeltaUpdate(id=sid) | IPSetRemove(id=sid):
                    raw_sets.setdefault(sid, []).append(u)
                case RouteUpdate(id=rid, route=r):
                    if r.node != self.node:
                        self._routes.add(rid)
                        other_adds.append(u)
                    elif rid in self._routes:             # the block moved to this node
                        self._routes.discard(rid)
                        other_removes.append(RouteRemove(rid))
                case RouteRemove(id=rid):
                    if rid in self._routes:
                        self._routes.discard(rid)
                        other_removes.append(u)
                case ServiceRemove() | IPPoolRemove():
                    other_removes.append(u)
                case ServiceUpdate() | IPPoolUpdate() | ConfigUpdate():
                    other_adds.append(u)
                case InSync():
                    in_sync = True
                case _:
                    raise TypeError(f"not an update: {u!r}")

        policy_adds: list[Update] = []
        policy_removes: list[Update] = []
        for pid in sorted(self._touched_policies | changed_policies, key=lambda p: (p.tier, p.name)):
            rendered = state.policies.get(pid) if self._policy_refs.get(pid, 0) > 0 else None
            if rendered is not None:
                if pid in changed_policies or pid not in self._policy_sets:
                    self._set_contribution(self._policy_sets, pid,
                                           rule_sets((*rendered.inbound_rules, *rendered.outbound_rules)))
                    policy_adds.append(PolicyUpdate(pid, rendered))
            elif pid in self._policy_sets:       # no longer needed here, or gone
                self._set_contribution(self._policy_sets, pid, None)
                policy_removes.append(PolicyRemove(pid))
        profile_adds: list[Update] = []
        profile_removes: list[Update] = []
        for name in sorted(self._touched_profiles | changed_profiles):
            prof = state.profiles.get(name) if self._profile_refs.get(name, 0) > 0 else None
            if prof is not None:
                if name in changed_profiles or name not in self._profile_sets:
                    self._set_contribution(self._profile_sets, name,
                                           rule_sets((*prof.inbound_rules, *prof.outbound_rules)))
                    profile_adds.append(prof)
            elif name in self._profile_sets:
                self._set_contribution(self._profile_sets, name, None)
                profile_removes.append(ProfileRemove(name))
        set_adds: list[Update] = []
        set_removes: list[Update] = []
        for sid in sorted(self._touched_sets | raw_sets.keys()):
            current = state.ipsets.get(sid) if self._set_refs.get(sid, 0) > 0 else None
            if current is not None:
                raw = raw_sets.get(sid)
                if sid not in self._sent_sets or (raw and any(isinstance(r, IPSetRemove) for r in raw)):
                    set_adds.append(IPSetUpdate(sid, current[0], current[1]))
                    self._sent_sets.add(sid)
                elif raw:
                    set_adds.extend(raw)
            elif sid in self._sent_sets:
                self._sent_sets.discard(sid)
                set_removes.append(IPSetRemove(sid))
        self._prune(self._policy_refs, self._touched_policies)
        self._prune(self._profile_refs, self._touched_profiles)
        self._prune(self._set_refs, self._touched_sets)
        out = set_adds + policy_adds + profile_adds + other_adds + endpoint_adds
        out += endpoint_removes + other_removes + profile_removes + policy_removes + set_removes
        if in_sync:
            out.append(InSync())
        return out

    def initial(self, state: DataplaneState) -> list[Update]:
        """Everything this node needs from the current cluster-wide state."""
        batch = list(state.snapshot())
        if state.in_sync:
            batch.append(InSync())
        return self.translate(batch, state)

    def counts(self) -> dict[str, int]:
        return {
            "endpoints": len(self._endpoints), "policies": len(self._policy_sets),
            "profiles": len(self._profile_sets), "ipsets": len(self._sent_sets),
            "routes": len(self._routes),
        }
