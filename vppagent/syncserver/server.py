"""``vppagent sync``: the datastore is read and calculated once, for every node.

One owner thread runs the source, the cluster-wide :class:`CalcGraph`, the
IPAM requests of node agents and the :class:`Fanout`; gRPC worker threads
only wait on subscriptions or hand IPAM work to the owner. Node agents
connect with ``datastore: {type: sync}`` and receive only their share.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from vppagent import __version__
from vppagent.agent.health import AgentMetrics, HealthServer
from vppagent.agent.owner import OwnerQueue
from vppagent.api.backend import CniError, EventSubscription
from vppagent.api.sync_hub import DEFAULT_MAX_QUEUE, StatusEventBus, Subscription
from vppagent.calc.graph import CalcGraph
from vppagent.ipam import IPAM, BlockStore, default_pools
from vppagent.ipam.blocks import IPAddress
from vppagent.ipam.remote import IPInterface
from vppagent.model.errors import ValidationError
from vppagent.model.resources import BlockAffinity
from vppagent.model.updates import InSync, Update
from vppagent.sources.base import Source
from vppagent.sources.events import (
    Delete, SourceError, SourceEvent, SourceInSync, SourceStatus, Upsert,
)
from vppagent.syncserver.fanout import Fanout
from vppagent.syncserver.pod_addresses import PodAddresses

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncServerConfig:
    socket: str | None = "/run/vppagent/sync.sock"
    tcp: str | None = None
    tls: Any = None                        # vppagent.api.server.TLSConfig for TCP
    health_host: str = "127.0.0.1"
    health_port: int = 9098
    max_queue: int = DEFAULT_MAX_QUEUE
    default_pools: tuple[str, ...] = ("10.65.0.0/16",)
    log_level: str = "info"


class SyncServer:
    """Implements the gRPC ``AgentBackend`` surface the Sync RPC needs, plus IPAM."""

    def __init__(self, config: SyncServerConfig, source: Source, blocks: BlockStore) -> None:
        self.config = config
        self.source = source
        self.blocks = blocks
        self.graph = CalcGraph(None)
        self.fanout = Fanout(config.max_queue)
        self.hub = self.fanout                 # what the gRPC server reads counts from
        self.events = StatusEventBus()
        self.metrics = AgentMetrics()
        self.addresses = PodAddresses()
        self._affinities: dict[str, str] = {}
        self._stop = threading.Event()
        self._owner = OwnerQueue()           # the calculation, fan-out and IPAM's thread
        self._started = time.time()
        self.state = "starting"
        self.in_sync = False
        self.connected = True
        self._in_sync_sent = False
        self.errors: dict[str, str] = {}
        self.running = threading.Event()
        self.health: HealthServer | None = None
        self.grpc: Any = None
        self._load_blocks()

    # ------------------------------------------------------------ owner thread

    def _load_blocks(self) -> None:
        stored = [b for b, _ in self.blocks.list_blocks()]
        self.addresses.load_blocks(stored)
        self._apply(self._affinity_events(stored))

    def _affinity_events(self, blocks: list) -> list[SourceEvent]:
        out: list[SourceEvent] = []
        for b in blocks:
            key = str(b.cidr)
            if b.affinity and self._affinities.get(key) != b.affinity:
                self._affinities[key] = b.affinity
                out.append(Upsert(BlockAffinity(b.cidr, b.affinity)))
        return out

    def _apply(self, events: list[SourceEvent]) -> None:
        for ev in events:
            if isinstance(ev, Upsert):
                self.graph.update(ev.resource)
            elif isinstance(ev, Delete):
                self.graph.delete(ev.kind, ev.key)

    def process(self, events: list[SourceEvent]) -> None:
        """Apply source events and publish the resulting per-node updates."""
        started = time.monotonic()
        resources: list[SourceEvent] = []
        now_in_sync = False
        for ev in events:
            if isinstance(ev, SourceInSync):
                now_in_sync = not self.in_sync
            elif isinstance(ev, SourceStatus):
                self.connected = ev.connected
                self.events.publish("datastore", "connected" if ev.connected else "disconnected", ev.detail)
                if ev.connected:
                    self.errors.pop("datastore", None)
                else:
                    self.errors["datastore"] = f"datastore unreachable: {ev.detail}"
                    self.metrics.errors.labels("datastore").inc()
            elif isinstance(ev, SourceError):
                self.metrics.errors.labels("datastore").inc()
                log.error("datastore object rejected: %s", ev.error)
            else:
                resources.append(ev)
        self._apply(self.addresses.rewrite(resources))
        if now_in_sync:        # ready only once the complete state is calculated and published
            self.in_sync = True
            self.events.publish("datastore", "in-sync", self.source.name)
        self._flush(started)

    def _flush(self, started: float | None = None) -> None:
        updates: list[Update] = self.graph.flush()
        send_in_sync = self.in_sync and not self._in_sync_sent
        if send_in_sync:
            updates.append(InSync())
        if updates:
            self.fanout.publish(updates)
            for u in updates:
                self.metrics.updates_applied.labels(type(u).__name__).inc()
            if started is not None:
                self.metrics.sync_latency.observe(time.monotonic() - started)
        if send_in_sync:
            self._in_sync_sent = True

    def poll_once(self, timeout: float = 0.0) -> None:
        events = self.source.poll(timeout)
        if events:
            self.process(events)
        self._owner.drain()

    def run(self, install_signals: bool = True) -> int:
        from vppagent.api.server import serve
        from vppagent.ipam.remote import add_ipam_service

        self._owner.claim()
        if install_signals:
            signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
            signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        self.source.start()
        health = HealthServer(self.config.health_host, self.config.health_port, self.status, self.metrics)
        health.start()
        self.health = health
        self.grpc = serve(self, self.config.socket, self.config.tcp, self.config.tls, cni=False,
                          extra_services=[lambda server: add_ipam_service(self, server)], max_workers=256)
        self.state = "running"
        self.running.set()
        log.info("sync layer running: datastore %s, health :%d, socket %s", self.source.name, health.port,
                 self.config.socket)
        try:
            while not self._stop.is_set():
                self.poll_once(0.01)
        finally:
            self.state = "stopping"
            self.grpc.stop(1.0)
            health.stop()
            self.source.close()
            self.fanout.close()
        return 0

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------ Sync / status

    def subscribe_node(self, node: str, name: str) -> Subscription:
        sub = self.fanout.subscribe(node, name)
        self.events.publish("sync", "subscribed", f"{name} for node {node}")
        return sub

    def ready(self) -> bool:
        return self.state == "running" and self._in_sync_sent and self.connected

    def status(self) -> dict[str, Any]:
        self.metrics.ready.set(1 if self.ready() else 0)
        return {
            "ready": self.ready(),
            "agent_state": self.state,
            "datastore_sync_state": ("in-sync" if self.in_sync else "wait-for-datastore")
            if self.connected else "disconnected",
            "dataplane_type": "sync",
            "dataplane_in_sync": self.in_sync,
            "counts": self.fanout.counts(),
            "errors": sorted(self.errors.values()) + [f"datastore: {e}" for e in self.source.errors],
            "uptime_seconds": time.time() - self._started,
            "node_name": "",
            "version": __version__,
            "nodes": self.fanout.nodes(),
        }

    def dump(self) -> tuple[list[Update], str]:
        _, desired = self.fanout.snapshot()
        return desired, json.dumps({"nodes": self.fanout.nodes(), "blocks": self._affinities}, sort_keys=True)

    def status_events(self) -> EventSubscription:
        return self.events.subscribe()

    def apply(self, updates: list[Update]) -> None:
        self.fanout.check(updates)

    def remove(self, keys: list) -> None:
        self.fanout.check(keys, "keys")

    def cni_add(self, req: Any) -> Any:
        raise CniError("this is the sync layer, not a node agent")

    cni_del = cni_check = cni_add

    # ------------------------------------------------------------ IPAM (owner thread)

    def _ipam(self, node: str) -> IPAM:
        return IPAM(self.blocks, node)

    def ipam_assign(self, node: str, handle: str, attrs: dict[str, str],
                    avoid: list[IPAddress]) -> list[IPInterface]:
        def run() -> list[IPInterface]:
            pools = list(self.graph.ip_pools) or default_pools(self.config.default_pools)
            known = self.graph.nodes.get(node)
            labels = dict(known.labels) if known is not None else {}
            attrs.setdefault("node", node)
            ips = self._ipam(node).assign(handle, attrs, pools, labels, avoid=avoid)
            events = self._claimed_blocks(ips)
            ns, pod = attrs.get("namespace"), attrs.get("pod")
            if ns and pod:
                events += self.addresses.set_handle(
                    handle, (ns, pod), [ipaddress.ip_network(f"{i.ip}/{i.ip.max_prefixlen}") for i in ips])
            self._apply(events)
            self._flush()
            return ips
        return self._owner.submit(run)

    def _claimed_blocks(self, ips: list[IPInterface]) -> list[SourceEvent]:
        """Affinity events for blocks this assignment claimed."""
        known = [ipaddress.ip_network(c) for c in self._affinities]
        if all(any(i.ip in net for net in known) for i in ips):
            return []
        return self._affinity_events([b for b, _ in self.blocks.list_blocks()])

    def ipam_release(self, node: str, handle: str) -> list[IPAddress]:
        def run() -> list[IPAddress]:
            freed = self._ipam(node).release(handle)
            self._apply(self.addresses.drop_handle(handle))
            self._flush()
            return freed
        return self._owner.submit(run)

    def ipam_addresses(self, handle: str) -> list[IPAddress]:
        return self._owner.submit(lambda: self._ipam("").addresses(handle))


def run_sync_server(config: SyncServerConfig, source: Source, blocks: BlockStore) -> int:
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return SyncServer(config, source, blocks).run()


__all__ = ["SyncServer", "SyncServerConfig", "run_sync_server"]
