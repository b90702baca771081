"""A dataplane that programs nothing.

Useful to run the control plane alone (CI, dry runs, calculation debugging):
it still goes through the reconciler against an in-memory "device", so
status counts, ``Dump`` and pending dependencies (a policy naming an IP set
that never arrived, an endpoint naming a missing policy) look exactly as
they would with a real backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from vppagent.dataplane.base import ReconcilingDataplane
from vppagent.model.state import DataplaneState
from vppagent.model.updates import (
    HostEndpointInfo, HostEndpointRemove, HostEndpointUpdate, IPPoolRemove, IPPoolUpdate,
    IPSetDeltaUpdate, IPSetRemove, IPSetUpdate, PolicyID, PolicyRemove, PolicyUpdate, ProfileRemove,
    ProfileUpdate, RenderedRule, RouteRemove, RouteUpdate, ServiceRemove, ServiceUpdate, TierInfo, Update,
    WorkloadEndpointInfo, WorkloadEndpointRemove, WorkloadEndpointUpdate,
)
from vppagent.reconciler import Descriptor


@dataclass(frozen=True)
class ModelKey:
    """One model object as a reconciler key: ``kind`` is ipset, policy, profile, wep, hep, service, pool, route."""

    kind: str
    id: str


def _ipset_keys(rules: Iterable[RenderedRule]) -> set[ModelKey]:
    return {ModelKey("ipset", i) for r in rules for i in r.ip_set_ids()}


def _tier_keys(tiers: Iterable[TierInfo]) -> set[ModelKey]:
    return {
        ModelKey("policy", str(PolicyID(t.name, p)))
        for t in tiers for p in t.ingress_policies + t.egress_policies
    }


class MemoryDescriptor(Descriptor[ModelKey, Any]):
    """Writes model objects into a dict; dependencies follow Felix's add order."""

    kind = ModelKey

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[ModelKey, Any] = {}

    def create(self, key: ModelKey, value: Any) -> None:
        self.store[key] = value

    def update(self, key: ModelKey, old: Any, new: Any, metadata: Any) -> None:
        self.store[key] = new

    def delete(self, key: ModelKey, value: Any, metadata: Any) -> None:
        self.store.pop(key, None)

    def dump(self) -> Mapping[ModelKey, tuple[Any, Any]]:
        return {k: (v, None) for k, v in self.store.items()}

    def dependencies(self, key: ModelKey, value: Any) -> Iterable[ModelKey]:
        if isinstance(value, PolicyUpdate):
            p = value.policy
            return _ipset_keys(p.inbound_rules + p.outbound_rules)
        if isinstance(value, ProfileUpdate):
            return _ipset_keys(value.inbound_rules + value.outbound_rules)
        if isinstance(value, WorkloadEndpointInfo):
            return _tier_keys(value.tiers) | {ModelKey("profile", p) for p in value.profile_ids}
        if isinstance(value, HostEndpointInfo):
            tiers = value.tiers + value.untracked_tiers + value.pre_dnat_tiers + value.forward_tiers
            return _tier_keys(tiers) | {ModelKey("profile", p) for p in value.profile_ids}
        return ()


class NoneDataplane(ReconcilingDataplane):
    """Tracks state and reports status; touches no kernel and no VPP."""

    name = "none"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.device = MemoryDescriptor()
        self.reconciler.register(self.device)

    @classmethod
    def from_config(cls, options: Mapping[str, Any]) -> "NoneDataplane":
        unknown = set(options) - {"refresh_interval", "nodeName"}
        if unknown:
            raise ValueError(f"dataplane none: unknown options {sorted(unknown)}")
        return cls(refresh_interval=options.get("refresh_interval"))

    def on_update(self, update: Update, state: DataplaneState) -> None:
        r = self.reconciler
        match update:
            case IPSetUpdate(id=i) | IPSetDeltaUpdate(id=i):
                r.set(ModelKey("ipset", i), state.ipsets[i])
            case IPSetRemove(id=i):
                r.delete(ModelKey("ipset", i))
            case PolicyUpdate(id=i):
                r.set(ModelKey("policy", str(i)), update)
            case PolicyRemove(id=i):
                r.delete(ModelKey("policy", str(i)))
            case ProfileUpdate(id=i):
                r.set(ModelKey("profile", i), update)
            case ProfileRemove(id=i):
                r.delete(ModelKey("profile", i))
            case WorkloadEndpointUpdate(id=i, endpoint=e):
                r.set(ModelKey("wep", i), e)
            case WorkloadEndpointRemove(id=i):
                r.delete(ModelKey("wep", i))
            case HostEndpointUpdate(id=i, endpoint=e):
                r.set(ModelKey("hep", i), e)
            case HostEndpointRemove(id=i):
                r.delete(ModelKey("hep", i))
            case ServiceUpdate(id=i):
                r.set(ModelKey("service", i), update)
            case ServiceRemove(id=i):
                r.delete(ModelKey("service", i))
            case IPPoolUpdate(id=i):
                r.set(ModelKey("pool", i), update)
            case IPPoolRemove(id=i):
                r.delete(ModelKey("pool", i))
            case RouteUpdate(id=i):
                r.set(ModelKey("route", i), update)
            case RouteRemove(id=i):
                r.delete(ModelKey("route", i))
            case _:
                pass   # ConfigUpdate, InSync: nothing to program

    def is_ready(self, stats: Mapping[str, int]) -> bool:
        return True
