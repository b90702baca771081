"""Per-pod choices carried by pod annotations.

- ``vpp.vppagent.io/interface``: ``tap``, ``af_packet`` or ``memif``
- ``vpp.vppagent.io/allowed-sources``: extra source prefixes the pod may
  send from (comma separated), besides its own addresses
- ``vpp.vppagent.io/queues``: rx and tx queue count
- ``vpp.vppagent.io/ring-size``: ring size (a power of two)
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable

from vppagent.dataplane.base import WiringError
from vppagent.dataplane.vpp.config import POD_INTERFACES

PREFIX = "vpp.vppagent.io/"
INTERFACE = PREFIX + "interface"
ALLOWED_SOURCES = PREFIX + "allowed-sources"
QUEUES = PREFIX + "queues"
RING_SIZE = PREFIX + "ring-size"


@dataclass(frozen=True)
class PodOptions:
    interface: str | None = None
    allowed_sources: tuple[str, ...] = ()
    queues: int | None = None
    ring_size: int | None = None


def parse(annotations: Iterable[tuple[str, str]]) -> PodOptions:
    """Read our annotations; a bad value is a ``WiringError`` naming the annotation."""
    ann = dict(annotations)
    kind = ann.get(INTERFACE)
    if kind is not None and kind not in POD_INTERFACES:
        raise WiringError(f"annotation {INTERFACE}: expected one of {', '.join(POD_INTERFACES)}, got {kind!r}")
    sources: list[str] = []
    for text in (ann.get(ALLOWED_SOURCES) or "").split(","):
        if text.strip():
            try:
                sources.append(str(ipaddress.ip_network(text.strip(), strict=False)))
            except ValueError:
                raise WiringError(f"annotation {ALLOWED_SOURCES}: invalid prefix {text.strip()!r}") from None
    return PodOptions(kind, tuple(sources), _int(ann, QUEUES, 1, 64), _ring(ann))


def _int(ann: dict[str, str], key: str, lo: int, hi: int) -> int | None:
    if key not in ann:
        return None
    try:
        value = int(ann[key])
    except ValueError:
        value = -1
    if not lo <= value <= hi:
        raise WiringError(f"annotation {key}: expected an integer in {lo}..{hi}, got {ann[key]!r}")
    return value


def _ring(ann: dict[str, str]) -> int | None:
    value = _int(ann, RING_SIZE, 64, 32768)
    if value is not None and value & (value - 1):
        raise WiringError(f"annotation {RING_SIZE}: must be a power of two, got {value}")
    return value
