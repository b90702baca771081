"""The canonical, immutable model of everything the agent is told about.

Edges (YAML manifests, Kubernetes objects, protobuf) convert into these types
and nothing else; calculation and dataplanes only ever see them. All values are
frozen dataclasses with tuples and frozensets so they hash, compare and can be
shared between threads without copies.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Union

from vppagent.selector import ALL, Selector

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

# Labels Calico derives for every Kubernetes workload.
LABEL_NAMESPACE = "projectcalico.org/namespace"
LABEL_ORCHESTRATOR = "projectcalico.org/orchestrator"
LABEL_SERVICE_ACCOUNT = "projectcalico.org/serviceaccount"
LABEL_NAME = "projectcalico.org/name"
NAMESPACE_LABEL_PREFIX = "pcns."
SERVICE_ACCOUNT_LABEL_PREFIX = "pcsa."
K8S_NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
NAMESPACE_PROFILE_PREFIX = "kns."
SERVICE_ACCOUNT_PROFILE_PREFIX = "ksa."
DEFAULT_TIER = "default"
DEFAULT_TIER_ORDER = 1_000_000.0
K8S_POLICY_ORDER = 1000.0


class Action(str, enum.Enum):
    ALLOW = "Allow"
    DENY = "Deny"
    LOG = "Log"
    PASS = "Pass"


class Direction(str, enum.Enum):
    INGRESS = "Ingress"
    EGRESS = "Egress"


class TierDefault(str, enum.Enum):
    DENY = "Deny"
    PASS = "Pass"


PROTOCOL_NUMBERS: dict[str, int] = {
    "ICMP": 1,
    "TCP": 6,
    "UDP": 17,
    "ICMPV6": 58,
    "SCTP": 132,
    "UDPLITE": 136,
}
PROTOCOL_NAMES: dict[int, str] = {
    1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP", 136: "UDPLite"
}
PORT_PROTOCOLS = frozenset({6, 17, 132, 136})
ICMP_PROTOCOLS = frozenset({1, 58})


def protocol_name(number: int) -> str:
    """Human name of an IP protocol number (the number itself when unnamed)."""
    return PROTOCOL_NAMES.get(number, str(number))


@dataclass(frozen=True, order=True)
class PortRange:
    """An inclusive port range; a single port has ``first == last``."""

    first: int
    last: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}:{self.last}"


@dataclass(frozen=True)
class PortMatch:
    """A rule's port list: numeric ranges plus container port names."""

    ranges: tuple[PortRange, ...] = ()
    names: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.ranges or self.names)


@dataclass(frozen=True)
class ICMPMatch:
    type: int
    code: int | None = None


@dataclass(frozen=True)
class ServiceAccountMatch:
    names: tuple[str, ...] = ()
    selector: Selector | None = None


@dataclass(frozen=True)
class ServiceMatch:
    """Match the backends of a Kubernetes Service (``services: {name, namespace}``)."""

    name: str
    namespace: str


@dataclass(frozen=True)
class EntityRule:
    """One side (source or destination) of a rule."""

    nets: tuple[IPNetwork, ...] = ()
    not_nets: tuple[IPNetwork, ...] = ()
    selector: Selector | None = None
    not_selector: Selector | None = None
    namespace_selector: Selector | None = None
    service_accounts: ServiceAccountMatch | None = None
    services: ServiceMatch | None = None
    ports: PortMatch = field(default_factory=PortMatch)
    not_ports: PortMatch = field(default_factory=PortMatch)


@dataclass(frozen=True)
class Rule:
    action: Action
    ip_version: int | None = None
    protocol: int | None = None
    not_protocol: int | None = None
    icmp: ICMPMatch | None = None
    not_icmp: ICMPMatch | None = None
    source: EntityRule = field(default_factory=EntityRule)
    destination: EntityRule = field(default_factory=EntityRule)


ALLOW_ALL_RULES: tuple[Rule, ...] = (Rule(action=Action.ALLOW),)


@dataclass(frozen=True)
class Tier:
    name: str
    order: float | None = None
    default_action: TierDefault = TierDefault.DENY


@dataclass(frozen=True)
class Policy:
    """A Calico NetworkPolicy (namespaced), GlobalNetworkPolicy (``namespace`` None),
    or a converted Kubernetes NetworkPolicy (name ``knp.default.<name>``)."""

    name: str
    namespace: str | None
    tier: str = DEFAULT_TIER
    order: float | None = None
    selector: Selector = ALL
    namespace_selector: Selector | None = None
    service_account_selector: Selector | None = None
    types: frozenset[Direction] = frozenset({Direction.INGRESS})
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    do_not_track: bool = False
    pre_dnat: bool = False
    apply_on_forward: bool = False

    @property
    def key(self) -> str:
        """Identity unique across namespaced and global policies."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class Profile:
    name: str
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    labels_to_apply: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class NamedPort:
    name: str
    protocol: int
    port: int


@dataclass(frozen=True)
class WorkloadEndpoint:
    """A pod's interface. ``labels`` are its own; profiles contribute inherited ones."""

    namespace: str
    pod: str
    node: str
    endpoint: str = "eth0"
    orchestrator: str = "k8s"
    interface_name: str = ""
    mac: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    profiles: tuple[str, ...] = ()
    nets: tuple[IPNetwork, ...] = ()
    ports: tuple[NamedPort, ...] = ()
    service_account: str = ""
    annotations: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.node}/{self.orchestrator}/{self.namespace}/{self.pod}/{self.endpoint}"


@dataclass(frozen=True)
class HostEndpoint:
    name: str
    node: str
    interface_name: str = ""
    expected_ips: tuple[IPAddress, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    profiles: tuple[str, ...] = ()
    ports: tuple[NamedPort, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.node}/{self.name}"


@dataclass(frozen=True)
class NetworkSet:
    """A NetworkSet (namespaced) or GlobalNetworkSet (``namespace`` None)."""

    name: str
    namespace: str | None
    labels: tuple[tuple[str, str], ...] = ()
    nets: tuple[IPNetwork, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ServiceAccount:
    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class IPPool:
    name: str
    cidr: IPNetwork
    block_size: int
    nat_outgoing: bool = False
    disabled: bool = False
    node_selector: Selector = ALL
    ipip_mode: str = "Never"
    vxlan_mode: str = "Never"


@dataclass(frozen=True)
class ServicePort:
    name: str
    protocol: int
    port: int
    target_port: int | str
    node_port: int | None = None


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    type: str = "ClusterIP"
    cluster_ips: tuple[IPAddress, ...] = ()
    ports: tuple[ServicePort, ...] = ()
    external_ips: tuple[IPAddress, ...] = ()
    load_balancer_ips: tuple[IPAddress, ...] = ()
    session_affinity: bool = False
    affinity_timeout: int = 10800
    external_traffic_local: bool = False
    internal_traffic_local: bool = False
    selector: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class EndpointAddress:
    addresses: tuple[IPAddress, ...]
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node: str = ""
    target: str = ""


@dataclass(frozen=True)
class EndpointPort:
    name: str
    protocol: int
    port: int


@dataclass(frozen=True)
class EndpointSlice:
    namespace: str
    name: str
    service: str
    address_type: str = "IPv4"
    endpoints: tuple[EndpointAddress, ...] = ()
    ports: tuple[EndpointPort, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Node:
    name: str
    addresses: tuple[IPAddress, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    pod_cidrs: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class BlockAffinity:
    """An IPAM block claimed by a node: the routes other nodes need to reach its pods."""

    cidr: IPNetwork
    node: str

    @property
    def key(self) -> str:
        return str(self.cidr)


Resource = Union[
    Tier, Policy, Profile, WorkloadEndpoint, HostEndpoint, NetworkSet, Namespace,
    ServiceAccount, IPPool, Service, EndpointSlice, Node, BlockAffinity,
]


def resource_key(resource: Resource) -> tuple[str, str]:
    """(kind, identity) under which a datastore keeps a resource."""
    kind = type(resource).__name__
    key = getattr(resource, "key", None)
    if key is None:
        key = resource.name  # type: ignore[union-attr]
    return kind, key
