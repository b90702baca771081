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
    "clientName", "afPacketRing",
}
_BUFFER_KEYS = {"enabled", "buffers", "reserve", "statsSocket"}
_RING_KEYS = {"rxFrameSize": "rx_frame_size", "rxFramesPerBlock": "rx_frames_per_block",
              "txFrameSize": "tx_frame_size", "txFramesPerBlock": "tx_frames_per_block"}

# How VPP 26.10 lays out an af_packet interface's rings (plugins/af_packet/af_packet.c, TPACKET_V3):
# RX is 160 blocks of rxFramesPerBlock x rxFrameSize bytes, TX one block of txFramesPerBlock x
# txFrameSize; every byte is mapped and locked into VPP.  A field left 0 takes VPP's default.
AF_PACKET_RX_BLOCKS = 160
VPP_AF_PACKET_DEFAULTS = (2048, 32, 2048 * 33, 1024)      # rx frame, rx frames/block, tx frame, tx frames
PAGE_SIZE = 4096                   # the kernel wants whole pages per block
TPACKET_ALIGNMENT = 16             # ... and frame sizes in multiples of 16
TPACKET3_HDR = 48                  # TPACKET_ALIGN(sizeof(struct tpacket3_hdr)): a TX frame's data starts here
RX_BLOCK_OVERHEAD = 48 + 92        # block descriptor + the offset of a packet's MAC header (with a vnet header)
VNET_HDR = 10                      # struct virtio_net_hdr, in front of each packet with CKSUM_GSO
L2_HEADER = 18                     # Ethernet + one VLAN tag
IP_MAX = 65535                     # the largest packet a GSO frame can describe
# Linux builds TSO packets of at most 64 KiB less TCP's header reserve, which VPP's default 64 KiB RX
# block holds; a smaller block truncates them and VPP drops them as partial packets.
GSO_RX_BLOCK = 65536


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
class AfPacketRing:
    """Ring sizes passed to ``af_packet_create_v3`` for af_packet pods.

    Left to VPP (all 0), each interface maps a 66 KiB x 1,024-frame TX block (~69 MiB, ~78 MiB of
    VPP memory per pod with RX) and creating one slows from ~60 ms to ~500 ms after a dozen pods.
    The default keeps VPP's 64 KiB RX blocks and 66 KiB TX frames, which every GSO packet fits
    (pods' veths do TSO), with 64 TX frames instead of 1,024: ~14 MiB per pod, ~45 ms per create.
    A dispatch that sends a pod more packets than its TX ring has free frames drops the excess
    ("tx ring overrun"): TCP is unaffected (GSO packets are few), but floods of small packets
    lose more than with VPP's 1,024 frames.  256 (VPP's largest vector: ~27 MiB per pod) never
    overruns within one dispatch; use it for pods that take bursts of small packets.
    """

    rx_frame_size: int = 2048
    rx_frames_per_block: int = 32
    tx_frame_size: int = 2048 * 33
    tx_frames_per_block: int = 64

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.rx_frame_size, self.rx_frames_per_block, self.tx_frame_size, self.tx_frames_per_block)

    def effective(self) -> tuple[int, int, int, int]:
        """The sizes VPP will use (its defaults where ours are 0)."""
        return tuple(v or d for v, d in zip(self.as_tuple(), VPP_AF_PACKET_DEFAULTS))  # type: ignore[return-value]

    def ring_bytes(self) -> int:
        """Memory one single-queue interface maps into VPP."""
        rx, rx_n, tx, tx_n = self.effective()
        return AF_PACKET_RX_BLOCKS * rx * rx_n + tx * tx_n

    def problems(self, mtu: int, gso: bool = True) -> list[str]:
        """Why these sizes cannot carry packets of ``mtu`` (plus GSO packets with ``gso``), or
        would be refused by the kernel; empty when they are fine."""
        rx, rx_n, tx, tx_n = self.effective()
        out = []
        for name, frame, n in (("rx", rx, rx_n), ("tx", tx, tx_n)):
            if frame % TPACKET_ALIGNMENT:
                out.append(f"{name}FrameSize {frame} is not a multiple of {TPACKET_ALIGNMENT}")
            if (frame * n) % PAGE_SIZE:
                out.append(f"{name}FrameSize x {name}FramesPerBlock = {frame * n} bytes is not a whole "
                           f"number of {PAGE_SIZE}-byte pages")
        largest = max(mtu + L2_HEADER, IP_MAX + L2_HEADER if gso else 0)
        rx_need = max(RX_BLOCK_OVERHEAD + mtu + L2_HEADER, GSO_RX_BLOCK if gso else 0)
        if rx * rx_n < rx_need:
            out.append(f"an RX block of {rx * rx_n} bytes cannot hold a {'GSO packet' if gso else f'{mtu}-byte packet'} "
                       f"(needs {rx_need}: raise rxFrameSize or rxFramesPerBlock)")
        tx_need = TPACKET3_HDR + VNET_HDR + largest
        if tx < tx_need:
            out.append(f"a TX frame of {tx} bytes cannot hold a {'GSO packet' if gso else f'{mtu}-byte packet'} "
                       f"(needs {tx_need}; VPP writes past the frame otherwise)")
        return out


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
    af_packet_ring: AfPacketRing = field(default_factory=AfPacketRing)
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
        if "afPacketRing" in options:
            kw["af_packet_ring"] = _af_packet_ring(options["afPacketRing"], kw.get("mtu"))
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


def _af_packet_ring(value: Any, mtu: int | None) -> AfPacketRing:
    """``{rxFrameSize, rxFramesPerBlock, txFrameSize, txFramesPerBlock}``; 0 leaves one to VPP."""
    if not isinstance(value, Mapping):
        raise ConfigError("dataplane.afPacketRing: expected {" + ", ".join(_RING_KEYS) + "}")
    for key in value:
        if key not in _RING_KEYS:
            raise ConfigError(f"dataplane.afPacketRing: unknown option {key!r} (known: {', '.join(sorted(_RING_KEYS))})")
    kw = {attr: _int(value, key, 0, 1 << 24) for key, attr in _RING_KEYS.items() if key in value}
    ring = AfPacketRing(**kw)
    problems = ring.problems(mtu or 1500)        # GSO is always on for af_packet pods
    if problems:
        raise ConfigError("dataplane.afPacketRing: " + "; ".join(problems))
    return ring


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
