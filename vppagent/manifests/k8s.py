"""Kubernetes objects → canonical model, including NetworkPolicy → Calico policy.

Kubernetes objects carry many fields this agent does not use (container
images, probes, ...), so unknown keys are ignored here; only the fields we
read are validated.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

from vppagent.manifests.fields import (
    Fields, each_mapping, parse_address, parse_network, parse_port, parse_protocol,
)
from vppagent.model.errors import ValidationError
from vppagent.model.resources import (
    DEFAULT_TIER, K8S_NAMESPACE_NAME_LABEL, K8S_POLICY_ORDER, LABEL_NAMESPACE, LABEL_ORCHESTRATOR,
    LABEL_SERVICE_ACCOUNT, NAMESPACE_PROFILE_PREFIX, SERVICE_ACCOUNT_PROFILE_PREFIX, Action,
    Direction, EndpointAddress, EndpointPort, EndpointSlice, EntityRule, IPAddress, NamedPort,
    Namespace, Node, Policy, PortMatch, PortRange, Resource, Rule, Service, ServiceAccount,
    ServicePort, WorkloadEndpoint,
)
from vppagent.selector import ALL, Selector, SelectorError, and_, from_label_selector, parse

K8S_PODS: Selector = parse(f"{LABEL_ORCHESTRATOR} == 'k8s'")
K8S_POLICY_PREFIX = "knp.default."


def workload_interface_name(namespace: str, pod: str, prefix: str = "cali") -> str:
    """Stable host-side interface name (≤ 15 chars) for a pod, as Calico derives it."""
    digest = hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()
    return prefix + digest[: 15 - len(prefix)]


def label_selector(f: Fields, key: str) -> Selector | None:
    """A Kubernetes LabelSelector field; None when the field is absent."""
    if not f.has(key):
        return None
    sf = f.sub(key)
    try:
        return from_label_selector(
            sf.raw("matchLabels"), sf.raw("matchExpressions"), field=sf.path
        )
    except SelectorError as exc:
        raise ValidationError(sf.path, exc.reason) from None


def parse_namespace(meta: Fields, spec: Fields, status: Fields) -> Namespace:
    name = meta.str("name", required=True)
    labels = dict(meta.labels("labels"))
    labels.setdefault(K8S_NAMESPACE_NAME_LABEL, name)
    return Namespace(name, tuple(sorted(labels.items())))


def parse_service_account(meta: Fields, spec: Fields, status: Fields) -> ServiceAccount:
    return ServiceAccount(meta.str("namespace") or "default", meta.str("name", required=True),
                          meta.labels("labels"))


def _pod_ports(spec: Fields) -> tuple[NamedPort, ...]:
    ports: list[NamedPort] = []
    for cpath, container in spec.list("containers"):
        cf = Fields(container, cpath)
        for ppath, port in cf.list("ports"):
            pf = Fields(port, ppath)
            name = pf.str("name")
            number = pf.int("containerPort", lo=1, hi=65535)
            if name and number:
                ports.append(NamedPort(name, parse_protocol(pf.raw("protocol", "TCP"), pf.at("protocol")), number))
    return tuple(ports)


def parse_pod(meta: Fields, spec: Fields, status: Fields) -> WorkloadEndpoint | None:
    """A pod becomes a workload endpoint unless it uses the host's network or has finished."""
    if spec.bool("hostNetwork") or status.str("phase") in ("Succeeded", "Failed"):
        return None
    namespace = meta.str("namespace") or "default"
    name = meta.str("name", required=True)
    sa = spec.str("serviceAccountName") or spec.str("serviceAccount") or "default"
    ips = [parse_address(Fields(v, p).str("ip", required=True), p + ".ip") for p, v in status.list("podIPs")]
    if not ips and status.has("podIP"):
        ips.append(parse_address(status.str("podIP"), status.at("podIP")))
    labels = dict(meta.labels("labels"))
    labels.update({
        LABEL_NAMESPACE: namespace,
        LABEL_ORCHESTRATOR: "k8s",
        LABEL_SERVICE_ACCOUNT: sa,
    })
    return WorkloadEndpoint(
        namespace=namespace,
        pod=name,
        node=spec.str("nodeName"),
        interface_name=workload_interface_name(namespace, name),
        labels=tuple(sorted(labels.items())),
        profiles=(NAMESPACE_PROFILE_PREFIX + namespace, f"{SERVICE_ACCOUNT_PROFILE_PREFIX}{namespace}.{sa}"),
        nets=tuple(parse_network(str(ip), "status.podIPs") for ip in ips),
        ports=_pod_ports(spec),
        service_account=sa,
        annotations=meta.labels("annotations"),
    )


# --- NetworkPolicy conversion -------------------------------------------------

def _peer_entity(pf: Fields) -> EntityRule:
    if pf.has("ipBlock"):
        bf = pf.sub("ipBlock")
        cidr = parse_network(bf.str("cidr", required=True), bf.at("cidr"))
        excepts = []
        for p, v in bf.list("except"):
            net = parse_network(v, p)
            if net.version != cidr.version or not net.subnet_of(cidr):  # type: ignore[arg-type]
                raise ValidationError(p, f"{net} is not inside ipBlock cidr {cidr}")
            excepts.append(net)
        if pf.has("podSelector") or pf.has("namespaceSelector"):
            raise ValidationError(pf.at("ipBlock"), "ipBlock cannot be combined with podSelector or namespaceSelector")
        return EntityRule(nets=(cidr,), not_nets=tuple(excepts))
    pod_sel = label_selector(pf, "podSelector")
    ns_sel = label_selector(pf, "namespaceSelector")
    if pod_sel is None and ns_sel is None:
        raise ValidationError(pf.path, "a peer needs podSelector, namespaceSelector or ipBlock")
    return EntityRule(selector=and_(K8S_PODS, pod_sel or ALL), namespace_selector=ns_sel)


def _port_groups(items: list[tuple[str, Any]]) -> list[tuple[int | None, PortMatch]]:
    """Ports grouped by protocol, in first-seen order; [(None, all)] when no ports."""
    if not items:
        return [(None, PortMatch())]
    groups: dict[int, tuple[list[PortRange], list[str]]] = {}
    for path, item in items:
        pf = Fields(item, path)
        proto = parse_protocol(pf.raw("protocol", "TCP"), pf.at("protocol"))
        ranges, names = groups.setdefault(proto, ([], []))
        if not pf.has("port"):
            if pf.has("endPort"):
                raise ValidationError(pf.at("endPort"), "endPort needs port")
            ranges.append(PortRange(0, 65535))
            continue
        port = parse_port(pf.raw("port"), pf.at("port"))
        end = pf.int("endPort", lo=1, hi=65535)
        if isinstance(port, str):
            if end is not None:
                raise ValidationError(pf.at("endPort"), "endPort cannot be used with a named port")
            names.append(port)
        elif end is not None:
            if port.first != port.last or end < port.first:
                raise ValidationError(pf.at("endPort"), f"endPort {end} must be >= port {port.first}")
            ranges.append(PortRange(port.first, end))
        else:
            ranges.append(port)
    out = []
    for proto, (ranges, names) in groups.items():
        if PortRange(0, 65535) in ranges:  # a protocol entry without port opens all of its ports
            out.append((proto, PortMatch()))
        else:
            out.append((proto, PortMatch(tuple(ranges), tuple(names))))
    return out


def _convert_rules(f: Fields, key: str, peer_key: str, direction: Direction) -> tuple[Rule, ...]:
    rules: list[Rule] = []
    for rpath, item in f.list(key):
        rf = Fields(item, rpath)
        peers = rf.list(peer_key)
        entities = [_peer_entity(Fields(v, p)) for p, v in peers] or [EntityRule()]
        groups = _port_groups(rf.list("ports"))
        for entity in entities:
            for proto, ports in groups:
                dst_ports = EntityRule(ports=ports)
                if direction is Direction.INGRESS:
                    src, dst = entity, dst_ports
                else:
                    src, dst = EntityRule(), _with_ports(entity, ports)
                rules.append(Rule(Action.ALLOW, protocol=proto, source=src, destination=dst))
    return tuple(rules)


def _with_ports(entity: EntityRule, ports: PortMatch) -> EntityRule:
    return EntityRule(
        nets=entity.nets, not_nets=entity.not_nets, selector=entity.selector,
        namespace_selector=entity.namespace_selector, ports=ports,
    )


def parse_network_policy(meta: Fields, spec: Fields, status: Fields) -> Policy:
    name = meta.str("name", required=True)
    pod_sel = label_selector(spec, "podSelector")
    if pod_sel is None:
        raise ValidationError(spec.at("podSelector"), "required field is missing")
    ingress = _convert_rules(spec, "ingress", "from", Direction.INGRESS)
    egress = _convert_rules(spec, "egress", "to", Direction.EGRESS)
    if spec.has("policyTypes"):
        types = set()
        for i, t in enumerate(spec.str_list("policyTypes")):
            if t not in ("Ingress", "Egress"):
                raise ValidationError(f"{spec.at('policyTypes')}[{i}]", f"invalid policy type {t!r} (expected Ingress or Egress)")
            types.add(Direction(t))
    else:
        types = {Direction.INGRESS}
        if spec.has("egress"):
            types.add(Direction.EGRESS)
    return Policy(
        name=K8S_POLICY_PREFIX + name,
        namespace=meta.str("namespace") or "default",
        tier=DEFAULT_TIER,
        order=K8S_POLICY_ORDER,
        selector=and_(K8S_PODS, pod_sel),
        types=frozenset(types),
        ingress=ingress if Direction.INGRESS in types else (),
        egress=egress if Direction.EGRESS in types else (),
    )


# --- Services ------------------------------------------------------------------

def _addresses(items: list[tuple[str, Any]]) -> tuple[IPAddress, ...]:
    return tuple(parse_address(v, p) for p, v in items)


def parse_service(meta: Fields, spec: Fields, status: Fields) -> Service:
    svc_type = spec.str("type") or "ClusterIP"
    if svc_type not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        raise ValidationError(spec.at("type"), f"invalid service type {svc_type!r}")
    cluster_ips: tuple[IPAddress, ...] = ()
    if spec.has("clusterIPs"):
        texts = [(p, v) for p, v in spec.list("clusterIPs") if v != "None"]
        cluster_ips = _addresses(texts)
    elif spec.has("clusterIP") and spec.str("clusterIP") not in ("", "None"):
        cluster_ips = (parse_address(spec.str("clusterIP"), spec.at("clusterIP")),)

    def port(pf: Fields) -> ServicePort:
        number = pf.int("port", lo=1, hi=65535)
        if number is None:
            raise ValidationError(pf.at("port"), "required field is missing")
        target = pf.raw("targetPort", number)
        if isinstance(target, str):
            tp = parse_port(target, pf.at("targetPort"))
            target = tp if isinstance(tp, str) else tp.first
        elif isinstance(target, bool) or not isinstance(target, int) or not 1 <= target <= 65535:
            raise ValidationError(pf.at("targetPort"), f"invalid targetPort {target!r}")
        return ServicePort(
            name=pf.str("name"),
            protocol=parse_protocol(pf.raw("protocol", "TCP"), pf.at("protocol")),
            port=number,
            target_port=target,
            node_port=pf.int("nodePort", lo=1, hi=65535),
        )

    ports = each_mapping(spec.list("ports"), port)
    lb = status.sub("loadBalancer")
    lb_ips = tuple(
        parse_address(Fields(v, p).str("ip"), p + ".ip") for p, v in lb.list("ingress") if Fields(v, p).str("ip")
    )
    affinity = spec.str("sessionAffinity") or "None"
    if affinity not in ("None", "ClientIP"):
        raise ValidationError(spec.at("sessionAffinity"), f"invalid sessionAffinity {affinity!r} (expected None or ClientIP)")
    timeout = spec.sub("sessionAffinityConfig").sub("clientIP").int("timeoutSeconds", 10800, lo=1, hi=86400)
    policies = {}
    for key in ("externalTrafficPolicy", "internalTrafficPolicy"):
        value = spec.str(key) or "Cluster"
        if value not in ("Cluster", "Local"):
            raise ValidationError(spec.at(key), f"invalid {key} {value!r} (expected Cluster or Local)")
        policies[key] = value == "Local"
    return Service(
        namespace=meta.str("namespace") or "default",
        name=meta.str("name", required=True),
        type=svc_type,
        cluster_ips=cluster_ips,
        ports=ports,
        external_ips=_addresses(spec.list("externalIPs")),
        load_balancer_ips=lb_ips,
        session_affinity=affinity == "ClientIP",
        affinity_timeout=timeout or 10800,
        external_traffic_local=policies["externalTrafficPolicy"],
        internal_traffic_local=policies["internalTrafficPolicy"],
        selector=spec.labels("selector"),
    )


def parse_endpoint_slice(meta: Fields, spec: Fields, status: Fields) -> EndpointSlice:
    # EndpointSlice keeps its payload at top level; the loader passes the whole object as ``spec``.
    service = dict(meta.labels("labels")).get("kubernetes.io/service-name", "")
    if not service:
        raise ValidationError(meta.at("labels"), "an EndpointSlice needs the label kubernetes.io/service-name")
    address_type = spec.str("addressType") or "IPv4"
    if address_type not in ("IPv4", "IPv6", "FQDN"):
        raise ValidationError(spec.at("addressType"), f"invalid addressType {address_type!r}")

    def endpoint(ef: Fields) -> EndpointAddress:
        cond = ef.sub("conditions")
        ready = cond.bool("ready", True)
        target = ef.sub("targetRef")
        addrs = _addresses(ef.list("addresses")) if address_type != "FQDN" else ()
        return EndpointAddress(
            addresses=addrs,
            ready=ready,
            serving=cond.bool("serving", ready),
            terminating=cond.bool("terminating", False),
            node=ef.str("nodeName"),
            target=f"{target.str('namespace')}/{target.str('name')}" if target.has("name") else "",
        )

    def port(pf: Fields) -> EndpointPort:
        number = pf.int("port", lo=1, hi=65535)
        if number is None:
            raise ValidationError(pf.at("port"), "required field is missing")
        return EndpointPort(pf.str("name"), parse_protocol(pf.raw("protocol", "TCP"), pf.at("protocol")), number)

    return EndpointSlice(
        namespace=meta.str("namespace") or "default",
        name=meta.str("name", required=True),
        service=service,
        address_type=address_type,
        endpoints=each_mapping(spec.list("endpoints"), endpoint),
        ports=each_mapping(spec.list("ports"), port),
    )


def parse_node(meta: Fields, spec: Fields, status: Fields) -> Node:
    addrs = []
    for p, v in status.list("addresses"):
        af = Fields(v, p)
        if af.str("type") in ("InternalIP", "ExternalIP"):
            addrs.append(parse_address(af.str("address", required=True), af.at("address")))
    cidrs = [parse_network(v, p) for p, v in spec.list("podCIDRs")]
    return Node(meta.str("name", required=True), tuple(addrs), meta.labels("labels"), tuple(cidrs))


K8sParser = Callable[[Fields, Fields, Fields], "Resource | None"]

K8S_KINDS: dict[tuple[str, str], K8sParser] = {
    ("v1", "Namespace"): parse_namespace,
    ("v1", "Pod"): parse_pod,
    ("v1", "ServiceAccount"): parse_service_account,
    ("v1", "Service"): parse_service,
    ("v1", "Node"): parse_node,
    ("networking.k8s.io/v1", "NetworkPolicy"): parse_network_policy,
    ("discovery.k8s.io/v1", "EndpointSlice"): parse_endpoint_slice,
}
