"""The Kubernetes datastore through the official client against the in-test API server.

Every assertion is on the events the source emits (and on the server's
request counters to prove a relist did or did not happen); waits poll with
a deadline, never sleep.
"""

from __future__ import annotations

import copy
import ipaddress
import threading
import time
from typing import Any, Callable, Iterator

import pytest

from vppagent.ipam import IPAM, Block
from vppagent.ipam.k8s_store import KubernetesBlockStore
from vppagent.ipam.objects import block_to_object
from vppagent.manifests.loader import load_objects
from vppagent.model.resources import BlockAffinity, IPPool, Resource, resource_key
from vppagent.sources.base import Source
from vppagent.sources.events import Delete, SourceError, SourceEvent, SourceInSync, SourceStatus, Upsert
from vppagent.sources.kubernetes import KIND_NAMES, KubernetesSource, load_api_client
from vppagent.testbed.apiserver import ApiServer

Obj = dict[str, Any]
CALICO = "projectcalico.org/v3"


def ns(name: str, **labels: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(name: str, namespace: str = "x", ip: str = "10.65.0.1", image: str = "app:1", **labels: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": image}]},
            "status": {"podIPs": [{"ip": ip}]}}


def cpolicy(name: str, selector: str, namespace: str = "x") -> Obj:
    return {"apiVersion": CALICO, "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": selector, "ingress": [{"action": "Allow"}]}}


def block(cidr: str, node: str) -> Obj:
    return block_to_object(Block(ipaddress.ip_network(cidr), affinity=node, pool="pool"))


EVERY_KIND: list[Obj] = [
    ns("x", team="a"),
    pod("p", app="web"),
    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa", "namespace": "x"}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "x"},
     "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": "web"}}},
    {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
     "spec": {"podCIDRs": ["10.65.0.0/24"]}, "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}},
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "k", "namespace": "x"},
     "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": 80}]}]}},
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
     "metadata": {"name": "s-1", "namespace": "x", "labels": {"kubernetes.io/service-name": "s"}},
     "addressType": "IPv4", "endpoints": [{"addresses": ["10.65.0.1"], "nodeName": "n1"}],
     "ports": [{"name": "", "port": 8080, "protocol": "TCP"}]},
    cpolicy("sec.c", "app == 'web'") | {"spec": {"tier": "sec", "selector": "app == 'web'"}},
    {"apiVersion": CALICO, "kind": "GlobalNetworkPolicy", "metadata": {"name": "g"},
     "spec": {"selector": "has(app)", "egress": [{"action": "Deny", "protocol": "TCP", "destination": {"ports": [22]}}]}},
    {"apiVersion": CALICO, "kind": "Tier", "metadata": {"name": "sec"}, "spec": {"order": 10}},
    {"apiVersion": CALICO, "kind": "HostEndpoint", "metadata": {"name": "h"},
     "spec": {"node": "n1", "interfaceName": "eth0", "expectedIPs": ["192.0.2.1"]}},
    {"apiVersion": CALICO, "kind": "IPPool", "metadata": {"name": "pool"}, "spec": {"cidr": "10.65.0.0/16"}},
    {"apiVersion": CALICO, "kind": "NetworkSet", "metadata": {"name": "ns1", "namespace": "x"},
     "spec": {"nets": ["198.51.100.0/24"]}},
    {"apiVersion": CALICO, "kind": "GlobalNetworkSet", "metadata": {"name": "gs"}, "spec": {"nets": ["203.0.113.0/24"]}},
]
BLOCKS = [block("10.65.0.0/26", "n1"), block("10.65.0.64/26", "")]   # the second has no affinity


# --------------------------------------------------------------------------- helpers

class Events:
    """Collects a source's events; ``wait`` polls until a condition holds or fails with what came."""

    def __init__(self, source: KubernetesSource) -> None:
        self.source = source
        self.all: list[SourceEvent] = []

    def wait(self, cond: Callable[[list[SourceEvent]], bool], timeout: float = 5.0) -> list[SourceEvent]:
        deadline = time.monotonic() + timeout
        while not cond(self.all):
            left = deadline - time.monotonic()
            assert left > 0, f"condition not met; events: {self.all}"
            self.all += self.source.poll(min(left, 0.1))
        return self.all

    def wait_for(self, *wanted: SourceEvent, timeout: float = 5.0) -> list[SourceEvent]:
        return self.wait(lambda evs: all(w in evs for w in wanted), timeout)

    def synced(self) -> list[SourceEvent]:
        return self.wait(lambda evs: any(isinstance(e, SourceInSync) for e in evs))

    def take(self) -> list[SourceEvent]:
        out, self.all = self.all, []
        return out

    def changes(self) -> list[SourceEvent]:
        return [e for e in self.all if isinstance(e, (Upsert, Delete))]


def wait_until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what or cond}"
        time.sleep(0.005)


def one(obj: Obj) -> Resource:
    (r,) = load_objects([obj])
    return r


def upsert(obj: Obj) -> Upsert:
    return Upsert(one(obj))


def delete(obj: Obj) -> Delete:
    return Delete(*resource_key(one(obj)))


def caught_up(source: KubernetesSource, api: ApiServer, *kinds: str) -> Callable[[], bool]:
    """Those kinds (default: all) resume from the server's current RV: their events are all queued."""
    return lambda: all(rv == str(api.rv) for k, rv in source.resource_versions.items() if not kinds or k in kinds)


def apply_events(state: dict[tuple[str, str], Resource], events: list[SourceEvent]) -> None:
    for e in events:
        if isinstance(e, Upsert):
            state[resource_key(e.resource)] = e.resource
        elif isinstance(e, Delete):
            state.pop((e.kind, e.key), None)


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with ApiServer() as server:
        yield server


@pytest.fixture
def make(api: ApiServer, tmp_path) -> Iterator[Callable[..., tuple[KubernetesSource, Events]]]:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    sources: list[KubernetesSource] = []

    def start(**kw: Any) -> tuple[KubernetesSource, Events]:
        kw.setdefault("backoff", (0.01, 0.05))
        source = KubernetesSource(kw.pop("kubeconfig", kubeconfig), **kw)
        sources.append(source)
        source.start()
        return source, Events(source)

    yield start
    for s in sources:
        s.close()


# --------------------------------------------------------------------------- listing and watching

def test_initial_list_of_every_kind_then_exactly_one_in_sync(api, make):
    for obj in EVERY_KIND + BLOCKS:
        api.create(obj)
    source, ev = make()
    assert isinstance(source, Source)
    events = ev.synced()
    assert events[-1] == SourceInSync() and events.count(SourceInSync()) == 1
    expected = {resource_key(r): r for r in load_objects(EVERY_KIND)}
    affinity = BlockAffinity(ipaddress.ip_network("10.65.0.0/26"), "n1")
    expected[resource_key(affinity)] = affinity
    assert {resource_key(e.resource): e.resource for e in events if isinstance(e, Upsert)} == expected
    assert len(events) == len(expected) + 1                    # nothing else: no deletes, errors, status
    assert source.ready and source.errors == []
    assert all(api.count("list", k) == 1 for k in KIND_NAMES)
    late = ns("late")
    api.create(late)
    ev.wait_for(upsert(late))
    assert ev.all.count(SourceInSync()) == 1


def test_live_add_modify_delete(api, make):
    api.create(ns("x"))
    source, ev = make()
    ev.synced()
    ev.take()
    web = pod("web", app="web")
    api.create(web)
    ev.wait_for(upsert(web))
    relabelled = pod("web", app="shop")
    api.apply(relabelled)
    ev.wait_for(upsert(relabelled))
    api.apply(pod("web", image="app:2", app="shop"))           # nothing the model reads changed ...
    api.create(pod("other"))                                   # ... so the next pod event comes alone
    ev.wait_for(upsert(pod("other")))
    api.delete("v1", "Pod", "web", "x")
    ev.wait_for(delete(web))
    api.create(block("10.65.1.0/26", "n2"))
    affinity = BlockAffinity(ipaddress.ip_network("10.65.1.0/26"), "n2")
    ev.wait_for(Upsert(affinity))
    api.apply(block("10.65.1.0/26", ""))                        # a block losing its affinity: no route
    ev.wait_for(Delete(*resource_key(affinity)))
    assert ev.changes() == [upsert(web), upsert(relabelled), upsert(pod("other")), delete(web),
                            Upsert(affinity), Delete(*resource_key(affinity))]


def test_bookmarks_let_a_watch_resume_after_compaction_and_stale_watches_relist(api, make):
    api.create(ns("x"))
    source, ev = make()
    ev.synced()
    api.create(ns("y"))                                         # only the namespaces watch sees this RV
    ev.wait_for(upsert(ns("y")))
    assert int(source.resource_versions["pods"]) < api.rv
    wait_until(lambda: api.open_watches == len(KIND_NAMES), what="every watch open")   # bookmarks go to open watches
    api.send_bookmarks()
    wait_until(caught_up(source, api), what="bookmarks to advance every kind's RV")
    lists = api.count("list")
    api.compact()
    api.drop_watches()
    ev.take()
    web = pod("web")
    api.create(web)
    ev.wait_for(upsert(web))
    wait_until(lambda: api.open_watches == len(KIND_NAMES), what="all watches back")
    assert api.count("list") == lists                           # resumed from the bookmark: no 410, no relist

    api.create(ns("z"))                                         # namespaces current, every other kind behind
    ev.wait_for(upsert(ns("z")))
    pod_lists, ns_lists = api.count("list", "pods"), api.count("list", "namespaces")
    api.compact()
    api.drop_watches()
    wait_until(lambda: api.count("list", "pods") == pod_lists + 1, what="pods relist after 410")
    wait_until(caught_up(source, api))
    ev.all += source.poll(0)
    assert api.count("list", "namespaces") == ns_lists
    assert ev.changes() == [upsert(web), upsert(ns("z"))]       # the relist found nothing new: no events


def test_watch_that_ends_normally_is_resumed_without_relist(api, make):
    source, ev = make(kinds=["namespaces"], watch_timeout=1)
    ev.synced()
    wait_until(lambda: api.count("watch", "namespaces") >= 2, what="watch re-established after its timeout")
    api.create(ns("after"))
    ev.wait_for(upsert(ns("after")))
    assert api.count("list", "namespaces") == 1


def test_relist_after_410_emits_only_the_difference(api, make):
    keep, change, gone = ns("keep"), ns("change"), ns("gone")
    p1, p2 = pod("p1"), pod("p2", ip="10.65.0.2")
    for obj in (ns("x"), keep, change, gone, p1, p2, cpolicy("pol", "app == 'a'")):
        api.create(obj)
    source, ev = make()
    ev.synced()
    ev.take()
    api.down()
    ev.wait(lambda evs: SourceStatus(False) in [SourceStatus(e.connected) for e in evs if isinstance(e, SourceStatus)])
    assert not source.ready
    wait_until(lambda: len(source.failing) == len(KIND_NAMES), what="every kind to notice")
    changed, new = ns("change", team="b"), ns("new")
    api.apply(changed)
    api.delete_object(gone)
    api.create(new)
    api.delete_object(p2)
    api.apply(pod("p1", image="app:2"))                         # changed object, same model: no event
    api.compact()
    lists = api.count("list", "namespaces")
    api.up()
    ev.wait(lambda evs: any(isinstance(e, SourceStatus) and e.connected for e in evs))
    wait_until(caught_up(source, api))
    ev.all += source.poll(0)
    assert sorted(map(repr, ev.changes())) == sorted(map(repr, [upsert(changed), upsert(new), delete(gone),
                                                                  delete(p2)]))
    statuses = [e for e in ev.all if isinstance(e, SourceStatus)]
    assert [s.connected for s in statuses] == [False, True], statuses
    assert api.count("list", "namespaces") == lists + 1        # it had to relist
    assert source.ready and SourceInSync() not in ev.all


def test_dropped_watches_lose_nothing(api, make):
    api.create(ns("x"))
    source, ev = make(kinds=["namespaces", "pods"])
    ev.synced()
    drops = 0

    def drop() -> None:                  # cut live streams, losing what they had not written yet
        nonlocal drops
        wait_until(lambda: api.open_watches == 2, what="watches re-established")
        api.drop_watches()
        drops += 1

    for i in range(30):
        api.create(pod(f"p{i}", ip=f"10.65.0.{i + 1}"))
        if i % 4 == 0:
            drop()                       # changes right after a drop land while the client is away
    for i in range(0, 30, 3):
        api.delete("v1", "Pod", f"p{i}", "x")
        if i % 2 == 0:
            drop()
    for i in range(1, 30, 5):
        api.apply(pod(f"p{i}", ip=f"10.65.0.{i + 1}", app="v2"))
        drop()
    wait_until(caught_up(source, api, "pods"))                  # the last change was a pod
    ev.all += source.poll(0)
    state: dict[tuple[str, str], Resource] = {}
    apply_events(state, ev.all)
    expected = {resource_key(r): r for r in load_objects(api.objects("v1", "Pod") + api.objects("v1", "Namespace"))}
    assert state == expected
    assert api.count("list", "pods") == 1 and api.count("watch", "pods") >= drops


@pytest.mark.parametrize("mode", ["503", "reset"])
def test_api_server_down_then_back_delivers_what_changed_meanwhile(api, make, mode):
    api.create(ns("x"))
    source, ev = make()
    ev.synced()
    assert source.ready
    ev.take()
    api.down(mode)
    ev.wait(lambda evs: any(isinstance(e, SourceStatus) for e in evs))
    (status,) = ev.all
    assert status.connected is False and status.detail
    assert not source.ready
    wait_until(lambda: len(source.failing) == len(KIND_NAMES), what="every kind to notice")
    refused = api.count("refused")
    wait_until(lambda: api.count("refused") > refused + 3, what="retries while down")
    assert [e for e in source.poll(0) if isinstance(e, SourceStatus)] == []    # reported once
    lists = api.count("list")
    api.create(ns("while-down"))
    api.delete("v1", "Namespace", "x")
    api.up()
    ev.wait_for(upsert(ns("while-down")), delete(ns("x")))
    ev.wait(lambda evs: SourceStatus(True, "connected") in evs)
    assert [e for e in ev.all if isinstance(e, SourceStatus)] == [status, SourceStatus(True, "connected")]
    wait_until(lambda: source.ready)
    assert api.count("list") == lists                           # resumed from the last RV, no relist


def test_unreachable_at_start_then_server_appears(tmp_path):
    with ApiServer() as first:
        kubeconfig = first.write_kubeconfig(tmp_path / "kubeconfig")
        port = first.port
    source = KubernetesSource(kubeconfig, kinds=["namespaces"], backoff=(0.01, 0.05))
    source.start()
    ev = Events(source)
    try:
        ev.wait(lambda evs: bool(evs))
        assert isinstance(ev.all[0], SourceStatus) and not ev.all[0].connected
        assert "refused" in ev.all[0].detail.lower()
        assert not source.ready
        with ApiServer(port=port) as api:
            api.create(ns("x"))
            ev.wait_for(SourceStatus(True, "connected"), upsert(ns("x")), SourceInSync())
            assert source.ready
    finally:
        source.close()


def test_malformed_calico_policy_is_reported_and_the_good_version_kept(api, make):
    good = cpolicy("pol", "app == 'a'")
    api.create(ns("x"))
    api.create(good)
    api.create(cpolicy("broken", "app =="))
    source, ev = make()
    events = ev.synced()
    (err,) = [e for e in events if isinstance(e, SourceError)]
    assert "x/broken" in str(err.error) and err.error.path == "spec.selector"
    assert "NetworkPolicy" in str(err.error) and upsert(good) in events
    assert [str(e) for e in source.errors] == [str(err.error)]
    ev.take()
    api.apply(cpolicy("pol", "app in {"))
    ev.wait(lambda evs: any(isinstance(e, SourceError) for e in evs))
    (bad,) = ev.all
    assert bad.error.path == "spec.selector" and "x/pol" in bad.error.source
    assert len(source.errors) == 2 and source.errors[-1].source == bad.error.source
    api.create(ns("still-flowing"))
    ev.wait_for(upsert(ns("still-flowing")))
    fixed = cpolicy("pol", "app == 'b'")
    api.apply(fixed)
    ev.wait_for(upsert(fixed))
    assert [e.source for e in source.errors] == [err.error.source]
    api.delete_object(cpolicy("broken", ""))
    last = cpolicy("last", "all()")                           # same kind: its event comes after the delete
    api.create(last)
    ev.wait_for(upsert(last))
    assert source.errors == []
    assert not any(isinstance(e, Delete) for e in ev.all)      # neither bad object removed anything


def test_in_cluster_config_with_token_and_ca(tmp_path):
    with ApiServer(tls=True, token="s3cret") as api:
        api.create(ns("x"))
        token = tmp_path / "token"
        token.write_text("s3cret")
        env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api.port)}
        source = KubernetesSource(token_file=token, ca_file=api.ca_file, environ=env, kinds=["namespaces"],
                                  backoff=(0.01, 0.05))
        wrong = tmp_path / "wrong"
        wrong.write_text("nope")
        rejected = KubernetesSource(token_file=wrong, ca_file=api.ca_file, environ=env, kinds=["namespaces"],
                                    backoff=(0.01, 0.05))
        try:
            source.start()
            rejected.start()
            assert upsert(ns("x")) in Events(source).synced()
            bad = Events(rejected).wait(lambda evs: bool(evs))
            assert bad[0] == SourceStatus(False, "namespaces: HTTP 401 Unauthorized")
        finally:
            source.close()
            rejected.close()
        with pytest.raises(Exception, match="host/port"):
            KubernetesSource(token_file=token, ca_file=api.ca_file, environ={})


def test_close_is_prompt_with_open_watches(api, make):
    source, ev = make()
    ev.synced()
    wait_until(lambda: api.open_watches == len(KIND_NAMES))
    started = time.monotonic()
    source.close()
    assert time.monotonic() - started < 1.0
    source.close()                                             # idempotent
    wait_until(lambda: api.open_watches == 0, what="server-side watches to end")
    assert source.poll(0) == [] and not source.ready


# --------------------------------------------------------------------------- IPAM on the Kubernetes API

def test_block_store_compare_and_swap(api, tmp_path):
    with load_api_client(api.write_kubeconfig(tmp_path / "kc")) as client:
        store = KubernetesBlockStore(client)
        b = Block(ipaddress.ip_network("10.9.0.0/30"), affinity="n")
        rev = store.create_block(b)
        assert isinstance(rev, int)
        assert store.create_block(b) is None                       # AlreadyExists
        got, rev2 = store.get_block(b.cidr)
        assert rev2 == rev and got == b
        got.assign(0, "h", {"pod": "x/p"})
        new = store.update_block(got, rev)
        assert new is not None and new != rev
        assert store.update_block(got, rev) is None                # stale revision: 409
        assert store.get_block(b.cidr) == (got, new)
        assert store.list_blocks() == [(got, new)]
        assert api.get("crd.projectcalico.org/v1", "IPAMBlock", "10-9-0-0-30")["spec"]["affinity"] == "host:n"
        assert store.delete_block(b.cidr, rev) is False            # precondition failed
        assert store.delete_block(b.cidr, new) is True
        assert store.delete_block(b.cidr, new) is False            # already gone
        assert store.get_block(b.cidr) is None and store.list_blocks() == []
        assert store.update_block(got, new) is None                # gone: nothing to update


def test_ipam_on_two_nodes_concurrently_never_duplicates(api, tmp_path, make):
    kubeconfig = api.write_kubeconfig(tmp_path / "kc")
    pools = [IPPool("p", ipaddress.ip_network("10.70.0.0/24"), 29)]
    out: dict[str, list[str]] = {}
    failures: list[BaseException] = []

    def worker(node: str, tag: str) -> None:
        store = KubernetesBlockStore(kubeconfig=kubeconfig)
        try:
            ipam = IPAM(store, node)
            out[tag] = [str(ipam.assign(f"{tag}-{i}", {"node": node}, pools)[0].ip) for i in range(12)]
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=worker, args=(node, f"{node}-{w}")) for node in ("n1", "n2") for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not failures, failures
    addrs = [a for v in out.values() for a in v]
    assert len(addrs) == 48 and len(set(addrs)) == 48
    reader = KubernetesBlockStore(kubeconfig=kubeconfig)
    blocks = reader.list_blocks()
    reader.close()
    for b, _ in blocks:                                        # every address sits in its node's block
        for handle in b.handles:
            assert handle.startswith(b.affinity + "-")
    assert api.count("update", "ipamblocks.crd.projectcalico.org") >= 40
    source, ev = make(kinds=["ipamblocks.crd.projectcalico.org"])   # and the source sees the affinities
    affinities = {e.resource for e in ev.synced() if isinstance(e, Upsert)}
    assert affinities == {BlockAffinity(b.cidr, b.affinity) for b, _ in blocks}


def test_objects_are_copied_not_shared(api):
    obj = ns("x")
    stored = api.create(obj)
    stored["metadata"]["labels"]["mutated"] = "yes"
    assert "mutated" not in api.get("v1", "Namespace", "x")["metadata"]["labels"]
    assert copy.deepcopy(obj) == ns("x")
