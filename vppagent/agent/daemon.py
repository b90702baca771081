"""The node agent: datastore → calculation → sync hub → dataplane, plus APIs.

One owner thread (the loop in ``Agent.run``) does all calculation and all
dataplane calls, because dataplane clients such as vpp_papi are not
thread-safe. gRPC worker threads hand work to it through an ``OwnerQueue`` and
wait for the result, so an Apply either fully happens or raises.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from vppagent import __version__
from vppagent.agent.config import AgentConfig
from vppagent.agent.health import AgentMetrics, HealthServer
from vppagent.agent.owner import OwnerQueue
from vppagent.agent.workloads import CniAddOutcome, WorkloadRecord, WorkloadRegistry
from vppagent.api.backend import (
    CniAddRequest, CniAddResult, CniCheckRequest, CniDelRequest, CniError, CniIP, EventSubscription,
    RemoveKey,
)
from vppagent.api.sync_hub import StatusEventBus, SyncHub
from vppagent.calc.graph import CalcGraph
from vppagent.dataplane import create_dataplane
from vppagent.dataplane.base import Dataplane, WiringError
from vppagent.ipam import IPAM, IPAMError, default_pools
from vppagent.manifests.k8s import workload_interface_name
from vppagent.model.resources import IPPool, NamedPort
from vppagent.model.errors import ValidationError
from vppagent.model.updates import InSync, Update
from vppagent.agent.sync_client import SyncClient, SyncItem
from vppagent.model.state import DataplaneState, diff_states
from vppagent.sources.events import Delete, SourceError, SourceEvent, SourceInSync, SourceStatus, Upsert
from vppagent.sources.factory import create_block_store, create_source
from vppagent.sources.file import FileSource

log = logging.getLogger(__name__)


class Agent:
    """Implements the gRPC ``AgentBackend`` and runs the owner loop."""

    def __init__(self, config: AgentConfig, dataplane: Dataplane | None = None) -> None:
        self.config = config
        self.metrics = AgentMetrics()
        self.graph = CalcGraph(config.node_name)
        self.hub = SyncHub()
        self._owner = OwnerQueue()           # calculation and dataplane calls: one thread
        self.events = StatusEventBus()
        if dataplane is None:
            try:
                dataplane = create_dataplane(config.dataplane, config.node_name)
            except (ValueError, TypeError) as exc:
                raise ValidationError("dataplane", str(exc).removeprefix("dataplane: ")) from None
        self.dataplane = dataplane
        self.sync_client: SyncClient | None = None
        self.source: Any = None
        self.ipam: Any
        if config.datastore_type == "sync":
            from vppagent.ipam.remote import RemoteIPAM

            ds = config.datastore
            self.sync_client = SyncClient(ds.address, config.node_name, ds.tls)
            self.sync_client.on_item = self._owner.wake
            self.ipam = RemoteIPAM(self.sync_client.channel, config.node_name)
        else:
            self.source = create_source(config.datastore, config.datastore_path, config.poll_interval)
            self.ipam = IPAM(create_block_store(config.datastore, config.state_dir), config.node_name)
        self.datastore_connected = True
        self.workloads = WorkloadRegistry(config.node_name, config.state_dir)
        if self.sync_client is None:     # in sync mode the sync layer calculates; no local graph input
            self._apply_to_graph(self.workloads.startup_events())
        self._stop = threading.Event()
        self._started = time.time()
        self.state = "starting"
        self.datastore_in_sync = False
        self._in_sync_sent = False
        self._errors: list[str] = []
        self.health: HealthServer | None = None
        self.running = threading.Event()

    # ------------------------------------------------------------ owner thread

    def _publish(self, updates: list[Update], started: float | None = None) -> None:
        """Send updates to the hub (Sync clients) and the local dataplane."""
        if not updates:
            return
        self.hub.publish(updates)
        try:
            self.dataplane.apply(updates)
        except Exception as exc:
            self.metrics.errors.labels("dataplane").inc()
            self._errors = self._errors + [f"dataplane: {exc}"]
            log.exception("dataplane failed to apply %d updates", len(updates))
        for u in updates:
            self.metrics.updates_applied.labels(type(u).__name__).inc()
        if started is not None:
            self.metrics.sync_latency.observe(time.monotonic() - started)
        for kind, n in self.hub.counts().items():
            self.metrics.objects.labels(kind).set(n)

    def _datastore_status(self, ev: SourceStatus) -> None:
        if ev.connected != self.datastore_connected:
            self.events.publish("datastore", "connected" if ev.connected else "disconnected", ev.detail)
            if not ev.connected:
                self.metrics.errors.labels("datastore").inc()
                log.warning("datastore unreachable (%s): keeping the dataplane as it is", ev.detail)
        self.datastore_connected = ev.connected

    def process_source_events(self, events: list[SourceEvent]) -> None:
        started = time.monotonic()
        in_sync = False
        events = self.workloads.rewrite(events)   # wired pods keep the addresses IPAM gave them
        for ev in events:
            if isinstance(ev, Upsert):
                self.graph.update(ev.resource)
            elif isinstance(ev, Delete):
                self.graph.delete(ev.kind, ev.key)
            elif isinstance(ev, SourceInSync):
                in_sync = True
            elif isinstance(ev, SourceStatus):
                self._datastore_status(ev)
            elif isinstance(ev, SourceError):
                self.metrics.errors.labels("datastore").inc()
                log.error("datastore object rejected: %s", ev.error)
        updates = self.graph.flush()
        if in_sync and not self.datastore_in_sync:
            self.datastore_in_sync = True
            self.events.publish("datastore", "in-sync", self.source.name)
        if self.datastore_in_sync and not self._in_sync_sent:
            updates.append(InSync())
            self._in_sync_sent = True
        self._publish(updates, started)

    def process_sync_items(self, items: list[SyncItem]) -> None:
        """Apply what the sync layer sent: live updates as they are, snapshots as a diff."""
        started = time.monotonic()
        pending: list[Update] = []
        for item in items:
            if isinstance(item, SourceStatus):
                self._datastore_status(SourceStatus(
                    self.sync_client is not None and self.sync_client.ready, item.detail))
            elif isinstance(item, DataplaneState):
                self._publish(pending)
                pending = []
                with self.hub.locked_state() as current:
                    diff = diff_states(current, item)
                log.info("sync layer snapshot: %d updates differ from what the node holds", len(diff))
                self._publish(diff, started)
            else:
                pending.extend(item)
        self._publish(pending, started)
        if self.hub.in_sync and not self.datastore_in_sync:
            self.datastore_in_sync = True
            self.events.publish("datastore", "in-sync", f"sync layer {self.config.datastore.address}")

    def poll_once(self, timeout: float = 0.0) -> None:
        """One iteration of the loop's datastore work (tests call it directly)."""
        if self.sync_client is not None:
            items = self.sync_client.poll(timeout)
            if items:
                self.process_sync_items(items)
            return
        events = self.source.poll(timeout)
        if events:
            self.process_source_events(events)
        errors = [f"datastore: {e}" for e in self.source.errors]
        if errors != self._errors:
            for _ in set(errors) - set(self._errors):
                self.metrics.errors.labels("datastore").inc()
            self._errors = errors

    def run(self, install_signals: bool = True) -> int:
        self._owner.claim()
        from vppagent.api.server import serve

        if install_signals:
            signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
            signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        self.dataplane.start()
        if self.sync_client is not None:
            self.sync_client.start()
        else:
            self.source.start()
        paced = self.sync_client is None and isinstance(self.source, FileSource)
        health = HealthServer(self.config.health_host, self.config.health_port, self.status, self.metrics)
        health.start()
        self.health = health
        tls = None
        if self.config.grpc_tls is not None:
            from vppagent.api.server import TLSConfig

            t = self.config.grpc_tls
            tls = TLSConfig(cert=t.cert, key=t.key, client_ca=t.client_ca)
        server = serve(self, self.config.grpc_socket, self.config.grpc_tcp, tls)
        self.state = "running"
        self.running.set()
        self.events.publish("agent", "running", f"vppagent {__version__} on {self.config.node_name}")
        log.info("agent running: node %s, dataplane %s, health :%d, socket %s", self.config.node_name,
                 self.dataplane.name, health.port, self.config.grpc_socket)
        next_poll = 0.0
        next_periodic = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if not paced or now >= next_poll:
                    self.poll_once()
                    next_poll = now + self.config.poll_interval
                if now >= next_periodic:
                    self.dataplane.run_periodic()
                    next_periodic = now + 1.0
                wait = min(0.1, max(0.0, next_poll - time.monotonic())) if paced else 0.01
                self._owner.drain(wait=wait)
        finally:
            self.state = "stopping"
            self.events.publish("agent", "stopping", "")
            server.stop(1.0)
            health.stop()
            self.dataplane.stop()   # leaves the dataplane programmed: the next start reads it back
            if self.sync_client is not None:
                self.sync_client.close()
            else:
                self.source.close()
            self.hub.close()
        return 0

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------ AgentBackend

    def apply(self, updates: list[Update]) -> None:
        self.hub.check(updates)
        self._owner.submit(lambda: self._publish(list(updates)))

    def remove(self, keys: list[RemoveKey]) -> None:
        self._owner.submit(lambda: self._publish(list(keys)))

    def ready(self) -> bool:
        dp = self.dataplane.status()
        connected = self.sync_client.ready if self.sync_client is not None else self.datastore_connected
        return self.state == "running" and self.datastore_in_sync and connected and dp.in_sync and dp.ready

    def status(self) -> dict[str, Any]:
        dp = self.dataplane.status()
        errors = list(self._errors)
        if dp.last_error:
            errors.append(f"dataplane: {dp.last_error}")
        self.metrics.ready.set(1 if self.ready() else 0)
        return {
            "ready": self.ready(),
            "agent_state": self.state,
            "datastore_sync_state": ("in-sync" if self.datastore_in_sync else "wait-for-datastore")
            if (self.sync_client.ready if self.sync_client is not None else self.datastore_connected)
            else "disconnected",
            "dataplane_type": dp.name,
            "dataplane_in_sync": dp.in_sync,
            "counts": self.hub.counts(),
            "errors": errors,
            "uptime_seconds": time.time() - self._started,
            "node_name": self.config.node_name,
            "version": __version__,
        }

    def dump(self) -> tuple[list[Update], str]:
        _, desired = self.hub.snapshot()
        actual = self._owner.submit(self.dataplane.dump)
        return desired, json.dumps(actual, default=str, sort_keys=True)

    def status_events(self) -> EventSubscription:
        return self.events.subscribe()

    # ------------------------------------------------------------ CNI

    def cni_add(self, req: CniAddRequest) -> CniAddResult:
        return self._owner.submit(lambda: self._cni_add(req))

    def cni_del(self, req: CniDelRequest) -> None:
        self._owner.submit(lambda: self._cni_del(req))

    def cni_check(self, req: CniCheckRequest) -> list[str]:
        return self._owner.submit(lambda: self._cni_check(req))

    def _apply_to_graph(self, events: list[SourceEvent]) -> None:
        for ev in events:
            if isinstance(ev, Upsert):
                self.graph.update(ev.resource)
            elif isinstance(ev, Delete):
                self.graph.delete(ev.kind, ev.key)

    def _ipam_pools(self) -> list[IPPool]:
        """The datastore's IPPools, or the configured defaults while it has none."""
        return list(self.workloads.datastore_pools.values()) or default_pools(self.config.ipam_default_pools)

    def _node_labels(self) -> dict[str, str]:
        node = self.graph.nodes.get(self.config.node_name)
        return dict(node.labels) if node is not None else {}

    def _cni_add(self, req: CniAddRequest) -> CniAddOutcome:
        """IPAM (unless the request brings addresses), wire, record, publish; all or nothing."""
        wl, cid = req.workload, req.container_id
        if not wl.namespace or not wl.pod:
            raise CniError("the CNI request names no pod: workload namespace and pod are required")
        existing = self.workloads.get(cid)
        if existing is not None and existing.pod_key != (wl.namespace, wl.pod):
            raise CniError(f"container {cid} is already wired as {existing.namespace}/{existing.pod}")
        if self.workloads.source_pod(wl.namespace, wl.pod) is None:
            self.poll_once()          # the Pod may be newer than the datastore's last poll
        fresh_ipam = False
        if req.ips:
            ips = tuple(ipaddress.ip_interface(f"{i.address.ip}/{i.address.max_prefixlen}") for i in req.ips)
            in_use = self.workloads.addresses_in_use(exclude=cid)
            for ip in ips:
                other = in_use.get(ip.ip)
                if other is not None:
                    raise CniError(f"address {ip.ip} is already used by pod {other.namespace}/{other.pod}"
                                   f" (container {other.container_id})")
            from_ipam = False
        elif existing is not None and existing.ipam:
            ips, from_ipam = existing.ips, True
        else:
            attrs = {"namespace": wl.namespace, "pod": wl.pod, "interface": req.interface_name,
                     "node": self.config.node_name}
            try:
                avoid = set(self.workloads.addresses_in_use(exclude=cid)) | self.workloads.claimed_by_datastore()
                ips = tuple(self.ipam.assign(cid, attrs, self._ipam_pools(), self._node_labels(), avoid=avoid))
            except (IPAMError, OSError) as exc:
                raise CniError(f"cannot assign an address to {wl.namespace}/{wl.pod}: {exc}") from None
            from_ipam, fresh_ipam = True, existing is None
        record = WorkloadRecord(
            container_id=cid, namespace=wl.namespace, pod=wl.pod, netns=req.netns,
            interface_name=req.interface_name,
            host_interface_name=req.host_interface_name or workload_interface_name(wl.namespace, wl.pod),
            ips=ips, ipam=from_ipam, mtu=req.mtu or self.config.cni_mtu,
            endpoint=wl.endpoint or req.interface_name or "eth0", orchestrator=wl.orchestrator or "k8s",
            name=wl.name, labels=wl.labels, annotations=wl.annotations,
            ports=tuple(NamedPort(p.name, p.protocol, p.port) for p in wl.ports if p.name),
        )
        wired = None
        try:
            wired = self.dataplane.wire_workload(record.wiring())
            record = replace(record, host_interface_name=wired.host_interface_name,
                             host_mac=wired.host_mac, container_mac=wired.container_mac)
            events = self.workloads.add(record)
        except Exception as exc:
            if wired is not None and existing is None:
                with contextlib.suppress(Exception):
                    self.dataplane.unwire_workload(record.wiring())
            if fresh_ipam:
                with contextlib.suppress(Exception):
                    self.ipam.release(cid)
            if isinstance(exc, WiringError):
                raise CniError(str(exc)) from None
            if isinstance(exc, OSError):
                raise CniError(f"cannot record container {cid} in {self.config.state_dir}: {exc}") from None
            raise
        if self.sync_client is None:    # in sync mode the sync layer publishes the endpoint
            self._apply_to_graph(events)
            self._publish(self.graph.flush())
        self.events.publish("cni", "added", f"{wl.namespace}/{wl.pod} {' '.join(map(str, ips))}")
        gateways = {4: wired.gateway_v4, 6: wired.gateway_v6}
        return CniAddOutcome(
            host_interface_name=record.host_interface_name, container_mac=record.container_mac,
            ips=tuple(CniIP(ip, ipaddress.ip_address(gateways[ip.version])) for ip in ips),
            host_mac=record.host_mac,
        )

    def _cni_del(self, req: CniDelRequest) -> None:
        """Unwire (if this container is its pod's current sandbox), release IPAM, forget it."""
        record = self.workloads.get(req.container_id)
        try:
            if record is None:
                self.ipam.release(req.container_id)   # an ADD that died before it was recorded
                return
            if self.workloads.is_current(record):
                self.dataplane.unwire_workload(record.wiring())
            if record.ipam:
                self.ipam.release(record.container_id)
            _, events = self.workloads.remove(record.container_id)
        except WiringError as exc:
            raise CniError(str(exc)) from None
        except (IPAMError, OSError) as exc:
            raise CniError(f"cannot release container {req.container_id}: {exc}") from None
        if self.sync_client is None:
            self._apply_to_graph(events)
            self._publish(self.graph.flush())
        self.events.publish("cni", "deleted", f"{record.namespace}/{record.pod}")

    def _cni_check(self, req: CniCheckRequest) -> list[str]:
        record = self.workloads.get(req.container_id)
        if record is None:
            return [f"container {req.container_id} is not known to the agent"]
        drift: list[str] = []
        have = {ip.ip for ip in record.ips}
        expected = req.options.get("expected_ips")
        if expected:
            want = {ipaddress.ip_interface(x.strip()).ip for x in expected.split(",") if x.strip()}
            if want != have:
                drift.append(f"the runtime expects addresses {', '.join(sorted(map(str, want)))},"
                             f" the agent assigned {', '.join(sorted(map(str, have)))}")
        if record.ipam:
            held = set(self.ipam.addresses(record.container_id))
            if held != have:
                drift.append(f"IPAM holds {', '.join(sorted(map(str, held))) or 'nothing'} for container"
                             f" {record.container_id}, expected {', '.join(sorted(map(str, have)))}")
        if not self.workloads.is_current(record):
            return drift + [f"container {record.container_id} was replaced by a newer sandbox of"
                            f" {record.namespace}/{record.pod}"]
        key = self.workloads.published_key(record)
        with self.hub.locked_state() as state:
            known = key in state.workload_endpoints
        if not known:
            drift.append(f"endpoint {key} is not in the dataplane's desired state")
        try:
            drift += self.dataplane.check_workload(record.wiring())
        except WiringError as exc:
            drift.append(str(exc))
        return drift


def run_agent(config: AgentConfig) -> int:
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return Agent(config).run()
