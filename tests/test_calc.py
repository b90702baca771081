"""The calculation graph: incremental results equal a from-scratch run, output
respects Felix's ordering, and one change costs O(affected)."""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vppagent.calc.graph import CalcGraph
from vppagent.manifests.loader import load_objects
from vppagent.model.resources import resource_key
from vppagent.model.state import DataplaneState
from vppagent.model.updates import (
    IPSetDeltaUpdate, IPSetRemove, IPSetUpdate, PolicyRemove, PolicyUpdate, ProfileRemove,
    ProfileUpdate, WorkloadEndpointRemove, WorkloadEndpointUpdate,
)


def ns(name, **labels):
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(namespace, name, ip, node="node1", ports=(), **labels):
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
            {"name": pn, "containerPort": pp} for pn, pp in ports]}]},
        "status": {"podIPs": [{"ip": ip}]},
    }


def gnp(name, selector, ingress=(), order=None, tier="default", types=("Ingress",)):
    spec = {"selector": selector, "ingress": list(ingress), "types": list(types), "tier": tier}
    if order is not None:
        spec["order"] = order
    return {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": name}, "spec": spec}


def fold_checked(state: DataplaneState, updates) -> None:
    """Fold while checking Felix's order: references exist before use, and
    nothing is removed while still referenced."""
    for u in updates:
        if isinstance(u, PolicyUpdate):
            for rule in u.policy.inbound_rules + u.policy.outbound_rules:
                for sid in rule.ip_set_ids():
                    assert sid in state.ipsets, f"policy {u.id} before its IP set {sid}"
        if isinstance(u, ProfileUpdate):
            for rule in u.inbound_rules + u.outbound_rules:
                for sid in rule.ip_set_ids():
                    assert sid in state.ipsets
        if isinstance(u, WorkloadEndpointUpdate):
            for tier in u.endpoint.tiers:
                for p in tier.ingress_policies + tier.egress_policies:
                    assert any(pid.name == p for pid in state.policies), f"endpoint before policy {p}"
        state.apply(u)
        if isinstance(u, PolicyRemove):
            for ep in state.workload_endpoints.values():
                for tier in ep.tiers:
                    assert u.id.name not in tier.ingress_policies + tier.egress_policies
        if isinstance(u, IPSetRemove):
            for pol in state.policies.values():
                for rule in pol.inbound_rules + pol.outbound_rules:
                    assert u.id not in rule.ip_set_ids()


def fresh_state(resources, node=None) -> DataplaneState:
    g = CalcGraph(node)
    g.apply_all(resources)
    s = DataplaneState()
    fold_checked(s, g.flush())
    return s


def comparable(s: DataplaneState):
    return (s.ipsets, s.policies, {k: v for k, v in s.profiles.items()}, s.workload_endpoints,
            s.host_endpoints, s.services, s.pools)


BASE = [ns("a", team="red"), ns("b", team="blue")]


def test_namespace_and_pod_selectors_become_ip_sets():
    objs = BASE + [
        pod("a", "web", "10.0.0.1", app="web"),
        pod("a", "cli", "10.0.0.2", app="cli"),
        pod("b", "cli", "10.0.0.3", app="cli"),
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "p", "namespace": "a"},
         "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                  "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "cli"}}}]}]}},
    ]
    s = fresh_state(load_objects(objs))
    (pid, pol), = s.policies.items()
    assert pid.name == "a/knp.default.p"
    (sid,) = pol.inbound_rules[0].src_ip_set_ids
    assert s.ipsets[sid][1] == {"10.0.0.2/32"}          # only cli in namespace a
    web = next(e for e in s.workload_endpoints.values() if e.pod == "web")
    assert web.tiers[0].ingress_policies == ("a/knp.default.p",)


def test_incremental_relabel_moves_members_and_policies():
    g = CalcGraph()
    objs = BASE + [pod("a", "x", "10.0.0.1", app="web"), gnp("allow", "app == 'web'", [
        {"action": "Allow", "source": {"selector": "app == 'cli'"}}])]
    g.apply_all(load_objects(objs))
    state = DataplaneState()
    fold_checked(state, g.flush())
    (pol,) = state.policies.values()
    sid = pol.inbound_rules[0].src_ip_set_ids[0]
    assert state.ipsets[sid][1] == frozenset()
    # Relabel x to cli: it leaves the policy (policy becomes inactive) and joins the set.
    (cli,) = load_objects([pod("a", "x", "10.0.0.1", app="cli")])
    g.update(cli)
    updates = g.flush()
    kinds = [type(u).__name__ for u in updates]
    assert kinds.index("WorkloadEndpointUpdate") < kinds.index("PolicyRemove") < kinds.index("IPSetRemove")
    fold_checked(state, updates)
    assert state.policies == {}
    assert state.ipsets == {}


def test_named_ports_resolve_per_endpoint():
    objs = BASE + [
        pod("a", "web", "10.0.0.1", ports=[("http", 8080)], app="web"),
        pod("a", "web2", "10.0.0.2", ports=[("http", 9090)], app="web"),
        pod("a", "other", "10.0.0.3", app="web"),
        gnp("np", "app == 'web'", [{"action": "Allow", "protocol": "TCP",
                                   "destination": {"ports": ["http"]}}]),
    ]
    s = fresh_state(load_objects(objs))
    (pol,) = s.policies.values()
    (sid,) = pol.inbound_rules[0].dst_named_port_ip_set_ids
    assert s.ipsets[sid][1] == {"10.0.0.1,6:8080", "10.0.0.2,6:9090"}


def test_only_local_endpoints_and_their_policies_are_sent():
    objs = BASE + [pod("a", "here", "10.0.0.1", node="n1", app="x"),
                   pod("a", "there", "10.0.0.2", node="n2", app="y"),
                   gnp("px", "app == 'x'"), gnp("py", "app == 'y'")]
    s = fresh_state(load_objects(objs), node="n1")
    assert [e.pod for e in s.workload_endpoints.values()] == ["here"]
    assert [p.name for p in s.policies] == ["px"]


def test_tier_and_policy_order():
    objs = BASE + [
        {"apiVersion": "projectcalico.org/v3", "kind": "Tier", "metadata": {"name": "sec"},
         "spec": {"order": 10}},
        pod("a", "x", "10.0.0.1", app="x"),
        gnp("z-first", "all()", order=1), gnp("a-second", "all()", order=2),
        gnp("unordered", "all()"), gnp("b-tie", "all()", order=2),
        gnp("sec.p", "all()", tier="sec"),
    ]
    s = fresh_state(load_objects(objs))
    (ep,) = s.workload_endpoints.values()
    assert [t.name for t in ep.tiers] == ["sec", "default"]
    assert ep.tiers[1].ingress_policies == ("z-first", "a-second", "b-tie", "unordered")


def test_one_change_costs_affected_not_total():
    objs = [ns(f"n{i}") for i in range(50)]
    for i in range(2000):
        objs.append(pod(f"n{i % 50}", f"p{i}", str(ipaddress.ip_address("10.0.0.0") + i), app=f"a{i % 100}"))
    for i in range(200):
        objs.append({"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
                     "metadata": {"name": f"pol{i}", "namespace": f"n{i % 50}"},
                     "spec": {"selector": f"app == 'a{i % 100}'",
                              "ingress": [{"action": "Allow", "source": {"selector": f"app == 'a{(i + 1) % 100}'"}}]}})
    g = CalcGraph()
    g.apply_all(load_objects(objs))
    g.flush()
    before = g.label_evaluations
    (changed,) = load_objects([pod("n3", "p3", "10.0.0.3", app="a7")])
    g.update(changed)
    g.flush()
    cost = g.label_evaluations - before
    assert cost < 50, f"a relabel evaluated {cost} selectors (of 400) "


# --------------------------------------------------------------- property test

names = st.sampled_from(["p0", "p1", "p2", "p3"])
apps = st.sampled_from(["web", "db", "cli"])
nss = st.sampled_from(["a", "b"])
selectors = st.sampled_from(["all()", "app == 'web'", "app in {'db', 'cli'}", "has(app)",
                             "!has(tier)", "app != 'db'", "tier == 'x' || app == 'cli'"])


@st.composite
def operations(draw):
    kind = draw(st.sampled_from(["pod", "pod", "pod", "delpod", "policy", "delpolicy", "ns", "netset"]))
    if kind == "pod":
        i = draw(st.integers(0, 5))
        return ("up", pod(draw(nss), draw(names), f"10.1.0.{i}", node=draw(st.sampled_from(["n1", "n2"])),
                          ports=draw(st.sampled_from([(), (("http", 80),), (("http", 81),)])),
                          app=draw(apps)))
    if kind == "delpod":
        return ("del", ("WorkloadEndpoint", f"{draw(st.sampled_from(['n1', 'n2']))}/k8s/{draw(nss)}/{draw(names)}/eth0"))
    if kind == "policy":
        rule = {"action": draw(st.sampled_from(["Allow", "Deny", "Pass"])),
                "source": {"selector": draw(selectors)}}
        if draw(st.booleans()):
            rule["protocol"] = "TCP"
            rule["destination"] = {"ports": ["http", 443]}
        if draw(st.booleans()):
            rule["source"]["namespaceSelector"] = draw(st.sampled_from(["team == 'red'", "all()"]))
        return ("up", gnp(draw(st.sampled_from(["g1", "g2", "g3"])), draw(selectors), [rule],
                          order=draw(st.sampled_from([None, 1, 2]))))
    if kind == "delpolicy":
        return ("del", ("Policy", draw(st.sampled_from(["g1", "g2", "g3"]))))
    if kind == "ns":
        return ("up", ns(draw(nss), team=draw(st.sampled_from(["red", "blue"]))))
    return ("up", {"apiVersion": "projectcalico.org/v3", "kind": "NetworkSet",
                   "metadata": {"name": "s", "namespace": draw(nss), "labels": {"app": draw(apps)}},
                   "spec": {"nets": [draw(st.sampled_from(["192.0.2.0/24", "198.51.100.0/24"]))]}})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operations(), min_size=1, max_size=25), st.sampled_from([None, "n1"]))
def test_incremental_equals_from_scratch(ops, node):
    g = CalcGraph(node)
    state = DataplaneState()
    current = {}
    for i, (op, arg) in enumerate(ops):
        if op == "up":
            (r,) = load_objects([arg])
            g.update(r)
            current[resource_key(r)] = r
        else:
            g.delete(*arg)
            current.pop(arg, None)
        if i % 3 == 2 or i == len(ops) - 1:
            fold_checked(state, g.flush())
    assert comparable(state) == comparable(fresh_state(current.values(), node))
