"""The desired-state engine against an in-memory device.

The device enforces referential integrity like a real one (an address needs
its interface, an interface with addresses cannot be deleted), so ordering
mistakes surface as errors; tests can inject failures and drift.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Mapping, Sequence

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from vppagent.reconciler import Backoff, Descriptor, KeyState, Op, OpKind, Reconciler
from vppagent.reconciler.graph import topo_order


# -- the device ------------------------------------------------------------------------------

@dataclass(frozen=True)
class IfaceKey:
    name: str


@dataclass(frozen=True)
class Iface:
    mtu: int = 1500
    kind: str = "tap"        # changing the kind needs a recreate


@dataclass(frozen=True)
class AddrKey:
    iface: str
    cidr: str


@dataclass(frozen=True)
class Addr:
    label: str = ""          # no in-place update: any change recreates


@dataclass(frozen=True)
class RouteKey:
    dst: str


@dataclass(frozen=True)
class Route:
    iface: str
    cidr: str
    metric: int = 0          # updated in place, even when the address it uses changes


class Boom(Exception):
    """A transient device error."""


class Fatal(Exception):
    """A device error retrying cannot fix."""


class Missing(Exception):
    pass


class InUse(Exception):
    pass


class Exists(Exception):
    pass


def parent(key: Hashable, value: Any) -> Hashable | None:
    if isinstance(key, AddrKey):
        return IfaceKey(key.iface)
    if isinstance(key, RouteKey):
        return AddrKey(value.iface, value.cidr)
    return None


class Device:
    """A dict of objects; ``owned`` marks what the agent created (its "tag")."""

    def __init__(self) -> None:
        self.objects: dict[Hashable, Any] = {}
        self.owned: set[Hashable] = set()
        self.index: dict[Hashable, int] = {}
        self.writes: list[tuple[str, Hashable]] = []
        self.faults: dict[tuple[str, Hashable], list[BaseException | None]] = {}
        self.dumps = 0
        self._next_index = 1

    def inject(self, op: str, key: Hashable, *outcomes: BaseException | None) -> None:
        """The next calls of ``op`` on ``key`` raise these (None = succeed)."""
        self.faults.setdefault((op, key), []).extend(outcomes)

    def _maybe_fail(self, op: str, key: Hashable) -> None:
        queue = self.faults.get((op, key))
        if queue:
            exc = queue.pop(0)
            if exc is not None:
                raise exc

    def children(self, key: Hashable) -> list[Hashable]:
        return [k for k, v in self.objects.items() if parent(k, v) == key]

    def create(self, key: Hashable, value: Any) -> int:
        self.writes.append(("create", key))
        self._maybe_fail("create", key)
        if key in self.objects:
            raise Exists(key)
        p = parent(key, value)
        if p is not None and p not in self.objects:
            raise Missing(p)
        self.objects[key] = value
        self.owned.add(key)
        self.index[key] = self._next_index
        self._next_index += 1
        return self.index[key]

    def update(self, key: Hashable, value: Any) -> None:
        self.writes.append(("update", key))
        self._maybe_fail("update", key)
        if key not in self.objects:
            raise Missing(key)
        p = parent(key, value)
        if p is not None and p not in self.objects:
            raise Missing(p)
        self.objects[key] = value

    def delete(self, key: Hashable) -> None:
        self.writes.append(("delete", key))
        self._maybe_fail("delete", key)
        if key not in self.objects:
            return   # idempotent, like most real APIs used this way
        if self.children(key):
            raise InUse(key)
        del self.objects[key]
        self.owned.discard(key)

    def dump(self, cls: type) -> dict[Hashable, tuple[Any, Any]]:
        self.dumps += 1
        return {k: (v, self.index.get(k)) for k, v in self.objects.items()
                if k in self.owned and isinstance(k, cls)}

    # drift: changes behind the engine's back, never counted as writes

    def tamper_set(self, key: Hashable, value: Any, owned: bool = True) -> None:
        self.objects[key] = value
        (self.owned.add if owned else self.owned.discard)(key)
        self.index.setdefault(key, 0)

    def tamper_remove(self, key: Hashable) -> None:
        for child in self.children(key):
            self.tamper_remove(child)
        self.objects.pop(key, None)
        self.owned.discard(key)

    def owned_objects(self) -> dict[Hashable, Any]:
        return {k: v for k, v in self.objects.items() if k in self.owned}


class DeviceDescriptor(Descriptor):
    def __init__(self, dev: Device) -> None:
        super().__init__()
        self.dev = dev

    def create(self, key: Any, value: Any) -> Any:
        return self.dev.create(key, value)

    def delete(self, key: Any, value: Any, metadata: Any) -> None:
        self.dev.delete(key)

    def dump(self) -> Mapping[Any, tuple[Any, Any]]:
        assert isinstance(self.kind, type)
        return self.dev.dump(self.kind)

    def retriable(self, exc: BaseException) -> bool:
        return not isinstance(exc, Fatal)


class IfaceDescriptor(DeviceDescriptor):
    kind = IfaceKey

    def update(self, key: Any, old: Any, new: Any, metadata: Any) -> Any:
        self.dev.update(key, new)
        return None

    def needs_recreate(self, key: Any, old: Iface, new: Iface) -> bool:
        return old.kind != new.kind


class AddrDescriptor(DeviceDescriptor):
    kind = AddrKey

    def dependencies(self, key: AddrKey, value: Any) -> Iterable[Hashable]:
        return [IfaceKey(key.iface)]


class RouteDescriptor(DeviceDescriptor):
    kind = RouteKey

    def update(self, key: Any, old: Any, new: Any, metadata: Any) -> Any:
        self.dev.update(key, new)
        return None

    def dependencies(self, key: RouteKey, value: Route) -> Iterable[Hashable]:
        return [AddrKey(value.iface, value.cidr)]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(backoff: Backoff | None = None) -> tuple[Reconciler, Device, Clock]:
    dev, clock = Device(), Clock()
    rec = Reconciler(clock=clock, backoff=backoff or Backoff(base=1.0, max=8.0))
    for desc in (RouteDescriptor(dev), IfaceDescriptor(dev), AddrDescriptor(dev)):
        rec.register(desc)
    return rec, dev, clock


def stack(rec: Reconciler, name: str = "a", cidr: str = "10.0.0.1/24", dst: str = "0.0.0.0/0") -> None:
    rec.set(RouteKey(dst), Route(name, cidr))
    rec.set(AddrKey(name, cidr), Addr())
    rec.set(IfaceKey(name), Iface())


def ops(rec: Reconciler, since: int = 0) -> list[tuple[str, Hashable]]:
    return [(r.op.kind.value, r.op.key) for r in rec.history[since:]]


def synced(backoff: Backoff | None = None) -> tuple[Reconciler, Device, Clock]:
    rec, dev, clock = make(backoff)
    rec.mark_in_sync()
    rec.commit()
    return rec, dev, clock


A, ADDR, ROUTE = IfaceKey("a"), AddrKey("a", "10.0.0.1/24"), RouteKey("0.0.0.0/0")


# -- in-sync gate ----------------------------------------------------------------------------

def test_no_writes_before_in_sync_then_full_resync() -> None:
    rec, dev, _ = make()
    dev.tamper_set(IfaceKey("stale"), Iface())             # owned leftover from a previous run
    dev.tamper_set(IfaceKey("eth0"), Iface(), owned=False)  # not ours
    stack(rec)
    report = rec.commit()
    assert report.deferred and dev.writes == [] and rec.history == []
    assert rec.state(A).state is KeyState.PENDING
    assert rec.run_due_retries().deferred and dev.writes == []
    assert rec.resync().deferred and dev.writes == []       # reads only

    rec.mark_in_sync()
    report = rec.commit()
    assert report.resync
    assert (report.created, report.deleted) == (3, 1)
    assert dev.owned_objects() == {A: Iface(), ADDR: Addr(), ROUTE: Route("a", "10.0.0.1/24")}
    assert IfaceKey("eth0") in dev.objects
    assert all(rec.state(k).state is KeyState.CONFIGURED for k in (A, ADDR, ROUTE))
    assert rec.state(IfaceKey("stale")).state is KeyState.REMOVED


def test_first_commit_after_in_sync_adopts_equivalent_without_writes() -> None:
    rec, dev, _ = make()
    for k, v in ((A, Iface()), (ADDR, Addr()), (ROUTE, Route("a", "10.0.0.1/24"))):
        dev.tamper_set(k, v)
    stack(rec)
    rec.mark_in_sync()
    report = rec.commit()
    assert dev.writes == []
    assert report.adopted == 3 and report.ops == 0
    assert rec.state(ROUTE).state is KeyState.CONFIGURED
    assert rec.metadata(A) == 0    # metadata comes from the dump


# -- dependencies ----------------------------------------------------------------------------

def test_creates_dependencies_first_whatever_the_set_order() -> None:
    rec, dev, _ = synced()
    stack(rec)
    rec.commit()
    assert ops(rec) == [("create", A), ("create", ADDR), ("create", ROUTE)]
    assert rec.metadata(A) == 1


def test_pending_until_dependency_appears() -> None:
    rec, dev, _ = synced()
    rec.set(ADDR, Addr())
    rec.set(ROUTE, Route("a", "10.0.0.1/24"))
    rec.commit()
    assert dev.writes == []
    assert rec.state(ADDR).state is KeyState.PENDING
    assert rec.stats()["pending"] == 2
    rec.set(A, Iface())
    rec.commit()
    assert ops(rec) == [("create", A), ("create", ADDR), ("create", ROUTE)]
    assert rec.stats()["configured"] == 3 and rec.stats()["pending"] == 0


def test_deleting_dependency_removes_dependents_first_and_they_come_back() -> None:
    rec, dev, _ = synced()
    stack(rec)
    rec.commit()
    n = len(rec.history)
    rec.delete(A)
    rec.commit()
    assert ops(rec, n) == [("delete", ROUTE), ("delete", ADDR), ("delete", A)]
    assert dev.owned_objects() == {}
    assert rec.state(ADDR).state is KeyState.PENDING and rec.state(A).state is KeyState.REMOVED
    assert ADDR in rec.desired() and rec.actual_snapshot() == {}
    n = len(rec.history)
    rec.set(A, Iface())
    rec.commit()
    assert ops(rec, n) == [("create", A), ("create", ADDR), ("create", ROUTE)]


def test_recreated_parent_recreates_dependents() -> None:
    rec, dev, _ = synced()
    stack(rec)
    rec.commit()
    n = len(rec.history)
    rec.set(A, Iface(kind="memif"))
    report = rec.commit()
    assert ops(rec, n) == [
        ("delete", ROUTE), ("delete", ADDR), ("delete", A),
        ("create", A), ("create", ADDR), ("create", ROUTE),
    ]
    assert report.recreated == 3
    assert dev.objects[A] == Iface(kind="memif")


def test_update_in_place_vs_recreate() -> None:
    rec, dev, _ = synced()
    stack(rec)
    rec.commit()
    n = len(rec.history)
    rec.set(A, Iface(mtu=9000))
    report = rec.commit()
    assert ops(rec, n) == [("update", A)] and report.updated == 1
    assert rec.metadata(A) == 1           # update returned None: metadata kept

    n = len(rec.history)
    rec.set(ADDR, Addr(label="x"))        # no update support: recreate, route follows
    rec.commit()
    assert ops(rec, n) == [("delete", ROUTE), ("delete", ADDR), ("create", ADDR), ("create", ROUTE)]


def test_update_that_moves_dependencies() -> None:
    rec, dev, _ = synced()
    stack(rec)
    rec.commit()
    n = len(rec.history)
    b_addr = AddrKey("b", "10.1.0.1/24")
    rec.set(IfaceKey("b"), Iface())
    rec.set(b_addr, Addr())
    rec.set(ROUTE, Route("b", "10.1.0.1/24", metric=5))
    rec.commit()
    assert ops(rec, n) == [("create", IfaceKey("b")), ("create", b_addr), ("update", ROUTE)]
    n = len(rec.history)
    rec.delete(ADDR)                      # the route no longer uses it: no route write
    rec.commit()
    assert ops(rec, n) == [("delete", ADDR)]
    assert dev.objects[ROUTE] == Route("b", "10.1.0.1/24", metric=5)


def test_value_whose_new_dependencies_are_missing_is_removed_and_pending() -> None:
    rec, dev, _ = synced()
    stack(rec)
    rec.commit()
    n = len(rec.history)
    rec.set(ROUTE, Route("b", "10.1.0.1/24"))
    rec.commit()
    assert ops(rec, n) == [("delete", ROUTE)] and rec.state(ROUTE).state is KeyState.PENDING
    rec.set(IfaceKey("b"), Iface())
    rec.set(AddrKey("b", "10.1.0.1/24"), Addr())
    rec.commit()
    assert dev.objects[ROUTE] == Route("b", "10.1.0.1/24")


def test_cycle_stays_pending() -> None:
    class Node(Descriptor):
        kind = str

        def create(self, key: Any, value: Any) -> None:
            raise AssertionError("never")

        def delete(self, key: Any, value: Any, metadata: Any) -> None:
            raise AssertionError("never")

        def dump(self) -> Mapping[Any, tuple[Any, Any]]:
            return {}

        def dependencies(self, key: Any, value: Any) -> Iterable[Hashable]:
            return [value]

    rec = Reconciler(clock=Clock())
    rec.register(Node())
    rec.set("x", "y")
    rec.set("y", "x")
    rec.mark_in_sync()
    rec.commit()
    assert rec.state("x").state is KeyState.PENDING and rec.history == []


def test_topo_order_is_deterministic_for_mixed_keys() -> None:
    nodes = [IfaceKey("b"), "s", 3, IfaceKey("a"), AddrKey("a", "1")]
    deps: dict[Hashable, list[Hashable]] = {AddrKey("a", "1"): [IfaceKey("a")]}
    out = topo_order(nodes, lambda n: deps.get(n, []))
    assert out == topo_order(list(reversed(nodes)), lambda n: deps.get(n, []))
    assert out.index(IfaceKey("a")) < out.index(AddrKey("a", "1"))
    rev = topo_order(nodes, lambda n: deps.get(n, []), dependents_first=True)
    assert rev.index(AddrKey("a", "1")) < rev.index(IfaceKey("a"))


def test_same_ops_whatever_the_insertion_order() -> None:
    def run(order: Sequence[int]) -> list[tuple[str, Hashable]]:
        rec, _, _ = synced()
        items = [(IfaceKey(n), Iface()) for n in "abc"] + [(AddrKey(n, "1"), Addr()) for n in "abc"]
        for i in order:
            rec.set(*items[i])
        rec.commit()
        return ops(rec)

    assert run(range(6)) == run([5, 3, 1, 0, 2, 4])


# -- failures and retries --------------------------------------------------------------------

def test_retry_with_exponential_backoff_and_cap() -> None:
    rec, dev, clock = synced(Backoff(base=1.0, factor=2.0, max=4.0))
    dev.inject("create", A, Boom("1"), Boom("2"), Boom("3"), Boom("4"))
    stack(rec)
    rec.commit()
    st = rec.state(A)
    assert st.state is KeyState.FAILED and st.attempts == 1 and st.next_retry_at == 1.0
    assert "Boom: 1" in (st.error or "")
    assert rec.state(ADDR).state is KeyState.PENDING and rec.next_retry_at() == 1.0

    expected = [(1.0, 3.0), (3.0, 7.0), (7.0, 11.0)]   # delays 2, 4, then capped at 4
    for due, following in expected:
        clock.now = due - 0.01
        before = len(dev.writes)
        rec.run_due_retries()
        assert len(dev.writes) == before, "retried before its time"
        clock.now = due
        rec.run_due_retries()
        assert dev.writes[-1] == ("create", A)
        assert rec.state(A).next_retry_at == following
    clock.now = 11.0
    rec.run_due_retries()
    assert rec.state(A).state is KeyState.CONFIGURED
    assert rec.state(ROUTE).state is KeyState.CONFIGURED    # dependents followed at once
    assert rec.next_retry_at() is None
    assert rec.stats()["errors"] == 4


def test_non_retriable_failure_waits_for_a_new_value() -> None:
    rec, dev, clock = synced()
    dev.inject("create", A, Fatal("bad mtu"))
    rec.set(A, Iface(mtu=1))
    rec.commit()
    st = rec.state(A)
    assert st.state is KeyState.FAILED and not st.retriable and st.next_retry_at is None
    assert rec.next_retry_at() is None
    clock.now = 1e6
    rec.run_due_retries()
    rec.set(A, Iface(mtu=1))       # same value: still failed, nothing written
    rec.commit()
    assert dev.writes == [("create", A)]
    rec.set(A, Iface(mtu=1500))
    rec.commit()
    assert rec.state(A).state is KeyState.CONFIGURED


def test_failed_update_keeps_old_object_and_dependents() -> None:
    rec, dev, clock = synced()
    stack(rec)
    rec.commit()
    dev.inject("update", A, Boom())
    rec.set(A, Iface(mtu=9000))
    report = rec.commit()
    assert report.failed == 1 and report.errors
    assert rec.state(A).state is KeyState.FAILED
    assert rec.actual_snapshot()[A] == Iface() and rec.state(ROUTE).state is KeyState.CONFIGURED
    clock.now = 1.0
    rec.run_due_retries()
    assert dev.objects[A] == Iface(mtu=9000) and rec.state(A).state is KeyState.CONFIGURED


def test_failed_recreate_of_dependency_leaves_dependents_pending() -> None:
    rec, dev, clock = synced()
    stack(rec)
    rec.commit()
    dev.inject("create", A, Boom())
    rec.set(A, Iface(kind="memif"))
    rec.commit()
    assert dev.owned_objects() == {}
    assert rec.state(A).state is KeyState.FAILED
    assert rec.state(ADDR).state is KeyState.PENDING and rec.state(ROUTE).state is KeyState.PENDING
    clock.now = 1.0
    rec.run_due_retries()
    assert set(dev.owned_objects()) == {A, ADDR, ROUTE}


def test_failed_delete_is_retried() -> None:
    rec, dev, clock = synced()
    rec.set(A, Iface())
    rec.commit()
    dev.inject("delete", A, Boom())
    rec.delete(A)
    rec.commit()
    assert rec.state(A).state is KeyState.FAILED and A in dev.objects
    rec.commit()
    assert dev.writes.count(("delete", A)) == 1       # waits for its backoff
    clock.now = 1.0
    rec.run_due_retries()
    assert A not in dev.objects and rec.state(A).state is KeyState.REMOVED


# -- resync and drift ------------------------------------------------------------------------

def test_resync_repairs_drift_and_never_touches_unowned() -> None:
    rec, dev, _ = synced()
    stack(rec)
    rec.set(IfaceKey("b"), Iface())
    rec.set(IfaceKey("c"), Iface())
    rec.commit()
    dev.tamper_set(IfaceKey("b"), Iface(mtu=1400))            # modified
    dev.tamper_remove(ADDR)                                  # missing (takes the route with it)
    dev.tamper_set(IfaceKey("x"), Iface())                   # extra, owned
    dev.tamper_set(IfaceKey("eth0"), Iface(), owned=False)   # not ours
    dev.tamper_set(AddrKey("eth0", "192.168.1.1/24"), Addr(), owned=False)
    n = len(dev.writes)

    report = rec.resync()
    assert (report.created, report.updated, report.deleted, report.adopted) == (2, 1, 1, 2)
    assert sorted(dev.writes[n:], key=repr) == sorted(
        [("create", ADDR), ("create", ROUTE), ("update", IfaceKey("b")), ("delete", IfaceKey("x"))], key=repr)
    assert dev.owned_objects() == {k: rec.desired()[k] for k in rec.desired()}
    assert dev.objects[IfaceKey("eth0")] == Iface() and AddrKey("eth0", "192.168.1.1/24") in dev.objects
    n = len(dev.writes)
    assert rec.resync().adopted == 5 and dev.writes[n:] == []


def test_dump_failure_keeps_beliefs_deletes_nothing_and_retries_the_resync() -> None:
    rec, dev, clock = make()
    stack(rec)
    working = dev.dump

    def broken(cls: type) -> dict[Hashable, tuple[Any, Any]]:
        raise Boom("api down")

    dev.tamper_set(IfaceKey("stale"), Iface())
    dev.dump = broken  # type: ignore[method-assign]
    rec.mark_in_sync()
    report = rec.commit()
    assert report.resync and any("api down" in e for e in report.errors)
    assert IfaceKey("stale") in dev.objects and rec.stats()["configured"] == 3
    assert rec.next_retry_at() == 1.0
    dev.dump = working  # type: ignore[method-assign]
    rec.commit()
    assert dev.dumps == 0                     # not owed until its backoff is over
    clock.now = 1.0
    assert rec.run_due_retries().resync
    assert IfaceKey("stale") not in dev.objects and rec.next_retry_at() is None


# -- commit mechanics ------------------------------------------------------------------------

def test_commit_is_idempotent() -> None:
    rec, dev, _ = synced()
    stack(rec)
    rec.commit()
    n = len(rec.history)
    assert rec.commit().ops == 0
    stack(rec)                     # same values again
    assert rec.commit().ops == 0 and len(rec.history) == n


def test_transaction_commits_once_or_not_at_all() -> None:
    rec, dev, _ = synced()
    with rec.transaction() as txn:
        txn.set(ROUTE, Route("a", "10.0.0.1/24"))
        txn.set(ADDR, Addr())
        txn.set(A, Iface())
        assert dev.writes == [] and rec.desired() == {}
    assert txn.report is not None and txn.report.created == 3
    assert ops(rec) == [("create", A), ("create", ADDR), ("create", ROUTE)]

    with pytest.raises(RuntimeError):
        with rec.transaction() as txn:
            txn.delete(A)
            raise RuntimeError("abandon")
    assert A in rec.desired() and A in dev.objects

    with pytest.raises(TypeError):
        with rec.transaction() as txn:
            txn.set(object(), 1)


def test_introspection_is_json_serialisable() -> None:
    rec, dev, _ = synced()
    dev.inject("create", A, Boom())
    stack(rec)
    rec.commit()
    out = rec.dump()
    json.dumps(out)
    by_key = {k["key"]: k for k in out["keys"]}
    assert by_key[repr(A)]["state"] == "failed" and by_key[repr(ADDR)]["state"] == "pending"
    stats = rec.stats()
    assert (stats["failed"], stats["pending"], stats["ops"], stats["errors"]) == (1, 2, 1, 1)
    assert rec.history[0].op == Op(OpKind.CREATE, A, Iface(), reason="missing")
    assert not rec.history[0].ok


def test_unknown_key_kind_is_rejected() -> None:
    rec, _, _ = make()
    with pytest.raises(TypeError):
        rec.set(("no", "descriptor"), 1)


# -- batching --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChainKey:
    name: str


class ChainDescriptor(Descriptor):
    """iptables-restore-like: takes many ops at once; a jump needs its target chain."""

    kind = ChainKey

    def __init__(self) -> None:
        super().__init__()
        self.chains: dict[ChainKey, tuple[str, ...]] = {}
        self.batches: list[list[tuple[str, str]]] = []
        self.fail: set[ChainKey] = set()

    def _apply(self, op: Op) -> None:
        key = op.key
        assert isinstance(key, ChainKey)
        if op.kind is OpKind.DELETE:
            del self.chains[key]
            return
        if key in self.fail:
            self.fail.discard(key)
            raise Boom(key.name)
        if any(ChainKey(j) not in self.chains for j in op.value):
            raise Missing(op.value)
        self.chains[key] = op.value

    def batch_apply(self, ops: Sequence[Op]) -> list[Any]:
        self.batches.append([(o.kind.value, getattr(o.key, "name")) for o in ops])
        out: list[Any] = []
        for op in ops:
            try:
                self._apply(op)
                out.append(None)
            except Exception as exc:
                out.append(exc)
        return out

    def create(self, key: Any, value: Any) -> None:
        self.batches.append([("create", key.name)])
        self._apply(Op(OpKind.CREATE, key, value))

    def delete(self, key: Any, value: Any, metadata: Any) -> None:
        self.batches.append([("delete", key.name)])
        self._apply(Op(OpKind.DELETE, key, value))

    def dump(self) -> Mapping[Any, tuple[Any, Any]]:
        return {k: (v, None) for k, v in self.chains.items()}

    def dependencies(self, key: Any, value: tuple[str, ...]) -> Iterable[Hashable]:
        return [ChainKey(j) for j in value]


def test_batch_apply_gets_ops_in_dependency_order() -> None:
    clock = Clock()
    rec = Reconciler(clock=clock)
    chains = ChainDescriptor()
    rec.register(chains)
    rec.mark_in_sync()
    rec.set(ChainKey("a"), ("b",))
    rec.set(ChainKey("b"), ("c",))
    rec.set(ChainKey("c"), ())
    rec.commit()
    assert chains.batches == [[("create", "c"), ("create", "b"), ("create", "a")]]

    chains.batches.clear()
    rec.delete(ChainKey("c"))
    rec.commit()
    assert chains.batches == [[("delete", "a"), ("delete", "b"), ("delete", "c")]]


def test_batch_failure_is_per_op() -> None:
    clock = Clock()
    rec = Reconciler(clock=clock)
    chains = ChainDescriptor()
    rec.register(chains)
    rec.mark_in_sync()
    chains.fail.add(ChainKey("b"))
    for name, jumps in (("a", ("b",)), ("b", ("c",)), ("c", ())):
        rec.set(ChainKey(name), jumps)
    report = rec.commit()
    assert rec.state(ChainKey("c")).state is KeyState.CONFIGURED
    assert rec.state(ChainKey("b")).state is KeyState.FAILED
    assert rec.state(ChainKey("a")).state is KeyState.FAILED    # the backend tried it and said so
    assert report.failed == 2
    clock.now = 1.0
    rec.run_due_retries()
    assert set(chains.chains) == {ChainKey("a"), ChainKey("b"), ChainKey("c")}


# -- property: any history converges to the satisfiable desired state -----------------------

NAMES = ("a", "b", "c")
CIDRS = ("10.0.0.1/24", "10.0.1.1/24")
DSTS = ("0.0.0.0/0", "10.9.0.0/16")

iface_vals = st.builds(Iface, mtu=st.sampled_from([1500, 9000]), kind=st.sampled_from(["tap", "memif"]))
addr_keys = st.builds(AddrKey, st.sampled_from(NAMES), st.sampled_from(CIDRS))
route_vals = st.builds(Route, st.sampled_from(NAMES), st.sampled_from(CIDRS), st.sampled_from([0, 5]))
any_key = st.one_of(
    st.builds(IfaceKey, st.sampled_from(NAMES)), addr_keys, st.builds(RouteKey, st.sampled_from(DSTS)))


def expected_device(desired: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
    """Desired values whose dependency chain is entirely desired."""
    out: dict[Hashable, Any] = {}
    for cls in (IfaceKey, AddrKey, RouteKey):
        for k, v in desired.items():
            if isinstance(k, cls):
                p = parent(k, v)
                if p is None or p in out:
                    out[k] = v
    return out


UNOWNED = {IfaceKey("sys0"): Iface(), AddrKey("sys0", "192.168.0.1/24"): Addr()}


class Converges(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.rec, self.dev, self.clock = make(Backoff(base=1.0, max=8.0))
        self.clean = False   # converged, and no drift or fault since: every commit must be exact
        for k, v in UNOWNED.items():
            self.dev.tamper_set(k, v, owned=False)

    @rule(name=st.sampled_from(NAMES), value=iface_vals)
    def set_iface(self, name: str, value: Iface) -> None:
        self.rec.set(IfaceKey(name), value)

    @rule(key=addr_keys, label=st.sampled_from(["", "x"]))
    def set_addr(self, key: AddrKey, label: str) -> None:
        self.rec.set(key, Addr(label))

    @rule(dst=st.sampled_from(DSTS), value=route_vals)
    def set_route(self, dst: str, value: Route) -> None:
        self.rec.set(RouteKey(dst), value)

    @rule(key=any_key)
    def delete(self, key: Hashable) -> None:
        self.rec.delete(key)

    @rule()
    def commit(self) -> None:
        self.rec.commit()
        if self.clean:
            want = expected_device(self.rec.desired())
            assert self.dev.owned_objects() == want
            assert self.rec.actual_snapshot() == want
            assert self.rec.next_retry_at() is None

    @rule()
    def mark_in_sync(self) -> None:
        self.rec.mark_in_sync()

    @rule(key=any_key, op=st.sampled_from(["create", "update", "delete"]))
    def inject_transient_fault(self, key: Hashable, op: str) -> None:
        self.dev.inject(op, key, Boom("transient"))
        self.clean = False

    @rule(dt=st.sampled_from([0.5, 2.0, 10.0]))
    def time_passes(self, dt: float) -> None:
        self.clock.now += dt
        self.rec.run_due_retries()

    @precondition(lambda self: bool(self.dev.owned))
    @rule(data=st.data())
    def drift_remove(self, data: st.DataObject) -> None:
        self.dev.tamper_remove(data.draw(st.sampled_from(sorted(self.dev.owned, key=repr))))
        self.clean = False

    @rule(name=st.sampled_from(NAMES), value=iface_vals)
    def drift_iface(self, name: str, value: Iface) -> None:
        self.dev.tamper_set(IfaceKey(name), value)         # modified or extra, owned
        self.clean = False

    @rule(key=addr_keys, label=st.sampled_from(["", "y"]))
    def drift_addr(self, key: AddrKey, label: str) -> None:
        if IfaceKey(key.iface) in self.dev.objects:
            self.dev.tamper_set(key, Addr(label))
            self.clean = False

    @rule(dst=st.sampled_from(DSTS), value=route_vals)
    def drift_route(self, dst: str, value: Route) -> None:
        if RouteKey(dst) in self.dev.objects:
            old = self.dev.objects[RouteKey(dst)]
            if (old.iface, old.cidr) != (value.iface, value.cidr):
                return   # a real route cannot silently change its address
        if AddrKey(value.iface, value.cidr) in self.dev.objects:
            self.dev.tamper_set(RouteKey(dst), value)
            self.clean = False

    @invariant()
    def nothing_written_before_in_sync(self) -> None:
        if not self.rec.in_sync:
            assert self.dev.writes == []

    @invariant()
    def unowned_untouched(self) -> None:
        for k, v in UNOWNED.items():
            assert self.dev.objects.get(k) == v

    @rule()
    def resync_converges(self) -> None:
        self.rec.mark_in_sync()
        self.rec.resync()
        for _ in range(100):
            if self.rec.next_retry_at() is None:
                break
            self.clock.now = self.rec.next_retry_at() or self.clock.now
            self.rec.run_due_retries()
        self.dev.faults.clear()
        assert self.rec.next_retry_at() is None
        want = expected_device(self.rec.desired())
        assert self.dev.owned_objects() == want
        assert self.rec.actual_snapshot() == want
        counts = Counter(self.rec.state(k).state for k in self.rec.desired())
        assert counts[KeyState.CONFIGURED] == len(want)
        assert counts[KeyState.FAILED] == 0
        n = len(self.dev.writes)
        assert self.rec.commit().ops == 0 and len(self.dev.writes) == n
        self.clean = True


TestConverges = Converges.TestCase
TestConverges.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
