"""Descriptors for the ACL plugin: content-addressed ACLs (found again by
their ``vppagent:acl:<digest>`` tag) and per-interface ACL lists."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from vppagent.dataplane.vpp.acl_render import rule_from_details, rule_message
from vppagent.dataplane.vpp.batch import Calls, Plan
from vppagent.dataplane.vpp.context import ALL, Context, UpdatableVppDescriptor, VppDescriptor
from vppagent.dataplane.vpp.keys import AclBindingKey, AclBindingValue, AclKey, AclValue, IfaceRefKey
from vppagent.dataplane.vpp.names import acl_tag, parse


class AclDescriptor(VppDescriptor):
    kind = AclKey
    name = "acl"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.index_to_key: dict[int, AclKey] = {}

    def plan_create(self, key: AclKey, value: AclValue) -> Plan:
        rules = [rule_message(r) for r in value.rules]
        (reply,) = yield Calls([("acl_add_replace", {"acl_index": ALL, "tag": acl_tag(key.digest),
                                                     "r": rules})], returns_ids=True)
        index = int(reply.acl_index)
        self.index_to_key[index] = key
        return index

    def plan_delete(self, key: AclKey, value: AclValue, index: int) -> Plan:
        yield Calls([("acl_del", {"acl_index": index})], tolerate=("NO_SUCH_ENTRY",))
        self.index_to_key.pop(index, None)

    def dump(self) -> Mapping[AclKey, tuple[AclValue, Any]]:
        out: dict[AclKey, tuple[AclValue, Any]] = {}
        self.index_to_key = {}
        for d in self.ctx.conn.dump("acl_dump", acl_index=ALL):
            parsed = parse(str(d.tag))
            if parsed is None or parsed[0] != "acl":
                continue                                  # not ours: never touched
            key = AclKey(parsed[1])
            out[key] = (AclValue(tuple(rule_from_details(r) for r in d.r)), int(d.acl_index))
            self.index_to_key[int(d.acl_index)] = key
        return out


class AclBindingDescriptor(UpdatableVppDescriptor):
    """``acl_interface_set_acl_list``: input ACLs then output ACLs of one interface."""

    kind = AclBindingKey
    name = "acl-binding"

    def __init__(self, ctx: Context, acls: AclDescriptor, ifname_of: Callable[[int], str | None]) -> None:
        super().__init__(ctx)
        self.acls = acls
        self.ifname_of = ifname_of

    def dependencies(self, key: AclBindingKey, value: AclBindingValue) -> Iterable[Any]:
        return {IfaceRefKey(key.ifname), *value.inputs, *value.outputs}

    def plan_create(self, key: AclBindingKey, value: AclBindingValue) -> Plan:
        ids = [self.ctx.need(k) for k in value.inputs + value.outputs]
        yield Calls([("acl_interface_set_acl_list", {"sw_if_index": value.sw_if_index, "n_input": len(value.inputs),
                                                     "acls": ids})])
        return None

    def plan_update(self, key: AclBindingKey, old: AclBindingValue, new: AclBindingValue, meta: Any) -> Plan:
        return self.plan_create(key, new)

    def plan_delete(self, key: AclBindingKey, value: AclBindingValue, meta: Any) -> Plan:
        yield Calls([("acl_interface_set_acl_list", {"sw_if_index": value.sw_if_index, "n_input": 0, "acls": []})],
                    tolerate=("INVALID_SW_IF_INDEX",))

    def dump(self) -> Mapping[AclBindingKey, tuple[AclBindingValue, Any]]:
        out: dict[AclBindingKey, tuple[AclBindingValue, Any]] = {}
        names: dict[int, str] | None = None
        for d in self.ctx.conn.dump("acl_interface_list_dump", sw_if_index=ALL):
            acls = [int(a) for a in d.acls]
            keys = [self.acls.index_to_key.get(a) for a in acls]
            if not acls or any(k is None for k in keys):
                continue                                  # a list we did not write: left alone
            ifname = self.ifname_of(int(d.sw_if_index))
            if ifname is None:                            # ours, on an interface we no longer know
                if names is None:
                    names = {int(i.sw_if_index): str(i.interface_name)
                             for i in self.ctx.conn.dump("sw_interface_dump", sw_if_index=ALL)}
                ifname = names.get(int(d.sw_if_index))
                if ifname is None:
                    continue
            n = int(d.n_input)
            out[AclBindingKey(ifname)] = (AclBindingValue(int(d.sw_if_index), tuple(keys[:n]), tuple(keys[n:])),  # type: ignore[arg-type]
                                          None)
        return out
