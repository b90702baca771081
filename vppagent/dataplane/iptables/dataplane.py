"""``IptablesDataplane``: the update stream → reconciler keys for chains and sets.

Each update re-renders only what it affects: an IP set its two kernel sets
(and, when it appears, disappears or changes type, the policies using it);
a policy its chains (and, when it appears or disappears, the endpoints
jumping to it); an endpoint its chains (and the dispatch chains when its
interface is new). Chains shared by many objects (``cali-SERVICES``, the
dispatch chains) are rendered once per batch, just before the commit.
"""

from __future__ import annotations

import logging
import socket
from collections import defaultdict
from typing import Any, Callable, Hashable, Iterable, Iterator, Mapping

from vppagent.dataplane.linux import LinuxDataplane
from vppagent.dataplane.iptables.backend import Iptables, detect_backend
from vppagent.dataplane.iptables.commands import Runner
from vppagent.dataplane.iptables.conntrack import forget_udp
from vppagent.dataplane.iptables.config import IptablesConfig
from vppagent.dataplane.iptables.descriptor import KernelDescriptor
from vppagent.dataplane.iptables.endpoints import (
    WL_FROM_DISPATCH, WL_TO_DISPATCH, EndpointSettings, dispatch_chains, host_chains, host_dispatch, wl_chain,
    workload_chains,
)
from vppagent.dataplane.iptables.ipsets import ipset_kind, set_value
from vppagent.dataplane.iptables.match import MatchContext
from vppagent.dataplane.iptables.model import IPSetKey
from vppagent.dataplane.iptables.names import ipset_name
from vppagent.dataplane.iptables.policy import policy_chains, policy_table, profile_chains
from vppagent.dataplane.iptables.pools import pool_items
from vppagent.dataplane.iptables.services import ServiceRender, render_service, shared_chains
from vppagent.dataplane.iptables.static import mangle_chains, raw_chains, static_chains
from vppagent.dataplane.service_plan import Backend, Frontend, plan_service, stale_udp_backends
from vppagent.model.state import DataplaneState
from vppagent.model.updates import (
    HostEndpointRemove, HostEndpointUpdate, IPPoolRemove, IPPoolUpdate, IPSetDeltaUpdate, IPSetRemove,
    IPSetType, IPSetUpdate, PolicyID, PolicyRemove, PolicyUpdate, ProfileRemove, ProfileUpdate,
    RenderedRule, ServiceRemove, ServiceUpdate, TierInfo, Update, WorkloadEndpointRemove,
    WorkloadEndpointUpdate,
)
from vppagent.model.updates import RouteRemove, RouteUpdate
from vppagent.reconciler import Reconciler, Report

log = logging.getLogger(__name__)

# Pod wiring (veths, routes, proxy ARP) comes from the Linux base; policy is ours.
BaseDataplane = LinuxDataplane

Owner = Hashable


class _SetTypes(Mapping[str, IPSetType]):
    """A read-only view of the state's IP set types (no copy per render)."""

    def __init__(self, ipsets: Mapping[str, tuple[IPSetType, frozenset[str]]]) -> None:
        self._ipsets = ipsets

    def __getitem__(self, key: str) -> IPSetType:
        return self._ipsets[key][0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ipsets)

    def __len__(self) -> int:
        return len(self._ipsets)


class _BatchingReconciler(Reconciler):
    """Calls ``before`` ahead of every commit and ``after`` with its report."""

    def __init__(self, before: Callable[[], None], after: Callable[[Report], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._before = before
        self._after = after

    def commit(self) -> Report:
        self._before()
        report = super().commit()
        self._after(report)
        return report

    def resync(self) -> Report:
        self._before()
        return super().resync()


def _rule_sets(rules: Iterable[RenderedRule]) -> set[str]:
    return {sid for r in rules for sid in r.ip_set_ids()}


def _tier_policies(tiers: Iterable[TierInfo]) -> set[PolicyID]:
    return {PolicyID(t.name, p) for t in tiers for p in t.ingress_policies + t.egress_policies}


def _frontend_key(f: Frontend) -> tuple:
    return (f.service, f.port_name, f.kind, f.ip, f.port, f.protocol, f.family)


class IptablesDataplane(BaseDataplane):
    """Policy, services and host endpoints in iptables + ipset (Felix's layout)."""

    name = "iptables"

    def __init__(self, config: IptablesConfig | None = None, *, runner: Runner | None = None,
                 **kwargs: Any) -> None:
        self.config = config or IptablesConfig()
        kwargs.setdefault("refresh_interval", self.config.refresh_interval or None)
        super().__init__(**kwargs)
        plain = self.reconciler
        self.reconciler = _BatchingReconciler(self._flush_shared, self._after_commit,
                                              clock=self._clock, backoff=kwargs.get("backoff"))
        for descriptor in getattr(plain, "_descriptors", ()):   # anything a base class registered
            self.reconciler.register(descriptor)
        self.runner = runner or Runner(self.config.netns)
        self.marks = self.config.marks
        self.families = self.config.families
        self.settings = EndpointSettings(
            marks=self.marks, drop_invalid=self.config.drop_invalid,
            failsafe_inbound=self.config.failsafe_inbound, failsafe_outbound=self.config.failsafe_outbound,
            interface_prefixes=self.config.interface_prefixes,
        )
        self.node_name: str | None = self.config.node_name
        self.backend: str | None = None if self.config.backend == "auto" else self.config.backend
        self._tools: Iptables | None = None
        self.kernel = KernelDescriptor(self.runner, self.families, self.tools)
        self.reconciler.register(self.kernel)
        self._set_kinds: dict[str, IPSetType] = {}
        self._set_users: dict[str, set[Owner]] = defaultdict(set)
        self._owner_sets: dict[Owner, set[str]] = {}
        self._policy_users: dict[PolicyID, set[Owner]] = defaultdict(set)
        self._profile_users: dict[str, set[Owner]] = defaultdict(set)
        self._endpoint_refs: dict[Owner, tuple[set[PolicyID], set[str]]] = {}
        self._policy_tables: dict[PolicyID, str] = {}
        self._wep_ifaces: dict[str, str] = {}
        self._svc_renders: dict[str, ServiceRender] = {}
        self._frontends: dict[str, dict[tuple, Frontend]] = {}
        self._stale: list[tuple[Frontend, Backend]] = []
        self._dirty: set[str] = {"wl-dispatch", "hep-dispatch", "services", "pools"}
        items: dict = {}
        for fam in self.families:
            items.update(static_chains(fam, self.settings, self.config.endpoint_to_host_action))
        self.set_group(("static",), items)

    @classmethod
    def from_config(cls, options: Mapping[str, Any]) -> "IptablesDataplane":
        return cls(IptablesConfig.from_mapping(options))

    # -- backend ---------------------------------------------------------------------------

    def connect(self) -> None:
        if self.backend is None:
            self.backend = detect_backend(self.runner)
            log.info("iptables backend: %s (detected)", self.backend)
        self._tools = Iptables(self.runner, self.backend)

    def tools(self) -> Iptables:
        if self._tools is None:
            self.connect()
        assert self._tools is not None
        return self._tools

    def dump(self) -> dict[str, Any]:
        out = super().dump()
        out.update(backend=self.backend, netns=self.config.netns, node=self.node_name)
        return out

    # -- updates -----------------------------------------------------------------------------

    def on_update(self, update: Update, state: DataplaneState) -> None:
        match update:
            case IPSetUpdate(id=i) | IPSetDeltaUpdate(id=i) | IPSetRemove(id=i):
                self._on_ipset(i, state)
            case PolicyUpdate(id=pid) | PolicyRemove(id=pid):
                self._on_policy(pid, state)
            case ProfileUpdate(id=i) | ProfileRemove(id=i):
                self._on_profile(i, state)
            case WorkloadEndpointUpdate(id=i) | WorkloadEndpointRemove(id=i):
                self._on_workload(i, state)
            case HostEndpointUpdate(id=i) | HostEndpointRemove(id=i):
                self._on_host(i, state)
            case ServiceUpdate(id=i) | ServiceRemove(id=i):
                self._on_service(i, state)
            case IPPoolUpdate() | IPPoolRemove():
                self._dirty.add("pools")
            case RouteUpdate() | RouteRemove():
                self.route_changed(update, state)
            case _:
                pass   # ConfigUpdate, InSync

    def _ctx(self, family: int, state: DataplaneState) -> MatchContext:
        return MatchContext(family, self.marks, _SetTypes(state.ipsets))

    def _on_ipset(self, set_id: str, state: DataplaneState) -> None:
        entry = state.ipsets.get(set_id)
        before = self._set_kinds.get(set_id)
        if entry is None:
            self.drop_group(("ipset", set_id))
            self._set_kinds.pop(set_id, None)
        else:
            kind, members = entry
            ip_port = kind is IPSetType.IP_AND_PORT
            self.set_group(("ipset", set_id), {
                IPSetKey(fam, ipset_name(fam, set_id, ip_port)): set_value(ipset_kind(kind), members, fam)
                for fam in self.families
            })
            self._set_kinds[set_id] = kind
        if self._set_kinds.get(set_id) != before:   # appeared, vanished or changed type
            for owner in list(self._set_users.get(set_id, ())):
                self._rerender(owner, state)

    def _rerender(self, owner: Owner, state: DataplaneState) -> None:
        kind, ident = owner   # type: ignore[misc]
        if kind == "policy":
            self._on_policy(ident, state)
        elif kind == "profile":
            self._on_profile(ident, state)
        elif kind == "wep":
            self._on_workload(ident, state)
        elif kind == "hep":
            self._on_host(ident, state)

    def _track_sets(self, owner: Owner, sets: set[str]) -> None:
        for sid in self._owner_sets.pop(owner, set()) - sets:
            users = self._set_users.get(sid)
            if users is not None:
                users.discard(owner)
                if not users:
                    del self._set_users[sid]
        for sid in sets:
            self._set_users[sid].add(owner)
        if sets:
            self._owner_sets[owner] = sets

    def _on_policy(self, pid: PolicyID, state: DataplaneState) -> None:
        owner = ("policy", pid)
        policy = state.policies.get(pid)
        before = self._policy_tables.get(pid)
        if policy is None:
            self.drop_group(owner)
            self._track_sets(owner, set())
            self._policy_tables.pop(pid, None)
        else:
            items: dict = {}
            for fam in self.families:
                items.update(policy_chains(pid, policy, self._ctx(fam, state), self.config.log_prefix))
            self.set_group(owner, items)
            self._track_sets(owner, _rule_sets(policy.inbound_rules + policy.outbound_rules))
            self._policy_tables[pid] = policy_table(policy)
        if self._policy_tables.get(pid) != before:
            for user in list(self._policy_users.get(pid, ())):
                self._rerender(user, state)

    def _on_profile(self, profile_id: str, state: DataplaneState) -> None:
        owner = ("profile", profile_id)
        profile = state.profiles.get(profile_id)
        existed = owner in self._groups
        if profile is None:
            self.drop_group(owner)
            self._track_sets(owner, set())
        else:
            items: dict = {}
            for fam in self.families:
                items.update(profile_chains(profile, self._ctx(fam, state), self.config.log_prefix))
            self.set_group(owner, items)
            self._track_sets(owner, _rule_sets(profile.inbound_rules + profile.outbound_rules))
        if (profile is not None) != existed:
            for user in list(self._profile_users.get(profile_id, ())):
                self._rerender(user, state)

    def _track_endpoint(self, owner: Owner, policies: set[PolicyID], profiles: set[str]) -> None:
        old_pol, old_prof = self._endpoint_refs.pop(owner, (set(), set()))
        for pid in old_pol - policies:
            self._policy_users[pid].discard(owner)
        for prof in old_prof - profiles:
            self._profile_users[prof].discard(owner)
        for pid in policies:
            self._policy_users[pid].add(owner)
        for prof in profiles:
            self._profile_users[prof].add(owner)
        if policies or profiles:
            self._endpoint_refs[owner] = (policies, profiles)

    def _on_workload(self, wep_id: str, state: DataplaneState) -> None:
        owner = ("wep", wep_id)
        ep = state.workload_endpoints.get(wep_id)
        before = self._wep_ifaces.get(wep_id)
        if ep is None or not ep.interface_name:
            if ep is not None:
                log.warning("workload endpoint %s has no interface name: not policed", wep_id)
            self.drop_group(owner)
            self._track_endpoint(owner, set(), set())
            self._wep_ifaces.pop(wep_id, None)
        else:
            items: dict = {}
            for fam in self.families:
                items.update(workload_chains(ep, fam, state.policies, state.profiles, self.settings))
            self.set_group(owner, items)
            self._track_endpoint(owner, _tier_policies(ep.tiers), set(ep.profile_ids))
            self._wep_ifaces[wep_id] = ep.interface_name
            self._learn_node(ep.node, state)
        if self._wep_ifaces.get(wep_id) != before:
            self._dirty.add("wl-dispatch")

    def _on_host(self, hep_id: str, state: DataplaneState) -> None:
        owner = ("hep", hep_id)
        hep = state.host_endpoints.get(hep_id)
        if hep is None:
            self.drop_group(owner)
            self._track_endpoint(owner, set(), set())
        else:
            items: dict = {}
            for fam in self.families:
                items.update(host_chains(hep, fam, state.policies, state.profiles, self.settings))
            self.set_group(owner, items)
            tiers = hep.tiers + hep.untracked_tiers + hep.pre_dnat_tiers
            self._track_endpoint(owner, _tier_policies(tiers), set(hep.profile_ids))
            self._learn_node(hep.node, state)
        self._dirty.add("hep-dispatch")

    def _learn_node(self, node: str, state: DataplaneState) -> None:
        """Without ``nodeName`` configured, this node is the one its endpoints name
        (the calculation only sends this node's endpoints)."""
        if self.node_name is None and node:
            self.node_name = node
            for svc_id in list(state.services):
                self._on_service(svc_id, state, forget_stale=False)

    def _on_service(self, svc_id: str, state: DataplaneState, forget_stale: bool = True) -> None:
        owner = ("service", svc_id)
        update = state.services.get(svc_id)
        before = self._frontends.pop(svc_id, {})
        if update is None:
            self.drop_group(owner)
            self._svc_renders.pop(svc_id, None)
        else:
            node = self.node_name or socket.gethostname()
            frontends = [f for f in plan_service(update, node) if f.family in self.families]
            render = render_service(frontends, self.marks)
            self.set_group(owner, render.chains)
            self._svc_renders[svc_id] = render
            self._frontends[svc_id] = {_frontend_key(f): f for f in frontends}
        after = self._frontends.get(svc_id, {}) if forget_stale else before
        for key, old in before.items():
            self._stale += [(old, b) for b in stale_udp_backends(old, after.get(key))]
        self._dirty.add("services")

    # -- shared chains, once per batch ----------------------------------------------------------

    def _flush_shared(self) -> None:
        dirty, self._dirty = self._dirty, set()
        state = self.state
        prefixes = self.config.interface_prefixes
        if "wl-dispatch" in dirty:
            ifaces = sorted(set(self._wep_ifaces.values()))
            items: dict = {}
            for fam in self.families:
                items.update(dispatch_chains(fam, "filter", WL_TO_DISPATCH, "-o",
                                             {i: wl_chain(True, i) for i in ifaces}, prefixes, "DROP"))
                items.update(dispatch_chains(fam, "filter", WL_FROM_DISPATCH, "-i",
                                             {i: wl_chain(False, i) for i in ifaces}, prefixes, "DROP"))
            self.set_group(("wl-dispatch",), items)
        if "hep-dispatch" in dirty:
            heps = [h for _, h in sorted(state.host_endpoints.items())]
            untracked = [h for h in heps if h.untracked_tiers]
            pre_dnat = [h for h in heps if h.pre_dnat_tiers]
            items = {}
            for fam in self.families:
                for inbound in (True, False):
                    items.update(host_dispatch(fam, "filter", heps, inbound, prefixes))
                if untracked:
                    items.update(raw_chains(fam, self.marks))
                    for inbound in (True, False):
                        items.update(host_dispatch(fam, "raw", untracked, inbound, prefixes))
                if pre_dnat:
                    items.update(mangle_chains(fam, self.marks))
                    items.update(host_dispatch(fam, "mangle", pre_dnat, True, prefixes))
            self.set_group(("hep-dispatch",), items)
        if "services" in dirty:
            self.set_group(("services",), shared_chains(
                (r for _, r in sorted(self._svc_renders.items())), self.families))
        if "pools" in dirty:
            self.set_group(("pools",), pool_items((p for _, p in sorted(state.pools.items())), self.families))

    # -- conntrack ------------------------------------------------------------------------------

    def _after_commit(self, report: Report) -> None:
        if report.deferred or not self._stale:
            return
        stale, self._stale = self._stale, []
        for frontend, backend in stale:
            forget_udp(self.runner, frontend, backend)
