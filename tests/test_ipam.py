"""IPAM: pools → blocks affine to nodes → addresses, persisted in a state dir."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vppagent.ipam import (
    IPAM, Block, FileBlockStore, IPAMError, MemoryBlockStore, PoolExhaustedError, default_pools,
)
from vppagent.ipam.blocks import candidate_blocks
from vppagent.model.resources import IPPool
from vppagent.selector import parse

ROOT = Path(__file__).resolve().parent.parent


def pool(name: str, cidr: str, block: int | None = None, **kw) -> IPPool:
    net = ipaddress.ip_network(cidr)
    return IPPool(name=name, cidr=net, block_size=block or (26 if net.version == 4 else 122), **kw)


def ip(text: str):
    return ipaddress.ip_interface(text)


@pytest.fixture
def ipam(tmp_path):
    return IPAM(FileBlockStore(tmp_path), "node1")


def test_assigns_sequentially_from_a_block_affine_to_the_node(ipam, tmp_path):
    pools = [pool("p4", "10.65.0.0/16")]
    a = ipam.assign("c1", {"namespace": "ns", "pod": "a"}, pools)
    b = ipam.assign("c2", {"namespace": "ns", "pod": "b"}, pools)
    # Calico: every address of a block is usable, the block's first included.
    assert a == [ip("10.65.0.0/32")] and b == [ip("10.65.0.1/32")]
    assert ipam.usage() == [{"cidr": "10.65.0.0/26", "affinity": "node1", "pool": "p4", "used": 2, "size": 64}]
    data = json.loads((tmp_path / "ipam" / "blocks" / "10.65.0.0_26.json").read_text())
    assert data["block"]["handles"]["c1"] == {"namespace": "ns", "pod": "a"}
    assert not [f for f in os.listdir(tmp_path / "ipam" / "blocks") if f.endswith(".tmp")]


def test_assign_is_idempotent_per_handle_and_release_frees(ipam):
    pools = [pool("p4", "10.65.0.0/16")]
    first = ipam.assign("c1", {}, pools)
    assert ipam.assign("c1", {}, pools) == first
    ipam.assign("c2", {}, pools)
    assert ipam.release("c1") == [first[0].ip]
    assert ipam.release("c1") == []
    assert ipam.addresses("c1") == []
    assert ipam.assign("c3", {}, pools) == first      # lowest free address again


def test_state_survives_a_restart(tmp_path):
    pools = [pool("p4", "10.65.0.0/16")]
    first = IPAM(FileBlockStore(tmp_path), "node1")
    got = {str(first.assign(f"c{i}", {}, pools)[0]) for i in range(5)}
    again = IPAM(FileBlockStore(tmp_path), "node1")          # a new agent process
    assert str(again.assign("c9", {}, pools)[0]) not in got
    assert again.addresses("c3") == [ipaddress.ip_address("10.65.0.3")]


def test_claims_new_blocks_and_reports_exhaustion_naming_pools(ipam):
    pools = [pool("tiny", "10.66.0.0/30", block=31)]
    got = [ipam.assign(f"c{i}", {}, pools)[0] for i in range(4)]
    assert [str(g) for g in got] == ["10.66.0.0/32", "10.66.0.1/32", "10.66.0.2/32", "10.66.0.3/32"]
    assert [u["cidr"] for u in ipam.usage()] == ["10.66.0.0/31", "10.66.0.2/31"]
    with pytest.raises(PoolExhaustedError, match=r"no free IPv4 address for node node1 in pool\(s\) tiny \(10.66.0.0/30\)"):
        ipam.assign("c4", {}, pools)
    ipam.release("c2")
    assert ipam.assign("c5", {}, pools) == [ip("10.66.0.2/32")]


def test_blocks_of_other_nodes_are_not_used(tmp_path):
    pools = [pool("tiny", "10.66.0.0/30", block=31)]
    store = FileBlockStore(tmp_path)
    a, b = IPAM(store, "a"), IPAM(store, "b")
    assert a.assign("x", {}, pools) == [ip("10.66.0.0/32")]
    assert b.assign("y", {}, pools) == [ip("10.66.0.2/32")]         # b claims its own block
    assert b.assign("z", {}, pools) == [ip("10.66.0.3/32")]
    with pytest.raises(PoolExhaustedError):
        b.assign("w", {}, pools)                                     # no borrowing from a's block
    assert a.assign("v", {}, pools) == [ip("10.66.0.1/32")]


def test_disabled_pools_and_node_selector(ipam):
    pools = [
        pool("off", "10.1.0.0/16", disabled=True),
        pool("zone-b", "10.2.0.0/16", node_selector=parse("zone == 'b'")),
        pool("zone-a", "10.3.0.0/16", node_selector=parse("zone == 'a'")),
    ]
    assert ipam.assign("c1", {}, pools, {"zone": "a"}) == [ip("10.3.0.0/32")]
    with pytest.raises(IPAMError, match=r"no enabled IP pool selects node node1 \(pools: off \(10.1.0.0/16\)"):
        ipam.assign("c2", {}, pools, {"zone": "c"})
    # Existing addresses of a pool that was disabled meanwhile stay held and releasable.
    pools[2] = pool("zone-a", "10.3.0.0/16", disabled=True)
    assert ipam.addresses("c1") == [ipaddress.ip_address("10.3.0.0")]
    assert ipam.release("c1") == [ipaddress.ip_address("10.3.0.0")]


def test_dual_stack_and_rollback_when_one_family_is_exhausted(ipam):
    pools = [pool("v4", "10.65.0.0/16"), pool("v6", "fd65::/48")]
    assert ipam.assign("c1", {}, pools) == [ip("10.65.0.0/32"), ip("fd65::/128")]
    assert ipam.usage()[1]["cidr"] == "fd65::/122"
    full_v6 = [pool("v4", "10.65.0.0/16"), pool("v6", "fd66::/128", block=128)]
    ipam.assign("c2", {}, full_v6)
    with pytest.raises(PoolExhaustedError, match="IPv6"):
        ipam.assign("c3", {}, full_v6)
    assert ipam.addresses("c3") == []      # its IPv4 address was given back


def test_avoid_skips_addresses_used_outside_ipam(ipam):
    pools = [pool("p4", "10.65.0.0/16")]
    avoid = {ipaddress.ip_address("10.65.0.0"), ipaddress.ip_address("10.65.0.1")}
    assert ipam.assign("c1", {}, pools, avoid=avoid) == [ip("10.65.0.2/32")]


def test_candidate_blocks_skip_claimed_and_odd_sized_blocks():
    net = ipaddress.ip_network
    taken = [net("10.0.0.0/26"), net("10.0.0.64/27")]   # the second from an older blockSize
    got = candidate_blocks(net("10.0.0.0/24"), 26, taken)
    assert [str(c) for c in got] == ["10.0.0.128/26", "10.0.0.192/26"]
    huge = candidate_blocks(net("fd00::/48"), 122, [net("fd00::/122")])
    assert str(next(huge)) == "fd00::40/122"                      # lazy over 2^74 blocks


def test_store_compare_and_swap(tmp_path):
    for store in (FileBlockStore(tmp_path), MemoryBlockStore()):
        block = Block(ipaddress.ip_network("10.9.0.0/30"), affinity="n")
        assert store.create_block(block) == 1
        assert store.create_block(block) is None
        got, rev = store.get_block(block.cidr)
        got.assign(0, "h", {})
        assert store.update_block(got, rev) == 2
        assert store.update_block(got, rev) is None               # stale revision
        assert store.delete_block(block.cidr, 1) is False
        assert store.delete_block(block.cidr, 2) is True
        assert store.list_blocks() == []


def test_default_pools_use_calico_block_sizes():
    v4, v6, small = default_pools(["10.65.0.0/16", "fd65::/48", "10.9.0.0/28"])
    assert (v4.block_size, v6.block_size, small.block_size) == (26, 122, 28)
    assert v4.name == "default-ipv4-ippool" and not v4.disabled


WORKER = """
import sys, ipaddress
from vppagent.ipam import IPAM, FileBlockStore
from vppagent.model.resources import IPPool
state, node, prefix, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
pools = [IPPool("p", ipaddress.ip_network("10.70.0.0/24"), 29)]
ipam = IPAM(FileBlockStore(state), node)
for i in range(n):
    print(ipam.assign(f"{prefix}-{i}", {}, pools)[0], flush=True)
"""


@pytest.mark.parametrize("nodes", [("n1", "n1"), ("n1", "n2")])
def test_two_processes_sharing_a_state_dir_never_collide(tmp_path, nodes):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), node, f"p{i}", "40"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for i, node in enumerate(nodes)
    ]
    try:
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    addrs = [line for out, _ in outs for line in out.split()]
    assert len(addrs) == 80 and len(set(addrs)) == 80
    ipam = IPAM(FileBlockStore(tmp_path), "n1")
    total = sum(u["used"] for u in ipam.usage())
    assert total == 80
