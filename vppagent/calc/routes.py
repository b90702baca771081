"""Routes to other nodes' pod blocks, from block affinities, nodes and pools.

A block claimed by node N is reached via N's underlay address; the pool the
block was cut from says whether to go through the VXLAN overlay. Kept apart
from the policy graph because routes depend on nothing policy does, and one
block or node change touches only the routes it names.
"""

from __future__ import annotations

from collections import defaultdict

from vppagent.model.resources import BlockAffinity, IPAddress, IPNetwork, IPPool, Node
from vppagent.model.updates import RouteEncap, RouteInfo, RouteRemove, RouteUpdate, Update

ENCAP_MODES_WITH_VXLAN = ("Always", "CrossSubnet")


def node_gateway(node: Node | None, version: int) -> IPAddress | None:
    """The node's first underlay address of the block's IP version."""
    if node is None:
        return None
    for addr in node.addresses:
        if addr.version == version:
            return addr
    return None


def pool_of(cidr: IPNetwork, pools: dict[str, IPPool]) -> IPPool | None:
    """The most specific pool containing a block."""
    best: IPPool | None = None
    for pool in pools.values():
        if pool.cidr.version == cidr.version and cidr.subnet_of(pool.cidr):  # type: ignore[arg-type]
            if best is None or pool.cidr.prefixlen > best.cidr.prefixlen:
                best = pool
    return best


class RouteCalculator:
    """Incremental route state; ``flush`` returns the changed routes.

    ``local_node`` is left out (its blocks are local); None means every
    node's blocks (the sync layer, which then filters per node).
    CrossSubnet pools are treated as Always: a node knows only addresses,
    not subnets, so it cannot tell which peers share its L2 segment.
    """

    def __init__(self, local_node: str | None) -> None:
        self.local_node = local_node
        self.blocks: dict[str, BlockAffinity] = {}
        self.nodes: dict[str, Node] = {}
        self.pools: dict[str, IPPool] = {}
        self._blocks_by_node: dict[str, set[str]] = defaultdict(set)
        self._dirty: set[str] = set()
        self._sent: dict[str, RouteInfo] = {}

    def on_block(self, block: BlockAffinity, removed: bool) -> None:
        key = block.key
        old = self.blocks.pop(key, None)
        if old is not None:
            self._blocks_by_node[old.node].discard(key)
        if not removed:
            self.blocks[key] = block
            self._blocks_by_node[block.node].add(key)
        self._dirty.add(key)

    def on_node(self, node: Node, removed: bool) -> None:
        if removed:
            self.nodes.pop(node.name, None)
        else:
            self.nodes[node.name] = node
        self._dirty.update(self._blocks_by_node.get(node.name, ()))

    def on_pool(self, pool: IPPool, removed: bool) -> None:
        if removed:
            self.pools.pop(pool.name, None)
        else:
            self.pools[pool.name] = pool
        self._dirty.update(k for k, b in self.blocks.items()
                           if b.cidr.version == pool.cidr.version and b.cidr.subnet_of(pool.cidr))  # type: ignore[arg-type]

    def route_for(self, block: BlockAffinity) -> RouteInfo | None:
        if self.local_node is not None and block.node == self.local_node:
            return None
        gateway = node_gateway(self.nodes.get(block.node), block.cidr.version)
        if gateway is None:
            return None          # the node has not published an address yet
        pool = pool_of(block.cidr, self.pools)
        vxlan = pool is not None and pool.vxlan_mode in ENCAP_MODES_WITH_VXLAN
        return RouteInfo(
            dst=block.cidr, node=block.node, gateway=gateway,
            encap=RouteEncap.VXLAN if vxlan else RouteEncap.NONE,
            nat_outgoing=bool(pool and pool.nat_outgoing))

    def flush(self) -> tuple[list[Update], list[Update]]:
        """(adds, removes) for every dirty block."""
        adds: list[Update] = []
        removes: list[Update] = []
        for key in sorted(self._dirty):
            block = self.blocks.get(key)
            info = self.route_for(block) if block is not None else None
            sent = self._sent.get(key)
            if info is None:
                if sent is not None:
                    del self._sent[key]
                    removes.append(RouteRemove(key))
            elif info != sent:
                self._sent[key] = info
                adds.append(RouteUpdate(key, info))
        self._dirty.clear()
        return adds, removes

    def __len__(self) -> int:
        return len(self._sent)
