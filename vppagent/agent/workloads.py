"""Workloads wired through CNI: container id → record → workload endpoint.

A ``WorkloadRecord`` is what one CNI ADD wired (netns, interfaces, the
addresses IPAM assigned); records are persisted in ``<stateDir>/workloads``
so that DEL and policy keep working across agent restarts.

The endpoint published into the calculation merges two sources, as Calico
does: identity, labels, annotations and named ports from the Pod the
datastore knows (when it knows it; otherwise from the CNI request), and the
addresses, node and host interface from the record — whatever the Pod
manifest's ``status.podIPs`` says. ``rewrite`` applies that rule to the
datastore's event stream; pods nobody wired here pass through unchanged.
Only the newest container of a pod (the current sandbox) is published.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from vppagent.api.backend import CniAddResult, CniIP
from vppagent.dataplane.base import WorkloadWiring
from vppagent.ipam.store import atomic_write_json
from vppagent.model.resources import (
    LABEL_NAMESPACE, LABEL_ORCHESTRATOR, LABEL_SERVICE_ACCOUNT, NAMESPACE_PROFILE_PREFIX,
    SERVICE_ACCOUNT_PROFILE_PREFIX, IPPool, NamedPort, WorkloadEndpoint,
)
from vppagent.sources.events import Delete, SourceEvent, Upsert

log = logging.getLogger(__name__)

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
PodKey = tuple[str, str]          # (namespace, pod)
WEP = "WorkloadEndpoint"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class CniAddOutcome(CniAddResult):
    """A CNI ADD result that also says which addresses and host MAC the pod got."""

    ips: tuple[CniIP, ...] = ()
    host_mac: str = ""


@dataclass(frozen=True)
class WorkloadRecord:
    """What one CNI ADD wired; enough to unwire, check and publish it again."""

    container_id: str
    namespace: str
    pod: str
    netns: str
    interface_name: str                  # inside the pod
    host_interface_name: str
    ips: tuple[IPInterface, ...]         # host prefixes
    ipam: bool = True                    # the agent's IPAM assigned ips (release them on DEL)
    mtu: int = 1500
    endpoint: str = "eth0"
    host_mac: str = ""
    container_mac: str = ""
    orchestrator: str = "k8s"
    name: str = ""                       # WorkloadEndpoint name Calico's plugin sent, if any
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    ports: tuple[NamedPort, ...] = ()
    created: float = field(default_factory=time.time)

    @property
    def pod_key(self) -> PodKey:
        return (self.namespace, self.pod)

    def wiring(self) -> WorkloadWiring:
        return WorkloadWiring(
            container_id=self.container_id, netns=self.netns, interface_name=self.interface_name,
            host_interface_name=self.host_interface_name, ips=self.ips, mtu=self.mtu,
            namespace=self.namespace, pod=self.pod, annotations=self.annotations,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "containerID": self.container_id, "namespace": self.namespace, "pod": self.pod,
            "netns": self.netns, "interfaceName": self.interface_name,
            "hostInterfaceName": self.host_interface_name, "ips": [str(ip) for ip in self.ips],
            "ipam": self.ipam, "mtu": self.mtu, "endpoint": self.endpoint, "hostMAC": self.host_mac,
            "containerMAC": self.container_mac, "orchestrator": self.orchestrator, "name": self.name,
            "labels": dict(self.labels), "annotations": dict(self.annotations),
            "ports": [[p.name, p.protocol, p.port] for p in self.ports], "created": self.created,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "WorkloadRecord":
        return cls(
            container_id=d["containerID"], namespace=d["namespace"], pod=d["pod"], netns=d["netns"],
            interface_name=d["interfaceName"], host_interface_name=d["hostInterfaceName"],
            ips=tuple(ipaddress.ip_interface(ip) for ip in d["ips"]), ipam=bool(d.get("ipam", True)),
            mtu=int(d.get("mtu", 1500)), endpoint=d.get("endpoint", "eth0"),
            host_mac=d.get("hostMAC", ""), container_mac=d.get("containerMAC", ""),
            orchestrator=d.get("orchestrator", "k8s"), name=d.get("name", ""),
            labels=tuple(sorted(d.get("labels", {}).items())),
            annotations=tuple(sorted(d.get("annotations", {}).items())),
            ports=tuple(NamedPort(n, int(pr), int(po)) for n, pr, po in d.get("ports", [])),
            created=float(d.get("created", 0.0)),
        )


class WorkloadRegistry:
    """Records of wired containers, and the endpoints they publish."""

    def __init__(self, node_name: str, state_dir: str | Path | None = None) -> None:
        self.node_name = node_name
        self.dir = Path(state_dir) / "workloads" if state_dir is not None else None
        self._records: dict[str, WorkloadRecord] = {}
        self._current: dict[PodKey, str] = {}          # pod → container id of its current sandbox
        self._published: dict[PodKey, str] = {}        # pod → key of the endpoint we put in the graph
        self._source: dict[PodKey, WorkloadEndpoint] = {}   # the datastore's view of pods
        self._source_keys: dict[str, PodKey] = {}
        self._passed: dict[PodKey, str] = {}           # unwired pods passed through: their keys
        self.datastore_pools: dict[str, IPPool] = {}
        self.load_errors: list[str] = []
        self._load()

    # ------------------------------------------------------------------ queries

    def get(self, container_id: str) -> WorkloadRecord | None:
        return self._records.get(container_id)

    def records(self) -> list[WorkloadRecord]:
        return list(self._records.values())

    def is_current(self, record: WorkloadRecord) -> bool:
        return self._current.get(record.pod_key) == record.container_id

    def source_pod(self, namespace: str, pod: str) -> WorkloadEndpoint | None:
        return self._source.get((namespace, pod))

    def published_key(self, record: WorkloadRecord) -> str | None:
        return self._published.get(record.pod_key) if self.is_current(record) else None

    def addresses_in_use(self, exclude: str = "") -> dict[ipaddress.IPv4Address | ipaddress.IPv6Address, WorkloadRecord]:
        """Addresses held by wired containers other than ``exclude``."""
        return {ip.ip: r for r in self._records.values() if r.container_id != exclude for ip in r.ips}

    def claimed_by_datastore(self) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """Addresses unwired pods claim in the datastore (IPAM must not hand them out)."""
        return {net.network_address for key, ep in self._source.items() if key not in self._current
                for net in ep.nets}

    def endpoint_for(self, record: WorkloadRecord) -> WorkloadEndpoint:
        """The endpoint to publish: the datastore's pod with this record's addresses."""
        nets = tuple(ipaddress.ip_network(f"{ip.ip}/{ip.max_prefixlen}") for ip in record.ips)
        src = self._source.get(record.pod_key)
        if src is not None:
            return replace(src, node=self.node_name, endpoint=record.endpoint, nets=nets,
                           interface_name=record.host_interface_name, mac=record.container_mac)
        labels = dict(record.labels)
        sa = labels.get(LABEL_SERVICE_ACCOUNT, "default")
        labels.update({LABEL_NAMESPACE: record.namespace, LABEL_ORCHESTRATOR: record.orchestrator,
                       LABEL_SERVICE_ACCOUNT: sa})
        return WorkloadEndpoint(
            namespace=record.namespace, pod=record.pod, node=self.node_name, endpoint=record.endpoint,
            orchestrator=record.orchestrator, interface_name=record.host_interface_name,
            mac=record.container_mac, labels=tuple(sorted(labels.items())),
            profiles=(NAMESPACE_PROFILE_PREFIX + record.namespace,
                      f"{SERVICE_ACCOUNT_PROFILE_PREFIX}{record.namespace}.{sa}"),
            nets=nets, ports=record.ports, service_account=sa, annotations=record.annotations,
        )

    # ------------------------------------------------------------------ changes

    def add(self, record: WorkloadRecord) -> list[SourceEvent]:
        """Persist ``record``, make it its pod's current sandbox; returns graph events."""
        self._persist(record)
        self._records[record.container_id] = record
        self._current[record.pod_key] = record.container_id
        events: list[SourceEvent] = []
        passed = self._passed.pop(record.pod_key, None)
        endpoint = self.endpoint_for(record)
        for stale in (passed, self._published.get(record.pod_key)):
            if stale is not None and stale != endpoint.key:
                events.append(Delete(WEP, stale))
        self._published[record.pod_key] = endpoint.key
        events.append(Upsert(endpoint))
        return events

    def remove(self, container_id: str) -> tuple[WorkloadRecord | None, list[SourceEvent]]:
        """Forget a container; returns it and the graph events (none if it was not current)."""
        record = self._records.get(container_id)
        if record is None:
            return None, []
        self._unpersist(container_id)
        del self._records[container_id]
        if self._current.get(record.pod_key) != container_id:
            return record, []
        del self._current[record.pod_key]
        events: list[SourceEvent] = []
        key = self._published.pop(record.pod_key, None)
        if key is not None:
            events.append(Delete(WEP, key))
        src = self._source.get(record.pod_key)
        if src is not None:          # back to whatever the datastore says about the pod
            self._passed[record.pod_key] = src.key
            events.append(Upsert(src))
        return record, events

    def startup_events(self) -> list[SourceEvent]:
        """Endpoints of the records loaded from disk (before the datastore's first sync)."""
        events: list[SourceEvent] = []
        for pod_key, cid in self._current.items():
            endpoint = self.endpoint_for(self._records[cid])
            self._published[pod_key] = endpoint.key
            events.append(Upsert(endpoint))
        return events

    def rewrite(self, events: Iterable[SourceEvent]) -> list[SourceEvent]:
        """The datastore's events with wired pods replaced by their merged endpoints."""
        out: list[SourceEvent] = []
        for ev in events:
            if isinstance(ev, Upsert) and isinstance(ev.resource, WorkloadEndpoint):
                out += self._source_upsert(ev.resource)
            elif isinstance(ev, Delete) and ev.kind == WEP:
                out += self._source_delete(ev)
            else:
                if isinstance(ev, Upsert) and isinstance(ev.resource, IPPool):
                    self.datastore_pools[ev.resource.name] = ev.resource
                elif isinstance(ev, Delete) and ev.kind == "IPPool":
                    self.datastore_pools.pop(ev.key, None)
                out.append(ev)
        return out

    def _source_upsert(self, ep: WorkloadEndpoint) -> list[SourceEvent]:
        pod_key = (ep.namespace, ep.pod)
        old = self._source.get(pod_key)
        if old is not None:
            self._source_keys.pop(old.key, None)
        self._source[pod_key] = ep
        self._source_keys[ep.key] = pod_key
        cid = self._current.get(pod_key)
        if cid is None:
            out: list[SourceEvent] = []
            passed = self._passed.get(pod_key)
            if passed is not None and passed != ep.key:
                out.append(Delete(WEP, passed))
            self._passed[pod_key] = ep.key
            return out + [Upsert(ep)]
        return self._republish(pod_key, cid)

    def _source_delete(self, ev: Delete) -> list[SourceEvent]:
        pod_key = self._source_keys.pop(ev.key, None)
        if pod_key is None:
            return [ev]
        self._source.pop(pod_key, None)
        cid = self._current.get(pod_key)
        if cid is None:
            self._passed.pop(pod_key, None)
            return [ev]
        return self._republish(pod_key, cid)   # falls back to what the CNI request said

    def _republish(self, pod_key: PodKey, cid: str) -> list[SourceEvent]:
        endpoint = self.endpoint_for(self._records[cid])
        out: list[SourceEvent] = []
        old = self._published.get(pod_key)
        if old is not None and old != endpoint.key:
            out.append(Delete(WEP, old))
        self._published[pod_key] = endpoint.key
        return out + [Upsert(endpoint)]

    # ------------------------------------------------------------------ persistence

    @staticmethod
    def _file_name(container_id: str) -> str:
        """The record's file: the id itself, or a digest when it is no safe file name (a netns path)."""
        if _SAFE_ID.match(container_id) and len(container_id) <= 200:
            return f"{container_id}.json"
        return f"id-{hashlib.sha256(container_id.encode()).hexdigest()[:40]}.json"

    def _persist(self, record: WorkloadRecord) -> None:
        if self.dir is not None:
            atomic_write_json(self.dir / self._file_name(record.container_id), record.to_json())

    def _unpersist(self, container_id: str) -> None:
        if self.dir is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.dir / self._file_name(container_id))

    def _load(self) -> None:
        if self.dir is None or not self.dir.is_dir():
            return
        for path in sorted(self.dir.glob("*.json")):
            try:
                record = WorkloadRecord.from_json(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self.load_errors.append(f"{path}: {exc}")
                log.error("ignoring unreadable workload record %s: %s", path, exc)
                continue
            self._records[record.container_id] = record
            cur = self._current.get(record.pod_key)
            if cur is None or self._records[cur].created <= record.created:
                self._current[record.pod_key] = record.container_id
        if self._records:
            log.info("loaded %d CNI workload records from %s", len(self._records), self.dir)
