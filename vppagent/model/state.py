"""Folding a stream of updates into the current dataplane-neutral state.

Every consumer of the update stream (dataplanes, the reference evaluator, the
gRPC Sync server's snapshots) needs the same fold; keeping it here means they
agree on what a delta or a removal means.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

from vppagent.model.updates import (
    ConfigUpdate, HostEndpointInfo, HostEndpointRemove, HostEndpointUpdate, InSync, IPPoolRemove,
    IPPoolUpdate, RouteRemove, RouteUpdate, IPSetDeltaUpdate, IPSetRemove, IPSetType, IPSetUpdate, PolicyID, PolicyRemove,
    PolicyUpdate, ProfileRemove, ProfileUpdate, RenderedPolicy, ServiceRemove, ServiceUpdate, Update,
    WorkloadEndpointInfo, WorkloadEndpointRemove, WorkloadEndpointUpdate,
)


class UnknownIPSetError(KeyError):
    """A delta arrived for an IP set that was never created."""


@dataclass
class DataplaneState:
    """The latest value of every key the update stream has named."""

    ipsets: dict[str, tuple[IPSetType, frozenset[str]]] = field(default_factory=dict)
    policies: dict[PolicyID, RenderedPolicy] = field(default_factory=dict)
    profiles: dict[str, ProfileUpdate] = field(default_factory=dict)
    workload_endpoints: dict[str, WorkloadEndpointInfo] = field(default_factory=dict)
    host_endpoints: dict[str, HostEndpointInfo] = field(default_factory=dict)
    services: dict[str, ServiceUpdate] = field(default_factory=dict)
    pools: dict[str, IPPoolUpdate] = field(default_factory=dict)
    routes: dict[str, RouteUpdate] = field(default_factory=dict)
    config: dict[str, str] = field(default_factory=dict)
    in_sync: bool = False

    def apply(self, update: Update) -> None:
        """Fold one update into the state."""
        match update:
            case IPSetUpdate(id=i, type=t, members=m):
                self.ipsets[i] = (t, m)
            case IPSetDeltaUpdate(id=i, added=a, removed=r):
                if i not in self.ipsets:
                    raise UnknownIPSetError(i)
                t, m = self.ipsets[i]
                self.ipsets[i] = (t, (m - r) | a)
            case IPSetRemove(id=i):
                self.ipsets.pop(i, None)
            case PolicyUpdate(id=i, policy=p):
                self.policies[i] = p
            case PolicyRemove(id=i):
                self.policies.pop(i, None)
            case ProfileUpdate(id=i):
                self.profiles[i] = update
            case ProfileRemove(id=i):
                self.profiles.pop(i, None)
            case WorkloadEndpointUpdate(id=i, endpoint=e):
                self.workload_endpoints[i] = e
            case WorkloadEndpointRemove(id=i):
                self.workload_endpoints.pop(i, None)
            case HostEndpointUpdate(id=i, endpoint=e):
                self.host_endpoints[i] = e
            case HostEndpointRemove(id=i):
                self.host_endpoints.pop(i, None)
            case ServiceUpdate(id=i):
                self.services[i] = update
            case ServiceRemove(id=i):
                self.services.pop(i, None)
            case IPPoolUpdate(id=i):
                self.pools[i] = update
            case IPPoolRemove(id=i):
                self.pools.pop(i, None)
            case RouteUpdate(id=i):
                self.routes[i] = update
            case RouteRemove(id=i):
                self.routes.pop(i, None)
            case ConfigUpdate(config=c):
                self.config = dict(c)
            case InSync():
                self.in_sync = True
            case _:
                raise TypeError(f"not an update: {update!r}")

    def apply_all(self, updates: Iterable[Update]) -> None:
        for update in updates:
            self.apply(update)

    def snapshot(self) -> Iterator[Update]:
        """The whole state as updates in Felix's add order (no InSync)."""
        if self.config:
            yield ConfigUpdate(tuple(sorted(self.config.items())))
        for i, (t, m) in sorted(self.ipsets.items()):
            yield IPSetUpdate(i, t, m)
        for pid, p in sorted(self.policies.items(), key=lambda kv: (kv[0].tier, kv[0].name)):
            yield PolicyUpdate(pid, p)
        for _, prof in sorted(self.profiles.items()):
            yield prof
        for _, pool in sorted(self.pools.items()):
            yield pool
        for _, route in sorted(self.routes.items()):
            yield route
        for _, svc in sorted(self.services.items()):
            yield svc
        for i, wep in sorted(self.workload_endpoints.items()):
            yield WorkloadEndpointUpdate(i, wep)
        for i, hep in sorted(self.host_endpoints.items()):
            yield HostEndpointUpdate(i, hep)

    def counts(self) -> dict[str, int]:
        return {
            "ipsets": len(self.ipsets),
            "policies": len(self.policies),
            "profiles": len(self.profiles),
            "workload_endpoints": len(self.workload_endpoints),
            "host_endpoints": len(self.host_endpoints),
            "services": len(self.services),
            "pools": len(self.pools),
            "routes": len(self.routes),
        }


def diff_states(old: DataplaneState, new: DataplaneState) -> list[Update]:
    """Updates that turn ``old`` into ``new``, in Felix's order.

    What a client does with a fresh snapshot after a reconnect: only the
    difference reaches its dataplane, so a sync-layer restart never flushes
    anything that did not change.
    """
    adds: list[Update] = []
    if new.config != old.config:
        adds.append(ConfigUpdate(tuple(sorted(new.config.items()))))
    for sid, (t, members) in sorted(new.ipsets.items()):
        before = old.ipsets.get(sid)
        if before is None or before[0] != t:
            adds.append(IPSetUpdate(sid, t, members))
        elif before[1] != members:
            adds.append(IPSetDeltaUpdate(sid, members - before[1], before[1] - members))
    for pid, pol in sorted(new.policies.items(), key=lambda kv: (kv[0].tier, kv[0].name)):
        if old.policies.get(pid) != pol:
            adds.append(PolicyUpdate(pid, pol))
    adds += [p for i, p in sorted(new.profiles.items()) if old.profiles.get(i) != p]
    adds += [p for i, p in sorted(new.pools.items()) if old.pools.get(i) != p]
    adds += [r for i, r in sorted(new.routes.items()) if old.routes.get(i) != r]
    adds += [s for i, s in sorted(new.services.items()) if old.services.get(i) != s]
    adds += [WorkloadEndpointUpdate(i, e) for i, e in sorted(new.workload_endpoints.items())
             if old.workload_endpoints.get(i) != e]
    adds += [HostEndpointUpdate(i, e) for i, e in sorted(new.host_endpoints.items())
             if old.host_endpoints.get(i) != e]
    removes: list[Update] = []
    removes += [WorkloadEndpointRemove(i) for i in sorted(old.workload_endpoints.keys() - new.workload_endpoints.keys())]
    removes += [HostEndpointRemove(i) for i in sorted(old.host_endpoints.keys() - new.host_endpoints.keys())]
    removes += [ServiceRemove(i) for i in sorted(old.services.keys() - new.services.keys())]
    removes += [RouteRemove(i) for i in sorted(old.routes.keys() - new.routes.keys())]
    removes += [IPPoolRemove(i) for i in sorted(old.pools.keys() - new.pools.keys())]
    removes += [ProfileRemove(i) for i in sorted(old.profiles.keys() - new.profiles.keys())]
    removes += [PolicyRemove(i) for i in sorted(old.policies.keys() - new.policies.keys(),
                                                key=lambda p: (p.tier, p.name))]
    removes += [IPSetRemove(i) for i in sorted(old.ipsets.keys() - new.ipsets.keys())]
    out = adds + removes
    if new.in_sync and not old.in_sync:
        out.append(InSync())
    return out
