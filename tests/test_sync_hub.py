"""SyncHub: snapshot + InSync + live updates, sequence numbers, bounded queues
with re-snapshot on overflow, thread safety, status events."""

from __future__ import annotations

import threading
import time

import pytest

from vppagent.api.sync_hub import StatusEventBus, SyncHub, SyncItem
from vppagent.model.errors import ValidationError
from vppagent.model.state import DataplaneState
from vppagent.model.updates import (
    ConfigUpdate, InSync, IPSetDeltaUpdate, IPSetRemove, IPSetType, IPSetUpdate, PolicyID,
    PolicyUpdate, RenderedPolicy,
)


def ipset(i: int, n: int = 1) -> IPSetUpdate:
    return IPSetUpdate(f"s{i}", IPSetType.NET, frozenset(f"10.{i % 256}.{j // 256}.{j % 256}/32" for j in range(n)))


def drain(sub, timeout: float = 0.05) -> list[SyncItem]:
    out = []
    while True:
        item = sub.get(timeout)
        if item is None:
            return out
        out.append(item)


def fold(items: list[SyncItem], state: DataplaneState | None = None) -> DataplaneState:
    state = state or DataplaneState()
    for item in items:
        if item.resync:
            state = DataplaneState()
        state.apply(item.update)
    return state


def test_snapshot_then_insync_then_live():
    hub = SyncHub()
    hub.publish([ConfigUpdate((("a", "1"),)), ipset(1), ipset(2)])
    hub.publish([InSync()])
    assert hub.sequence == 4 and hub.in_sync
    sub = hub.subscribe("t")
    items = drain(sub)
    assert [type(i.update) for i in items] == [ConfigUpdate, IPSetUpdate, IPSetUpdate, InSync]
    assert items[0].resync and not any(i.resync for i in items[1:])
    assert {i.sequence for i in items} == {4}
    hub.publish([ipset(3)])
    hub.publish([IPSetRemove("s1")])
    live = drain(sub)
    assert [(i.sequence, i.update) for i in live] == [(5, ipset(3)), (6, IPSetRemove("s1"))]
    assert not any(i.resync for i in live)


def test_insync_arrives_live_when_hub_not_yet_in_sync():
    hub = SyncHub()
    hub.publish([ipset(1)])
    sub = hub.subscribe("t")
    items = drain(sub)
    assert [i.update for i in items] == [ipset(1)]
    hub.publish([ipset(2), InSync()])
    items = drain(sub)
    assert [i.update for i in items] == [ipset(2), InSync()]
    assert [i.sequence for i in items] == [2, 3]


def test_empty_hub_marks_first_live_update_as_resync():
    hub = SyncHub()
    sub = hub.subscribe("t")
    assert sub.get(0.01) is None
    hub.publish([ipset(1)])
    item = sub.get(1)
    assert item == SyncItem(1, ipset(1), True)


def test_subscription_taken_mid_stream_sees_consistent_state():
    hub = SyncHub()
    sub_early = hub.subscribe("early")
    hub.publish([ipset(i) for i in range(5)])
    sub_late = hub.subscribe("late")
    hub.publish([IPSetRemove("s0"), InSync()])
    for sub in (sub_early, sub_late):
        state = fold(drain(sub))
        with hub.locked_state() as truth:
            assert state == truth


def test_slow_subscriber_is_resnapshotted_while_fast_one_keeps_up():
    hub = SyncHub(max_queue=10)
    slow = hub.subscribe("slow")
    fast = hub.subscribe("fast")
    fast_items = drain(fast)
    slow_items = drain(slow)
    hub.publish([InSync()])
    fast_items += drain(fast)
    slow_items += drain(slow)
    assert [(i.update, i.resync) for i in slow_items] == [(InSync(), True)]
    for i in range(50):
        hub.publish([ipset(i)])
        fast_items += drain(fast, 0)   # the fast reader keeps up
    hub.publish([IPSetRemove("s3")])
    fast_items += drain(fast, 0)
    assert slow.overflowed and slow.overflows == 1 and fast.overflows == 0
    # The fast one saw every live update in order.
    assert [i.sequence for i in fast_items] == list(range(1, 53))
    # The slow one gets a fresh snapshot marked resync, then InSync.
    slow_items += drain(slow)
    resync_at = [k for k, i in enumerate(slow_items) if i.resync]
    assert len(resync_at) == 2
    tail = slow_items[resync_at[-1]:]
    assert isinstance(tail[-1].update, InSync)
    assert all(i.sequence == 52 for i in tail)
    with hub.locked_state() as truth:
        assert fold(slow_items) == truth == fold(fast_items)
    assert {s.name: s.overflows for s in hub.subscribers()} == {"slow": 1, "fast": 0}


def test_overflowed_subscriber_does_not_buffer():
    hub = SyncHub(max_queue=3)
    sub = hub.subscribe("idle")
    drain(sub)
    hub.publish([ipset(i) for i in range(2)])
    assert sub.queued() == 2
    hub.publish([ipset(i) for i in range(2, 100)])
    assert sub.queued() == 0 and sub.overflowed


def test_close_ends_iteration_and_unsubscribes():
    hub = SyncHub()
    hub.publish([ipset(1)])
    sub = hub.subscribe("t")
    got = []

    def reader():
        for item in sub:
            got.append(item)

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.05)
    sub.close()
    t.join(2)
    assert not t.is_alive()
    assert [i.update for i in got] == [ipset(1)]
    assert hub.subscribers() == []
    assert sub.get(0) is None and sub.closed


def test_hub_close_closes_all():
    hub = SyncHub()
    subs = [hub.subscribe(f"s{i}") for i in range(3)]
    hub.close()
    assert all(s.closed for s in subs)


def test_get_timeout_returns_none():
    hub = SyncHub()
    sub = hub.subscribe("t")
    start = time.monotonic()
    assert sub.get(0.1) is None
    assert 0.08 <= time.monotonic() - start < 1


def test_publish_is_all_or_nothing():
    hub = SyncHub()
    hub.publish([ipset(1)])
    with pytest.raises(ValidationError, match=r"updates\[1\]\.ipset_delta\.id"):
        hub.publish([ipset(2), IPSetDeltaUpdate("nope", added=frozenset({"10.0.0.1/32"}))])
    assert hub.sequence == 1
    with hub.locked_state() as st:
        assert set(st.ipsets) == {"s1"}


def test_publish_validate_checks_references():
    hub = SyncHub()
    from vppagent.model.resources import Action
    from vppagent.model.updates import RenderedRule, RuleOrigin

    pol = PolicyUpdate(PolicyID("default", "p"), RenderedPolicy(inbound_rules=(
        RenderedRule(Action.ALLOW, RuleOrigin("p", 0), src_ip_set_ids=("s9",)),)))
    with pytest.raises(ValidationError, match="unknown IP set 's9'"):
        hub.publish([pol], validate=True)
    with pytest.raises(ValidationError):
        hub.check([pol])
    assert hub.sequence == 0
    hub.publish([ipset(9), pol], validate=True)
    assert hub.counts()["policies"] == 1


def test_concurrent_publishers_and_readers():
    hub = SyncHub(max_queue=50)
    stop = threading.Event()
    results: dict[str, DataplaneState] = {}
    errors: list[BaseException] = []

    def reader(name: str, delay: float) -> None:
        try:
            sub = hub.subscribe(name)
            state = DataplaneState()
            last_seq = 0
            while not (stop.is_set() and sub.queued() == 0 and not sub._needs_snapshot):
                item = sub.get(0.02)
                if item is None:
                    continue
                if item.resync:
                    state = DataplaneState()
                else:
                    assert item.sequence >= last_seq
                last_seq = item.sequence
                state.apply(item.update)
                if delay:
                    time.sleep(delay)
            results[name] = state
            sub.close()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def publisher(base: int) -> None:
        for i in range(300):
            n = base + i % 40
            hub.publish([ipset(n, 1 + i % 3)] if i % 5 else [IPSetRemove(f"s{n}")])

    readers = [threading.Thread(target=reader, args=(f"r{k}", 0.0005 * k)) for k in range(3)]
    for t in readers:
        t.start()
    pubs = [threading.Thread(target=publisher, args=(b,)) for b in (0, 1000)]
    for t in pubs:
        t.start()
    for t in pubs:
        t.join()
    hub.publish([InSync()])
    stop.set()
    for t in readers:
        t.join(20)
        assert not t.is_alive()
    assert not errors, errors
    with hub.locked_state() as truth:
        for name, state in results.items():
            assert state == truth, name


def test_status_event_bus():
    bus = StatusEventBus(max_queue=2)
    bus.publish("vpp", "starting")
    bus.publish("vpp", "running", "pid 42")
    bus.publish("datastore", "in-sync")
    sub = bus.subscribe()
    got = [sub.get(0.1), sub.get(0.1)]
    assert [(e.component, e.state) for e in got] == [("vpp", "running"), ("datastore", "in-sync")]
    assert sub.get(0.01) is None
    for k in range(5):
        bus.publish("agent", f"s{k}")
    assert [sub.get(0).state for _ in range(2)] == ["s3", "s4"]
    assert sub.dropped == 3
    sub.close()
    assert sub.closed and sub.get(0) is None
