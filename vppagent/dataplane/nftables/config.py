"""The ``dataplane: {type: nftables, ...}`` section, validated once at start.

Unknown keys are errors naming the key, so a typo never silently falls back
to a default. Mark bits are carved out of ``markMask`` here so the rendering
code only ever sees named bits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from vppagent.dataplane.failsafe import Failsafe
from vppagent.dataplane.failsafe import parse_failsafe as _parse_failsafe

# (protocol, first port, last port); Calico's defaults.
DEFAULT_FAILSAFE_INBOUND: Failsafe = (
    (6, 22, 22), (17, 68, 68), (6, 179, 179), (6, 2379, 2380), (6, 6443, 6443),
)
DEFAULT_FAILSAFE_OUTBOUND: Failsafe = (
    (17, 53, 53), (17, 67, 67), (6, 179, 179), (6, 2379, 2380), (6, 6443, 6443),
)
DEFAULT_MARK_MASK = 0xFFFF0000
_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_KNOWN = {
    "table", "markMask", "failsafeInbound", "failsafeOutbound", "refreshInterval", "logPrefix",
    "netns", "nodeName", "interfacePrefixes", "endpointToHostAction",
}


class ConfigError(ValueError):
    """A bad ``dataplane:`` option; the message names the key."""


@dataclass(frozen=True)
class Marks:
    """Packet mark bits the rules use, all inside the configured mask.

    accept/pass carry a policy verdict back to the calling chain, scratch is
    free for future use, masq asks postrouting to masquerade, untracked says
    raw-table policy already allowed the packet.
    """

    accept: int
    pass_: int
    scratch0: int
    scratch1: int
    masq: int
    untracked: int

    @property
    def verdict_bits(self) -> int:
        """Bits cleared before every endpoint evaluation."""
        return self.accept | self.pass_ | self.scratch0 | self.scratch1

    @classmethod
    def from_mask(cls, mask: int) -> "Marks":
        bits = [1 << i for i in range(32) if mask & (1 << i)]
        if len(bits) < 6:
            raise ConfigError(f"dataplane.markMask: {mask:#x} has {len(bits)} bits, need at least 6")
        return cls(*bits[:6])


@dataclass(frozen=True)
class NftablesConfig:
    table: str = "vppagent"
    mark_mask: int = DEFAULT_MARK_MASK
    failsafe_inbound: Failsafe = DEFAULT_FAILSAFE_INBOUND
    failsafe_outbound: Failsafe = DEFAULT_FAILSAFE_OUTBOUND
    refresh_interval: float | None = 90.0
    log_prefix: str = "calico-packet"
    netns: str | None = None
    node_name: str | None = None
    interface_prefixes: tuple[str, ...] = ("cali",)
    endpoint_to_host_accept: bool = True
    marks: Marks = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _TABLE_NAME.match(self.table):
            raise ConfigError(f"dataplane.table: invalid nftables table name {self.table!r}")
        object.__setattr__(self, "marks", Marks.from_mask(self.mark_mask))

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "NftablesConfig":
        """Parse the section (without ``type``); raise ConfigError naming the bad key."""
        for key in options:
            if key not in _KNOWN:
                raise ConfigError(f"dataplane: unknown nftables option {key!r} "
                                  f"(known: {', '.join(sorted(_KNOWN))})")
        kw: dict[str, Any] = {}
        if "table" in options:
            kw["table"] = _string(options, "table")
        if "markMask" in options:
            kw["mark_mask"] = _mask(options["markMask"])
        if "failsafeInbound" in options:
            kw["failsafe_inbound"] = parse_failsafe(options["failsafeInbound"], "failsafeInbound")
        if "failsafeOutbound" in options:
            kw["failsafe_outbound"] = parse_failsafe(options["failsafeOutbound"], "failsafeOutbound")
        if "refreshInterval" in options:
            value = options["refreshInterval"]
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or value <= 0):
                raise ConfigError(f"dataplane.refreshInterval: expected seconds > 0, got {value!r}")
            kw["refresh_interval"] = None if value is None else float(value)
        if "logPrefix" in options:
            prefix = _string(options, "logPrefix")
            if len(prefix) > 100 or '"' in prefix or "\\" in prefix:
                raise ConfigError("dataplane.logPrefix: at most 100 characters, no quotes or backslashes")
            kw["log_prefix"] = prefix
        if "netns" in options:
            kw["netns"] = _string(options, "netns") if options["netns"] is not None else None
        if "nodeName" in options:
            kw["node_name"] = _string(options, "nodeName")
        if "interfacePrefixes" in options:
            prefixes = options["interfacePrefixes"]
            if (not isinstance(prefixes, list) or not prefixes
                    or not all(isinstance(p, str) and re.match(r"^[A-Za-z0-9_.-]{1,14}$", p) for p in prefixes)):
                raise ConfigError("dataplane.interfacePrefixes: expected a non-empty list of interface name prefixes")
            kw["interface_prefixes"] = tuple(prefixes)
        if "endpointToHostAction" in options:
            action = _string(options, "endpointToHostAction")
            if action not in ("Accept", "Drop"):
                raise ConfigError(f"dataplane.endpointToHostAction: expected Accept or Drop, got {action!r}")
            kw["endpoint_to_host_accept"] = action == "Accept"
        return cls(**kw)


def _string(options: Mapping[str, Any], key: str) -> str:
    value = options[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"dataplane.{key}: expected a non-empty string, got {value!r}")
    return value


def _mask(value: Any) -> int:
    try:
        mask = int(value, 0) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"dataplane.markMask: expected an integer such as 0xffff0000, got {value!r}") from None
    if isinstance(value, bool) or not 0 < mask <= 0xFFFFFFFF:
        raise ConfigError(f"dataplane.markMask: expected a 32-bit mask, got {value!r}")
    return mask


def parse_failsafe(value: Any, key: str) -> Failsafe:
    """A failsafe port list option; errors are this backend's ConfigError."""
    return _parse_failsafe(value, key, ConfigError)
