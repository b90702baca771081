"""kube-proxy semantics, once: Service + EndpointSlices → frontends and backends.

Every dataplane (iptables, nftables, eBPF, VPP cnat) renders the same plan,
so "which backends may this frontend use" is decided in one place:

- ClusterIP frontends use every usable backend, or only this node's with
  ``internalTrafficPolicy: Local``.
- NodePort, externalIPs and LoadBalancer frontends use only this node's
  backends with ``externalTrafficPolicy: Local`` (client source kept);
  with ``Cluster`` they use all and external clients are masqueraded.
- A backend is usable when ready; if none is ready, serving-and-terminating
  ones are used (kube-proxy's terminating fallback); if there is still none,
  the frontend rejects.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Iterable

from vppagent.model.resources import EndpointSlice, IPAddress, Service, ServicePort
from vppagent.model.updates import ServiceUpdate


class FrontendKind(str, enum.Enum):
    CLUSTER_IP = "cluster-ip"
    EXTERNAL_IP = "external-ip"
    LOAD_BALANCER = "load-balancer"
    NODE_PORT = "node-port"


@dataclass(frozen=True, order=True)
class Backend:
    ip: IPAddress
    port: int
    node: str = ""
    ready: bool = True
    serving: bool = True
    terminating: bool = False

    @property
    def address(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.ip.version == 6 else f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class Frontend:
    """One (address, port, protocol) a client connects to; ``ip`` None for a NodePort
    (it listens on every node address)."""

    service: str                 # "namespace/name"
    port_name: str
    kind: FrontendKind
    ip: IPAddress | None
    port: int
    protocol: int
    family: int
    backends: tuple[Backend, ...]          # the usable ones, sorted
    all_backends: tuple[Backend, ...]      # every known one (for conntrack cleanup)
    affinity_timeout: int | None           # seconds, with sessionAffinity: ClientIP
    local_only: bool                       # traffic policy Local applies to this frontend
    masquerade_external: bool              # external clients are SNATed (policy Cluster)

    @property
    def rejects(self) -> bool:
        return not self.backends


def _backend_port(sp: ServicePort, eps: EndpointSlice) -> int | None:
    """The endpoint port matching a service port (by name; targetPort number as fallback)."""
    for p in eps.ports:
        if p.name == sp.name and p.protocol == sp.protocol:
            return p.port
    if not eps.ports and isinstance(sp.target_port, int):
        return sp.target_port
    return None


def _usable(backends: list[Backend]) -> list[Backend]:
    ready = [b for b in backends if b.ready]
    if ready:
        return ready
    return [b for b in backends if b.serving and b.terminating]


def plan_service(update: ServiceUpdate, node_name: str) -> list[Frontend]:
    """Every frontend of one service on this node, with its usable backends."""
    svc: Service = update.service
    if svc.type == "ExternalName":
        return []
    frontends: list[Frontend] = []
    for sp in svc.ports:
        for family in (4, 6):
            known: list[Backend] = []
            for eps in update.slices:
                if eps.address_type != f"IPv{family}":
                    continue
                port = _backend_port(sp, eps)
                if port is None:
                    continue
                for ep in eps.endpoints:
                    for ip in ep.addresses:
                        known.append(Backend(ip, port, ep.node, ep.ready, ep.serving, ep.terminating))
            known = sorted(set(known))
            usable = _usable(known)
            local = [b for b in usable if b.node == node_name]
            affinity = svc.affinity_timeout if svc.session_affinity else None

            def add(kind: FrontendKind, ip: IPAddress | None, port: int, local_only: bool) -> None:
                frontends.append(Frontend(
                    service=svc.key, port_name=sp.name, kind=kind, ip=ip, port=port,
                    protocol=sp.protocol, family=family,
                    backends=tuple(local if local_only else usable), all_backends=tuple(known),
                    affinity_timeout=affinity, local_only=local_only,
                    masquerade_external=kind is not FrontendKind.CLUSTER_IP and not svc.external_traffic_local,
                ))

            for ip in svc.cluster_ips:
                if ip.version == family:
                    add(FrontendKind.CLUSTER_IP, ip, sp.port, svc.internal_traffic_local)
            for ip in svc.external_ips:
                if ip.version == family:
                    add(FrontendKind.EXTERNAL_IP, ip, sp.port, svc.external_traffic_local)
            for ip in svc.load_balancer_ips:
                if ip.version == family:
                    add(FrontendKind.LOAD_BALANCER, ip, sp.port, svc.external_traffic_local)
            if svc.type in ("NodePort", "LoadBalancer") and sp.node_port:
                if any(ip.version == family for ip in svc.cluster_ips) or not svc.cluster_ips:
                    add(FrontendKind.NODE_PORT, None, sp.node_port, svc.external_traffic_local)
    return frontends


def plan_services(updates: Iterable[ServiceUpdate], node_name: str) -> list[Frontend]:
    out: list[Frontend] = []
    for u in sorted(updates, key=lambda u: u.id):
        out.extend(plan_service(u, node_name))
    return out


def stale_udp_backends(before: Frontend | None, after: Frontend | None) -> list[Backend]:
    """UDP backends that went away: their conntrack entries must be deleted."""
    if before is None or before.protocol != 17:
        return []
    kept = set(after.backends) if after is not None else set()
    return [b for b in before.backends if b not in kept]


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False
