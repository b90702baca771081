"""Typed field access for parsed YAML/JSON with field paths in every error."""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Iterator, Mapping, TypeVar

from vppagent.model.errors import ValidationError, join_path
from vppagent.model.resources import (
    PROTOCOL_NUMBERS, IPAddress, IPNetwork, PortMatch, PortRange,
)
from vppagent.selector import Selector, SelectorError, parse

T = TypeVar("T")


class Fields:
    """A mapping read with knowledge of where it sits in the document.

    ``strict`` mappings reject keys nobody asked for (calicoctl-like), so a
    typo such as ``destinaton`` is an error instead of a silently open rule.
    """

    def __init__(self, data: Any, path: str, *, strict: bool = False) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ValidationError(path, f"expected a mapping, got {type(data).__name__}")
        self.data: Mapping[str, Any] = data
        self.path = path
        self.strict = strict
        self._seen: set[str] = set()

    def at(self, key: str) -> str:
        return join_path(self.path, key)

    def raw(self, key: str, default: Any = None) -> Any:
        self._seen.add(key)
        value = self.data.get(key, default)
        return default if value is None else value

    def has(self, key: str) -> bool:
        self._seen.add(key)
        return self.data.get(key) is not None

    def str(self, key: str, default: str = "", *, required: bool = False) -> str:
        value = self.raw(key)
        if value is None:
            if required:
                raise ValidationError(self.at(key), "required field is missing")
            return default
        if not isinstance(value, str):
            raise ValidationError(self.at(key), f"expected a string, got {value!r}")
        return value

    def bool(self, key: str, default: bool = False) -> bool:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ValidationError(self.at(key), f"expected true or false, got {value!r}")
        return value

    def int(self, key: str, default: int | None = None, *, lo: int | None = None,
            hi: int | None = None) -> int | None:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(self.at(key), f"expected an integer, got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ValidationError(self.at(key), f"{value} is outside {lo}..{hi}")
        return value

    def number(self, key: str) -> float | None:
        value = self.raw(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValidationError(self.at(key), f"expected a number, got {value!r}")
        return float(value)

    def sub(self, key: str, *, strict: bool | None = None) -> "Fields":
        return Fields(self.raw(key), self.at(key), strict=self.strict if strict is None else strict)

    def list(self, key: str) -> list[tuple[str, Any]]:
        value = self.raw(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ValidationError(self.at(key), f"expected a list, got {type(value).__name__}")
        return [(join_path(self.at(key), i), item) for i, item in enumerate(value)]

    def str_list(self, key: str) -> tuple[str, ...]:
        out = []
        for path, item in self.list(key):
            if not isinstance(item, str):
                raise ValidationError(path, f"expected a string, got {item!r}")
            out.append(item)
        return tuple(out)

    def labels(self, key: str) -> tuple[tuple[str, str], ...]:
        value = self.raw(key)
        if value is None:
            return ()
        if not isinstance(value, Mapping):
            raise ValidationError(self.at(key), "expected a mapping of label keys to values")
        out = []
        for k, v in value.items():
            if not isinstance(k, str) or not k:
                raise ValidationError(self.at(key), f"invalid label key {k!r}")
            if isinstance(v, bool) or v is None:
                raise ValidationError(join_path(self.at(key), k), f"label value must be a string, got {v!r}")
            out.append((k, str(v)))
        return tuple(sorted(out))

    def selector(self, key: str) -> Selector | None:
        value = self.raw(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValidationError(self.at(key), f"expected a selector string, got {value!r}")
        try:
            return parse(value)
        except SelectorError as exc:
            raise ValidationError(self.at(key), str(exc)) from None

    def check_unknown(self) -> None:
        if not self.strict:
            return
        for key in self.data:
            if key not in self._seen:
                raise ValidationError(self.at(str(key)), "unknown field")

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)


def parse_network(text: Any, path: str) -> IPNetwork:
    """A CIDR or a bare address (taken as a host route)."""
    if not isinstance(text, str):
        raise ValidationError(path, f"expected a CIDR string, got {text!r}")
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValidationError(path, f"invalid CIDR {text!r}") from None


def parse_address(text: Any, path: str) -> IPAddress:
    if not isinstance(text, str):
        raise ValidationError(path, f"expected an IP address string, got {text!r}")
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValidationError(path, f"invalid IP address {text!r}") from None


def parse_protocol(value: Any, path: str) -> int:
    """A protocol name (TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite) or number 0-255."""
    if isinstance(value, bool):
        raise ValidationError(path, f"invalid protocol {value!r}")
    if isinstance(value, int):
        if 0 <= value <= 255:
            return value
        raise ValidationError(path, f"protocol number {value} is outside 0..255")
    if isinstance(value, str):
        number = PROTOCOL_NUMBERS.get(value.strip().upper())
        if number is not None:
            return number
        if value.strip().isdigit() and 0 <= int(value) <= 255:
            return int(value)
    raise ValidationError(path, f"invalid protocol {value!r} (expected TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or 0..255)")


def parse_port(value: Any, path: str) -> PortRange | str:
    """A port number, a ``"first:last"`` range, or a named port."""
    if isinstance(value, bool):
        raise ValidationError(path, f"invalid port {value!r}")
    if isinstance(value, int):
        if 0 <= value <= 65535:
            return PortRange(value, value)
        raise ValidationError(path, f"port {value} is outside 0..65535")
    if isinstance(value, str):
        text = value.strip()
        if ":" in text:
            lo, _, hi = text.partition(":")
            if not (lo.isdigit() and hi.isdigit()):
                raise ValidationError(path, f"invalid port range {value!r}")
            first, last = int(lo), int(hi)
            if first > 65535 or last > 65535 or first > last:
                raise ValidationError(path, f"invalid port range {value!r}")
            return PortRange(first, last)
        if text.isdigit():
            return parse_port(int(text), path)
        if is_port_name(text):
            return text
    raise ValidationError(path, f"invalid port {value!r}")


def is_port_name(text: str) -> bool:
    """Kubernetes IANA_SVC_NAME: 1-15 lowercase alphanumerics or '-', with a letter."""
    return (
        0 < len(text) <= 15
        and all(c.islower() or c.isdigit() or c == "-" for c in text)
        and any(c.isalpha() for c in text)
        and not text.startswith("-") and not text.endswith("-") and "--" not in text
    )


def parse_ports(items: list[tuple[str, Any]]) -> PortMatch:
    ranges: list[PortRange] = []
    names: list[str] = []
    for path, item in items:
        port = parse_port(item, path)
        if isinstance(port, str):
            names.append(port)
        else:
            ranges.append(port)
    return PortMatch(tuple(ranges), tuple(names))


def each_mapping(items: list[tuple[str, Any]], fn: Callable[[Fields], T], *,
                 strict: bool = False) -> tuple[T, ...]:
    """Apply ``fn`` to each mapping of a list, with the item's path."""
    out = []
    for path, item in items:
        f = Fields(item, path, strict=strict)
        out.append(fn(f))
        f.check_unknown()
    return tuple(out)
