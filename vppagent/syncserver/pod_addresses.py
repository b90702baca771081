"""Pod addresses the sync layer knows from IPAM before the datastore does.

Kubernetes learns a pod's IP only when the kubelet writes the CNI result
back; Calico's CNI plugin bridges that gap by writing the workload endpoint
itself. Here every assignment goes through the sync layer's IPAM, which
records namespace and pod with the allocation, so a pod that the datastore
lists without addresses gets the ones IPAM gave it (addresses the datastore
does list always win).
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Iterable

from vppagent.ipam.blocks import Block
from vppagent.model.resources import IPNetwork, WorkloadEndpoint, resource_key
from vppagent.sources.events import Delete, SourceEvent, Upsert

PodKey = tuple[str, str]
WEP = "WorkloadEndpoint"


class PodAddresses:
    def __init__(self) -> None:
        self._handles: dict[str, tuple[PodKey, tuple[IPNetwork, ...]]] = {}
        self._by_pod: dict[PodKey, set[str]] = {}
        self._source: dict[str, WorkloadEndpoint] = {}      # WEP key -> datastore version
        self._keys_by_pod: dict[PodKey, set[str]] = {}

    # ------------------------------------------------------------ IPAM side

    def load_blocks(self, blocks: Iterable[Block]) -> None:
        """Start from what the block store holds (a restarted sync layer)."""
        found: dict[str, tuple[PodKey, list[IPNetwork]]] = {}
        for block in blocks:
            for ordinal, handle in block.allocations.items():
                attrs = block.handles.get(handle, {})
                ns, pod = attrs.get("namespace"), attrs.get("pod")
                if not ns or not pod:
                    continue
                ip = block.address(ordinal)
                found.setdefault(handle, ((ns, pod), []))[1].append(
                    ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}"))
        for handle, (pod_key, nets) in found.items():
            self.set_handle(handle, pod_key, nets)

    def set_handle(self, handle: str, pod_key: PodKey, nets: Iterable[IPNetwork]) -> list[SourceEvent]:
        self.drop_handle(handle)
        self._handles[handle] = (pod_key, tuple(sorted(nets, key=lambda n: (n.version, n))))
        self._by_pod.setdefault(pod_key, set()).add(handle)
        return self._republish(pod_key)

    def drop_handle(self, handle: str) -> list[SourceEvent]:
        entry = self._handles.pop(handle, None)
        if entry is None:
            return []
        pod_key = entry[0]
        handles = self._by_pod.get(pod_key, set())
        handles.discard(handle)
        if not handles:
            self._by_pod.pop(pod_key, None)
        return self._republish(pod_key)

    def nets_for(self, pod_key: PodKey) -> tuple[IPNetwork, ...]:
        """IPAM's addresses for a pod; the newest handle (sorted last) when a pod has several."""
        handles = sorted(self._by_pod.get(pod_key, ()))
        return self._handles[handles[-1]][1] if handles else ()

    # ------------------------------------------------------------ datastore side

    def rewrite(self, events: Iterable[SourceEvent]) -> list[SourceEvent]:
        out: list[SourceEvent] = []
        for ev in events:
            if isinstance(ev, Upsert) and isinstance(ev.resource, WorkloadEndpoint):
                wep = ev.resource
                key = resource_key(wep)[1]
                pod_key = (wep.namespace, wep.pod)
                self._source[key] = wep
                self._keys_by_pod.setdefault(pod_key, set()).add(key)
                out.append(Upsert(self._effective(wep)))
            elif isinstance(ev, Delete) and ev.kind == WEP:
                wep = self._source.pop(ev.key, None)
                if wep is not None:
                    keys = self._keys_by_pod.get((wep.namespace, wep.pod), set())
                    keys.discard(ev.key)
                out.append(ev)
            else:
                out.append(ev)
        return out

    def _effective(self, wep: WorkloadEndpoint) -> WorkloadEndpoint:
        if wep.nets:
            return wep
        nets = self.nets_for((wep.namespace, wep.pod))
        return replace(wep, nets=nets) if nets else wep

    def _republish(self, pod_key: PodKey) -> list[SourceEvent]:
        return [Upsert(self._effective(self._source[k])) for k in sorted(self._keys_by_pod.get(pod_key, ()))
                if k in self._source]
