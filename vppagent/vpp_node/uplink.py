"""Hand the uplink from Linux to VPP, per driver, and take it back.

- ``af_packet``, ``af_xdp``, ``rdma``: the netdev keeps its name and moves
  into VPP's network namespace (Calico/VPP does the same): Linux there has no
  address on it and IPv6 is disabled on it, so only VPP answers on the wire,
  and the name is free in the node's namespace for the host interface.
  ``af_packet`` is created over the API (``af_packet_create_v3`` with the
  uplink's MAC); af_xdp and rdma by the startup CLI script.
- ``dpdk``: the netdev goes down with its addresses flushed; VPP's DPDK
  plugin binds the PCI device (``uio-driver``) from the startup.conf stanza.
- ``dev`` (VPP's native drivers, e.g. iavf VFs): the device is bound to
  vfio-pci here and attached from the ``devices`` stanza.

Giving back: the netdev moves back into the node's namespace, or the PCI
device is rebound to the kernel driver it had (and its netdev renamed to the
recorded name); ``linux_state.apply`` then restores everything else.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from vppagent.dataplane.linux.netlink_ns import write_sysctl
from vppagent.vpp_node.config import NodeConfig
from vppagent.vpp_node.linux_state import IFF_PROMISC, LinkState, flush, link_index
from vppagent.vpp_node.netns import Netns
from vppagent.vpp_node.sriov import Sysfs
from vppagent.vpp_node.startup import uplink_vpp_name

log = logging.getLogger(__name__)

NETNS_DRIVERS = ("af_packet", "af_xdp", "rdma")
AF_PACKET_MODE_ETHERNET = 1
AF_PACKET_FLAG_CKSUM_GSO = 2
UPLINK_TAG = "vppagent-uplink"


class UplinkError(RuntimeError):
    """The uplink could not be handed over or given back."""


@dataclass(frozen=True)
class Parked:
    """Where the uplink went: what giving it back needs besides ``LinkState``."""

    driver: str
    name: str
    vpp_netns: str | None = None        # netns drivers
    pci: str | None = None              # dpdk, dev
    kernel_driver: str | None = None    # the driver to rebind on the way back

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _move(src: Netns, dst: Netns, name: str) -> None:
    fd = dst.open_fd()
    try:
        def work(ipr: Any) -> None:
            index = link_index(ipr, name)
            if index is None:
                raise UplinkError(f"{name} is not in {src}")
            ipr.link("set", index=index, net_ns_fd=fd)
        src.run(work)
    finally:
        os.close(fd)


def park(node: Netns, vpp_ns: Netns, state: LinkState, cfg: NodeConfig, sysfs: Sysfs | None = None) -> Parked:
    """Take the uplink away from Linux for VPP (see the module docstring)."""
    assert cfg.uplink is not None
    driver, name = cfg.uplink.driver, state.name
    if driver in NETNS_DRIVERS:
        _move(node, vpp_ns, name)

        def prepare() -> None:
            try:
                write_sysctl(f"net/ipv6/conf/{name}/disable_ipv6", "1")
            except OSError as e:
                log.warning("cannot disable IPv6 on %s in VPP's namespace: %s", name, e)
        vpp_ns.call(prepare)

        def up(ipr: Any) -> None:
            index = link_index(ipr, name)
            ipr.link("set", index=index, state="up", flags=IFF_PROMISC, mask=IFF_PROMISC)
        vpp_ns.run(up)
        return Parked(driver=driver, name=name, vpp_netns=vpp_ns.name)
    sysfs = sysfs or Sysfs()
    pci = cfg.uplink.pci or sysfs.pci_of_netdev(name)
    kernel_driver = sysfs.driver_of(pci)
    flush(node, name)
    node.run(lambda ipr: ipr.link("set", index=link_index(ipr, name), state="down"))
    if driver == "dev":
        sysfs.bind(pci, "vfio-pci")
    return Parked(driver=driver, name=name, pci=pci, kernel_driver=kernel_driver)


def located_in(netns: Netns, name: str) -> bool:
    if not netns.exists():
        return False
    return netns.run(lambda ipr: link_index(ipr, name) is not None)


def unpark(node: Netns, parked: Parked, state: LinkState, sysfs: Sysfs | None = None,
           timeout: float = 10.0) -> None:
    """Bring the uplink back into the node's namespace under its recorded
    name (``linux_state.apply`` restores the rest)."""
    if parked.driver in NETNS_DRIVERS:
        vpp_ns = Netns(parked.vpp_netns)
        if located_in(vpp_ns, parked.name):
            def down(ipr: Any) -> None:
                ipr.link("set", index=link_index(ipr, parked.name), state="down")
            vpp_ns.run(down)
            _move(vpp_ns, node, parked.name)
        _wait_link(node, parked.name, timeout)   # a physical NIC pops back when the netns dies
        return
    sysfs = sysfs or Sysfs()
    if parked.pci and sysfs.driver_of(parked.pci) != parked.kernel_driver:
        sysfs.unbind_to_default(parked.pci, parked.kernel_driver)
    if parked.pci and parked.kernel_driver:
        current = sysfs.wait_netdev(parked.pci, timeout)
        if current != parked.name:
            def rename(ipr: Any) -> None:
                index = link_index(ipr, current)
                ipr.link("set", index=index, state="down")
                ipr.link("set", index=index, ifname=parked.name)
            node.run(rename)


def _wait_link(node: Netns, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not located_in(node, name):
        if time.monotonic() > deadline:
            raise UplinkError(f"{name} did not come back into the node's namespace within {timeout}s")
        time.sleep(0.05)


# --------------------------------------------------------------- VPP side

def find_interface(conn: Any, name: str) -> int | None:
    """sw_if_index of the VPP interface named exactly ``name``."""
    for d in conn.dump("sw_interface_dump", sw_if_index=0xFFFFFFFF, name_filter_valid=True, name_filter=name):
        if d.interface_name == name:
            return int(d.sw_if_index)
    return None


def create_in_vpp(conn: Any, cfg: NodeConfig, state: LinkState, timeout: float = 10.0) -> int:
    """The uplink's VPP interface: created now (af_packet) or found once
    VPP made it from its startup configuration."""
    assert cfg.uplink is not None
    u = cfg.uplink
    if u.driver == "af_packet":
        reply = conn.call("af_packet_create_v3", mode=AF_PACKET_MODE_ETHERNET, hw_addr=state.mac,
                          use_random_hw_addr=False, host_if_name=state.name, flags=AF_PACKET_FLAG_CKSUM_GSO,
                          num_rx_queues=u.rx_queues, num_tx_queues=u.tx_queues)
        index = int(reply.sw_if_index)
    else:
        name = uplink_vpp_name(cfg)
        deadline = time.monotonic() + timeout
        while (found := find_interface(conn, name)) is None:
            if time.monotonic() > deadline:
                raise UplinkError(f"VPP has no interface {name!r} for the {u.driver} uplink "
                                  f"(see VPP's log for the startup configuration's errors)")
            time.sleep(0.1)
        index = found
    conn.call("sw_interface_tag_add_del", is_add=True, sw_if_index=index, tag=f"{UPLINK_TAG}:{state.name}")
    return index

