"""SR-IOV: VFs through sysfs, VF settings through netlink, vfio-pci binding, attach to VPP.

The three kernel interfaces involved are each behind a small seam so that
nodes without an SR-IOV NIC (CI, these machines) can still test the logic:

- ``Sysfs(root)``: every read and write goes through ``root`` (``/sys``), so a
  fake tree in a temp dir, shaped like the real one (``class/net/<pf>/device``
  symlinks, ``sriov_numvfs``, ``virtfnN``, ``bus/pci/drivers/*/bind``), stands
  in; ``_write`` is the one place where a test may simulate the kernel.
- ``VfNetlink``: ``set_vf(pf, spec)`` is one RTM_SETLINK on the PF carrying
  IFLA_VFINFO_LIST (MAC, VLAN/QoS, trust, spoof check); ``PyrouteVfNetlink``
  sends it, a recorder in tests checks it, and the kernel's refusal (a PF
  whose driver has no SR-IOV, e.g. a veth) becomes ``SriovError``.
- VPP: ``attach_vf`` = ``dev_attach {device_id "pci/<addr>", driver_name
  "iavf"}`` + ``dev_create_port_if`` over a ``VppConnection`` (rolled back
  with ``dev_detach`` when the port fails); ``attach: dpdk`` VFs go to the
  startup.conf ``dpdk { dev <addr> }`` stanza instead (``startup``).

Sequence (``setup_vfs``): check ``sriov_totalvfs``, set ``sriov_numvfs``
(through 0 when changing a nonzero count: the kernel refuses otherwise),
configure each VF through the PF, bind it to its driver (``driver_override``
+ unbind + ``drivers_probe``), return VF index -> PCI address.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

from vppagent.model.errors import ValidationError
from vppagent.vpp_node.config import SriovConfig, VfConfig

log = logging.getLogger(__name__)


class SriovError(RuntimeError):
    """The kernel (sysfs or netlink) or VPP refused an SR-IOV step."""


# -------------------------------------------------------------------- sysfs

class Sysfs:
    """sysfs under ``root`` (``/sys`` on a node, a temp tree in tests)."""

    def __init__(self, root: str = "/sys") -> None:
        self.root = root

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def _read(self, path: str) -> str:
        with open(path) as f:
            return f.read().strip()

    def _write(self, path: str, value: str) -> None:
        """One sysfs write (the kernel acts on it)."""
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as e:
            raise SriovError(f"writing {value.strip()!r} to {path}: {e.strerror or e}") from None

    # ------------------------------------------------------------- devices

    def pci_of_netdev(self, ifname: str, field: str = "") -> str:
        """The PCI address behind a Linux interface (``class/net/<if>/device``)."""
        link = self.path("class", "net", ifname, "device")
        if not os.path.exists(link):
            msg = f"{ifname} is not a PCI device ({link} does not exist)"
            raise ValidationError(field, msg) if field else SriovError(msg)
        return os.path.basename(os.path.realpath(link))

    def netdev_of_pci(self, pci: str) -> str | None:
        """The Linux interface of a PCI device, if a kernel driver made one."""
        d = self.path("bus", "pci", "devices", pci, "net")
        try:
            names = sorted(os.listdir(d))
        except OSError:
            return None
        return names[0] if names else None

    def driver_of(self, pci: str) -> str | None:
        link = self.path("bus", "pci", "devices", pci, "driver")
        return os.path.basename(os.path.realpath(link)) if os.path.lexists(link) else None

    # ------------------------------------------------------------------ VFs

    def _pf_device(self, pf: str) -> str:
        d = self.path("class", "net", pf, "device")
        if not os.path.isdir(d):
            raise SriovError(f"{pf}: no such network device with a PCI parent ({d})")
        return d

    def total_vfs(self, pf: str) -> int:
        p = os.path.join(self._pf_device(pf), "sriov_totalvfs")
        if not os.path.exists(p):
            raise SriovError(f"{pf} does not support SR-IOV (no {p})")
        return int(self._read(p))

    def num_vfs(self, pf: str) -> int:
        return int(self._read(os.path.join(self._pf_device(pf), "sriov_numvfs")))

    def set_num_vfs(self, pf: str, count: int) -> None:
        """Create ``count`` VFs (through 0 when another nonzero count exists:
        the kernel answers EBUSY otherwise)."""
        total = self.total_vfs(pf)
        if count > total:
            raise SriovError(f"{pf} supports at most {total} VFs, {count} requested")
        current = self.num_vfs(pf)
        if current == count:
            return
        p = os.path.join(self._pf_device(pf), "sriov_numvfs")
        if current:
            self._write(p, "0")
        if count:
            self._write(p, str(count))

    def vf_pci(self, pf: str, index: int) -> str:
        link = os.path.join(self._pf_device(pf), f"virtfn{index}")
        if not os.path.lexists(link):
            raise SriovError(f"{pf} has no VF {index} ({link} missing)")
        return os.path.basename(os.path.realpath(link))

    # -------------------------------------------------------------- drivers

    def bind(self, pci: str, driver: str) -> None:
        """Bind a device to ``driver`` (vfio-pci for VPP): set
        ``driver_override``, unbind from the current driver, probe."""
        current = self.driver_of(pci)
        if current == driver:
            return
        dev = self.path("bus", "pci", "devices", pci)
        if not os.path.isdir(dev):
            raise SriovError(f"no PCI device {pci} ({dev})")
        if not os.path.isdir(self.path("bus", "pci", "drivers", driver)):
            raise SriovError(f"driver {driver} is not loaded ({self.path('bus', 'pci', 'drivers', driver)} missing)")
        self._write(os.path.join(dev, "driver_override"), driver)
        if current:
            self._write(self.path("bus", "pci", "drivers", current, "unbind"), pci)
        self._write(self.path("bus", "pci", "drivers_probe"), pci)

    def unbind_to_default(self, pci: str, driver: str | None = None) -> None:
        """Give a device back to the kernel: clear ``driver_override``, unbind,
        then bind ``driver`` (the one recorded before) or let the kernel probe."""
        dev = self.path("bus", "pci", "devices", pci)
        self._write(os.path.join(dev, "driver_override"), "\n")
        current = self.driver_of(pci)
        if current and current != driver:
            self._write(self.path("bus", "pci", "drivers", current, "unbind"), pci)
        if driver and self.driver_of(pci) != driver:
            self._write(self.path("bus", "pci", "drivers", driver, "bind"), pci)
        elif not driver:
            self._write(self.path("bus", "pci", "drivers_probe"), pci)

    def wait_netdev(self, pci: str, timeout: float = 10.0) -> str:
        """Poll until a kernel driver has created the device's interface."""
        deadline = time.monotonic() + timeout
        while True:
            name = self.netdev_of_pci(pci)
            if name:
                return name
            if time.monotonic() > deadline:
                raise SriovError(f"{pci}: no network interface appeared within {timeout}s")
            time.sleep(0.05)


# ------------------------------------------------------------------ netlink

class VfNetlink(Protocol):
    def set_vf(self, pf: str, spec: Mapping[str, Any]) -> None:
        """One RTM_SETLINK on ``pf`` with an IFLA_VF_INFO built from ``spec``
        (pyroute2's ``vf=`` format); raise ``SriovError`` when refused."""


class PyrouteVfNetlink:
    """``VfNetlink`` over pyroute2 in a namespace (the node's by default)."""

    def __init__(self, netns: Any = None) -> None:
        from vppagent.vpp_node.netns import Netns
        self.netns = netns or Netns(None)

    def set_vf(self, pf: str, spec: Mapping[str, Any]) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        def work(ipr: Any) -> None:
            found = ipr.link_lookup(ifname=pf)
            if not found:
                raise SriovError(f"{pf}: no such interface")
            ipr.link("set", index=found[0], vf=dict(spec))
        try:
            self.netns.run(work)
        except NetlinkError as e:
            hint = " (the PF's driver does not support SR-IOV VF settings)" if e.code in (
                errno.EOPNOTSUPP, errno.EINVAL) else ""
            raise SriovError(f"{pf}: kernel refused VF {spec.get('vf')} settings "
                             f"{ {k: v for k, v in spec.items() if k != 'vf'} }: "
                             f"{os.strerror(e.code)} (errno {e.code}){hint}") from None


def vf_spec(vf: VfConfig) -> dict[str, Any] | None:
    """pyroute2's ``vf=`` request for one VF, or None when nothing is set."""
    spec: dict[str, Any] = {"vf": vf.index}
    if vf.mac:
        spec["mac"] = vf.mac
    if vf.vlan is not None:
        spec["vlan"] = {"vlan": vf.vlan, "qos": vf.qos}
    if vf.trust is not None:
        spec["trust"] = int(vf.trust)
    if vf.spoof_check is not None:
        spec["spoofchk"] = int(vf.spoof_check)
    return spec if len(spec) > 1 else None


# --------------------------------------------------------------- sequences

@dataclass(frozen=True)
class VfInfo:
    index: int
    pci: str
    driver: str | None
    attach: str


def setup_vfs(cfg: SriovConfig, sysfs: Sysfs | None = None, netlink: VfNetlink | None = None) -> list[VfInfo]:
    """Create and configure the VFs of ``cfg`` and bind them (see the module docstring)."""
    sysfs = sysfs or Sysfs(cfg.sysfs_root)
    netlink = netlink or PyrouteVfNetlink()
    sysfs.set_num_vfs(cfg.pf, cfg.num_vfs)
    out = []
    for vf in cfg.vfs:
        spec = vf_spec(vf)
        if spec is not None:
            netlink.set_vf(cfg.pf, spec)
        pci = sysfs.vf_pci(cfg.pf, vf.index)
        if vf.driver:
            sysfs.bind(pci, vf.driver)
        out.append(VfInfo(vf.index, pci, vf.driver, vf.attach))
        log.info("VF %d of %s: %s bound to %s", vf.index, cfg.pf, pci, vf.driver or "its default driver")
    return out


def attach_vf(conn: Any, pci: str, *, driver: str = "iavf", name: str = "", rx_queues: int = 1,
              tx_queues: int = 1, rx_ring_size: int = 1024, tx_ring_size: int = 1024) -> tuple[int, int]:
    """Attach a (vfio-bound) PCI device to VPP's dev infra and create its
    port interface; returns (dev_index, sw_if_index)."""
    from vppagent.vpp.errors import VppApiError
    try:
        dev = conn.call("dev_attach", device_id=f"pci/{pci}", driver_name=driver, flags=0, args="")
    except VppApiError as e:
        raise SriovError(f"VPP could not attach pci/{pci} with driver {driver}: {e}") from None
    try:
        port = conn.call("dev_create_port_if", dev_index=dev.dev_index, intf_name=name, port_id=0,
                         num_rx_queues=rx_queues, num_tx_queues=tx_queues, rx_queue_size=rx_ring_size,
                         tx_queue_size=tx_ring_size, flags=0, args="")
    except VppApiError as e:
        conn.call("dev_detach", dev_index=dev.dev_index)
        raise SriovError(f"VPP attached pci/{pci} but could not create its port: {e}") from None
    return dev.dev_index, port.sw_if_index


def detach_vf(conn: Any, dev_index: int, sw_if_index: int | None = None) -> None:
    """Undo ``attach_vf`` (the port first, then the device)."""
    if sw_if_index is not None:
        conn.call("dev_remove_port_if", sw_if_index=sw_if_index)
    conn.call("dev_detach", dev_index=dev_index)


def attach_vfs(conn: Any, cfg: SriovConfig, vfs: list[VfInfo]) -> dict[int, int]:
    """Attach every ``attach: dev`` VF; VF index -> sw_if_index."""
    out = {}
    for vf in vfs:
        if vf.attach == "dev":
            _, out[vf.index] = attach_vf(conn, vf.pci, name=f"{cfg.pf}v{vf.index}")
    return out
