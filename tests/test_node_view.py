"""A node's view of the cluster-wide stream equals a calculation for that node alone."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_calc import BASE, comparable, fold_checked, operations, pod
from vppagent.calc.graph import CalcGraph
from vppagent.calc.node_view import NodeView
from vppagent.manifests.loader import load_objects
from vppagent.model.resources import resource_key
from vppagent.model.state import DataplaneState
from vppagent.model.updates import InSync, RouteRemove, RouteUpdate


def node_obj(name, ip):
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}


def block(cidr, node):
    return {"apiVersion": "projectcalico.org/v3", "kind": "BlockAffinity", "metadata": {"name": cidr.replace("/", "-")},
            "spec": {"cidr": cidr, "node": node}}


@st.composite
def cluster_operations(draw):
    kind = draw(st.sampled_from(["calc", "calc", "calc", "block", "delblock", "node"]))
    if kind == "calc":
        return draw(operations())
    cidr = draw(st.sampled_from(["10.65.0.0/26", "10.65.0.64/26", "10.65.1.0/26"]))
    if kind == "block":
        return ("up", block(cidr, draw(st.sampled_from(["n1", "n2", "n3"]))))
    if kind == "delblock":
        return ("del", ("BlockAffinity", cidr))
    name = draw(st.sampled_from(["n1", "n2", "n3"]))
    return ("up", node_obj(name, draw(st.sampled_from(["192.168.0.1", "192.168.0.2", "192.168.0.3"]))))


def full(s: DataplaneState):
    return comparable(s) + (s.routes,)


def solo(resources, node) -> DataplaneState:
    g = CalcGraph(node)
    g.apply_all(resources)
    s = DataplaneState()
    fold_checked(s, g.flush())
    return s


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(cluster_operations(), min_size=1, max_size=30), st.integers(0, 30))
def test_view_equals_a_calculation_for_that_node(ops, join_at):
    """Random changes, flushed in random batches; the view joins part-way (a late agent)."""
    everyone = CalcGraph(None)
    cluster = DataplaneState()
    views: dict[str, tuple[NodeView, DataplaneState]] = {}
    current = {}
    for r in load_objects(BASE):
        everyone.update(r)
        current[resource_key(r)] = r

    def join(node):
        view = NodeView(node)
        s = DataplaneState()
        fold_checked(s, view.initial(cluster))
        views[node] = (view, s)

    for i, (op, arg) in enumerate(ops):
        if i == join_at:
            join("n2")
        if op == "up":
            (r,) = load_objects([arg])
            everyone.update(r)
            current[resource_key(r)] = r
        else:
            everyone.delete(*arg)
            current.pop(arg, None)
        if i % 3 == 2 or i == len(ops) - 1:
            batch = everyone.flush()
            cluster.apply_all(batch)
            if "n1" not in views:
                join("n1")
            for view, s in views.values():
                fold_checked(s, view.translate(batch, cluster))
    if "n2" not in views:
        join("n2")
    for node, (_, s) in views.items():
        assert full(s) == full(solo(current.values(), node)), node


def test_routes_to_own_blocks_are_withheld_and_moves_are_handled():
    cluster = DataplaneState()
    everyone = CalcGraph(None)
    view = NodeView("n1")
    mine = DataplaneState()

    def step(*objs, delete=()):
        for r in load_objects(objs):
            everyone.update(r)
        for key in delete:
            everyone.delete(*key)
        batch = everyone.flush()
        cluster.apply_all(batch)
        out = view.translate(batch, cluster)
        mine.apply_all(out)
        return out

    step(node_obj("n1", "192.168.0.1"), node_obj("n2", "192.168.0.2"),
         block("10.65.0.0/26", "n1"), block("10.65.0.64/26", "n2"))
    assert set(mine.routes) == {"10.65.0.64/26"}
    out = step(block("10.65.0.64/26", "n1"))          # the block moves to this node
    assert out == [RouteRemove("10.65.0.64/26")] and not mine.routes
    out = step(block("10.65.0.0/26", "n2"))
    assert [type(u) for u in out] == [RouteUpdate]
    assert str(mine.routes["10.65.0.0/26"].route.gateway) == "192.168.0.2"


def test_other_nodes_endpoints_and_their_policies_never_reach_a_node():
    everyone = CalcGraph(None)
    cluster = DataplaneState()
    policy = {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
              "metadata": {"name": "only-n2"},
              "spec": {"selector": "app == 'db'", "ingress": [{"action": "Allow", "source": {"selector": "app == 'web'"}}]}}
    everyone.apply_all(load_objects(BASE + [pod("a", "db", "10.1.0.1", node="n2", app="db"),
                                            pod("a", "web", "10.1.0.2", node="n1", app="web"), policy]))
    batch = everyone.flush() + [InSync()]
    cluster.apply_all(batch)
    view = NodeView("n1")
    out = view.initial(cluster)
    kinds = {type(u).__name__ for u in out}
    assert "PolicyUpdate" not in kinds and "IPSetUpdate" not in kinds
    assert [u.id for u in out if type(u).__name__ == "WorkloadEndpointUpdate"] == ["n1/k8s/a/web/eth0"]
    assert isinstance(out[-1], InSync)
