"""IPAM's data: address blocks affine to nodes, and who holds each address.

As in Calico, a pool is cut into blocks (``blockSize``, /26 by default); a
node claims whole blocks and assigns from them, so nodes never contend for
single addresses and a node's pods are routable as a few aggregates. Every
address of a block is assignable (no network/broadcast reservation).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterator, Union

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class IPAMError(Exception):
    """An IPAM request cannot be served; the message is meant for a person."""


class PoolExhaustedError(IPAMError):
    """No free address in any eligible pool."""


@dataclass
class Block:
    """One block: its CIDR, the node it is affine to, and its allocations.

    ``allocations`` maps an ordinal (offset in the block) to a handle (the
    container id); ``handles`` keeps each handle's attributes (namespace,
    pod, interface, node) so an operator can see who holds what.
    """

    cidr: IPNetwork
    affinity: str = ""
    pool: str = ""
    allocations: dict[int, str] = field(default_factory=dict)
    handles: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.cidr.num_addresses

    @property
    def free(self) -> int:
        return self.size - len(self.allocations)

    def address(self, ordinal: int) -> IPAddress:
        return self.cidr.network_address + ordinal

    def ordinal(self, ip: IPAddress) -> int:
        return int(ip) - int(self.cidr.network_address)

    def first_free(self, avoid: frozenset[IPAddress] = frozenset()) -> int | None:
        for ordinal in range(self.size):
            if ordinal not in self.allocations and self.address(ordinal) not in avoid:
                return ordinal
        return None

    def held_by(self, handle: str) -> list[IPAddress]:
        return [self.address(o) for o, h in sorted(self.allocations.items()) if h == handle]

    def assign(self, ordinal: int, handle: str, attrs: dict[str, str]) -> None:
        self.allocations[ordinal] = handle
        self.handles[handle] = dict(attrs)

    def release(self, handle: str) -> list[IPAddress]:
        """Free every address ``handle`` holds here; returns them."""
        freed = [o for o, h in self.allocations.items() if h == handle]
        for o in freed:
            del self.allocations[o]
        self.handles.pop(handle, None)
        return [self.address(o) for o in sorted(freed)]

    # -- serialisation -------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "cidr": str(self.cidr),
            "affinity": self.affinity,
            "pool": self.pool,
            "allocations": {str(o): h for o, h in sorted(self.allocations.items())},
            "handles": self.handles,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Block":
        return cls(
            cidr=ipaddress.ip_network(data["cidr"]),
            affinity=data.get("affinity", ""),
            pool=data.get("pool", ""),
            allocations={int(o): h for o, h in data.get("allocations", {}).items()},
            handles={h: dict(a) for h, a in data.get("handles", {}).items()},
        )


def candidate_blocks(pool_cidr: IPNetwork, block_size: int, taken: list[IPNetwork]) -> Iterator[IPNetwork]:
    """Unclaimed blocks of a pool, lowest first, skipping any overlapping ``taken``.

    Lazy: a /48 IPv6 pool has 2^74 blocks, but only ``len(taken) + 1``
    candidates are ever looked at.
    """
    mine = [t for t in taken if t.version == pool_cidr.version and t.overlaps(pool_cidr)]  # type: ignore[arg-type]
    same_size = {t for t in mine if t.prefixlen == block_size}
    odd = [t for t in mine if t.prefixlen != block_size]   # left over from an older blockSize
    for cand in pool_cidr.subnets(new_prefix=block_size):
        if cand not in same_size and not any(cand.overlaps(t) for t in odd):  # type: ignore[arg-type]
            yield cand
