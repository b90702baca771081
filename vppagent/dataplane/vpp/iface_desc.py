"""Interfaces seen from the policy side: references and cnat features.

``IfaceRefKey`` writes nothing to VPP: it is how the policy reconciler
learns that an interface exists (a wired pod, a host endpoint's interface)
and its ``sw_if_index``, so policy keys can depend on it.  The cnat feature
on interfaces we do not own (uplink, host endpoints) is recorded in the
state store, since VPP cannot dump it.
"""

from __future__ import annotations

from typing import Any, Mapping

from vppagent.dataplane.vpp.batch import Calls, Plan
from vppagent.dataplane.vpp.context import Context, UpdatableVppDescriptor
from vppagent.dataplane.vpp.keys import CnatFeatureKey, CnatFeatureValue, IfaceRefKey, IfaceRefValue
from vppagent.reconciler import Descriptor

FEATURES = "cnat_feature"


class IfaceRefDescriptor(Descriptor[IfaceRefKey, IfaceRefValue]):
    kind = IfaceRefKey
    name = "interface-ref"

    def __init__(self) -> None:
        super().__init__()
        self.known: dict[IfaceRefKey, IfaceRefValue] = {}

    def create(self, key: IfaceRefKey, value: IfaceRefValue) -> None:
        self.known[key] = value

    def update(self, key: IfaceRefKey, old: IfaceRefValue, new: IfaceRefValue, metadata: Any) -> None:
        self.known[key] = new

    def delete(self, key: IfaceRefKey, value: IfaceRefValue, metadata: Any) -> None:
        self.known.pop(key, None)

    def dump(self) -> Mapping[IfaceRefKey, tuple[IfaceRefValue, Any]]:
        return {k: (v, None) for k, v in self.known.items()}


class CnatFeatureDescriptor(UpdatableVppDescriptor):
    kind = CnatFeatureKey
    name = "cnat-feature"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)

    def dependencies(self, key: CnatFeatureKey, value: CnatFeatureValue) -> set[Any]:
        return {IfaceRefKey(key.ifname)}

    def plan_create(self, key: CnatFeatureKey, value: CnatFeatureValue) -> Plan:
        yield Calls([("feature_cnat_enable_disable", {"sw_if_index": value.sw_if_index, "enable_disable": True})])
        self.ctx.store.put(FEATURES, key, value, None)

    def plan_update(self, key: CnatFeatureKey, old: CnatFeatureValue, new: CnatFeatureValue, meta: Any) -> Plan:
        return self.plan_create(key, new)

    def plan_delete(self, key: CnatFeatureKey, value: CnatFeatureValue, meta: Any) -> Plan:
        yield Calls([("feature_cnat_enable_disable", {"sw_if_index": value.sw_if_index, "enable_disable": False})],
                    tolerate=("INVALID_SW_IF_INDEX",))
        self.ctx.store.remove(FEATURES, key)

    def dump(self) -> Mapping[CnatFeatureKey, tuple[CnatFeatureValue, Any]]:
        return self.ctx.store.objects(FEATURES)
