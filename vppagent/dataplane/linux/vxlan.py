"""The VXLAN overlay between nodes: the shared convention and the Linux device.

Every node (Linux or VPP) speaks the same VXLAN: VNI 4096 on UDP 4789, and
each node's VTEP has a MAC derived from its Kubernetes node name
(``vtep_mac``), so any node can compute any peer's MAC without a control
plane. Calico publishes the MAC and a tunnel address per node instead; here
the peer's underlay address is the next hop on the overlay, so there are no
tunnel addresses at all.

On Linux the overlay is one device per address family (``vxlan.vppagent``,
``vxlan6.vppagent``) with learning off; each remote node is a permanent
neighbour (its underlay address → its VTEP MAC) plus a forwarding entry
(its VTEP MAC → its underlay address).

Checksums leave a Linux node complete: the device's transmit checksum
offload is off (the kernel computes the inner checksums before
encapsulating) and so are outer UDP checksums on IPv4 (zero is valid
there). Otherwise the inner checksum travels "partial" and VPP's af_packet
input, which parses only the outer headers, marks the outer UDP header for
completion and never completes the inner one: the pod behind VPP drops the
packet (seen with TCP from a Linux pod to a VPP pod). Felix, likewise, turns
this offload off on ``vxlan.calico`` where the kernel mishandles it.

pyroute2 is only imported by the descriptors' netlink calls (through
``Netlink``), so importing the convention is cheap, e.g. for the VPP dataplane.
"""

from __future__ import annotations

import errno
import hashlib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from vppagent.dataplane.linux.netlink_ns import delete_link, get_link, link_kind
from vppagent.reconciler import Descriptor

if TYPE_CHECKING:  # pragma: no cover
    from vppagent.dataplane.linux.routes import Netlink

VXLAN_VNI = 4096
VXLAN_PORT = 4789
DEVICES = {4: "vxlan.vppagent", 6: "vxlan6.vppagent"}
OVERHEAD = {4: 50, 6: 70}          # outer IP + UDP + VXLAN headers and the inner Ethernet header
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
IFF_UP = 0x1
DEFAULT_UNDERLAY_MTU = 1500


def vtep_mac(node_name: str) -> str:
    """The VTEP MAC of a node: locally administered, unicast, stable per name."""
    b = bytearray(hashlib.sha256(("vppagent-vtep:" + node_name).encode()).digest()[:6])
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


# ------------------------------------------------------------------ keys


@dataclass(frozen=True, order=True)
class VxlanDeviceKey:
    """The overlay device of one address family (``DEVICES[family]``)."""

    family: int


@dataclass(frozen=True)
class VxlanDeviceValue:
    mac: str                      # this node's vtep_mac
    mtu: int = 0                  # 0: the underlay's MTU minus OVERHEAD, read when written
    vni: int = VXLAN_VNI
    port: int = VXLAN_PORT
    learning: bool = False
    udp_csum: bool = False        # IPv4 only (IPv6 needs checksums)
    tx_csum_offload: bool = False
    up: bool = True


@dataclass(frozen=True, order=True)
class VxlanPeerKey:
    """A remote node on the overlay, by its underlay address."""

    family: int
    gateway: str


@dataclass(frozen=True)
class VxlanPeerValue:
    mac: str                      # the peer's vtep_mac


def _devices(ipr: Any) -> Iterator[tuple[int, str, Any]]:
    """The overlay devices that exist: (family, name, link message)."""
    for family, name in DEVICES.items():
        link = get_link(ipr, name)
        if link is not None:
            yield family, name, link


SIOCETHTOOL, ETHTOOL_GTXCSUM, ETHTOOL_STXCSUM = 0x8946, 0x16, 0x17


def ethtool_value(name: str, cmd: int, data: int = 0) -> int:
    """A legacy ``ethtool_value`` command on ``name`` in the calling thread's netns."""
    import ctypes
    import fcntl
    import socket
    import struct

    value = ctypes.create_string_buffer(struct.pack("II", cmd, data))
    ifreq = bytearray(struct.pack("16sP", name.encode(), ctypes.addressof(value)).ljust(40, b"\0"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, SIOCETHTOOL, ifreq)
    return int(struct.unpack("II", value.raw[:8])[1])


def underlay_mtu(ipr: Any, family: int) -> int:
    """The smallest MTU among up links holding a global address of ``family``
    (the underlay; pods' host ends carry no addresses), ``DEFAULT_UNDERLAY_MTU``
    without any."""
    import socket

    af = socket.AF_INET if family == 4 else socket.AF_INET6
    holders = {a["index"] for a in ipr.addr("dump", family=af) if a["scope"] == 0}
    mtus = [link.get_attr("IFLA_MTU") for link in ipr.link("dump")
            if link["index"] in holders and link["flags"] & IFF_UP
            and link.get_attr("IFLA_IFNAME") not in DEVICES.values() and link.get_attr("IFLA_IFNAME") != "lo"]
    return min(mtus) if mtus else DEFAULT_UNDERLAY_MTU


class VxlanDeviceDescriptor(Descriptor[VxlanDeviceKey, VxlanDeviceValue]):
    """Creates the overlay device; ours by its dedicated name."""

    kind = VxlanDeviceKey
    name = "linux-vxlan-device"

    def __init__(self, netlink: "Netlink") -> None:
        super().__init__()
        self.netlink = netlink
        self._auto_mtu: dict[int, int] = {}

    def _mtu(self, ipr: Any, key: VxlanDeviceKey, value: VxlanDeviceValue) -> int:
        mtu = value.mtu or underlay_mtu(ipr, key.family) - OVERHEAD[key.family]
        self._auto_mtu[key.family] = mtu
        return mtu

    def create(self, key: VxlanDeviceKey, value: VxlanDeviceValue) -> int:
        def go(ipr: Any) -> int:
            attrs: dict[str, Any] = {"vxlan_id": value.vni, "vxlan_port": value.port,
                                     "vxlan_learning": int(value.learning)}
            if key.family == 6:
                attrs["vxlan_local6"] = "::"        # makes it an IPv6 device without naming an address
            else:
                attrs["vxlan_udp_csum"] = int(value.udp_csum)
            ipr.link("add", ifname=DEVICES[key.family], kind="vxlan", address=value.mac,
                     mtu=self._mtu(ipr, key, value), **attrs)
            link = get_link(ipr, DEVICES[key.family])
            if link is None:
                raise RuntimeError(f"{DEVICES[key.family]} vanished right after it was created")
            ethtool_value(DEVICES[key.family], ETHTOOL_STXCSUM, int(value.tx_csum_offload))
            if value.up:
                ipr.link("set", index=link["index"], state="up")
            return int(link["index"])
        return self.netlink.run(go)

    def update(self, key: VxlanDeviceKey, old: VxlanDeviceValue, new: VxlanDeviceValue, metadata: Any) -> int:
        def go(ipr: Any) -> int:
            link = get_link(ipr, DEVICES[key.family])
            if link is None:
                raise RuntimeError(f"{DEVICES[key.family]} is gone")
            ipr.link("set", index=link["index"], mtu=self._mtu(ipr, key, new))
            ethtool_value(DEVICES[key.family], ETHTOOL_STXCSUM, int(new.tx_csum_offload))
            return int(link["index"])
        return self.netlink.run(go)

    def needs_recreate(self, key: VxlanDeviceKey, old: VxlanDeviceValue, new: VxlanDeviceValue) -> bool:
        """Only the MTU and offloads change in place: a new MAC or a down/up cycle flushes
        the device's neighbours (permanent ones too), so its peers must be written again."""
        return replace(old, mtu=0, tx_csum_offload=False) != replace(new, mtu=0, tx_csum_offload=False)

    def delete(self, key: VxlanDeviceKey, value: VxlanDeviceValue, metadata: Any) -> None:
        def go(ipr: Any) -> None:
            link = get_link(ipr, DEVICES[key.family])
            if link is not None:
                delete_link(ipr, link["index"])
        self.netlink.run(go)

    def equivalent(self, key: VxlanDeviceKey, desired: VxlanDeviceValue, actual: VxlanDeviceValue) -> bool:
        """MTU 0 is "automatic": whatever the underlay gave when last read or written."""
        def resolved(v: VxlanDeviceValue) -> VxlanDeviceValue:
            return replace(v, mtu=self._auto_mtu.get(key.family, 0)) if v.mtu == 0 else v
        return resolved(desired) == resolved(actual)

    def dump(self) -> Mapping[VxlanDeviceKey, tuple[VxlanDeviceValue, Any]]:
        def go(ipr: Any) -> dict[VxlanDeviceKey, tuple[VxlanDeviceValue, Any]]:
            out = {}
            for family, name, link in _devices(ipr):
                self._auto_mtu[family] = underlay_mtu(ipr, family) - OVERHEAD[family]
                if link_kind(link) != "vxlan":      # our name on something else: replaced
                    value = VxlanDeviceValue(mac="", vni=-1)
                else:
                    data = link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
                    csum = data.get_attr("IFLA_VXLAN_UDP_CSUM")
                    value = VxlanDeviceValue(
                        mac=link.get_attr("IFLA_ADDRESS"), mtu=link.get_attr("IFLA_MTU"),
                        vni=data.get_attr("IFLA_VXLAN_ID"), port=data.get_attr("IFLA_VXLAN_PORT"),
                        learning=bool(data.get_attr("IFLA_VXLAN_LEARNING")),
                        udp_csum=bool(csum) if family == 4 else False,
                        tx_csum_offload=bool(ethtool_value(name, ETHTOOL_GTXCSUM)), up=bool(link["flags"] & IFF_UP))
                out[VxlanDeviceKey(family)] = (value, int(link["index"]))
            return out
        return self.netlink.run(go)


class VxlanPeerDescriptor(Descriptor[VxlanPeerKey, VxlanPeerValue]):
    """A permanent neighbour and a forwarding entry per remote node.

    Metadata is the set of MACs the device forwards to the peer's address,
    so stale entries (another MAC) are removed by an update.
    """

    kind = VxlanPeerKey
    name = "linux-vxlan-peer"

    def __init__(self, netlink: "Netlink") -> None:
        super().__init__()
        self.netlink = netlink

    def dependencies(self, key: VxlanPeerKey, value: VxlanPeerValue) -> Iterable[Any]:
        return (VxlanDeviceKey(key.family),)

    def _write(self, key: VxlanPeerKey, mac: str, stale: Iterable[str]) -> frozenset[str]:
        def go(ipr: Any) -> frozenset[str]:
            link = get_link(ipr, DEVICES[key.family])
            if link is None:
                raise RuntimeError(f"{DEVICES[key.family]} does not exist")
            idx = int(link["index"])
            for old in set(stale) - {mac, ""}:
                _ignore_gone(lambda: ipr.fdb("del", ifindex=idx, lladdr=old, dst=key.gateway, flags=NTF_SELF))
            ipr.fdb("replace", ifindex=idx, lladdr=mac, dst=key.gateway, state=NUD_PERMANENT, flags=NTF_SELF)
            ipr.neigh("replace", ifindex=idx, dst=key.gateway, lladdr=mac, state=NUD_PERMANENT)
            return frozenset({mac})
        return self.netlink.run(go)

    def create(self, key: VxlanPeerKey, value: VxlanPeerValue) -> frozenset[str]:
        return self._write(key, value.mac, ())

    def update(self, key: VxlanPeerKey, old: VxlanPeerValue, new: VxlanPeerValue, metadata: Any) -> frozenset[str]:
        return self._write(key, new.mac, set(metadata or ()) | {old.mac})

    def delete(self, key: VxlanPeerKey, value: VxlanPeerValue, metadata: Any) -> None:
        def go(ipr: Any) -> None:
            link = get_link(ipr, DEVICES[key.family])
            if link is None:
                return                   # the device took its entries along
            idx = int(link["index"])
            _ignore_gone(lambda: ipr.neigh("del", ifindex=idx, dst=key.gateway))
            for mac in (set(metadata or ()) | {value.mac}) - {""}:
                _ignore_gone(lambda: ipr.fdb("del", ifindex=idx, lladdr=mac, dst=key.gateway, flags=NTF_SELF))
        self.netlink.run(go)

    def dump(self) -> Mapping[VxlanPeerKey, tuple[VxlanPeerValue, Any]]:
        def go(ipr: Any) -> dict[VxlanPeerKey, tuple[VxlanPeerValue, Any]]:
            out = {}
            for family, name, link in _devices(ipr):
                idx = int(link["index"])
                fdb: dict[str, set[str]] = {}
                for f in ipr.fdb("dump", ifindex=idx):
                    if f["ifindex"] == idx and f.get_attr("NDA_DST"):
                        fdb.setdefault(f.get_attr("NDA_DST"), set()).add(f.get_attr("NDA_LLADDR"))
                neighbours = {n.get_attr("NDA_DST"): n.get_attr("NDA_LLADDR")
                              for n in ipr.neigh("dump", ifindex=idx)
                              if n["ifindex"] == idx and n["state"] & NUD_PERMANENT}
                for gw in fdb.keys() | neighbours.keys():
                    macs = fdb.get(gw, set())
                    mac = neighbours.get(gw, "")
                    if macs != {mac}:          # half there, or stale entries: rewrite
                        mac = ""
                    out[VxlanPeerKey(family, gw)] = (VxlanPeerValue(mac), frozenset(macs))
            return out
        return self.netlink.run(go)


def _ignore_gone(fn: Any) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        fn()
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL):
            raise
