"""Packets the reference evaluator judges, and the CLI's way of naming them."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from vppagent.model.errors import ValidationError
from vppagent.model.resources import PORT_PROTOCOLS, PROTOCOL_NUMBERS, IPAddress, protocol_name


@dataclass(frozen=True)
class Packet:
    src: IPAddress
    dst: IPAddress
    protocol: int
    src_port: int | None = None
    dst_port: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None

    @property
    def version(self) -> int:
        return self.dst.version

    def describe(self) -> str:
        if self.icmp_type is not None:
            code = f"/{self.icmp_code}" if self.icmp_code is not None else ""
            return f"{protocol_name(self.protocol)} type {self.icmp_type}{code} {self.src} -> {self.dst}"
        port = f":{self.dst_port}" if self.dst_port is not None else ""
        return f"{protocol_name(self.protocol)} {self.src} -> {self.dst}{port}"


@dataclass(frozen=True)
class Target:
    """``namespace/pod`` or an IP, with an optional port and protocol."""

    name: str                 # "ns/pod" or "" for a bare IP
    ip: IPAddress | None
    port: int | None = None
    protocol: int | None = None


def parse_target(text: str, field: str, *, allow_port: bool) -> Target:
    """Parse ``ns/pod``, ``ip``, ``[v6]``, with ``:PORT[/PROTO]`` when allowed."""
    spec = text.strip()
    port: int | None = None
    proto: int | None = None
    host = spec
    if spec.startswith("["):
        close = spec.find("]")
        if close < 0:
            raise ValidationError(field, f"missing ']' in {text!r}")
        host, rest = spec[1:close], spec[close + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValidationError(field, f"unexpected {rest!r} after address in {text!r}")
            port, proto = _port_proto(rest[1:], field)
    else:
        try:
            return Target("", ipaddress.ip_address(spec))
        except ValueError:
            pass
        if spec.count(":") == 1:
            host, rest = spec.split(":")
            port, proto = _port_proto(rest, field)
    if (port is not None or proto is not None) and not allow_port:
        raise ValidationError(field, f"a port is not allowed here: {text!r}")
    try:
        return Target("", ipaddress.ip_address(host), port, proto)
    except ValueError:
        pass
    ns, sep, pod = host.partition("/")
    if not sep or not ns or not pod or "/" in pod:
        raise ValidationError(field, f"expected namespace/pod or an IP address, got {text!r}")
    return Target(host, None, port, proto)


def _port_proto(text: str, field: str) -> tuple[int | None, int | None]:
    port_text, _, proto_text = text.partition("/")
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ValidationError(field, f"invalid port {port_text!r}")
    proto = None
    if proto_text:
        proto = PROTOCOL_NUMBERS.get(proto_text.upper())
        if proto not in PORT_PROTOCOLS:
            raise ValidationError(field, f"invalid protocol {proto_text!r} (expected TCP, UDP or SCTP)")
    return int(port_text), proto


def parse_icmp(text: str, field: str) -> tuple[int, int | None]:
    type_text, _, code_text = text.partition("/")
    try:
        icmp_type = int(type_text)
        code = int(code_text) if code_text else None
    except ValueError:
        raise ValidationError(field, f"expected TYPE[/CODE], got {text!r}") from None
    if not 0 <= icmp_type <= 255 or (code is not None and not 0 <= code <= 255):
        raise ValidationError(field, f"ICMP type and code must be 0..255, got {text!r}")
    return icmp_type, code
