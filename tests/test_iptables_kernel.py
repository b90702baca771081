"""The iptables dataplane against a real kernel, inside a throwaway netns, on both backends.

Read-back, idempotence, tamper repair, ownership (foreign chains, rules and
sets survive everything), counters preserved across a restart, atomic
failure, deferred IP set deletion, set rebuild through ``ipset swap``.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from typing import Any, Callable, Iterator

import pytest

from vppagent.dataplane.iptables import IptablesConfig, IptablesDataplane
from vppagent.dataplane.iptables.backend import detect_backend
from vppagent.dataplane.iptables.commands import Runner
from vppagent.dataplane.iptables.readback import parse_counters, parse_save
from vppagent.model.resources import Action, PortRange, TierDefault
from vppagent.model.updates import (
    InSync, IPSetDeltaUpdate, IPSetRemove, IPSetType, IPSetUpdate, PolicyID, PolicyRemove, PolicyUpdate,
    ProfileUpdate, RenderedPolicy, RenderedRule, RuleOrigin, TierInfo, WorkloadEndpointInfo,
    WorkloadEndpointRemove, WorkloadEndpointUpdate,
)
from vppagent.reconciler import Backoff

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, netfilter)"),
]

PID = PolicyID("default", "ns/web")
SET_ID = "s:clients"


def rule(action: Action = Action.ALLOW, **kw: Any) -> RenderedRule:
    return RenderedRule(action=action, origin=RuleOrigin("ns/web", 0), **kw)


def policy(*rules: RenderedRule) -> PolicyUpdate:
    return PolicyUpdate(PID, RenderedPolicy(inbound_rules=rules))


def wep(iface: str = "calia1", pod: str = "web") -> WorkloadEndpointUpdate:
    return WorkloadEndpointUpdate(f"node1/k8s/ns/{pod}/eth0", WorkloadEndpointInfo(
        namespace="ns", pod=pod, node="node1", endpoint="eth0", interface_name=iface,
        profile_ids=("kns.ns",), tiers=(TierInfo("default", TierDefault.DENY, ingress_policies=("ns/web",)),),
    ))


def snapshot() -> list:
    return [
        IPSetUpdate(SET_ID, IPSetType.NET, frozenset({"10.0.0.1/32", "10.0.0.2/32", "fd00::1/128"})),
        policy(rule(src_ip_set_ids=(SET_ID,), protocol=6, dst_ports=(PortRange(80, 80),))),
        ProfileUpdate("kns.ns", inbound_rules=(rule(),), outbound_rules=(rule(),)),
        wep(),
    ]


class Netns:
    def __init__(self) -> None:
        self.name = f"iptk{os.getpid() % 10000}{random.randrange(16 ** 4):04x}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)

    def sh(self, *argv: str, check: bool = True, input: str | None = None) -> str:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True,
                              check=check, input=input).stdout

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


@pytest.fixture
def netns() -> Iterator[Netns]:
    ns = Netns()
    try:
        yield ns
    finally:
        ns.delete()


@pytest.fixture(params=["nft", "legacy"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(netns: Netns, backend: str, clock: Callable[[], float] | None = None, **options: Any) -> IptablesDataplane:
    options.setdefault("refresh_interval", 90.0)
    config = IptablesConfig(netns=netns.name, backend=backend, node_name="node1", **options)
    kwargs: dict[str, Any] = {"backoff": Backoff(base=1.0, max=4.0)}
    if clock is not None:
        kwargs["clock"] = clock
    dp = IptablesDataplane(config, **kwargs)
    dp.start()
    return dp


def synced(netns: Netns, backend: str, updates: list | None = None, **kw: Any) -> IptablesDataplane:
    dp = make(netns, backend, **kw)
    dp.apply((snapshot() if updates is None else updates) + [InSync()])
    assert dp.last_report is not None and not dp.last_report.errors, dp.last_report
    return dp


def save(netns: Netns, backend: str, family: int = 4, counters: bool = False) -> str:
    tool = f"{'ip6' if family == 6 else 'ip'}tables-{backend}-save"
    text = netns.sh(tool, *(["-c"] if counters else []))
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


def ours(text: str) -> dict[tuple[str, str], list[str]]:
    """Our chains and our rules in built-in chains, from a save."""
    out = {}
    for table, chains in parse_save(text).items():
        for chain, bodies in chains.items():
            if chain.startswith("cali-"):
                out[(table, chain)] = bodies
            elif any("cali:" in b for b in bodies):
                out[(table, chain)] = [b for b in bodies if "cali:" in b]
    return out


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# -- tests ------------------------------------------------------------------------------------

def test_nothing_written_before_in_sync(netns: Netns, backend: str) -> None:
    dp = make(netns, backend)
    dp.apply(snapshot())
    assert dp.kernel.restores == 0 and dp.kernel.ipset_calls == 0
    assert "cali-" not in save(netns, backend)
    assert "cali" not in netns.sh("ipset", "list", "-n")


def test_apply_read_back_and_idempotent(netns: Netns, backend: str) -> None:
    dp = synced(netns, backend)
    v4, v6 = save(netns, backend, 4), save(netns, backend, 6)
    assert "-A FORWARD -m comment --comment" in v4 and "-j cali-FORWARD" in v4
    assert ":cali-tw-calia1" in v4 and ":cali-tw-calia1" in v6
    assert "cali40s:clients" in v4 and "cali60s:clients" in v6
    sets = netns.sh("ipset", "save")
    assert "add cali40s:clients 10.0.0.1" in sets and "add cali60s:clients fd00::1" in sets
    # Everything desired reads back equal.
    actual = dp.kernel.dump()
    desired = dp.reconciler.desired()
    assert actual.keys() == desired.keys()
    assert all(dp.kernel.equivalent(k, desired[k], actual[k][0]) for k in desired)
    # A second full sync writes nothing.
    restores = dp.kernel.restores
    report = dp.resync()
    assert report["ops"] == 0 and report["adopted"] == len(desired)
    assert dp.kernel.restores == restores
    assert save(netns, backend, 4) == v4


def test_incremental_changes_touch_only_what_changed(netns: Netns, backend: str) -> None:
    dp = synced(netns, backend)
    before = ours(save(netns, backend))
    restores, ipsets = dp.kernel.restores, dp.kernel.ipset_calls
    dp.apply([IPSetDeltaUpdate(SET_ID, added=frozenset({"10.0.0.3/32"}))])
    assert dp.kernel.ipset_calls == ipsets + 1 and dp.kernel.restores == restores
    assert "add cali40s:clients 10.0.0.3" in netns.sh("ipset", "save")
    dp.apply([policy(rule(src_ip_set_ids=(SET_ID,), protocol=6, dst_ports=(PortRange(443, 443),)))])
    after = ours(save(netns, backend))
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert len(changed) == 1 and next(iter(changed))[1].startswith("cali-pi-")   # only the policy chain
    assert dp.kernel.restores == restores + 2     # one filter transaction per family


def test_tampering_is_repaired_by_the_periodic_refresh(netns: Netns, backend: str) -> None:
    clock = Clock()
    dp = synced(netns, backend, refresh_interval=5.0, clock=clock)
    good = ours(save(netns, backend))
    ipt = f"iptables-{backend}"
    tw = next(c for _, c in good if c.startswith("cali-tw-"))
    pi = next(c for _, c in good if c.startswith("cali-pi-"))
    netns.sh(ipt, "-D", tw, "3")                                         # a rule deleted by hand
    netns.sh(ipt, "-I", pi, "1", "-j", "ACCEPT")                         # a rule inserted by hand
    netns.sh(ipt, "-F", "cali-from-wl-dispatch")                         # a chain flushed
    netns.sh(ipt, "-D", "FORWARD", "1")                                  # the jump from FORWARD removed
    netns.sh(ipt, "-I", "INPUT", "1", "-j", "ACCEPT")                    # our jump no longer first
    netns.sh("ipset", "add", "cali40s:clients", "192.0.2.1")            # a set member added
    assert ours(save(netns, backend)) != good
    dp.run_periodic()
    assert ours(save(netns, backend)) != good                           # not due yet
    clock.now += 6
    dp.run_periodic()
    assert ours(save(netns, backend)) == good
    assert "192.0.2.1" not in netns.sh("ipset", "save")
    assert save(netns, backend).splitlines().count("-A INPUT -j ACCEPT") == 1   # the foreign rule stays
    assert dp.status().ready


def test_foreign_chains_rules_and_sets_survive(netns: Netns, backend: str) -> None:
    ipt = f"iptables-{backend}"
    netns.sh(ipt, "-N", "FOREIGN")
    netns.sh(ipt, "-A", "FOREIGN", "-s", "198.51.100.7", "-j", "DROP")
    netns.sh(ipt, "-A", "FORWARD", "-s", "203.0.113.9", "-j", "FOREIGN")
    netns.sh(ipt, "-t", "nat", "-A", "POSTROUTING", "-s", "203.0.113.0/24", "-j", "MASQUERADE")
    netns.sh("ipset", "create", "foreign-set", "hash:ip")
    netns.sh("ipset", "add", "foreign-set", "192.0.2.99")

    def foreign_intact() -> None:
        text = save(netns, backend)
        assert "-A FOREIGN -s 198.51.100.7/32 -j DROP" in text
        assert "-A FORWARD -s 203.0.113.9/32 -j FOREIGN" in text
        assert "-A POSTROUTING -s 203.0.113.0/24 -j MASQUERADE" in text
        assert "add foreign-set 192.0.2.99" in netns.sh("ipset", "save")

    dp = synced(netns, backend)
    foreign_intact()
    forward = [line for line in save(netns, backend).splitlines() if line.startswith("-A FORWARD")]
    assert "cali-FORWARD" in forward[0]          # ours first, theirs kept after
    dp.resync()
    # Remove everything the agent programmed for the model; the foreign state stays.
    dp.apply([WorkloadEndpointRemove(wep().id), PolicyRemove(PID), IPSetRemove(SET_ID)])
    assert not dp.last_report.errors, dp.last_report
    assert "cali-tw-calia1" not in save(netns, backend)
    assert "cali40s:clients" not in netns.sh("ipset", "list", "-n")
    foreign_intact()
    dp.stop()
    dp2 = synced(netns, backend, updates=[])
    dp2.resync()
    foreign_intact()


def test_restart_reads_back_and_keeps_counters(netns: Netns, backend: str) -> None:
    dp = synced(netns, backend)
    netns.sh("ping", "-c", "3", "-i", "0.01", "-W", "1", "127.0.0.1")       # traverses cali-OUTPUT
    before = parse_counters(save(netns, backend, counters=True))
    assert sum(packets for packets, _ in before[("filter", "cali-OUTPUT")]) >= 3
    dp.stop()
    dp2 = make(netns, backend)
    dp2.apply(snapshot() + [InSync()])
    assert dp2.last_report.resync and dp2.last_report.ops == 0 and dp2.last_report.adopted > 0
    assert dp2.kernel.restores == 0 and dp2.kernel.ipset_calls == 0
    after = parse_counters(save(netns, backend, counters=True))
    assert after[("filter", "cali-OUTPUT")] == before[("filter", "cali-OUTPUT")]


def test_change_made_while_down_is_applied_on_restart(netns: Netns, backend: str) -> None:
    dp = synced(netns, backend)
    dp.stop()
    dp2 = make(netns, backend)
    updates = snapshot()[:-1] + [wep(), wep("calib2", "api")]
    updates[1] = policy(rule(protocol=17))
    dp2.apply(updates + [InSync()])
    assert not dp2.last_report.errors
    text = save(netns, backend)
    assert ":cali-tw-calib2" in text and "-p udp" in text and "--dports 80" not in text


def test_failed_restore_changes_nothing_and_is_retried(netns: Netns, backend: str) -> None:
    clock = Clock()
    dp = synced(netns, backend, clock=clock)
    v4, v6 = save(netns, backend, 4), save(netns, backend, 6)
    # Port 70000 passes rendering but the kernel refuses it: the whole table transaction fails.
    dp.apply([policy(rule(protocol=6, dst_ports=(PortRange(70000, 70000),))), wep("calic3", "other")])
    assert dp.last_report.failed > 0
    st = dp.status()
    assert not st.ready and st.failed > 0 and "70000" in (st.last_error or "")
    assert save(netns, backend, 4) == v4 and save(netns, backend, 6) == v6     # nothing half-applied
    restores = dp.kernel.restores
    clock.now += 0.5
    dp.run_periodic()
    assert dp.kernel.restores == restores                   # backing off
    clock.now += 1.0
    dp.run_periodic()
    assert dp.kernel.restores > restores                    # retried (and failed again)
    dp.apply([policy(rule(protocol=6, dst_ports=(PortRange(7000, 7000),)))])
    clock.now += 10
    dp.run_periodic()
    assert dp.status().ready, dp.status()
    assert ":cali-tw-calic3" in save(netns, backend) and "7000" in save(netns, backend)


def test_ipset_destroy_is_deferred_while_referenced(netns: Netns, backend: str) -> None:
    clock = Clock()
    dp = synced(netns, backend, clock=clock)
    ipt = f"iptables-{backend}"
    netns.sh(ipt, "-N", "FOREIGN")
    netns.sh(ipt, "-A", "FOREIGN", "-m", "set", "--match-set", "cali40s:clients", "src", "-j", "ACCEPT")
    dp.apply([policy(rule(protocol=6)), IPSetRemove(SET_ID)])
    assert "cali40s:clients" in netns.sh("ipset", "list", "-n")          # still referenced
    assert "cali60s:clients" not in netns.sh("ipset", "list", "-n")
    assert dp.status().failed == 1
    netns.sh(ipt, "-F", "FOREIGN")
    clock.now += 2
    dp.run_periodic()
    assert "cali40s:clients" not in netns.sh("ipset", "list", "-n")
    assert dp.status().ready


def test_set_with_other_parameters_is_rebuilt_through_swap(netns: Netns, backend: str) -> None:
    netns.sh("ipset", "create", "cali40s:clients", "hash:net", "maxelem", "1024")
    netns.sh("ipset", "add", "cali40s:clients", "10.9.9.9")
    synced(netns, backend)
    text = netns.sh("ipset", "save")
    assert "create cali40s:clients hash:net family inet hashsize 1024 maxelem 1048576" in text
    assert "10.9.9.9" not in text and "add cali40s:clients 10.0.0.2" in text
    assert "cali4t" not in text


def test_ipset_type_change_moves_rules_to_a_new_set(netns: Netns, backend: str) -> None:
    dp = synced(netns, backend)
    dp.apply([IPSetUpdate(SET_ID, IPSetType.IP_AND_PORT, frozenset({"10.0.0.1,6:80"}))])
    assert not dp.last_report.errors, dp.last_report
    names = netns.sh("ipset", "list", "-n").split()
    assert "cali41s:clients" in names and "cali40s:clients" not in names
    assert "--match-set cali41s:clients src,src" in save(netns, backend)


def test_backend_detection(netns: Netns) -> None:
    runner = Runner(netns.name)
    assert detect_backend(runner) == "nft"                       # empty system: Debian's default
    netns.sh("iptables-legacy", "-A", "INPUT", "-s", "192.0.2.1", "-j", "ACCEPT")
    assert detect_backend(runner) == "legacy"
    netns.sh("iptables-legacy", "-F", "INPUT")
    netns.sh("iptables-nft", "-A", "INPUT", "-s", "192.0.2.1", "-j", "ACCEPT")
    assert detect_backend(runner) == "nft"


def test_auto_backend_follows_existing_rules(netns: Netns) -> None:
    netns.sh("iptables-legacy", "-A", "INPUT", "-s", "192.0.2.1", "-j", "ACCEPT")
    dp = IptablesDataplane(IptablesConfig(netns=netns.name, node_name="node1"))
    dp.start()
    dp.apply(snapshot() + [InSync()])
    assert dp.backend == "legacy" and dp.dump()["backend"] == "legacy"
    assert ":cali-FORWARD" in save(netns, "legacy") and "cali-" not in save(netns, "nft")
