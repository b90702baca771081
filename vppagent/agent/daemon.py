"""The node agent: datastore → calculation → sync hub → dataplane, plus APIs.

One owner thread (the loop in ``Agent.run``) does all calculation and all
dataplane calls, because dataplane clients such as vpp_papi are not
thread-safe. gRPC worker threads hand work to it through ``_submit`` and
wait for the result, so an Apply either fully happens or raises.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from vppagent import __version__
from vppagent.agent.config import AgentConfig
from vppagent.agent.health import AgentMetrics, HealthServer
from vppagent.agent.workloads import WorkloadRegistry
from vppagent.api.backend import (
    CniAddRequest, CniAddResult, CniCheckRequest, CniDelRequest, EventSubscription, RemoveKey,
)
from vppagent.api.sync_hub import StatusEventBus, SyncHub
from vppagent.calc.graph import CalcGraph
from vppagent.dataplane import create_dataplane
from vppagent.dataplane.base import Dataplane
from vppagent.model.resources import resource_key
from vppagent.model.updates import InSync, Update
from vppagent.sources.events import Delete, SourceEvent, SourceInSync, Upsert
from vppagent.sources.file import FileSource

log = logging.getLogger(__name__)
T = TypeVar("T")


class Agent:
    """Implements the gRPC ``AgentBackend`` and runs the owner loop."""

    def __init__(self, config: AgentConfig, dataplane: Dataplane | None = None) -> None:
        self.config = config
        self.metrics = AgentMetrics()
        self.graph = CalcGraph(config.node_name)
        self.hub = SyncHub()
        self.events = StatusEventBus()
        self.dataplane = dataplane or create_dataplane(config.dataplane)
        self.source = FileSource(Path(config.datastore_path))
        self.workloads = WorkloadRegistry(config.node_name)
        self._work: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future]] = queue.Queue()
        self._stop = threading.Event()
        self._started = time.time()
        self.state = "starting"
        self.datastore_in_sync = False
        self._in_sync_sent = False
        self._errors: list[str] = []
        self._owner = threading.current_thread()
        self.health: HealthServer | None = None
        self.running = threading.Event()

    # ------------------------------------------------------------ owner thread

    def _submit(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """Run ``fn`` on the owner thread and return its result (or raise its error)."""
        if threading.current_thread() is self._owner:
            return fn()
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._work.put((fn, fut))
        return fut.result(timeout=timeout)

    def _drain_work(self, wait: float) -> None:
        try:
            fn, fut = self._work.get(timeout=wait)
        except queue.Empty:
            return
        while True:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # handed to the waiting caller
                    fut.set_exception(exc)
            try:
                fn, fut = self._work.get_nowait()
            except queue.Empty:
                return

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

    def process_source_events(self, events: list[SourceEvent]) -> None:
        started = time.monotonic()
        in_sync = False
        for ev in events:
            if isinstance(ev, Upsert):
                self.graph.update(ev.resource)
            elif isinstance(ev, Delete):
                self.graph.delete(ev.kind, ev.key)
            elif isinstance(ev, SourceInSync):
                in_sync = True
        updates = self.graph.flush()
        if in_sync and not self.datastore_in_sync:
            self.datastore_in_sync = True
            self.events.publish("datastore", "in-sync", f"{len(self.source.resources)} resources")
        if self.datastore_in_sync and not self._in_sync_sent:
            updates.append(InSync())
            self._in_sync_sent = True
        self._publish(updates, started)

    def poll_once(self) -> None:
        """One iteration of the loop's datastore work (tests call it directly)."""
        events = self.source.poll()
        if events:
            self.process_source_events(events)
        errors = [f"datastore: {e}" for e in self.source.errors]
        if errors != self._errors:
            for _ in set(errors) - set(self._errors):
                self.metrics.errors.labels("datastore").inc()
            self._errors = errors

    def run(self, install_signals: bool = True) -> int:
        self._owner = threading.current_thread()
        from vppagent.api.server import serve

        if install_signals:
            signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
            signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        self.dataplane.start()
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
                if now >= next_poll:
                    self.poll_once()
                    next_poll = now + self.config.poll_interval
                if now >= next_periodic:
                    self.dataplane.run_periodic()
                    next_periodic = now + 1.0
                self._drain_work(wait=min(0.1, max(0.0, next_poll - time.monotonic())))
        finally:
            self.state = "stopping"
            self.events.publish("agent", "stopping", "")
            server.stop(1.0)
            health.stop()
            self.dataplane.stop()   # leaves the dataplane programmed: the next start reads it back
            self.hub.close()
        return 0

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------ AgentBackend

    def apply(self, updates: list[Update]) -> None:
        self.hub.check(updates)
        self._submit(lambda: self._publish(list(updates)))

    def remove(self, keys: list[RemoveKey]) -> None:
        self._submit(lambda: self._publish(list(keys)))

    def ready(self) -> bool:
        dp = self.dataplane.status()
        return self.state == "running" and self.datastore_in_sync and dp.in_sync and dp.ready

    def status(self) -> dict[str, Any]:
        dp = self.dataplane.status()
        errors = list(self._errors)
        if dp.last_error:
            errors.append(f"dataplane: {dp.last_error}")
        self.metrics.ready.set(1 if self.ready() else 0)
        return {
            "ready": self.ready(),
            "agent_state": self.state,
            "datastore_sync_state": "in-sync" if self.datastore_in_sync else "wait-for-datastore",
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
        actual = self._submit(self.dataplane.dump)
        return desired, json.dumps(actual, default=str, sort_keys=True)

    def status_events(self) -> EventSubscription:
        return self.events.subscribe()

    def cni_add(self, req: CniAddRequest) -> CniAddResult:
        return self._submit(lambda: self._cni_add(req))

    def _cni_add(self, req: CniAddRequest) -> CniAddResult:
        endpoint = self.workloads.add(req, self.graph)
        self.graph.update(endpoint)
        self._publish(self.graph.flush())
        self.events.publish("cni", "added", f"{endpoint.namespace}/{endpoint.pod}")
        return CniAddResult(host_interface_name=endpoint.interface_name)

    def cni_del(self, req: CniDelRequest) -> None:
        def run() -> None:
            endpoint = self.workloads.delete(req.container_id)
            if endpoint is not None:
                self.graph.delete(*resource_key(endpoint))
                self._publish(self.graph.flush())
                self.events.publish("cni", "deleted", f"{endpoint.namespace}/{endpoint.pod}")
        self._submit(run)

    def cni_check(self, req: CniCheckRequest) -> list[str]:
        def run() -> list[str]:
            endpoint = self.workloads.get(req.container_id)
            if endpoint is None:
                return [f"container {req.container_id} is not known to the agent"]
            with self.hub.locked_state() as state:
                known = endpoint.key in state.workload_endpoints
            if not known:
                return [f"endpoint {endpoint.key} is not in the dataplane's desired state"]
            return []
        return self._submit(run)


def run_agent(config: AgentConfig) -> int:
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return Agent(config).run()
