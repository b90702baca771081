"""The host interface: the uplink's identity given back to Linux, through VPP.

Linux keeps talking to the network as before, under the same interface name,
MAC, addresses and routes, but its packets now cross VPP (Calico/VPP's
``vpptap0`` carrying the NIC's name).  Two kinds:

- ``tap`` (default): ``tap_create_v3`` with ``host_namespace`` = the node's
  namespace, ``host_if_name`` = the uplink's name, ``host_mac_addr`` = its MAC.
  Needs ``/dev/vhost-net``.
- ``veth``: for hosts without vhost-net: a veth pair whose Linux end takes the
  uplink's name and MAC in the node's namespace and whose other end
  (``vh<hash>``) sits in VPP's namespace, attached with af_packet.

Either way ``linux_state.apply`` then gives the Linux end the uplink's MTU,
sysctls, addresses, routes and neighbours.
"""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from vppagent.dataplane.linux.netlink_ns import write_sysctl
from vppagent.vpp_node.config import NodeConfig
from vppagent.vpp_node.linux_state import LinkState, link_index
from vppagent.vpp_node.netns import Netns

HOST_TAG = "vppagent-host"
VHOST_NET = "/dev/vhost-net"
AF_PACKET_MODE_ETHERNET = 1
AF_PACKET_FLAG_CKSUM_GSO = 2
TAP_FLAG_GSO, TAP_FLAG_CSUM_OFFLOAD = 1, 2


class HostInterfaceError(RuntimeError):
    """The host interface could not be created."""


@dataclass(frozen=True)
class HostInterface:
    kind: str
    name: str                 # Linux name (the uplink's)
    sw_if_index: int
    peer: str | None = None   # veth: the end VPP attaches to, in VPP's namespace


def check_tap_possible(vhost_net: str = VHOST_NET) -> None:
    """VPP's tap driver opens /dev/vhost-net; say so before it fails with a syscall error."""
    if not os.path.exists(vhost_net):
        raise HostInterfaceError(f"hostInterface kind tap needs {vhost_net}, which this host lacks "
                                 f"(no vhost_net kernel module); use hostInterface.kind: veth")


def veth_peer_name(uplink: str) -> str:
    """A short, stable name for VPP's end of the veth (IFNAMSIZ is 16)."""
    return "vh" + hashlib.sha1(uplink.encode()).hexdigest()[:10]


def create(conn: Any, cfg: NodeConfig, node: Netns, vpp_ns: Netns, state: LinkState) -> HostInterface:
    """Create the host interface in Linux and VPP (not yet configured)."""
    h = cfg.host_interface
    tag = f"{HOST_TAG}:{state.name}"
    if h.kind == "tap":
        check_tap_possible()
        reply = conn.call(
            "tap_create_v3", id=0xFFFFFFFF, use_random_mac=False, mac_address=h.vpp_mac,
            num_rx_queues=1, num_tx_queues=1, rx_ring_sz=h.rx_ring_size, tx_ring_sz=h.tx_ring_size,
            host_mtu_set=True, host_mtu_size=state.mtu, host_mac_addr_set=True, host_mac_addr=state.mac,
            host_namespace_set=True, host_namespace=node.path if node.name else f"pid:{os.getpid()}",
            host_if_name_set=True, host_if_name=state.name, tap_flags=TAP_FLAG_CSUM_OFFLOAD, tag=tag)
        return HostInterface("tap", state.name, int(reply.sw_if_index))
    peer = veth_peer_name(state.name)
    fd = vpp_ns.open_fd()
    try:
        def add(ipr: Any) -> None:
            try:
                ipr.link("add", ifname=state.name, kind="veth", address=state.mac, mtu=state.mtu,
                         peer={"ifname": peer, "net_ns_fd": fd})
            except NetlinkError as e:
                raise HostInterfaceError(f"cannot create veth {state.name}/{peer}: {os.strerror(e.code)}") from None
        node.run(add)
    finally:
        os.close(fd)

    def peer_up() -> None:
        write_sysctl(f"net/ipv6/conf/{peer}/disable_ipv6", "1")
    vpp_ns.call(peer_up)
    vpp_ns.run(lambda ipr: ipr.link("set", index=link_index(ipr, peer), state="up", mtu=state.mtu))
    reply = conn.call("af_packet_create_v3", mode=AF_PACKET_MODE_ETHERNET, hw_addr=h.vpp_mac,
                      use_random_hw_addr=False, host_if_name=peer, flags=AF_PACKET_FLAG_CKSUM_GSO,
                      num_rx_queues=1, num_tx_queues=1)
    index = int(reply.sw_if_index)
    conn.call("sw_interface_tag_add_del", is_add=True, sw_if_index=index, tag=tag)
    return HostInterface("veth", state.name, index, peer)


def remove_linux_side(node: Netns, name: str, recorded_ifindex: int | None = None) -> bool:
    """Delete the Linux end of a host interface called ``name`` if it is
    one (a veth or tun/tap that is not the recorded uplink).  Returns
    whether something was deleted.  A tap also vanishes when VPP exits."""
    def work(ipr: Any) -> bool:
        found = ipr.link("get", ifname=name) if link_index(ipr, name) is not None else []
        if not found:
            return False
        msg = found[0]
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        if kind not in ("veth", "tun") or msg["index"] == recorded_ifindex:
            return False
        try:
            ipr.link("del", index=msg["index"])
        except NetlinkError as e:
            if e.code not in (errno.ENODEV, errno.ENOENT):
                raise
        return True
    return node.run(work)
