"""SR-IOV against a fake sysfs tree (shaped like the real one, with a small
kernel simulation behind its writes), VF netlink requests through a recorder
plus one real refusal from the kernel, and the VPP dev_attach sequence
against the fake VPP."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path
from typing import Any, Iterator, Mapping

import pytest

from vppagent.vpp.connection import VppConnection
from vppagent.vpp.fake import FakeVpp
from vppagent.vpp_node import linux_state
from vppagent.vpp_node.config import HostFacts, SriovConfig, VfConfig, parse_node_config
from vppagent.vpp_node.netns import Netns, create_netns, delete_netns
from vppagent.vpp_node.sriov import (
    PyrouteVfNetlink, SriovError, Sysfs, attach_vf, attach_vfs, detach_vf, setup_vfs, vf_spec,
)
from vppagent.vpp_node.uplink import park, unpark

PF, PF_PCI = "ens2f0", "0000:3b:00.0"
NETDEV_DRIVERS = {"ixgbe", "ixgbevf", "iavf", "virtio-pci"}


def vf_pci(i: int) -> str:
    return f"0000:3b:10.{i}"


class FakeKernelSysfs(Sysfs):
    """A temp sysfs tree; writes act like the kernel's (VFs appear, drivers
    bind and unbind, netdevs come and go) and are recorded."""

    def __init__(self, root: Path, total_vfs: int = 8) -> None:
        super().__init__(str(root))
        self.writes: list[tuple[str, str]] = []
        self.r = root
        for d in ("bus/pci/drivers_probe",):
            (root / d).parent.mkdir(parents=True, exist_ok=True)
            (root / d).write_text("")
        for drv in ("ixgbe", "ixgbevf", "vfio-pci", "iavf", "virtio-pci"):
            (root / "bus/pci/drivers" / drv).mkdir(parents=True)
            (root / "bus/pci/drivers" / drv / "bind").write_text("")
            (root / "bus/pci/drivers" / drv / "unbind").write_text("")
        self.add_device(PF_PCI, "ixgbe", PF)
        dev = self.dev_dir(PF_PCI)
        (dev / "sriov_totalvfs").write_text(f"{total_vfs}\n")
        (dev / "sriov_numvfs").write_text("0\n")
        self.default_driver = {PF_PCI: "ixgbe"}

    def dev_dir(self, pci: str) -> Path:
        return self.r / "devices/pci0000:3a" / pci

    def add_device(self, pci: str, driver: str | None, netdev: str | None) -> None:
        dev = self.dev_dir(pci)
        dev.mkdir(parents=True)
        (dev / "driver_override").write_text("(null)\n")
        (self.r / "bus/pci/devices").mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(dev, self.r / "bus/pci/devices"), self.r / "bus/pci/devices" / pci)
        if driver:
            self._bind(pci, driver, netdev)

    def _bind(self, pci: str, driver: str, netdev: str | None) -> None:
        dev = self.dev_dir(pci)
        os.symlink(os.path.relpath(self.r / "bus/pci/drivers" / driver, dev), dev / "driver")
        if driver in NETDEV_DRIVERS and netdev:
            (dev / "net" / netdev).mkdir(parents=True)
            os.symlink(os.path.relpath(dev, dev / "net" / netdev), dev / "net" / netdev / "device")
            (self.r / "class/net").mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(dev / "net" / netdev, self.r / "class/net"), self.r / "class/net" / netdev)

    def _unbind(self, pci: str) -> None:
        dev = self.dev_dir(pci)
        if (dev / "driver").is_symlink():
            (dev / "driver").unlink()
        for name in os.listdir(dev / "net") if (dev / "net").is_dir() else []:
            (self.r / "class/net" / name).unlink()
            (dev / "net" / name / "device").unlink()
            (dev / "net" / name).rmdir()

    def netdev_name(self, pci: str) -> str:
        return PF if pci == PF_PCI else f"{PF}v{pci.rsplit('.', 1)[1]}"

    def _write(self, path: str, value: str) -> None:
        rel = os.path.relpath(path, self.root)
        self.writes.append((rel, value))
        p = Path(path)
        if p.name == "sriov_numvfs":
            new, old = int(value), int(p.read_text())
            if old and new:
                raise SriovError(f"writing {value!r} to {path}: Device or resource busy")
            for i in range(old):
                self._unbind(vf_pci(i))
                os.unlink(self.r / "bus/pci/devices" / vf_pci(i))
                (p.parent / f"virtfn{i}").unlink()
                import shutil
                shutil.rmtree(self.dev_dir(vf_pci(i)))
            for i in range(new):
                self.add_device(vf_pci(i), "ixgbevf", self.netdev_name(vf_pci(i)))
                self.default_driver[vf_pci(i)] = "ixgbevf"
                os.symlink(f"../{vf_pci(i)}", p.parent / f"virtfn{i}")
            p.write_text(f"{new}\n")
        elif p.name == "driver_override":
            p.write_text(value.strip() + "\n" if value.strip() else "(null)\n")
        elif p.name == "unbind":
            assert self.driver_of(value) == p.parent.name, f"{value} is not bound to {p.parent.name}"
            self._unbind(value)
        elif p.name in ("bind", "drivers_probe"):
            if self.driver_of(value):
                raise SriovError(f"writing {value!r} to {path}: Device or resource busy")
            override = (self.dev_dir(value) / "driver_override").read_text().strip()
            driver = p.parent.name if p.name == "bind" else (
                override if override != "(null)" else self.default_driver[value])
            self._bind(value, driver, self.netdev_name(value))
        else:
            p.write_text(value)


@pytest.fixture
def sysfs(tmp_path: Path) -> FakeKernelSysfs:
    return FakeKernelSysfs(tmp_path / "sys")


class Recorder:
    """A ``VfNetlink`` that records requests (and can refuse like a kernel)."""

    def __init__(self, refuse: str | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.refuse = refuse

    def set_vf(self, pf: str, spec: Mapping[str, Any]) -> None:
        self.calls.append((pf, dict(spec)))
        if self.refuse:
            raise SriovError(self.refuse)


# ---------------------------------------------------------------------- sysfs

def test_devices_and_drivers_are_read_from_sysfs(sysfs: FakeKernelSysfs) -> None:
    assert sysfs.pci_of_netdev(PF) == PF_PCI
    assert sysfs.netdev_of_pci(PF_PCI) == PF and sysfs.driver_of(PF_PCI) == "ixgbe"
    assert sysfs.total_vfs(PF) == 8 and sysfs.num_vfs(PF) == 0
    with pytest.raises(SriovError, match="not a PCI device"):
        sysfs.pci_of_netdev("lo")


def test_vfs_are_created_through_sriov_numvfs(sysfs: FakeKernelSysfs) -> None:
    sysfs.set_num_vfs(PF, 4)
    assert sysfs.num_vfs(PF) == 4
    assert [sysfs.vf_pci(PF, i) for i in range(4)] == [vf_pci(i) for i in range(4)]
    assert sysfs.netdev_of_pci(vf_pci(2)) == f"{PF}v2" and sysfs.driver_of(vf_pci(2)) == "ixgbevf"
    sysfs.writes.clear()
    sysfs.set_num_vfs(PF, 4)                                      # already there: nothing written
    assert sysfs.writes == []
    sysfs.set_num_vfs(PF, 2)                                      # nonzero -> nonzero goes through 0
    assert [v for _, v in sysfs.writes] == ["0", "2"] and sysfs.num_vfs(PF) == 2
    with pytest.raises(SriovError, match="no VF 3"):
        sysfs.vf_pci(PF, 3)
    with pytest.raises(SriovError, match="at most 8 VFs"):
        sysfs.set_num_vfs(PF, 9)


def test_a_pf_without_sriov_is_refused(sysfs: FakeKernelSysfs) -> None:
    os.unlink(sysfs.dev_dir(PF_PCI) / "sriov_totalvfs")
    with pytest.raises(SriovError, match="does not support SR-IOV"):
        sysfs.set_num_vfs(PF, 1)
    with pytest.raises(SriovError, match="no such network device"):
        sysfs.total_vfs("nope0")


def test_bind_to_vfio_and_back(sysfs: FakeKernelSysfs) -> None:
    sysfs.set_num_vfs(PF, 2)
    sysfs.writes.clear()
    sysfs.bind(vf_pci(1), "vfio-pci")
    assert sysfs.writes == [
        (f"bus/pci/devices/{vf_pci(1)}/driver_override", "vfio-pci"),
        ("bus/pci/drivers/ixgbevf/unbind", vf_pci(1)),
        ("bus/pci/drivers_probe", vf_pci(1)),
    ]
    assert sysfs.driver_of(vf_pci(1)) == "vfio-pci" and sysfs.netdev_of_pci(vf_pci(1)) is None
    sysfs.writes.clear()
    sysfs.bind(vf_pci(1), "vfio-pci")                                       # idempotent
    assert sysfs.writes == []
    sysfs.unbind_to_default(vf_pci(1), "ixgbevf")
    assert sysfs.driver_of(vf_pci(1)) == "ixgbevf"
    assert sysfs.wait_netdev(vf_pci(1), timeout=1) == f"{PF}v1"
    sysfs.bind(vf_pci(0), "vfio-pci")
    sysfs.unbind_to_default(vf_pci(0))                                      # no recorded driver: probe
    assert sysfs.driver_of(vf_pci(0)) == "ixgbevf"
    with pytest.raises(SriovError, match="driver nosuch is not loaded"):
        sysfs.bind(vf_pci(0), "nosuch")
    with pytest.raises(SriovError, match="no PCI device"):
        sysfs.bind("0000:99:00.0", "vfio-pci")


# -------------------------------------------------------------------- netlink

def test_vf_spec_carries_what_is_configured() -> None:
    assert vf_spec(VfConfig(index=3)) is None
    assert vf_spec(VfConfig(index=1, mac="02:00:00:00:01:01", vlan=100, qos=3, trust=True, spoof_check=False)) == {
        "vf": 1, "mac": "02:00:00:00:01:01", "vlan": {"vlan": 100, "qos": 3}, "trust": 1, "spoofchk": 0}
    assert vf_spec(VfConfig(index=0, vlan=0)) == {"vf": 0, "vlan": {"vlan": 0, "qos": 0}}


def test_setup_vfs_sequence(sysfs: FakeKernelSysfs) -> None:
    cfg = parse_node_config({"sriov": {"pf": PF, "numVfs": 3, "vfs": [
        {"index": 0, "mac": "02:00:00:00:01:00", "vlan": 100, "trust": True, "spoofCheck": False, "attach": "dev"},
        {"index": 2, "driver": None},
        {"index": 1, "mac": "02:00:00:00:01:01", "driver": "iavf"},
    ]}}, host=HostFacts(cpu_count=2, mem_available=8 << 30)).sriov
    assert cfg is not None
    nl = Recorder()
    vfs = setup_vfs(cfg, sysfs, nl)
    assert nl.calls == [
        (PF, {"vf": 0, "mac": "02:00:00:00:01:00", "vlan": {"vlan": 100, "qos": 0}, "trust": 1, "spoofchk": 0}),
        (PF, {"vf": 1, "mac": "02:00:00:00:01:01"}),
    ]
    assert [(v.index, v.pci, v.driver, v.attach) for v in vfs] == [
        (0, vf_pci(0), "vfio-pci", "dev"), (2, vf_pci(2), None, "none"), (1, vf_pci(1), "iavf", "none")]
    assert sysfs.driver_of(vf_pci(0)) == "vfio-pci"
    assert sysfs.driver_of(vf_pci(1)) == "iavf"
    assert sysfs.driver_of(vf_pci(2)) == "ixgbevf"                           # left to the kernel
    # the kernel refusing the VF settings stops the sequence with its message
    with pytest.raises(SriovError, match="refused"):
        setup_vfs(cfg, sysfs, Recorder(refuse="ens2f0: kernel refused VF 0 settings"))


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
def test_the_kernel_refuses_vf_settings_on_a_device_without_sriov() -> None:
    """One real RTM_SETLINK with IFLA_VFINFO_LIST: a veth (dummy links are not
    built into this kernel) has no VFs, the kernel says so, we say it clearly."""
    ns = f"sriov{secrets.token_hex(3)}"
    try:
        create_netns(ns)
        subprocess.run(["ip", "-n", ns, "link", "add", "pf0", "type", "veth", "peer", "name", "pf0p"], check=True)
        nl = PyrouteVfNetlink(Netns(ns))
        with pytest.raises(SriovError) as e:
            nl.set_vf("pf0", {"vf": 0, "mac": "02:00:00:00:00:01", "trust": 1, "spoofchk": 0})
        text = str(e.value)
        assert text.startswith("pf0: kernel refused VF 0 settings") and "errno" in text
        assert "does not support SR-IOV" in text, text
        with pytest.raises(SriovError, match="no such interface"):
            nl.set_vf("nope0", {"vf": 0, "trust": 1})
    finally:
        delete_netns(ns)


# ------------------------------------------------------------------------ VPP

@pytest.fixture
def vpp() -> Iterator[tuple[FakeVpp, VppConnection]]:
    fake = FakeVpp(pci_devices={f"pci/{vf_pci(i)}" for i in range(4)})
    conn = VppConnection(client_factory=fake.client_factory, timeout=2.0)
    conn.connect()
    yield fake, conn
    conn.disconnect()
    fake.close()
    assert not fake.errors, fake.errors


def test_dev_attach_sequence(vpp: tuple[FakeVpp, VppConnection]) -> None:
    fake, conn = vpp
    dev_index, sw_if_index = attach_vf(conn, vf_pci(0), name="vf0", rx_queues=2, tx_ring_size=512)
    assert fake.state.devices[dev_index] == (f"pci/{vf_pci(0)}", "iavf")
    iface = fake.state.interfaces[sw_if_index]
    assert iface.name == "vf0" and iface.create["num_rx_queues"] == 2 and iface.create["tx_queue_size"] == 512
    assert fake.calls["dev_attach"] == 1 and fake.calls["dev_create_port_if"] == 1
    detach_vf(conn, dev_index, sw_if_index)
    assert not fake.state.devices and sw_if_index not in fake.state.interfaces


def test_dev_attach_failures_are_clear_and_rolled_back(vpp: tuple[FakeVpp, VppConnection]) -> None:
    fake, conn = vpp
    with pytest.raises(SriovError, match=r"VPP could not attach pci/0000:99:00.0 with driver iavf"):
        attach_vf(conn, "0000:99:00.0")
    fake.fail("dev_create_port_if", "INVALID_VALUE")
    with pytest.raises(SriovError, match="could not create its port"):
        attach_vf(conn, vf_pci(1))
    assert not fake.state.devices                                           # dev_detach undid the attach
    assert fake.calls["dev_detach"] == 1


def test_attach_vfs_attaches_only_dev_vfs(vpp: tuple[FakeVpp, VppConnection], sysfs: FakeKernelSysfs) -> None:
    fake, conn = vpp
    cfg = SriovConfig(pf=PF, num_vfs=3, sysfs_root=sysfs.root, vfs=(
        VfConfig(index=0, attach="dev"), VfConfig(index=1, attach="dpdk"), VfConfig(index=2, driver=None)))
    vfs = setup_vfs(cfg, sysfs, Recorder())
    attached = attach_vfs(conn, cfg, vfs)
    assert list(attached) == [0]
    assert fake.state.interfaces[attached[0]].name == f"{PF}v0"


# ------------------------------------------------- a dev uplink's handover

@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
def test_dev_uplink_is_bound_to_vfio_and_given_back(sysfs: FakeKernelSysfs) -> None:
    """The uplink (a VF in the fake sysfs, a veth of the same name in a
    netns) goes down, loses its addresses and is bound to vfio-pci; giving it
    back rebinds the kernel driver and restores Linux exactly."""
    sysfs.set_num_vfs(PF, 1)
    name = f"{PF}v0"
    ns = f"sriov{secrets.token_hex(3)}"
    try:
        create_netns(ns)
        subprocess.run(["ip", "-n", ns, "link", "add", name, "type", "veth", "peer", "name", "peer0"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", "192.0.2.10/24", "dev", name], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", name, "up"], check=True)
        node = Netns(ns)
        state = linux_state.record(node, name)
        cfg = parse_node_config({"uplink": {"interface": name, "driver": "dev"}},
                                host=HostFacts(cpu_count=2, mem_available=8 << 30))
        parked = park(node, Netns("unused"), state, cfg, sysfs)
        assert (parked.pci, parked.kernel_driver) == (vf_pci(0), "ixgbevf")
        assert sysfs.driver_of(vf_pci(0)) == "vfio-pci"
        down = linux_state.record(node, name)
        assert not down.up and not [a for a in down.addresses if a.family == 2]
        unpark(node, parked, state, sysfs, timeout=1)
        assert sysfs.driver_of(vf_pci(0)) == "ixgbevf"
        assert linux_state.apply(node, state) == []
        assert state.differences(linux_state.record(node, name)) == []
    finally:
        delete_netns(ns)
