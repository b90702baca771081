"""Just enough protobuf wire format for the CNI messages (proto/cni/cnibackend.proto).

Hand-written so the plugin does not import protobuf (tens of milliseconds
per exec). Field numbers must follow the .proto; ``tests/test_cni_plugin.py``
cross-checks these encoders against the generated classes.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing (or __future__) costs start-up time
    from typing import Iterable, Mapping

_VARINT, _LEN = 0, 2


def varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def string(field: int, value: str) -> bytes:
    """A string field (omitted when empty, as proto3 does)."""
    if not value:
        return b""
    data = value.encode()
    return _key(field, _LEN) + varint(len(data)) + data


def message(field: int, payload: bytes) -> bytes:
    return _key(field, _LEN) + varint(len(payload)) + payload


def uint(field: int, value: int) -> bytes:
    return _key(field, _VARINT) + varint(value) if value else b""


def boolean(field: int, value: bool) -> bytes:
    return _key(field, _VARINT) + b"\x01" if value else b""


def string_map(field: int, items: "Mapping[str, str]") -> bytes:
    return b"".join(message(field, string(1, k) + string(2, v)) for k, v in items.items())


def repeated_strings(field: int, values: "Iterable[str]") -> bytes:
    out = b""
    for v in values:
        data = v.encode()
        out += _key(field, _LEN) + varint(len(data)) + data
    return out


def parse(data: bytes) -> dict[int, list[int | bytes]]:
    """Fields of one message: number → values (ints for varints, bytes otherwise)."""
    out: dict[int, list[int | bytes]] = {}
    i, n = 0, len(data)
    while i < n:
        key, i = _read_varint(data, i)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, i = _read_varint(data, i)
        elif wire_type == 2:
            length, i = _read_varint(data, i)
            value, i = data[i:i + length], i + length
            if i > n:
                raise ValueError("truncated protobuf message")
        elif wire_type == 1:
            value, i = data[i:i + 8], i + 8
        elif wire_type == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        out.setdefault(field, []).append(value)
    return out


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(data):
            raise ValueError("truncated varint")
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def get_str(fields: dict[int, list[int | bytes]], number: int) -> str:
    values = fields.get(number)
    return bytes(values[-1]).decode() if values else ""  # type: ignore[arg-type]


def get_strs(fields: dict[int, list[int | bytes]], number: int) -> list[str]:
    return [bytes(v).decode() for v in fields.get(number, [])]  # type: ignore[arg-type]


def get_bool(fields: dict[int, list[int | bytes]], number: int) -> bool:
    values = fields.get(number)
    return bool(values[-1]) if values else False


# ---------------------------------------------------------------- CNI messages

def add_request(*, container_id: str, netns: str, interface_name: str, namespace: str, pod: str,
                mtu: int = 0, ips: "Iterable[str]" = (), options: "Mapping[str, str] | None" = None,
                orchestrator: str = "k8s") -> bytes:
    """``cni.AddRequest``: no ``container_ips`` lets the agent's IPAM choose."""
    settings = uint(2, mtu)
    workload = string(2, namespace) + string(5, interface_name) + string(7, orchestrator) + string(8, pod)
    return (
        string(1, interface_name) + string(2, netns) + message(4, settings)
        + b"".join(message(5, string(1, ip)) for ip in ips)
        + message(7, workload) + string_map(8, options or {}) + string(100, container_id)
    )


def del_request(*, container_id: str, netns: str, interface_name: str,
                options: "Mapping[str, str] | None" = None) -> bytes:
    """``cni.DelRequest`` (``cni.CheckRequest`` has the same fields)."""
    return string(1, interface_name) + string(2, netns) + string_map(3, options or {}) + string(100, container_id)


check_request = del_request


def add_reply(data: bytes) -> dict[str, object]:
    f = parse(data)
    ips = []
    for raw in f.get(100, []):
        ipf = parse(bytes(raw))  # type: ignore[arg-type]
        ips.append({"address": get_str(ipf, 1), "gateway": get_str(ipf, 2)})
    return {
        "successful": get_bool(f, 1), "error_message": get_str(f, 2),
        "host_interface_name": get_str(f, 3), "container_mac": get_str(f, 4),
        "assigned_ips": ips, "host_mac": get_str(f, 101),
    }


def del_reply(data: bytes) -> dict[str, object]:
    f = parse(data)
    return {"successful": get_bool(f, 1), "error_message": get_str(f, 2)}


def check_reply(data: bytes) -> dict[str, object]:
    f = parse(data)
    return {"successful": get_bool(f, 1), "error_message": get_str(f, 2), "drift": get_strs(f, 3)}
