"""Workloads wired through CNI: container id → workload endpoint.

The endpoint's addresses are the ones the CNI request carries (what IPAM
assigned); labels, profiles and named ports come from the Pod the datastore
knows, when it knows it, as Calico does.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from vppagent.api.backend import CniAddRequest, CniError
from vppagent.calc.graph import CalcGraph
from vppagent.manifests.k8s import workload_interface_name
from vppagent.model.resources import (
    LABEL_NAMESPACE, LABEL_ORCHESTRATOR, LABEL_SERVICE_ACCOUNT, NAMESPACE_PROFILE_PREFIX,
    SERVICE_ACCOUNT_PROFILE_PREFIX, NamedPort, WorkloadEndpoint,
)


class WorkloadRegistry:
    def __init__(self, node_name: str) -> None:
        self.node_name = node_name
        self._by_container: dict[str, WorkloadEndpoint] = {}

    def add(self, req: CniAddRequest, graph: CalcGraph) -> WorkloadEndpoint:
        wl = req.workload
        if not wl.namespace or not wl.pod:
            raise CniError("the CNI request names no pod: workload namespace and pod are required")
        existing = self._by_container.get(req.container_id)
        # A pod owns host routes (/32, /128), whatever prefix IPAM's block has.
        nets = tuple(ipaddress.ip_network(f"{ip.address.ip}/{ip.address.max_prefixlen}") for ip in req.ips)
        endpoint_name = wl.endpoint or req.interface_name or "eth0"
        known = self._known_pod(graph, wl.namespace, wl.pod, endpoint_name)
        if known is not None:
            endpoint = replace(known, node=self.node_name, nets=nets, endpoint=endpoint_name,
                               interface_name=req.host_interface_name or known.interface_name)
        else:
            sa = dict(wl.labels).get(LABEL_SERVICE_ACCOUNT, "default")
            labels = dict(wl.labels)
            labels.update({LABEL_NAMESPACE: wl.namespace, LABEL_ORCHESTRATOR: wl.orchestrator or "k8s",
                           LABEL_SERVICE_ACCOUNT: sa})
            endpoint = WorkloadEndpoint(
                namespace=wl.namespace, pod=wl.pod, node=self.node_name, endpoint=endpoint_name,
                orchestrator=wl.orchestrator or "k8s",
                interface_name=req.host_interface_name or workload_interface_name(wl.namespace, wl.pod),
                labels=tuple(sorted(labels.items())),
                profiles=(NAMESPACE_PROFILE_PREFIX + wl.namespace, f"{SERVICE_ACCOUNT_PROFILE_PREFIX}{wl.namespace}.{sa}"),
                nets=nets,
                ports=tuple(NamedPort(p.name, p.protocol, p.port) for p in wl.ports if p.name),
                service_account=sa,
                annotations=wl.annotations,
            )
        if existing is not None and existing.key != endpoint.key:
            raise CniError(f"container {req.container_id} is already wired as {existing.key}")
        self._by_container[req.container_id] = endpoint
        return endpoint

    @staticmethod
    def _known_pod(graph: CalcGraph, namespace: str, pod: str, endpoint: str) -> WorkloadEndpoint | None:
        for (kind, _), r in graph.resources.items():
            if kind == "WorkloadEndpoint" and r.namespace == namespace and r.pod == pod:  # type: ignore[union-attr]
                return r  # type: ignore[return-value]
        return None

    def delete(self, container_id: str) -> WorkloadEndpoint | None:
        return self._by_container.pop(container_id, None)

    def get(self, container_id: str) -> WorkloadEndpoint | None:
        return self._by_container.get(container_id)
