"""IPAM blocks in etcd, shared by every node's agent (Calico's etcd IPAM layout).

Each block is one key, ``<root>/ipam/v2/assignment/ipv4/block/10.65.0.0-26``,
holding the ``IPAMBlock`` object of :mod:`vppagent.ipam.objects`; the etcd
source reads the same keys to learn which node owns which block. A block's
revision is its key's ``mod_revision``, so the allocator's compare-and-swap
maps onto one etcd transaction: create only if ``create_revision == 0``
(absent), replace or delete only if ``mod_revision`` is unchanged.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Sequence

from vppagent.ipam.blocks import Block, IPAMError, IPNetwork
from vppagent.ipam.objects import block_from_object, block_to_object
from vppagent.ipam.store import BlockStore, Revision
from vppagent.model.errors import ValidationError
from vppagent.sources.etcd import DEFAULT_ROOT, block_key, blocks_prefix, etcd_client
from vppagent.sources.etcd_client import EtcdClient, KeyValue


class EtcdBlockStore(BlockStore):
    """Blocks as etcd keys; every write is a single compare-and-swap transaction.

    Etcd errors (unreachable, …) propagate as ``EtcdError``: the allocator
    must not guess while the store is away. A corrupt block raises
    ``IPAMError`` naming its key rather than being skipped, because skipping
    it would make its addresses look free.
    """

    def __init__(self, client: EtcdClient | None = None, *, endpoints: str | Sequence[str] | None = None,
                 root: str = DEFAULT_ROOT) -> None:
        self.client = etcd_client(client, endpoints)
        self.root = root.rstrip("/")

    def _block(self, kv: KeyValue) -> Block:
        try:
            return block_from_object(json.loads(kv.value))
        except (ValueError, AttributeError) as exc:      # ValidationError and JSON errors are ValueErrors
            detail = str(exc) if isinstance(exc, ValidationError) else f"invalid JSON: {exc}"
            raise IPAMError(f"corrupt IPAM block at etcd key {kv.key}: {detail}") from None

    def list_blocks(self) -> list[tuple[Block, Revision]]:
        listing = self.client.list_prefix(blocks_prefix(self.root))
        return [(self._block(kv), kv.mod_revision) for kv in listing.kvs if "/block/" in kv.key]

    def get_block(self, cidr: IPNetwork) -> tuple[Block, Revision] | None:
        kv = self.client.get(block_key(ipaddress.ip_network(cidr), self.root))
        return None if kv is None else (self._block(kv), kv.mod_revision)

    def create_block(self, block: Block) -> Revision | None:
        return self.client.create(block_key(block.cidr, self.root), json.dumps(block_to_object(block)))

    def update_block(self, block: Block, revision: Revision) -> Revision | None:
        if revision <= 0:                 # mod_revision 0 would match an absent key: that is a create
            return None
        return self.client.update(block_key(block.cidr, self.root), json.dumps(block_to_object(block)), revision)

    def delete_block(self, cidr: IPNetwork, revision: Revision) -> bool:
        return self.client.delete_if(block_key(ipaddress.ip_network(cidr), self.root), revision)
