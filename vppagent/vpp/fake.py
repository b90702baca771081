"""A small, honest fake VPP at the vpp_papi boundary.

``FakeVpp`` plays the VPP process: it keeps VPP-like state (interfaces,
addresses, tables, routes, neighbours, ACLs, npol, cnat, NAT44, memif
sockets, vxlan, dev) so dumps answer what was programmed, and replies with
the retvals VPP's handlers use (see the VPP sources cited inline).
``FakeVpp.client_factory`` makes clients that look like vpp_papi's
``VPPApiClient`` to ``VppConnection``: ``connect``/``disconnect``, the
message table with CRCs, ``messages[name].pack``/``unpack``, the transport's
socket (frames written there reach the fake VPP as bytes, and replies and
events come back from it as bytes, framed as on VPP's API socket),
``read_blocking``, ``api.<message>(**kw)`` for direct use, and the event
callback (called from ``api`` calls, which read the socket).

Every request is validated against the agent's own declared table when it
is packed (``messages.check_args``: unknown message or field, wrong type,
out-of-range value, missing required field raise ``VppArgumentError`` in the
caller, as a programming error), then travels as vpp_papi-encoded bytes, so
handlers see exactly the decoded structures VPP would; replies, details and
events travel back encoded the same way, and decode into the namedtuples
vpp_papi produces.

Requests are served by one "VPP main thread", so a synchronous call pays a
thread hand-off each way (like a socket round trip) and a pipeline does not:
the fake shows the effect of pipelining without pretending to time it.
There is no dataplane: nothing is forwarded, no Linux interface is created.
"""

from __future__ import annotations

import collections
import ipaddress
import itertools
import logging
import os
import queue
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from vppagent.vpp.errors import ERRNO
from vppagent.vpp.messages import (
    MESSAGES, TYPES, check_args, check_message, papi_fields, papi_msgdef, papi_types_in_order,
)

log = logging.getLogger(__name__)

ALL_ONES = 0xFFFFFFFF
ADMIN_UP, LINK_UP = 1, 2                           # if_status_flags
# vnet/fib/fib_source.h
FIB_SOURCE_SPECIAL, FIB_SOURCE_INTERFACE, FIB_SOURCE_API, FIB_SOURCE_DEFAULT_ROUTE = 1, 4, 8, 20
PATH_TYPE_LOCAL, PATH_TYPE_DROP = 1, 2
TAP_FLAG_TUN = 16
MEMIF_MODE_IP = 1


class _Crashed(Exception):
    """The request killed VPP: nothing is answered."""


class Retval(Exception):
    """Raised by a handler: reply with this retval and change nothing."""

    def __init__(self, name: str) -> None:
        self.code = ERRNO[name]
        super().__init__(name)


# ------------------------------------------------------------------ codec

_codec_lock = threading.Lock()
_codec: dict[str, Any] = {}


def codec() -> Mapping[str, Any]:
    """vpp_papi message objects built from the declared table (once)."""
    with _codec_lock:
        if not _codec:
            from vpp_papi import vpp_serializer as vs
            for t in papi_types_in_order():
                if vs.vpp_get_type(t.name) is not None:
                    continue
                if t.kind == "alias":
                    spec = {"type": t.alias_of}
                    if t.alias_length:
                        spec["length"] = t.alias_length
                    vs.VPPTypeAlias(t.name, spec)
                elif t.kind in ("enum", "enumflag"):
                    cls = vs.VPPEnumFlagType if t.kind == "enumflag" else vs.VPPEnumType
                    cls(t.name, [[n, v] for n, v in t.values] + [{"enumtype": t.size}])
                elif t.kind == "union":
                    vs.VPPUnionType(t.name, papi_fields(t.fields))
                else:
                    vs.VPPType(t.name, papi_fields(t.fields))
            for name in MESSAGES:
                _codec[name] = vs.get_message(name, papi_msgdef(name))
        return _codec


# ------------------------------------------------------------------ state

class _Pool:
    """VPP pool indices: freed indices are reused, last freed first."""

    def __init__(self, first: int = 0) -> None:
        self._next = first
        self._free: list[int] = []

    def get(self) -> int:
        if self._free:
            return self._free.pop()
        self._next += 1
        return self._next - 1

    def put(self, index: int) -> None:
        self._free.append(index)


@dataclass
class FakeInterface:
    """One sw_interface.  ``create`` keeps the create-time arguments as VPP
    received them, for tests; dumps only show what VPP's dumps show."""

    sw_if_index: int
    name: str
    kind: str                       # local | loopback | tap | af_packet | memif | vxlan | dev
    dev_type: str
    mac: bytes = bytes(6)
    admin_up: bool = False
    tag: str = ""
    link_mtu: int = 9000
    mtu: list[int] = field(default_factory=lambda: [9000, 0, 0, 0])   # L3, IP4, IP6, MPLS
    table: dict[int, int] = field(default_factory=lambda: {4: 0, 6: 0})
    unnumbered_of: int | None = None
    ip6_enabled: bool = False
    proxy_arp: bool = False
    num_rx_queues: int = 1
    rx_mode: int = 1                # RX_MODE_API_POLLING
    rx_placement: dict[int, int] = field(default_factory=dict)       # queue -> worker
    create: dict[str, Any] = field(default_factory=dict)
    secondary_macs: set[bytes] = field(default_factory=set)         # no dump shows them

    @property
    def flags(self) -> int:
        return (ADMIN_UP | LINK_UP) if self.admin_up else 0


@dataclass
class _Addr:
    prefix: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    stale: bool = False


@dataclass
class _Route:
    paths: list[dict[str, Any]]
    src: int = FIB_SOURCE_API


@dataclass
class FakeState:
    """Everything VPP would lose on a restart."""

    interfaces: dict[int, FakeInterface] = field(default_factory=dict)
    if_pool: _Pool = field(default_factory=_Pool)
    addresses: dict[int, list[_Addr]] = field(default_factory=lambda: collections.defaultdict(list))
    tables: dict[tuple[int, int], str] = field(default_factory=dict)       # (4|6, table_id) -> name
    routes: dict[tuple[int, int], dict[Any, _Route]] = field(default_factory=lambda: collections.defaultdict(dict))
    neighbors: dict[tuple[int, Any], dict[str, Any]] = field(default_factory=dict)
    punt_redirects: dict[tuple[int, Any], dict[str, Any]] = field(default_factory=dict)
    ra_config: dict[int, dict[str, Any]] = field(default_factory=dict)
    loop_instances: set[int] = field(default_factory=set)
    tap_ids: set[int] = field(default_factory=set)
    af_packet: dict[str, int] = field(default_factory=dict)               # host_if_name -> sw_if_index
    memif_sockets: dict[int, str] = field(default_factory=dict)
    memifs: dict[tuple[int, int], int] = field(default_factory=dict)     # (socket_id, id) -> sw_if_index
    acls: dict[int, tuple[str, list[dict[str, Any]]]] = field(default_factory=dict)
    acl_pool: _Pool = field(default_factory=_Pool)
    acl_bindings: dict[int, tuple[int, list[int]]] = field(default_factory=dict)  # sw_if_index -> (n_input, acls)
    ipsets: dict[int, tuple[int, list[Any]]] = field(default_factory=dict)       # id -> (type, members)
    ipset_pool: _Pool = field(default_factory=_Pool)
    rules: dict[int, dict[str, Any]] = field(default_factory=dict)
    rule_pool: _Pool = field(default_factory=_Pool)
    policies: dict[int, list[tuple[bool, int]]] = field(default_factory=dict)
    policy_pool: _Pool = field(default_factory=_Pool)
    npol_interfaces: dict[int, dict[str, Any]] = field(default_factory=dict)
    translations: dict[int, dict[str, Any]] = field(default_factory=dict)
    translation_keys: dict[tuple[Any, int, int], int] = field(default_factory=dict)
    translation_pool: _Pool = field(default_factory=_Pool)
    snat: dict[str, Any] = field(default_factory=dict)
    snat_policy: int = 0
    snat_exclude: set[Any] = field(default_factory=set)
    snat_interfaces: set[tuple[int, int]] = field(default_factory=set)
    cnat_features: set[int] = field(default_factory=set)
    nat44_enabled: bool = False
    nat44_interfaces: dict[int, int] = field(default_factory=dict)       # sw_if_index -> flags
    nat44_addresses: dict[Any, tuple[int, int]] = field(default_factory=dict)   # ip -> (vrf, flags)
    nat44_static: dict[tuple[Any, int, int], dict[str, Any]] = field(default_factory=dict)
    devices: dict[int, tuple[str, str]] = field(default_factory=dict)
    dev_pool: _Pool = field(default_factory=_Pool)
    dev_ports: dict[int, int] = field(default_factory=dict)             # sw_if_index -> dev_index
    vxlan: dict[int, dict[str, Any]] = field(default_factory=dict)      # sw_if_index -> args
    vxlan_instances: set[int] = field(default_factory=set)
    vxlan_bypass: set[tuple[int, int]] = field(default_factory=set)
    # graph arcs a client may add (add_node_next); vxlan*-input start with VPP's own two
    node_nexts: dict[str, list[str]] = field(default_factory=lambda: {
        "vxlan4-input": ["error-drop", "l2-input"], "vxlan6-input": ["error-drop", "l2-input"]})


# Graph nodes the fake knows by name (add_node_next answers NO_SUCH_NODE for others).
KNOWN_NODES = frozenset({"vxlan4-input", "vxlan6-input", "ethernet-input", "ip4-input", "ip6-input",
                         "l2-input", "error-drop"})


@dataclass
class _Failure:
    message: str
    retval: int
    countdown: int
    remaining: int | None


class _Session:
    """One connected client, as VPP's API registration sees it."""

    def __init__(self, client_index: int, client: "FakeVppApiClient") -> None:
        self.client_index = client_index
        self.client = client
        self.replies: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()   # frames; None: closed
        self.alive = True
        self.event_pid: int | None = None


# --------------------------------------------------------------- the VPP

class FakeVpp:
    """The VPP side.  Construct, pass ``client_factory`` to ``VppConnection``,
    inspect ``state`` in tests, ``restart()``/``stop()``/``start()`` to
    simulate VPP going away, ``fail()`` to inject retvals."""

    def __init__(self, *, version: str = "26.10-fake", workers: int = 0,
                 absent: Iterable[str] = (), crc_overrides: Mapping[str, str] | None = None,
                 host_interfaces: Iterable[str] | None = None, pci_devices: Iterable[str] = (),
                 latency: float = 0.0) -> None:
        """``absent``: modules or messages this VPP lacks (a plugin not
        loaded); ``crc_overrides``: messages this VPP has in another version;
        ``host_interfaces``: Linux interfaces af_packet can attach to (None:
        any); ``pci_devices``: devices ``dev_attach`` finds; ``latency``:
        seconds the VPP thread sleeps per wake-up (a socket round trip)."""
        self.version = version
        self.workers = workers
        self.latency = latency
        self.host_interfaces = None if host_interfaces is None else set(host_interfaces)
        self.pci_devices = set(pci_devices)
        absent = set(absent)
        overrides = dict(crc_overrides or {})
        names = [n for n, m in MESSAGES.items() if n not in absent and m.module not in absent]
        # memclnt/vpe messages come first in a real VPP; ours start after them.
        self.message_table: dict[str, int] = {
            f"{n}_{overrides.get(n, MESSAGES[n].crc)[2:]}": 100 + i for i, n in enumerate(sorted(names))}
        self._index_to_name = {i: k[:-9] for k, i in self.message_table.items()}
        self._lock = threading.RLock()
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._sessions: dict[int, _Session] = {}
        self._client_indices = itertools.count(1)
        self._failures: list[_Failure] = []
        self._pids = itertools.count(os.getpid() * 10 + 1)
        self.running = True
        self.pid = next(self._pids)
        self.calls: collections.Counter[str] = collections.Counter()
        self.errors: list[BaseException] = []       # handler bugs (should stay empty)
        self.crashes = 0                             # requests that kill a real VPP
        self.state = FakeState()
        self._reset_state()

    # -------------------------------------------------------- process life

    def client_factory(self, **kwargs: Any) -> "FakeVppApiClient":
        """What ``VppConnection(client_factory=...)`` calls (like ``VPPApiClient``)."""
        return FakeVppApiClient(self, **kwargs)

    def stop(self) -> None:
        """VPP exits: sockets break, connects are refused."""
        with self._lock:
            self.running = False
            for s in list(self._sessions.values()):
                self._break(s)
            self._sessions.clear()

    def start(self) -> None:
        """VPP starts again: empty state, new pid."""
        with self._lock:
            self.running = True
            self.pid = next(self._pids)
            self.state = FakeState()
            self._reset_state()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the VPP thread (tests call this on teardown)."""
        self.stop()
        if self._thread is not None:
            self._inbox.put(None)
            self._thread.join(timeout=5)
            self._thread = None

    def fail(self, message: str, retval: int | str, *, nth: int = 1, times: int | None = 1) -> None:
        """Make the ``nth`` next call of ``message`` (and ``times - 1`` after
        it; None: all) answer ``retval`` without doing anything."""
        if MESSAGES[message].is_dump:
            raise ValueError(f"{message} is a dump: dumps have no retval to inject")
        code = ERRNO[retval] if isinstance(retval, str) else retval
        with self._lock:
            self._failures.append(_Failure(message, code, nth, times))

    @staticmethod
    def _break(s: _Session) -> None:
        s.alive = False
        s.replies.put(None)

    def _reset_state(self) -> None:
        st = self.state
        local0 = FakeInterface(st.if_pool.get(), "local0", "local", "local", link_mtu=0, mtu=[0, 0, 0, 0])
        st.interfaces[local0.sw_if_index] = local0
        for af in (4, 6):
            self._create_table(af, 0, "")
        st.memif_sockets[0] = "/run/vpp/memif.sock"

    def _attach(self, client: "FakeVppApiClient") -> _Session:
        with self._lock:
            if not self.running:
                raise ConnectionRefusedError(111, "Connection refused")
            s = _Session(next(self._client_indices), client)
            self._sessions[s.client_index] = s
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="fake-vpp-main", daemon=True)
                self._thread.start()
            return s

    def _detach(self, s: _Session) -> None:
        with self._lock:
            self._sessions.pop(s.client_index, None)
            s.alive = False

    # ------------------------------------------------------------ serving

    def _submit(self, s: _Session, data: bytes) -> None:
        self._inbox.put((s, data))

    def _loop(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                return
            if self.latency:
                time.sleep(self.latency)
            while item is not None:
                self._serve(*item)
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    break
            if item is None:
                return

    def _serve(self, s: _Session, data: bytes) -> None:
        with self._lock:
            if not s.alive:
                return
            name = self._index_to_name.get(int.from_bytes(data[:2], "big"))
            if name is None or not MESSAGES[name].is_request:
                log.warning("fake VPP drops an unknown message")   # VPP does the same
                return
            self.calls[name] += 1
            msg = MESSAGES[name]
            ctx = int.from_bytes(data[6:10], "big")
            out: list[tuple[str, dict[str, Any]]] = []
            try:
                m, _ = codec()[name].unpack(data)
            except ValueError:          # e.g. a prefix length past 32: VPP's decode refuses it
                m = None
            rv = self._injected(name)
            if m is None:
                if not msg.is_dump:
                    out.append((msg.reply, {"retval": ERRNO["INVALID_VALUE"]}))  # type: ignore[arg-type]
            elif rv is not None:
                out.append((msg.reply, {"retval": rv}))    # type: ignore[arg-type]
            else:
                try:
                    result = getattr(self, "_h_" + name)(m, s)
                    if msg.is_dump:
                        out.extend((msg.stream, d) for d in result or [])   # type: ignore[misc]
                    else:
                        out.append((msg.reply, dict(result or {})))        # type: ignore[arg-type]
                except _Crashed:
                    return
                except Retval as e:
                    if not msg.is_dump:
                        out.append((msg.reply, {"retval": e.code}))       # type: ignore[arg-type]
                except Exception as e:  # a bug in the fake: surface it to tests
                    log.exception("fake VPP handler %s failed", name)
                    self.errors.append(e)
                    if not msg.is_dump:
                        out.append((msg.reply, {"retval": ERRNO["BUG"]}))  # type: ignore[arg-type]
            for reply_name, fields in out:
                try:
                    s.replies.put(self._encode(reply_name, fields, ctx))
                except Exception as e:  # the fake built an answer VPP could not send
                    log.exception("fake VPP cannot encode %s", reply_name)
                    self.errors.append(e)
                    if reply_name == msg.reply and not msg.is_dump:
                        s.replies.put(self._encode(reply_name, {"retval": ERRNO["BUG"]}, ctx))

    def _injected(self, name: str) -> int | None:
        for f in self._failures:
            if f.message == name and (f.remaining is None or f.remaining > 0):
                f.countdown -= 1
                if f.countdown <= 0:
                    if f.remaining is not None:
                        f.remaining -= 1
                    return f.retval
        return None

    def _encode(self, name: str, fields: Mapping[str, Any], ctx: int | None) -> bytes:
        """A reply, detail or event as VPP's socket carries it: vpp_papi-packed, framed."""
        c = codec()[name]
        data = check_message(name, {k: v for k, v in fields.items() if k != "retval"})
        if "retval" in fields:
            data["retval"] = fields["retval"]
        data["_vl_msg_id"] = self.message_table.get(MESSAGES[name].name_crc, 0)
        if ctx is not None:
            data["context"] = ctx
        body = c.pack(data)
        return _FRAME.pack(0, len(body), 0) + body

    def _event(self, sw_if_index: int, deleted: bool = False) -> None:
        iface = self.state.interfaces.get(sw_if_index)
        flags = iface.flags if iface and not deleted else 0
        for s in list(self._sessions.values()):
            if s.event_pid is not None and s.alive:
                s.replies.put(self._encode("sw_interface_event", {
                    "pid": s.event_pid, "sw_if_index": sw_if_index, "flags": flags, "deleted": deleted}, None))

    # ------------------------------------------------------------ helpers

    def _iface(self, sw_if_index: int, kind: str | None = None) -> FakeInterface:
        """VALIDATE_SW_IF_INDEX: unknown -> INVALID_SW_IF_INDEX."""
        iface = self.state.interfaces.get(sw_if_index)
        if iface is None or (kind is not None and iface.kind != kind):
            raise Retval("INVALID_SW_IF_INDEX")
        return iface

    def _new_iface(self, name: str, kind: str, dev_type: str, mac: bytes = bytes(6),
                   create: dict[str, Any] | None = None, **kw: Any) -> FakeInterface:
        st = self.state
        iface = FakeInterface(st.if_pool.get(), name, kind, dev_type, mac=mac, create=dict(create or {}), **kw)
        st.interfaces[iface.sw_if_index] = iface
        self._event(iface.sw_if_index)
        return iface

    def _delete_iface(self, iface: FakeInterface) -> None:
        st = self.state
        idx = iface.sw_if_index
        for a in list(st.addresses.pop(idx, [])):
            self._interface_routes(iface, a.prefix, add=False)
        for other in st.interfaces.values():
            if other.unnumbered_of == idx:
                other.unnumbered_of = None
        for key in [k for k in st.neighbors if k[0] == idx]:
            del st.neighbors[key]
        st.acl_bindings.pop(idx, None)
        st.npol_interfaces.pop(idx, None)
        st.cnat_features.discard(idx)
        st.nat44_interfaces.pop(idx, None)
        # cnat's SNAT interface maps are bitmaps by index with no interface-delete hook
        # (cnat_snat_policy.c): a role outlives its interface and a reused index inherits it.
        del st.interfaces[idx]
        st.if_pool.put(idx)
        self._event(idx, deleted=True)

    @staticmethod
    def _mac(m: Any) -> bytes:
        return bytes(getattr(m, "packed", m or bytes(6)))

    @staticmethod
    def _af(prefix: Any) -> int:
        return 6 if prefix.version == 6 else 4

    def _create_table(self, af: int, table_id: int, name: str) -> None:
        """A new table holds VPP's own special entries (as dumped by 26.10)."""
        key = (af, table_id)
        if key in self.state.tables:
            return
        self.state.tables[key] = name or f"ipv{af}-VRF:{table_id}"
        specials = ([("::/0", FIB_SOURCE_DEFAULT_ROUTE, PATH_TYPE_DROP), ("fe80::/10", FIB_SOURCE_SPECIAL, 0)]
                    if af == 6 else
                    [("0.0.0.0/0", FIB_SOURCE_DEFAULT_ROUTE, PATH_TYPE_DROP),
                     ("0.0.0.0/32", FIB_SOURCE_DEFAULT_ROUTE, PATH_TYPE_DROP),
                     ("255.255.255.255/32", FIB_SOURCE_DEFAULT_ROUTE, PATH_TYPE_DROP),
                     ("224.0.0.0/4", FIB_SOURCE_SPECIAL, PATH_TYPE_DROP),
                     ("240.0.0.0/4", FIB_SOURCE_SPECIAL, PATH_TYPE_DROP)])
        for net, src, ptype in specials:
            self.state.routes[key][ipaddress.ip_network(net)] = _Route(
                [{"type": ptype, "sw_if_index": ALL_ONES, "proto": 1 if af == 6 else 0}], src)

    def _interface_routes(self, iface: FakeInterface, prefix: Any, add: bool) -> None:
        """Connected and local routes VPP installs for an address of an
        admin-up interface (source INTERFACE, never ours to touch)."""
        af = self._af(prefix)
        routes = self.state.routes[(af, iface.table[af])]
        proto = 1 if af == 6 else 0
        host = ipaddress.ip_network(prefix.ip)
        net = prefix.network
        edges = [] if af == 6 or net.prefixlen >= 31 else [
            ipaddress.ip_network(net.network_address), ipaddress.ip_network(net.broadcast_address)]
        if add and iface.admin_up:
            if net != host:
                routes.setdefault(net, _Route(
                    [{"sw_if_index": iface.sw_if_index, "proto": proto}], FIB_SOURCE_INTERFACE))
            for edge in edges:     # network and broadcast addresses are dropped
                routes.setdefault(edge, _Route([{"sw_if_index": ALL_ONES, "type": PATH_TYPE_DROP,
                                                 "proto": proto}], FIB_SOURCE_INTERFACE))
            routes[host] = _Route([{"sw_if_index": iface.sw_if_index, "type": PATH_TYPE_LOCAL, "proto": proto,
                                    "nh": {"address": {f"ip{af}": prefix.ip}}}], FIB_SOURCE_INTERFACE)
        elif not add:
            for n in [net, host] + edges:
                r = routes.get(n)
                if r is not None and r.src == FIB_SOURCE_INTERFACE and \
                        r.paths[0].get("sw_if_index") in (iface.sw_if_index, ALL_ONES):
                    del routes[n]

    def _addresses_of(self, sw_if_index: int) -> list[_Addr]:
        """Honouring unnumbered: an unnumbered interface shows its donor's."""
        iface = self.state.interfaces[sw_if_index]
        donor = iface.unnumbered_of if iface.unnumbered_of is not None else sw_if_index
        return self.state.addresses.get(donor, [])

    # ===================================================== vpe / memclnt

    def _h_control_ping(self, m: Any, s: _Session) -> dict:
        return {"client_index": s.client_index, "vpe_pid": self.pid}

    def _h_show_version(self, m: Any, s: _Session) -> dict:
        return {"program": "vpe", "version": self.version, "build_date": "fake",
                "build_directory": "/fake"}

    def _h_show_vpe_system_time(self, m: Any, s: _Session) -> dict:
        return {"vpe_system_time": time.time()}

    # ========================================================= interfaces

    def _h_want_interface_events(self, m: Any, s: _Session) -> dict:
        s.event_pid = m.pid if m.enable_disable else None
        return {}

    def _h_sw_interface_dump(self, m: Any, s: _Session) -> list[dict]:
        out = []
        for iface in sorted(self.state.interfaces.values(), key=lambda i: i.sw_if_index):
            if m.sw_if_index != ALL_ONES and iface.sw_if_index != m.sw_if_index:
                continue
            if m.name_filter_valid and m.name_filter not in iface.name:
                continue
            out.append({"sw_if_index": iface.sw_if_index, "sup_sw_if_index": iface.sw_if_index,
                        "l2_address": iface.mac, "flags": iface.flags, "link_duplex": 2 if iface.admin_up else 0,
                        "link_mtu": iface.link_mtu, "mtu": iface.mtu, "interface_name": iface.name,
                        "interface_dev_type": iface.dev_type, "tag": iface.tag})
        return out

    def _h_sw_interface_set_flags(self, m: Any, s: _Session) -> dict:
        iface = self._iface(m.sw_if_index)
        up = bool(m.flags & ADMIN_UP)
        if up != iface.admin_up:
            iface.admin_up = up
            for a in self.state.addresses.get(iface.sw_if_index, []):
                self._interface_routes(iface, a.prefix, add=up)
            self._event(iface.sw_if_index)
        return {}

    def _h_sw_interface_add_del_address(self, m: Any, s: _Session) -> dict:
        # vnet/ip/ip4_forward.c ip4_add_del_interface_address_internal
        iface = self._iface(m.sw_if_index)
        st = self.state
        mine = st.addresses[iface.sw_if_index]
        if m.del_all:
            for a in list(mine):
                self._interface_routes(iface, a.prefix, add=False)
            mine.clear()
            return {}
        p = m.prefix
        af = self._af(p)
        if p.network.prefixlen > (128 if af == 6 else 32):
            raise Retval("INVALID_PREFIX_LENGTH")
        existing = next((a for a in mine if a.prefix == p), None)
        if not m.is_add:
            if existing is None:
                raise Retval("ADDRESS_NOT_FOUND_FOR_INTERFACE")
            mine.remove(existing)
            self._interface_routes(iface, p, add=False)
            return {}
        for other_idx, addrs in st.addresses.items():
            other = st.interfaces[other_idx]
            if other.table[af] != iface.table[af]:
                continue
            for a in addrs:
                if a.prefix.version != p.version or a.stale:
                    continue
                if p.ip in a.prefix.network or a.prefix.ip in p.network:   # the same one too
                    if (other_idx == iface.sw_if_index and a.prefix.network.prefixlen == p.network.prefixlen
                            and a.prefix.ip != p.ip):
                        continue          # several addresses of one subnet on one interface
                    raise Retval("ADDRESS_IN_USE")
        if existing is not None:          # only a stale one gets here
            existing.stale = False        # re-added during a replace: keep it
            return {}
        for other_idx, addrs in st.addresses.items():     # a stale copy moves here
            for a in [a for a in addrs if a.stale and a.prefix == p]:
                addrs.remove(a)
                self._interface_routes(st.interfaces[other_idx], p, add=False)
        mine.append(_Addr(p))
        self._interface_routes(iface, p, add=True)
        return {}

    def _h_sw_interface_address_replace_begin(self, m: Any, s: _Session) -> dict:
        for addrs in self.state.addresses.values():
            for a in addrs:
                a.stale = True
        return {}

    def _h_sw_interface_address_replace_end(self, m: Any, s: _Session) -> dict:
        for idx, addrs in self.state.addresses.items():
            for a in [a for a in addrs if a.stale]:
                addrs.remove(a)
                self._interface_routes(self.state.interfaces[idx], a.prefix, add=False)
        return {}

    def _h_sw_interface_set_unnumbered(self, m: Any, s: _Session) -> dict:
        # Field names are backwards in the API: sw_if_index donates its
        # addresses to unnumbered_sw_if_index (vnet/interface_api.c).
        st = self.state
        if m.unnumbered_sw_if_index not in st.interfaces:
            raise Retval("INVALID_SW_IF_INDEX")
        if m.is_add and m.sw_if_index not in st.interfaces:
            raise Retval("INVALID_SW_IF_INDEX_2")
        target = st.interfaces[m.unnumbered_sw_if_index]
        if m.is_add and target.table != st.interfaces[m.sw_if_index].table:
            raise Retval("UNEXPECTED_INTF_STATE")     # vnet_sw_interface_check_table_same
        target.unnumbered_of = m.sw_if_index if m.is_add else None
        return {}

    def _h_sw_interface_set_table(self, m: Any, s: _Session) -> dict:
        iface = self._iface(m.sw_if_index)
        af = 6 if m.is_ipv6 else 4
        if (af, m.vrf_id) not in self.state.tables:
            raise Retval("NO_SUCH_FIB")
        if any(a.prefix.version == af for a in self._addresses_of(iface.sw_if_index)):
            raise Retval("ADDRESS_FOUND_FOR_INTERFACE")
        iface.table[af] = m.vrf_id
        return {}

    def _h_sw_interface_set_mtu(self, m: Any, s: _Session) -> dict:
        iface = self._iface(m.sw_if_index)
        if any(v > iface.link_mtu and iface.link_mtu for v in m.mtu):
            raise Retval("INVALID_VALUE")
        for i, v in enumerate(m.mtu):
            if v:
                iface.mtu[i] = v
        return {}

    def _h_sw_interface_set_rx_mode(self, m: Any, s: _Session) -> dict:
        iface = self._iface(m.sw_if_index)
        if m.mode == 0 or m.mode > 4:
            raise Retval("INVALID_VALUE")
        if m.queue_id_valid and m.queue_id >= iface.num_rx_queues:
            raise Retval("INVALID_QUEUE")
        iface.rx_mode = int(m.mode)
        return {}

    def _h_sw_interface_set_rx_placement(self, m: Any, s: _Session) -> dict:
        iface = self._iface(m.sw_if_index)
        if iface.kind == "local":
            raise Retval("INVALID_VALUE")
        if m.queue_id >= iface.num_rx_queues or (not m.is_main and m.worker_id >= self.workers):
            raise Retval("UNIMPLEMENTED")      # set_hw_interface_rx_placement errors map to this
        iface.rx_placement[m.queue_id] = 0 if m.is_main else m.worker_id + 1
        return {}

    def _h_sw_interface_rx_placement_dump(self, m: Any, s: _Session) -> list[dict]:
        ifaces = self.state.interfaces.values() if m.sw_if_index == ALL_ONES else \
            [self.state.interfaces[m.sw_if_index]] if m.sw_if_index in self.state.interfaces else []
        return [{"sw_if_index": i.sw_if_index, "queue_id": q, "worker_id": i.rx_placement.get(q, 0),
                 "mode": i.rx_mode}
                for i in ifaces if i.kind != "local" for q in range(i.num_rx_queues)]

    def _h_sw_interface_tag_add_del(self, m: Any, s: _Session) -> dict:
        iface = self._iface(m.sw_if_index)
        if m.is_add:
            if not m.tag:
                raise Retval("INVALID_VALUE")
            iface.tag = m.tag
        else:
            iface.tag = ""
        return {}

    def _h_sw_interface_set_mac_address(self, m: Any, s: _Session) -> dict:
        iface = self._iface(m.sw_if_index)
        if iface.kind in ("local", "vxlan") or iface.create.get("l3"):
            raise Retval("UNIMPLEMENTED")
        iface.mac = self._mac(m.mac_address)
        return {}

    def _h_sw_interface_add_del_mac_address(self, m: Any, s: _Session) -> dict:
        # vnet/interface_api.c: any error of vnet_hw_interface_add_del_mac_address is UNIMPLEMENTED
        # (interfaces without an Ethernet address: local0, L3 tunnels)
        iface = self._iface(m.sw_if_index)
        if iface.kind == "local" or iface.create.get("l3"):
            raise Retval("UNIMPLEMENTED")
        mac = self._mac(m.addr)
        (iface.secondary_macs.add if m.is_add else iface.secondary_macs.discard)(mac)
        return {}

    def _h_add_node_next(self, m: Any, s: _Session) -> dict:
        # vlibmemory/vlib_api.c: vlib_node_add_next is idempotent (an existing arc keeps its slot)
        if m.node_name not in KNOWN_NODES:
            return {"retval": ERRNO["NO_SUCH_NODE"], "next_index": ALL_ONES}
        if m.next_name not in KNOWN_NODES:
            return {"retval": ERRNO["NO_SUCH_NODE2"], "next_index": ALL_ONES}
        nexts = self.state.node_nexts.setdefault(m.node_name, [])
        if m.next_name not in nexts:
            nexts.append(m.next_name)
        return {"next_index": nexts.index(m.next_name)}

    def _h_create_loopback_instance(self, m: Any, s: _Session) -> dict:
        # vnet/ethernet/interface.c vnet_create_loopback_interface
        st = self.state
        if m.is_specified:
            if m.user_instance in st.loop_instances:
                raise Retval("INVALID_REGISTRATION")
            inst = m.user_instance
        else:
            inst = next(i for i in itertools.count() if i not in st.loop_instances)
        st.loop_instances.add(inst)
        mac = self._mac(m.mac_address)
        if mac == bytes(6):
            mac = bytes([0xDE, 0xAD, 0, 0, 0, inst & 0xFF])
        iface = self._new_iface(f"loop{inst}", "loopback", "Loopback", mac,
                                create={"instance": inst})
        return {"sw_if_index": iface.sw_if_index}

    def _h_delete_loopback(self, m: Any, s: _Session) -> dict:
        iface = self._iface(m.sw_if_index, "loopback")
        self.state.loop_instances.discard(iface.create["instance"])
        self._delete_iface(iface)
        return {}

    # ================================================================= ip

    def _h_ip_address_dump(self, m: Any, s: _Session) -> list[dict]:
        if m.sw_if_index not in self.state.interfaces:
            return []
        v = 6 if m.is_ipv6 else 4      # an unnumbered interface shows none (checked on 26.10)
        return [{"sw_if_index": m.sw_if_index, "prefix": a.prefix}
                for a in self.state.addresses.get(m.sw_if_index, []) if a.prefix.version == v]

    def _h_sw_interface_ip6_enable_disable(self, m: Any, s: _Session) -> dict:
        self._iface(m.sw_if_index).ip6_enabled = bool(m.enable)
        return {}

    def _h_ip_table_add_del(self, m: Any, s: _Session) -> dict:
        # vnet/ip/ip_api.c: table 0 always exists and is never deleted
        af = 6 if m.table.is_ip6 else 4
        tid = m.table.table_id
        if tid == 0:
            return {}
        if m.is_add:
            self._create_table(af, tid, m.table.name)
        elif (af, tid) in self.state.tables:
            if any(i.table[af] == tid for i in self.state.interfaces.values()):
                # still locked by interfaces: the API's routes go, the table stays
                self.state.routes[(af, tid)] = {k: r for k, r in self.state.routes[(af, tid)].items()
                                                 if r.src != FIB_SOURCE_API}
            else:
                del self.state.tables[(af, tid)]
                self.state.routes.pop((af, tid), None)
        return {}

    def _h_ip_table_dump(self, m: Any, s: _Session) -> list[dict]:
        return [{"table": {"table_id": tid, "is_ip6": af == 6, "name": name}}
                for (af, tid), name in sorted(self.state.tables.items())]

    def _h_ip_route_add_del(self, m: Any, s: _Session) -> dict:
        # vnet/fib/fib_api.c fib_api_route_add_del
        r = m.route
        af = self._af(r.prefix)
        key = (af, r.table_id)
        if key not in self.state.tables:
            raise Retval("NO_SUCH_FIB")
        for p in r.paths:
            if p.sw_if_index != ALL_ONES and p.sw_if_index not in self.state.interfaces:
                raise Retval("NO_MATCHING_INTERFACE")
            if p.sw_if_index == ALL_ONES and p.type == 0 and (6 if p.proto == 1 else 4, p.table_id) not in self.state.tables:
                raise Retval("NO_SUCH_FIB")
        raw_paths = [_plain("vl_api_fib_path_t", p) for p in r.paths]
        same = _path_key
        routes = self.state.routes[key]
        net = r.prefix
        current = routes.get(net)
        if m.is_multipath:
            if not raw_paths:
                raise Retval("NO_PATHS_IN_ROUTE")
            if m.is_add:
                paths = list(current.paths) if current and current.src == FIB_SOURCE_API else []
                have = {same(p) for p in paths}
                paths += [p for p in raw_paths if same(p) not in have]
                routes[net] = _Route(paths)
            elif current is not None and current.src == FIB_SOURCE_API:
                gone = {same(p) for p in raw_paths}
                left = [p for p in current.paths if same(p) not in gone]
                if left:
                    current.paths = left
                else:
                    del routes[net]
        elif m.is_add:
            if not raw_paths:
                raise Retval("NO_PATHS_IN_ROUTE")
            routes[net] = _Route(raw_paths)
        elif current is not None and current.src == FIB_SOURCE_API:
            del routes[net]
        return {"stats_index": 0}

    def _h_ip_route_v2_dump(self, m: Any, s: _Session) -> list[dict]:
        key = (6 if m.table.is_ip6 else 4, m.table.table_id)
        if key not in self.state.tables:
            return []
        out = []
        for net, r in sorted(self.state.routes[key].items(), key=lambda kv: (kv[0].prefixlen, int(kv[0].network_address))):
            if m.src and r.src != m.src:
                continue
            out.append({"route": {"table_id": key[1], "prefix": net, "src": r.src, "paths": r.paths,
                                  "n_paths": len(r.paths)}})
        return out

    def _h_ip_neighbor_add_del(self, m: Any, s: _Session) -> dict:
        n = m.neighbor
        self._iface(n.sw_if_index)
        key = (n.sw_if_index, n.ip_address)
        if m.is_add:
            self.state.neighbors[key] = _plain("vl_api_ip_neighbor_t", n)
        elif key in self.state.neighbors:
            del self.state.neighbors[key]
        else:
            raise Retval("NO_SUCH_ENTRY")
        return {"stats_index": 0}

    def _h_ip_neighbor_dump(self, m: Any, s: _Session) -> list[dict]:
        v = 6 if m.af == 1 else 4
        return [{"age": 0.0, "neighbor": n} for (idx, ip), n in self.state.neighbors.items()
                if ip.version == v and m.sw_if_index in (ALL_ONES, idx)]

    def _h_ip_unnumbered_dump(self, m: Any, s: _Session) -> list[dict]:
        return [{"sw_if_index": i.sw_if_index, "ip_sw_if_index": i.unnumbered_of}
                for i in self.state.interfaces.values()
                if i.unnumbered_of is not None and m.sw_if_index in (ALL_ONES, i.sw_if_index)]

    def _h_proxy_arp_intfc_enable_disable(self, m: Any, s: _Session) -> dict:
        self._iface(m.sw_if_index).proxy_arp = bool(m.enable)     # idempotent both ways
        return {}

    def _h_proxy_arp_intfc_dump(self, m: Any, s: _Session) -> list[dict]:
        return [{"sw_if_index": i.sw_if_index} for i in self.state.interfaces.values() if i.proxy_arp]

    def _h_sw_interface_ip6nd_ra_config(self, m: Any, s: _Session) -> dict:
        iface = self._iface(m.sw_if_index)
        if not iface.ip6_enabled and not any(a.prefix.version == 6 for a in self._addresses_of(iface.sw_if_index)):
            raise Retval("IP6_NOT_ENABLED")
        self.state.ra_config[iface.sw_if_index] = m._asdict()
        return {}

    def _h_ip_punt_redirect(self, m: Any, s: _Session) -> dict:
        p = m.punt
        if p.rx_sw_if_index != ALL_ONES:
            self._iface(p.rx_sw_if_index)
        self._iface(p.tx_sw_if_index)
        key = (p.rx_sw_if_index, p.nh.version if p.nh else 4)
        if m.is_add:
            self.state.punt_redirects[key] = _plain("vl_api_punt_redirect_t", p)
        else:
            self.state.punt_redirects.pop(key, None)
        return {}

    # ==================================================== pod interfaces

    def _h_tap_create_v3(self, m: Any, s: _Session) -> dict:
        # plugins/tap/tap.c tap_create_if
        st = self.state
        if m.id != ALL_ONES:
            if m.id in st.tap_ids:
                raise Retval("INVALID_INTERFACE")
            tap_id = m.id
        else:
            tap_id = next(i for i in itertools.count() if i not in st.tap_ids)
        for sz in (m.rx_ring_sz, m.tx_ring_sz):
            if sz == 0 or sz & (sz - 1) or sz > 32768:
                raise Retval("INIT_FAILED")
        if m.host_if_name_set and any(i.create.get("host_if_name") == m.host_if_name
                                      for i in st.interfaces.values() if i.kind == "tap"):
            raise Retval("SYSCALL_ERROR_2")
        st.tap_ids.add(tap_id)
        tun = bool(m.tap_flags & TAP_FLAG_TUN)
        mac = bytes(6) if tun else (self._mac(m.mac_address) if not m.use_random_mac
                                    else bytes([0x02, 0xFE, 0, 0, tap_id >> 8 & 0xFF, tap_id & 0xFF]))
        create = {k: v for k, v in m._asdict().items() if k not in ("_vl_msg_id", "client_index", "context")}
        create.update(tap_id=tap_id, l3=tun,
                      host_if_name=m.host_if_name if m.host_if_name_set else f"tap{tap_id}",
                      num_rx_queues=max(1, m.num_rx_queues))
        iface = self._new_iface(f"tun{tap_id}" if tun else f"tap{tap_id}", "tap", "virtio", mac,
                                create=create, num_rx_queues=max(1, m.num_rx_queues))
        if m.tag:
            iface.tag = m.tag
        return {"sw_if_index": iface.sw_if_index}

    def _h_tap_delete_v2(self, m: Any, s: _Session) -> dict:
        iface = self._iface(m.sw_if_index, "tap")
        self.state.tap_ids.discard(iface.create["tap_id"])
        self._delete_iface(iface)
        return {}

    def _h_sw_interface_tap_v2_dump(self, m: Any, s: _Session) -> list[dict]:
        # plugins/tap/tapv2_api.c: queues, gateways and the random-MAC choice are not returned
        out = []
        for i in self.state.interfaces.values():
            if i.kind != "tap" or m.sw_if_index not in (ALL_ONES, i.sw_if_index):
                continue
            c = i.create
            out.append({
                "sw_if_index": i.sw_if_index, "id": c["tap_id"], "tx_ring_sz": c["tx_ring_sz"],
                "rx_ring_sz": c["rx_ring_sz"], "host_mtu_size": c["host_mtu_size"] if c["host_mtu_set"] else 0,
                "host_mac_addr": self._mac(c["host_mac_addr"]), "tap_flags": c["tap_flags"],
                "host_ip4_prefix": c["host_ip4_prefix"] if c["host_ip4_prefix_set"] else "0.0.0.0/0",
                "host_ip6_prefix": c["host_ip6_prefix"] if c["host_ip6_prefix_set"] else "::/0",
                "dev_name": "/dev/net/tun", "host_if_name": c["host_if_name"],
                "host_namespace": c["host_namespace"] if c["host_namespace_set"] else "",
                "host_bridge": c["host_bridge"] if c["host_bridge_set"] else ""})
        return out

    def _h_af_packet_create_v3(self, m: Any, s: _Session) -> dict:
        # plugins/af_packet/af_packet.c af_packet_create_if
        st = self.state
        name = m.host_if_name
        if name in st.af_packet:
            raise Retval("IF_ALREADY_EXISTS")
        if not name or (self.host_interfaces is not None and name not in self.host_interfaces):
            raise Retval("INVALID_INTERFACE")
        # af_packet_queue_init: 0 takes the TPACKET_V3 default; the kernel's PACKET_RX_RING/TX_RING
        # refuse frames not a multiple of 16 and blocks not a whole number of pages (SYSCALL_ERROR_1)
        for frame, count, defaults in ((m.rx_frame_size, m.rx_frames_per_block, (2048, 32)),
                                       (m.tx_frame_size, m.tx_frames_per_block, (2048 * 33, 1024))):
            frame, count = frame or defaults[0], count or defaults[1]
            if frame % 16 or (frame * count) % 4096:
                raise Retval("SYSCALL_ERROR_1")
        mac = self._mac(m.hw_addr)
        if m.use_random_hw_addr or mac == bytes(6):
            mac = bytes([0x02, 0xFE, 0xAF, 0, 0, len(st.af_packet) & 0xFF])
        create = {k: v for k, v in m._asdict().items() if k not in ("_vl_msg_id", "client_index", "context")}
        create["l3"] = m.mode == 2
        iface = self._new_iface(f"host-{name}", "af_packet", "af_packet", mac, create=create,
                                num_rx_queues=max(1, m.num_rx_queues))
        st.af_packet[name] = iface.sw_if_index
        return {"sw_if_index": iface.sw_if_index}

    def _h_af_packet_delete(self, m: Any, s: _Session) -> dict:
        idx = self.state.af_packet.pop(m.host_if_name, None)
        if idx is None:
            raise Retval("SYSCALL_ERROR_1")
        self._delete_iface(self.state.interfaces[idx])
        return {}

    def _h_af_packet_dump(self, m: Any, s: _Session) -> list[dict]:
        return [{"sw_if_index": idx, "host_if_name": name} for name, idx in self.state.af_packet.items()]

    def _h_af_packet_set_l4_cksum_offload(self, m: Any, s: _Session) -> dict:
        iface = self._iface(m.sw_if_index)
        if iface.kind != "af_packet":
            raise Retval("INVALID_INTERFACE")
        iface.create["l4_cksum_offload"] = bool(m.set)
        return {}

    def _h_memif_socket_filename_add_del_v2(self, m: Any, s: _Session) -> dict:
        # plugins/memif/memif_api.c + memif.c memif_socket_filename_add_del
        st = self.state
        sid = m.socket_id
        if sid == 0:
            raise Retval("INVALID_ARGUMENT")
        if m.is_add and sid == ALL_ONES:
            sid = next(i for i in itertools.count(1) if i not in st.memif_sockets)
        if sid == ALL_ONES:
            raise Retval("INVALID_ARGUMENT")
        if not m.is_add:
            if sid not in st.memif_sockets:
                raise Retval("INVALID_ARGUMENT")
            if any(k[0] == sid for k in st.memifs):
                raise Retval("UNEXPECTED_INTF_STATE")
            del st.memif_sockets[sid]
            return {"socket_id": sid}
        if not m.socket_filename:
            raise Retval("INVALID_ARGUMENT")
        if sid in st.memif_sockets and st.memif_sockets[sid] != m.socket_filename:
            raise Retval("ENTRY_ALREADY_EXISTS")
        st.memif_sockets[sid] = m.socket_filename
        return {"socket_id": sid}

    def _h_memif_create_v2(self, m: Any, s: _Session) -> dict:
        st = self.state
        ring = m.ring_size or 1024
        if ring & (ring - 1):
            raise Retval("INVALID_ARGUMENT")
        if m.socket_id not in st.memif_sockets:
            raise Retval("INVALID_ARGUMENT")
        roles = {st.interfaces[i].create["role"] for k, i in st.memifs.items() if k[0] == m.socket_id}
        if (m.socket_id, m.id) in st.memifs or (roles and int(m.role) not in roles):
            raise Retval("SUBIF_ALREADY_EXISTS")
        create = {k: v for k, v in m._asdict().items() if k not in ("_vl_msg_id", "client_index", "context")}
        create.update(role=int(m.role), ring_size=ring, buffer_size=m.buffer_size or 2048,
                      l3=m.mode == MEMIF_MODE_IP)
        mac = self._mac(m.hw_addr)
        if mac == bytes(6) and m.mode != MEMIF_MODE_IP:
            mac = bytes([0x02, 0xFE, 0x3E, 0, m.socket_id & 0xFF, m.id & 0xFF])
        queues = m.rx_queues or 1
        iface = self._new_iface(f"memif{m.socket_id}/{m.id}", "memif", "memif", mac, create=create,
                                num_rx_queues=queues)
        st.memifs[(m.socket_id, m.id)] = iface.sw_if_index
        return {"sw_if_index": iface.sw_if_index}

    def _h_memif_delete(self, m: Any, s: _Session) -> dict:
        iface = self._iface(m.sw_if_index, "memif")
        c = iface.create
        del self.state.memifs[(c["socket_id"], c["id"])]
        self._delete_iface(iface)
        return {}

    def _h_memif_dump(self, m: Any, s: _Session) -> list[dict]:
        # plugins/memif/memif_api.c: the secret and queue counts are never
        # returned; ring and buffer sizes only once a peer connected (26.10
        # dumps ring_size 1, buffer_size 0 before), and no peer ever does here.
        out = []
        for (sid, mid), idx in sorted(self.state.memifs.items()):
            i = self.state.interfaces[idx]
            c = i.create
            out.append({"sw_if_index": idx, "hw_addr": i.mac, "id": mid, "role": c["role"],
                        "mode": c["mode"], "zero_copy": False, "socket_id": sid,
                        "ring_size": 1, "buffer_size": 0,
                        "flags": i.flags, "if_name": i.name})
        return out

    def _h_memif_socket_filename_dump(self, m: Any, s: _Session) -> list[dict]:
        return [{"socket_id": sid, "socket_filename": f} for sid, f in sorted(self.state.memif_sockets.items())]

    # ================================================================ acl

    def _h_acl_add_replace(self, m: Any, s: _Session) -> dict:
        # plugins/acl/acl.c acl_add_list
        st = self.state
        for r in m.r:
            if r.src_prefix.version != r.dst_prefix.version:
                raise Retval("INVALID_VALUE")
            if r.srcport_or_icmptype_first > r.srcport_or_icmptype_last or \
                    r.dstport_or_icmpcode_first > r.dstport_or_icmpcode_last:
                raise Retval("INVALID_VALUE_2")
        if m.acl_index == ALL_ONES:
            index = st.acl_pool.get()
        elif m.acl_index in st.acls:
            index = m.acl_index
        else:
            raise Retval("NO_SUCH_ENTRY")
        st.acls[index] = (m.tag, [_plain("vl_api_acl_rule_t", r) for r in m.r])
        return {"acl_index": index}

    def _h_acl_del(self, m: Any, s: _Session) -> dict:
        st = self.state
        if m.acl_index not in st.acls:
            raise Retval("NO_SUCH_ENTRY")
        for n_input, acls in st.acl_bindings.values():
            if m.acl_index in acls[:n_input]:
                raise Retval("ACL_IN_USE_INBOUND")
            if m.acl_index in acls[n_input:]:
                raise Retval("ACL_IN_USE_OUTBOUND")
        del st.acls[m.acl_index]
        st.acl_pool.put(m.acl_index)
        return {}

    def _h_acl_dump(self, m: Any, s: _Session) -> list[dict]:
        items = sorted(self.state.acls.items()) if m.acl_index == ALL_ONES else \
            [(m.acl_index, self.state.acls[m.acl_index])] if m.acl_index in self.state.acls else []
        return [{"acl_index": i, "tag": tag, "count": len(rules), "r": rules} for i, (tag, rules) in items]

    def _h_acl_interface_set_acl_list(self, m: Any, s: _Session) -> dict:
        self._iface(m.sw_if_index)
        if m.n_input > m.count:
            raise Retval("INVALID_VALUE")
        if any(a not in self.state.acls for a in m.acls):
            raise Retval("NO_SUCH_ENTRY")
        if m.acls:
            self.state.acl_bindings[m.sw_if_index] = (m.n_input, list(m.acls))
        else:
            self.state.acl_bindings.pop(m.sw_if_index, None)
        return {}

    def _h_acl_interface_list_dump(self, m: Any, s: _Session) -> list[dict]:
        # plugins/acl/acl.c: one entry per existing interface, bound or not
        out = []
        for idx in sorted(self.state.interfaces):
            if m.sw_if_index in (ALL_ONES, idx):
                n_input, acls = self.state.acl_bindings.get(idx, (0, []))
                out.append({"sw_if_index": idx, "count": len(acls), "n_input": n_input, "acls": acls})
        return out

    # =============================================================== npol
    # plugins/npol: update of an unknown id creates; no dumps exist, so the
    # agent cannot read npol state back (tests read ``state``).

    def _h_npol_get_version(self, m: Any, s: _Session) -> dict:
        return {"major": 0, "minor": 0}

    def _h_npol_ipset_create(self, m: Any, s: _Session) -> dict:
        sid = self.state.ipset_pool.get()
        self.state.ipsets[sid] = (int(m.type), [])
        return {"set_id": sid}

    def _h_npol_ipset_add_del_members(self, m: Any, s: _Session) -> dict:
        st = self.state
        if m.set_id not in st.ipsets:
            raise Retval("NO_SUCH_ENTRY")
        kind, members = st.ipsets[m.set_id]
        arm = {0: "address", 1: "tuple", 2: "prefix"}[kind]    # npol decodes by the set's type
        decoded = [getattr(x.val, arm) for x in m.members]
        if m.is_add:
            members.extend(decoded)             # duplicates are kept, as in npol_ipset.c
        else:
            st.ipsets[m.set_id] = (kind, [x for x in members if x not in decoded])
        return {}

    def _h_npol_ipset_delete(self, m: Any, s: _Session) -> dict:
        if self.state.ipsets.pop(m.set_id, None) is None:
            raise Retval("NO_SUCH_ENTRY")
        self.state.ipset_pool.put(m.set_id)
        return {}

    def _npol_rule(self, rule_id: int | None, m_rule: Any) -> int:
        for e in m_rule.matches:
            if int(e.type) > 3:
                return -1
        st = self.state
        if rule_id is None or rule_id not in st.rules:
            rule_id = st.rule_pool.get()
        st.rules[rule_id] = _plain("vl_api_npol_rule_t", m_rule)
        return rule_id

    def _h_npol_rule_create(self, m: Any, s: _Session) -> dict:
        return {"rule_id": self._npol_rule(None, m.rule)}

    def _h_npol_rule_update(self, m: Any, s: _Session) -> dict:
        self._npol_rule(m.rule_id, m.rule)
        return {}

    def _h_npol_rule_delete(self, m: Any, s: _Session) -> dict:
        if self.state.rules.pop(m.rule_id, None) is None:
            raise Retval("NO_SUCH_ENTRY")
        self.state.rule_pool.put(m.rule_id)
        return {}

    def _npol_policy(self, policy_id: int | None, items: Any) -> int:
        st = self.state
        if policy_id is None or policy_id not in st.policies:
            policy_id = st.policy_pool.get()
        st.policies[policy_id] = [(bool(i.is_inbound), i.rule_id) for i in items]
        return policy_id

    def _h_npol_policy_create(self, m: Any, s: _Session) -> dict:
        return {"policy_id": self._npol_policy(None, m.rules)}

    def _h_npol_policy_update(self, m: Any, s: _Session) -> dict:
        self._npol_policy(m.policy_id, m.rules)
        return {}

    def _h_npol_policy_delete(self, m: Any, s: _Session) -> dict:
        if self.state.policies.pop(m.policy_id, None) is None:
            raise Retval("NO_SUCH_ENTRY")
        self.state.policy_pool.put(m.policy_id)
        return {}

    def _h_npol_configure_policies(self, m: Any, s: _Session) -> dict:
        # npol_interface.c: unknown interface -> INVALID_SW_IF_INDEX; an
        # unknown policy id -> retval 1 (sic).
        self._iface(m.sw_if_index)
        ids = list(m.policy_ids)
        if m.num_rx_policies + m.num_tx_policies > len(ids) or m.total_ids != len(ids):
            raise Retval("INVALID_VALUE")
        if any(i not in self.state.policies for i in ids):
            return {"retval": 1}
        nrx, ntx = m.num_rx_policies, m.num_tx_policies
        self.state.npol_interfaces[m.sw_if_index] = {
            "rx_policies": ids[:nrx], "tx_policies": ids[nrx:nrx + ntx], "profiles": ids[nrx + ntx:],
            "invert_rx_tx": bool(m.invert_rx_tx),
            "policy_default_rx": int(m.policy_default_rx), "policy_default_tx": int(m.policy_default_tx),
            "profile_default_rx": int(m.profile_default_rx), "profile_default_tx": int(m.profile_default_tx)}
        return {}

    # =============================================================== cnat

    def _h_cnat_translation_update(self, m: Any, s: _Session) -> dict:
        # plugins/cnat: one translation per (vip, port, proto); update keeps the id
        st = self.state
        t = m.translation
        if not t.paths:
            # cnat_api.c does vec_validate (paths, n_paths - 1): VPP 26.10 dies.
            log.warning("fake VPP crashes: cnat_translation_update without paths")
            self.crashes += 1
            self.stop()
            self.start()
            raise _Crashed()
        vip = t.vip.sw_if_index if t.vip.sw_if_index != ALL_ONES else t.vip.addr
        key = (vip, t.vip.port, int(t.ip_proto))
        tid = st.translation_keys.get(key)
        if tid is None:
            tid = st.translation_pool.get()
            st.translation_keys[key] = tid
        tr = _plain("vl_api_cnat_translation_t", t)
        tr["id"] = tid
        st.translations[tid] = tr
        return {"id": tid}

    def _h_cnat_translation_del(self, m: Any, s: _Session) -> dict:
        st = self.state
        if st.translations.pop(m.id, None) is None:
            raise Retval("NO_SUCH_ENTRY")
        st.translation_keys = {k: v for k, v in st.translation_keys.items() if v != m.id}
        st.translation_pool.put(m.id)
        return {}

    def _h_cnat_translation_dump(self, m: Any, s: _Session) -> list[dict]:
        return [{"translation": t} for _, t in sorted(self.state.translations.items())]

    def _h_cnat_session_dump(self, m: Any, s: _Session) -> list[dict]:
        return []        # no traffic, no sessions

    def _h_cnat_session_purge(self, m: Any, s: _Session) -> dict:
        return {}

    def _h_cnat_set_snat_addresses_v2(self, m: Any, s: _Session) -> dict:
        if m.sw_if_index != ALL_ONES and m.sw_if_index != 0:
            self._iface(m.sw_if_index)
        self.state.snat = {"snat_ip4": m.snat_ip4, "snat_ip6": m.snat_ip6, "sw_if_index": m.sw_if_index,
                           "fwd_fib_index": m.fwd_fib_index, "ret_fib_index": m.ret_fib_index,
                           "flags": int(m.flags)}
        return {}

    def _h_cnat_get_snat_addresses(self, m: Any, s: _Session) -> dict:
        sn = self.state.snat
        if not sn:
            raise Retval("FEATURE_DISABLED")        # no default SNAT entry yet
        return {"snat_ip4": sn.get("snat_ip4", "0.0.0.0"), "snat_ip6": sn.get("snat_ip6", "::"),
                "sw_if_index": sn.get("sw_if_index", ALL_ONES)}

    def _h_cnat_snat_policy_add_del_exclude_pfx(self, m: Any, s: _Session) -> dict:
        # cnat_snat_policy.c: deleting what is not there is a no-op
        (self.state.snat_exclude.add if m.is_add else self.state.snat_exclude.discard)(m.prefix)
        return {}

    def _default_snat_entry(self) -> None:
        """cnat_snat_policy_entry_get_default(): the entry of FIB 0, or FEATURE_DISABLED."""
        if not self.state.snat or self.state.snat.get("fwd_fib_index", 0) != 0:
            raise Retval("FEATURE_DISABLED")

    def _h_cnat_set_snat_policy(self, m: Any, s: _Session) -> dict:
        self._default_snat_entry()
        self.state.snat_policy = int(m.policy)
        return {}

    def _h_cnat_snat_policy_add_del_if(self, m: Any, s: _Session) -> dict:
        self._iface(m.sw_if_index)
        if int(m.table) > 3:
            raise Retval("INVALID_VALUE")
        self._default_snat_entry()           # interface roles live in the default SNAT entry
        key = (m.sw_if_index, int(m.table))
        (self.state.snat_interfaces.add if m.is_add else self.state.snat_interfaces.discard)(key)
        return {}

    def _h_feature_cnat_enable_disable(self, m: Any, s: _Session) -> dict:
        self._iface(m.sw_if_index)
        (self.state.cnat_features.add if m.enable_disable else self.state.cnat_features.discard)(m.sw_if_index)
        return {}

    # ============================================================== nat44
    # plugins/nat/nat44-ed/nat44_ed.c: UNSUPPORTED while disabled, VALUE_EXIST
    # for duplicates, NO_SUCH_ENTRY for unknown deletes.

    def _nat44_on(self) -> None:
        if not self.state.nat44_enabled:
            raise Retval("UNSUPPORTED")

    def _h_nat44_ed_plugin_enable_disable(self, m: Any, s: _Session) -> dict:
        st = self.state
        if m.enable == st.nat44_enabled:
            raise Retval("FEATURE_ALREADY_ENABLED" if m.enable else "FEATURE_ALREADY_DISABLED")
        st.nat44_enabled = bool(m.enable)
        if not m.enable:
            st.nat44_interfaces.clear()
            st.nat44_addresses.clear()
            st.nat44_static.clear()
        return {}

    def _h_nat44_interface_add_del_feature(self, m: Any, s: _Session) -> dict:
        self._iface(m.sw_if_index)
        self._nat44_on()
        role = 32 if m.flags & 32 else 16       # NAT_IS_INSIDE, else outside
        cur = self.state.nat44_interfaces.get(m.sw_if_index, 0)
        if m.is_add:                            # adding a role it has is a no-op
            self.state.nat44_interfaces[m.sw_if_index] = cur | role
        else:
            if not cur & role:
                raise Retval("NO_SUCH_ENTRY")
            if cur & ~role:
                self.state.nat44_interfaces[m.sw_if_index] = cur & ~role
            else:
                del self.state.nat44_interfaces[m.sw_if_index]
        return {}

    def _h_nat44_interface_dump(self, m: Any, s: _Session) -> list[dict]:
        return [{"sw_if_index": i, "flags": f} for i, f in sorted(self.state.nat44_interfaces.items())]

    def _h_nat44_add_del_address_range(self, m: Any, s: _Session) -> dict:
        self._nat44_on()
        first, last = int(m.first_ip_address), int(m.last_ip_address)
        if last < first:
            raise Retval("INVALID_VALUE")
        addrs = [ipaddress.IPv4Address(a) for a in range(first, last + 1)]
        have = self.state.nat44_addresses
        if m.is_add:
            if any(a in have for a in addrs):
                raise Retval("VALUE_EXIST")
            for a in addrs:
                have[a] = (m.vrf_id, int(m.flags))
        else:
            if any(a not in have for a in addrs):
                raise Retval("NO_SUCH_ENTRY")
            for a in addrs:
                del have[a]
        return {}

    def _h_nat44_address_dump(self, m: Any, s: _Session) -> list[dict]:
        return [{"ip_address": a, "vrf_id": v, "flags": f} for a, (v, f) in sorted(self.state.nat44_addresses.items())]

    def _h_nat44_add_del_static_mapping_v2(self, m: Any, s: _Session) -> dict:
        self._nat44_on()
        key = (m.external_ip_address, m.external_port, m.protocol)
        if m.is_add:
            if key in self.state.nat44_static:
                raise Retval("VALUE_EXIST")
            self.state.nat44_static[key] = {
                "flags": int(m.flags), "local_ip_address": m.local_ip_address,
                "external_ip_address": m.external_ip_address, "protocol": m.protocol,
                "local_port": m.local_port, "external_port": m.external_port,
                "external_sw_if_index": m.external_sw_if_index, "vrf_id": m.vrf_id, "tag": m.tag}
        elif self.state.nat44_static.pop(key, None) is None:
            raise Retval("NO_SUCH_ENTRY")
        return {}

    def _h_nat44_static_mapping_dump(self, m: Any, s: _Session) -> list[dict]:
        return list(self.state.nat44_static.values())

    # ======================================================== dev / vxlan

    def _h_dev_attach(self, m: Any, s: _Session) -> dict:
        st = self.state
        if m.device_id not in self.pci_devices:
            return {"retval": ERRNO["INVALID_VALUE"], "error_string": f"device {m.device_id} not found"}
        if any(d == m.device_id for d, _ in st.devices.values()):
            return {"retval": ERRNO["ENTRY_ALREADY_EXISTS"], "error_string": "device already attached"}
        idx = st.dev_pool.get()
        st.devices[idx] = (m.device_id, m.driver_name)
        return {"dev_index": idx}

    def _h_dev_create_port_if(self, m: Any, s: _Session) -> dict:
        if m.dev_index not in self.state.devices:
            return {"retval": ERRNO["INVALID_VALUE"], "error_string": "unknown device"}
        name = m.intf_name or f"eth{m.dev_index}"
        create = {k: v for k, v in m._asdict().items() if k not in ("_vl_msg_id", "client_index", "context")}
        iface = self._new_iface(name, "dev", self.state.devices[m.dev_index][1],
                                bytes([0x02, 0xFE, 0xDE, 0, 0, m.dev_index & 0xFF]), create=create,
                                num_rx_queues=max(1, m.num_rx_queues))
        self.state.dev_ports[iface.sw_if_index] = m.dev_index
        return {"sw_if_index": iface.sw_if_index}

    def _h_dev_remove_port_if(self, m: Any, s: _Session) -> dict:
        if m.sw_if_index not in self.state.dev_ports:
            return {"retval": ERRNO["INVALID_SW_IF_INDEX"], "error_string": "not a dev port"}
        del self.state.dev_ports[m.sw_if_index]
        self._delete_iface(self.state.interfaces[m.sw_if_index])
        return {}

    def _h_dev_detach(self, m: Any, s: _Session) -> dict:
        st = self.state
        if m.dev_index not in st.devices:
            return {"retval": ERRNO["INVALID_VALUE"], "error_string": "unknown device"}
        for idx in [i for i, d in st.dev_ports.items() if d == m.dev_index]:
            del st.dev_ports[idx]
            self._delete_iface(st.interfaces[idx])
        del st.devices[m.dev_index]
        st.dev_pool.put(m.dev_index)
        return {}

    def _h_vxlan_add_del_tunnel_v3(self, m: Any, s: _Session) -> dict:
        # plugins/vxlan/vxlan.c: key (src, dst, vni, encap vrf); TUNNEL_EXIST / NO_SUCH_ENTRY
        st = self.state
        if m.src_address.version != m.dst_address.version or m.src_address == m.dst_address:
            raise Retval("SAME_SRC_DST" if m.src_address == m.dst_address else "INVALID_VALUE")
        key = (m.src_address, m.dst_address, m.vni, m.encap_vrf_id)
        found = next((i for i, t in st.vxlan.items() if t["key"] == key), None)
        if not m.is_add:
            if found is None:
                raise Retval("NO_SUCH_ENTRY")
            st.vxlan_instances.discard(st.vxlan.pop(found)["instance"])
            self._delete_iface(st.interfaces[found])
            return {"sw_if_index": found}
        if found is not None:
            raise Retval("TUNNEL_EXIST")
        decap = m.decap_next_index if m.decap_next_index != ALL_ONES else 1      # ~0: l2-input
        if decap >= len(st.node_nexts["vxlan6-input" if m.dst_address.version == 6 else "vxlan4-input"]):
            raise Retval("INVALID_DECAP_NEXT")
        if m.instance != ALL_ONES and m.instance in st.vxlan_instances:
            raise Retval("INSTANCE_IN_USE")
        inst = m.instance if m.instance != ALL_ONES else next(
            i for i in itertools.count() if i not in st.vxlan_instances)
        st.vxlan_instances.add(inst)
        iface = self._new_iface(f"vxlan_tunnel{inst}", "vxlan", "VXLAN",
                                bytes([0x02, 0xFE, 0x58, 0, 0, inst & 0xFF]), create={"l3": bool(m.is_l3)})
        st.vxlan[iface.sw_if_index] = {
            "key": key, "instance": inst, "src_address": m.src_address, "dst_address": m.dst_address,
            "src_port": m.src_port or 4789, "dst_port": m.dst_port or 4789,
            "mcast_sw_if_index": m.mcast_sw_if_index, "encap_vrf_id": m.encap_vrf_id,
            "decap_next_index": decap, "vni": m.vni}
        return {"sw_if_index": iface.sw_if_index}

    def _h_vxlan_tunnel_v2_dump(self, m: Any, s: _Session) -> list[dict]:
        return [{"sw_if_index": i, **{k: v for k, v in t.items() if k != "key"}}
                for i, t in sorted(self.state.vxlan.items()) if m.sw_if_index in (ALL_ONES, i)]

    def _h_sw_interface_set_vxlan_bypass(self, m: Any, s: _Session) -> dict:
        self._iface(m.sw_if_index)
        key = (m.sw_if_index, 6 if m.is_ipv6 else 4)
        (self.state.vxlan_bypass.add if m.enable else self.state.vxlan_bypass.discard)(key)
        return {}


def _path_key(path: Mapping[str, Any]) -> bytes:
    """Two paths are the same when they encode the same (str vs bytes vs
    ipaddress forms of one next hop do)."""
    from vpp_papi import vpp_serializer as vs
    return bytes(vs.vpp_get_type("vl_api_fib_path_t").pack(dict(path)))


def _plain(type_name: str, value: Any) -> Any:
    """A decoded value back into a form vpp_papi packs to the same bytes:
    what VPP stored is what its dumps send back."""
    t = TYPES.get(type_name)
    if t is None:
        return value
    if t.kind in ("enum", "enumflag"):
        return int(value)
    if not hasattr(value, "_fields"):        # vpp_papi already converted it (IPv4Network, ...)
        return value
    if t.kind == "alias":
        return _plain(t.alias_of or "", value)
    if t.kind == "union":
        arm = _widest_arm(t.name)
        f = next(f for f in t.fields if f.name == arm)
        return {arm: _plain_field(f, getattr(value, arm))}
    return {f.name: _plain_field(f, getattr(value, f.name)) for f in t.fields}


def _plain_field(f: Any, value: Any) -> Any:
    if f.length is not None and f.type not in ("u8", "string"):
        return [_plain(f.type, v) for v in value]
    return _plain(f.type, value)


def _widest_arm(union: str) -> str:
    """The arm that spans the whole union: re-packing it reproduces the bytes
    whichever arm the sender used."""
    from vpp_papi import vpp_serializer as vs
    packers = vs.vpp_get_type(union).packers
    return max(packers, key=lambda k: packers[k].size)


# --------------------------------------------------------- the client side

_FRAME = struct.Struct(">QII")      # vpp_papi's socket framing: (0, length, 0)


class _CheckedMessage:
    """The message object a client hands out: packing validates the
    arguments against the agent's declared table first, as the fake's
    boundary check; everything else is vpp_papi's own message."""

    def __init__(self, name: str, papi_msg: Any) -> None:
        self.name = name
        self.crc = papi_msg.crc
        self._msg = papi_msg

    def pack(self, data: Mapping[str, Any], kwargs: Any = None) -> bytes:
        header = {k: data[k] for k in ("_vl_msg_id", "client_index", "context") if k in data}
        if MESSAGES[self.name].is_request:
            body = check_args(self.name, {k: v for k, v in data.items() if k not in header})
        else:
            body = check_message(self.name, {k: v for k, v in data.items() if k not in header})
        return self._msg.pack({**body, **header})

    def unpack(self, data: bytes, offset: int = 0, result: Any = None, ntc: bool = False) -> Any:
        return self._msg.unpack(data, offset, result, ntc)


class _Liveness:
    """Stands in for vpp_papi's reader thread: dead once the socket broke."""

    def __init__(self, session: _Session | None) -> None:
        self._session = session

    def is_alive(self) -> bool:
        return self._session is not None and self._session.alive


class _FakeSocket:
    """The client's end of the API socket: frames written here reach VPP, and
    ``recv`` returns what VPP sent as a byte stream (with a socket's timeout
    semantics: ``TimeoutError``, ``BlockingIOError`` at timeout 0, b"" once
    VPP has closed it)."""

    def __init__(self, vpp: FakeVpp, session: _Session, timeout: float | None = None) -> None:
        self._vpp = vpp
        self._session = session
        self._timeout = timeout
        self._pending = b""
        self._at = 0                  # how much of _pending was returned
        self._eof = False

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def recv(self, bufsize: int) -> bytes:
        if self._at == len(self._pending) and not self._eof:
            q = self._session.replies
            try:
                if self._timeout == 0:
                    frame = q.get_nowait()
                else:
                    frame = q.get(timeout=self._timeout)
            except queue.Empty:
                if self._timeout == 0:
                    raise BlockingIOError(11, "Resource temporarily unavailable") from None
                raise TimeoutError("timed out") from None
            parts, size = [], 0
            while frame is not None:          # whatever else is there, as one stream read would
                parts.append(frame)
                size += len(frame)
                if size >= bufsize:
                    break
                try:
                    frame = q.get_nowait()
                except queue.Empty:
                    break
            if frame is None:
                self._eof = True
            self._pending, self._at = b"".join(parts), 0
        out = self._pending[self._at:self._at + bufsize]
        self._at += len(out)
        return out

    def sendall(self, data: bytes) -> None:
        if not self._session.alive:
            raise BrokenPipeError(32, "Broken pipe")
        view = memoryview(data)
        while view:
            _, length, _ = _FRAME.unpack(view[:16])
            self._vpp._submit(self._session, bytes(view[16:16 + length]))
            view = view[16 + length:]


class _FakeTransport:
    """The bits of ``vpp_papi.vpp_transport_socket.VppTransport`` a caller sees."""

    def __init__(self) -> None:
        self.message_table: dict[str, int] = {}
        self.socket_index = 0
        self.connected = False
        self.socket: _FakeSocket | None = None
        self.message_thread = _Liveness(None)

    def get_msg_index(self, name: str) -> int:
        return self.message_table.get(name, 0)

    def write(self, buf: bytes) -> None:
        if self.socket is None:
            raise OSError(1, "Not connected")
        self.socket.sendall(_FRAME.pack(0, len(buf), 0) + buf)


class _Api:
    """``client.api.<message>(**kw)``: vpp_papi's synchronous call style."""

    def __init__(self, client: "FakeVppApiClient", names: Iterable[str]) -> None:
        for name in names:
            setattr(self, name, self._function(client, name))

    @staticmethod
    def _function(client: "FakeVppApiClient", name: str) -> Callable[..., Any]:
        def call(**kwargs: Any) -> Any:
            return client._sync_call(name, kwargs)
        call.__name__ = name
        return call


class FakeVppApiClient:
    """Looks like ``vpp_papi.VPPApiClient`` (synchronous mode, socket
    transport) to its user."""

    def __init__(self, vpp: FakeVpp, *, server_address: str = "/run/vpp/api.sock",
                 bootstrapapi: bool = True, read_timeout: float = 5, **_: Any) -> None:
        self.vpp = vpp
        self.server_address = server_address
        self.read_timeout = read_timeout
        self.messages: dict[str, _CheckedMessage] = {}
        self.transport = _FakeTransport()
        self.event_callback: Callable[[str, Any], None] | None = None
        self._session: _Session | None = None
        self._contexts = itertools.count(1)
        self._api: _Api | None = None

    @property
    def api(self) -> _Api:
        if self._api is None:
            raise RuntimeError("Not connected, api definitions not available")
        return self._api

    def connect(self, name: str, chroot_prefix: str | None = None, do_async: bool = False,
                rx_qlen: int = 32) -> int:
        if do_async:
            raise NotImplementedError("the fake serves vpp_papi's synchronous mode only")
        if self._session is not None:
            raise OSError(1, "PAPI socket transport connect: Need to disconnect first.")
        self._session = self.vpp._attach(self)
        c = codec()
        table = dict(self.vpp.message_table)
        t = self.transport
        t.message_table = table
        t.socket_index = self._session.client_index
        t.connected = True
        t.socket = _FakeSocket(self.vpp, self._session, self.read_timeout)
        t.message_thread = _Liveness(self._session)
        names = [self.vpp._index_to_name[i] for i in table.values()]
        self.messages = {n: _CheckedMessage(n, c[n]) for n in names}
        self._api = _Api(self, [n for n in names if MESSAGES[n].is_request])
        return 0

    def disconnect(self) -> int:
        if self._session is not None:
            self.vpp._detach(self._session)
        self._session = None
        t = self.transport
        t.connected, t.socket, t.message_table = False, None, {}
        return 0

    def register_event_callback(self, callback: Callable[[str, Any], None] | None) -> None:
        self.event_callback = callback

    def _deliver_event(self, ev: Any) -> None:
        if self.event_callback is not None:
            self.event_callback(type(ev).__name__, ev)

    def get_context(self) -> int:
        return next(self._contexts)

    def dump_message_table(self) -> dict[str, int]:
        return dict(self.transport.message_table)

    def validate_message_table(self, namecrctable: Iterable[str]) -> list[str]:
        return [n for n in namecrctable if self.transport.get_msg_index(n) <= 0]

    def read_blocking(self, no_type_conversion: bool = False, timeout: float | None = None) -> Any:
        """The next message from the socket, decoded (None: nothing in time, or closed)."""
        sock = self.transport.socket
        if self._session is None or sock is None:
            return None
        sock.settimeout(self.read_timeout if timeout is None else timeout)
        try:
            header = self._read_exactly(sock, _FRAME.size)
            body = self._read_exactly(sock, _FRAME.unpack(header)[1])
        except (TimeoutError, EOFError):
            return None
        return self.messages[self.vpp._index_to_name[int.from_bytes(body[:2], "big")]].unpack(body)[0]

    @staticmethod
    def _read_exactly(sock: _FakeSocket, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = sock.recv(n - len(out))
            if not chunk:
                raise EOFError("VPP closed the API socket")
            out += chunk
        return out

    def _send(self, name: str, kwargs: Mapping[str, Any], ctx: int) -> None:
        msg = self.messages[name]
        body = msg.pack({**kwargs, "_vl_msg_id": self.transport.get_msg_index(MESSAGES[name].name_crc),
                         "client_index": self.transport.socket_index, "context": ctx})
        self.transport.write(body)

    def _sync_call(self, name: str, kwargs: dict[str, Any]) -> Any:
        msg = MESSAGES[name]
        ctx = self.get_context()
        self._send(name, kwargs, ctx)
        if msg.ends_with_ping:
            self._send("control_ping", {}, ctx)
        details: list[Any] = []
        while True:
            r = self.read_blocking()
            if r is None:
                raise OSError(2, "VPP API client: read failed")
            if not getattr(r, "context", 0):
                self._deliver_event(r)
                continue
            rname = type(r).__name__
            if msg.ends_with_ping and rname == "control_ping_reply":
                return details
            if msg.is_dump and rname == msg.stream:
                details.append(r)
                continue
            return r
