"""IPAM blocks as datastore objects (Kubernetes CRD, etcd value, file).

A block is stored as a ``crd.projectcalico.org/v1`` ``IPAMBlock`` object
whose spec carries the allocator's own fields; ``affinity`` uses Calico's
``host:<node>`` spelling so a block's owner reads the same everywhere. The
sources turn stored blocks into :class:`BlockAffinity` resources (all that
routing needs); the block stores turn them back into :class:`Block`.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Mapping

from vppagent.ipam.blocks import Block, IPNetwork
from vppagent.model.errors import ValidationError
from vppagent.model.resources import BlockAffinity

BLOCK_API_VERSION = "crd.projectcalico.org/v1"
BLOCK_KIND = "IPAMBlock"
BLOCK_GROUP = "crd.projectcalico.org"
BLOCK_PLURAL = "ipamblocks"
AFFINITY_PREFIX = "host:"


def block_object_name(cidr: IPNetwork) -> str:
    """Calico's object name for a block: ``10-65-0-0-26``, ``fd00--122``."""
    return str(cidr).replace(".", "-").replace(":", "-").replace("/", "-")


def block_to_object(block: Block) -> dict[str, Any]:
    data = block.to_json()
    return {
        "apiVersion": BLOCK_API_VERSION,
        "kind": BLOCK_KIND,
        "metadata": {"name": block_object_name(block.cidr)},
        "spec": {
            "cidr": data["cidr"],
            "affinity": AFFINITY_PREFIX + block.affinity if block.affinity else "",
            "pool": data["pool"],
            "allocations": data["allocations"],
            "handles": data["handles"],
        },
    }


def block_from_object(obj: Mapping[str, Any], path: str = "") -> Block:
    """The block an ``IPAMBlock`` object holds; ValidationError names the bad field."""
    spec = obj.get("spec")
    where = f"{path} " if path else ""
    if not isinstance(spec, Mapping):
        raise ValidationError(f"{where}spec".strip(), "IPAMBlock needs a spec")
    try:
        cidr = ipaddress.ip_network(spec.get("cidr", ""))
    except ValueError:
        raise ValidationError(f"{where}spec.cidr".strip(), f"invalid CIDR {spec.get('cidr')!r}") from None
    affinity = spec.get("affinity") or ""
    if not isinstance(affinity, str):
        raise ValidationError(f"{where}spec.affinity".strip(), "must be a string")
    try:
        return Block.from_json({
            "cidr": str(cidr),
            "affinity": affinity.removeprefix(AFFINITY_PREFIX),
            "pool": spec.get("pool", ""),
            "allocations": spec.get("allocations") or {},
            "handles": spec.get("handles") or {},
        })
    except (TypeError, ValueError, AttributeError) as exc:
        raise ValidationError(f"{where}spec.allocations".strip(), f"malformed allocations: {exc}") from None


def affinity_from_object(obj: Mapping[str, Any], path: str = "") -> BlockAffinity | None:
    """The route-relevant part of a stored block (None when no node owns it)."""
    block = block_from_object(obj, path)
    if not block.affinity:
        return None
    return BlockAffinity(cidr=block.cidr, node=block.affinity)
