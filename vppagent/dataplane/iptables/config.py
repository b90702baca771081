"""The ``dataplane:`` section for ``type: iptables``, validated once.

Unknown keys are errors naming the key: a typo in a firewall's config must
not silently fall back to a default.

```yaml
dataplane:
  type: iptables
  backend: auto              # auto (the backend already holding rules; else nft) | nft | legacy
  markMask: "0xffff0000"     # mark bits the rules may use (5 needed)
  failsafeInbound: [tcp:22, udp:68, tcp:179, tcp:2379-2380, tcp:6443]
  failsafeOutbound: [udp:53, udp:67, tcp:179, tcp:2379-2380, tcp:6443]
  refreshInterval: 90        # seconds between read-back-and-repair passes (0: never)
  logPrefix: "calico-packet: "
  netns: node1               # run every command in this netns (tests); default: the agent's own
  nodeName: node1            # default: the node this node's endpoints name, else the hostname
  interfacePrefixes: [cali]  # workload interfaces
  endpointToHostAction: Accept   # after a pod's egress policy, traffic to the host: Accept|Drop|Return
  dropInvalid: true          # conntrack INVALID -> DROP before policy (Felix's default)
  ipv6: true
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from vppagent.dataplane.iptables.marks import DEFAULT_MARK_MASK, Marks

PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132, "udplite": 136}


@dataclass(frozen=True, order=True)
class PortSpec:
    """One failsafe entry: protocol number and an inclusive port range."""

    protocol: int
    first: int
    last: int

    def __str__(self) -> str:
        name = next(k for k, v in PROTOCOLS.items() if v == self.protocol)
        return f"{name}:{self.first}" + (f"-{self.last}" if self.last != self.first else "")


def parse_port_spec(text: Any, where: str) -> PortSpec:
    """``tcp:22``, ``udp:68``, ``tcp:2379-2380`` (or a ``{protocol, port}`` mapping)."""
    if isinstance(text, Mapping):
        unknown = set(text) - {"protocol", "port"}
        if unknown:
            raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        text = f"{text.get('protocol', 'tcp')}:{text.get('port')}"
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(f"{where}: expected 'protocol:port[-port]', got {text!r}")
    proto, _, ports = text.partition(":")
    number = PROTOCOLS.get(proto.strip().lower())
    if number is None:
        raise ValueError(f"{where}: unknown protocol {proto!r} (tcp, udp, sctp, udplite)")
    first_s, _, last_s = ports.replace(":", "-").partition("-")
    try:
        first = int(first_s)
        last = int(last_s) if last_s else first
    except ValueError:
        raise ValueError(f"{where}: invalid port {ports!r}") from None
    if not 0 < first <= last <= 65535:
        raise ValueError(f"{where}: invalid port range {ports!r}")
    return PortSpec(number, first, last)


DEFAULT_FAILSAFE_INBOUND = tuple(parse_port_spec(s, "default") for s in (
    "tcp:22", "udp:68", "tcp:179", "tcp:2379-2380", "tcp:6443"))
DEFAULT_FAILSAFE_OUTBOUND = tuple(parse_port_spec(s, "default") for s in (
    "udp:53", "udp:67", "tcp:179", "tcp:2379-2380", "tcp:6443"))

_KEYS = {
    "backend", "markMask", "failsafeInbound", "failsafeOutbound", "refreshInterval", "logPrefix",
    "netns", "nodeName", "interfacePrefixes", "endpointToHostAction", "dropInvalid", "ipv6",
}


@dataclass(frozen=True)
class IptablesConfig:
    backend: str = "auto"                       # auto | nft | legacy
    mark_mask: int = DEFAULT_MARK_MASK
    failsafe_inbound: tuple[PortSpec, ...] = DEFAULT_FAILSAFE_INBOUND
    failsafe_outbound: tuple[PortSpec, ...] = DEFAULT_FAILSAFE_OUTBOUND
    refresh_interval: float = 90.0
    log_prefix: str = "calico-packet: "
    netns: str | None = None                    # run every command inside this netns (tests)
    node_name: str | None = None                # None: the node its endpoints name (else the hostname)
    interface_prefixes: tuple[str, ...] = ("cali",)
    endpoint_to_host_action: str = "ACCEPT"     # ACCEPT | DROP | RETURN, after egress policy
    drop_invalid: bool = True                   # conntrack INVALID -> DROP (Felix's default)
    ipv6: bool = True

    @property
    def marks(self) -> Marks:
        return Marks.from_mask(self.mark_mask)

    @property
    def families(self) -> tuple[int, ...]:
        return (4, 6) if self.ipv6 else (4,)

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> "IptablesConfig":
        for key in options:
            if key not in _KEYS:
                raise ValueError(f"dataplane iptables: unknown option {key!r}")
        kw: dict[str, Any] = {}
        if "backend" in options:
            backend = options["backend"]
            if backend not in ("auto", "nft", "legacy"):
                raise ValueError(f"dataplane iptables: backend must be auto, nft or legacy, got {backend!r}")
            kw["backend"] = backend
        if "markMask" in options:
            raw = options["markMask"]
            try:
                kw["mark_mask"] = int(raw, 0) if isinstance(raw, str) else int(raw)
            except (TypeError, ValueError):
                raise ValueError(f"dataplane iptables: markMask: not a number: {raw!r}") from None
            Marks.from_mask(kw["mark_mask"])
        for key, attr in (("failsafeInbound", "failsafe_inbound"), ("failsafeOutbound", "failsafe_outbound")):
            if key in options:
                items = options[key]
                if not isinstance(items, (list, tuple)):
                    raise ValueError(f"dataplane iptables: {key} must be a list")
                kw[attr] = tuple(parse_port_spec(v, f"dataplane iptables: {key}[{i}]") for i, v in enumerate(items))
        if "refreshInterval" in options:
            value = options["refreshInterval"]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"dataplane iptables: refreshInterval must be a number ≥ 0, got {value!r}")
            kw["refresh_interval"] = float(value)
        if "logPrefix" in options:
            prefix = options["logPrefix"]
            if not isinstance(prefix, str) or len(prefix) > 29 or '"' in prefix or "\n" in prefix:
                raise ValueError("dataplane iptables: logPrefix must be a string of at most 29 characters without quotes")
            kw["log_prefix"] = prefix
        for key, attr in (("netns", "netns"), ("nodeName", "node_name")):
            if key in options:
                value = options[key]
                if not isinstance(value, str) or not value or any(c.isspace() for c in value):
                    raise ValueError(f"dataplane iptables: {key} must be a non-empty string without spaces")
                kw[attr] = value
        if "interfacePrefixes" in options:
            prefixes = options["interfacePrefixes"]
            if (not isinstance(prefixes, list) or not prefixes
                    or not all(isinstance(p, str) and re.match(r"^[A-Za-z0-9_.-]{1,14}$", p) for p in prefixes)):
                raise ValueError("dataplane iptables: interfacePrefixes must be a non-empty list of interface name prefixes")
            kw["interface_prefixes"] = tuple(prefixes)
        if "endpointToHostAction" in options:
            action = str(options["endpointToHostAction"]).upper()
            if action not in ("ACCEPT", "DROP", "RETURN"):
                raise ValueError("dataplane iptables: endpointToHostAction must be Accept, Drop or Return")
            kw["endpoint_to_host_action"] = action
        for key, attr in (("dropInvalid", "drop_invalid"), ("ipv6", "ipv6")):
            if key in options:
                if not isinstance(options[key], bool):
                    raise ValueError(f"dataplane iptables: {key} must be true or false")
                kw[attr] = options[key]
        return cls(**kw)
