"""Reconciler keys and values of the VPP dataplane.

Two reconcilers share one connection: the pod reconciler (interfaces,
tables, routes: desired state comes from CNI and is complete from the start)
and the policy reconciler (npol, ACLs, cnat features: desired state comes
from the datastore and waits for in-sync).  ``IfaceRefKey`` is how the
second learns about interfaces the first (or the operator) made.

Values keep create-time attributes VPP's dumps do not return (ring sizes,
memif secrets); descriptors compare only what a dump can show.
"""

from __future__ import annotations

from dataclasses import dataclass

Range = tuple[int, int]


# ------------------------------------------------------------------ pods

@dataclass(frozen=True, order=True)
class VrfKey:
    """A pod's own IP table (``af`` 4 or 6) with a default route into table 0."""

    ifname: str
    af: int


@dataclass(frozen=True)
class VrfValue:
    table_id: int


@dataclass(frozen=True, order=True)
class LoopbackKey:
    """The loopback pod interfaces are unnumbered to: the pod's own (``owner``
    = its interface name, holding the pod's addresses) or the shared one
    (``owner`` = "", used without per-pod VRFs)."""

    owner: str


@dataclass(frozen=True)
class LoopbackValue:
    tables: tuple[int, int]                  # (ip4 table, ip6 table)
    addresses: tuple[str, ...]               # "10.0.0.1/32", sorted


@dataclass(frozen=True, order=True)
class MemifSocketKey:
    ifname: str


@dataclass(frozen=True)
class MemifSocketValue:
    filename: str


@dataclass(frozen=True, order=True)
class PodIfaceKey:
    ifname: str


@dataclass(frozen=True)
class PodIfaceValue:
    kind: str                     # tap | af_packet | memif
    tables: tuple[int, int]
    loopback: str                 # LoopbackKey.owner it is unnumbered to
    mtu: int
    ip6: bool
    mac: str = ""                 # VPP-side MAC (af_packet, memif)
    host_if_name: str = ""        # af_packet: the veth's host end; tap: the name inside the pod
    netns: str = ""               # tap: the pod's netns
    rx_queues: int = 1
    tx_queues: int = 1
    ring_size: int = 1024
    memif_id: int = 0
    secret: str = ""              # memif; never returned by a dump
    gso: bool = True
    up: bool = True
    af_packet_ring: tuple[int, int, int, int] = (0, 0, 0, 0)   # rx frame, rx frames/block, tx frame, tx frames; 0: VPP's


@dataclass(frozen=True, order=True)
class PodRouteKey:
    """A pod address: /32 or /128 route in table 0 via the pod interface
    (and a static neighbour when the interface is Ethernet)."""

    ifname: str
    prefix: str


@dataclass(frozen=True)
class PodRouteValue:
    neighbor_mac: str = ""


# ------------------------------------------------------------------ policy

@dataclass(frozen=True, order=True)
class IfaceRefKey:
    """An interface policy is attached to (a pod's, or a host endpoint's)."""

    ifname: str


@dataclass(frozen=True)
class IfaceRefValue:
    sw_if_index: int
    kind: str = "pod"                            # pod | host
    facing: str = "host"                         # host | uplink (invert rx/tx)
    allowed_sources: tuple[str, ...] | None = None   # strict source check (pods)


@dataclass(frozen=True, order=True)
class CnatFeatureKey:
    """cnat's feature arc on an interface we do not own (uplink, host endpoints):
    npol and services see packets only where it is enabled."""

    ifname: str


@dataclass(frozen=True)
class CnatFeatureValue:
    sw_if_index: int


@dataclass(frozen=True, order=True)
class NpolSetKey:
    """An npol ipset: one of the update stream's IP sets, or the
    intersection of several (``ids``), optionally limited to a port range."""

    kind: str                     # net | ipport
    ids: tuple[str, ...]
    range: Range | None = None


@dataclass(frozen=True)
class NpolSetValue:
    members: frozenset[str]       # "10.0.0.0/24" | "10.0.0.1,6:80"


@dataclass(frozen=True)
class NpolEntry:
    is_src: bool
    is_not: bool
    type: int                     # 0 CIDR, 1 PORT_RANGE, 2 PORT_IP_SET, 3 IP_SET
    value: str | Range | NpolSetKey


@dataclass(frozen=True)
class NpolRule:
    action: int                   # 0 allow, 1 deny, 2 log, 3 pass
    filters: tuple[tuple[int, int, int], ...]    # (type, value, should_match)
    entries: tuple[NpolEntry, ...]

    def set_keys(self) -> tuple[NpolSetKey, ...]:
        return tuple(e.value for e in self.entries if isinstance(e.value, NpolSetKey))


@dataclass(frozen=True, order=True)
class NpolPolicyKey:
    """Content-addressed: ``digest`` covers the rules, ``ref`` says where they come from."""

    ref: str
    digest: str


@dataclass(frozen=True)
class NpolPolicyValue:
    items: tuple[tuple[bool, NpolRule], ...]     # (is_inbound i.e. VPP rx, rule)


@dataclass(frozen=True, order=True)
class NpolIfaceKey:
    ifname: str


@dataclass(frozen=True)
class NpolIfaceValue:
    sw_if_index: int
    rx: tuple[NpolPolicyKey, ...]
    tx: tuple[NpolPolicyKey, ...]
    profiles: tuple[NpolPolicyKey, ...]
    invert: bool = False
    policy_default: int = 2       # NPOL_DEFAULT_PASS: on to the profiles
    profile_default: int = 1      # NPOL_DEFAULT_DENY


@dataclass(frozen=True, order=True)
class AclRule:
    is_permit: int                # 0 deny, 1 permit, 2 permit + reflect
    src: str
    dst: str
    proto: int = 0
    sport: Range = (0, 65535)     # ICMP: type range
    dport: Range = (0, 65535)     # ICMP: code range


@dataclass(frozen=True, order=True)
class AclKey:
    """Content-addressed ACL (tag ``vppagent:acl:<digest>``)."""

    digest: str


@dataclass(frozen=True)
class AclValue:
    rules: tuple[AclRule, ...]


@dataclass(frozen=True, order=True)
class AclBindingKey:
    ifname: str


@dataclass(frozen=True)
class AclBindingValue:
    sw_if_index: int
    inputs: tuple[AclKey, ...]
    outputs: tuple[AclKey, ...]
