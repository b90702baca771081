"""Assigning pod addresses from IP pools through blocks affine to this node.

Every store write is a compare-and-swap on one block, retried on conflict,
so two agents (or two processes) sharing a store never hand out the same
address. Assignment is idempotent per handle (the container id): a repeated
ADD gets the addresses it already holds.

Not done (yet): borrowing addresses from blocks affine to other nodes when
a pool has no unclaimed block left (Calico does; here that is exhaustion),
and releasing empty blocks' affinity.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Iterable, Mapping, Sequence

from vppagent.ipam.blocks import (
    Block, IPAddress, IPAMError, IPNetwork, PoolExhaustedError, candidate_blocks,
)
from vppagent.ipam.store import BlockStore
from vppagent.model.resources import IPPool

log = logging.getLogger(__name__)

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class _Conflict(Exception):
    """Someone else changed a block between our read and our write."""


def eligible_pools(pools: Iterable[IPPool], node_labels: Mapping[str, str], version: int) -> list[IPPool]:
    """Enabled pools of ``version`` whose nodeSelector selects this node, by name."""
    return sorted(
        (p for p in pools
         if p.cidr.version == version and not p.disabled and p.node_selector.evaluate(node_labels)),
        key=lambda p: p.name,
    )


def _describe_pools(pools: Sequence[IPPool]) -> str:
    return ", ".join(f"{p.name} ({p.cidr})" for p in pools)


class IPAM:
    """Block-based IPAM for one node on top of a ``BlockStore``."""

    def __init__(self, store: BlockStore, node: str, retries: int = 50) -> None:
        self.store = store
        self.node = node
        self.retries = retries

    # ------------------------------------------------------------------ queries

    def addresses(self, handle: str) -> list[IPAddress]:
        """Every address ``handle`` holds, in any block."""
        out: list[IPAddress] = []
        for block, _ in self.store.list_blocks():
            if handle in block.handles:
                out += block.held_by(handle)
        return out

    def usage(self) -> list[dict[str, object]]:
        """Blocks with affinity, size and use (status pages, tests)."""
        return [
            {"cidr": str(b.cidr), "affinity": b.affinity, "pool": b.pool, "used": len(b.allocations),
             "size": b.size}
            for b, _ in self.store.list_blocks()
        ]

    # ------------------------------------------------------------------ assign

    def assign(
        self,
        handle: str,
        attrs: Mapping[str, str],
        pools: Iterable[IPPool],
        node_labels: Mapping[str, str] | None = None,
        avoid: Iterable[IPAddress] = (),
    ) -> list[IPInterface]:
        """One host-prefix address per IP family that has an eligible pool.

        ``avoid`` are addresses in use outside IPAM (pods whose addresses
        came with the CNI request). Raises ``IPAMError`` (no pool for this
        node) or ``PoolExhaustedError`` naming the pools; on failure nothing
        stays assigned.
        """
        pools = list(pools)
        labels = dict(node_labels or {})
        by_version = {v: eligible_pools(pools, labels, v) for v in (4, 6)}
        if not by_version[4] and not by_version[6]:
            known = _describe_pools(pools) or "none"
            raise IPAMError(f"no enabled IP pool selects node {self.node} (pools: {known})")
        blocks = self.store.list_blocks()          # one read serves the idempotency check and the first try
        held = [ip for b, _ in blocks if handle in b.handles for ip in b.held_by(handle)]
        avoid_set = frozenset(avoid)
        out: list[IPInterface] = []
        try:
            for version in (4, 6):
                if not by_version[version]:
                    continue
                mine = [ip for ip in held if ip.version == version]
                ip = mine[0] if mine else self._assign_one(handle, dict(attrs), by_version[version], avoid_set,
                                                           blocks)
                out.append(ipaddress.ip_interface(f"{ip}/{ip.max_prefixlen}"))
        except Exception:
            if out and not held:
                self.release(handle)
            raise
        return out

    def _assign_one(self, handle: str, attrs: dict[str, str], pools: list[IPPool],
                    avoid: frozenset[IPAddress], blocks: list[tuple[Block, int]]) -> IPAddress:
        for attempt in range(self.retries):
            try:
                ip = self._try_assign(handle, attrs, pools, avoid, blocks if attempt == 0 else None)
            except _Conflict:
                continue
            if ip is None:
                version = pools[0].cidr.version
                raise PoolExhaustedError(
                    f"no free IPv{version} address for node {self.node} in pool(s) {_describe_pools(pools)}: "
                    "every address of this node's blocks is assigned and no unclaimed block is left")
            return ip
        raise IPAMError(f"IPAM store too busy: gave up after {self.retries} conflicting updates")

    def _try_assign(self, handle: str, attrs: dict[str, str], pools: list[IPPool],
                    avoid: frozenset[IPAddress], blocks: list[tuple[Block, int]] | None) -> IPAddress | None:
        if blocks is None:
            blocks = self.store.list_blocks()
        for pool in pools:
            mine = sorted(
                ((b, r) for b, r in blocks
                 if b.affinity == self.node and b.cidr.version == pool.cidr.version
                 and b.cidr.subnet_of(pool.cidr)),  # type: ignore[arg-type]
                key=lambda br: br[0].cidr,
            )
            for block, revision in mine:
                ordinal = block.first_free(avoid)
                if ordinal is None:
                    continue
                block.assign(ordinal, handle, attrs)
                if self.store.update_block(block, revision) is None:
                    raise _Conflict()
                return block.address(ordinal)
            for cidr in candidate_blocks(pool.cidr, pool.block_size, [b.cidr for b, _ in blocks]):
                block = Block(cidr, affinity=self.node, pool=pool.name)
                ordinal = block.first_free(avoid)
                if ordinal is None:
                    continue
                block.assign(ordinal, handle, attrs)
                if self.store.create_block(block) is None:
                    raise _Conflict()
                log.info("IPAM: node %s claimed block %s of pool %s", self.node, cidr, pool.name)
                return block.address(ordinal)
        return None

    # ------------------------------------------------------------------ release

    def release(self, handle: str) -> list[IPAddress]:
        """Free everything ``handle`` holds; returns what was freed (empty: nothing held)."""
        for _ in range(self.retries):
            freed: list[IPAddress] = []
            try:
                for block, revision in self.store.list_blocks():
                    if handle not in block.handles and handle not in block.allocations.values():
                        continue
                    freed += block.release(handle)
                    if self.store.update_block(block, revision) is None:
                        raise _Conflict()
            except _Conflict:
                continue
            return freed
        raise IPAMError(f"IPAM store too busy: could not release {handle}")


def default_pools(cidrs: Iterable[str | IPNetwork]) -> list[IPPool]:
    """Pools used when the datastore has no IPPool: Calico's default block sizes."""
    out = []
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr)
        block = max(26 if net.version == 4 else 122, net.prefixlen)
        out.append(IPPool(name=f"default-ipv{net.version}-ippool", cidr=net, block_size=block))
    return out
