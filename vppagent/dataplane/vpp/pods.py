"""Pod interfaces in VPP: CNI ADD, DEL and CHECK.

Each wired pod is a ``PodSpec`` (persisted, so a restarted agent knows its
pods and a restarted VPP gets them back) and a group of keys in the pod
reconciler: its two VRFs, its loopback holding the pod addresses, its
interface unnumbered to that loopback, and a /32 or /128 route in table 0
per address.  The pod reconciler's desired state is complete from the start
(it does not wait for the datastore), so CNI works as soon as VPP answers.

A wiring that fails is rolled back (keys and the Linux side) before the
error is reported; a DEL of something already gone succeeds.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from dataclasses import dataclass
from typing import Any, Callable

from vppagent.dataplane.base import WiredWorkload, WiringError, WorkloadWiring
from vppagent.dataplane.vpp import annotations as ann
from vppagent.dataplane.vpp.buffers import admit, demand
from vppagent.dataplane.vpp.config import VppConfig
from vppagent.dataplane.vpp.context import Context
from vppagent.dataplane.vpp.keys import (
    LoopbackKey, LoopbackValue, MemifSocketKey, MemifSocketValue, PodIfaceKey, PodIfaceValue, PodRouteKey,
    PodRouteValue, VrfKey, VrfValue,
)
from vppagent.dataplane.vpp.names import TagError, check_ifname, memif_socket_path
from vppagent.dataplane.vpp.pod_desc import (
    LoopbackDescriptor, MemifSocketDescriptor, PodIfaceDescriptor, PodRouteDescriptor, VrfDescriptor,
)
from vppagent.dataplane.vpp.podlinux import GATEWAY_V4, GATEWAY_V6, VPP_MAC, PodLinux, random_mac
from vppagent.dataplane.vpp.store import StateStore, register
from vppagent.reconciler import Backoff, KeyState, Reconciler
from vppagent.vpp.connection import VppConnection

log = logging.getLogger(__name__)
SHARED_LOOPBACK_ADDRESSES = ("169.254.1.1/32",)
# A pod's own loopback holds the pods' gateway address, not the pod's: in the pod's VRF the
# pod's address must not be local to VPP, or a pod reaching itself through a Service (hairpin:
# DNAT to its own address) would be received by VPP and dropped as a spoofed local address
# instead of going back out to the pod, source-NATed by cnat.
POD_LOOPBACK_ADDRESSES = SHARED_LOOPBACK_ADDRESSES


@register
@dataclass(frozen=True)
class PodSpec:
    """What CNI asked for and what the agent chose for it."""

    ifname: str                     # host-side name, our key
    container_id: str
    netns: str
    pod_ifname: str
    ips: tuple[str, ...]            # host prefixes, canonical
    kind: str
    mtu: int
    tables: tuple[int, int]         # (ip4, ip6) VRFs; (0, 0) without per-pod VRFs
    allowed_sources: tuple[str, ...]
    namespace: str = ""
    pod: str = ""
    rx_queues: int = 1
    tx_queues: int = 1
    ring_size: int = 1024
    pod_mac: str = ""
    memif_secret: str = ""
    af_packet_ring: tuple[int, int, int, int] = (0, 0, 0, 0)   # as created (0: VPP's default; older specs)

    @property
    def ip6(self) -> bool:
        return any(":" in ip for ip in self.ips)

    @property
    def loopback(self) -> str:
        return self.ifname if any(self.tables) else ""

    def iface_value(self) -> PodIfaceValue:
        return PodIfaceValue(
            kind=self.kind, tables=self.tables, loopback=self.loopback, mtu=self.mtu, ip6=self.ip6,
            mac=VPP_MAC if self.kind == "af_packet" else "",
            host_if_name=self.ifname if self.kind == "af_packet" else (self.pod_ifname if self.kind == "tap" else ""),
            netns=self.netns if self.kind == "tap" else "", rx_queues=self.rx_queues, tx_queues=self.tx_queues,
            ring_size=self.ring_size, secret=self.memif_secret, af_packet_ring=self.af_packet_ring)

    def keys(self) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        if any(self.tables):
            for af, t in zip((4, 6), self.tables):
                out[VrfKey(self.ifname, af)] = VrfValue(t)
            out[LoopbackKey(self.ifname)] = LoopbackValue(self.tables, POD_LOOPBACK_ADDRESSES)
        if self.kind == "memif":
            out[MemifSocketKey(self.ifname)] = MemifSocketValue(memif_socket_path(self.ifname, self.netns))
        out[PodIfaceKey(self.ifname)] = self.iface_value()
        mac = self.pod_mac if self.kind == "af_packet" else ""
        for ip in self.ips:
            out[PodRouteKey(self.ifname, ip)] = PodRouteValue(mac)
        return out

    def buffers(self) -> int:
        return demand(self.kind, self.rx_queues, self.tx_queues, self.ring_size)


def host_prefix(ip: Any) -> str:
    n = ipaddress.ip_interface(str(ip))
    return f"{n.ip}/{n.max_prefixlen}"


class PodNetwork:
    """Wires pods into VPP; all calls on the agent's owner thread."""

    def __init__(self, config: VppConfig, conn: VppConnection, store: StateStore, linux: PodLinux, *,
                 uplink_mtu: Callable[[], int | None] = lambda: None,
                 backoff: Backoff | None = None) -> None:
        self.config = config
        self.conn = conn
        self.store = store
        self.linux = linux
        self.uplink_mtu = uplink_mtu
        self.backoff = backoff
        self.specs: dict[str, PodSpec] = {}
        for spec in store.pods():
            if isinstance(spec, PodSpec):
                self.specs[spec.ifname] = spec
        self.reconciler = self._new_reconciler()

    # ------------------------------------------------------------ reconciler

    def _new_reconciler(self) -> Reconciler:
        r = Reconciler(backoff=self.backoff)
        ctx = Context(self.conn, self.store, lambda key: self.reconciler.metadata(key))
        self.ifaces = PodIfaceDescriptor(ctx, self._spec_value)
        self.vrfs = VrfDescriptor(ctx)
        for desc in (self.vrfs, LoopbackDescriptor(ctx, self._tables_of), MemifSocketDescriptor(ctx),
                     self.ifaces, PodRouteDescriptor(ctx, self.ifaces)):
            r.register(desc)
        for spec in self.specs.values():
            for key, value in spec.keys().items():
                r.set(key, value)
        self._shared_loopback(r)
        r.mark_in_sync()
        return r

    def rebuild(self) -> None:
        """A fresh reconciler (no failure history) for a new VPP instance."""
        self.reconciler = self._new_reconciler()

    def _spec_value(self, ifname: str) -> PodIfaceValue | None:
        spec = self.specs.get(ifname)
        return spec.iface_value() if spec else None

    def _tables_of(self, owner: str) -> tuple[int, int] | None:
        if owner == "":
            return (0, 0)
        spec = self.specs.get(owner)
        return spec.tables if spec else None

    def _shared_loopback(self, r: Reconciler) -> None:
        if any(not any(s.tables) for s in self.specs.values()):
            r.set(LoopbackKey(""), LoopbackValue((0, 0), SHARED_LOOPBACK_ADDRESSES))
        else:
            r.delete(LoopbackKey(""))

    def restore_linux(self) -> list[str]:
        """Re-create the veth of every af_packet pod whose host end is gone (VPP's netns was
        deleted with VPP, say), so that the VPP interface can attach to it again.  Same name,
        MAC and addresses as before: the pod sees its interface come back.  Returns the
        interfaces re-created; a pod whose netns is gone is left to its CNI DEL."""
        done = []
        for spec in self.specs.values():
            if spec.kind != "af_packet" or self.linux.host_end_exists(spec.ifname):
                continue
            try:
                self.linux.create_veth(spec.ifname, spec.netns, spec.pod_ifname, spec.ips, spec.mtu, spec.pod_mac)
            except WiringError as exc:
                log.warning("cannot re-create the veth of %s: %s", spec.ifname, exc)
                continue
            done.append(spec.ifname)
        if done:
            log.warning("re-created the veth of %s (its host end had disappeared)", ", ".join(done))
        return done

    def commit(self) -> None:
        self.reconciler.commit()

    def resync(self) -> Any:
        return self.reconciler.resync()

    def run_due_retries(self) -> Any:
        return self.reconciler.run_due_retries()

    # ------------------------------------------------------------ queries

    def interfaces(self) -> dict[str, tuple[int, PodSpec]]:
        """Wired pods whose VPP interface exists: ifname → (sw_if_index, spec)."""
        out = {}
        for ifname, spec in self.specs.items():
            idx = self.reconciler.metadata(PodIfaceKey(ifname))
            if idx is not None:
                out[ifname] = (int(idx), spec)
        return out

    # ------------------------------------------------------------ ADD

    def wire(self, wiring: WorkloadWiring) -> WiredWorkload:
        try:
            ifname = check_ifname(wiring.host_interface_name)
        except TagError as exc:
            raise WiringError(str(exc)) from None
        existing = self.specs.get(ifname)
        if existing is not None and existing.container_id == wiring.container_id and existing.netns == wiring.netns:
            return self._converge(existing, fresh=False)
        if existing is not None:
            log.info("%s belonged to container %s; replacing it", ifname, existing.container_id)
            self.unwire(WorkloadWiring(existing.container_id, existing.netns, existing.pod_ifname, ifname, ()))
        return self._converge(self._new_spec(ifname, wiring), fresh=True)

    def _mtu(self, wiring: WorkloadWiring) -> int:
        if self.config.mtu:
            return self.config.mtu
        uplink = self.uplink_mtu()
        if uplink:
            return uplink - self.config.encap_overhead
        return wiring.mtu or 1500

    def _new_spec(self, ifname: str, wiring: WorkloadWiring) -> PodSpec:
        opts = ann.parse(wiring.annotations)
        kind = opts.interface or self.config.pod_interface
        if kind == "memif" and not self.conn.has_module("memif"):
            raise WiringError(f"cannot give {ifname} a memif interface: VPP's memif plugin is not loaded")
        if not wiring.ips:
            raise WiringError(f"no addresses for {ifname}")
        ips = tuple(sorted({host_prefix(ip) for ip in wiring.ips}))
        queues = opts.queues or (self.config.memif_queues if kind == "memif" else self.config.tap_queues)
        ring = opts.ring_size or (self.config.memif_ring_size if kind == "memif" else self.config.tap_ring_size)
        af_ring = (0, 0, 0, 0)
        mtu = self._mtu(wiring)
        if kind == "af_packet":
            queues = opts.queues or 1
            af_ring = self.config.af_packet_ring.as_tuple()
            problems = self.config.af_packet_ring.problems(mtu)
            if problems:
                raise WiringError(f"cannot give {ifname} an af_packet interface with MTU {mtu}: "
                                  + "; ".join(problems) + " (dataplane.afPacketRing)")
        spec = PodSpec(
            ifname=ifname, container_id=wiring.container_id, netns=wiring.netns, pod_ifname=wiring.interface_name,
            ips=ips, kind=kind, mtu=mtu, tables=self._allocate_tables() if self.config.pod_vrfs else (0, 0),
            allowed_sources=tuple(dict.fromkeys(ips + opts.allowed_sources)), namespace=wiring.namespace,
            pod=wiring.pod, rx_queues=queues, tx_queues=queues, ring_size=ring,
            pod_mac=random_mac() if kind == "af_packet" else "",
            memif_secret=secrets.token_hex(8) if kind == "memif" else "", af_packet_ring=af_ring)
        admit(self.config.buffer_admission, spec.buffers(),
              [s.buffers() for s in self.specs.values()], ifname)
        return spec

    def _allocate_tables(self) -> tuple[int, int]:
        """The lowest free id above ``vrfBase``, checked against our pods and the tables VPP had
        at the last read-back (every resync refreshes it), not a dump per ADD."""
        used = {t for s in self.specs.values() for t in s.tables}
        try:
            used |= self.vrfs.used_table_ids()
        except Exception as exc:
            raise WiringError(f"VPP is not reachable: {exc}") from None
        t = self.config.vrf_base + 1
        while t in used:
            t += 1
        return (t, t)

    def _converge(self, spec: PodSpec, fresh: bool) -> WiredWorkload:
        """Write the spec's keys (and the Linux side); undo everything this call made on failure."""
        made_linux = False
        if spec.kind == "af_packet" and (fresh or not self.linux.host_end_exists(spec.ifname)):
            self.linux.create_veth(spec.ifname, spec.netns, spec.pod_ifname, spec.ips, spec.mtu, spec.pod_mac)
            made_linux = True
            if not fresh:            # a new host end: VPP's af_packet must attach again
                self.reconciler.delete(PodIfaceKey(spec.ifname))
                self.reconciler.commit()
        self.specs[spec.ifname] = spec
        keys = spec.keys()
        for key, value in keys.items():
            self.reconciler.set(key, value)
        self._shared_loopback(self.reconciler)
        try:
            self.reconciler.commit()
            problems = [f"{k!r}: {st.error or st.state.value}" for k in keys
                        if (st := self.reconciler.state(k)).state is not KeyState.CONFIGURED]
            if problems:
                raise WiringError(f"cannot wire {spec.ifname} into VPP: " + "; ".join(problems))
            if spec.kind == "tap":
                self.linux.configure_l3(spec.netns, spec.pod_ifname, spec.ips, spec.mtu)
            self.store.save_pod(spec.ifname, spec)
        except BaseException:
            if fresh:
                self._forget(spec)
                if made_linux:
                    self.linux.delete_veth(spec.ifname)
            raise
        return WiredWorkload(host_interface_name=spec.ifname,
                             host_mac=VPP_MAC if spec.kind == "af_packet" else "",
                             container_mac=spec.pod_mac, gateway_v4=GATEWAY_V4, gateway_v6=GATEWAY_V6)

    def _forget(self, spec: PodSpec) -> None:
        self.specs.pop(spec.ifname, None)
        for key in spec.keys():
            self.reconciler.delete(key)
        self._shared_loopback(self.reconciler)
        try:
            self.reconciler.commit()
        except Exception as exc:     # VPP gone: the deletions stay pending and are retried
            log.warning("cannot remove %s from VPP now: %s", spec.ifname, exc)

    # ------------------------------------------------------------ DEL

    def unwire(self, wiring: WorkloadWiring) -> None:
        """Remove the pod; already gone is fine, VPP being down is fine (retried)."""
        ifname = wiring.host_interface_name
        spec = self.specs.get(ifname)
        if spec is not None and wiring.container_id and spec.container_id != wiring.container_id:
            log.info("DEL of %s for container %s, but it is wired for %s: nothing to do", ifname,
                     wiring.container_id, spec.container_id)
            return
        if spec is not None:
            self._forget(spec)
            self.store.remove_pod(ifname)
            kind, netns, pod_ifname = spec.kind, spec.netns, spec.pod_ifname
        else:
            kind, netns, pod_ifname = "", wiring.netns, wiring.interface_name
        if kind in ("af_packet", ""):
            self.linux.delete_veth(ifname)
        if kind == "tap":
            self.linux.delete_pod_link(netns, pod_ifname)

    # ------------------------------------------------------------ CHECK

    def check(self, wiring: WorkloadWiring) -> list[str]:
        spec = self.specs.get(wiring.host_interface_name)
        if spec is None:
            return [f"{wiring.host_interface_name} is not wired into VPP"]
        drift = [f"cannot read VPP back: {e}" for e in self.reconciler.read_actual()]
        for key in spec.keys():
            st = self.reconciler.state(key)
            if st.state is not KeyState.CONFIGURED:
                what = "missing" if key not in self.reconciler.actual_map else "differs from what was wired"
                drift.append(f"{key!r} is {what}" + (f": {st.error}" if st.error else ""))
        if drift:
            self.reconciler.resync()          # and repaired, for the next CHECK
        if spec.kind == "af_packet" and not self.linux.host_end_exists(spec.ifname):
            drift.append(f"host end {spec.ifname} of the pod's veth is missing")
        if spec.kind != "memif":
            drift += self.linux.check(spec.netns, spec.pod_ifname, spec.ips, spec.mtu)
        return drift
