"""The agent on the Linux dataplane, end to end, in iptables and nftables modes (issue 3 §8).

Everything goes through the testbed as on a real node: ``vppagent run`` in
the node netns, pods created by ``vppagent-cni`` exactly as a runtime calls
it, real packets. Covered here: policy between CNI pods checked against the
reference evaluator; restarts (SIGKILL and SIGTERM) that keep connections
and every rule (counters keep counting) and pick up changes made meanwhile;
bad input (manifests, CNI config, gRPC Apply) that is reported and leaves the
kernel exactly as it was; CNI DEL after a restart and CHECK drift.
"""

from __future__ import annotations

import difflib
import hashlib
import time
from pathlib import Path
from typing import Any, Callable

import grpc
import pytest

from tests.linux_harness import ROOT_ONLY, Node
from vppagent.api import gen_modules
from vppagent.evaluator import build_evaluator
from vppagent.manifests.loader import load_strict
from vppagent.testbed import api, kernel
from vppagent.testbed.flows import Flow, expected, measure
from vppagent.testbed.traffic import exchange

pytestmark = ROOT_ONLY
MODES = ["iptables", "nftables"]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


def wait_until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def web_policy(*allowed: str, port: int | None = None) -> dict:
    """shop/web accepts only pods labelled app in ``allowed`` (on ``port`` if given)."""
    rule: dict[str, Any] = {"from": [{"podSelector": {"matchLabels": {"app": a}}} for a in allowed]}
    if port:
        rule["ports"] = [{"port": port, "protocol": "TCP"}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [rule]}}


CLI_EGRESS = {
    "apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": "cli-egress"},
    "spec": {"selector": "app == 'cli'", "types": ["Egress"], "egress": [
        {"action": "Deny", "protocol": "TCP", "destination": {"ports": [9000]}},
        {"action": "Allow"}]},
}


def three_pods(node: Node, ips: bool = False) -> tuple[Any, Any, Any]:
    """shop/web, shop/cli, shop/other (with fixed addresses when ``ips``, else from IPAM)."""
    return tuple(node.add_pod("shop", name, labels={"app": name}, ports=[("http", 8080, "TCP")],
                              ips=[f"10.65.1.{10 + i}"] if ips else ())
                 for i, name in enumerate(("web", "cli", "other")))  # type: ignore[return-value]


def ipam_state(node: Node) -> dict[str, str]:
    """Every file of the agent's state directory (IPAM blocks, workload records) by content hash."""
    root = Path(node.state_dir)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def kernel_state(node: Node, mode: str) -> tuple[str, str]:
    return kernel.policy_state(node.netns, mode), kernel.network_state(node.netns)


def assert_unchanged(before: tuple[str, ...], after: tuple[str, ...]) -> None:
    """Equal, or fail showing a unified diff of what moved."""
    diff = [line for b, a in zip(before, after)
            for line in difflib.unified_diff(b.splitlines(), a.splitlines(), "before", "after", lineterm="")]
    assert not diff, "\n".join(diff)


# ---------------------------------------------------------------- policy with real packets

def test_policy_between_cni_pods_matches_the_evaluator(mode: str) -> None:
    with Node(mode) as node:
        web, cli, other = three_pods(node, ips=True)
        node.write_manifest("policy", [web_policy("cli", port=8080), CLI_EGRESS])
        node.wait_synced({"policies": 2, "workload_endpoints": 3})
        ev = build_evaluator(load_strict(node.manifests))
        flows, want = [], []
        for src in (web, cli, other, "client"):
            src_ip = node.address_of(src)
            for dst in (web, cli, other):
                if dst is src:
                    continue
                for port in (8080, 9000):
                    flow = Flow(src, dst, port)
                    flows.append(flow)
                    want.append(expected(ev, src_ip, flow).verdict == "allow")
        got = [o.ok for o in measure(node, flows, timeout=0.7, expect=want)]
        wrong = [f"{f.source} -> {f.target}: measured {g}, evaluator {w}"
                 for f, g, w in zip(flows, got, want) if g != w]
        assert not wrong, wrong
        verdicts = {(f.source, f.dst.name, f.port): g for f, g in zip(flows, got)}
        # Both policies decide something: the k8s one on web's ingress, the Calico one on cli's egress.
        assert verdicts[("shop/cli", "web", 8080)] and not verdicts[("shop/other", "web", 8080)]
        assert not verdicts[("shop/cli", "web", 9000)] and not verdicts[("client", "web", 8080)]
        assert verdicts[("shop/cli", "other", 8080)] and not verdicts[("shop/cli", "other", 9000)]
        assert verdicts[("shop/other", "cli", 9000)]


# ---------------------------------------------------------------- restart

def stop(node: Node, how: str) -> None:
    if how == "SIGKILL":
        node.kill_agent()
    else:
        assert node.stop_agent() == 0


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_restart_keeps_connections_and_rules_and_applies_changes(mode: str, how: str) -> None:
    with Node(mode) as node:
        web, cli, other = three_pods(node)
        node.write_manifest("policy", [web_policy("cli")])
        node.wait_synced({"policies": 1, "workload_endpoints": 3})
        node.listen(web, 7000, echo=True)
        conn = node.connect(cli, web, 7000)
        assert exchange(conn)
        assert not node.send(other, web, 7000, timeout=0.3).ok
        endpoints = node.endpoints()
        before, state = kernel.rule_counters(node.netns, mode), kernel_state(node, mode)
        assert any(packets for packets, _ in before.values()), "no traffic went through the agent's rules"

        stop(node, how)
        for _ in range(3):                                      # the connection flows without the agent
            assert exchange(conn)
        assert node.send(cli, web, 7000, timeout=2).ok          # and the policy stays enforced
        assert not node.send(other, web, 7000, timeout=0.3).ok

        node.start_agent()                                      # ready == read back and in sync
        assert node.endpoints() == endpoints                    # the CNI pods were read back
        after = kernel.rule_counters(node.netns, mode)
        assert kernel.rewritten(before, after) == []            # no rule rewritten: counters kept counting
        assert_unchanged(state, kernel_state(node, mode))
        assert exchange(conn)

        stop(node, how)                                         # a change made while it is down …
        node.write_manifest("policy", [web_policy("cli", "other")])
        assert not node.send(other, web, 7000, timeout=0.3).ok
        node.start_agent()                                      # … is applied after the restart
        wait_until(lambda: node.send(other, web, 7000, timeout=0.3).ok, what="the new policy")
        assert exchange(conn)


# ---------------------------------------------------------------- bad input

def test_malformed_policy_is_reported_and_the_kernel_is_untouched(mode: str) -> None:
    with Node(mode) as node:
        web, cli, other = three_pods(node)
        node.write_manifest("policy", [web_policy("cli"), CLI_EGRESS])
        node.wait_synced({"policies": 2})
        before = kernel_state(node, mode)
        errors_before = api.metric_value(node.metrics(), "vppagent_errors_total", 'component="datastore"')

        # An edit that breaks one document (a port range upside down): that document keeps its
        # previous version, so cli's egress rules stay exactly as they were.
        bad_range = {**CLI_EGRESS, "spec": {**CLI_EGRESS["spec"], "egress": [
            {"action": "Deny", "protocol": "TCP", "destination": {"ports": ["9000:80"]}}]}}
        node.write_manifest("policy", [web_policy("cli"), bad_range])
        # A new file with a typo in a field name.
        typo = {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": "typo"},
                "spec": {"selectr": "all()", "ingress": [{"action": "Deny"}]}}
        node.write_manifest("typo", [typo])

        def reported() -> list[str]:
            errors = node.status().get("errors", [])
            ok = (any("policy.yaml#2 spec.egress[0].destination.ports[0]" in e and "9000:80" in e for e in errors)
                  and any("typo.yaml#1 spec.selectr: unknown field" in e for e in errors))
            return errors if ok else []

        wait_until(reported, what="both errors in the agent status")
        assert api.metric_value(node.metrics(), "vppagent_errors_total", 'component="datastore"') >= errors_before + 2
        assert_unchanged(before, kernel_state(node, mode))
        assert not node.reachable(other, web, 8080, timeout=0.3)

        node.remove_manifest("typo")            # fixed (with a real change): applied, errors cleared
        node.write_manifest("policy", [web_policy("cli", "other"), CLI_EGRESS])
        node.wait_synced({"policies": 2})
        wait_until(lambda: node.reachable(other, web, 8080, timeout=0.3), what="the fixed policy")


def test_malformed_cni_config_is_a_cni_error_and_changes_nothing(mode: str) -> None:
    with Node(mode) as node:
        node.add_pod("shop", "web", labels={"app": "web"})
        node.wait_synced({"workload_endpoints": 1})
        sandbox = node.add_netns("sandbox")
        before = kernel_state(node, mode), ipam_state(node), node.endpoints()
        cases = [
            ({"stdin": b'{"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": '}, 6,
             "cannot decode the network configuration"),
            ({"stdin": b"[1, 2]"}, 6, "must be a JSON object"),
            ({"config": {"cniVersion": None}}, 7, "has no cniVersion"),
            ({"config": {"cniVersion": "9.9.9"}}, 1, "incompatible CNI version 9.9.9"),
            ({"config": {"mtu": "big"}}, 7, "invalid mtu 'big'"),
            ({"config": {"agentSocket": 7}}, 7, "invalid agentSocket 7"),
            ({"env": {"CNI_CONTAINERID": None}}, 4, "CNI_CONTAINERID"),
            ({"namespace": "", "pod": ""}, 4, "K8S_POD_NAMESPACE and K8S_POD_NAME"),
        ]
        for i, (kw, code, text) in enumerate(cases):
            args = {"namespace": "shop", "pod": f"bad{i}", **kw}
            call = node.cni("ADD", container_id=f"{node.token}bad{i}", netns=f"/var/run/netns/{sandbox}", **args)
            assert not call.ok and call.error is not None, (kw, call)
            assert call.error["code"] == code and text in call.error["msg"], (kw, call.error)
        assert node.exec_in(sandbox, ["ip", "-o", "link"]).stdout.count("\n") == 1   # only lo
        assert_unchanged(before[0], kernel_state(node, mode))
        assert (ipam_state(node), node.endpoints()) == before[1:]


def test_invalid_grpc_apply_leaves_the_kernel_unchanged(mode: str) -> None:
    with Node(mode) as node:
        web, cli, other = three_pods(node)
        node.write_manifest("policy", [web_policy("cli")])
        node.wait_synced({"policies": 1})
        pb = gen_modules().dataplane_pb2
        desired = _dump(node).desired
        # The IP set behind "from app == cli", widened to other: a real change …
        allowed = next(u for u in desired if u.WhichOneof("kind") == "ipset"
                       and any(m.startswith(cli.ip + "/") for m in u.ipset.members))
        widened = pb.Update()
        widened.CopyFrom(allowed)
        widened.ipset.members.append(f"{other.ip}/32")
        bad = pb.Update()
        bad.ipset.id = "s:broken"
        bad.ipset.type = allowed.ipset.type
        bad.ipset.members.extend(["10.0.0.1/32", "10.0.0.300/32"])
        before = kernel_state(node, mode)
        with pytest.raises(grpc.RpcError) as exc:          # … sent with an invalid one: nothing happens
            api.apply(node.socket, [widened, bad])
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "updates[1].ipset.members[1]" in exc.value.details()
        assert_unchanged(before, kernel_state(node, mode))
        assert not node.reachable(other, web, 8080, timeout=0.3)
        api.apply(node.socket, [widened])                   # alone, the valid half does take effect
        wait_until(lambda: node.reachable(other, web, 8080, timeout=0.3), what="the applied IP set")


def _dump(node: Node) -> Any:
    g = gen_modules()
    with grpc.insecure_channel(f"unix:{node.socket}") as ch:
        return g.dataplane_pb2_grpc.DataplaneStub(ch).Dump(g.dataplane_pb2.DumpRequest(), timeout=10)


# ---------------------------------------------------------------- CNI across restarts

def test_cni_del_after_restart_and_check_reports_drift(mode: str) -> None:
    with Node(mode) as node:
        web = node.add_pod("shop", "web", labels={"app": "web"})
        db = node.add_pod("shop", "db", labels={"app": "db"})

        def holds(container_id: str) -> bool:
            return any(container_id in p.read_text(errors="replace")
                       for p in Path(node.state_dir).rglob("*") if p.is_file())

        conf = {"prevResult": db.result}
        check = node.cni("CHECK", container_id=db.container_id, netns=db.netns_path, config=conf)
        assert check.ok, check.output

        node.exec_in("node", ["ip", "route", "del", f"{db.ip}/32"], check=True)    # someone tampers
        check = node.cni("CHECK", container_id=db.container_id, netns=db.netns_path, config=conf)
        assert not check.ok and check.error is not None and check.error["code"] == 101
        assert f"host route to {db.ip}/32 via {db.host_interface} is missing" in check.error["msg"]

        node.kill_agent()
        node.start_agent()
        assert set(node.endpoints()) == {"shop/web", "shop/db"}
        assert holds(db.container_id), "the agent's state does not name db's container"
        call = node.delete_pod(db)                               # DEL after the restart
        assert call.ok, call.output
        assert db.host_interface not in node.exec_in("node", ["ip", "-o", "link"]).stdout
        wait_until(lambda: set(node.endpoints()) == {"shop/web"}, what="the endpoint removed")
        assert not holds(db.container_id), "IPAM or the workload records still hold db"
        again = node.cni("DEL", container_id=db.container_id, netns=db.netns_path)   # idempotent
        assert again.ok, again.output
        fresh = node.add_pod("shop", "db2")
        assert node.reachable(fresh, web, 8080)
