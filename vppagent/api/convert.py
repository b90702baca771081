"""Model updates <-> ``vppagent.v1`` protobuf messages, with validation.

* :func:`update_to_proto` / :func:`update_from_proto` convert one update; the
  round trip model -> proto -> model is exact for every update type.
* :func:`update_from_proto` validates every field and raises
  :class:`~vppagent.model.errors.ValidationError` whose path names the field
  as it appears in the request, e.g.
  ``updates[2].policy.inbound_rules[0].dst_ports[1]: invalid port range 90:80``.
* :func:`validate_batch` checks references (IP sets, policies, profiles)
  within a batch plus the already-known :class:`DataplaneState`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable, Iterable, Sequence

from vppagent.api import gen_modules
from vppagent.model.errors import ValidationError
from vppagent.model.resources import (
    ICMP_PROTOCOLS, PORT_PROTOCOLS, PROTOCOL_NUMBERS, Action, EndpointAddress, EndpointPort,
    EndpointSlice, IPAddress, IPNetwork, IPPool, NamedPort, PortRange, Service, ServicePort,
    TierDefault,
)
from vppagent.model.state import DataplaneState
from vppagent.model.updates import (
    ConfigUpdate, HostEndpointInfo, HostEndpointRemove, HostEndpointUpdate, InSync, IPPoolRemove,
    IPPoolUpdate, RouteEncap, RouteInfo, RouteRemove, RouteUpdate, IPSetDeltaUpdate, IPSetRemove, IPSetType, IPSetUpdate, PolicyID, PolicyRemove,
    PolicyUpdate, ProfileRemove, ProfileUpdate, RenderedPolicy, RenderedRule, RuleOrigin,
    ServiceRemove, ServiceUpdate, TierInfo, Update, WorkloadEndpointInfo, WorkloadEndpointRemove,
    WorkloadEndpointUpdate,
)
from vppagent.selector import ALL, SelectorError
from vppagent.selector import parse as parse_selector

pb = gen_modules().dataplane_pb2

__all__ = [
    "update_to_proto", "update_from_proto", "updates_to_proto", "updates_from_proto",
    "key_to_proto", "key_from_proto", "keys_from_proto", "validate_batch", "validate_member",
]

# ---------------------------------------------------------------- enums

_ACTION_TO_PB = {
    Action.ALLOW: pb.ACTION_ALLOW, Action.DENY: pb.ACTION_DENY,
    Action.LOG: pb.ACTION_LOG, Action.PASS: pb.ACTION_PASS,
}
_ACTION_FROM_PB = {v: k for k, v in _ACTION_TO_PB.items()}

_TIER_DEFAULT_TO_PB = {TierDefault.DENY: pb.TIER_DEFAULT_DENY, TierDefault.PASS: pb.TIER_DEFAULT_PASS}
_TIER_DEFAULT_FROM_PB = {
    pb.TIER_DEFAULT_UNSPECIFIED: TierDefault.DENY,
    pb.TIER_DEFAULT_DENY: TierDefault.DENY,
    pb.TIER_DEFAULT_PASS: TierDefault.PASS,
}

_IPSET_TYPE_TO_PB = {IPSetType.NET: pb.IPSET_TYPE_NET, IPSetType.IP_AND_PORT: pb.IPSET_TYPE_IP_AND_PORT}
_IPSET_TYPE_FROM_PB = {v: k for k, v in _IPSET_TYPE_TO_PB.items()}

_SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
_ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")
_ENCAP_MODES = ("Never", "Always", "CrossSubnet")
_MAX_AFFINITY_TIMEOUT = 86400

_Kind = pb.ResourceKey.Kind
_REMOVE_KINDS: dict[int, type] = {
    _Kind.IPSET: IPSetRemove,
    _Kind.POLICY: PolicyRemove,
    _Kind.PROFILE: ProfileRemove,
    _Kind.WORKLOAD_ENDPOINT: WorkloadEndpointRemove,
    _Kind.HOST_ENDPOINT: HostEndpointRemove,
    _Kind.SERVICE: ServiceRemove,
    _Kind.IP_POOL: IPPoolRemove,
    _Kind.ROUTE: RouteRemove,
}
_KIND_OF_REMOVE = {v: k for k, v in _REMOVE_KINDS.items()}

_RULE_NET_FIELDS = ("src_nets", "not_src_nets", "dst_nets", "not_dst_nets")
_RULE_PORT_FIELDS = ("src_ports", "not_src_ports", "dst_ports", "not_dst_ports")
_RULE_NAMED_PORT_SET_FIELDS = (
    "src_named_port_ip_set_ids", "not_src_named_port_ip_set_ids",
    "dst_named_port_ip_set_ids", "not_dst_named_port_ip_set_ids",
)
_RULE_SET_FIELDS = ("src_ip_set_ids", "not_src_ip_set_ids", "dst_ip_set_ids", "not_dst_ip_set_ids")
_RULE_OPT_INT_FIELDS = (
    "ip_version", "protocol", "not_protocol", "icmp_type", "icmp_code", "not_icmp_type",
    "not_icmp_code",
)

_MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
_BAD_NAME_CHARS = re.compile(r"[\s\x00-\x1f\x7f]")


# ---------------------------------------------------------------- field validators

def _p(path: str, part: str | int) -> str:
    return f"{path}[{part}]" if isinstance(part, int) else f"{path}.{part}"


def _id(value: str, path: str, what: str = "id") -> str:
    if not value:
        raise ValidationError(path, f"{what} must not be empty")
    if _BAD_NAME_CHARS.search(value):
        raise ValidationError(path, f"{what} {value!r} contains whitespace or control characters")
    return value


def _ids(values: Iterable[str], path: str, what: str = "id") -> tuple[str, ...]:
    return tuple(_id(v, _p(path, i), what) for i, v in enumerate(values))


def _cidr(value: str, path: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        detail = " (host bits set)" if "host bits" in str(exc) else ""
        raise ValidationError(path, f"invalid CIDR {value!r}{detail}") from None


def _cidrs(values: Iterable[str], path: str) -> tuple[IPNetwork, ...]:
    return tuple(_cidr(v, _p(path, i)) for i, v in enumerate(values))


def _ip(value: str, path: str) -> IPAddress:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValidationError(path, f"invalid IP address {value!r}") from None


def _ips(values: Iterable[str], path: str) -> tuple[IPAddress, ...]:
    return tuple(_ip(v, _p(path, i)) for i, v in enumerate(values))


def _port(value: int, path: str) -> int:
    if not 0 <= value <= 65535:
        raise ValidationError(path, f"port {value} out of range 0-65535")
    return value


def _protocol(value: int, path: str) -> int:
    if not 0 <= value <= 255:
        raise ValidationError(path, f"protocol {value} out of range 0-255")
    return value


def _port_range(msg: Any, path: str) -> PortRange:
    first, last = msg.first, msg.last
    for v in (first, last):
        if not 0 <= v <= 65535:
            raise ValidationError(path, f"invalid port range {first}:{last} (ports are 0-65535)")
    if first > last:
        raise ValidationError(path, f"invalid port range {first}:{last}")
    return PortRange(first, last)


def _pairs(msgs: Iterable[Any], path: str, what: str = "key") -> tuple[tuple[str, str], ...]:
    seen: set[str] = set()
    out = []
    for i, kv in enumerate(msgs):
        if not kv.key:
            raise ValidationError(_p(_p(path, i), "key"), f"{what} must not be empty")
        if kv.key in seen:
            raise ValidationError(_p(_p(path, i), "key"), f"duplicate {what} {kv.key!r}")
        seen.add(kv.key)
        out.append((kv.key, kv.value))
    return tuple(out)


def _set_pairs(target: Any, pairs: Iterable[tuple[str, str]]) -> None:
    target.extend(pb.KeyValue(key=k, value=v) for k, v in pairs)


def _iface(value: str, path: str) -> str:
    if value and _BAD_NAME_CHARS.search(value):
        raise ValidationError(path, f"invalid interface name {value!r}")
    return value


def _mac(value: str, path: str) -> str:
    if value and not _MAC_RE.match(value):
        raise ValidationError(path, f"invalid MAC address {value!r}")
    return value


def _choice(value: str, choices: Sequence[str], default: str, path: str, what: str) -> str:
    if not value:
        return default
    if value not in choices:
        raise ValidationError(path, f"unknown {what} {value!r} (expected one of {', '.join(choices)})")
    return value


def _parse_member_proto(proto: str) -> int | None:
    if proto.isdigit():
        n = int(proto)
        return n if n <= 255 else None
    return PROTOCOL_NUMBERS.get(proto.upper())


def member_problem(member: str, set_type: IPSetType) -> str | None:
    """Why ``member`` cannot be in an IP set of ``set_type`` (None if it can)."""
    if set_type is IPSetType.NET:
        try:
            ipaddress.ip_network(member, strict=True)
        except ValueError as exc:
            detail = " (host bits set)" if "host bits" in str(exc) else ""
            return f"invalid CIDR {member!r}{detail}"
        return None
    ip, comma, rest = member.partition(",")
    proto, colon, port = rest.partition(":")
    if not comma or not colon:
        return f"invalid ip-and-port member {member!r} (expected 'ip,proto:port')"
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return f"invalid IP address {ip!r} in member {member!r}"
    if _parse_member_proto(proto) is None:
        return f"invalid protocol {proto!r} in member {member!r}"
    if not port.isdigit() or int(port) > 65535:
        return f"invalid port {port!r} in member {member!r}"
    return None


def validate_member(member: str, set_type: IPSetType, path: str) -> str:
    problem = member_problem(member, set_type)
    if problem:
        raise ValidationError(path, problem)
    return member


def _any_member(member: str, path: str) -> str:
    """A delta member whose set type is not known yet: must fit one of the types."""
    if "," in member:
        return validate_member(member, IPSetType.IP_AND_PORT, path)
    return validate_member(member, IPSetType.NET, path)


# ---------------------------------------------------------------- rules

def _rule_to_proto(r: RenderedRule) -> Any:
    m = pb.Rule(action=_ACTION_TO_PB[r.action])
    m.origin.policy = r.origin.policy
    m.origin.index = r.origin.index
    for name in _RULE_OPT_INT_FIELDS:
        v = getattr(r, name)
        if v is not None:
            setattr(m, name, v)
    for name in _RULE_NET_FIELDS:
        getattr(m, name).extend(str(n) for n in getattr(r, name))
    for name in _RULE_PORT_FIELDS:
        getattr(m, name).extend(pb.PortRange(first=p.first, last=p.last) for p in getattr(r, name))
    for name in _RULE_NAMED_PORT_SET_FIELDS + _RULE_SET_FIELDS:
        getattr(m, name).extend(getattr(r, name))
    return m


def _rule_from_proto(m: Any, path: str) -> RenderedRule:
    if m.action == pb.ACTION_UNSPECIFIED:
        raise ValidationError(_p(path, "action"), "action is required")
    action = _ACTION_FROM_PB.get(m.action)
    if action is None:
        raise ValidationError(_p(path, "action"), f"unknown action {m.action}")
    kw: dict[str, Any] = {}
    for name in _RULE_OPT_INT_FIELDS:
        kw[name] = getattr(m, name) if m.HasField(name) else None

    ipv = kw["ip_version"]
    if ipv is not None and ipv not in (4, 6):
        raise ValidationError(_p(path, "ip_version"), f"ip_version must be 4 or 6, not {ipv}")
    for name in ("protocol", "not_protocol"):
        if kw[name] is not None:
            _protocol(kw[name], _p(path, name))
    for t, c in (("icmp_type", "icmp_code"), ("not_icmp_type", "not_icmp_code")):
        if kw[c] is not None and kw[t] is None:
            raise ValidationError(_p(path, c), f"{c.replace('_', ' ')} without {t.replace('_', ' ')}")
        for name in (t, c):
            if kw[name] is not None and not 0 <= kw[name] <= 255:
                raise ValidationError(_p(path, name), f"{name.replace('_', ' ')} {kw[name]} out of range 0-255")
    proto = kw["protocol"]
    if proto is not None and proto not in ICMP_PROTOCOLS:
        for name in ("icmp_type", "not_icmp_type"):
            if kw[name] is not None:
                raise ValidationError(
                    _p(path, name), f"ICMP match requires protocol ICMP or ICMPv6, not {proto}")
    if proto is not None and ipv is not None and kw["icmp_type"] is not None:
        if (proto == 1 and ipv == 6) or (proto == 58 and ipv == 4):
            raise ValidationError(_p(path, "protocol"), f"protocol {proto} does not match ip_version {ipv}")

    for name in _RULE_NET_FIELDS:
        nets = _cidrs(getattr(m, name), _p(path, name))
        if ipv is not None:
            for i, n in enumerate(nets):
                if n.version != ipv:
                    raise ValidationError(_p(_p(path, name), i), f"IPv{n.version} network {n} in an IPv{ipv} rule")
        kw[name] = nets
    for name in _RULE_PORT_FIELDS:
        kw[name] = tuple(_port_range(pr, _p(_p(path, name), i)) for i, pr in enumerate(getattr(m, name)))
        if kw[name] and proto is not None and proto not in PORT_PROTOCOLS:
            raise ValidationError(
                _p(path, name), f"port match requires protocol TCP, UDP, SCTP or UDPLite, not {proto}")
    for name in _RULE_NAMED_PORT_SET_FIELDS + _RULE_SET_FIELDS:
        kw[name] = _ids(getattr(m, name), _p(path, name), "IP set id")
    origin = RuleOrigin(m.origin.policy, m.origin.index)
    return RenderedRule(action=action, origin=origin, **kw)


def _rules_from_proto(msgs: Iterable[Any], path: str) -> tuple[RenderedRule, ...]:
    return tuple(_rule_from_proto(r, _p(path, i)) for i, r in enumerate(msgs))


# ---------------------------------------------------------------- endpoints

def _tier_to_proto(t: TierInfo) -> Any:
    return pb.TierInfo(
        name=t.name, default_action=_TIER_DEFAULT_TO_PB[t.default_action],
        ingress_policies=t.ingress_policies, egress_policies=t.egress_policies,
    )


def _tier_from_proto(m: Any, path: str) -> TierInfo:
    action = _TIER_DEFAULT_FROM_PB.get(m.default_action)
    if action is None:
        raise ValidationError(_p(path, "default_action"), f"unknown tier default action {m.default_action}")
    return TierInfo(
        name=_id(m.name, _p(path, "name"), "tier name"),
        default_action=action,
        ingress_policies=_ids(m.ingress_policies, _p(path, "ingress_policies"), "policy name"),
        egress_policies=_ids(m.egress_policies, _p(path, "egress_policies"), "policy name"),
    )


def _tiers_from_proto(msgs: Iterable[Any], path: str) -> tuple[TierInfo, ...]:
    tiers = tuple(_tier_from_proto(t, _p(path, i)) for i, t in enumerate(msgs))
    seen: set[str] = set()
    for i, t in enumerate(tiers):
        if t.name in seen:
            raise ValidationError(_p(_p(path, i), "name"), f"duplicate tier {t.name!r}")
        seen.add(t.name)
    return tiers


def _named_port_to_proto(p: NamedPort) -> Any:
    return pb.NamedPort(name=p.name, protocol=p.protocol, port=p.port)


def _named_port_from_proto(m: Any, path: str) -> NamedPort:
    return NamedPort(
        name=_id(m.name, _p(path, "name"), "port name"),
        protocol=_protocol(m.protocol, _p(path, "protocol")),
        port=_port(m.port, _p(path, "port")),
    )


def _wep_to_proto(u: WorkloadEndpointUpdate) -> Any:
    e = u.endpoint
    m = pb.WorkloadEndpointUpdate(
        id=u.id, namespace=e.namespace, pod=e.pod, node=e.node, endpoint=e.endpoint,
        interface_name=e.interface_name, mac=e.mac, nets=[str(n) for n in e.nets],
        profile_ids=e.profile_ids, tiers=[_tier_to_proto(t) for t in e.tiers],
        ports=[_named_port_to_proto(p) for p in e.ports],
    )
    _set_pairs(m.labels, e.labels)
    _set_pairs(m.annotations, e.annotations)
    return m


def _wep_from_proto(m: Any, path: str) -> WorkloadEndpointUpdate:
    info = WorkloadEndpointInfo(
        namespace=m.namespace, pod=m.pod, node=m.node, endpoint=m.endpoint,
        interface_name=_iface(m.interface_name, _p(path, "interface_name")),
        mac=_mac(m.mac, _p(path, "mac")),
        nets=_cidrs(m.nets, _p(path, "nets")),
        profile_ids=_ids(m.profile_ids, _p(path, "profile_ids"), "profile id"),
        tiers=_tiers_from_proto(m.tiers, _p(path, "tiers")),
        ports=tuple(_named_port_from_proto(p, _p(_p(path, "ports"), i)) for i, p in enumerate(m.ports)),
        labels=_pairs(m.labels, _p(path, "labels"), "label key"),
        annotations=_pairs(m.annotations, _p(path, "annotations"), "annotation key"),
    )
    return WorkloadEndpointUpdate(_id(m.id, _p(path, "id")), info)


_HEP_TIER_FIELDS = ("tiers", "untracked_tiers", "pre_dnat_tiers", "forward_tiers")


def _hep_to_proto(u: HostEndpointUpdate) -> Any:
    e = u.endpoint
    m = pb.HostEndpointUpdate(
        id=u.id, name=e.name, node=e.node, interface_name=e.interface_name,
        expected_ips=[str(a) for a in e.expected_ips], profile_ids=e.profile_ids,
    )
    for name in _HEP_TIER_FIELDS:
        getattr(m, name).extend(_tier_to_proto(t) for t in getattr(e, name))
    return m


def _hep_from_proto(m: Any, path: str) -> HostEndpointUpdate:
    info = HostEndpointInfo(
        name=_id(m.name, _p(path, "name"), "host endpoint name"),
        node=m.node,
        interface_name=_iface(m.interface_name, _p(path, "interface_name")),
        expected_ips=_ips(m.expected_ips, _p(path, "expected_ips")),
        profile_ids=_ids(m.profile_ids, _p(path, "profile_ids"), "profile id"),
        **{name: _tiers_from_proto(getattr(m, name), _p(path, name)) for name in _HEP_TIER_FIELDS},
    )
    return HostEndpointUpdate(_id(m.id, _p(path, "id")), info)


# ---------------------------------------------------------------- services

def _service_to_proto(s: Service) -> Any:
    m = pb.Service(
        namespace=s.namespace, name=s.name, type=s.type,
        cluster_ips=[str(a) for a in s.cluster_ips],
        external_ips=[str(a) for a in s.external_ips],
        load_balancer_ips=[str(a) for a in s.load_balancer_ips],
        session_affinity=s.session_affinity, affinity_timeout=s.affinity_timeout,
        external_traffic_local=s.external_traffic_local,
        internal_traffic_local=s.internal_traffic_local,
    )
    for p in s.ports:
        pm = m.ports.add(name=p.name, protocol=p.protocol, port=p.port)
        if isinstance(p.target_port, str):
            pm.target_port_name = p.target_port
        else:
            pm.target_port_number = p.target_port
        if p.node_port is not None:
            pm.node_port = p.node_port
    _set_pairs(m.selector, s.selector)
    return m


def _service_port_from_proto(m: Any, path: str) -> ServicePort:
    port = _port(m.port, _p(path, "port"))
    which = m.WhichOneof("target_port")
    target: int | str
    if which == "target_port_name":
        target = _id(m.target_port_name, _p(path, "target_port_name"), "target port name")
    elif which == "target_port_number":
        target = _port(m.target_port_number, _p(path, "target_port_number"))
    else:
        target = port  # Kubernetes: targetPort defaults to port
    return ServicePort(
        name=m.name, protocol=_protocol(m.protocol, _p(path, "protocol")), port=port,
        target_port=target,
        node_port=_port(m.node_port, _p(path, "node_port")) if m.HasField("node_port") else None,
    )


def _service_from_proto(m: Any, path: str) -> Service:
    timeout = m.affinity_timeout if m.HasField("affinity_timeout") else 10800
    if timeout > _MAX_AFFINITY_TIMEOUT:
        raise ValidationError(
            _p(path, "affinity_timeout"), f"affinity timeout {timeout} exceeds {_MAX_AFFINITY_TIMEOUT} seconds")
    ports = tuple(_service_port_from_proto(p, _p(_p(path, "ports"), i)) for i, p in enumerate(m.ports))
    seen: set[tuple[int, int]] = set()
    for i, p in enumerate(ports):
        if (p.protocol, p.port) in seen:
            raise ValidationError(_p(_p(path, "ports"), i), f"duplicate port {p.port}/{p.protocol}")
        seen.add((p.protocol, p.port))
    return Service(
        namespace=_id(m.namespace, _p(path, "namespace"), "namespace"),
        name=_id(m.name, _p(path, "name"), "name"),
        type=_choice(m.type, _SERVICE_TYPES, "ClusterIP", _p(path, "type"), "service type"),
        cluster_ips=_ips(m.cluster_ips, _p(path, "cluster_ips")),
        ports=ports,
        external_ips=_ips(m.external_ips, _p(path, "external_ips")),
        load_balancer_ips=_ips(m.load_balancer_ips, _p(path, "load_balancer_ips")),
        session_affinity=m.session_affinity,
        affinity_timeout=timeout,
        external_traffic_local=m.external_traffic_local,
        internal_traffic_local=m.internal_traffic_local,
        selector=_pairs(m.selector, _p(path, "selector"), "selector key"),
    )


def _slice_to_proto(s: EndpointSlice) -> Any:
    m = pb.EndpointSlice(namespace=s.namespace, name=s.name, service=s.service, address_type=s.address_type)
    for e in s.endpoints:
        m.endpoints.add(
            addresses=[str(a) for a in e.addresses], ready=e.ready, serving=e.serving,
            terminating=e.terminating, node=e.node, target=e.target,
        )
    for p in s.ports:
        m.ports.add(name=p.name, protocol=p.protocol, port=p.port)
    return m


def _slice_from_proto(m: Any, path: str) -> EndpointSlice:
    addr_type = _choice(m.address_type, _ADDRESS_TYPES, "IPv4", _p(path, "address_type"), "address type")
    family = {"IPv4": 4, "IPv6": 6}.get(addr_type)
    endpoints = []
    for i, e in enumerate(m.endpoints):
        epath = _p(_p(path, "endpoints"), i)
        addrs = _ips(e.addresses, _p(epath, "addresses"))
        for j, a in enumerate(addrs):
            if family is not None and a.version != family:
                raise ValidationError(_p(_p(epath, "addresses"), j), f"IPv{a.version} address {a} in an {addr_type} slice")
        endpoints.append(EndpointAddress(
            addresses=addrs,
            ready=e.ready if e.HasField("ready") else True,
            serving=e.serving if e.HasField("serving") else True,
            terminating=e.terminating, node=e.node, target=e.target,
        ))
    ports = tuple(
        EndpointPort(
            name=p.name,
            protocol=_protocol(p.protocol, _p(_p(_p(path, "ports"), i), "protocol")),
            port=_port(p.port, _p(_p(_p(path, "ports"), i), "port")),
        )
        for i, p in enumerate(m.ports)
    )
    return EndpointSlice(
        namespace=m.namespace, name=_id(m.name, _p(path, "name"), "name"), service=m.service,
        address_type=addr_type, endpoints=tuple(endpoints), ports=ports,
    )


# ---------------------------------------------------------------- IP pools

def _default_block_size(cidr: IPNetwork) -> int:
    return 26 if cidr.version == 4 else 122


def _pool_to_proto(p: IPPool) -> Any:
    return pb.IPPool(
        name=p.name, cidr=str(p.cidr), block_size=p.block_size, nat_outgoing=p.nat_outgoing,
        disabled=p.disabled, node_selector=str(p.node_selector), ipip_mode=p.ipip_mode,
        vxlan_mode=p.vxlan_mode,
    )


def _pool_from_proto(m: Any, path: str) -> IPPool:
    cidr = _cidr(m.cidr, _p(path, "cidr"))
    block = m.block_size if m.HasField("block_size") else _default_block_size(cidr)
    if not cidr.prefixlen <= block <= cidr.max_prefixlen:
        raise ValidationError(
            _p(path, "block_size"),
            f"block size {block} must be between the pool prefix length {cidr.prefixlen} and {cidr.max_prefixlen}")
    if m.node_selector:
        try:
            sel = parse_selector(m.node_selector)
        except SelectorError as exc:
            raise ValidationError(_p(path, "node_selector"), str(exc)) from None
    else:
        sel = ALL
    return IPPool(
        name=_id(m.name, _p(path, "name"), "name"),
        cidr=cidr, block_size=block, nat_outgoing=m.nat_outgoing, disabled=m.disabled,
        node_selector=sel,
        ipip_mode=_choice(m.ipip_mode, _ENCAP_MODES, "Never", _p(path, "ipip_mode"), "IPIP mode"),
        vxlan_mode=_choice(m.vxlan_mode, _ENCAP_MODES, "Never", _p(path, "vxlan_mode"), "VXLAN mode"),
    )


# ---------------------------------------------------------------- updates

def _policy_id_from_proto(m: Any, path: str) -> PolicyID:
    return PolicyID(
        tier=_id(m.tier, _p(path, "tier"), "tier"),
        name=_id(m.name, _p(path, "name"), "policy name"),
    )


def update_to_proto(u: Update) -> Any:
    """A model update as a ``vppagent.v1.Update`` message."""
    m = pb.Update()
    match u:
        case ConfigUpdate(config=c):
            _set_pairs(m.config.config, c)
        case InSync():
            m.in_sync.SetInParent()
        case IPSetUpdate(id=i, type=t, members=members):
            m.ipset.id = i
            m.ipset.type = _IPSET_TYPE_TO_PB[t]
            m.ipset.members.extend(sorted(members))
        case IPSetDeltaUpdate(id=i, added=a, removed=r):
            m.ipset_delta.id = i
            m.ipset_delta.added.extend(sorted(a))
            m.ipset_delta.removed.extend(sorted(r))
        case IPSetRemove(id=i):
            m.ipset_remove.id = i
        case PolicyUpdate(id=pid, policy=p):
            m.policy.id.tier = pid.tier
            m.policy.id.name = pid.name
            m.policy.inbound_rules.extend(_rule_to_proto(r) for r in p.inbound_rules)
            m.policy.outbound_rules.extend(_rule_to_proto(r) for r in p.outbound_rules)
            m.policy.untracked = p.untracked
            m.policy.pre_dnat = p.pre_dnat
            m.policy.apply_on_forward = p.apply_on_forward
        case PolicyRemove(id=pid):
            m.policy_remove.id.tier = pid.tier
            m.policy_remove.id.name = pid.name
        case ProfileUpdate(id=i, inbound_rules=ir, outbound_rules=orr):
            m.profile.id = i
            m.profile.inbound_rules.extend(_rule_to_proto(r) for r in ir)
            m.profile.outbound_rules.extend(_rule_to_proto(r) for r in orr)
        case ProfileRemove(id=i):
            m.profile_remove.id = i
        case WorkloadEndpointUpdate():
            m.workload_endpoint.CopyFrom(_wep_to_proto(u))
        case WorkloadEndpointRemove(id=i):
            m.workload_endpoint_remove.id = i
        case HostEndpointUpdate():
            m.host_endpoint.CopyFrom(_hep_to_proto(u))
        case HostEndpointRemove(id=i):
            m.host_endpoint_remove.id = i
        case ServiceUpdate(id=i, service=s, slices=slices):
            m.service.id = i
            m.service.service.CopyFrom(_service_to_proto(s))
            m.service.slices.extend(_slice_to_proto(sl) for sl in slices)
        case ServiceRemove(id=i):
            m.service_remove.id = i
        case IPPoolUpdate(id=i, pool=p):
            m.ip_pool.id = i
            m.ip_pool.pool.CopyFrom(_pool_to_proto(p))
        case IPPoolRemove(id=i):
            m.ip_pool_remove.id = i
        case RouteUpdate(id=i, route=r):
            m.route.id = i
            m.route.route.dst = str(r.dst)
            m.route.route.node = r.node
            m.route.route.gateway = str(r.gateway)
            m.route.route.encap = r.encap.value
            m.route.route.nat_outgoing = r.nat_outgoing
        case RouteRemove(id=i):
            m.route_remove.id = i
        case _:
            raise TypeError(f"not an update: {u!r}")
    return m


def _from_ipset(m: Any, path: str) -> Update:
    if m.type == pb.IPSET_TYPE_UNSPECIFIED:
        raise ValidationError(_p(path, "type"), "IP set type is required")
    t = _IPSET_TYPE_FROM_PB.get(m.type)
    if t is None:
        raise ValidationError(_p(path, "type"), f"unknown IP set type {m.type}")
    members = frozenset(
        validate_member(v, t, _p(_p(path, "members"), i)) for i, v in enumerate(m.members))
    return IPSetUpdate(_id(m.id, _p(path, "id")), t, members)


def _from_ipset_delta(m: Any, path: str) -> Update:
    added = frozenset(_any_member(v, _p(_p(path, "added"), i)) for i, v in enumerate(m.added))
    removed = frozenset(_any_member(v, _p(_p(path, "removed"), i)) for i, v in enumerate(m.removed))
    both = added & removed
    if both:
        raise ValidationError(_p(path, "added"), f"member {sorted(both)[0]!r} is both added and removed")
    return IPSetDeltaUpdate(_id(m.id, _p(path, "id")), added, removed)


def _from_policy(m: Any, path: str) -> Update:
    if not m.HasField("id"):
        raise ValidationError(_p(path, "id"), "policy id is required")
    pol = RenderedPolicy(
        inbound_rules=_rules_from_proto(m.inbound_rules, _p(path, "inbound_rules")),
        outbound_rules=_rules_from_proto(m.outbound_rules, _p(path, "outbound_rules")),
        untracked=m.untracked, pre_dnat=m.pre_dnat, apply_on_forward=m.apply_on_forward,
    )
    if pol.untracked and pol.pre_dnat:
        raise ValidationError(_p(path, "pre_dnat"), "a policy cannot be both untracked and pre_dnat")
    if pol.pre_dnat and pol.outbound_rules:
        raise ValidationError(_p(path, "outbound_rules"), "pre_dnat policies have inbound rules only")
    return PolicyUpdate(_policy_id_from_proto(m.id, _p(path, "id")), pol)


def _from_policy_remove(m: Any, path: str) -> Update:
    if not m.HasField("id"):
        raise ValidationError(_p(path, "id"), "policy id is required")
    return PolicyRemove(_policy_id_from_proto(m.id, _p(path, "id")))


def _from_profile(m: Any, path: str) -> Update:
    return ProfileUpdate(
        _id(m.id, _p(path, "id")),
        inbound_rules=_rules_from_proto(m.inbound_rules, _p(path, "inbound_rules")),
        outbound_rules=_rules_from_proto(m.outbound_rules, _p(path, "outbound_rules")),
    )


def _from_service(m: Any, path: str) -> Update:
    if not m.HasField("service"):
        raise ValidationError(_p(path, "service"), "service is required")
    return ServiceUpdate(
        _id(m.id, _p(path, "id")),
        _service_from_proto(m.service, _p(path, "service")),
        tuple(_slice_from_proto(s, _p(_p(path, "slices"), i)) for i, s in enumerate(m.slices)),
    )


def _from_pool(m: Any, path: str) -> Update:
    if not m.HasField("pool"):
        raise ValidationError(_p(path, "pool"), "pool is required")
    return IPPoolUpdate(_id(m.id, _p(path, "id")), _pool_from_proto(m.pool, _p(path, "pool")))


_ROUTE_ENCAPS = tuple(e.value for e in RouteEncap)


def _from_route(m: Any, path: str) -> Update:
    if not m.HasField("route"):
        raise ValidationError(_p(path, "route"), "route is required")
    r, rpath = m.route, _p(path, "route")
    dst = _cidr(r.dst, _p(rpath, "dst"))
    gateway = _ip(r.gateway, _p(rpath, "gateway"))
    ident = _id(m.id, _p(path, "id"))
    if ident != str(dst):
        raise ValidationError(_p(path, "id"), f"must equal route.dst ({dst}), got {ident!r}")
    encap = RouteEncap(_choice(r.encap, _ROUTE_ENCAPS, "none", _p(rpath, "encap"), "encap"))
    return RouteUpdate(ident, RouteInfo(
        dst=dst, node=_id(r.node, _p(rpath, "node"), "node"), gateway=gateway, encap=encap,
        nat_outgoing=r.nat_outgoing))


def _simple_remove(cls: type) -> Callable[[Any, str], Update]:
    def conv(m: Any, path: str) -> Update:
        return cls(_id(m.id, _p(path, "id")))
    return conv


_FROM_PROTO: dict[str, Callable[[Any, str], Update]] = {
    "config": lambda m, path: ConfigUpdate(_pairs(m.config, _p(path, "config"), "config key")),
    "in_sync": lambda m, path: InSync(),
    "ipset": _from_ipset,
    "ipset_delta": _from_ipset_delta,
    "ipset_remove": _simple_remove(IPSetRemove),
    "policy": _from_policy,
    "policy_remove": _from_policy_remove,
    "profile": _from_profile,
    "profile_remove": _simple_remove(ProfileRemove),
    "workload_endpoint": _wep_from_proto,
    "workload_endpoint_remove": _simple_remove(WorkloadEndpointRemove),
    "host_endpoint": _hep_from_proto,
    "host_endpoint_remove": _simple_remove(HostEndpointRemove),
    "service": _from_service,
    "service_remove": _simple_remove(ServiceRemove),
    "ip_pool": _from_pool,
    "ip_pool_remove": _simple_remove(IPPoolRemove),
    "route": _from_route,
    "route_remove": _simple_remove(RouteRemove),
}


def update_from_proto(msg: Any, path: str = "updates[0]") -> Update:
    """Validate and convert one ``vppagent.v1.Update``; errors name ``path.<field>``."""
    kind = msg.WhichOneof("kind")
    if kind is None:
        raise ValidationError(path, "empty update (no kind set)")
    return _FROM_PROTO[kind](getattr(msg, kind), _p(path, kind))


def updates_to_proto(updates: Iterable[Update]) -> list[Any]:
    return [update_to_proto(u) for u in updates]


def updates_from_proto(msgs: Iterable[Any], field: str = "updates") -> list[Update]:
    """Convert a repeated ``Update`` field; the first bad one raises."""
    return [update_from_proto(m, f"{field}[{i}]") for i, m in enumerate(msgs)]


# ---------------------------------------------------------------- removal keys

def key_to_proto(key: Update) -> Any:
    """A removal update (IPSetRemove, PolicyRemove...) as a ``ResourceKey``."""
    kind = _KIND_OF_REMOVE.get(type(key))
    if kind is None:
        raise TypeError(f"not a removal: {key!r}")
    if isinstance(key, PolicyRemove):
        return pb.ResourceKey(kind=kind, id=key.id.name, tier=key.id.tier)
    return pb.ResourceKey(kind=kind, id=key.id)  # type: ignore[union-attr]


def key_from_proto(m: Any, path: str = "keys[0]") -> Update:
    cls = _REMOVE_KINDS.get(m.kind)
    if cls is None:
        what = "kind is required" if m.kind == _Kind.KIND_UNSPECIFIED else f"unknown kind {m.kind}"
        raise ValidationError(_p(path, "kind"), what)
    ident = _id(m.id, _p(path, "id"))
    if cls is PolicyRemove:
        return PolicyRemove(PolicyID(_id(m.tier, _p(path, "tier"), "tier"), ident))
    if m.tier:
        raise ValidationError(_p(path, "tier"), "tier is only valid for policies")
    return cls(ident)


def keys_from_proto(msgs: Iterable[Any], field: str = "keys") -> list[Update]:
    return [key_from_proto(m, f"{field}[{i}]") for i, m in enumerate(msgs)]


# ---------------------------------------------------------------- batch validation

def _rule_refs(rules_by_dir: dict[str, tuple[RenderedRule, ...]]) -> Iterable[tuple[str, str, bool]]:
    """(relative field path, ip set id, is a named-port reference) for each reference."""
    for direction, rules in rules_by_dir.items():
        for ri, r in enumerate(rules):
            for name in _RULE_SET_FIELDS:
                for k, sid in enumerate(getattr(r, name)):
                    yield f"{direction}[{ri}].{name}[{k}]", sid, False
            for name in _RULE_NAMED_PORT_SET_FIELDS:
                for k, sid in enumerate(getattr(r, name)):
                    yield f"{direction}[{ri}].{name}[{k}]", sid, True


def _update_rules(u: Update) -> dict[str, tuple[RenderedRule, ...]]:
    if isinstance(u, PolicyUpdate):
        return {"inbound_rules": u.policy.inbound_rules, "outbound_rules": u.policy.outbound_rules}
    if isinstance(u, ProfileUpdate):
        return {"inbound_rules": u.inbound_rules, "outbound_rules": u.outbound_rules}
    return {}


def _endpoint_tier_fields(u: Update) -> dict[str, tuple[TierInfo, ...]]:
    if isinstance(u, WorkloadEndpointUpdate):
        return {"tiers": u.endpoint.tiers}
    if isinstance(u, HostEndpointUpdate):
        return {name: getattr(u.endpoint, name) for name in _HEP_TIER_FIELDS}
    return {}


_FIELD_OF = {
    ConfigUpdate: "config", InSync: "in_sync", IPSetUpdate: "ipset", IPSetDeltaUpdate: "ipset_delta",
    IPSetRemove: "ipset_remove", PolicyUpdate: "policy", PolicyRemove: "policy_remove",
    ProfileUpdate: "profile", ProfileRemove: "profile_remove",
    WorkloadEndpointUpdate: "workload_endpoint", WorkloadEndpointRemove: "workload_endpoint_remove",
    HostEndpointUpdate: "host_endpoint", HostEndpointRemove: "host_endpoint_remove",
    ServiceUpdate: "service", ServiceRemove: "service_remove", IPPoolUpdate: "ip_pool",
    IPPoolRemove: "ip_pool_remove", RouteUpdate: "route", RouteRemove: "route_remove",
}


def validate_batch(
    updates: Sequence[Update],
    state: DataplaneState | None = None,
    field: str = "updates",
    locate: Callable[[int, Update], str] | None = None,
) -> None:
    """Check the references of a batch against itself plus ``state``.

    The batch is valid when, after applying it in order on top of ``state``:

    * every IP set a delta names exists when the delta comes, and its members
      fit the set's type;
    * every IP set a policy or profile rule of the batch names exists
      (named-port references must name ip-and-port sets);
    * every policy an endpoint's tiers name (``tier/name``) and every profile
      it names exists;
    * nothing the batch removes is still referenced by what remains.

    Raises ``ValidationError`` naming the offending field
    (``updates[3].policy.inbound_rules[0].src_ip_set_ids[1]: unknown IP set 'x'``).
    ``state`` is only read. ``locate(index, update)`` overrides how an
    update's path is spelled (default ``updates[i].<oneof field>``).
    """
    state = state or DataplaneState()
    ipsets: dict[str, IPSetType] = {i: t for i, (t, _) in state.ipsets.items()}
    policies: set[PolicyID] = set(state.policies)
    profiles: set[str] = set(state.profiles)
    # Last update per key in the batch (the one whose references must hold).
    last_rules: dict[tuple[str, object], tuple[int, Update]] = {}
    last_endpoints: dict[tuple[str, str], tuple[int, Update]] = {}
    removed_sets: dict[str, str] = {}          # id -> path of the removal
    removed_policies: dict[PolicyID, str] = {}
    removed_profiles: dict[str, str] = {}
    removed_rule_owners: set[tuple[str, object]] = set()
    removed_endpoints: set[tuple[str, str]] = set()

    def at(i: int, u: Update) -> str:
        if locate is not None:
            return locate(i, u)
        return f"{field}[{i}].{_FIELD_OF[type(u)]}"

    for i, u in enumerate(updates):
        match u:
            case IPSetUpdate(id=sid, type=t):
                ipsets[sid] = t
                removed_sets.pop(sid, None)
            case IPSetDeltaUpdate(id=sid, added=added, removed=removed):
                t = ipsets.get(sid)
                if t is None:
                    raise ValidationError(f"{at(i, u)}.id", f"unknown IP set {sid!r}")
                for name, members in (("added", added), ("removed", removed)):
                    for member in sorted(members):
                        problem = member_problem(member, t)
                        if problem:
                            raise ValidationError(
                                f"{at(i, u)}.{name}", f"{problem} (IP set {sid!r} is {t.value})")
            case IPSetRemove(id=sid):
                ipsets.pop(sid, None)
                removed_sets[sid] = at(i, u)
            case PolicyUpdate(id=pid):
                policies.add(pid)
                removed_policies.pop(pid, None)
                last_rules[("policy", pid)] = (i, u)
                removed_rule_owners.discard(("policy", pid))
            case PolicyRemove(id=pid):
                policies.discard(pid)
                removed_policies[pid] = at(i, u)
                last_rules.pop(("policy", pid), None)
                removed_rule_owners.add(("policy", pid))
            case ProfileUpdate(id=pid):
                profiles.add(pid)
                removed_profiles.pop(pid, None)
                last_rules[("profile", pid)] = (i, u)
                removed_rule_owners.discard(("profile", pid))
            case ProfileRemove(id=pid):
                profiles.discard(pid)
                removed_profiles[pid] = at(i, u)
                last_rules.pop(("profile", pid), None)
                removed_rule_owners.add(("profile", pid))
            case WorkloadEndpointUpdate(id=eid):
                last_endpoints[("wep", eid)] = (i, u)
                removed_endpoints.discard(("wep", eid))
            case WorkloadEndpointRemove(id=eid):
                last_endpoints.pop(("wep", eid), None)
                removed_endpoints.add(("wep", eid))
            case HostEndpointUpdate(id=eid):
                last_endpoints[("hep", eid)] = (i, u)
                removed_endpoints.discard(("hep", eid))
            case HostEndpointRemove(id=eid):
                last_endpoints.pop(("hep", eid), None)
                removed_endpoints.add(("hep", eid))
            case _:
                pass

    # References made by the batch's own policies and profiles.
    for i, u in sorted(last_rules.values(), key=lambda x: x[0]):
        for rel, sid, named in _rule_refs(_update_rules(u)):
            t = ipsets.get(sid)
            if t is None:
                raise ValidationError(f"{at(i, u)}.{rel}", f"unknown IP set {sid!r}")
            if named and t is not IPSetType.IP_AND_PORT:
                raise ValidationError(
                    f"{at(i, u)}.{rel}", f"named-port reference to IP set {sid!r} of type {t.value}")

    # References made by the batch's endpoints.
    for i, u in sorted(last_endpoints.values(), key=lambda x: x[0]):
        ep = u.endpoint  # type: ignore[union-attr]
        for k, prof in enumerate(ep.profile_ids):
            if prof not in profiles:
                raise ValidationError(f"{at(i, u)}.profile_ids[{k}]", f"unknown profile {prof!r}")
        for name, tiers in _endpoint_tier_fields(u).items():
            for ti, tier in enumerate(tiers):
                for direction in ("ingress_policies", "egress_policies"):
                    for k, pname in enumerate(getattr(tier, direction)):
                        if PolicyID(tier.name, pname) not in policies:
                            raise ValidationError(
                                f"{at(i, u)}.{name}[{ti}].{direction}[{k}]",
                                f"unknown policy '{tier.name}/{pname}'")

    # Removals must not leave dangling references in what remains of the state.
    if removed_sets:
        owners: list[tuple[str, Update]] = []
        for pid, pol in state.policies.items():
            if ("policy", pid) not in last_rules and ("policy", pid) not in removed_rule_owners:
                owners.append((f"policy '{pid}'", PolicyUpdate(pid, pol)))
        for prid, prof in state.profiles.items():
            if ("profile", prid) not in last_rules and ("profile", prid) not in removed_rule_owners:
                owners.append((f"profile '{prid}'", prof))
        for what, u in owners:
            for _, sid, _named in _rule_refs(_update_rules(u)):
                if sid in removed_sets:
                    raise ValidationError(
                        f"{removed_sets[sid]}.id", f"IP set {sid!r} is still referenced by {what}")
    if removed_policies or removed_profiles:
        remaining: list[tuple[str, Any]] = []
        for eid, wep in state.workload_endpoints.items():
            if ("wep", eid) not in last_endpoints and ("wep", eid) not in removed_endpoints:
                remaining.append((f"workload endpoint {eid!r}", WorkloadEndpointUpdate(eid, wep)))
        for eid, hep in state.host_endpoints.items():
            if ("hep", eid) not in last_endpoints and ("hep", eid) not in removed_endpoints:
                remaining.append((f"host endpoint {eid!r}", HostEndpointUpdate(eid, hep)))
        for what, u in remaining:
            for prof in u.endpoint.profile_ids:
                if prof in removed_profiles:
                    raise ValidationError(
                        f"{removed_profiles[prof]}.id",
                        f"profile {prof!r} is still referenced by {what}")
            for tiers in _endpoint_tier_fields(u).values():
                for tier in tiers:
                    for pname in tier.ingress_policies + tier.egress_policies:
                        pid = PolicyID(tier.name, pname)
                        if pid in removed_policies:
                            raise ValidationError(
                                f"{removed_policies[pid]}.id",
                                f"policy '{pid}' is still referenced by {what}")
