"""projectcalico.org/v3 resources → canonical model."""

from __future__ import annotations

from typing import Callable

from vppagent.manifests.fields import (
    Fields, each_mapping, parse_address, parse_network, parse_port, parse_ports, parse_protocol,
)
from vppagent.model.errors import ValidationError
from vppagent.model.resources import (
    DEFAULT_TIER, DEFAULT_TIER_ORDER, ICMP_PROTOCOLS, PORT_PROTOCOLS, Action, BlockAffinity, Direction,
    EntityRule, HostEndpoint, ICMPMatch, IPNetwork, IPPool, NamedPort, NetworkSet, Policy,
    Profile, Resource, Rule, ServiceAccountMatch, ServiceMatch, Tier, TierDefault, WorkloadEndpoint,
)
from vppagent.selector import ALL

_ACTIONS = {a.value.lower(): a for a in Action}


def parse_icmp(f: Fields, protocol: int | None) -> ICMPMatch:
    icmp_type = f.int("type", lo=0, hi=254)
    code = f.int("code", lo=0, hi=255)
    f.check_unknown()
    if icmp_type is None:
        if code is not None:
            raise ValidationError(f.at("code"), "an ICMP code needs a type")
        raise ValidationError(f.at("type"), "required field is missing")
    if protocol not in ICMP_PROTOCOLS:
        raise ValidationError(f.path, "ICMP matches need protocol ICMP or ICMPv6")
    return ICMPMatch(icmp_type, code)


def parse_entity(f: Fields, protocol: int | None, ip_version: int | None) -> EntityRule:
    nets = tuple(parse_network(v, p) for p, v in f.list("nets"))
    nets += tuple(parse_network(f.raw("net"), f.at("net")) for _ in [0] if f.has("net"))
    not_nets = tuple(parse_network(v, p) for p, v in f.list("notNets"))
    not_nets += tuple(parse_network(f.raw("notNet"), f.at("notNet")) for _ in [0] if f.has("notNet"))
    if ip_version is not None:
        for key, group in (("nets", nets), ("notNets", not_nets)):
            for i, net in enumerate(group):
                if net.version != ip_version:
                    raise ValidationError(f"{f.at(key)}[{i}]", f"{net} is not IPv{ip_version} (rule ipVersion)")
    ports = parse_ports(f.list("ports"))
    not_ports = parse_ports(f.list("notPorts"))
    if (ports or not_ports) and protocol not in PORT_PROTOCOLS:
        key = "ports" if ports else "notPorts"
        raise ValidationError(f.at(key), "ports need protocol TCP, UDP, SCTP or UDPLite")
    sa = None
    if f.has("serviceAccounts"):
        saf = f.sub("serviceAccounts", strict=True)
        sa = ServiceAccountMatch(saf.str_list("names"), saf.selector("selector"))
        saf.check_unknown()
    svc = None
    if f.has("services"):
        sf = f.sub("services", strict=True)
        svc = ServiceMatch(sf.str("name", required=True), sf.str("namespace", required=False))
        sf.check_unknown()
    entity = EntityRule(
        nets=nets,
        not_nets=not_nets,
        selector=f.selector("selector"),
        not_selector=f.selector("notSelector"),
        namespace_selector=f.selector("namespaceSelector"),
        service_accounts=sa,
        services=svc,
        ports=ports,
        not_ports=not_ports,
    )
    f.check_unknown()
    return entity


def parse_rule(f: Fields) -> Rule:
    action_text = f.str("action", required=True)
    action = _ACTIONS.get(action_text.lower())
    if action is None:
        raise ValidationError(f.at("action"), f"invalid action {action_text!r} (expected Allow, Deny, Log or Pass)")
    ip_version = f.int("ipVersion")
    if ip_version not in (None, 4, 6):
        raise ValidationError(f.at("ipVersion"), f"ipVersion must be 4 or 6, got {ip_version}")
    protocol = parse_protocol(f.raw("protocol"), f.at("protocol")) if f.has("protocol") else None
    not_protocol = parse_protocol(f.raw("notProtocol"), f.at("notProtocol")) if f.has("notProtocol") else None
    icmp = parse_icmp(f.sub("icmp", strict=True), protocol) if f.has("icmp") else None
    not_icmp = parse_icmp(f.sub("notICMP", strict=True), protocol) if f.has("notICMP") else None
    if protocol == 1 and ip_version == 6 or protocol == 58 and ip_version == 4:
        raise ValidationError(f.at("protocol"), "protocol does not match ipVersion")
    source = parse_entity(f.sub("source", strict=True), protocol, ip_version)
    destination = parse_entity(f.sub("destination", strict=True), protocol, ip_version)
    f.raw("metadata")
    f.raw("http")
    if f.has("http"):
        raise ValidationError(f.at("http"), "HTTP matches need an application layer proxy, which this agent does not run")
    f.check_unknown()
    return Rule(action, ip_version, protocol, not_protocol, icmp, not_icmp, source, destination)


def parse_rules(f: Fields, key: str) -> tuple[Rule, ...]:
    return each_mapping(f.list(key), parse_rule, strict=True)


def _types(spec: Fields, ingress: tuple[Rule, ...], egress: tuple[Rule, ...]) -> frozenset[Direction]:
    names = spec.str_list("types")
    if not spec.has("types"):
        # Calico's documented default: Egress alone when only egress rules are present.
        if egress and not ingress:
            return frozenset({Direction.EGRESS})
        if egress:
            return frozenset({Direction.INGRESS, Direction.EGRESS})
        return frozenset({Direction.INGRESS})
    out = set()
    for i, name in enumerate(names):
        try:
            out.add(Direction(name.capitalize()))
        except ValueError:
            raise ValidationError(f"{spec.at('types')}[{i}]", f"invalid type {name!r} (expected Ingress or Egress)") from None
    return frozenset(out)


def parse_policy(meta: Fields, spec: Fields, *, namespaced: bool) -> Policy:
    name = meta.str("name", required=True)
    namespace = (meta.str("namespace") or "default") if namespaced else None
    ingress = parse_rules(spec, "ingress")
    egress = parse_rules(spec, "egress")
    types = _types(spec, ingress, egress)
    policy = Policy(
        name=name,
        namespace=namespace,
        tier=spec.str("tier") or DEFAULT_TIER,
        order=spec.number("order"),
        selector=spec.selector("selector") or ALL,
        namespace_selector=spec.selector("namespaceSelector") if not namespaced else None,
        service_account_selector=spec.selector("serviceAccountSelector"),
        types=types,
        ingress=ingress,
        egress=egress,
        do_not_track=spec.bool("doNotTrack"),
        pre_dnat=spec.bool("preDNAT"),
        apply_on_forward=spec.bool("applyOnForward"),
    )
    spec.raw("performanceHints")
    if namespaced and spec.has("namespaceSelector"):
        raise ValidationError(spec.at("namespaceSelector"), "only GlobalNetworkPolicy has a namespaceSelector")
    if policy.do_not_track and policy.pre_dnat:
        raise ValidationError(spec.at("preDNAT"), "preDNAT and doNotTrack cannot both be set")
    if policy.pre_dnat and policy.egress:
        raise ValidationError(spec.at("egress"), "preDNAT policies have no egress rules")
    if (policy.do_not_track or policy.pre_dnat) and not policy.apply_on_forward:
        raise ValidationError(spec.at("applyOnForward"), "doNotTrack and preDNAT policies need applyOnForward: true")
    spec.check_unknown()
    return policy


def parse_tier(meta: Fields, spec: Fields) -> Tier:
    name = meta.str("name", required=True)
    default = spec.str("defaultAction") or "Deny"
    try:
        action = TierDefault(default.capitalize())
    except ValueError:
        raise ValidationError(spec.at("defaultAction"), f"invalid defaultAction {default!r} (expected Deny or Pass)") from None
    order = spec.number("order")
    if name == DEFAULT_TIER and order is None:
        order = DEFAULT_TIER_ORDER
    spec.check_unknown()
    return Tier(name, order, action)


def parse_profile(meta: Fields, spec: Fields) -> Profile:
    profile = Profile(
        name=meta.str("name", required=True),
        ingress=parse_rules(spec, "ingress"),
        egress=parse_rules(spec, "egress"),
        labels_to_apply=spec.labels("labelToApply") + spec.labels("labelsToApply"),
    )
    spec.check_unknown()
    return profile


def parse_named_ports(f: Fields, key: str) -> tuple[NamedPort, ...]:
    def one(pf: Fields) -> NamedPort:
        proto = parse_protocol(pf.raw("protocol", "TCP"), pf.at("protocol"))
        port = pf.int("port", lo=1, hi=65535)
        if port is None:
            raise ValidationError(pf.at("port"), "required field is missing")
        return NamedPort(pf.str("name", required=True), proto, port)

    return each_mapping(f.list(key), one)


def parse_workload_endpoint(meta: Fields, spec: Fields) -> WorkloadEndpoint:
    nets: list[IPNetwork] = []
    for key in ("ipNetworks",):
        nets.extend(parse_network(v, p) for p, v in spec.list(key))
    namespace = meta.str("namespace") or "default"
    pod = spec.str("pod") or spec.str("workload") or meta.str("name", required=True)
    return WorkloadEndpoint(
        namespace=namespace,
        pod=pod,
        node=spec.str("node"),
        endpoint=spec.str("endpoint") or "eth0",
        orchestrator=spec.str("orchestrator") or "k8s",
        interface_name=spec.str("interfaceName"),
        mac=spec.str("mac"),
        labels=meta.labels("labels"),
        profiles=spec.str_list("profiles"),
        nets=tuple(nets),
        ports=parse_named_ports(spec, "ports"),
        service_account=spec.str("serviceAccountName"),
    )


def parse_host_endpoint(meta: Fields, spec: Fields) -> HostEndpoint:
    hep = HostEndpoint(
        name=meta.str("name", required=True),
        node=spec.str("node"),
        interface_name=spec.str("interfaceName"),
        expected_ips=tuple(parse_address(v, p) for p, v in spec.list("expectedIPs")),
        labels=meta.labels("labels"),
        profiles=spec.str_list("profiles"),
        ports=parse_named_ports(spec, "ports"),
    )
    if not hep.interface_name and not hep.expected_ips:
        raise ValidationError(spec.path, "a HostEndpoint needs interfaceName or expectedIPs")
    spec.check_unknown()
    return hep


def parse_network_set(meta: Fields, spec: Fields, *, namespaced: bool) -> NetworkSet:
    ns = NetworkSet(
        name=meta.str("name", required=True),
        namespace=(meta.str("namespace") or "default") if namespaced else None,
        labels=meta.labels("labels"),
        nets=tuple(parse_network(v, p) for p, v in spec.list("nets")),
    )
    spec.check_unknown()
    return ns


def parse_ip_pool(meta: Fields, spec: Fields) -> IPPool:
    cidr = parse_network(spec.str("cidr", required=True), spec.at("cidr"))
    default_block = 26 if cidr.version == 4 else 122
    block = spec.int("blockSize", default_block)
    assert block is not None
    if block < cidr.prefixlen or block > cidr.max_prefixlen:
        raise ValidationError(spec.at("blockSize"), f"blockSize {block} must be between {cidr.prefixlen} and {cidr.max_prefixlen}")
    modes = {}
    for key in ("ipipMode", "vxlanMode"):
        mode = spec.str(key) or "Never"
        if mode not in ("Never", "Always", "CrossSubnet"):
            raise ValidationError(spec.at(key), f"invalid {key} {mode!r} (expected Never, Always or CrossSubnet)")
        modes[key] = mode
    pool = IPPool(
        name=meta.str("name", required=True),
        cidr=cidr,
        block_size=block,
        nat_outgoing=spec.bool("natOutgoing"),
        disabled=spec.bool("disabled"),
        node_selector=spec.selector("nodeSelector") or ALL,
        ipip_mode=modes["ipipMode"],
        vxlan_mode=modes["vxlanMode"],
    )
    spec.raw("allowedUses")
    spec.raw("disableBGPExport")
    spec.raw("assignmentMode")
    spec.check_unknown()
    return pool


def parse_block_affinity(meta: Fields, spec: Fields) -> BlockAffinity:
    """A node's claim on an IPAM block (Calico's BlockAffinity): drives routes to that node."""
    cidr = parse_network(spec.str("cidr", required=True), spec.at("cidr"))
    node = spec.str("node", required=True)
    state = spec.str("state") or "confirmed"
    if state not in ("confirmed", "pending", "pendingDeletion"):
        raise ValidationError(spec.at("state"), f"invalid state {state!r} (expected confirmed, pending or pendingDeletion)")
    spec.raw("deleted")
    spec.check_unknown()
    meta.str("name")
    return BlockAffinity(cidr=cidr, node=node)


CalicoParser = Callable[[Fields, Fields], Resource]

CALICO_KINDS: dict[str, CalicoParser] = {
    "NetworkPolicy": lambda m, s: parse_policy(m, s, namespaced=True),
    "GlobalNetworkPolicy": lambda m, s: parse_policy(m, s, namespaced=False),
    "Tier": parse_tier,
    "Profile": parse_profile,
    "WorkloadEndpoint": parse_workload_endpoint,
    "HostEndpoint": parse_host_endpoint,
    "NetworkSet": lambda m, s: parse_network_set(m, s, namespaced=True),
    "GlobalNetworkSet": lambda m, s: parse_network_set(m, s, namespaced=False),
    "IPPool": parse_ip_pool,
    "BlockAffinity": parse_block_affinity,
}

# Which spec fields reject unknown keys: user-written policy must not silently lose a typo.
STRICT_SPEC_KINDS = frozenset(CALICO_KINDS) - {"WorkloadEndpoint"}

__all__ = ["CALICO_KINDS", "STRICT_SPEC_KINDS", "parse_rule", "parse_port"]
_ = parse_port
