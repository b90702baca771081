"""The ``dataplane: {type: vpp, ...}`` section, validated once at start.

Unknown keys are errors naming the key (a typo never silently becomes a
default).  Per-pod choices come from pod annotations (``annotations.py``);
this is the node-wide configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from vppagent.dataplane.failsafe import Failsafe
from vppagent.dataplane.failsafe import parse_failsafe as _parse_failsafe
from vppagent.evaluator.engine import FAILSAFE_INBOUND, FAILSAFE_OUTBOUND

POD_INTERFACES = ("tap", "af_packet", "memif")
POLICY_ENGINES = ("npol", "acl", "auto")
FACINGS = ("host", "uplink")

_KNOWN = {
    "socket", "podInterface", "policy", "mtu", "encapOverhead", "uplinkInterface", "nodeName", "podVrfs",
    "vrfBase", "tapRingSize", "tapQueues", "memifRingSize", "memifQueues", "bufferAdmission", "stateDir",
    "vppNetns", "hostInterfaces", "failsafeInbound", "failsafeOutbound", "refreshInterval", "timeout",
    "clientName",
}
_BUFFER_KEYS = {"enabled", "buffers", "reserve", "statsSocket"}


class ConfigError(ValueError):
    """A bad ``dataplane:`` option; the message names the key."""


@dataclass(frozen=True)
class BufferAdmission:
    """Refuse a pod whose rings would not fit in VPP's free buffers.

    ``buffers`` is VPP's pool size (``buffers-per-numa``); when
    ``stats_socket`` is set, the free count is read from VPP's stats segment
    instead.  ``reserve`` stays free for the uplink and punted traffic.
    """

    enabled: bool = True
    buffers: int = 16384
    reserve: int = 2048
    stats_socket: str | None = None


@dataclass(frozen=True)
class HostInterface:
    """A VPP interface that carries a host endpoint.

    ``facing: host``: the VPP side of the host's own tap/veth (VPP rx is the
    host's egress, like a pod).  ``facing: uplink``: an interface towards the
    outside (VPP rx is the host's ingress: npol ``invert_rx_tx``).
    """

    vpp_interface: str
    facing: str = "host"


@dataclass(frozen=True)
class VppConfig:
    socket: str = "/run/vpp/api.sock"
    pod_interface: str = "tap"
    policy: str = "auto"
    mtu: int | None = None
    encap_overhead: int = 0
    uplink_interface: str | None = None
    node_name: str | None = None
    pod_vrfs: bool = True
    vrf_base: int = 100000
    tap_ring_size: int = 1024
    tap_queues: int = 1
    memif_ring_size: int = 1024
    memif_queues: int = 1
    buffer_admission: BufferAdmission = field(default_factory=BufferAdmission)
    state_dir: str = "/run/vppagent/vpp"
    vpp_netns: str | None = None
    host_interfaces: Mapping[str, HostInterface] = field(default_factory=dict)
    failsafe_inbound: Failsafe = FAILSAFE_INBOUND
    failsafe_outbound: Failsafe = FAILSAFE_OUTBOUND
    refresh_interval: float | None = 180.0
    timeout: float = 5.0
    client_name: str = "vppagent"

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "VppConfig":
        """Parse the section (without ``type``); raise ConfigError naming the bad key."""
        for key in options:
            if key not in _KNOWN:
                raise ConfigError(f"dataplane: unknown vpp option {key!r} (known: {', '.join(sorted(_KNOWN))})")
        kw: dict[str, Any] = {}
        for key, attr in (("socket", "socket"), ("stateDir", "state_dir"), ("clientName", "client_name")):
            if key in options:
                kw[attr] = _string(options, key)
        for key, attr in (("uplinkInterface", "uplink_interface"), ("nodeName", "node_name"),
                          ("vppNetns", "vpp_netns")):
            if key in options:
                kw[attr] = None if options[key] is None else _string(options, key)
        if "podInterface" in options:
            kw["pod_interface"] = _choice(options, "podInterface", POD_INTERFACES)
        if "policy" in options:
            kw["policy"] = _choice(options, "policy", POLICY_ENGINES)
        if "mtu" in options:
            kw["mtu"] = None if options["mtu"] is None else _int(options, "mtu", 576, 65535)
        if "encapOverhead" in options:
            kw["encap_overhead"] = _int(options, "encapOverhead", 0, 1000)
        if "podVrfs" in options:
            kw["pod_vrfs"] = _bool(options, "podVrfs")
        if "vrfBase" in options:
            kw["vrf_base"] = _int(options, "vrfBase", 1, 2**32 - 2**20)
        for key, attr in (("tapRingSize", "tap_ring_size"), ("memifRingSize", "memif_ring_size")):
            if key in options:
                kw[attr] = _ring(options, key)
        for key, attr in (("tapQueues", "tap_queues"), ("memifQueues", "memif_queues")):
            if key in options:
                kw[attr] = _int(options, key, 1, 64)
        if "bufferAdmission" in options:
            kw["buffer_admission"] = _buffers(options["bufferAdmission"])
        if "hostInterfaces" in options:
            kw["host_interfaces"] = _host_interfaces(options["hostInterfaces"])
        for key, attr in (("failsafeInbound", "failsafe_inbound"), ("failsafeOutbound", "failsafe_outbound")):
            if key in options:
                kw[attr] = parse_failsafe(options[key], key)
        if "refreshInterval" in options:
            value = options["refreshInterval"]
            kw["refresh_interval"] = None if value is None else _seconds(value, "refreshInterval")
        if "timeout" in options:
            kw["timeout"] = _seconds(options["timeout"], "timeout")
        return cls(**kw)


def _string(options: Mapping[str, Any], key: str) -> str:
    value = options[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"dataplane.{key}: expected a non-empty string, got {value!r}")
    return value


def _choice(options: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = options[key]
    if value not in allowed:
        raise ConfigError(f"dataplane.{key}: expected one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _bool(options: Mapping[str, Any], key: str) -> bool:
    value = options[key]
    if not isinstance(value, bool):
        raise ConfigError(f"dataplane.{key}: expected true or false, got {value!r}")
    return value


def _int(options: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    value = options[key]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"dataplane.{key}: expected an integer in {lo}..{hi}, got {value!r}")
    return value


def _ring(options: Mapping[str, Any], key: str) -> int:
    value = _int(options, key, 64, 32768)
    if value & (value - 1):
        raise ConfigError(f"dataplane.{key}: ring sizes must be a power of two, got {value}")
    return value


def _seconds(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"dataplane.{key}: expected seconds > 0, got {value!r}")
    return float(value)


def _buffers(value: Any) -> BufferAdmission:
    if isinstance(value, bool):
        return BufferAdmission(enabled=value)
    if not isinstance(value, Mapping):
        raise ConfigError("dataplane.bufferAdmission: expected true, false or {enabled, buffers, reserve, statsSocket}")
    for key in value:
        if key not in _BUFFER_KEYS:
            raise ConfigError(f"dataplane.bufferAdmission: unknown option {key!r} (known: {', '.join(sorted(_BUFFER_KEYS))})")
    kw: dict[str, Any] = {}
    if "enabled" in value:
        kw["enabled"] = _bool(value, "enabled")
    if "buffers" in value:
        kw["buffers"] = _int(value, "buffers", 1, 2**31)
    if "reserve" in value:
        kw["reserve"] = _int(value, "reserve", 0, 2**31)
    if "statsSocket" in value:
        kw["stats_socket"] = None if value["statsSocket"] is None else _string(value, "statsSocket")
    return BufferAdmission(**kw)


def _host_interfaces(value: Any) -> dict[str, HostInterface]:
    """``{eth0: host-eth0}`` or ``{node1-eth0: {interface: tap0, facing: uplink}}``."""
    if not isinstance(value, Mapping):
        raise ConfigError("dataplane.hostInterfaces: expected a mapping of host endpoint (name or "
                          "interface) to a VPP interface")
    out: dict[str, HostInterface] = {}
    for name, spec in value.items():
        where = f"dataplane.hostInterfaces.{name}"
        if isinstance(spec, str) and spec:
            out[str(name)] = HostInterface(spec)
            continue
        if not isinstance(spec, Mapping) or not set(spec) <= {"interface", "facing"} or "interface" not in spec:
            raise ConfigError(f"{where}: expected a VPP interface name or {{interface, facing}}")
        iface = _string(spec, "interface")
        facing = spec.get("facing", "host")
        if facing not in FACINGS:
            raise ConfigError(f"{where}.facing: expected host or uplink, got {facing!r}")
        out[str(name)] = HostInterface(iface, facing)
    return out


def parse_failsafe(value: Any, key: str) -> Failsafe:
    """A failsafe port list option; errors are this backend's ConfigError."""
    return _parse_failsafe(value, key, ConfigError)
