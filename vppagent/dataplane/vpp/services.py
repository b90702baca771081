"""Kubernetes Services in VPP: ``service_plan`` frontends rendered as cnat
translations, ICMP-prohibit routes and cnat SNAT.

Service addresses come in two sorts.  *Guarded* addresses (ClusterIPs,
externalIPs and LoadBalancer IPs that are not node addresses) belong to
services alone: each gets a guard route to ICMP prohibit (``cnat_routes``)
and every translation on it interposes on that route (``is_real_ip = 1``,
see ``cnat_model``).  The guard is also what makes such an address work at
all: VPP drops traffic to an address whose FIB entry holds nothing but an
interposing cnat client.  *Node* addresses (NodePorts, externalIPs equal to
a node address) have their own FIB entries and other uses, so they are never
guarded.

What each frontend becomes:

- with backends: one translation per (address, port, protocol), the backends
  as paths.  NodePorts get one per node address of the family.  With
  ``masquerade_external`` (externalTrafficPolicy Cluster on NodePort,
  externalIP and LoadBalancer frontends) every path also rewrites the source
  to a node address (for a NodePort: the one the client used), so replies
  come back through this node; ``Local`` keeps the client address.
  ``sessionAffinity: ClientIP`` balances with maglev on the source address
  only: a client always reaches the same backend while the backend set is
  unchanged, and only ~1/N of clients move when it changes.  The affinity
  timeout is not enforced: the mapping is a stateless hash, so a client
  keeps its backend however long it stays idle (stickier than kube-proxy,
  never less), and cnat has no per-client state to age.
- without backends (kube-proxy rejects): on a guarded address, nothing (the
  guard refuses); on a node address, a translation whose single path goes to
  a reject-sink address, inside a prefix routed to ICMP prohibit; cnat's
  return session rewrites the error back to what the client sent.  Each
  frontend gets its own sink address, as VPP means to rate-limit these
  errors per (source, destination) (in 26.10 the limiter has only 4 slots
  per 100 ms for the whole node).  No translation ever has zero paths (that
  crashes VPP 26.10).
- every guarded address also gets an "anchor" translation on port 0 (never
  used by real traffic) into the sink prefix, so it always has a cnat client
  in the FIB and behaves the same with or without endpoints.

Where translations match: in the FIB (cnat clients), so they work for
traffic from any interface without per-interface setup.  The cnat feature
arc (``feature_cnat_enable_disable``) belongs on pod interfaces (hairpin
SNAT; pods must also be marked POD, see ``cnat_snat``: the dataplane does
both).  Enabling it on the uplink too (natOutgoing needs it; so does npol
to see external traffic, so the dataplane always does when it has an
uplink) changes two things in VPP 26.10, because translations then match in
cnat's input node instead of the FIB:

- a path's source rewrite is ignored there, so external clients are
  masqueraded only on their way to remote backends (the K8S SNAT policy's
  "outside to outside" rule), never to local ones: Calico/VPP's behaviour
  rather than kube-proxy's for externalTrafficPolicy Cluster;
- a reject-sink translation cannot work (the DNATed packet dies in the FIB
  before cnat records its return session, so the ICMP error goes back with
  the sink address inside, and the output SNAT policy rewrites it too).
  Set ``node_address_rejects=False`` then (the dataplane does whenever it
  has an uplink): those ports are left to the node (``vppagent vpp run``
  punts local TCP/UDP to the host interface, and the host stack refuses
  closed ports).  Guarded addresses keep rejecting properly thanks to the
  anchors.

Stale UDP flows: updating a translation without a backend makes VPP expire
that backend's sessions at its scanner's next pass (``cnat_sessions``);
nothing else is sent.  VPP needs ``cnat { session-max ...
session-cleanup-timeout ... }`` in startup.conf for that pass to be quick.
"""

from __future__ import annotations

import ipaddress
import logging
import zlib
from dataclasses import dataclass
from typing import Any, Iterable

from vppagent.dataplane.service_plan import Frontend, FrontendKind
from vppagent.dataplane.vpp.cnat_model import (
    Balancing, CnatPath, RejectRoute, RejectRouteKey, Translation, TranslationKey, describe, host_prefix,
)
from vppagent.dataplane.vpp.cnat_ownership import OwnershipStore
from vppagent.dataplane.vpp.cnat_routes import RejectRouteDescriptor
from vppagent.dataplane.vpp.cnat_sessions import Session, sessions, stale_sessions
from vppagent.dataplane.vpp.cnat_snat import (
    CnatInterface, CnatInterfaceKey, CnatSnatDescriptor, SnatAddresses, SnatAddressesKey, SnatConfig,
    SnatExclude, SnatExcludeKey, desired_snat, interface_calls,
)
from vppagent.dataplane.vpp.cnat_translations import CnatTranslationDescriptor
from vppagent.model.resources import IPAddress, IPNetwork
from vppagent.reconciler import Descriptor, Key

log = logging.getLogger(__name__)

__all__ = [
    "Balancing", "CnatInterface", "CnatInterfaceKey", "CnatPath", "CnatSnatDescriptor",
    "CnatTranslationDescriptor", "OwnershipStore", "RejectRoute", "RejectRouteDescriptor",
    "RejectRouteKey", "ServiceOptions", "Session", "SnatAddresses", "SnatAddressesKey", "SnatConfig",
    "SnatExclude", "SnatExcludeKey", "Translation", "TranslationKey", "describe",
    "desired_reject_routes", "desired_service_state", "desired_snat", "desired_translations",
    "guarded_addresses", "interface_calls", "service_descriptors", "sessions", "stale_sessions",
]

ANCHOR_PORT = 0
ANCHOR_PROTOCOL = 6


@dataclass(frozen=True)
class ServiceOptions:
    """Prefixes this node never uses otherwise, routed to ICMP prohibit and
    used as reject sinks (240.0.0.0/4 is reserved, 100::/64 is the IPv6
    discard prefix), and the FIB table services live in."""

    reject_net4: ipaddress.IPv4Network = ipaddress.IPv4Network("240.0.0.0/16")
    reject_net6: ipaddress.IPv6Network = ipaddress.IPv6Network("100::/64")
    table_id: int = 0
    anchors: bool = True
    node_address_rejects: bool = True      # False: leave such ports to the node (see the module doc)

    def reject_net(self, version: int) -> IPNetwork:
        return self.reject_net4 if version == 4 else self.reject_net6

    @property
    def reject_nets(self) -> tuple[IPNetwork, IPNetwork]:
        return (self.reject_net4, self.reject_net6)

    def sink(self, key: TranslationKey) -> IPAddress:
        """A stable address of the reject prefix for one frontend."""
        net = self.reject_net(key.vip.version)
        span = min(net.num_addresses - 2, 1 << 30)
        return net.network_address + 1 + zlib.crc32(f"{key.vip}|{key.port}|{key.protocol}".encode()) % span


DEFAULT_OPTIONS = ServiceOptions()


def _masquerade_source(fe: Frontend, vip: IPAddress, node_addresses: list[IPAddress],
                       snat: SnatConfig | None) -> IPAddress | None:
    """The source a masqueraded path rewrites to: the node address the
    client used when it used one, the node's SNAT address otherwise."""
    if not fe.masquerade_external:
        return None
    if vip in node_addresses:
        return vip
    if snat is not None and snat.address(fe.family) is not None:
        return snat.address(fe.family)
    return next((a for a in node_addresses if a.version == fe.family), None)


def guarded_addresses(frontends: Iterable[Frontend], node_addresses: Iterable[IPAddress]) -> list[IPAddress]:
    """Service-only addresses: ClusterIPs, externalIPs and LoadBalancer IPs
    that are not node addresses."""
    nodes = set(node_addresses)
    out: dict[IPAddress, None] = {}
    for fe in frontends:
        if fe.kind is not FrontendKind.NODE_PORT and fe.ip is not None and fe.ip not in nodes:
            out[fe.ip] = None
    return list(out)


def _frontend_translations(fe: Frontend, node_addresses: list[IPAddress], snat: SnatConfig | None,
                           options: ServiceOptions) -> list[tuple[TranslationKey, Translation]]:
    if fe.kind is FrontendKind.NODE_PORT:
        vips = [a for a in node_addresses if a.version == fe.family]
    else:
        vips = [fe.ip] if fe.ip is not None else []
    out = []
    for vip in vips:
        key = TranslationKey(vip, fe.port, fe.protocol)
        if fe.backends:
            src = _masquerade_source(fe, vip, node_addresses, snat)
            if fe.masquerade_external and src is None:
                log.warning("%s: no IPv%d node address to masquerade with", key, fe.family)
            paths = tuple(sorted({CnatPath(b.ip, b.port, src) for b in fe.backends if b.ip.version == vip.version}))
            if not paths:
                continue
            balancing = Balancing.CLIENT_IP if fe.affinity_timeout else Balancing.ECMP
            out.append((key, Translation(paths, balancing, service=fe.service, role="backends")))
        elif vip in node_addresses and options.node_address_rejects:
            out.append((key, Translation((CnatPath(options.sink(key), fe.port),), service=fe.service,
                                         role="reject")))
    return out


def desired_translations(frontends: list[Frontend], node_addresses: list[IPAddress], *,
                         snat: SnatConfig | None = None,
                         options: ServiceOptions = DEFAULT_OPTIONS) -> dict[TranslationKey, Translation]:
    """One cnat translation per (address, port, protocol) of every frontend
    that has backends or rejects on a node address, plus one anchor per
    guarded address.  When two frontends claim the same key (two services
    on one externalIP and port), the first in ``frontends`` order wins."""
    node_addresses = list(node_addresses)
    out: dict[TranslationKey, Translation] = {}
    for fe in frontends:
        for key, value in _frontend_translations(fe, node_addresses, snat, options):
            if key in out:
                log.warning("%s claimed by %s and %s: keeping %s", key, out[key].service, fe.service,
                            out[key].service)
                continue
            out[key] = value
    if options.anchors:
        owners = {fe.ip: fe.service for fe in reversed(frontends) if fe.ip is not None}
        for vip in guarded_addresses(frontends, node_addresses):
            key = TranslationKey(vip, ANCHOR_PORT, ANCHOR_PROTOCOL)
            out.setdefault(key, Translation((CnatPath(options.sink(key), ANCHOR_PORT),),
                                            service=owners.get(vip, ""), role="anchor"))
    return out


def desired_reject_routes(frontends: Iterable[Frontend], node_addresses: Iterable[IPAddress],
                          translations: dict[TranslationKey, Translation], *,
                          options: ServiceOptions = DEFAULT_OPTIONS) -> dict[RejectRouteKey, RejectRoute]:
    """A guard route per guarded address and the reject prefixes in use."""
    frontends = list(frontends)
    out: dict[RejectRouteKey, RejectRoute] = {}
    for vip in guarded_addresses(frontends, node_addresses):
        out[RejectRouteKey(host_prefix(vip), options.table_id)] = RejectRoute("guard")
    for value in translations.values():
        for p in value.paths:
            net = options.reject_net(p.ip.version)
            if p.ip in net:
                out[RejectRouteKey(net, options.table_id)] = RejectRoute("reject sinks")
    return out


def desired_service_state(frontends: list[Frontend], node_addresses: list[IPAddress], *,
                          snat: SnatConfig | None = None,
                          options: ServiceOptions = DEFAULT_OPTIONS) -> dict[Key, Any]:
    """Everything services need, as reconciler keys and values: translations,
    reject routes, the SNAT entry and its exclusions (interface roles are
    set per interface, see ``CnatInterface``)."""
    translations = desired_translations(frontends, node_addresses, snat=snat, options=options)
    out: dict[Any, Any] = dict(translations)
    out.update(desired_reject_routes(frontends, node_addresses, translations, options=options))
    out.update(desired_snat(snat))
    return out


def service_descriptors(conn: Any, *, store: OwnershipStore | None = None,
                        options: ServiceOptions = DEFAULT_OPTIONS) -> list[Descriptor[Any, Any]]:
    """The descriptors for ``desired_service_state`` keys, sharing one
    ownership record (pass a file-backed ``OwnershipStore`` so a restarted
    agent also removes what it made and no longer wants)."""
    store = store if store is not None else OwnershipStore()
    return [
        CnatTranslationDescriptor(conn, store=store, reject_nets=options.reject_nets, table_id=options.table_id),
        RejectRouteDescriptor(conn, store=store, tables=(options.table_id,)),
        CnatSnatDescriptor(conn, store=store),
    ]
