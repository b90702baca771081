"""The ``cni.CniDataplane`` gRPC service (Calico-compatible Add/Del plus Check).

Converts between the wire messages of ``proto/cni/cnibackend.proto`` and the
dataclasses of :mod:`vppagent.api.backend`, validating on the way in: a bad
request is answered ``INVALID_ARGUMENT`` with the field named
(``container_ips[1].address: invalid address '10.0.0.300/32'``) and never
reaches the backend.

Container identity: Calico's CNI plugin does not send the container id, our
plugin sets ``container_id`` (field 100) or ``dataplane_options["container_id"]``.
With ``require_container_id=False`` (serving Calico's plugin) a missing id
falls back to the netns path, which is unique per pod sandbox.

An ``AddRequest`` without ``container_ips`` lets the agent's IPAM choose; the
reply's extension fields ``assigned_ips``/``host_mac`` come from the backend's
result when it carries ``ips`` (``CniIP``s) and ``host_mac`` attributes (see
``vppagent.agent.workloads.CniAddOutcome``).

The ``*_to_proto`` helpers are for clients (tests; the ``vppagent-cni`` plugin
encodes its few messages itself to start fast).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from typing import Any, Mapping

import grpc

from vppagent.api import gen_modules
from vppagent.api.backend import (
    AgentBackend, CniAddRequest, CniAddResult, CniCheckRequest, CniDelRequest, CniError, CniIP,
    CniPort, CniWorkload,
)
from vppagent.model.errors import ValidationError
from vppagent.model.resources import PROTOCOL_NAMES, PROTOCOL_NUMBERS

log = logging.getLogger(__name__)

_g = gen_modules()
cni_pb2 = _g.cnibackend_pb2
cni_pb2_grpc = _g.cnibackend_pb2_grpc

__all__ = [
    "CniService", "add_request_from_proto", "add_request_to_proto", "del_request_from_proto",
    "del_request_to_proto", "check_request_from_proto", "check_request_to_proto",
    "CONTAINER_ID_OPTION",
]

CONTAINER_ID_OPTION = "container_id"
_CONTAINER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_IFNAME_BAD = re.compile(r"[\s/:\x00-\x1f\x7f]")
_NIL = ("", "<nil>")  # Go's net.IP(nil).String() is "<nil>"


# ---------------------------------------------------------------- validators

def _ifname(value: str, path: str, required: bool = True) -> str:
    if not value:
        if required:
            raise ValidationError(path, "interface name is required")
        return ""
    if len(value) > 15 or value in (".", "..") or _IFNAME_BAD.search(value):
        raise ValidationError(
            path, f"invalid interface name {value!r} (at most 15 characters, no '/', ':' or whitespace)")
    return value


def _container_id(msg: Any, require: bool) -> str:
    cid = msg.container_id or msg.dataplane_options.get(CONTAINER_ID_OPTION, "")
    if not cid:
        if require or not msg.netns:
            raise ValidationError("container_id", "container id is required")
        return msg.netns
    if not _CONTAINER_ID_RE.match(cid):
        raise ValidationError("container_id", f"invalid container id {cid!r}")
    return cid


def _netns(value: str, path: str, required: bool) -> str:
    if not value:
        if required:
            raise ValidationError(path, "network namespace is required")
        return ""
    if "\x00" in value:
        raise ValidationError(path, "invalid network namespace path")
    return value


def _options(m: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(m.items()))


def _protocol(value: str, path: str) -> int:
    v = value.strip()
    if not v:
        return 6  # Kubernetes default
    if v.isdigit() and int(v) <= 255:
        return int(v)
    n = PROTOCOL_NUMBERS.get(v.upper())
    if n is None:
        raise ValidationError(path, f"unknown protocol {value!r}")
    return n


def _port(value: int, path: str) -> int:
    if not 0 <= value <= 65535:
        raise ValidationError(path, f"port {value} out of range 0-65535")
    return value


def _ip_config(m: Any, path: str) -> CniIP:
    try:
        addr = ipaddress.ip_interface(m.address)
    except ValueError:
        raise ValidationError(f"{path}.address", f"invalid address {m.address!r}") from None
    gw = None
    if m.gateway not in _NIL:
        try:
            gw = ipaddress.ip_address(m.gateway)
        except ValueError:
            raise ValidationError(f"{path}.gateway", f"invalid gateway {m.gateway!r}") from None
        if gw.version != addr.version:
            raise ValidationError(f"{path}.gateway", f"gateway {gw} is not IPv{addr.version}")
    return CniIP(addr, gw)


def _ip_config_to_proto(ip: CniIP) -> Any:
    return cni_pb2.IPConfig(address=str(ip.address), gateway="" if ip.gateway is None else str(ip.gateway))


def _workload(m: Any, path: str) -> CniWorkload:
    ports = []
    for i, p in enumerate(m.ports):
        pp = f"{path}.ports[{i}]"
        host_ip = None
        if p.host_ip not in _NIL:
            try:
                host_ip = ipaddress.ip_address(p.host_ip)
            except ValueError:
                raise ValidationError(f"{pp}.host_ip", f"invalid IP address {p.host_ip!r}") from None
        ports.append(CniPort(
            name=p.name, protocol=_protocol(p.protocol, f"{pp}.protocol"),
            port=_port(p.port, f"{pp}.port"), host_port=_port(p.host_port, f"{pp}.host_port"),
            host_ip=host_ip,
        ))
    return CniWorkload(
        name=m.name, namespace=m.namespace, labels=_options(m.labels),
        annotations=_options(m.annotations), endpoint=m.endpoint, node=m.node,
        orchestrator=m.orchestrator, pod=m.pod, ports=tuple(ports),
    )


# ---------------------------------------------------------------- conversions

def add_request_from_proto(m: Any, require_container_id: bool = True) -> CniAddRequest:
    """Validate an ``AddRequest``; raises ValidationError naming the field."""
    cid = _container_id(m, require_container_id)
    netns = _netns(m.netns, "netns", required=True)
    ifname = _ifname(m.interface_name, "interface_name")
    host_if = _ifname(m.desired_host_interface_name, "desired_host_interface_name", required=False)
    mtu = m.settings.mtu
    if mtu and not 68 <= mtu <= 65535:
        raise ValidationError("settings.mtu", f"MTU {mtu} out of range 68-65535")
    # No container_ips: the agent's IPAM assigns (our plugin); Calico's always sends them.
    ips = tuple(_ip_config(ip, f"container_ips[{i}]") for i, ip in enumerate(m.container_ips))
    routes = []
    for i, r in enumerate(m.container_routes):
        try:
            routes.append(ipaddress.ip_network(r, strict=True))
        except ValueError:
            raise ValidationError(f"container_routes[{i}]", f"invalid route {r!r}") from None
    return CniAddRequest(
        container_id=cid, netns=netns, interface_name=ifname, host_interface_name=host_if,
        mtu=max(mtu, 0), allow_ip_forwarding=m.settings.allow_ip_forwarding, ips=ips,
        routes=tuple(routes), workload=_workload(m.workload, "workload"),
        dataplane_options=_options(m.dataplane_options),
    )


def add_request_to_proto(r: CniAddRequest) -> Any:
    m = cni_pb2.AddRequest(
        interface_name=r.interface_name, netns=r.netns,
        desired_host_interface_name=r.host_interface_name,
        container_ips=[_ip_config_to_proto(ip) for ip in r.ips],
        container_routes=[str(n) for n in r.routes],
        dataplane_options=dict(r.dataplane_options),
        container_id=r.container_id,
    )
    m.settings.mtu = r.mtu
    m.settings.allow_ip_forwarding = r.allow_ip_forwarding
    w = r.workload
    m.workload.name = w.name
    m.workload.namespace = w.namespace
    m.workload.labels.update(dict(w.labels))
    m.workload.annotations.update(dict(w.annotations))
    m.workload.endpoint = w.endpoint
    m.workload.node = w.node
    m.workload.orchestrator = w.orchestrator
    m.workload.pod = w.pod
    for p in w.ports:
        m.workload.ports.add(
            name=p.name, protocol=PROTOCOL_NAMES.get(p.protocol, str(p.protocol)), port=p.port,
            host_port=p.host_port, host_ip="" if p.host_ip is None else str(p.host_ip),
        )
    return m


def _del_like_from_proto(m: Any, cls: type, require_container_id: bool, netns_required: bool) -> Any:
    cid = _container_id(m, require_container_id)
    return cls(
        container_id=cid,
        netns=_netns(m.netns, "netns", required=netns_required),
        interface_name=_ifname(m.interface_name, "interface_name"),
        dataplane_options=_options(m.dataplane_options),
    )


def del_request_from_proto(m: Any, require_container_id: bool = True) -> CniDelRequest:
    """Validate a ``DelRequest``; netns may be empty (CNI DEL after the netns is gone)."""
    return _del_like_from_proto(m, CniDelRequest, require_container_id, netns_required=False)


def check_request_from_proto(m: Any, require_container_id: bool = True) -> CniCheckRequest:
    return _del_like_from_proto(m, CniCheckRequest, require_container_id, netns_required=True)


def del_request_to_proto(r: CniDelRequest) -> Any:
    return cni_pb2.DelRequest(
        interface_name=r.interface_name, netns=r.netns, dataplane_options=dict(r.dataplane_options),
        container_id=r.container_id,
    )


def check_request_to_proto(r: CniCheckRequest) -> Any:
    return cni_pb2.CheckRequest(
        interface_name=r.interface_name, netns=r.netns, dataplane_options=dict(r.dataplane_options),
        container_id=r.container_id,
    )


# ---------------------------------------------------------------- service

class CniService(cni_pb2_grpc.CniDataplaneServicer):
    """``cni.CniDataplane`` on top of an :class:`AgentBackend`."""

    def __init__(self, backend: AgentBackend, require_container_id: bool = True) -> None:
        self.backend = backend
        self.require_container_id = require_container_id

    def _invalid(self, context: grpc.ServicerContext, exc: ValidationError) -> None:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    def Add(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            req = add_request_from_proto(request, self.require_container_id)
        except ValidationError as exc:
            self._invalid(context, exc)
        try:
            result: CniAddResult = self.backend.cni_add(req)
        except ValidationError as exc:
            self._invalid(context, exc)
        except CniError as exc:
            log.warning("CNI add %s failed: %s", req.container_id, exc)
            return cni_pb2.AddReply(successful=False, error_message=str(exc))
        except Exception as exc:  # noqa: BLE001 - reported to the CNI plugin
            log.exception("CNI add %s failed", req.container_id)
            return cni_pb2.AddReply(successful=False, error_message=f"internal error: {exc}")
        return cni_pb2.AddReply(
            successful=True, host_interface_name=result.host_interface_name,
            container_mac=result.container_mac,
            assigned_ips=[_ip_config_to_proto(ip) for ip in getattr(result, "ips", ())],
            host_mac=getattr(result, "host_mac", ""),
        )

    def Del(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            req = del_request_from_proto(request, self.require_container_id)
        except ValidationError as exc:
            self._invalid(context, exc)
        try:
            self.backend.cni_del(req)
        except ValidationError as exc:
            self._invalid(context, exc)
        except CniError as exc:
            log.warning("CNI del %s failed: %s", req.container_id, exc)
            return cni_pb2.DelReply(successful=False, error_message=str(exc))
        except Exception as exc:  # noqa: BLE001
            log.exception("CNI del %s failed", req.container_id)
            return cni_pb2.DelReply(successful=False, error_message=f"internal error: {exc}")
        return cni_pb2.DelReply(successful=True)

    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            req = check_request_from_proto(request, self.require_container_id)
        except ValidationError as exc:
            self._invalid(context, exc)
        try:
            drift = list(self.backend.cni_check(req))
        except ValidationError as exc:
            self._invalid(context, exc)
        except CniError as exc:
            return cni_pb2.CheckReply(successful=False, error_message=str(exc))
        except Exception as exc:  # noqa: BLE001
            log.exception("CNI check %s failed", req.container_id)
            return cni_pb2.CheckReply(successful=False, error_message=f"internal error: {exc}")
        if drift:
            return cni_pb2.CheckReply(
                successful=False, error_message=f"{len(drift)} difference(s): " + "; ".join(drift),
                drift=drift,
            )
        return cni_pb2.CheckReply(successful=True)
