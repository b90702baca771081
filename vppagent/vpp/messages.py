"""The declared table of VPP messages the agent uses, and argument checking.

One table serves three purposes: the connection checks it against the running
VPP at connect time (names and CRCs), every call's arguments are checked
against it before anything is sent, and the fake VPP validates what it
receives against it.  The data itself is generated into ``table_data.py`` by
``tools/gen_vpp_table.py``; this module gives it types and behaviour.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from vppagent.vpp import table_data
from vppagent.vpp.errors import VppArgumentError

HEADER_FIELDS = frozenset({"_vl_msg_id", "client_index", "context"})

# Module -> plugin shared object (VPP's plugins/<name>_plugin.so).  Modules not
# listed are built into vnet/vlib and always present.
PLUGIN_OF_MODULE: Mapping[str, str] = MappingProxyType({
    "acl": "acl", "af_packet": "af_packet", "cnat": "cnat", "memif": "memif",
    "nat44_ed": "nat", "npol": "npol", "tapv2": "tap", "vxlan": "vxlan",
})

# Plugins a node may run without: the dataplane asks ``has()`` and falls back
# (npol -> ACL, no memif pods, no NAT44, no vxlan, no SR-IOV through dev).
DEFAULT_OPTIONAL_MODULES: frozenset[str] = frozenset(
    {"npol", "acl", "memif", "nat44_ed", "vxlan", "dev", "ip6_nd"})

# Top-level fields that may be left out although the schema gives no default:
# VPP reads them only when a sibling flag says so, or zero means "unset".
_OPTIONAL_FIELDS: Mapping[str, frozenset[str]] = MappingProxyType({
    "tap_create_v3": frozenset({"mac_address", "host_mtu_size", "host_mac_addr", "host_ip4_prefix",
                                "host_ip6_prefix", "host_ip4_gw", "host_ip6_gw"}),
    "af_packet_create_v3": frozenset({"hw_addr", "rx_frame_size", "tx_frame_size",
                                      "rx_frames_per_block", "tx_frames_per_block"}),
    "create_loopback_instance": frozenset({"mac_address", "user_instance"}),
    "memif_create_v2": frozenset({"hw_addr", "buffer_size", "ring_size", "no_zero_copy",
                                  "use_dma", "rx_queues", "tx_queues"}),
    "sw_interface_set_rx_mode": frozenset({"queue_id"}),
    "sw_interface_ip6nd_ra_config": frozenset({
        "managed", "other", "ll_option", "send_unicast", "cease", "is_no", "default_router",
        "max_interval", "min_interval", "lifetime", "initial_count", "initial_interval"}),
    "nat44_ed_plugin_enable_disable": frozenset({"inside_vrf", "outside_vrf", "sessions",
                                                 "session_memory"}),
    "nat44_add_del_static_mapping_v2": frozenset({"pool_ip_address", "local_port",
                                                  "external_port", "external_sw_if_index",
                                                  "match_pool", "protocol"}),
    "cnat_set_snat_addresses_v2": frozenset({"fwd_fib_index", "ret_fib_index", "snat_ip6",
                                             "snat_ip4", "sw_if_index"}),
    "vxlan_add_del_tunnel_v3": frozenset({"src_port", "dst_port", "mcast_sw_if_index",
                                          "encap_vrf_id", "decap_next_index"}),
    "dev_create_port_if": frozenset({"num_rx_queues", "num_tx_queues", "rx_queue_size",
                                     "tx_queue_size", "port_id", "intf_name"}),
    "want_interface_events": frozenset({"pid"}),
    "sw_interface_dump": frozenset({"name_filter_valid"}),
    "ip_route_v2_dump": frozenset({"src"}),
    "ip_neighbor_dump": frozenset(),
    "npol_configure_policies": frozenset({"invert_rx_tx"}),
    "sw_interface_add_del_address": frozenset({"del_all"}),
})

# ...and fields the rules below would leave optional but that are the point
# of the message (``sw_interface_set_flags`` without flags sets admin down).
_ALSO_REQUIRED: Mapping[str, frozenset[str]] = MappingProxyType({
    "sw_interface_set_flags": frozenset({"flags"}),
    "sw_interface_set_mtu": frozenset({"mtu"}),
    "acl_interface_set_acl_list": frozenset({"acls"}),
    "sw_interface_tag_add_del": frozenset({"tag"}),
    "memif_socket_filename_add_del_v2": frozenset({"socket_filename"}),
    "af_packet_create_v3": frozenset({"host_if_name"}),
    "af_packet_delete": frozenset({"host_if_name"}),
})

_INT_RANGES: Mapping[str, tuple[int, int]] = MappingProxyType({
    "u8": (0, 0xFF), "u16": (0, 0xFFFF), "u32": (0, 0xFFFFFFFF), "u64": (0, 2**64 - 1),
    "i8": (-0x80, 0x7F), "i16": (-0x8000, 0x7FFF), "i32": (-2**31, 2**31 - 1),
    "i64": (-2**63, 2**63 - 1),
})
BASE_TYPES = frozenset(_INT_RANGES) | {"bool", "f64", "string"}


@dataclass(frozen=True)
class FieldDef:
    """One field: ``length`` None is a scalar, 0 a variable array (sized by
    ``length_field`` when set), N a fixed array of N."""

    type: str
    name: str
    length: int | None = None
    length_field: str | None = None
    options: Mapping[str, Any] | None = None

    @property
    def default(self) -> Any:
        return (self.options or {}).get("default")

    @property
    def has_default(self) -> bool:
        return "default" in (self.options or {})

    def as_tuple(self) -> tuple[str, str, int | None]:
        return (self.type, self.name, self.length)


@dataclass(frozen=True)
class TypeDef:
    """A typedef, union, enum, enumflag or alias used by the declared messages."""

    name: str
    kind: str                                   # type | union | enum | enumflag | alias
    module: str
    fields: tuple[FieldDef, ...] = ()
    values: tuple[tuple[str, int], ...] = ()    # enums
    size: str = "u32"                           # enums: the wire integer
    alias_of: str | None = None                 # aliases
    alias_length: int | None = None

    @property
    def is_flags(self) -> bool:
        """Enums whose members are bits and are sent OR-ed together."""
        return self.kind == "enumflag" or "flag" in self.name or "flow_hash" in self.name

    @property
    def discriminator(self) -> tuple[str, str] | None:
        """(enum field, union field) pairs such as address.af / address.un."""
        for f in self.fields:
            if f.options and "discriminator" in f.options:
                return (f.options["discriminator"], f.name)
        return None


@dataclass(frozen=True)
class MessageDef:
    """A message: its wire fields (header included), CRC, reply and origin."""

    name: str
    crc: str
    module: str
    fields: tuple[FieldDef, ...]
    reply: str | None = None         # requests: the reply (old-style dumps: the details)
    stream: str | None = None        # dumps: the details message
    events: tuple[str, ...] = ()
    options: Mapping[str, Any] | None = None

    @property
    def plugin(self) -> str | None:
        return PLUGIN_OF_MODULE.get(self.module)

    @property
    def name_crc(self) -> str:
        """The key VPP's message table uses: ``name_crc-without-0x``."""
        return f"{self.name}_{self.crc[2:]}"

    @property
    def is_request(self) -> bool:
        return self.reply is not None

    @property
    def is_dump(self) -> bool:
        return self.stream is not None

    @property
    def ends_with_ping(self) -> bool:
        """Old-style dumps: VPP sends details only; a control_ping ends them."""
        return self.stream is not None and self.stream == self.reply

    @property
    def args(self) -> tuple[FieldDef, ...]:
        """The fields a caller may pass (the header is vpp_papi's business)."""
        header = HEADER_FIELDS if self.is_request else {"_vl_msg_id", "context"}
        return tuple(f for f in self.fields if f.name not in header)

    @property
    def required(self) -> frozenset[str]:
        return _REQUIRED[self.name]

    def field(self, name: str) -> FieldDef:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name}")


def _load_types() -> dict[str, TypeDef]:
    out: dict[str, TypeDef] = {}
    for name, t in table_data.TYPES.items():
        out[name] = TypeDef(
            name=name, kind=t["kind"], module=t["module"],
            fields=tuple(FieldDef(*f) for f in t.get("fields", ())),
            values=tuple((n, v) for n, v in t.get("values", ())),
            size=t.get("size", "u32"), alias_of=t.get("type"), alias_length=t.get("length"))
    return out


def _load_messages() -> dict[str, MessageDef]:
    return {
        name: MessageDef(name=name, crc=m["crc"], module=m["module"],
                         fields=tuple(FieldDef(*f) for f in m["fields"]),
                         reply=m["reply"], stream=m["stream"], events=tuple(m["events"]),
                         options=m.get("options") or None)
        for name, m in table_data.MESSAGES.items()
    }


TYPES: Mapping[str, TypeDef] = MappingProxyType(_load_types())
MESSAGES: Mapping[str, MessageDef] = MappingProxyType(_load_messages())
ABSENT: tuple[str, ...] = tuple(table_data.ABSENT)


def _required(msg: MessageDef) -> frozenset[str]:
    """Fields a caller must pass: those whose zero-fill is a silent bug (an
    ``is_add`` left out deletes).  Left out: defaults, length fields (filled
    in), arrays and strings (empty is a value), flag sets (0 is none), fields
    guarded by a ``*_set``/``*_valid`` flag, and the per-message list above."""
    if not msg.is_request:
        return frozenset()
    length_fields = {f.length_field for f in msg.args if f.length_field}
    names = {f.name for f in msg.args}
    out = set(_ALSO_REQUIRED.get(msg.name, ()))
    for f in msg.args:
        t = TYPES.get(f.type)
        if f.name in out:
            continue
        if (f.has_default or f.name in length_fields or f.length is not None
                or f.type == "string" or (t is not None and t.kind in ("enum", "enumflag") and t.is_flags)
                or f.name.endswith(("_set", "_valid"))
                or f"{f.name}_set" in names or f"{f.name}_valid" in names
                or f.name in _OPTIONAL_FIELDS.get(msg.name, ())):
            continue
        out.add(f.name)
    return frozenset(out)


_REQUIRED: Mapping[str, frozenset[str]] = MappingProxyType(
    {name: _required(m) for name, m in MESSAGES.items()})


def requests() -> list[MessageDef]:
    """The messages the agent sends (each brings its reply/details/events)."""
    return [m for m in MESSAGES.values() if m.is_request]


def family(name: str) -> list[str]:
    """A request and the messages VPP answers it with."""
    m = MESSAGES[name]
    return [name] + [n for n in dict.fromkeys([m.reply, m.stream, *m.events]) if n]


# ---------------------------------------------------------------- checking

def check_args(name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``args`` for message ``name`` against the table; return them with
    variable-array length fields filled in.  Raises ``VppArgumentError``
    naming the message and the field path."""
    msg = MESSAGES.get(name)
    if msg is None or not msg.is_request:
        raise VppArgumentError(name, "", "not a request in the declared message table")
    out = _check_struct(name, "", msg.args, args, top=True)
    missing = sorted(msg.required - set(args))
    if missing:
        raise VppArgumentError(name, missing[0], "required field missing"
                               + (f" (also {', '.join(missing[1:])})" if missing[1:] else ""))
    return out


def check_message(name: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """Like ``check_args`` for any message (replies, details, events) and
    without required fields: what the fake uses to build VPP's answers."""
    msg = MESSAGES.get(name)
    if msg is None:
        raise VppArgumentError(name, "", "not in the declared message table")
    return _check_struct(name, "", msg.args, data, top=True)


def _check_struct(msg: str, path: str, fields: Iterable[FieldDef], data: Any,
                  top: bool = False) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise VppArgumentError(msg, path.rstrip("."), f"expected a dict, got {type(data).__name__}")
    fields = tuple(fields)
    by_name = {f.name: f for f in fields}
    unknown = [k for k in data if k not in by_name]
    if unknown:
        raise VppArgumentError(msg, path + unknown[0], "unknown field"
                               + ("" if top else f" (fields: {', '.join(by_name)})"))
    out = dict(data)
    for f in fields:
        if f.name in data:
            out[f.name] = _check_field(msg, path + f.name, f, data[f.name])
        elif f.name not in HEADER_FIELDS and _needs_zero(f):
            out[f.name] = _zero(f)
    for f in fields:
        if f.length == 0 and f.length_field and f.name not in data and data.get(f.length_field):
            raise VppArgumentError(msg, path + f.length_field,
                                   f"is {data[f.length_field]} but {f.name} is not given")
        if f.name not in data:
            continue
        if f.length == 0 and f.length_field:
            n = len(data[f.name]) if data[f.name] is not None else 0
            given = data.get(f.length_field)
            if given is None:
                lf = by_name[f.length_field]
                lo, hi = _INT_RANGES[lf.type]
                if n > hi:
                    raise VppArgumentError(msg, path + f.name, f"{n} elements exceed {f.length_field} ({lf.type})")
                out[f.length_field] = n
            elif given != n:
                raise VppArgumentError(msg, path + f.length_field,
                                       f"is {given} but {f.name} has {n} elements")
    return out


def _needs_zero(f: FieldDef) -> bool:
    """vpp_papi zero-fills a missing field, except fixed arrays of non-u8
    elements (``fib_path.label_stack``), anywhere below it too."""
    if f.length:
        return f.type not in ("u8", "string")
    if f.length is not None:
        return False
    t = TYPES.get(f.type)
    while t is not None and t.kind == "alias" and not t.alias_length:
        t = TYPES.get(t.alias_of or "")
    return t is not None and t.kind == "type" and any(_needs_zero(x) for x in t.fields)


def _zero(f: FieldDef) -> Any:
    """The explicit zero of a field vpp_papi cannot leave out."""
    if f.length:
        return [_zero(FieldDef(f.type, f.name)) for _ in range(f.length)]
    t = TYPES.get(f.type)
    while t is not None and t.kind == "alias" and not t.alias_length:
        t = TYPES.get(t.alias_of or "")
    if t is None or t.kind in ("enum", "enumflag", "alias"):
        return 0
    if t.kind == "union":
        return {}
    return {x.name: _zero(x) for x in t.fields if _needs_zero(x)}


def _check_field(msg: str, path: str, f: FieldDef, value: Any) -> Any:
    if f.type == "string":
        return _check_string(msg, path, f, value)
    if f.length is None:
        return _check_value(msg, path, f.type, value)
    if f.type == "u8" and isinstance(value, (bytes, bytearray)):
        if f.length and len(value) > f.length:
            raise VppArgumentError(msg, path, f"{len(value)} bytes, at most {f.length}")
        return value
    if not isinstance(value, (list, tuple)):
        raise VppArgumentError(msg, path, f"expected a list, got {type(value).__name__}")
    if f.length and len(value) != f.length:
        raise VppArgumentError(msg, path, f"expected exactly {f.length} elements, got {len(value)}")
    return [_check_value(msg, f"{path}[{i}]", f.type, v) for i, v in enumerate(value)]


def _check_string(msg: str, path: str, f: FieldDef, value: Any) -> str:
    if not isinstance(value, str):
        raise VppArgumentError(msg, path, f"expected str, got {type(value).__name__}")
    if not value.isascii():
        raise VppArgumentError(msg, path, "must be ASCII")
    limit = f.length or (f.options or {}).get("limit")
    if limit and len(value) > limit - 1:
        raise VppArgumentError(msg, path, f"{len(value)} characters, at most {limit - 1}")
    return value


def _check_value(msg: str, path: str, type_name: str, value: Any) -> Any:
    if type_name in _INT_RANGES:
        if not isinstance(value, int):
            raise VppArgumentError(msg, path, f"expected int ({type_name}), got {type(value).__name__}")
        lo, hi = _INT_RANGES[type_name]
        if not lo <= value <= hi:
            raise VppArgumentError(msg, path, f"{value} out of range for {type_name}")
        return value
    if type_name == "bool":
        if not isinstance(value, int) or value not in (0, 1):
            raise VppArgumentError(msg, path, f"expected bool, got {value!r}")
        return value
    if type_name == "f64":
        if not isinstance(value, (int, float)):
            raise VppArgumentError(msg, path, f"expected float, got {type(value).__name__}")
        return value
    t = TYPES.get(type_name)
    if t is None:
        raise VppArgumentError(msg, path, f"type {type_name} is not in the declared table")
    if t.kind in ("enum", "enumflag"):
        return _check_enum(msg, path, t, value)
    converted = _check_conversion(msg, path, type_name, value)
    if converted:
        return value
    if t.kind == "alias":
        if t.alias_length:
            raise VppArgumentError(msg, path, f"expected {_describe(type_name)}, got {value!r}")
        return _check_value(msg, path, t.alias_of or "", value)
    if t.kind == "union":
        return _check_union(msg, path, t, value)
    out = _check_struct(msg, path + ".", t.fields, value)
    disc = t.discriminator
    if disc and disc[1] in out:   # a missing tag is zero-filled, so check it as 0
        _check_discriminated(msg, path, t, out.get(disc[0], 0), out[disc[1]], disc[1])
    return out


def _check_enum(msg: str, path: str, t: TypeDef, value: Any) -> int:
    names = ", ".join(n for n, _ in t.values)
    if not isinstance(value, int) or isinstance(value, bool):
        raise VppArgumentError(msg, path, f"expected int of {t.name} ({names}), got {value!r}")
    lo, hi = _INT_RANGES[t.size]
    if not lo <= value <= hi:
        raise VppArgumentError(msg, path, f"{value} out of range for {t.name} ({t.size})")
    valid = {v for _, v in t.values}
    if t.is_flags:
        mask = 0
        for v in valid:
            mask |= v
        if value & ~mask:
            raise VppArgumentError(msg, path, f"{value:#x} has bits outside {t.name} ({names})")
    elif value not in valid:
        raise VppArgumentError(msg, path, f"{value} is not a {t.name} ({names})")
    return value


def _check_union(msg: str, path: str, t: TypeDef, value: Any) -> Any:
    if not isinstance(value, Mapping) or len(value) != 1:
        raise VppArgumentError(msg, path, f"expected a dict with one of "
                               f"{', '.join(f.name for f in t.fields)}")
    (key, inner), = value.items()
    arm = next((f for f in t.fields if f.name == key), None)
    if arm is None:
        raise VppArgumentError(msg, f"{path}.{key}", f"not a member of {t.name}")
    return {key: _check_field(msg, f"{path}.{key}", arm, inner)}


def _check_discriminated(msg: str, path: str, t: TypeDef, tag: int, union: Any, uname: str) -> None:
    """address.af must name the union member actually given.  A tag value
    no arm claims (npol's NPOL_IP_SET reuses the set_id arm) is not judged."""
    if not isinstance(union, Mapping) or len(union) != 1:
        return
    utype = TYPES[next(f.type for f in t.fields if f.name == uname)]
    tag_field = t.discriminator[0]  # type: ignore[index]
    values = dict(TYPES[next(f.type for f in t.fields if f.name == tag_field)].values)
    cases = {values.get((a.options or {}).get("case")): a.name for a in utype.fields}
    (key,) = union.keys()
    if tag in cases and cases[tag] != key:
        raise VppArgumentError(msg, f"{path}.{uname}.{key}",
                               f"does not match {tag_field}={tag} (expects {cases[tag]})")


# What vpp_papi converts for a type (vpp_format.conversion_table), as checks.
_IP_CLASSES = {4: (ipaddress.IPv4Address, ipaddress.IPv4Network, ipaddress.IPv4Interface),
               6: (ipaddress.IPv6Address, ipaddress.IPv6Network, ipaddress.IPv6Interface)}


def _parse(kind: str, versions: tuple[int, ...], value: Any) -> bool:
    """kind: address | network | interface.  True if ``value`` is one."""
    idx = {"address": 0, "network": 1, "interface": 2}[kind]
    for v in versions:
        if isinstance(value, _IP_CLASSES[v][idx]):
            return True
    if isinstance(value, str):
        try:
            if kind == "address":
                obj: Any = ipaddress.ip_address(value)
            elif "/" not in value:
                return False
            elif kind == "network":
                obj = ipaddress.ip_network(value, strict=False)
            else:
                obj = ipaddress.ip_interface(value)
        except ValueError:
            return False
        return obj.version in versions
    return False


def _is_mac(value: Any) -> bool:
    if type(value).__name__ == "MACAddress":
        return True
    if isinstance(value, (bytes, bytearray)):
        return len(value) == 6
    if isinstance(value, str):
        parts = value.split(":")
        return len(parts) == 6 and all(len(p) == 2 and _is_hex(p) for p in parts)
    return False


def _is_hex(s: str) -> bool:
    try:
        int(s, 16)
        return True
    except ValueError:
        return False


_CONVERSIONS: Mapping[str, Any] = MappingProxyType({
    "vl_api_address_t": lambda v: _parse("address", (4, 6), v),
    "vl_api_ip4_address_t": lambda v: _parse("address", (4,), v)
    or (isinstance(v, (bytes, bytearray)) and len(v) == 4),
    "vl_api_ip6_address_t": lambda v: _parse("address", (6,), v)
    or (isinstance(v, (bytes, bytearray)) and len(v) == 16),
    "vl_api_prefix_t": lambda v: _parse("network", (4, 6), v),
    "vl_api_ip4_prefix_t": lambda v: _parse("network", (4,), v),
    "vl_api_ip6_prefix_t": lambda v: _parse("network", (6,), v),
    "vl_api_address_with_prefix_t": lambda v: _parse("interface", (4, 6), v)
    or _parse("network", (4, 6), v),
    "vl_api_ip4_address_with_prefix_t": lambda v: _parse("interface", (4,), v)
    or _parse("network", (4,), v),
    "vl_api_ip6_address_with_prefix_t": lambda v: _parse("interface", (6,), v)
    or _parse("network", (6,), v),
    "vl_api_mac_address_t": _is_mac,
    "vl_api_timestamp_t": lambda v: isinstance(v, (int, float)) or type(v).__name__ == "datetime",
})


def _check_conversion(msg: str, path: str, type_name: str, value: Any) -> bool:
    """True when ``value`` is a form vpp_papi converts for this type; raises
    when the type only has converted forms and this is not one of them."""
    conv = _CONVERSIONS.get(type_name)
    if conv is None or isinstance(value, Mapping):
        return False
    if conv(value):
        return True
    raise VppArgumentError(msg, path, f"expected {_describe(type_name)}, got {value!r}")


def _describe(type_name: str) -> str:
    return {
        "vl_api_address_t": "an IP address (str or ipaddress object) or {af, un}",
        "vl_api_ip4_address_t": "an IPv4 address (str, IPv4Address or 4 bytes)",
        "vl_api_ip6_address_t": "an IPv6 address (str, IPv6Address or 16 bytes)",
        "vl_api_prefix_t": "a prefix ('a/len', IPv4Network/IPv6Network) or {address, len}",
        "vl_api_ip4_prefix_t": "an IPv4 prefix ('a/len' or IPv4Network)",
        "vl_api_ip6_prefix_t": "an IPv6 prefix ('a/len' or IPv6Network)",
        "vl_api_address_with_prefix_t": "an address with prefix ('a/len' or IPv4Interface/IPv6Interface)",
        "vl_api_ip4_address_with_prefix_t": "an IPv4 address with prefix ('a/len' or IPv4Interface)",
        "vl_api_ip6_address_with_prefix_t": "an IPv6 address with prefix ('a/len' or IPv6Interface)",
        "vl_api_mac_address_t": "a MAC address ('aa:bb:cc:dd:ee:ff', MACAddress or 6 bytes)",
    }.get(type_name, type_name)


# ------------------------------------------------- vpp_papi representation

def papi_fields(fields: Iterable[FieldDef]) -> list[list[Any]]:
    """Fields in the .api.json list form vpp_papi's serializer takes."""
    out: list[list[Any]] = []
    for f in fields:
        item: list[Any] = [f.type, f.name]
        if f.length is not None:
            item.append(f.length)
            if f.length_field:
                item.append(f.length_field)
        if f.options:
            item.append(dict(f.options))
        out.append(item)
    return out


def papi_msgdef(name: str) -> list[Any]:
    """A message as vpp_papi's ``get_message(name, msgdef)`` expects it."""
    m = MESSAGES[name]
    return papi_fields(m.fields) + [{"crc": m.crc}]


def papi_types_in_order() -> list[TypeDef]:
    """Types ordered so that each comes after everything it references."""
    done: dict[str, TypeDef] = {}

    def visit(name: str) -> None:
        if name in done or name in BASE_TYPES:
            return
        t = TYPES[name]
        deps = [t.alias_of] if t.kind == "alias" else [f.type for f in t.fields]
        for d in deps:
            if d:
                visit(d)
        done[name] = t

    for n in sorted(TYPES):
        visit(n)
    return list(done.values())
