"""The nftables dataplane against the real kernel, inside a namespace per test.

Covers what only the kernel can show: the table is applied and read back
equal, a second sync writes nothing, tampering is repaired, foreign tables
are left alone (and keep filtering), rule handles and counters survive an
agent restart, a refused transaction changes nothing, and a single change
costs a transaction whose size does not depend on unrelated endpoints.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from ipaddress import ip_network
from typing import Iterator

import pytest

from vppagent.dataplane.nftables import CommandRunner, NftablesConfig, NftablesDataplane
from vppagent.model.resources import Action, PortRange, TierDefault
from vppagent.model.updates import (
    HostEndpointInfo, HostEndpointUpdate, InSync, IPSetDeltaUpdate, IPSetType, IPSetUpdate, PolicyID,
    PolicyUpdate, ProfileUpdate, RenderedPolicy, RenderedRule, RuleOrigin, TierInfo, Update,
    WorkloadEndpointInfo, WorkloadEndpointRemove, WorkloadEndpointUpdate,
)
from vppagent.reconciler import Backoff

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"),
                                reason="needs root and nft (runs inside a network namespace)")

RUN = f"{os.getpid() % 100000:x}{secrets.token_hex(2)}"
TABLE = "vppagent"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sh(ns: str, *argv: str, stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True,
                          timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr}")
    return proc.stdout


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"vpak{RUN}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        sh(name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def listing(ns: str, table: str = TABLE) -> str:
    return sh(ns, "nft", "list", "table", "inet", table, check=False)


def rules_json(ns: str) -> dict[str, list[dict]]:
    """Every rule of our table by chain: handle, comment and counter."""
    out: dict[str, list[dict]] = {}
    for obj in json.loads(sh(ns, "nft", "-j", "list", "table", "inet", TABLE))["nftables"]:
        if "rule" in obj:
            r = obj["rule"]
            counter = next((e["counter"] for e in r["expr"] if "counter" in e), None)
            out.setdefault(r["chain"], []).append({"handle": r["handle"], "comment": r.get("comment"),
                                                   "counter": counter})
    return out


# -- a small synthetic model ----------------------------------------------------------------

def rule(action: Action, index: int, policy: str = "p", **kw) -> RenderedRule:
    return RenderedRule(action=action, origin=RuleOrigin(policy, index), **kw)


def endpoint(i: int, policies: tuple[str, ...] = ("ns/allow-web",)) -> WorkloadEndpointUpdate:
    return WorkloadEndpointUpdate(f"node1/k8s/ns/pod{i}/eth0", WorkloadEndpointInfo(
        namespace="ns", pod=f"pod{i}", node="node1", endpoint="eth0", interface_name=f"cali{i:06d}",
        nets=(ip_network(f"10.0.{i // 250}.{i % 250 + 1}/32"),), profile_ids=("kns.ns",),
        tiers=(TierInfo("default", ingress_policies=policies),)))


WEB = PolicyID("default", "ns/allow-web")


def web_policy(port: int = 80) -> PolicyUpdate:
    return PolicyUpdate(WEB, RenderedPolicy(inbound_rules=(
        rule(Action.ALLOW, 0, protocol=6, src_ip_set_ids=("s:0123456789abcdef0123",),
             dst_ports=(PortRange(port, port),)),
    )))


def snapshot(n_endpoints: int = 3) -> list[Update]:
    ups: list[Update] = [
        IPSetUpdate("s:0123456789abcdef0123", IPSetType.NET, frozenset({"10.0.0.1/32", "fd00::1/128"})),
        web_policy(),
        PolicyUpdate(PolicyID("default", "ns/other"), RenderedPolicy(inbound_rules=(rule(Action.DENY, 0),))),
        ProfileUpdate("kns.ns", inbound_rules=(rule(Action.ALLOW, 0, "kns.ns"),),
                      outbound_rules=(rule(Action.ALLOW, 0, "kns.ns"),)),
    ]
    ups += [endpoint(i) for i in range(n_endpoints)]
    return ups


def make_dp(ns: str, clock: Clock | None = None, runner: CommandRunner | None = None,
            **options) -> NftablesDataplane:
    cfg = NftablesConfig(netns=ns, table=TABLE, refresh_interval=options.pop("refresh_interval", 5.0),
                         node_name="node1", **options)
    dp = NftablesDataplane(cfg, runner=runner or CommandRunner(netns=ns), clock=clock or Clock(),
                           backoff=Backoff(base=1.0, max=4.0))
    dp.start()
    return dp


def in_sync(dp: NftablesDataplane) -> None:
    st = dp.status()
    assert st.in_sync and st.failed == 0 and st.pending == 0, dp.dump()


# -- tests ------------------------------------------------------------------------------------

def test_nothing_is_written_before_in_sync(ns: str) -> None:
    dp = make_dp(ns)
    dp.apply(snapshot())
    assert dp.nft.sent == 0 and listing(ns) == ""
    dp.apply([InSync()])
    in_sync(dp)
    assert dp.nft.sent == 1 and "chain tw-cali000001" in listing(ns)


def test_apply_read_back_and_second_sync_writes_nothing(ns: str) -> None:
    dp = make_dp(ns)
    dp.apply([*snapshot(), InSync()])
    in_sync(dp)
    sent, before = dp.nft.sent, listing(ns)
    report = dp.resync()
    assert report["ops"] == 0 and report["adopted"] == len(dp.reconciler.desired())
    assert dp.nft.sent == sent and listing(ns) == before
    # What the descriptor reads back is what was desired, key for key.
    actual = dp.nft.dump()
    assert set(actual) == set(dp.reconciler.desired())
    assert all(dp.nft.equivalent(k, v, actual[k][0]) for k, v in dp.reconciler.desired().items())


def test_tampering_is_repaired_by_the_periodic_refresh(ns: str) -> None:
    clock = Clock()
    dp = make_dp(ns, clock)
    dp.apply([*snapshot(), InSync()])
    in_sync(dp)
    good = listing(ns)
    handles = rules_json(ns)

    def refresh() -> dict:
        clock.now += 6.0
        dp.run_periodic()
        assert dp.last_report is not None and dp.last_report.resync
        return dp.last_report.as_dict()

    t = f"inet {TABLE}"
    tampering = [
        f"delete rule {t} tw-cali000001 handle {handles['tw-cali000001'][3]['handle']}",   # a rule deleted
        f"add rule {t} fw-cali000002 tcp dport 22 accept",                                # a rule added
        f"flush chain {t} tw-cali000000",                                                 # a chain flushed
        f"delete element {t} wl-to {{ \"cali000001\" }}",                                  # dispatch removed
        f"delete element {t} s-0123456789abcdef0123-4 {{ 10.0.0.1 }}",                     # set member removed
        f"add element {t} s-0123456789abcdef0123-4 {{ 192.0.2.66 }}",                      # set member added
        f"add chain {t} intruder",                                                        # a chain added
    ]
    for cmd in tampering:
        sh(ns, "nft", cmd)
        assert listing(ns) != good, cmd
        report = refresh()
        assert report["failed"] == 0 and report["ops"] >= 1, (cmd, report)
        assert listing(ns) == good, cmd
    # Our whole table deleted: rebuilt on the next refresh.
    sh(ns, "nft", f"delete table {t}")
    refresh()
    assert listing(ns) == good
    in_sync(dp)


def test_foreign_tables_are_untouched_and_keep_filtering(ns: str) -> None:
    foreign = """
table inet hostfw {
    set blocked { type inet_service; elements = { 9999 } }
    chain input {
        type filter hook input priority 0; policy accept;
        tcp dport @blocked drop
        tcp dport 9997 accept
    }
}
table ip kube-proxy-like {
    chain pre { type nat hook prerouting priority -100; policy accept; }
}
"""
    sh(ns, "nft", "-f", "-", stdin=foreign)
    before = sh(ns, "nft", "list", "table", "inet", "hostfw") + sh(ns, "nft", "list", "table", "ip",
                                                                    "kube-proxy-like")
    dp = make_dp(ns)
    dp.apply([*snapshot(), InSync()])
    in_sync(dp)
    dp.apply([WorkloadEndpointRemove(endpoint(1).id), web_policy(8080)])
    sh(ns, "nft", f"delete table inet {TABLE}")
    dp.resync()
    make_dp(ns).apply([*snapshot(), InSync()])
    after = sh(ns, "nft", "list", "table", "inet", "hostfw") + sh(ns, "nft", "list", "table", "ip",
                                                                   "kube-proxy-like")
    assert after == before

    probe = ("import socket,sys\n"
             "l=socket.socket(); l.bind(('127.0.0.1',int(sys.argv[1]))); l.listen()\n"
             "c=socket.socket(); c.settimeout(0.5)\n"
             "try:\n    c.connect(('127.0.0.1',int(sys.argv[1]))); print('open')\n"
             "except OSError as e: print('blocked')\n")
    assert sh(ns, "python3", "-c", probe, "9999").strip() == "blocked"   # the foreign drop still works
    assert sh(ns, "python3", "-c", probe, "9998").strip() == "open"


def test_restart_keeps_handles_and_counters_and_applies_changes_made_while_down(ns: str) -> None:
    hep = HostEndpointUpdate("node1/lo", HostEndpointInfo(
        name="lo", node="node1", interface_name="lo", expected_ips=(),
        tiers=(TierInfo("default", ingress_policies=("allow-8080",), egress_policies=("allow-8080",)),)))
    pol = PolicyUpdate(PolicyID("default", "allow-8080"), RenderedPolicy(
        inbound_rules=(rule(Action.ALLOW, 0, "allow-8080", protocol=6, dst_ports=(PortRange(8080, 8080),)),),
        outbound_rules=(rule(Action.ALLOW, 0, "allow-8080"),)))
    state = [*snapshot(), pol, hep]
    dp = make_dp(ns)
    dp.apply([*state, InSync()])
    in_sync(dp)
    probe = ("import socket\n"
             "l=socket.socket(); l.bind(('127.0.0.1',8080)); l.listen()\n"
             "for _ in range(3):\n    c=socket.create_connection(('127.0.0.1',8080),timeout=1); c.close()\n")
    sh(ns, "python3", "-c", probe)
    before = rules_json(ns)
    policy_chain = next(c for c, rules in before.items()
                        if c.startswith("pi-") and rules and (rules[0]["counter"] or {}).get("packets", 0) > 0)
    dp.stop()

    # Restart with the same state: read back, adopt, write nothing.
    dp2 = make_dp(ns)
    dp2.apply([*state, InSync()])
    in_sync(dp2)
    assert dp2.nft.sent == 0
    assert rules_json(ns) == before
    assert before[policy_chain][0]["counter"]["packets"] >= 3
    dp2.stop()

    # A change made while the agent was down: only what changed is rewritten.
    dp3 = make_dp(ns)
    dp3.apply([*state, web_policy(8443), InSync()])
    in_sync(dp3)
    assert dp3.nft.sent == 1
    after = rules_json(ns)
    changed = {c for c in before if before[c] != after.get(c)}
    assert changed == {"pi-" + _policy_digest(WEB)}
    assert after[policy_chain] == before[policy_chain]


def _policy_digest(pid: PolicyID) -> str:
    from vppagent.dataplane.nftables import names
    return names.policy_chain(pid, True)[3:]


class FaultyRunner(CommandRunner):
    """Appends a command nft must refuse to every transaction that mentions ``poison``."""

    poison: str | None = None

    def nft_apply(self, script: str) -> None:
        if self.poison is not None and self.poison in script:
            script += f"add rule inet {TABLE} no-such-chain accept\n"
        super().nft_apply(script)


def test_a_refused_transaction_changes_nothing_and_is_retried(ns: str) -> None:
    clock = Clock()
    runner = FaultyRunner(netns=ns)
    dp = make_dp(ns, clock, runner, refresh_interval=None)
    dp.apply([*snapshot(), InSync()])
    in_sync(dp)
    before = listing(ns)
    runner.poison = "add rule"
    dp.apply([web_policy(9090), endpoint(7)])
    assert listing(ns) == before                      # atomic: nothing half-applied
    st = dp.status()
    assert st.failed > 0 and st.last_error
    assert any("no-such-chain" in (t.error or "") for t in dp.nft.transactions)
    runner.poison = None
    clock.now += 1.5                                  # past the first backoff
    dp.run_periodic()
    in_sync(dp)
    assert "dport 9090" in listing(ns) and "tw-cali000007" in listing(ns)


def test_one_bad_object_does_not_hold_up_the_others(ns: str) -> None:
    runner = FaultyRunner(netns=ns)
    dp = make_dp(ns, runner=runner, refresh_interval=None)
    dp.apply([*snapshot(), InSync()])
    in_sync(dp)
    runner.poison = "tw-cali000009"                   # everything about endpoint 9 is refused
    dp.apply([endpoint(8), endpoint(9), web_policy(7070)])
    text = listing(ns)
    assert "tw-cali000008" in text and "dport 7070" in text and "tw-cali000009" not in text
    assert dp.status().failed > 0


def test_a_single_change_costs_the_same_whatever_the_number_of_endpoints(ns: str) -> None:
    sizes = {}
    for n in (4, 60):
        table = f"t{n}"
        dp = NftablesDataplane(NftablesConfig(netns=ns, table=table, refresh_interval=None, node_name="node1"),
                               runner=CommandRunner(netns=ns))
        dp.start()
        dp.apply([*snapshot(n), InSync()])
        in_sync(dp)
        first = dp.nft.transactions[-1].lines
        dp.apply([web_policy(8081)])                                   # one policy change
        policy_tx = dp.nft.transactions[-1].script
        dp.apply([IPSetDeltaUpdate("s:0123456789abcdef0123", added=frozenset({"10.9.9.9/32"}),
                                   removed=frozenset({"10.0.0.1/32"}))])
        delta_tx = dp.nft.transactions[-1].script
        dp.apply([endpoint(n + 1)])                                    # one endpoint more
        endpoint_tx = dp.nft.transactions[-1].script
        in_sync(dp)
        sizes[n] = (first, policy_tx.count("\n"), delta_tx.count("\n"), endpoint_tx.count("\n"))
        assert all(line.startswith(("flush chain", "add rule")) for line in policy_tx.splitlines())
        assert delta_tx.splitlines() == [
            f"delete element inet {table} s-0123456789abcdef0123-4 {{ 10.0.0.1 }}",
            f"add element inet {table} s-0123456789abcdef0123-4 {{ 10.9.9.9 }}"]
        assert all(f"cali{n + 1:06d}" in line or "add table" in line for line in endpoint_tx.splitlines())
    assert sizes[60][0] > sizes[4][0]                                  # the first sync grows with the state
    assert sizes[60][1:] == sizes[4][1:]                               # a single change does not


def test_every_stage_and_object_kind_is_accepted_and_filters(ns: str) -> None:
    """Untracked, preDNAT, forward and normal host-endpoint stages; IPv6 services; pools."""
    from vppagent.manifests.loader import load_objects
    from vppagent.model.updates import IPPoolUpdate, ServiceUpdate

    def pol(name: str, *rules: RenderedRule, untracked: bool = False, pre_dnat: bool = False,
            outbound: tuple[RenderedRule, ...] = ()) -> PolicyUpdate:
        return PolicyUpdate(PolicyID("default", name), RenderedPolicy(
            inbound_rules=rules, outbound_rules=outbound, untracked=untracked, pre_dnat=pre_dnat,
            apply_on_forward=not (untracked or pre_dnat)))

    tcp = lambda port: dict(protocol=6, dst_ports=(PortRange(port, port),))  # noqa: E731
    hep = HostEndpointUpdate("node1/lo", HostEndpointInfo(
        name="lo", node="node1", interface_name="lo",
        tiers=(TierInfo("default", ingress_policies=("norm",), egress_policies=("norm",)),),
        untracked_tiers=(TierInfo("default", TierDefault.PASS, ingress_policies=("raw",)),),
        pre_dnat_tiers=(TierInfo("default", TierDefault.PASS, ingress_policies=("pre",)),),
        forward_tiers=(TierInfo("default", ingress_policies=("norm",), egress_policies=("norm",)),)))
    objs = load_objects([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "v6", "namespace": "n"},
         "spec": {"type": "NodePort", "clusterIP": "fd00:96::10", "sessionAffinity": "ClientIP",
                  "ports": [{"name": "p", "port": 80, "targetPort": 8080, "nodePort": 30090}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "v6-a", "namespace": "n", "labels": {"kubernetes.io/service-name": "v6"}},
         "addressType": "IPv6", "ports": [{"name": "p", "port": 8080, "protocol": "TCP"}],
         "endpoints": [{"addresses": ["fd00:10::1"], "nodeName": "node1"},
                       {"addresses": ["fd00:10::2"], "nodeName": "node1"}]},
        {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "v4"},
         "spec": {"cidr": "10.244.0.0/16", "natOutgoing": True}},
        {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "v6"},
         "spec": {"cidr": "fd00:10::/64", "natOutgoing": True}},
    ])
    svc, eps, pool4, pool6 = objs
    named = "n:0123456789abcdef0123"
    ups: list[Update] = [
        IPSetUpdate(named, IPSetType.IP_AND_PORT, frozenset({"127.0.0.1,6:7781", "fd00::1,17:53"})),
        pol("raw", rule(Action.DENY, 0, "raw", **tcp(7777)), rule(Action.ALLOW, 1, "raw", **tcp(7778)),
            untracked=True),
        pol("pre", rule(Action.LOG, 0, "pre"), rule(Action.DENY, 1, "pre", **tcp(7779)), pre_dnat=True),
        pol("norm", rule(Action.ALLOW, 0, "norm", **tcp(7780)),
            rule(Action.ALLOW, 1, "norm", protocol=6, dst_named_port_ip_set_ids=(named,)),
            rule(Action.PASS, 2, "norm", protocol=17),
            outbound=(rule(Action.ALLOW, 0, "norm"),)),
        hep, ServiceUpdate(svc.key, svc, (eps,)), IPPoolUpdate("v4", pool4), IPPoolUpdate("v6", pool6),
        InSync(),
    ]
    dp = make_dp(ns)
    dp.apply(ups)
    in_sync(dp)
    text = listing(ns)
    assert "notrack" in text and "dnat ip6 to [fd00:10::1]:8080" in text and "fd00:10::/64" in text
    probe = ("import socket,sys\n"
             "out=[]\n"
             "for p in map(int, sys.argv[1:]):\n"
             "    l=socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
             "    l.bind(('127.0.0.1',p)); l.listen()\n"
             "    c=socket.socket(); c.settimeout(0.4)\n"
             "    try:\n        c.connect(('127.0.0.1',p)); out.append('open')\n"
             "    except OSError: out.append('blocked')\n"
             "print(' '.join(out))\n")
    result = sh(ns, "python3", "-c", probe, "7777", "7778", "7779", "7780", "7781", "7782").split()
    assert result == ["blocked",   # untracked Deny (raw)
                      "open",      # untracked Allow (raw) decides for the filter stage too
                      "blocked",   # preDNAT Deny
                      "open",      # normal policy Allow
                      "open",      # named-port set (ip . proto . port) Allow
                      "blocked"]   # nothing allows it: end of tier
