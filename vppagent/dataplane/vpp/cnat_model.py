"""Service objects as the agent keeps them, and their cnat wire form.

A cnat translation is keyed in VPP by (VIP, port, protocol): a second
``cnat_translation_update`` for the same key updates the first in place
(same id).  So that is our key too, and the value holds only what we vary.
Everything else the message carries is fixed by this module, because
VPP's dump does not return it (``flags``, ``is_real_ip``,
``flow_hash_config`` come back as 0) and because VPP only honours
``lb_type`` and ``flow_hash_config`` when it first creates a translation:

- ``is_real_ip = 1`` always: the cnat client *interposes* on whatever the FIB
  already has for the VIP.  Packets matching a translation are translated;
  every other packet to that address follows the FIB, which for a ClusterIP
  is our ICMP-prohibit route (see ``cnat_routes``), so unknown ports and
  services without endpoints are refused instead of silently dropped (an
  ``is_real_ip = 0`` VIP is EXCLUSIVE and drops them).
- ``flags = ALLOC_PORT``: when a path rewrites the source (masquerade), VPP
  picks a free source port so clients sharing the node address cannot clash.
- ``Balancing.ECMP`` is ``lb_type`` default with VPP's 5-tuple hash;
  ``Balancing.CLIENT_IP`` (``sessionAffinity: ClientIP``) is maglev hashing
  the source address only, so one client always lands on one backend and
  only about 1/N of clients move when a backend comes or goes.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Mapping

from vppagent.model.resources import IPAddress, IPNetwork
from vppagent.vpp.errors import VppError

INDEX_INVALID = 0xFFFFFFFF            # "no interface": the endpoint is an address
ALLOC_PORT = 1                        # CNAT_TRANSLATION_ALLOC_PORT
LB_DEFAULT, LB_MAGLEV = 0, 1          # vl_api_cnat_lb_type_t
FLOW_HASH_SRC_IP = 1                  # IP_API_V2_FLOW_HASH_SRC_IP
PATH_FLAG_NO_NAT = 2                  # the only path flag we set or read back; VPP adds
                                      # its tracker flags (ACTIVE = 4, ...) to dumped paths
ADDRESS_IP4, ADDRESS_IP6 = 0, 1       # vl_api_address_family_t
FIB_PATH_TYPE_ICMP_PROHIBIT = 6       # vl_api_fib_path_type_t
PROTOCOLS = {6: "TCP", 17: "UDP", 132: "SCTP"}


class NotApplied(VppError):
    """An op of a failed pipeline whose effect is not visible in VPP."""


class Balancing(str, enum.Enum):
    """How a translation picks a backend for a new flow."""

    ECMP = "ecmp"              # lb_type default, flow hash = VPP default (5-tuple)
    CLIENT_IP = "client-ip"    # lb_type maglev, flow hash = source address only

    @property
    def lb_type(self) -> int:
        return LB_MAGLEV if self is Balancing.CLIENT_IP else LB_DEFAULT

    @property
    def flow_hash(self) -> int:
        return FLOW_HASH_SRC_IP if self is Balancing.CLIENT_IP else 0

    @classmethod
    def from_lb_type(cls, lb_type: int) -> "Balancing":
        return cls.CLIENT_IP if int(lb_type) == LB_MAGLEV else cls.ECMP


@dataclass(frozen=True, order=True)
class TranslationKey:
    """One (VIP, port, protocol): what a cnat translation matches."""

    vip: IPAddress
    port: int
    protocol: int

    def __str__(self) -> str:
        host = f"[{self.vip}]" if self.vip.version == 6 else str(self.vip)
        return f"{host}:{self.port}/{PROTOCOLS.get(self.protocol, self.protocol)}"


@dataclass(frozen=True, order=True)
class CnatPath:
    """One backend: DNAT to ``ip:port``; ``snat`` also rewrites the source."""

    ip: IPAddress
    port: int
    snat: IPAddress | None = None


@dataclass(frozen=True)
class Translation:
    """The paths of one translation (never empty: VPP 26.10 crashes on
    ``cnat_translation_update`` without paths) and how it balances.
    ``service`` and ``role`` say why it exists (not written to VPP)."""

    paths: tuple[CnatPath, ...]
    balancing: Balancing = Balancing.ECMP
    service: str = field(default="", compare=False)
    role: str = field(default="backends", compare=False)   # backends | reject | anchor

    def __post_init__(self) -> None:
        if not self.paths:
            raise ValueError("a cnat translation needs at least one path")


@dataclass(frozen=True, order=True)
class RejectRouteKey:
    """A route whose only path is ICMP prohibit."""

    prefix: IPNetwork
    table_id: int = 0

    def __str__(self) -> str:
        return f"reject {self.prefix} table {self.table_id}"


@dataclass(frozen=True)
class RejectRoute:
    """``why``: a ClusterIP guard or the reject sink (not written to VPP)."""

    why: str = field(default="", compare=False)


def host_prefix(ip: IPAddress) -> IPNetwork:
    return ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}")


def unspecified(version: int) -> IPAddress:
    return ipaddress.IPv4Address(0) if version == 4 else ipaddress.IPv6Address(0)


# ------------------------------------------------------------------ wire form

def endpoint(ip: IPAddress, port: int = 0) -> dict[str, Any]:
    """A cnat endpoint given by address.  ``sw_if_index`` must be ~0: a zero
    would make VPP take the address of interface 0 instead."""
    return {"addr": str(ip), "sw_if_index": INDEX_INVALID,
            "if_af": ADDRESS_IP6 if ip.version == 6 else ADDRESS_IP4, "port": port}


def encode_translation(key: TranslationKey, value: Translation) -> dict[str, Any]:
    """The ``translation`` argument of ``cnat_translation_update``."""
    if not value.paths:
        raise ValueError(f"{key}: refusing to send a cnat translation without paths")
    paths = []
    for p in value.paths:
        if p.ip.version != key.vip.version or (p.snat is not None and p.snat.version != key.vip.version):
            raise ValueError(f"{key}: path {p} mixes address families")
        src = p.snat if p.snat is not None else unspecified(key.vip.version)
        paths.append({"dst_ep": endpoint(p.ip, p.port), "src_ep": endpoint(src), "flags": 0})
    return {
        "vip": endpoint(key.vip, key.port),
        "id": 0,
        "ip_proto": key.protocol,
        "is_real_ip": 1,
        "flags": ALLOC_PORT,
        "lb_type": value.balancing.lb_type,
        "flow_hash_config": value.balancing.flow_hash,
        "paths": paths,
    }


def _ip(value: Any) -> IPAddress:
    return ipaddress.ip_address(str(value))


def decode_translation(t: Any) -> tuple[TranslationKey, Translation, int] | None:
    """A ``cnat_translation_details.translation`` back into (key, value, id);
    None for translations we could never have written (interface endpoints,
    path flags we do not set, no paths)."""
    vip = t.vip
    if int(vip.sw_if_index) != INDEX_INVALID or not t.paths:
        return None
    key = TranslationKey(_ip(vip.addr), int(vip.port), int(t.ip_proto))
    paths = []
    for p in t.paths:
        if int(p.dst_ep.sw_if_index) != INDEX_INVALID or int(p.src_ep.sw_if_index) != INDEX_INVALID:
            return None
        if int(p.flags) & PATH_FLAG_NO_NAT or int(p.src_ep.port):
            return None
        src = _ip(p.src_ep.addr)
        paths.append(CnatPath(_ip(p.dst_ep.addr), int(p.dst_ep.port), None if int(src) == 0 else src))
    return key, Translation(tuple(paths), Balancing.from_lb_type(t.lb_type)), int(t.id)


def reject_route_args(key: RejectRouteKey, is_add: bool) -> dict[str, Any]:
    """``ip_route_add_del`` for a route to ICMP prohibit (VPP answers
    "administratively prohibited": a fatal error for TCP and UDP sockets)."""
    return {
        "is_add": is_add,
        "is_multipath": False,
        "route": {
            "table_id": key.table_id,
            "prefix": str(key.prefix),
            "paths": [{"sw_if_index": INDEX_INVALID, "table_id": key.table_id,
                       "type": FIB_PATH_TYPE_ICMP_PROHIBIT, "weight": 1,
                       "proto": 1 if key.prefix.version == 6 else 0}],
        },
    }



def is_reject_route(route: Any) -> bool:
    """A dumped route that looks like one of ours (one ICMP prohibit path);
    ownership is decided by the caller's records."""
    paths = list(route.paths)
    return len(paths) == 1 and int(paths[0].type) == FIB_PATH_TYPE_ICMP_PROHIBIT


def describe(values: Mapping[TranslationKey, Translation]) -> list[str]:
    """Readable lines for logs and tests."""
    out = []
    for k in sorted(values):
        v = values[k]
        paths = ", ".join(f"{p.ip}:{p.port}" + (f" snat {p.snat}" if p.snat else "") for p in v.paths)
        out.append(f"{k} {v.balancing.value} [{paths}] ({v.role} {v.service})")
    return out
