"""The etcd datastore against a real etcd: listing, watching, compaction, outages, bad values, IPAM."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from typing import Any, Callable, Iterator

import pytest
import yaml

from vppagent.ipam import IPAM, Block
from vppagent.ipam.etcd_store import EtcdBlockStore
from vppagent.ipam.objects import block_to_object
from vppagent.manifests.loader import load_objects
from vppagent.model.resources import BlockAffinity, IPPool, Namespace, Resource, resource_key
from vppagent.sources.base import Source
from vppagent.sources.etcd import EtcdSource, block_key, object_key
from vppagent.sources.etcd_client import EtcdClient, EtcdCompactedError, EtcdConnectionError
from vppagent.sources.config import DatastoreConfig
from vppagent.sources.factory import create_block_store, create_source
from vppagent.sources.events import Delete, SourceError, SourceEvent, SourceInSync, SourceStatus, Upsert
from vppagent.testbed.etcd import EtcdDatastore, EtcdServer, etcd_missing_reason

pytestmark = pytest.mark.skipif(etcd_missing_reason() is not None, reason=etcd_missing_reason() or "")

DEADLINE = 10.0

EVERY_KIND = list(yaml.safe_load_all("""
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: sec}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: sec.g}
spec: {tier: sec, selector: has(app), ingress: [{action: Deny, protocol: TCP, destination: {ports: [22]}}]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: n, namespace: x}
spec: {egress: [{action: Allow, destination: {nets: [10.0.0.0/8]}}]}
---
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: prof}
spec: {ingress: [{action: Allow}]}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: h, labels: {role: node}}
spec: {node: n1, interfaceName: eth0, expectedIPs: [192.0.2.1]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: w, namespace: x}
spec: {node: n1, pod: w, endpoint: eth0, interfaceName: caliw, ipNetworks: [10.0.0.9/32]}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool}
spec: {cidr: 10.65.0.0/16}
---
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata: {name: ns1, namespace: x}
spec: {nets: [198.51.100.0/24]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata: {name: gs}
spec: {nets: [203.0.113.0/24]}
---
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: a}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: sa, namespace: x}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: x, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c}]}
status: {podIPs: [{ip: 10.0.0.1}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: k, namespace: x}
spec: {podSelector: {matchLabels: {app: web}}, ingress: [{ports: [{port: 80}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: s, namespace: x}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-1, namespace: x, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
endpoints: [{addresses: [10.0.0.1], conditions: {ready: true}}]
ports: [{name: "", port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 192.0.2.1}]}
"""))


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def ns_key(name: str) -> str:
    return object_key(namespace(name))


def ns_resource(name: str, **labels: str) -> Resource:
    return load_objects([namespace(name, **labels)])[0]


class Consumer:
    """Applies a source's events like the agent would, keeping every event for assertions."""

    def __init__(self, source: EtcdSource) -> None:
        self.source = source
        self.events: list[SourceEvent] = []
        self.state: dict[tuple[str, str], Resource] = {}

    def pump(self, timeout: float = 0.05) -> list[SourceEvent]:
        new = self.source.poll(timeout)
        for ev in new:
            if isinstance(ev, Upsert):
                self.state[resource_key(ev.resource)] = ev.resource
            elif isinstance(ev, Delete):
                assert (ev.kind, ev.key) in self.state, f"Delete of something never emitted: {ev}"
                del self.state[(ev.kind, ev.key)]
        self.events += new
        return new

    def until(self, what: str, cond: Callable[[], bool], timeout: float = DEADLINE) -> list[SourceEvent]:
        """Pump until ``cond()``; the events that arrived meanwhile."""
        start = len(self.events)
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; events: {self.events[start:]}")
            self.pump()
        return self.events[start:]

    def drain(self) -> list[SourceEvent]:
        start = len(self.events)
        while self.pump(0):
            pass
        return self.events[start:]

    def seen(self, event: SourceEvent, since: int = 0) -> bool:
        return event in self.events[since:]

    def has(self, resource: Resource) -> bool:
        return self.state.get(resource_key(resource)) == resource


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    with EtcdServer() as server:
        yield server


@pytest.fixture
def make_source(etcd: EtcdServer) -> Iterator[Callable[..., tuple[EtcdSource, Consumer]]]:
    made: list[EtcdSource] = []

    def make(timeout: float = 2.0, **kw: Any) -> tuple[EtcdSource, Consumer]:
        kw.setdefault("backoff", (0.02, 0.1))
        source = EtcdSource(EtcdClient(etcd.client_url, timeout=timeout), **kw)
        made.append(source)
        source.start()
        consumer = Consumer(source)
        consumer.until("initial sync", lambda: SourceInSync() in consumer.events)
        return source, consumer

    yield make
    for source in made:
        source.close()


def test_initial_list_of_every_kind(etcd: EtcdServer, make_source) -> None:
    for obj in EVERY_KIND:
        etcd.put_object(object_key(obj), obj)
    mine = Block(ipaddress.ip_network("10.65.0.0/26"), affinity="n1", pool="pool")
    v6 = Block(ipaddress.ip_network("fd00::/122"), affinity="n2", pool="pool6")
    orphan = Block(ipaddress.ip_network("10.65.0.64/26"))              # no affinity: no route
    for block in (mine, v6, orphan):
        etcd.put_object(block_key(block.cidr), block_to_object(block))
    # Things in the watched range the agent does not use are ignored, not errors.
    etcd.put_raw("/calico/resources/v3/projectcalico.org/felixconfigurations/default", "{}")
    etcd.put_raw("/calico/ipam/v2/handle/k8s-pod-network.abc", "not json")

    source, consumer = make_source(page_size=4)                          # several pages
    as_protocol: object = source
    assert isinstance(as_protocol, Source)
    expected = {resource_key(r): r for r in load_objects(EVERY_KIND)}
    for affinity in (BlockAffinity(mine.cidr, "n1"), BlockAffinity(v6.cidr, "n2")):
        expected[resource_key(affinity)] = affinity
    assert consumer.state == expected
    assert consumer.events.count(SourceInSync()) == 1 and consumer.events[-1] == SourceInSync()
    assert not any(isinstance(e, (SourceError, SourceStatus, Delete)) for e in consumer.events)
    assert source.ready and source.errors == [] and source.revision == etcd.revision()


def test_live_put_modify_delete(etcd: EtcdServer, make_source) -> None:
    source, consumer = make_source()
    assert consumer.events == [SourceInSync()] and source.ready

    etcd.put_object(ns_key("a"), namespace("a", env="dev"))
    consumer.until("a", lambda: consumer.has(ns_resource("a", env="dev")))
    etcd.put_object(ns_key("a"), namespace("a", env="prod"))
    consumer.until("a modified", lambda: consumer.has(ns_resource("a", env="prod")))

    mark = len(consumer.events)
    etcd.put_object(ns_key("a"), namespace("a", env="prod"))            # same value again: nothing to say
    etcd.put_object(ns_key("b"), namespace("b"))
    consumer.until("b", lambda: consumer.has(ns_resource("b")))
    assert consumer.events[mark:] == [Upsert(ns_resource("b"))]

    pod = next(o for o in EVERY_KIND if o["kind"] == "Pod")
    etcd.put_object(object_key(pod), pod)
    [wep] = load_objects([pod])
    consumer.until("pod", lambda: consumer.has(wep))
    etcd.delete(object_key(pod))
    etcd.delete(ns_key("a"))
    consumer.until("deletes", lambda: resource_key(wep) not in consumer.state
                   and ("Namespace", "a") not in consumer.state)
    assert consumer.events[-2:] == [Delete(*resource_key(wep)), Delete("Namespace", "a")]
    assert source.revision == etcd.revision()


def test_compaction_while_behind_relists_only_the_difference(etcd: EtcdServer, make_source) -> None:
    for name in ("keep", "change", "gone"):
        etcd.put_object(ns_key(name), namespace(name))
    source, consumer = make_source()
    assert len(consumer.state) == 3

    source.interrupt_watch(hold=True)                  # the source falls behind ...
    etcd.put_object(ns_key("change"), namespace("change", v="2"))
    etcd.delete(ns_key("gone"))
    etcd.put_object(ns_key("new"), namespace("new"))
    etcd.put_object(ns_key("keep"), namespace("keep"))  # rewritten with the same content
    etcd.compact()                                      # ... past what etcd still remembers
    with pytest.raises(EtcdCompactedError):
        EtcdClient(etcd.client_url).list_prefix("/calico/", revision=source.revision)
    source.release_watch()

    events = consumer.until("relist", lambda: source.relists == 1) + consumer.drain()
    assert sorted(map(repr, events)) == sorted(map(repr, [
        Upsert(ns_resource("change", v="2")), Delete("Namespace", "gone"), Upsert(ns_resource("new"))]))
    assert source.ready and source.revision == etcd.revision()

    etcd.put_object(ns_key("after"), namespace("after"))  # and the watch carries on
    consumer.until("after", lambda: consumer.has(ns_resource("after")))


def test_watch_cut_mid_stream_loses_nothing(etcd: EtcdServer, make_source) -> None:
    source, consumer = make_source()
    writer = EtcdClient(etcd.client_url)
    done = threading.Event()

    def write() -> None:
        for i in range(150):
            writer.put(ns_key(f"n{i % 50}"), json.dumps(namespace(f"n{i % 50}", round=str(i // 50))))
        for i in range(0, 50, 5):
            writer.delete(ns_key(f"n{i}"))
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    cuts = 0
    while not done.is_set():                           # cut the stream again and again while writes go on
        source.interrupt_watch()
        cuts += 1
        consumer.pump(0.01)
    thread.join()
    expected = {("Namespace", f"n{i}"): ns_resource(f"n{i}", round="2") for i in range(50) if i % 5}
    consumer.until("every write", lambda: consumer.state == expected)
    assert cuts > 3 and source.relists == 0            # resumed from the last revision each time

    source.interrupt_watch(hold=True)                  # cut, and write while nobody listens
    etcd.put_object(ns_key("n1"), namespace("n1", round="3"))
    etcd.delete(ns_key("n2"))
    source.release_watch()
    consumer.until("writes while cut", lambda: consumer.has(ns_resource("n1", round="3"))
                   and ("Namespace", "n2") not in consumer.state)
    assert source.relists == 0 and not any(isinstance(e, SourceStatus) for e in consumer.events)


def test_etcd_killed_then_back(etcd: EtcdServer, make_source) -> None:
    for name in ("a", "b"):
        etcd.put_object(ns_key(name), namespace(name))
    source, consumer = make_source()

    etcd.kill()
    consumer.until("status down", lambda: SourceStatus in map(type, consumer.events))
    assert not source.ready
    consumer.until("retries", lambda: source.failures >= 3)
    source.interrupt_watch(hold=True)                  # keep it away until a second writer has been
    etcd.restart()
    other = EtcdClient(etcd.client_url)
    other.put(ns_key("a"), json.dumps(namespace("a", v="2")))
    other.delete(ns_key("b"))
    other.put(ns_key("c"), json.dumps(namespace("c")))
    mark = len(consumer.events)
    source.release_watch()
    consumer.until("back", lambda: source.ready)
    events = consumer.events[mark:] + consumer.drain()      # status and diff arrive as one batch
    assert isinstance(events[0], SourceStatus) and events[0].connected
    assert sorted(map(repr, events[1:])) == sorted(map(repr, [
        Upsert(ns_resource("a", v="2")), Delete("Namespace", "b"), Upsert(ns_resource("c"))]))
    statuses = [e for e in consumer.events if isinstance(e, SourceStatus)]
    assert [s.connected for s in statuses] == [False, True]   # one "down" however many retries

    # A second crash, with changes made the moment etcd is back: delivered either way.
    etcd.kill()
    consumer.until("down again", lambda: not source.ready)
    etcd.restart()
    other.put(ns_key("d"), json.dumps(namespace("d")))
    consumer.until("d", lambda: consumer.has(ns_resource("d")) and source.ready)
    assert [s.connected for s in consumer.events if isinstance(s, SourceStatus)] == [False, True, False, True]


def test_malformed_values_are_reported_and_skipped(etcd: EtcdServer, make_source) -> None:
    policy = next(o for o in EVERY_KIND if o["kind"] == "GlobalNetworkPolicy")
    tier = next(o for o in EVERY_KIND if o["kind"] == "Tier")
    key = object_key(policy)
    etcd.put_object(object_key(tier), tier)
    etcd.put_object(key, policy)
    source, consumer = make_source()
    [good] = load_objects([policy])
    assert consumer.has(good)

    etcd.put_raw(key, '{"apiVersion": "projectcalico.org/v3", "kind": ')
    consumer.until("JSON error", lambda: any(isinstance(e, SourceError) for e in consumer.events))
    [err] = [e.error for e in consumer.events if isinstance(e, SourceError)]
    assert err.source == key and "invalid JSON" in err.message
    assert source.errors == [err] and consumer.has(good)

    bad = json.loads(json.dumps(policy))
    bad["spec"]["ingress"][0]["action"] = "Maybe"
    etcd.put_object(key, bad)
    etcd.put_object(ns_key("other"), namespace("other"))               # the rest flows
    consumer.until("other", lambda: consumer.has(ns_resource("other")))
    errors = [e.error for e in consumer.events if isinstance(e, SourceError)]
    assert len(errors) == 2 and errors[1].source == key and errors[1].path == "spec.ingress[0].action"
    assert source.errors == [errors[1]] and consumer.has(good)
    assert not any(isinstance(e, Delete) for e in consumer.events)

    pod_as_ns = next(o for o in EVERY_KIND if o["kind"] == "Pod")
    etcd.put_object(ns_key("wrong"), pod_as_ns)
    bad_block = block_to_object(Block(ipaddress.ip_network("10.65.1.0/26"), affinity="n1"))
    bad_block["spec"]["cidr"] = "10.65.1.0/33"
    etcd.put_object(block_key("10.65.1.0/26"), bad_block)
    consumer.until("more errors", lambda: len(source.errors) == 3)
    assert [(e.source, e.path) for e in source.errors[1:]] == [(ns_key("wrong"), "kind"),
                                                              (block_key("10.65.1.0/26"), "spec.cidr")]

    fixed = json.loads(json.dumps(policy))
    fixed["spec"]["ingress"][0]["action"] = "Allow"
    etcd.put_object(key, fixed)
    [good2] = load_objects([fixed])
    consumer.until("fixed", lambda: consumer.has(good2))
    assert [e.source for e in source.errors] == [ns_key("wrong"), block_key("10.65.1.0/26")]
    etcd.delete(ns_key("wrong"))
    consumer.until("error cleared", lambda: len(source.errors) == 1)

    # A relist does not report the same bad value twice.
    source.interrupt_watch(hold=True)
    etcd.put_object(ns_key("late"), namespace("late"))
    etcd.put_object(ns_key("later"), namespace("later"))
    etcd.compact()                                     # the source's next revision is gone
    source.release_watch()
    events = consumer.until("relist", lambda: source.relists == 1) + consumer.drain()
    assert events == [Upsert(ns_resource("late")), Upsert(ns_resource("later"))]
    assert len([e for e in consumer.events if isinstance(e, SourceError)]) == 4


def test_unreachable_at_start_then_close_is_prompt() -> None:
    with EtcdServer() as server:
        url = server.client_url
    source = create_source(DatastoreConfig(type="etcd", endpoints=(url,)))      # nothing listens there now
    assert isinstance(source, EtcdSource)
    source.backoff = (0.02, 0.05)
    source.start()
    consumer = Consumer(source)
    consumer.until("down", lambda: any(isinstance(e, SourceStatus) for e in consumer.events))
    assert consumer.events == [SourceStatus(False, consumer.events[0].detail)]  # type: ignore[union-attr]
    assert not source.ready
    started = time.monotonic()
    source.close()
    assert time.monotonic() - started < 1.0


def test_block_store_compare_and_swap(etcd: EtcdServer) -> None:
    store = EtcdBlockStore(etcd.client)
    block = Block(ipaddress.ip_network("10.66.0.0/28"), affinity="n1", pool="p")
    rev = store.create_block(block)
    assert rev is not None and store.create_block(block) is None
    got = store.get_block(block.cidr)
    assert got is not None and got[1] == rev and got[0] == block

    block.assign(3, "c1", {"pod": "x"})
    new_rev = store.update_block(block, rev)
    assert new_rev is not None and new_rev > rev
    assert store.update_block(block, rev) is None                     # stale revision: conflict
    assert not store.delete_block(block.cidr, rev)
    assert store.list_blocks() == [(block, new_rev)]
    assert store.delete_block(block.cidr, new_rev)
    assert store.get_block(block.cidr) is None and store.list_blocks() == []
    assert store.update_block(block, new_rev) is None                 # gone: no resurrection


def test_ipam_on_etcd_two_nodes_concurrently(etcd: EtcdServer, make_source) -> None:
    pools = [IPPool(name="p", cidr=ipaddress.ip_network("10.70.0.0/24"), block_size=28)]
    got: dict[str, list[Any]] = {}

    def node(name: str) -> None:
        ipam = IPAM(create_block_store(DatastoreConfig(type="etcd", endpoints=(etcd.client_url,)), ""), name)
        got[name] = [ipam.assign(f"{name}-c{i}", {"node": name}, pools)[0] for i in range(40)]

    threads = [threading.Thread(target=node, args=(n,)) for n in ("n1", "n2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    addresses = [ip.ip for ips in got.values() for ip in ips]
    assert len(addresses) == 80 and len(set(addresses)) == 80
    blocks = EtcdBlockStore(etcd.client).list_blocks()
    for name, ips in got.items():
        mine = [b.cidr for b, _ in blocks if b.affinity == name]
        assert all(any(ip.ip in cidr for cidr in mine) for ip in ips)
    assert sum(len(b.allocations) for b, _ in blocks) == 80

    source, consumer = make_source()                  # and routing learns who owns which block
    assert {r for r in consumer.state.values() if isinstance(r, BlockAffinity)} == \
        {BlockAffinity(b.cidr, b.affinity) for b, _ in blocks}
    assert IPAM(EtcdBlockStore(etcd.client), "n1").release("n1-c0") == [got["n1"][0].ip]


def test_testbed_restart_keeps_data_and_ports(etcd: EtcdServer) -> None:
    url = etcd.client_url
    etcd.put_object(ns_key("kept"), namespace("kept"))
    etcd.stop()
    with pytest.raises(EtcdConnectionError):
        etcd.client.get(ns_key("kept"))
    etcd.restart()
    assert etcd.client_url == url and etcd.client.get(ns_key("kept")) is not None
    assert isinstance(load_objects([namespace("kept")])[0], Namespace)


def test_testbed_writer_replaces_groups(etcd: EtcdServer, make_source) -> None:
    writer = EtcdDatastore(etcd.client)
    source, consumer = make_source()
    writer.write("team", [namespace("a"), namespace("b")])
    consumer.until("group", lambda: consumer.has(ns_resource("a")) and consumer.has(ns_resource("b")))
    writer.write("team", yaml.safe_dump_all([namespace("a", v="2"), namespace("c")]))
    consumer.until("replaced", lambda: set(consumer.state) == {("Namespace", "a"), ("Namespace", "c")})
    assert consumer.has(ns_resource("a", v="2"))
    writer.remove("team")
    consumer.until("removed", lambda: consumer.state == {})


def test_hung_etcd_is_detected_by_the_keepalive_probe(etcd: EtcdServer, make_source) -> None:
    source, consumer = make_source(keepalive=0.2, timeout=0.3)
    etcd.pause()                                       # no reset, no EOF: only silence
    try:
        consumer.until("down", lambda: not source.ready)
        assert [e for e in consumer.events if isinstance(e, SourceStatus)][0].connected is False
    finally:
        etcd.resume()
    etcd.put_object(ns_key("after"), namespace("after"))
    consumer.until("back", lambda: source.ready and consumer.has(ns_resource("after")))
