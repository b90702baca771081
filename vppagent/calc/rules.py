"""Policy rules → rendered rules whose selectors are IP set ids.

This is where Calico's scoping rules live: a namespaced policy's rule
selectors only see its own namespace unless a ``namespaceSelector`` widens
them; namespace and service-account selectors read the ``pcns.``/``pcsa.``
labels every endpoint inherits from its profiles.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from vppagent.model.resources import (
    LABEL_NAMESPACE, LABEL_SERVICE_ACCOUNT, NAMESPACE_LABEL_PREFIX, SERVICE_ACCOUNT_LABEL_PREFIX,
    EntityRule, Rule,
)
from vppagent.model.updates import IPSetType, RenderedRule, RuleOrigin
from vppagent.selector import ALL, Selector, and_, parse, prefix_keys
from vppagent.selector.ast import Global, Has, In


@dataclass(frozen=True)
class IPSetSpec:
    """What an IP set contains; its id is a hash of this."""

    type: IPSetType
    selector: Selector | None = None
    named_port: tuple[int, str] | None = None     # (protocol, port name)
    service: tuple[str, str] | None = None         # (namespace, name) of a Service
    service_ports: bool = False                     # members carry the service's ports

    @property
    def id(self) -> str:
        if self.service is not None:
            text = f"svc:{self.service[0]}/{self.service[1]}:{int(self.service_ports)}"
            prefix = "v:"
        elif self.named_port is not None:
            text = f"{self.selector}|{self.named_port[0]}|{self.named_port[1]}"
            prefix = "n:"
        else:
            text = str(self.selector)
            prefix = "s:"
        return prefix + hashlib.sha224(text.encode()).hexdigest()[:20]


def _contains_global(selector: Selector) -> bool:
    if isinstance(selector, Global):
        return True
    return any(_contains_global(c) for c in selector.children())


def namespace_scope(namespace_selector: Selector) -> Selector:
    """A rule's namespaceSelector as a selector over endpoint labels."""
    prefixed = prefix_keys(namespace_selector, NAMESPACE_LABEL_PREFIX)
    if _contains_global(namespace_selector):
        return prefixed
    return and_(Has(LABEL_NAMESPACE), prefixed)


def own_namespace(namespace: str) -> Selector:
    return parse(f"{LABEL_NAMESPACE} == '{namespace}'")


def service_account_scope(match: "EntityRule") -> Selector | None:
    sa = match.service_accounts
    if sa is None:
        return None
    parts: list[Selector] = []
    if sa.names:
        parts.append(In(LABEL_SERVICE_ACCOUNT, frozenset(sa.names)))
    if sa.selector is not None:
        parts.append(prefix_keys(sa.selector, SERVICE_ACCOUNT_LABEL_PREFIX))
    return and_(*parts) if parts else None


@dataclass
class RenderedSide:
    nets: tuple = ()
    not_nets: tuple = ()
    ports: tuple = ()
    not_ports: tuple = ()
    named: tuple[str, ...] = ()
    not_named: tuple[str, ...] = ()
    sets: tuple[str, ...] = ()
    not_sets: tuple[str, ...] = ()


class RuleRenderer:
    """Renders rules and reports every IP set they need (``specs``)."""

    def __init__(self) -> None:
        self.specs: dict[str, IPSetSpec] = {}

    def _set(self, spec: IPSetSpec) -> str:
        sid = spec.id
        self.specs[sid] = spec
        return sid

    def _side(self, entity: EntityRule, namespace: str | None, protocol: int | None,
              is_destination: bool) -> RenderedSide:
        sa = service_account_scope(entity)
        scope: Selector | None = None
        if entity.namespace_selector is not None:
            scope = namespace_scope(entity.namespace_selector)
        elif namespace is not None:
            scope = own_namespace(namespace)
        needs_scope = (
            entity.selector is not None or entity.not_selector is not None
            or entity.namespace_selector is not None or sa is not None
        )
        positive: Selector | None = None
        negative: Selector | None = None
        parts = [s for s in (scope, entity.selector, sa) if s is not None]
        if needs_scope and parts:
            # A global rule with only notSelector has no positive set: it also
            # matches addresses that are not endpoints at all.
            positive = and_(*parts)
        if entity.not_selector is not None:
            negative = and_(*(s for s in (scope, entity.not_selector) if s is not None))
        sets: list[str] = []
        if positive is not None:
            sets.append(self._set(IPSetSpec(IPSetType.NET, positive)))
        if entity.services is not None:
            svc_ns = entity.services.namespace or namespace or "default"
            sets.append(self._set(IPSetSpec(
                IPSetType.IP_AND_PORT if is_destination else IPSetType.NET,
                service=(svc_ns, entity.services.name), service_ports=is_destination,
            )))
        not_sets = [self._set(IPSetSpec(IPSetType.NET, negative))] if negative is not None else []
        port_selector = positive if positive is not None else ALL
        named = tuple(
            self._set(IPSetSpec(IPSetType.IP_AND_PORT, port_selector, (protocol or 0, name)))
            for name in entity.ports.names
        )
        not_named = tuple(
            self._set(IPSetSpec(IPSetType.IP_AND_PORT, port_selector, (protocol or 0, name)))
            for name in entity.not_ports.names
        )
        return RenderedSide(
            nets=entity.nets, not_nets=entity.not_nets,
            ports=entity.ports.ranges, not_ports=entity.not_ports.ranges,
            named=named, not_named=not_named, sets=tuple(sets), not_sets=tuple(not_sets),
        )

    def render(self, rule: Rule, namespace: str | None, origin: RuleOrigin) -> RenderedRule:
        src = self._side(rule.source, namespace, rule.protocol, False)
        dst = self._side(rule.destination, namespace, rule.protocol, True)
        return RenderedRule(
            action=rule.action,
            origin=origin,
            ip_version=rule.ip_version,
            protocol=rule.protocol,
            not_protocol=rule.not_protocol,
            src_nets=src.nets, not_src_nets=src.not_nets,
            dst_nets=dst.nets, not_dst_nets=dst.not_nets,
            src_ports=src.ports, not_src_ports=src.not_ports,
            dst_ports=dst.ports, not_dst_ports=dst.not_ports,
            src_named_port_ip_set_ids=src.named, not_src_named_port_ip_set_ids=src.not_named,
            dst_named_port_ip_set_ids=dst.named, not_dst_named_port_ip_set_ids=dst.not_named,
            src_ip_set_ids=src.sets, not_src_ip_set_ids=src.not_sets,
            dst_ip_set_ids=dst.sets, not_dst_ip_set_ids=dst.not_sets,
            icmp_type=rule.icmp.type if rule.icmp else None,
            icmp_code=rule.icmp.code if rule.icmp else None,
            not_icmp_type=rule.not_icmp.type if rule.not_icmp else None,
            not_icmp_code=rule.not_icmp.code if rule.not_icmp else None,
        )

    def render_all(self, rules: tuple[Rule, ...], namespace: str | None, owner: str) -> tuple[RenderedRule, ...]:
        return tuple(self.render(r, namespace, RuleOrigin(owner, i)) for i, r in enumerate(rules))
