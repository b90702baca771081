"""Dataplane-neutral updates: what the calculation hands every dataplane.

This is the vocabulary of the gRPC ``Sync`` stream and of ``Apply``: selectors
have already been resolved into IP sets, Kubernetes objects into endpoints
with ordered tiers, so a dataplane only renders. Order on the wire follows
Felix: IP sets, policies, profiles, endpoints when adding; the reverse when
removing; then ``InSync`` once the initial snapshot is complete.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Union

from vppagent.model.resources import (
    Action, EndpointSlice, IPAddress, IPNetwork, IPPool, NamedPort, PortRange, Service, TierDefault,
)


class IPSetType(str, enum.Enum):
    NET = "net"                    # members are CIDRs
    IP_AND_PORT = "ip-and-port"    # members are "ip,proto:port" (named ports, services)


@dataclass(frozen=True)
class RuleOrigin:
    """Where a rendered rule came from, for explanations and counters."""

    policy: str      # policy key, profile name
    index: int       # index in the source rule list


@dataclass(frozen=True)
class RenderedRule:
    """A rule with selectors replaced by IP set ids.

    Matching: the packet must be in every ``*_ip_set_ids`` set and in none of
    the ``not_*_ip_set_ids``; ports match if any range or any named-port set
    matches; nets match if the address is in any net.
    """

    action: Action
    origin: RuleOrigin
    ip_version: int | None = None
    protocol: int | None = None
    not_protocol: int | None = None
    src_nets: tuple[IPNetwork, ...] = ()
    not_src_nets: tuple[IPNetwork, ...] = ()
    dst_nets: tuple[IPNetwork, ...] = ()
    not_dst_nets: tuple[IPNetwork, ...] = ()
    src_ports: tuple[PortRange, ...] = ()
    not_src_ports: tuple[PortRange, ...] = ()
    dst_ports: tuple[PortRange, ...] = ()
    not_dst_ports: tuple[PortRange, ...] = ()
    src_named_port_ip_set_ids: tuple[str, ...] = ()
    not_src_named_port_ip_set_ids: tuple[str, ...] = ()
    dst_named_port_ip_set_ids: tuple[str, ...] = ()
    not_dst_named_port_ip_set_ids: tuple[str, ...] = ()
    src_ip_set_ids: tuple[str, ...] = ()
    not_src_ip_set_ids: tuple[str, ...] = ()
    dst_ip_set_ids: tuple[str, ...] = ()
    not_dst_ip_set_ids: tuple[str, ...] = ()
    icmp_type: int | None = None
    icmp_code: int | None = None
    not_icmp_type: int | None = None
    not_icmp_code: int | None = None

    def ip_set_ids(self) -> tuple[str, ...]:
        """Every IP set this rule refers to."""
        return (
            self.src_ip_set_ids + self.not_src_ip_set_ids + self.dst_ip_set_ids
            + self.not_dst_ip_set_ids + self.src_named_port_ip_set_ids
            + self.not_src_named_port_ip_set_ids + self.dst_named_port_ip_set_ids
            + self.not_dst_named_port_ip_set_ids
        )


@dataclass(frozen=True)
class RenderedPolicy:
    inbound_rules: tuple[RenderedRule, ...] = ()
    outbound_rules: tuple[RenderedRule, ...] = ()
    untracked: bool = False
    pre_dnat: bool = False
    apply_on_forward: bool = False


@dataclass(frozen=True)
class PolicyID:
    tier: str
    name: str    # policy key: "<namespace>/<name>" or the global name

    def __str__(self) -> str:
        return f"{self.tier}/{self.name}"


@dataclass(frozen=True)
class TierInfo:
    """One tier as it applies to an endpoint: policies in evaluation order."""

    name: str
    default_action: TierDefault = TierDefault.DENY
    ingress_policies: tuple[str, ...] = ()
    egress_policies: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkloadEndpointInfo:
    namespace: str
    pod: str
    node: str
    endpoint: str
    interface_name: str
    mac: str = ""
    nets: tuple[IPNetwork, ...] = ()
    profile_ids: tuple[str, ...] = ()
    tiers: tuple[TierInfo, ...] = ()
    ports: tuple[NamedPort, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class HostEndpointInfo:
    name: str
    node: str
    interface_name: str
    expected_ips: tuple[IPAddress, ...] = ()
    profile_ids: tuple[str, ...] = ()
    tiers: tuple[TierInfo, ...] = ()
    untracked_tiers: tuple[TierInfo, ...] = ()
    pre_dnat_tiers: tuple[TierInfo, ...] = ()
    forward_tiers: tuple[TierInfo, ...] = ()


@dataclass(frozen=True)
class IPSetUpdate:
    id: str
    type: IPSetType
    members: frozenset[str]


@dataclass(frozen=True)
class IPSetDeltaUpdate:
    id: str
    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()


@dataclass(frozen=True)
class IPSetRemove:
    id: str


@dataclass(frozen=True)
class PolicyUpdate:
    id: PolicyID
    policy: RenderedPolicy


@dataclass(frozen=True)
class PolicyRemove:
    id: PolicyID


@dataclass(frozen=True)
class ProfileUpdate:
    id: str
    inbound_rules: tuple[RenderedRule, ...] = ()
    outbound_rules: tuple[RenderedRule, ...] = ()


@dataclass(frozen=True)
class ProfileRemove:
    id: str


@dataclass(frozen=True)
class WorkloadEndpointUpdate:
    id: str
    endpoint: WorkloadEndpointInfo


@dataclass(frozen=True)
class WorkloadEndpointRemove:
    id: str


@dataclass(frozen=True)
class HostEndpointUpdate:
    id: str
    endpoint: HostEndpointInfo


@dataclass(frozen=True)
class HostEndpointRemove:
    id: str


@dataclass(frozen=True)
class ServiceUpdate:
    id: str
    service: Service
    slices: tuple[EndpointSlice, ...] = ()


@dataclass(frozen=True)
class ServiceRemove:
    id: str


@dataclass(frozen=True)
class IPPoolUpdate:
    id: str
    pool: IPPool


@dataclass(frozen=True)
class IPPoolRemove:
    id: str


class RouteEncap(str, enum.Enum):
    NONE = "none"      # plain route via the node's address (the underlay routes pod addresses)
    VXLAN = "vxlan"    # through the VXLAN overlay to the node's address


@dataclass(frozen=True)
class RouteInfo:
    """A route to another node's pod block: where it lives and how to get there."""

    dst: IPNetwork
    node: str
    gateway: IPAddress          # the node's address on the underlay
    encap: RouteEncap = RouteEncap.NONE
    nat_outgoing: bool = False  # the block's pool masquerades traffic leaving the cluster


@dataclass(frozen=True)
class RouteUpdate:
    id: str                     # the destination CIDR
    route: RouteInfo


@dataclass(frozen=True)
class RouteRemove:
    id: str


@dataclass(frozen=True)
class InSync:
    """The initial snapshot is complete: a dataplane may now write."""


@dataclass(frozen=True)
class ConfigUpdate:
    config: tuple[tuple[str, str], ...] = field(default_factory=tuple)


Update = Union[
    ConfigUpdate, InSync,
    IPSetUpdate, IPSetDeltaUpdate, IPSetRemove,
    PolicyUpdate, PolicyRemove, ProfileUpdate, ProfileRemove,
    WorkloadEndpointUpdate, WorkloadEndpointRemove, HostEndpointUpdate, HostEndpointRemove,
    ServiceUpdate, ServiceRemove, IPPoolUpdate, IPPoolRemove, RouteUpdate, RouteRemove,
]

REMOVALS = (
    IPSetRemove, PolicyRemove, ProfileRemove, WorkloadEndpointRemove, HostEndpointRemove,
    ServiceRemove, IPPoolRemove, RouteRemove,
)
