"""Pod IP address management: pools → blocks affine to nodes → addresses.

::

    from vppagent.ipam import IPAM, FileBlockStore

    ipam = IPAM(FileBlockStore("/var/lib/vppagent"), node="node1")
    ips = ipam.assign("<container id>", {"namespace": "shop", "pod": "db"}, pools, node_labels)
    ipam.release("<container id>")

The allocator (:mod:`.allocator`) only talks to a :class:`BlockStore`
(:mod:`.store`), so blocks can later live in Kubernetes or etcd.
"""

from vppagent.ipam.allocator import IPAM, default_pools, eligible_pools
from vppagent.ipam.blocks import Block, IPAMError, PoolExhaustedError
from vppagent.ipam.store import BlockStore, FileBlockStore, MemoryBlockStore, atomic_write_json

__all__ = [
    "IPAM", "Block", "BlockStore", "FileBlockStore", "IPAMError",
    "MemoryBlockStore", "PoolExhaustedError", "atomic_write_json", "default_pools", "eligible_pools",
]
