"""Descriptors for what a pod needs in VPP: its VRFs, its loopback, its
interface (tap, af_packet or memif), and its /32 and /128 routes.

Interfaces are found again by their ``vppagent:pod:``/``vppagent:lo:`` tags,
tables by their ``vppagent:vrf:`` names, routes and neighbours by the
interface they point at.  Attributes no dump shows (ring sizes, queue
counts, a memif's secret, which table an interface is in) are taken from the
pod's spec (``spec_of``): ``equivalent`` compares only what VPP can tell.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping

from vppagent.dataplane.vpp.batch import Calls, Plan
from vppagent.dataplane.vpp.context import ALL, Context, UpdatableVppDescriptor, VppDescriptor
from vppagent.dataplane.vpp.keys import (
    LoopbackKey, LoopbackValue, MemifSocketKey, MemifSocketValue, PodIfaceKey, PodIfaceValue, PodRouteKey,
    PodRouteValue, VrfKey, VrfValue,
)
from vppagent.dataplane.vpp.names import (
    loopback_tag, memif_socket_owner, parse, parse_loopback_owner, parse_vrf, pod_interface_tag, vrf_name,
)

ADMIN_UP = 1
TAP_FLAGS = 1 | 4 | 8 | 16 | 32              # GSO, PERSIST, ATTACH, TUN, GRO_COALESCE
AF_PACKET_FLAGS = 1 | 2                 # QDISC_BYPASS, CKSUM_GSO (checksums the kernel left to us)
MEMIF_MASTER, MEMIF_MODE_IP = 0, 1
NEIGHBOR_STATIC = 1
RX_MODE_ADAPTIVE = 3


def _proto(prefix: str) -> int:
    return 1 if ":" in prefix else 0


class VrfDescriptor(VppDescriptor):
    """A pod table and its default route into table 0 (forwarding happens there)."""

    kind = VrfKey
    name = "pod-vrf"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        # Every table id VPP has (ours and anyone's), as of the last dump and our own creations since:
        # a new pod's VRF avoids them without dumping every table on each CNI ADD.  Deleted ids stay
        # in until the next dump (a resync), so an id is never reused while any of its tables remain.
        self.table_ids: set[int] | None = None

    def used_table_ids(self) -> set[int]:
        """The table ids in VPP (dumped only when none was seen yet)."""
        if self.table_ids is None:
            self.table_ids = {int(d.table.table_id) for d in self.ctx.conn.dump("ip_table_dump")}
        return self.table_ids

    @staticmethod
    def _default_route(key: VrfKey, value: VrfValue, add: bool) -> tuple[str, dict[str, Any]]:
        is6 = key.af == 6
        return ("ip_route_add_del", {"is_add": add, "is_multipath": False, "route": {
            "table_id": value.table_id, "prefix": "::/0" if is6 else "0.0.0.0/0",
            "paths": [{"sw_if_index": ALL, "table_id": 0, "proto": 1 if is6 else 0}]}})

    def plan_create(self, key: VrfKey, value: VrfValue) -> Plan:
        table = {"table_id": value.table_id, "is_ip6": key.af == 6}
        yield Calls([("ip_table_add_del", {"is_add": True, "table": {**table, "name": vrf_name(key.ifname, key.af)}})])
        if self.table_ids is not None:
            self.table_ids.add(value.table_id)
        try:
            yield Calls([self._default_route(key, value, True)])
        except Exception:
            yield Calls([("ip_table_add_del", {"is_add": False, "table": table})])
            raise
        return value.table_id

    def plan_delete(self, key: VrfKey, value: VrfValue, meta: Any) -> Plan:
        yield Calls([self._default_route(key, value, False),
                     ("ip_table_add_del", {"is_add": False, "table": {"table_id": value.table_id,
                                                                       "is_ip6": key.af == 6}})],
                    tolerate=("NO_SUCH_FIB", "NO_SUCH_ENTRY"))

    def dump(self) -> Mapping[VrfKey, tuple[VrfValue, Any]]:
        out = {}
        tables = self.ctx.conn.dump("ip_table_dump")
        self.table_ids = {int(d.table.table_id) for d in tables}
        for d in tables:
            parsed = parse(str(d.table.name))
            if parsed and parsed[0] == "vrf" and (vrf := parse_vrf(parsed[1])):
                out[VrfKey(*vrf)] = (VrfValue(int(d.table.table_id)), int(d.table.table_id))
        return out


def _interfaces(ctx: Context) -> list[Any]:
    return ctx.conn.dump("sw_interface_dump", sw_if_index=ALL)


class LoopbackDescriptor(UpdatableVppDescriptor):
    kind = LoopbackKey
    name = "pod-loopback"

    def __init__(self, ctx: Context, tables_of: Callable[[str], tuple[int, int] | None]) -> None:
        super().__init__(ctx)
        self.tables_of = tables_of

    def dependencies(self, key: LoopbackKey, value: LoopbackValue) -> Iterable[Any]:
        return {VrfKey(key.owner, af) for af, t in zip((4, 6), value.tables) if t}

    def plan_create(self, key: LoopbackKey, value: LoopbackValue) -> Plan:
        (reply,) = yield Calls([("create_loopback_instance", {"is_specified": False})], sync=True, returns_ids=True)
        idx = int(reply.sw_if_index)
        try:
            yield Calls([("sw_interface_tag_add_del", {"is_add": True, "sw_if_index": idx,
                                                       "tag": loopback_tag(key.owner)}),
                         ("sw_interface_set_table", {"sw_if_index": idx, "is_ipv6": False, "vrf_id": value.tables[0]}),
                         ("sw_interface_set_table", {"sw_if_index": idx, "is_ipv6": True, "vrf_id": value.tables[1]}),
                         ("sw_interface_set_flags", {"sw_if_index": idx, "flags": ADMIN_UP})]
                        + [self._address(idx, a, True) for a in value.addresses])
        except Exception:
            yield Calls([("delete_loopback", {"sw_if_index": idx})])
            raise
        return idx

    @staticmethod
    def _address(idx: int, prefix: str, add: bool) -> tuple[str, dict[str, Any]]:
        return ("sw_interface_add_del_address", {"sw_if_index": idx, "is_add": add, "prefix": prefix})

    def needs_recreate(self, key: LoopbackKey, old: LoopbackValue, new: LoopbackValue) -> bool:
        return old.tables != new.tables

    def plan_update(self, key: LoopbackKey, old: LoopbackValue, new: LoopbackValue, idx: int) -> Plan:
        gone = [self._address(idx, a, False) for a in old.addresses if a not in new.addresses]
        added = [self._address(idx, a, True) for a in new.addresses if a not in old.addresses]
        yield Calls(gone + added + [("sw_interface_set_flags", {"sw_if_index": idx, "flags": ADMIN_UP})],
                    tolerate=("ADDRESS_NOT_FOUND_FOR_INTERFACE",))
        return idx

    def plan_delete(self, key: LoopbackKey, value: LoopbackValue, idx: int) -> Plan:
        yield Calls([("delete_loopback", {"sw_if_index": idx})], tolerate=("INVALID_SW_IF_INDEX",))

    def equivalent(self, key: LoopbackKey, desired: LoopbackValue, actual: LoopbackValue) -> bool:
        return desired == actual

    def dump(self) -> Mapping[LoopbackKey, tuple[LoopbackValue, Any]]:
        found = []
        for d in _interfaces(self.ctx):
            parsed = parse(str(d.tag))
            if parsed and parsed[0] == "lo":
                found.append((parse_loopback_owner(parsed[1]), int(d.sw_if_index), bool(int(d.flags) & ADMIN_UP)))
        calls = [("ip_address_dump", {"sw_if_index": idx, "is_ipv6": v6}) for _, idx, _ in found for v6 in (False, True)]
        replies = self.ctx.conn.pipeline(calls) if calls else []
        out = {}
        for n, (owner, idx, up) in enumerate(found):
            addrs = [str(a.prefix) for a in replies[2 * n] + replies[2 * n + 1]]
            tables = self.tables_of(owner) or (0, 0)
            value = LoopbackValue(tables, tuple(sorted(_host(a) for a in addrs)) if up else ("<down>",))
            out[LoopbackKey(owner)] = (value, idx)
        return out


def _host(prefix: str) -> str:
    n = ipaddress.ip_interface(prefix)
    return f"{n.ip}/{n.network.prefixlen}"


class MemifSocketDescriptor(VppDescriptor):
    kind = MemifSocketKey
    name = "memif-socket"

    def plan_create(self, key: MemifSocketKey, value: MemifSocketValue) -> Plan:
        (reply,) = yield Calls([("memif_socket_filename_add_del_v2", {
            "is_add": True, "socket_id": ALL, "socket_filename": value.filename})], sync=True, returns_ids=True)
        return int(reply.socket_id)

    def plan_delete(self, key: MemifSocketKey, value: MemifSocketValue, socket_id: int) -> Plan:
        yield Calls([("memif_socket_filename_add_del_v2", {"is_add": False, "socket_id": socket_id,
                                                           "socket_filename": value.filename})],
                    tolerate=("INVALID_ARGUMENT",))

    def dump(self) -> Mapping[MemifSocketKey, tuple[MemifSocketValue, Any]]:
        out = {}
        for d in self.ctx.conn.dump("memif_socket_filename_dump"):
            owner = memif_socket_owner(str(d.socket_filename))
            if owner:
                out[MemifSocketKey(owner)] = (MemifSocketValue(str(d.socket_filename)), int(d.socket_id))
        return out


class PodIfaceDescriptor(UpdatableVppDescriptor):
    kind = PodIfaceKey
    name = "pod-interface"

    def __init__(self, ctx: Context, spec_value: Callable[[str], PodIfaceValue | None]) -> None:
        super().__init__(ctx)
        self.spec_value = spec_value
        self.index_to_name: dict[int, str] = {}

    def dependencies(self, key: PodIfaceKey, value: PodIfaceValue) -> Iterable[Any]:
        deps: set[Any] = {LoopbackKey(value.loopback)}
        deps.update(VrfKey(key.ifname, af) for af, t in zip((4, 6), value.tables) if t)
        if value.kind == "memif":
            deps.add(MemifSocketKey(key.ifname))
        return deps

    # -------------------------------------------------------------- writes

    def _create_call(self, key: PodIfaceKey, v: PodIfaceValue) -> tuple[str, dict[str, Any]]:
        if v.kind == "tap":
            return ("tap_create_v3", {
                "id": ALL, "use_random_mac": True, "num_rx_queues": v.rx_queues, "num_tx_queues": v.tx_queues,
                "tx_ring_sz": v.ring_size, "rx_ring_sz": v.ring_size, "host_mtu_set": True,
                "host_mtu_size": v.mtu, "tap_flags": TAP_FLAGS if v.gso else TAP_FLAGS & ~(1 | 32),
                "host_namespace_set": True, "host_namespace": v.netns, "host_if_name_set": True,
                "host_if_name": v.host_if_name, "tag": pod_interface_tag(key.ifname)})
        if v.kind == "af_packet":
            rx_frame, rx_frames, tx_frame, tx_frames = v.af_packet_ring      # explicit: VPP's TX default is ~69 MiB
            return ("af_packet_create_v3", {
                "mode": 1, "hw_addr": v.mac, "use_random_hw_addr": False, "host_if_name": v.host_if_name,
                "flags": AF_PACKET_FLAGS, "num_rx_queues": v.rx_queues, "num_tx_queues": v.tx_queues,
                "rx_frame_size": rx_frame, "rx_frames_per_block": rx_frames,
                "tx_frame_size": tx_frame, "tx_frames_per_block": tx_frames})
        return ("memif_create_v2", {
            "role": MEMIF_MASTER, "mode": MEMIF_MODE_IP, "rx_queues": v.rx_queues, "tx_queues": v.tx_queues,
            "id": v.memif_id, "socket_id": self.ctx.need(MemifSocketKey(key.ifname)), "ring_size": v.ring_size,
            "secret": v.secret})

    def _delete_call(self, idx: int, v: PodIfaceValue) -> tuple[str, dict[str, Any]]:
        if v.kind == "tap":
            return ("tap_delete_v2", {"sw_if_index": idx})
        if v.kind == "af_packet":
            return ("af_packet_delete", {"host_if_name": v.host_if_name})
        return ("memif_delete", {"sw_if_index": idx})

    def _settings(self, key: PodIfaceKey, idx: int, v: PodIfaceValue) -> list[tuple[str, dict[str, Any]]]:
        calls: list[tuple[str, dict[str, Any]]] = []
        if v.kind != "tap":             # tap_create_v3 carries the tag
            calls.append(("sw_interface_tag_add_del", {"is_add": True, "sw_if_index": idx,
                                                       "tag": pod_interface_tag(key.ifname)}))
        calls += [
            # cnat's feature arc is where npol (and services) see packets
            ("feature_cnat_enable_disable", {"sw_if_index": idx, "enable_disable": True}),
            ("sw_interface_set_table", {"sw_if_index": idx, "is_ipv6": False, "vrf_id": v.tables[0]}),
            ("sw_interface_set_table", {"sw_if_index": idx, "is_ipv6": True, "vrf_id": v.tables[1]}),
            ("sw_interface_set_unnumbered", {"sw_if_index": self.ctx.need(LoopbackKey(v.loopback)),
                                             "unnumbered_sw_if_index": idx, "is_add": True}),
        ]
        if v.ip6:
            calls.append(("sw_interface_ip6_enable_disable", {"sw_if_index": idx, "enable": True}))
        if v.kind in ("tap", "memif"):      # poll under load, sleep when idle
            calls.append(("sw_interface_set_rx_mode", {"sw_if_index": idx, "mode": RX_MODE_ADAPTIVE,
                                                       "queue_id_valid": False}))
        calls += self._mtu_and_up(idx, v)
        return calls

    @staticmethod
    def _mtu_and_up(idx: int, v: PodIfaceValue) -> list[tuple[str, dict[str, Any]]]:
        return [("sw_interface_set_mtu", {"sw_if_index": idx, "mtu": [v.mtu, 0, 0, 0]}),
                ("sw_interface_set_flags", {"sw_if_index": idx, "flags": ADMIN_UP if v.up else 0})]

    def plan_create(self, key: PodIfaceKey, value: PodIfaceValue) -> Plan:
        (reply,) = yield Calls([self._create_call(key, value)], sync=True, returns_ids=True)
        idx = int(reply.sw_if_index)
        try:
            yield Calls(self._settings(key, idx, value))
        except Exception:
            yield Calls([self._delete_call(idx, value)])
            raise
        self.index_to_name[idx] = key.ifname
        return idx

    def needs_recreate(self, key: PodIfaceKey, old: PodIfaceValue, new: PodIfaceValue) -> bool:
        return replace(old, mtu=new.mtu, up=new.up) != new

    def plan_update(self, key: PodIfaceKey, old: PodIfaceValue, new: PodIfaceValue, idx: int) -> Plan:
        yield Calls(self._mtu_and_up(idx, new))
        return idx

    def plan_delete(self, key: PodIfaceKey, value: PodIfaceValue, idx: int) -> Plan:
        yield Calls([self._delete_call(idx, value)],
                    tolerate=("INVALID_SW_IF_INDEX", "SYSCALL_ERROR_1", "INVALID_INTERFACE"))
        self.index_to_name.pop(idx, None)

    # -------------------------------------------------------------- reads

    def dump(self) -> Mapping[PodIfaceKey, tuple[PodIfaceValue, Any]]:
        conn = self.ctx.conn
        ours: dict[int, tuple[str, Any]] = {}
        for d in _interfaces(self.ctx):
            parsed = parse(str(d.tag))
            if parsed and parsed[0] == "pod":
                ours[int(d.sw_if_index)] = (parsed[1], d)
        self.index_to_name = {i: name for i, (name, _) in ours.items()}
        if not ours:
            return {}
        af_packet = {int(d.sw_if_index): str(d.host_if_name) for d in conn.dump("af_packet_dump")}
        taps = {int(d.sw_if_index): d for d in conn.dump("sw_interface_tap_v2_dump", sw_if_index=ALL)}
        memifs = {int(d.sw_if_index): d for d in conn.dump("memif_dump")} if conn.has("memif_dump") else {}
        unnumbered = {int(d.sw_if_index): int(d.ip_sw_if_index) for d in conn.dump("ip_unnumbered_dump", sw_if_index=ALL)}
        loopbacks = {}
        for d in _interfaces(self.ctx):
            parsed = parse(str(d.tag))
            if parsed and parsed[0] == "lo":
                loopbacks[int(d.sw_if_index)] = parse_loopback_owner(parsed[1])
        out = {}
        for idx, (name, d) in ours.items():
            kept = self.spec_value(name)
            if idx in af_packet:
                kind, host = "af_packet", af_packet[idx]
            elif idx in taps:
                kind, host = "tap", str(taps[idx].host_if_name)
            elif idx in memifs:
                kind, host = "memif", ""
            else:
                kind, host = "unknown", ""
            base = kept or PodIfaceValue(kind, (0, 0), "", 0, False)
            value = replace(base, kind=kind, mtu=int(d.mtu[0]), up=bool(int(d.flags) & ADMIN_UP),
                            loopback=loopbacks.get(unnumbered.get(idx, -1), "<none>"),
                            host_if_name=host if kind != "memif" else base.host_if_name)
            if kind == "tap":
                t = taps[idx]
                value = replace(value, ring_size=int(t.rx_ring_sz), netns=str(t.host_namespace) or base.netns)
            out[PodIfaceKey(name)] = (value, idx)
        return out


class PodRouteDescriptor(VppDescriptor):
    """Pod address routes in table 0 (with a static neighbour on Ethernet interfaces)."""

    kind = PodRouteKey
    name = "pod-route"

    def __init__(self, ctx: Context, ifaces: PodIfaceDescriptor) -> None:
        super().__init__(ctx)
        self.ifaces = ifaces

    def dependencies(self, key: PodRouteKey, value: PodRouteValue) -> Iterable[Any]:
        return {PodIfaceKey(key.ifname)}

    def _calls(self, key: PodRouteKey, value: PodRouteValue, add: bool) -> list[tuple[str, dict[str, Any]]]:
        idx = self.ctx.need(PodIfaceKey(key.ifname))
        ip = key.prefix.split("/")[0]
        path: dict[str, Any] = {"sw_if_index": idx, "proto": _proto(key.prefix)}
        if value.neighbor_mac:
            path["nh"] = {"address": {"ip6" if ":" in ip else "ip4": ip}}
        calls = [("ip_route_add_del", {"is_add": add, "is_multipath": False, "route": {
            "table_id": 0, "prefix": key.prefix, "paths": [path]}})]
        if value.neighbor_mac:
            neighbor = ("ip_neighbor_add_del", {"is_add": add, "neighbor": {
                "sw_if_index": idx, "flags": NEIGHBOR_STATIC, "mac_address": value.neighbor_mac,
                "ip_address": ip}})
            calls = [neighbor] + calls if add else calls + [neighbor]
        return calls

    def plan_create(self, key: PodRouteKey, value: PodRouteValue) -> Plan:
        yield Calls(self._calls(key, value, True))
        return None

    def plan_delete(self, key: PodRouteKey, value: PodRouteValue, meta: Any) -> Plan:
        if self.ctx.metadata(PodIfaceKey(key.ifname)) is None:
            return None                 # the interface is gone, and its routes with it
        yield Calls(self._calls(key, value, False), tolerate=("NO_SUCH_ENTRY", "INVALID_SW_IF_INDEX"))
        return None

    def dump(self) -> Mapping[PodRouteKey, tuple[PodRouteValue, Any]]:
        names = self.ifaces.index_to_name
        if not names:
            return {}
        conn = self.ctx.conn
        neighbors: dict[tuple[int, str], str] = {}
        for af in (0, 1):
            for d in conn.dump("ip_neighbor_dump", sw_if_index=ALL, af=af):
                n = d.neighbor
                if int(n.sw_if_index) in names:
                    neighbors[(int(n.sw_if_index), str(n.ip_address))] = str(n.mac_address)
        out = {}
        for is6 in (False, True):
            for d in conn.dump("ip_route_v2_dump", table={"table_id": 0, "is_ip6": is6}):
                r = d.route
                idxs = {int(p.sw_if_index) for p in r.paths}
                if len(idxs) != 1 or not idxs <= names.keys():
                    continue
                idx = idxs.pop()
                prefix = str(r.prefix)
                if prefix.split("/")[1] not in ("32", "128"):
                    continue
                mac = neighbors.get((idx, prefix.split("/")[0]), "")
                out[PodRouteKey(names[idx], prefix)] = (PodRouteValue(mac), None)
        return out
