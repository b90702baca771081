"""The calculation graph: resources in, dataplane-neutral updates out.

Like Felix's calc graph, it works in two phases so that one change costs
O(affected): ``apply`` updates indexes and marks what is dirty (endpoints
whose policy lists changed, IP sets whose members changed, policies and
profiles that became active or inactive); ``flush`` renders only the dirty
items, diffs them against what was last emitted and returns the updates in
Felix's order (IP sets, policies, profiles, endpoints on add; the reverse on
remove).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable

from vppagent.calc.label_index import LabelIndex
from vppagent.calc.routes import RouteCalculator
from vppagent.calc.rules import IPSetSpec, RuleRenderer
from vppagent.model.resources import (
    ALLOW_ALL_RULES, DEFAULT_TIER, DEFAULT_TIER_ORDER, LABEL_NAME, LABEL_NAMESPACE, LABEL_ORCHESTRATOR,
    NAMESPACE_LABEL_PREFIX, NAMESPACE_PROFILE_PREFIX, SERVICE_ACCOUNT_LABEL_PREFIX,
    SERVICE_ACCOUNT_PROFILE_PREFIX, BlockAffinity, Direction, EndpointSlice, HostEndpoint, IPPool, Namespace,
    NetworkSet, Node, Policy, Profile, Resource, Service, ServiceAccount, Tier, TierDefault,
    WorkloadEndpoint, resource_key,
)
from vppagent.model.updates import (
    HostEndpointInfo, HostEndpointRemove, HostEndpointUpdate, IPPoolRemove, IPPoolUpdate,
    IPSetDeltaUpdate, IPSetRemove, IPSetType, IPSetUpdate, PolicyID, PolicyRemove, PolicyUpdate,
    ProfileRemove, ProfileUpdate, RenderedPolicy, RenderedRule, ServiceRemove, ServiceUpdate,
    TierInfo, Update, WorkloadEndpointInfo, WorkloadEndpointRemove, WorkloadEndpointUpdate,
)
from vppagent.selector import Selector, and_, prefix_keys
from vppagent.calc.rules import own_namespace

# Item ids in the label indexes: ("wep"|"hep"|"netset", key).
ItemID = tuple[str, str]


@dataclass
class _PolicyState:
    policy: Policy
    local_matches: int = 0
    rendered: RenderedPolicy | None = None
    specs: tuple[IPSetSpec, ...] = ()


def policy_selector(policy: Policy) -> Selector:
    """The endpoints a policy applies to, with Calico's namespace scoping."""
    parts = [policy.selector]
    if policy.namespace is not None:
        parts.append(own_namespace(policy.namespace))
    elif policy.namespace_selector is not None:
        parts.append(prefix_keys(policy.namespace_selector, NAMESPACE_LABEL_PREFIX))
    if policy.service_account_selector is not None:
        parts.append(prefix_keys(policy.service_account_selector, SERVICE_ACCOUNT_LABEL_PREFIX))
    return and_(*parts)


def _order_key(order: float | None, name: str) -> tuple[float, str]:
    return (math.inf if order is None else order, name)


def namespace_profile(ns: Namespace) -> Profile:
    """The ``kns.<ns>`` profile: allows everything, gives endpoints ``pcns.`` labels."""
    labels = [(NAMESPACE_LABEL_PREFIX + k, v) for k, v in ns.labels]
    labels.append((NAMESPACE_LABEL_PREFIX + LABEL_NAME, ns.name))
    return Profile(NAMESPACE_PROFILE_PREFIX + ns.name, ALLOW_ALL_RULES, ALLOW_ALL_RULES, tuple(sorted(labels)))


def service_account_profile(sa: ServiceAccount) -> Profile:
    """The ``ksa.<ns>.<sa>`` profile: no rules, gives endpoints ``pcsa.`` labels."""
    labels = [(SERVICE_ACCOUNT_LABEL_PREFIX + k, v) for k, v in sa.labels]
    labels.append((SERVICE_ACCOUNT_LABEL_PREFIX + LABEL_NAME, sa.name))
    return Profile(f"{SERVICE_ACCOUNT_PROFILE_PREFIX}{sa.namespace}.{sa.name}", (), (), tuple(sorted(labels)))


class CalcGraph:
    """Incremental calculation for one node (or every node when ``node_name`` is None)."""

    def __init__(self, node_name: str | None = None) -> None:
        self.node_name = node_name
        self.resources: dict[tuple[str, str], Resource] = {}
        self.tiers: dict[str, Tier] = {DEFAULT_TIER: Tier(DEFAULT_TIER, DEFAULT_TIER_ORDER)}
        self._explicit_profiles: dict[str, Profile] = {}
        self._derived_profiles: dict[str, Profile] = {}
        self._items: dict[ItemID, Resource] = {}
        self._item_parents: dict[ItemID, tuple[str, ...]] = {}
        self._items_by_parent: dict[str, set[ItemID]] = defaultdict(set)
        self._policies: dict[str, _PolicyState] = {}
        self._policies_by_tier: dict[str, set[str]] = defaultdict(set)
        self._policy_index: LabelIndex[ItemID, str] = LabelIndex(self._policy_matched, self._policy_unmatched)
        self._ipset_index: LabelIndex[ItemID, str] = LabelIndex(self._ipset_matched, self._ipset_unmatched)
        self._ipset_specs: dict[str, IPSetSpec] = {}
        self._ipset_refs: Counter[str] = Counter()
        self._ipset_members: dict[str, Counter[str]] = {}
        self._profile_refs: Counter[str] = Counter()
        self._profile_rendered: dict[str, tuple[ProfileUpdate, tuple[IPSetSpec, ...]]] = {}
        self._services: dict[str, Service] = {}
        self._slices_by_service: dict[str, dict[str, EndpointSlice]] = defaultdict(dict)
        self._service_ipsets: dict[str, set[str]] = defaultdict(set)
        self._pools: dict[str, IPPool] = {}
        self.nodes: dict[str, Node] = {}
        self.routes = RouteCalculator(node_name)
        # Dirty sets and the last emitted values.
        self._dirty_endpoints: set[ItemID] = set()
        self._dirty_policies: set[str] = set()
        self._dirty_profiles: set[str] = set()
        self._dirty_ipsets: set[str] = set()
        self._dirty_services: set[str] = set()
        self._dirty_pools: set[str] = set()
        self._sent_ipsets: dict[str, frozenset[str]] = {}
        self._sent_policies: dict[str, tuple[PolicyID, RenderedPolicy]] = {}
        self._sent_profiles: dict[str, ProfileUpdate] = {}
        self._sent_weps: dict[str, WorkloadEndpointInfo] = {}
        self._sent_heps: dict[str, HostEndpointInfo] = {}
        self._sent_services: dict[str, ServiceUpdate] = {}
        self._sent_pools: dict[str, IPPool] = {}

    # ------------------------------------------------------------------ input

    def apply_all(self, resources: Iterable[Resource]) -> None:
        for resource in resources:
            self.update(resource)

    def update(self, resource: Resource) -> None:
        """Add or replace one resource."""
        key = resource_key(resource)
        old = self.resources.get(key)
        if old == resource:
            return
        self.resources[key] = resource
        self._dispatch(resource, old, removed=False)

    def delete(self, kind: str, key: str) -> None:
        """Remove one resource by ``resource_key``."""
        old = self.resources.pop((kind, key), None)
        if old is not None:
            self._dispatch(old, old, removed=True)

    def remove(self, resource: Resource) -> None:
        self.delete(*resource_key(resource))

    def _dispatch(self, resource: Resource, old: Resource | None, removed: bool) -> None:
        match resource:
            case Tier():
                self._on_tier(resource, removed)
            case Policy():
                self._on_policy(resource, removed)
            case Profile():
                self._on_profile(resource.name, resource if not removed else None, explicit=True)
            case Namespace():
                prof = namespace_profile(resource)
                self._on_profile(prof.name, None if removed else prof, explicit=False)
            case ServiceAccount():
                prof = service_account_profile(resource)
                self._on_profile(prof.name, None if removed else prof, explicit=False)
            case WorkloadEndpoint():
                self._on_item(("wep", resource.key), None if removed else resource)
            case HostEndpoint():
                self._on_item(("hep", resource.key), None if removed else resource)
            case NetworkSet():
                self._on_item(("netset", resource.key), None if removed else resource)
            case Service():
                self._on_service(resource, removed)
            case EndpointSlice():
                self._on_slice(resource, removed)
            case IPPool():
                if removed:
                    self._pools.pop(resource.name, None)
                else:
                    self._pools[resource.name] = resource
                self._dirty_pools.add(resource.name)
                self.routes.on_pool(resource, removed)
            case Node():
                if removed:
                    self.nodes.pop(resource.name, None)
                else:
                    self.nodes[resource.name] = resource
                self.routes.on_node(resource, removed)
            case BlockAffinity():
                self.routes.on_block(resource, removed)
            case _:
                raise TypeError(f"unsupported resource {type(resource).__name__}")

    # ------------------------------------------------------------ tiers/policies

    def _on_tier(self, tier: Tier, removed: bool) -> None:
        if removed:
            if tier.name == DEFAULT_TIER:
                self.tiers[DEFAULT_TIER] = Tier(DEFAULT_TIER, DEFAULT_TIER_ORDER)
            else:
                self.tiers.pop(tier.name, None)
        else:
            self.tiers[tier.name] = tier
        for pkey in self._policies_by_tier.get(tier.name, ()):
            for item in self._policy_index.matches(pkey):
                self._dirty_endpoints.add(item)

    def _on_policy(self, policy: Policy, removed: bool) -> None:
        pkey = policy.key
        state = self._policies.get(pkey)
        if state is not None:
            # Order, types, tier or rules may change the endpoint's policy list.
            for item in self._policy_index.matches(pkey):
                self._dirty_endpoints.add(item)
            self._policies_by_tier[state.policy.tier].discard(pkey)
        if removed:
            self._policy_index.remove_selector(pkey)
            if state is not None:
                self._set_policy_rendered(pkey, state, active=False)
                del self._policies[pkey]
            self._dirty_policies.add(pkey)
            return
        if state is None:
            state = self._policies[pkey] = _PolicyState(policy)
        else:
            old_specs = state.specs
            state.policy = policy
            if state.local_matches > 0:
                # Reference the new IP sets before releasing the old ones so
                # sets shared by both versions are not torn down and rebuilt.
                state.specs = ()
                self._set_policy_rendered(pkey, state, active=True)
                for spec in old_specs:
                    self._unref_ipset(spec)
        self._policies_by_tier[policy.tier].add(pkey)
        self._policy_index.update_selector(pkey, policy_selector(policy))
        self._dirty_policies.add(pkey)

    def _is_local(self, item: ItemID) -> bool:
        if self.node_name is None or item[0] == "netset":
            return item[0] != "netset"
        resource = self._items.get(item)
        return getattr(resource, "node", None) == self.node_name

    def _policy_matched(self, pkey: str, item: ItemID) -> None:
        self._dirty_endpoints.add(item)
        if self._is_local(item):
            state = self._policies[pkey]
            state.local_matches += 1
            if state.local_matches == 1:
                self._set_policy_rendered(pkey, state, active=True)

    def _policy_unmatched(self, pkey: str, item: ItemID) -> None:
        self._dirty_endpoints.add(item)
        state = self._policies.get(pkey)
        if state is not None and self._is_local(item):
            state.local_matches -= 1
            if state.local_matches == 0:
                self._set_policy_rendered(pkey, state, active=False)

    def _set_policy_rendered(self, pkey: str, state: _PolicyState, active: bool) -> None:
        """Render (and reference the IP sets of) an active policy, or release them."""
        self._dirty_policies.add(pkey)
        if not active:
            for spec in state.specs:
                self._unref_ipset(spec)
            state.rendered, state.specs = None, ()
            return
        renderer = RuleRenderer()
        p = state.policy
        state.rendered = RenderedPolicy(
            inbound_rules=renderer.render_all(p.ingress if Direction.INGRESS in p.types else (), p.namespace, pkey),
            outbound_rules=renderer.render_all(p.egress if Direction.EGRESS in p.types else (), p.namespace, pkey),
            untracked=p.do_not_track,
            pre_dnat=p.pre_dnat,
            apply_on_forward=p.apply_on_forward,
        )
        state.specs = tuple(renderer.specs.values())
        for spec in state.specs:
            self._ref_ipset(spec)

    # ------------------------------------------------------------------ profiles

    def _profile(self, name: str) -> Profile | None:
        return self._explicit_profiles.get(name) or self._derived_profiles.get(name)

    def _on_profile(self, name: str, profile: Profile | None, explicit: bool) -> None:
        before = self._profile(name)
        table = self._explicit_profiles if explicit else self._derived_profiles
        if profile is None:
            table.pop(name, None)
        else:
            table[name] = profile
        after = self._profile(name)
        if before == after:
            return
        if (before.labels_to_apply if before else ()) != (after.labels_to_apply if after else ()):
            for item in list(self._items_by_parent.get(name, ())):
                self._refresh_item_labels(item)
        if self._profile_refs[name] > 0:
            self._release_profile(name)
            self._render_profile(name)
        self._dirty_profiles.add(name)

    def _render_profile(self, name: str) -> None:
        profile = self._profile(name)
        if profile is None:
            return
        renderer = RuleRenderer()
        update = ProfileUpdate(
            name,
            renderer.render_all(profile.ingress, None, name),
            renderer.render_all(profile.egress, None, name),
        )
        specs = tuple(renderer.specs.values())
        for spec in specs:
            self._ref_ipset(spec)
        self._profile_rendered[name] = (update, specs)

    def _release_profile(self, name: str) -> None:
        rendered = self._profile_rendered.pop(name, None)
        if rendered is not None:
            for spec in rendered[1]:
                self._unref_ipset(spec)

    def _ref_profiles(self, names: Iterable[str], delta: int) -> None:
        for name in names:
            self._profile_refs[name] += delta
            count = self._profile_refs[name]
            if delta > 0 and count == 1:
                self._render_profile(name)
            elif delta < 0 and count == 0:
                del self._profile_refs[name]
                self._release_profile(name)
            self._dirty_profiles.add(name)

    # ------------------------------------------------------------------ items

    def _parents(self, resource: Resource) -> tuple[str, ...]:
        if isinstance(resource, NetworkSet):
            return (NAMESPACE_PROFILE_PREFIX + resource.namespace,) if resource.namespace else ()
        return tuple(getattr(resource, "profiles", ()))

    def _labels(self, item: ItemID) -> dict[str, str]:
        resource = self._items[item]
        labels: dict[str, str] = {}
        for parent in self._item_parents.get(item, ()):
            profile = self._profile(parent)
            if profile is not None:
                labels.update(profile.labels_to_apply)
        labels.update(resource.labels)  # type: ignore[union-attr]
        if isinstance(resource, NetworkSet) and resource.namespace:
            labels[LABEL_NAMESPACE] = resource.namespace
        elif isinstance(resource, WorkloadEndpoint):
            labels.setdefault(LABEL_NAMESPACE, resource.namespace)
            labels.setdefault(LABEL_ORCHESTRATOR, resource.orchestrator)
        return labels

    def _refresh_item_labels(self, item: ItemID) -> None:
        labels = self._labels(item)
        if item[0] != "netset":
            self._policy_index.update_item(item, labels)
        self._ipset_index.update_item(item, labels)
        self._dirty_endpoints.add(item)

    def _on_item(self, item: ItemID, resource: Resource | None) -> None:
        old = self._items.get(item)
        local_before = old is not None and self._is_local(item)
        if old is not None:
            for parent in self._item_parents.pop(item, ()):
                self._items_by_parent[parent].discard(item)
            if local_before and item[0] != "netset":
                self._ref_profiles(self._parents(old), -1)
        if resource is None:
            # The index callbacks still see the old resource: they release its
            # IP set members and its share of each policy's local match count.
            self._policy_index.remove_item(item)
            self._ipset_index.remove_item(item)
            self._items.pop(item, None)
            self._dirty_endpoints.add(item)
            return
        if old is not None:
            # Members contributed by the old value go; the new value's are added below.
            for sid in self._ipset_index.selected_by(item):
                self._change_members(sid, self._members_of(sid, old), -1)
        self._items[item] = resource
        local_after = self._is_local(item)
        if old is not None and local_before != local_after:
            # The endpoint moved onto or off this node: recount policy activity.
            for pkey in list(self._policy_index.selected_by(item)):
                self._adjust_local(pkey, +1 if local_after else -1)
        parents = self._parents(resource)
        self._item_parents[item] = parents
        for parent in parents:
            self._items_by_parent[parent].add(item)
        if local_after and item[0] != "netset":
            self._ref_profiles(parents, +1)
        for sid in self._ipset_index.selected_by(item):
            self._change_members(sid, self._members_of(sid, resource), +1)
        self._refresh_item_labels(item)

    def _adjust_local(self, pkey: str, delta: int) -> None:
        state = self._policies.get(pkey)
        if state is None:
            return
        before = state.local_matches
        state.local_matches += delta
        if before == 0 and state.local_matches > 0:
            self._set_policy_rendered(pkey, state, active=True)
        elif before > 0 and state.local_matches == 0:
            self._set_policy_rendered(pkey, state, active=False)

    # ------------------------------------------------------------------ IP sets

    def _ref_ipset(self, spec: IPSetSpec) -> None:
        sid = spec.id
        self._ipset_refs[sid] += 1
        if self._ipset_refs[sid] > 1:
            return
        self._ipset_specs[sid] = spec
        self._ipset_members[sid] = Counter()
        self._dirty_ipsets.add(sid)
        if spec.service is not None:
            svc_key = f"{spec.service[0]}/{spec.service[1]}"
            self._service_ipsets[svc_key].add(sid)
            self._change_members(sid, self._service_members(spec), +1)
        else:
            assert spec.selector is not None
            self._ipset_index.update_selector(sid, spec.selector)

    def _unref_ipset(self, spec: IPSetSpec) -> None:
        sid = spec.id
        self._ipset_refs[sid] -= 1
        if self._ipset_refs[sid] > 0:
            return
        del self._ipset_refs[sid]
        if spec.service is not None:
            self._service_ipsets[f"{spec.service[0]}/{spec.service[1]}"].discard(sid)
        else:
            self._ipset_index.remove_selector(sid)
        self._ipset_specs.pop(sid, None)
        self._ipset_members.pop(sid, None)
        self._dirty_ipsets.add(sid)

    def _members_of(self, sid: str, resource: Resource) -> list[str]:
        spec = self._ipset_specs[sid]
        if spec.named_port is not None:
            proto, name = spec.named_port
            ports = [p for p in getattr(resource, "ports", ()) if p.name == name and p.protocol == proto]
            return [f"{ip},{proto}:{p.port}" for ip in _addresses(resource) for p in ports]
        if isinstance(resource, NetworkSet):
            return [str(n) for n in resource.nets]
        return [f"{ip}/{ip.max_prefixlen}" for ip in _addresses(resource)]

    def _change_members(self, sid: str, members: list[str], delta: int) -> None:
        counter = self._ipset_members.get(sid)
        if counter is None:
            return
        for member in members:
            counter[member] += delta
            if counter[member] <= 0:
                del counter[member]
        if members:
            self._dirty_ipsets.add(sid)

    def _ipset_matched(self, sid: str, item: ItemID) -> None:
        self._change_members(sid, self._members_of(sid, self._items[item]), +1)

    def _ipset_unmatched(self, sid: str, item: ItemID) -> None:
        resource = self._items.get(item)
        if resource is not None and sid in self._ipset_specs:
            self._change_members(sid, self._members_of(sid, resource), -1)

    # ------------------------------------------------------------------ services

    def _service_members(self, spec: IPSetSpec) -> list[str]:
        assert spec.service is not None
        svc_key = f"{spec.service[0]}/{spec.service[1]}"
        members = []
        for eps in self._slices_by_service.get(svc_key, {}).values():
            for ep in eps.endpoints:
                for ip in ep.addresses:
                    if spec.service_ports:
                        members.extend(f"{ip},{p.protocol}:{p.port}" for p in eps.ports)
                    else:
                        members.append(f"{ip}/{ip.max_prefixlen}")
        return members

    def _refresh_service_ipsets(self, svc_key: str) -> None:
        for sid in self._service_ipsets.get(svc_key, ()):
            spec = self._ipset_specs[sid]
            self._ipset_members[sid] = Counter(self._service_members(spec))
            self._dirty_ipsets.add(sid)

    def _on_service(self, svc: Service, removed: bool) -> None:
        if removed:
            self._services.pop(svc.key, None)
        else:
            self._services[svc.key] = svc
        self._dirty_services.add(svc.key)

    def _on_slice(self, eps: EndpointSlice, removed: bool) -> None:
        svc_key = f"{eps.namespace}/{eps.service}"
        slices = self._slices_by_service[svc_key]
        if removed:
            slices.pop(eps.name, None)
        else:
            slices[eps.name] = eps
        self._dirty_services.add(svc_key)
        self._refresh_service_ipsets(svc_key)

    # ------------------------------------------------------------------ output

    def _tiers_for(self, item: ItemID, kind: str) -> tuple[TierInfo, ...]:
        """Ordered tiers of the policies that select ``item``; ``kind`` filters
        normal / untracked / preDNAT / forward policies."""
        by_tier: dict[str, list[Policy]] = defaultdict(list)
        for pkey in self._policy_index.selected_by(item):
            p = self._policies[pkey].policy
            if kind == "normal" and (p.do_not_track or p.pre_dnat):
                continue
            if kind == "untracked" and not p.do_not_track:
                continue
            if kind == "prednat" and not p.pre_dnat:
                continue
            if kind == "forward" and (p.do_not_track or p.pre_dnat or not p.apply_on_forward):
                continue
            by_tier[p.tier].append(p)
        out = []
        for tier_name in sorted(by_tier, key=lambda t: _order_key(self._tier(t).order, t)):
            pols = sorted(by_tier[tier_name], key=lambda p: _order_key(p.order, p.key))
            out.append(TierInfo(
                name=tier_name,
                default_action=self._tier(tier_name).default_action,
                ingress_policies=tuple(p.key for p in pols if Direction.INGRESS in p.types),
                egress_policies=tuple(p.key for p in pols if Direction.EGRESS in p.types),
            ))
        return tuple(out)

    def _tier(self, name: str) -> Tier:
        return self.tiers.get(name) or Tier(name, None, TierDefault.DENY)

    def _endpoint_update(self, item: ItemID) -> WorkloadEndpointInfo | HostEndpointInfo | None:
        resource = self._items.get(item)
        if resource is None or not self._is_local(item):
            return None
        if isinstance(resource, WorkloadEndpoint):
            return WorkloadEndpointInfo(
                namespace=resource.namespace, pod=resource.pod, node=resource.node,
                endpoint=resource.endpoint, interface_name=resource.interface_name,
                mac=resource.mac, nets=resource.nets, profile_ids=resource.profiles,
                tiers=self._tiers_for(item, "normal"), ports=resource.ports,
                labels=tuple(sorted(self._labels(item).items())),
                annotations=resource.annotations,
            )
        if isinstance(resource, HostEndpoint):
            return HostEndpointInfo(
                name=resource.name, node=resource.node, interface_name=resource.interface_name,
                expected_ips=resource.expected_ips, profile_ids=resource.profiles,
                tiers=self._tiers_for(item, "normal"),
                untracked_tiers=self._tiers_for(item, "untracked"),
                pre_dnat_tiers=self._tiers_for(item, "prednat"),
                forward_tiers=self._tiers_for(item, "forward"),
            )
        return None

    def flush(self) -> list[Update]:
        """Updates for everything changed since the last flush, in Felix's order."""
        adds: list[Update] = []
        removes: list[Update] = []
        ipset_removes: list[Update] = []
        for sid in sorted(self._dirty_ipsets):
            counter = self._ipset_members.get(sid)
            sent = self._sent_ipsets.get(sid)
            if counter is None:
                if sent is not None:
                    ipset_removes.append(IPSetRemove(sid))
                    del self._sent_ipsets[sid]
                continue
            members = frozenset(counter)
            if sent is None:
                adds.append(IPSetUpdate(sid, self._ipset_specs[sid].type, members))
            elif sent != members:
                adds.append(IPSetDeltaUpdate(sid, members - sent, sent - members))
            else:
                continue
            self._sent_ipsets[sid] = members
        policy_removes: list[Update] = []
        for pkey in sorted(self._dirty_policies):
            state = self._policies.get(pkey)
            sent_pol = self._sent_policies.get(pkey)
            if state is None or state.rendered is None:
                if sent_pol is not None:
                    policy_removes.append(PolicyRemove(sent_pol[0]))
                    del self._sent_policies[pkey]
                continue
            pid = PolicyID(state.policy.tier, pkey)
            if sent_pol is not None and sent_pol[0] != pid:
                policy_removes.append(PolicyRemove(sent_pol[0]))
            if sent_pol != (pid, state.rendered):
                adds.append(PolicyUpdate(pid, state.rendered))
                self._sent_policies[pkey] = (pid, state.rendered)
        profile_removes: list[Update] = []
        for name in sorted(self._dirty_profiles):
            rendered = self._profile_rendered.get(name) if self._profile_refs.get(name) else None
            sent_prof = self._sent_profiles.get(name)
            if rendered is None:
                if sent_prof is not None:
                    profile_removes.append(ProfileRemove(name))
                    del self._sent_profiles[name]
                continue
            if sent_prof != rendered[0]:
                adds.append(rendered[0])
                self._sent_profiles[name] = rendered[0]
        for name in sorted(self._dirty_pools):
            pool = self._pools.get(name)
            if pool is None:
                if self._sent_pools.pop(name, None) is not None:
                    removes.append(IPPoolRemove(name))
            elif self._sent_pools.get(name) != pool:
                adds.append(IPPoolUpdate(name, pool))
                self._sent_pools[name] = pool
        for svc_key in sorted(self._dirty_services):
            svc = self._services.get(svc_key)
            if svc is None:
                if self._sent_services.pop(svc_key, None) is not None:
                    removes.append(ServiceRemove(svc_key))
                continue
            slices = tuple(s for _, s in sorted(self._slices_by_service.get(svc_key, {}).items()))
            update = ServiceUpdate(svc_key, svc, slices)
            if self._sent_services.get(svc_key) != update:
                adds.append(update)
                self._sent_services[svc_key] = update
        endpoint_removes: list[Update] = []
        for item in sorted(self._dirty_endpoints):
            kind, key = item
            if kind == "netset":
                continue
            info = self._endpoint_update(item)
            sent_table: dict = self._sent_weps if kind == "wep" else self._sent_heps
            if info is None:
                if sent_table.pop(key, None) is not None:
                    endpoint_removes.append(
                        WorkloadEndpointRemove(key) if kind == "wep" else HostEndpointRemove(key))
                continue
            if sent_table.get(key) != info:
                sent_table[key] = info
                adds.append(WorkloadEndpointUpdate(key, info) if isinstance(info, WorkloadEndpointInfo)
                            else HostEndpointUpdate(key, info))
        self._dirty_endpoints.clear()
        self._dirty_policies.clear()
        self._dirty_profiles.clear()
        self._dirty_ipsets.clear()
        self._dirty_services.clear()
        self._dirty_pools.clear()
        route_adds, route_removes = self.routes.flush()
        adds.extend(route_adds)
        removes.extend(route_removes)
        return adds + endpoint_removes + removes + profile_removes + policy_removes + ipset_removes

    # ------------------------------------------------------------------ queries

    @property
    def ip_pools(self) -> list[IPPool]:
        """The datastore's IP pools (IPAM picks from these)."""
        return list(self._pools.values())

    def ipset_members(self, sid: str) -> frozenset[str]:
        return frozenset(self._ipset_members.get(sid, ()))

    @property
    def label_evaluations(self) -> int:
        return self._policy_index.evaluations + self._ipset_index.evaluations

    def stats(self) -> dict[str, int]:
        return {
            "endpoints": len(self._sent_weps) + len(self._sent_heps),
            "policies": len(self._sent_policies),
            "profiles": len(self._sent_profiles),
            "ipsets": len(self._sent_ipsets),
            "services": len(self._sent_services),
            "routes": len(self.routes),
        }


def _addresses(resource: Resource) -> list:
    if isinstance(resource, WorkloadEndpoint):
        return [n.network_address for n in resource.nets]
    if isinstance(resource, HostEndpoint):
        return list(resource.expected_ips)
    return []


__all__ = ["CalcGraph", "policy_selector", "RenderedRule"]
