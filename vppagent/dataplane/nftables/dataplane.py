"""The nftables dataplane: Calico policy, host endpoints and kube-proxy's job.

Each model object becomes a group of reconciler keys (chains, sets, map
elements) in one private ``inet`` table; each commit is one nft transaction
of only the keys that changed. Endpoint chains name only the policies and
profiles that exist, so when one appears or goes away the endpoints naming
it are re-rendered; policy chains need the types of the IP sets they use, so
a policy rendered before its set arrived is re-rendered when it does.

Services are planned by ``service_plan`` (shared with every dataplane); when
a UDP backend goes away its conntrack entries are deleted, after the
transaction that removed it has been committed.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Hashable, Mapping, Sequence

from vppagent.dataplane.linux import LinuxDataplane
from vppagent.dataplane.nftables import skeleton
from vppagent.dataplane.nftables.config import NftablesConfig
from vppagent.dataplane.nftables.descriptor import NftDescriptor
from vppagent.dataplane.nftables.ipsets import ipset_values
from vppagent.dataplane.nftables.objects import NftKey
from vppagent.dataplane.nftables.policy import PolicyRenderer, endpoint_refs, host_refs, policy_ref, profile_ref
from vppagent.dataplane.nftables.runner import CommandRunner
from vppagent.dataplane.nftables.services import conntrack_filters, frontend_id, render_frontend
from vppagent.dataplane.service_plan import Frontend, plan_service, stale_udp_backends
from vppagent.model.state import DataplaneState
from vppagent.model.updates import (
    HostEndpointRemove, HostEndpointUpdate, IPPoolRemove, IPPoolUpdate, IPSetDeltaUpdate,
    IPSetRemove, IPSetType, IPSetUpdate, PolicyID, PolicyRemove, PolicyUpdate, ProfileRemove,
    ProfileUpdate, RenderedRule, ServiceRemove, ServiceUpdate, Update, WorkloadEndpointRemove,
    WorkloadEndpointUpdate,
)
from vppagent.model.updates import RouteRemove, RouteUpdate
from vppagent.reconciler import Backoff, KeyState

log = logging.getLogger(__name__)

# Pod wiring (CNI) comes from the shared Linux base; policy and services are ours.
_BASE = LinuxDataplane

Owner = tuple[str, str]


def _rules_set_ids(rules: Sequence[RenderedRule]) -> set[str]:
    return {sid for r in rules for sid in r.ip_set_ids()}


class NftablesDataplane(_BASE):
    name = "nftables"

    def __init__(self, config: NftablesConfig | None = None, *, runner: CommandRunner | None = None,
                 clock: Callable[[], float] = time.monotonic, backoff: Backoff | None = None) -> None:
        cfg = config or NftablesConfig()
        super().__init__(clock=clock, backoff=backoff, refresh_interval=cfg.refresh_interval)
        self.config = cfg
        self.runner = runner or CommandRunner(netns=cfg.netns)
        self.nft = NftDescriptor(self.runner, cfg.table)
        self.reconciler.register(self.nft)
        self.renderer = PolicyRenderer(cfg)
        self.node_name = cfg.node_name
        self._known: set[str] = set()                      # policy:/profile: refs that exist
        self._users: dict[str, set[Owner]] = {}            # ref → endpoint owners naming it
        self._endpoint_refs: dict[Owner, frozenset[str]] = {}
        self._set_users: dict[str, set[Owner]] = {}        # ip set id → policy/profile owners
        self._owner_sets: dict[Owner, set[str]] = {}
        self._policy_ids: dict[str, PolicyID] = {}
        self._frontends: dict[str, dict[str, Frontend]] = {}
        self._service_keys: dict[str, set[NftKey]] = {}
        self._conntrack: list[tuple[str, list[str]]] = []  # (service id, conntrack -D args)
        self.set_group(("skeleton", ""), skeleton.skeleton(cfg))
        self.set_group(("pools", ""), skeleton.pools(()))

    @classmethod
    def from_config(cls, options: Mapping[str, Any]) -> "NftablesDataplane":
        return cls(NftablesConfig.from_options(options))

    # -- update stream ------------------------------------------------------------------

    def on_update(self, update: Update, state: DataplaneState) -> None:
        match update:
            case IPSetUpdate(id=sid) | IPSetDeltaUpdate(id=sid):
                set_type, members = state.ipsets[sid]
                self.set_group(("ipset", sid), ipset_values(sid, set_type, members))
                if isinstance(update, IPSetUpdate):
                    for owner in list(self._set_users.get(sid, ())):
                        self._render_rules_owner(owner, state)
            case IPSetRemove(id=sid):
                self.drop_group(("ipset", sid))
            case PolicyUpdate(id=pid) | PolicyRemove(id=pid):
                self._policy_ids[str(pid)] = pid
                self._render_rules_owner(("policy", str(pid)), state)
                self._known_changed(policy_ref(pid), pid in state.policies, state)
                if pid not in state.policies:
                    del self._policy_ids[str(pid)]
            case ProfileUpdate(id=prof) | ProfileRemove(id=prof):
                self._render_rules_owner(("profile", prof), state)
                self._known_changed(profile_ref(prof), prof in state.profiles, state)
            case WorkloadEndpointUpdate(id=i) | WorkloadEndpointRemove(id=i):
                self._render_endpoint(("wep", i), state)
            case HostEndpointUpdate(id=i) | HostEndpointRemove(id=i):
                self._render_endpoint(("hep", i), state)
            case ServiceUpdate(id=i) | ServiceRemove(id=i):
                self._render_service(i, state)
            case IPPoolUpdate() | IPPoolRemove():
                self.set_group(("pools", ""), skeleton.pools(state.pools.values()))
            case RouteUpdate() | RouteRemove():
                self.route_changed(update, state)
            case _:
                pass      # ConfigUpdate, InSync: nothing to render

    def _set_type(self, state: DataplaneState) -> Callable[[str], IPSetType]:
        def lookup(sid: str) -> IPSetType:
            entry = state.ipsets.get(sid)
            return entry[0] if entry else IPSetType.NET
        return lookup

    def _render_rules_owner(self, owner: Owner, state: DataplaneState) -> None:
        """(Re-)render a policy's or profile's chains."""
        kind, ident = owner
        items: dict[Hashable, Any] = {}
        used: set[str] = set()
        if kind == "policy":
            pid = self._policy_ids[ident]
            policy = state.policies.get(pid)
            if policy is not None:
                items = dict(self.renderer.policy(pid, policy, self._set_type(state)))
                used = _rules_set_ids(policy.inbound_rules + policy.outbound_rules)
        else:
            prof = state.profiles.get(ident)
            if prof is not None:
                items = dict(self.renderer.profile(ident, prof.inbound_rules, prof.outbound_rules,
                                                   self._set_type(state)))
                used = _rules_set_ids(prof.inbound_rules + prof.outbound_rules)
        for sid in self._owner_sets.pop(owner, set()) - used:
            self._set_users.get(sid, set()).discard(owner)
        for sid in used:
            self._set_users.setdefault(sid, set()).add(owner)
        if used:
            self._owner_sets[owner] = used
        self.set_group(owner, items)

    def _known_changed(self, ref: str, exists: bool, state: DataplaneState) -> None:
        if exists == (ref in self._known):
            return
        if exists:
            self._known.add(ref)
        else:
            self._known.discard(ref)
        for owner in list(self._users.get(ref, ())):
            self._render_endpoint(owner, state)

    def _render_endpoint(self, owner: Owner, state: DataplaneState) -> None:
        kind, ident = owner
        known = self._known.__contains__
        items: dict[Hashable, Any] = {}
        refs: frozenset[str] = frozenset()
        if kind == "wep" and ident in state.workload_endpoints:
            info = state.workload_endpoints[ident]
            items = dict(self.renderer.workload(info, known))
            refs = endpoint_refs(info.tiers, info.profile_ids)
            self._learn_node(info.node, state)
        elif kind == "hep" and ident in state.host_endpoints:
            hinfo = state.host_endpoints[ident]
            items = dict(self.renderer.host(hinfo, known))
            refs = host_refs(hinfo)
            self._learn_node(hinfo.node, state)
        for ref in self._endpoint_refs.pop(owner, frozenset()) - refs:
            self._users.get(ref, set()).discard(owner)
        for ref in refs:
            self._users.setdefault(ref, set()).add(owner)
        if refs:
            self._endpoint_refs[owner] = refs
        self.set_group(owner, items)

    def _learn_node(self, node: str, state: DataplaneState) -> None:
        """Without ``nodeName`` configured, this node is the one its endpoints name."""
        if self.node_name is None and node:
            self.node_name = node
            for sid in list(state.services):
                self._render_service(sid, state)

    # -- services ------------------------------------------------------------------------

    def _render_service(self, sid: str, state: DataplaneState) -> None:
        update = state.services.get(sid)
        before = self._frontends.pop(sid, {})
        after = {frontend_id(fe): fe for fe in plan_service(update, self.node_name or "")} if update else {}
        items: dict[Hashable, Any] = {}
        for fe in after.values():
            items.update(render_frontend(fe))
        for fid, old in before.items():
            new = after.get(fid)
            if old.protocol != 17:
                continue
            for backend in stale_udp_backends(old, new):
                self._conntrack.append((sid, conntrack_filters(old, str(backend.ip))))
        for fid, new in after.items():
            old = before.get(fid)
            if new.protocol == 17 and old is not None and old.rejects and not new.rejects:
                self._conntrack.append((sid, conntrack_filters(new, None)))
        if after:
            self._frontends[sid] = after
            self._service_keys[sid] = set(items)
        else:
            self._service_keys.pop(sid, None)
        self.set_group(("service", sid), items)

    def _flush_conntrack(self) -> None:
        """Delete stale UDP flows once the change that made them stale is in the kernel."""
        if not self._conntrack or not self.state.in_sync:
            return
        waiting: list[tuple[str, list[str]]] = []
        for sid, args in self._conntrack:
            keys = self._service_keys.get(sid, set())
            if any(self.reconciler.state(k).state is not KeyState.CONFIGURED for k in keys):
                waiting.append((sid, args))
                continue
            try:
                n = self.runner.conntrack_delete(args)
                log.debug("deleted %d stale conntrack entries (%s)", n, " ".join(args))
            except Exception as exc:   # retried on the next periodic run
                self._last_error = f"conntrack: {exc}"
                waiting.append((sid, args))
        self._conntrack = waiting

    # -- Dataplane -----------------------------------------------------------------------

    def apply(self, updates: Sequence[Update]) -> None:
        super().apply(updates)
        self._flush_conntrack()

    def run_periodic(self) -> None:
        super().run_periodic()
        self._flush_conntrack()

    def dump(self) -> dict[str, Any]:
        out = super().dump()
        last = self.nft.transactions[-1] if self.nft.transactions else None
        out.update(table=f"inet {self.config.table}", netns=self.config.netns, node=self.node_name,
                   transactions={"sent": self.nft.sent, "failed": self.nft.failed,
                                 "last_lines": last.lines if last else 0,
                                 "last_error": last.error if last else None})
        return out
