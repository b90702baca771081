"""Descriptors for npol objects: ipsets, policies (with their rules), and
the per-interface configuration.

npol has neither tags nor dumps: every id the agent gets is recorded in the
state store (``store.py``), which is what ``dump`` reports; the store is
valid only for the VPP instance whose epoch marker it names.  Policies are
content-addressed (their key carries a digest of their rules), so a changed
policy is a new object and the interface switches over in one
``npol_configure_policies``: never a moment without policy.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from vppagent.dataplane.vpp.batch import Calls, Plan
from vppagent.dataplane.vpp.context import UpdatableVppDescriptor, VppDescriptor, chunks
from vppagent.dataplane.vpp.ipsets import NPOL_SET_TYPE, member_message
from vppagent.dataplane.vpp.keys import (
    IfaceRefKey, NpolIfaceKey, NpolIfaceValue, NpolPolicyKey, NpolPolicyValue, NpolSetKey, NpolSetValue,
)
from vppagent.dataplane.vpp.npol_render import DEFAULT_ALLOW, rule_message

MEMBERS_PER_MESSAGE = 500
SETS, POLICIES, IFACES = "npol_set", "npol_policy", "npol_iface"


class NpolSetDescriptor(UpdatableVppDescriptor):
    kind = NpolSetKey
    name = "npol-ipset"

    def plan_create(self, key: NpolSetKey, value: NpolSetValue) -> Plan:
        (reply,) = yield Calls([("npol_ipset_create", {"type": NPOL_SET_TYPE[key.kind]})], returns_ids=True)
        set_id = int(reply.set_id)
        try:
            yield Calls(self._members(key, set_id, True, value.members))
        except Exception:
            yield Calls([("npol_ipset_delete", {"set_id": set_id})])
            raise
        self.ctx.store.put(SETS, key, value, set_id)
        return set_id

    def plan_update(self, key: NpolSetKey, old: NpolSetValue, new: NpolSetValue, set_id: int) -> Plan:
        calls = self._members(key, set_id, False, old.members - new.members)
        calls += self._members(key, set_id, True, new.members - old.members)
        self.ctx.store.put(SETS, key, old, set_id)     # until it worked
        yield Calls(calls)
        self.ctx.store.put(SETS, key, new, set_id)
        return set_id

    def plan_delete(self, key: NpolSetKey, value: NpolSetValue, set_id: int) -> Plan:
        yield Calls([("npol_ipset_delete", {"set_id": set_id})], tolerate=("NO_SUCH_ENTRY",))
        self.ctx.store.remove(SETS, key)

    @staticmethod
    def _members(key: NpolSetKey, set_id: int, is_add: bool, members: Iterable[str]) -> list:
        items = [member_message(key.kind, m) for m in sorted(members)]
        return [("npol_ipset_add_del_members", {"set_id": set_id, "is_add": is_add, "members": part})
                for part in chunks(items, MEMBERS_PER_MESSAGE)]

    def dump(self) -> Mapping[NpolSetKey, tuple[NpolSetValue, Any]]:
        return self.ctx.store.objects(SETS)


class NpolPolicyDescriptor(VppDescriptor):
    """A policy and its rules; no update (a new content is a new key)."""

    kind = NpolPolicyKey
    name = "npol-policy"

    def dependencies(self, key: NpolPolicyKey, value: NpolPolicyValue) -> Iterable[Any]:
        return {k for _, r in value.items for k in r.set_keys()}

    def plan_create(self, key: NpolPolicyKey, value: NpolPolicyValue) -> Plan:
        ids = {k: self.ctx.need(k) for k in self.dependencies(key, value)}
        rule_ids: list[int] = []
        if value.items:
            replies = yield Calls([("npol_rule_create", {"rule": rule_message(r, ids)}) for _, r in value.items],
                                  returns_ids=True)
            rule_ids = [int(r.rule_id) for r in replies]
        try:
            (reply,) = yield Calls([("npol_policy_create", {"rules": [
                {"is_inbound": inbound, "rule_id": rid} for (inbound, _), rid in zip(value.items, rule_ids)]})],
                returns_ids=True)
        except Exception:
            yield Calls([("npol_rule_delete", {"rule_id": rid}) for rid in rule_ids])
            raise
        meta = (int(reply.policy_id), tuple(rule_ids))
        self.ctx.store.put(POLICIES, key, value, meta)
        return meta

    def plan_delete(self, key: NpolPolicyKey, value: NpolPolicyValue, meta: tuple[int, tuple[int, ...]]) -> Plan:
        policy_id, rule_ids = meta
        yield Calls([("npol_policy_delete", {"policy_id": policy_id})], tolerate=("NO_SUCH_ENTRY",))
        if rule_ids:
            yield Calls([("npol_rule_delete", {"rule_id": r}) for r in rule_ids], tolerate=("NO_SUCH_ENTRY",))
        self.ctx.store.remove(POLICIES, key)

    def dump(self) -> Mapping[NpolPolicyKey, tuple[NpolPolicyValue, Any]]:
        return self.ctx.store.objects(POLICIES)


class NpolIfaceDescriptor(UpdatableVppDescriptor):
    """``npol_configure_policies`` on one interface (rx, tx, profiles, defaults)."""

    kind = NpolIfaceKey
    name = "npol-interface"

    def dependencies(self, key: NpolIfaceKey, value: NpolIfaceValue) -> Iterable[Any]:
        return {IfaceRefKey(key.ifname), *value.rx, *value.tx, *value.profiles}

    def _configure(self, value: NpolIfaceValue) -> dict[str, Any]:
        pid = lambda k: self.ctx.need(k)[0]   # noqa: E731
        ids = [pid(k) for k in value.rx] + [pid(k) for k in value.tx] + [pid(k) for k in value.profiles]
        return {"sw_if_index": value.sw_if_index, "num_rx_policies": len(value.rx),
                "num_tx_policies": len(value.tx), "total_ids": len(ids), "invert_rx_tx": int(value.invert),
                "policy_default_rx": value.policy_default, "policy_default_tx": value.policy_default,
                "profile_default_rx": value.profile_default, "profile_default_tx": value.profile_default,
                "policy_ids": ids}

    def plan_create(self, key: NpolIfaceKey, value: NpolIfaceValue) -> Plan:
        yield Calls([("npol_configure_policies", self._configure(value))])
        self.ctx.store.put(IFACES, key, value, None)
        return None

    def plan_update(self, key: NpolIfaceKey, old: NpolIfaceValue, new: NpolIfaceValue, meta: Any) -> Plan:
        return self.plan_create(key, new)

    def plan_delete(self, key: NpolIfaceKey, value: NpolIfaceValue, meta: Any) -> Plan:
        """npol has no unconfigure message: leave the interface allowing everything
        (if it still exists; deleting an interface clears its configuration)."""
        yield Calls([("npol_configure_policies", {
            "sw_if_index": value.sw_if_index, "num_rx_policies": 0, "num_tx_policies": 0, "total_ids": 0,
            "invert_rx_tx": 0, "policy_default_rx": DEFAULT_ALLOW, "policy_default_tx": DEFAULT_ALLOW,
            "profile_default_rx": DEFAULT_ALLOW, "profile_default_tx": DEFAULT_ALLOW, "policy_ids": []})],
            tolerate=("INVALID_SW_IF_INDEX",))
        self.ctx.store.remove(IFACES, key)

    def dump(self) -> Mapping[NpolIfaceKey, tuple[NpolIfaceValue, Any]]:
        return self.ctx.store.objects(IFACES)
