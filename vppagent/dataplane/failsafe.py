"""Failsafe port lists in dataplane options, parsed the same way by every backend."""

from __future__ import annotations

from typing import Any, Mapping

from vppagent.model.resources import PROTOCOL_NUMBERS

# (protocol number, first port, last port)
Failsafe = tuple[tuple[int, int, int], ...]


def parse_failsafe(value: Any, key: str, error: type[ValueError] = ValueError) -> Failsafe:
    """``["tcp:22", {protocol: udp, port: 68}, "tcp:2379-2380"]`` → (proto, first, last) tuples.

    ``error`` is the backend's own config error type, so messages keep its
    ``dataplane.<key>[i]`` locations.
    """
    if not isinstance(value, list):
        raise error(f"dataplane.{key}: expected a list of 'proto:port' entries")
    out = []
    for i, item in enumerate(value):
        where = f"dataplane.{key}[{i}]"
        if isinstance(item, str):
            proto_text, sep, port_text = item.partition(":")
            if not sep:
                raise error(f"{where}: expected 'proto:port', got {item!r}")
        elif isinstance(item, Mapping) and set(item) <= {"protocol", "port"} and "port" in item:
            proto_text, port_text = str(item.get("protocol", "tcp")), str(item["port"])
        else:
            raise error(f"{where}: expected 'proto:port' or {{protocol, port}}, got {item!r}")
        proto = PROTOCOL_NUMBERS.get(proto_text.upper())
        if proto not in (6, 17, 132):
            raise error(f"{where}: protocol must be tcp, udp or sctp, got {proto_text!r}")
        first_text, _, last_text = port_text.replace(":", "-").partition("-")
        try:
            first, last = int(first_text), int(last_text or first_text)
        except ValueError:
            raise error(f"{where}: invalid port {port_text!r}") from None
        if not 0 < first <= last <= 65535:
            raise error(f"{where}: invalid port range {port_text!r}")
        out.append((proto, first, last))
    return tuple(out)
