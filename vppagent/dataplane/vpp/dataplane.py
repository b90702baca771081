"""The VPP dataplane: pods, policy and services programmed over VPP's binary API.

Two reconcilers share one ``VppConnection`` (owned by the agent's thread):
``self.pods`` wires pods (desired state from CNI, persisted, complete from
the start) and ``self.reconciler`` holds policy and services (desired state
from the update stream, written after ``InSync``).  Every object carries a
``vppagent:`` tag or is recorded in the state store, so a restarted agent
adopts what it finds without rewriting it, deletes what is ours and no
longer wanted, and never touches anything else.

When VPP goes away (socket lost, pid changed, no answer) the dataplane turns
not-ready, reconnects with backoff from ``run_periodic`` and reprograms the
new instance from desired state: pods first, then policy.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import time
from typing import Any, Callable, ContextManager, Mapping, Sequence

from vppagent.dataplane.base import (
    DataplaneStatus, ReconcilingDataplane, WiredWorkload, WiringError, WorkloadWiring,
)
from vppagent.dataplane.vpp.acl_desc import AclBindingDescriptor, AclDescriptor
from vppagent.dataplane.vpp.config import HostInterface, VppConfig
from vppagent.dataplane.vpp.context import ALL, Context
from vppagent.dataplane.vpp.groups import KeyGroups
from vppagent.dataplane.vpp.iface_desc import CnatFeatureDescriptor, IfaceRefDescriptor
from vppagent.dataplane.vpp.ipsets import set_members
from vppagent.dataplane.vpp.keys import CnatFeatureKey, CnatFeatureValue, IfaceRefKey, IfaceRefValue, NpolSetKey, NpolSetValue
from vppagent.dataplane.vpp.names import epoch_name, parse
from vppagent.dataplane.vpp.npol_desc import NpolIfaceDescriptor, NpolPolicyDescriptor, NpolSetDescriptor
from vppagent.dataplane.vpp.podlinux import PodLinux
from vppagent.dataplane.vpp.pods import PodNetwork
from vppagent.dataplane.vpp.policy import Rendered, render
from vppagent.dataplane.vpp.routes import Local, NodeRoutes, route_descriptors
from vppagent.dataplane.vpp.store import StateStore
from vppagent.model.state import DataplaneState
from vppagent.model.updates import (
    HostEndpointRemove, HostEndpointUpdate, IPPoolRemove, IPPoolUpdate, IPSetDeltaUpdate, IPSetRemove, IPSetUpdate,
    PolicyRemove, PolicyUpdate, ProfileRemove, ProfileUpdate, ServiceRemove, ServiceUpdate, Update,
    WorkloadEndpointRemove, WorkloadEndpointUpdate,
)
from vppagent.model.updates import RouteRemove, RouteUpdate
from vppagent.reconciler import Backoff, KeyState, Reconciler, Report
from vppagent.vpp.connection import VppConnection
from vppagent.vpp.errors import VppApiMismatch, VppError

log = logging.getLogger(__name__)

try:   # cnat translations for services (another module; optional until it exists)
    from vppagent.dataplane.vpp import services as _services
except ImportError:            # pragma: no cover - depends on the tree
    _services = None

# A lost VPP is usually being restarted by its manager (a few seconds); trying a unix socket
# is cheap, so keep trying every second rather than backing off for longer.
RECONNECT = Backoff(base=0.2, factor=2.0, max=1.0)


class VppDataplane(ReconcilingDataplane):
    name = "vpp"

    def __init__(self, config: VppConfig | None = None, *, client_factory: Callable[..., Any] | None = None,
                 linux: PodLinux | None = None, clock: Callable[[], float] = time.monotonic,
                 backoff: Backoff | None = None) -> None:
        cfg = config or VppConfig()
        super().__init__(name="vpp", clock=clock, backoff=backoff, refresh_interval=cfg.refresh_interval)
        self.config = cfg
        self._backoff = backoff
        self.conn = VppConnection(cfg.socket, cfg.client_name, client_factory, timeout=cfg.timeout)
        self.store = StateStore(cfg.state_dir)
        self.pods = PodNetwork(cfg, self.conn, self.store, linux or PodLinux(cfg.vpp_netns),
                               uplink_mtu=self._uplink_mtu, backoff=backoff)
        self.engine: str = ""
        self.groups = KeyGroups(lambda: self.reconciler)
        self._rendered: dict[str, Rendered] = {}
        self._dirty: set[str] = set()
        self._refs: dict[str, IfaceRefValue] = {}
        self._host_indexes: dict[str, int] = {}
        self._uplink_mtu_cache: int | None = None
        self._reconnect_attempt = 0
        self._next_reconnect = 0.0
        self._restarts = 0
        self._hosts_changed = False
        self._services_dirty = False                # services or pools changed: plan once per apply
        self._service_plans: dict[str, tuple[Any, list[Any]]] = {}   # id -> (ServiceUpdate, frontends)
        self._svc_store: Any = None
        self._leaving: set[str] = set()
        self._wep_iface: dict[str, str] = {}        # endpoint id -> its interface
        self._iface_wep: dict[str, str] = {}        # interface -> endpoint id
        self._node_addrs: list[Any] = []
        self.node_routes = NodeRoutes(self.set_group, self._route_local)   # other nodes' blocks
        self._snat: Any = None                      # the services' SnatConfig (None: no SNAT entry)
        self.reconciler = self._new_reconciler()

    @classmethod
    def from_config(cls, options: Mapping[str, Any]) -> "VppDataplane":
        return cls(VppConfig.from_options(options))

    # ------------------------------------------------------------ reconciler

    def _new_reconciler(self, previous: Reconciler | None = None) -> Reconciler:
        r = Reconciler(clock=self._clock, backoff=self._backoff)
        ctx = Context(self.conn, self.store, lambda key: self.reconciler.metadata(key))
        acls = AclDescriptor(ctx)
        for desc in (IfaceRefDescriptor(), CnatFeatureDescriptor(ctx), NpolSetDescriptor(ctx),
                     NpolPolicyDescriptor(ctx), NpolIfaceDescriptor(ctx), acls,
                     AclBindingDescriptor(ctx, acls, self._ifname_of)):
            r.register(desc)
        self._services_descriptor(r, ctx)
        for desc in route_descriptors(ctx, lambda key: self.reconciler.desired_map.get(key)):
            r.register(desc)
        if previous is not None:
            for key, value in previous.desired().items():
                r.set(key, value)
            if previous.in_sync:
                r.mark_in_sync()
        return r

    def _services_descriptor(self, r: Reconciler, ctx: Context) -> None:
        """Services (cnat translations, reject routes, SNAT) from ``services.py``."""
        if _services is None or not hasattr(_services, "service_descriptors"):
            return
        if self._svc_store is None:
            path = os.path.join(self.config.state_dir, "cnat-ownership.json") if self.config.state_dir else None
            self._svc_store = _services.OwnershipStore(path)
        try:
            descriptors = _services.service_descriptors(self.conn, store=self._svc_store)
        except Exception as exc:     # services must never take policy and pods down with them
            log.error("services are not available: %s", exc)
            self._last_error = f"services: {exc}"
            return
        for desc in descriptors:
            r.register(desc)

    def _ifname_of(self, sw_if_index: int) -> str | None:
        for name, ref in self._refs.items():
            if ref.sw_if_index == sw_if_index:
                return name
        return None

    # ------------------------------------------------------------ connecting

    def connect(self) -> None:
        """Connect, check the message table, prepare VPP (cnat, epoch), choose the policy engine."""
        self.conn.connect()
        self._prepare()

    def _prepare(self) -> None:
        # cnat keeps per-table session counters that only tables bound after its
        # (lazy) initialisation get: initialise it before any pod table exists.
        self.conn.call("feature_cnat_enable_disable", sw_if_index=0, enable_disable=False)
        self._check_epoch()
        self.engine = self._choose_engine()
        self._uplink_mtu_cache = None
        log.info("VPP %s: policy engine %s", self.conn.version, self.engine)

    def _choose_engine(self) -> str:
        npol, acl = self.conn.has_module("npol"), self.conn.has_module("acl")
        want = self.config.policy
        if want == "acl" or (want == "auto" and not npol):
            if not acl:
                raise VppApiMismatch(["acl plugin"], [], self.conn.version)
            return "acl"
        if not npol:
            raise VppApiMismatch(["npol plugin"], [], self.conn.version)
        return "hybrid" if acl else "npol"

    def _check_epoch(self) -> None:
        """Same VPP instance as the state store describes? Otherwise forget its objects."""
        tables = self.conn.dump("ip_table_dump")
        mine = {str(t.table.name): int(t.table.table_id) for t in tables
                if not t.table.is_ip6 and (p := parse(str(t.table.name))) and p[0] == "epoch"}
        if self.store.epoch and epoch_name(self.store.epoch) in mine:
            return
        if self.store.epoch:
            log.info("VPP is a new instance (epoch %s not found): reprogramming everything", self.store.epoch)
        epoch = self.store.new_epoch()
        used = {int(t.table.table_id) for t in tables if not t.table.is_ip6}
        table_id = self.config.vrf_base
        while table_id in used:
            table_id += 1
        calls = [("ip_table_add_del", {"is_add": False, "table": {"table_id": tid, "is_ip6": False}})
                 for tid in mine.values()]
        calls.append(("ip_table_add_del", {"is_add": True, "table": {"table_id": table_id, "is_ip6": False,
                                                                     "name": epoch_name(epoch)}}))
        self.conn.pipeline(calls)
        self.store.save()

    def disconnect(self) -> None:
        self.conn.disconnect()

    def start(self) -> None:
        """Connect and read back (writing nothing of policy before in-sync); a VPP
        that is not there yet is retried from ``run_periodic``."""
        try:
            self.connect()
        except VppApiMismatch:
            raise
        except VppError as exc:
            log.warning("VPP not reachable at start (%s); retrying", exc)
            self._last_error = f"VPP not reachable: {exc}"
            self._connected = False
            self._next_reconnect = self._clock()
            return
        self._connected = True
        self._after_connect()

    def _after_connect(self) -> None:
        self._read_node_addresses()
        self._services_changed(self.state)
        self.pods.restore_linux()
        self.pods.resync()
        self._sync_refs()
        self.node_routes.refresh()
        self._render_dirty()
        with self._ownership_batch():
            errors = self.reconciler.read_actual()
        if errors:
            self._last_error = errors[-1]
        if self.state.in_sync:
            self._commit(resync=True)

    def _reconnect(self) -> None:
        """One reconnect attempt (the agent loop calls run_periodic again)."""
        if self._clock() < self._next_reconnect:
            return
        try:
            new = self.conn.reconnect(max_attempts=1, sleep=lambda _: None)
        except VppApiMismatch as exc:
            self._last_error = str(exc)
            raise
        except VppError as exc:
            self._reconnect_attempt += 1
            self._next_reconnect = self._clock() + RECONNECT.delay(self._reconnect_attempt)
            self._last_error = f"VPP not reachable: {exc}"
            return
        self._reconnect_attempt = 0
        try:
            self._prepare()
        except VppError as exc:
            self._last_error = f"cannot prepare VPP: {exc}"
            return
        self._restarts += int(new)
        log.warning("reconnected to VPP %s (pid %s)%s", self.conn.version, self.conn.vpe_pid,
                    ": new instance, reprogramming" if new else "")
        self._rebuild()
        self._connected = True
        self._last_error = None          # "VPP not reachable" is over; what follows reports afresh
        self._after_connect()

    def _rebuild(self) -> None:
        """Fresh reconcilers (no failure history, nothing believed to exist)."""
        self.pods.rebuild()
        self.groups.reset()
        self.reconciler = self._new_reconciler(self.reconciler)
        self._refs = {}
        self._dirty.update(self._rendered)

    def _lost(self, reason: str) -> None:
        if self._connected:
            log.warning("lost VPP: %s", reason)
        self._connected = False
        self._last_error = f"VPP lost: {reason}"
        self._next_reconnect = self._clock()

    def _check_connection(self) -> bool:
        if self._connected and not self.conn.connected:
            self._lost("the API connection broke")
        return self._connected

    # ------------------------------------------------------------ interfaces

    def _read_node_addresses(self) -> None:
        """The uplink's addresses: where NodePorts listen and what masquerades."""
        name = self.config.uplink_interface
        self._node_addrs = []
        if not name:
            return
        for d in self.conn.dump("sw_interface_dump", sw_if_index=ALL):
            if str(d.interface_name) == name:
                idx = int(d.sw_if_index)
                for v6 in (False, True):
                    for a in self.conn.dump("ip_address_dump", sw_if_index=idx, is_ipv6=v6):
                        self._node_addrs.append(ipaddress.ip_interface(str(a.prefix)).ip)

    def _route_local(self) -> Local:
        """This node as routes to other nodes' blocks see it (uplink, its index and addresses)."""
        name = self.config.uplink_interface
        ref = self._refs.get(name) if name else None
        return Local(self.config.node_name or "", name, ref.sw_if_index if ref is not None else None,
                     tuple(self._node_addrs))

    def _uplink_mtu(self) -> int | None:
        name = self.config.uplink_interface
        if not name or not self.conn.connected:
            return None
        if self._uplink_mtu_cache is None:
            for d in self.conn.dump("sw_interface_dump", sw_if_index=ALL):
                if str(d.interface_name) == name:
                    self._uplink_mtu_cache = int(d.mtu[0]) or int(d.link_mtu)
        return self._uplink_mtu_cache

    def _host_interface(self, hep_name: str, node: str, iface: str) -> HostInterface | None:
        cfg = self.config.host_interfaces
        for name in (hep_name, f"{node}/{iface}", iface):
            if name in cfg:
                return cfg[name]
        return None

    def _wanted_host_interfaces(self) -> dict[str, str]:
        """VPP interface name → facing, for the host endpoints we have and the uplink."""
        out: dict[str, str] = {}
        for hep in self.state.host_endpoints.values():
            hi = self._host_interface(hep.name, hep.node, hep.interface_name)
            if hi is not None:
                out[hi.vpp_interface] = hi.facing
        return out

    def _sync_refs(self) -> None:
        """IfaceRef keys for wired pods and host endpoint interfaces (+ cnat on the latter)."""
        if not self.conn.connected:
            return
        refs: dict[str, IfaceRefValue] = {}
        for ifname, (idx, spec) in self.pods.interfaces().items():
            if ifname not in self._leaving:
                refs[ifname] = IfaceRefValue(idx, "pod", "host", spec.allowed_sources)
        hosts = self._wanted_host_interfaces()
        if self.config.uplink_interface:
            hosts.setdefault(self.config.uplink_interface, "uplink")
        if hosts:
            try:
                index = {str(d.interface_name): int(d.sw_if_index)
                         for d in self.conn.dump("sw_interface_dump", sw_if_index=ALL)}
            except VppError as exc:
                self._lost(str(exc))
                return
            for name, facing in hosts.items():
                if name in index and name not in refs:
                    refs[name] = IfaceRefValue(index[name], "host", facing)
        r = self.reconciler
        for name in self._refs.keys() - refs.keys():
            r.delete(IfaceRefKey(name))
            r.delete(CnatFeatureKey(name))
            self._dirty.add(name)
        for name, ref in refs.items():
            if self._refs.get(name) != ref:
                r.set(IfaceRefKey(name), ref)
                if ref.kind == "host":
                    r.set(CnatFeatureKey(name), CnatFeatureValue(ref.sw_if_index))
                self._dirty.add(name)
        self._refs = refs
        self._cnat_roles()

    def _wep_for(self, ifname: str) -> Any:
        wid = self._iface_wep.get(ifname)
        return self.state.workload_endpoints.get(wid) if wid is not None else None

    def _hep_for(self, ifname: str) -> Any:
        for hep in self.state.host_endpoints.values():
            hi = self._host_interface(hep.name, hep.node, hep.interface_name)
            if hi is not None and hi.vpp_interface == ifname:
                return hep
        return None

    def _render_dirty(self) -> None:
        if not self.engine:
            return
        dirty, self._dirty = self._dirty, set()
        for ifname in sorted(dirty):
            ref = self._refs.get(ifname)
            if ref is None:
                self.groups.drop_group(("iface", ifname))
                self._rendered.pop(ifname, None)
                continue
            wep = self._wep_for(ifname) if ref.kind == "pod" else None
            hep = self._hep_for(ifname) if ref.kind == "host" else None
            out = render(ifname, ref, self.engine, self.state, wep, hep, self.config.failsafe_inbound,
                         self.config.failsafe_outbound)
            for e in out.errors:
                log.error("%s: %s", ifname, e)
            self.groups.set_group(("iface", ifname), out.items)
            self._rendered[ifname] = out

    # ------------------------------------------------------------ update stream

    def on_update(self, update: Update, state: DataplaneState) -> None:
        match update:
            case IPSetUpdate(id=sid) | IPSetDeltaUpdate(id=sid):
                self._ipset_changed(sid, state, full=isinstance(update, IPSetUpdate))
            case IPSetRemove():
                pass          # whoever used it is re-rendered by the policy updates that follow
            case PolicyUpdate(id=pid) | PolicyRemove(id=pid):
                self._dirty.update(n for n, r in self._rendered.items() if pid in r.policies)
            case ProfileUpdate(id=prof) | ProfileRemove(id=prof):
                self._dirty.update(n for n, r in self._rendered.items() if prof in r.profiles)
            case WorkloadEndpointUpdate(id=wid) | WorkloadEndpointRemove(id=wid):
                old = self._wep_iface.pop(wid, None)
                ep = state.workload_endpoints.get(wid)
                if old is not None and self._iface_wep.get(old) == wid:
                    del self._iface_wep[old]
                    self._dirty.add(old)
                if ep is not None:
                    self._wep_iface[wid] = ep.interface_name
                    self._iface_wep[ep.interface_name] = wid
                    self._dirty.add(ep.interface_name)
            case HostEndpointUpdate() | HostEndpointRemove():
                self._dirty.update(n for n, r in self._refs.items() if r.kind == "host")
                self._hosts_changed = True
            case ServiceUpdate() | ServiceRemove() | IPPoolUpdate() | IPPoolRemove():
                # planned once in apply(): a batch of N services would otherwise re-plan all of
                # them N times (pools: SNAT exclusions and natOutgoing roles)
                self._services_dirty = True
            case RouteUpdate(id=rid) | RouteRemove(id=rid):
                entry = state.routes.get(rid)
                self.node_routes.changed(rid, entry.route if entry is not None else None)
            case _:
                pass

    def _ipset_changed(self, sid: str, state: DataplaneState, full: bool) -> None:
        for key in list(self.groups.keys()):
            if isinstance(key, NpolSetKey) and sid in key.ids:
                members = set_members(key, state.ipsets)
                if members is not None:
                    self.groups.update_value(key, NpolSetValue(members))
        for name, r in self._rendered.items():
            if sid in r.acl_sets:
                self._dirty.add(name)
            elif full and any(isinstance(k, NpolSetKey) and sid in k.ids for k in r.items):
                self._dirty.add(name)        # the set's type may have changed

    def _services_changed(self, state: DataplaneState) -> None:
        """cnat translations for every service frontend (``services.py``)."""
        self._services_dirty = False
        if _services is None or not hasattr(_services, "desired_service_state"):
            return
        frontends = self._frontends(state)
        snat = None
        if self._node_addrs:
            snat = _services.SnatConfig.for_node(self._node_addrs,
                                                 pool_cidrs=[p.pool.cidr for p in state.pools.values()])
        self._snat = snat
        # The agent turns cnat's feature on for the uplink (npol sees external traffic only there),
        # where VPP 26.10 cannot reject on node addresses: such ports are left to the node's
        # Linux, which the node's punt redirect reaches (see services.py).
        options = _services.ServiceOptions(node_address_rejects=not self.config.uplink_interface)
        self.set_group("services", _services.desired_service_state(frontends, self._node_addrs, snat=snat,
                                                                   options=options))
        self._cnat_roles()

    def _frontends(self, state: DataplaneState) -> list[Any]:
        """Every service's frontends in id order, as ``plan_services`` gives them, re-planning only
        the services whose update object changed since the last call."""
        from vppagent.dataplane.service_plan import plan_service
        node = self.config.node_name or ""
        plans: dict[str, tuple[Any, list[Any]]] = {}
        frontends: list[Any] = []
        for sid, update in sorted(state.services.items()):
            cached = self._service_plans.get(sid)
            plan = cached if cached is not None and cached[0] is update else (update, plan_service(update, node))
            plans[sid] = plan
            frontends.extend(plan[1])
        self._service_plans = plans
        return frontends

    def _cnat_roles(self) -> None:
        """Mark pod interfaces POD in cnat's K8S SNAT policy (INCLUDE_V4/V6 too when their
        pool has natOutgoing).  Unmarked, every flow between two pods or from outside to a
        pod would count as "outside to outside" and leave with the node's address once the
        SNAT entry exists; marked, only hairpin flows (a pod reaching itself through a
        Service) are source-NATed.  The cnat feature itself is the pod interface's own."""
        if _services is None or not hasattr(_services, "CnatInterfaceKey"):
            return
        items: dict[Any, Any] = {}
        if self._snat is not None:
            for ifname, ref in self._refs.items():
                spec = self.pods.specs.get(ifname)
                if ref.kind == "pod" and spec is not None:
                    items[_services.CnatInterfaceKey(ref.sw_if_index)] = _services.CnatInterface(
                        pod=True, nat_outgoing=self._nat_outgoing(spec.ips), after=(IfaceRefKey(ifname),))
        self.set_group("cnat-roles", items)

    def _nat_outgoing(self, ips: Sequence[str]) -> frozenset[int]:
        """IP versions of ``ips`` that lie in a natOutgoing pool."""
        out = set()
        for text in ips:
            ip = ipaddress.ip_interface(text).ip
            if any(p.pool.nat_outgoing and ip in p.pool.cidr for p in self.state.pools.values()):
                out.add(ip.version)
        return frozenset(out)

    def _refresh_node_addresses(self) -> None:
        """Read the uplink's addresses again while they are unknown: the agent may connect to
        a VPP whose manager has not created or addressed the uplink yet."""
        if not self.config.uplink_interface or self._node_addrs:
            return
        try:
            self._read_node_addresses()
        except VppError as exc:
            self._lost(str(exc))
            return
        if self._node_addrs:
            log.info("node addresses from %s: %s", self.config.uplink_interface,
                     ", ".join(map(str, self._node_addrs)))
            self._services_changed(self.state)

    # ------------------------------------------------------------ Dataplane

    def apply(self, updates: Sequence[Update]) -> None:
        self.fold(updates)
        if self._services_dirty:
            self._services_changed(self.state)
        if self._hosts_changed and self._connected:
            self._hosts_changed = False
            self._sync_refs()
        self._render_dirty()
        if self.state.in_sync and self._connected:
            self._commit()

    def _ownership_batch(self) -> ContextManager[Any]:
        """The cnat ownership file written once per commit, not once per object."""
        return self._svc_store.batch() if self._svc_store is not None else contextlib.nullcontext()

    def _commit(self, resync: bool = False) -> None:
        try:
            with self._ownership_batch():
                report = self.reconciler.resync() if resync else self.reconciler.commit()
                self._note(report)
                self.groups.collect()
        finally:
            self.store.save()
            self._check_connection()

    def run_periodic(self) -> None:
        if not self._connected:
            self._reconnect()
            return
        try:
            self.conn.check_alive()
        except VppError as exc:
            self._lost(str(exc))
            return
        self.pods.run_due_retries()
        prev = {n: r for n, r in self._refs.items()}
        self._sync_refs()
        if prev != self._refs:
            self._render_dirty()
        self._refresh_node_addresses()
        if self.state.in_sync:
            with self._ownership_batch():
                self._note(self.reconciler.run_due_retries())      # also commits what changed above
                due = self._next_refresh
                if due is not None and self._clock() >= due:
                    self.resync()
                self.groups.collect()
        self.store.save()
        self._check_connection()

    def resync(self) -> dict[str, Any]:
        if not self._connected:
            return Report(errors=["VPP not connected"]).as_dict()
        pods = self.pods.resync()
        self._sync_refs()
        self._render_dirty()
        with self._ownership_batch():
            report = self.reconciler.resync()
            self._note(report)
            self.groups.collect()
        self.store.save()
        self._check_connection()
        out = report.as_dict()
        out["pods"] = pods.as_dict()
        return out

    def is_ready(self, stats: Mapping[str, int]) -> bool:
        pod_stats = self.pods.reconciler.stats()
        return self._connected and self.state.in_sync and stats["failed"] == 0 and pod_stats["failed"] == 0

    def status(self) -> DataplaneStatus:
        st = super().status()
        counts = dict(st.counts)
        counts.update(pods=len(self.pods.specs), vpp_restarts=self._restarts)
        failed = st.failed + self.pods.reconciler.stats()["failed"]
        return DataplaneStatus(st.name, st.connected, st.in_sync, st.ready, st.pending, failed, st.last_error, counts)

    def dump(self) -> dict[str, Any]:
        out = super().dump()
        out.update(engine=self.engine, vpp={"version": self.conn.version, "pid": self.conn.vpe_pid,
                                             "socket": self.config.socket},
                   pods=self.pods.reconciler.dump(), connection=dict(self.conn.stats))
        # What this process wrote to VPP since it started (or since VPP last restarted): a
        # restarted agent that adopts everything shows 0 (interface references are not writes).
        done = [r.op for r in self.reconciler.history + self.pods.reconciler.history
                if not isinstance(r.op.key, IfaceRefKey)]
        out["writes"] = {"total": len(done), "last": [f"{op.kind.value} {op.key!r}" for op in done[-20:]]}
        out["vpp_restarts"] = self._restarts
        return out

    def stop(self) -> None:
        self.store.save()
        if self.conn.connected or self._connected:
            self._connected = False
            try:
                self.disconnect()
            except VppError:
                pass

    # ------------------------------------------------------------ CNI

    def _require_vpp(self) -> None:
        if not self._connected:
            raise WiringError(f"VPP is not reachable ({self._last_error or 'not connected'}); try again")

    def wire_workload(self, wiring: WorkloadWiring) -> WiredWorkload:
        self._require_vpp()
        try:
            wired = self.pods.wire(wiring)
        finally:
            self._after_pods()
        return wired

    def unwire_workload(self, wiring: WorkloadWiring) -> None:
        name = wiring.host_interface_name
        if name in self._refs and self._connected:
            # Policy off the interface first: VPP's ACL plugin keeps per-interface
            # state that outlives the interface, and a new one may reuse its index.
            self._leaving.add(name)
            try:
                self._sync_refs()
                self._render_dirty()
                if self.state.in_sync:
                    self._commit()
            finally:
                self._leaving.discard(name)
        try:
            self.pods.unwire(wiring)
        finally:
            self._after_pods()

    def check_workload(self, wiring: WorkloadWiring) -> list[str]:
        if not self._connected:
            return [f"VPP is not reachable ({self._last_error})"]
        drift = self.pods.check(wiring)
        name = wiring.host_interface_name
        for key in self.reconciler.keys():
            if getattr(key, "ifname", None) == name:
                st = self.reconciler.state(key)
                if st.state is KeyState.FAILED:
                    drift.append(f"policy {key!r}: {st.error}")
        return drift

    def _after_pods(self) -> None:
        self.pods.store.save()
        if not self._check_connection():
            return
        self._sync_refs()
        self._render_dirty()
        if self.state.in_sync:
            self._commit()

