"""Fan-out of the dataplane-neutral update stream to Sync subscribers.

``SyncHub`` holds the folded :class:`DataplaneState` and a sequence number.
``publish`` applies updates to the state and hands them to every
subscriber. A subscriber first gets a snapshot of the state (then ``InSync``
if the hub has seen it), then live updates. Each subscriber has a bounded
queue: one that falls behind by more than ``max_queue`` updates is not
waited for; its queue is dropped and it gets a fresh snapshot (marked
``resync``) the next time it reads. So a slow client never stalls the
publisher or other clients.

Locking: the hub lock protects state, sequence and the subscriber set;
each subscription has its own condition. Lock order is hub -> subscription.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

from vppagent.api.backend import StatusEvent
from vppagent.model.errors import ValidationError
from vppagent.model.state import DataplaneState
from vppagent.model.updates import InSync, IPSetDeltaUpdate, IPSetRemove, IPSetUpdate, Update

__all__ = [
    "DEFAULT_MAX_QUEUE", "SyncItem", "Subscription", "SyncHub", "SubscriberInfo",
    "StatusEventBus", "EventSubscriptionImpl",
]

DEFAULT_MAX_QUEUE = 10_000


@dataclass(frozen=True)
class SyncItem:
    """One message of a Sync stream."""

    sequence: int
    update: Update
    #: First item of a (re-)snapshot: the reader must forget what it holds.
    resync: bool = False


@dataclass(frozen=True)
class SubscriberInfo:
    name: str
    queued: int
    overflows: int
    delivered: int


class Subscription:
    """A reader's view of the hub: snapshot, InSync, then live updates.

    ``get(timeout)`` returns the next :class:`SyncItem`, or None on timeout or
    once closed (check :attr:`closed`). Iterating yields items until closed.
    Only one thread should read a subscription; ``close`` may come from any.
    """

    def __init__(self, hub: "SyncHub", name: str, max_queue: int) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.name = name
        self.max_queue = max_queue
        self._hub = hub
        self._cond = threading.Condition(threading.Lock())
        self._snapshot: collections.deque[SyncItem] = collections.deque()
        self._live: collections.deque[SyncItem] = collections.deque()
        self._needs_snapshot = True
        self._resync_pending = False
        self._closed = False
        self.overflows = 0
        self.delivered = 0

    # ------------------------------------------------------------ hub side (hub lock held)

    def _offer(self, items: Sequence[SyncItem]) -> None:
        with self._cond:
            if self._closed or self._needs_snapshot:
                return  # the snapshot taken at the next read includes these
            if len(self._live) + len(items) > self.max_queue:
                self._live.clear()
                self._snapshot.clear()
                self._needs_snapshot = True
                self.overflows += 1
            else:
                self._live.extend(items)
            self._cond.notify_all()

    def _take_snapshot(self, sequence: int, updates: list[Update]) -> None:
        with self._cond:
            if not self._needs_snapshot:
                return
            self._snapshot = collections.deque(SyncItem(sequence, u) for u in updates)
            self._live.clear()
            self._needs_snapshot = False
            self._resync_pending = True

    # ------------------------------------------------------------ reader side

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def overflowed(self) -> bool:
        """True while a re-snapshot is pending because the reader fell behind."""
        return self._needs_snapshot and self.overflows > 0

    def queued(self) -> int:
        with self._cond:
            return len(self._snapshot) + len(self._live)

    def get(self, timeout: float | None = None) -> SyncItem | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return None
                    if self._needs_snapshot:
                        break
                    queue = self._snapshot or self._live
                    if queue:
                        item = queue.popleft()
                        self.delivered += 1
                        if self._resync_pending:
                            self._resync_pending = False
                            item = SyncItem(item.sequence, item.update, True)
                        return item
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return None
                    self._cond.wait(remaining)
            # Outside our own lock: respect the hub -> subscription lock order.
            self._hub._snapshot_into(self)

    def get_batch(self, max_items: int, timeout: float | None = None) -> list[SyncItem]:
        """Up to ``max_items`` items: waits (up to ``timeout``) for the first only."""
        first = self.get(timeout)
        if first is None:
            return []
        out = [first]
        while len(out) < max_items:
            item = self.get(0)
            if item is None:
                break
            out.append(item)
        return out

    def __iter__(self) -> Iterator[SyncItem]:
        while True:
            item = self.get()
            if item is None:
                return
            yield item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._snapshot.clear()
            self._live.clear()
            self._cond.notify_all()
        self._hub._unsubscribe(self)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def info(self) -> SubscriberInfo:
        return SubscriberInfo(self.name, self.queued(), self.overflows, self.delivered)


class SyncHub:
    """The state behind the Sync RPC and its subscribers."""

    def __init__(self, state: DataplaneState | None = None, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        self._lock = threading.RLock()
        self._state = state if state is not None else DataplaneState()
        self._sequence = 0
        self._subs: set[Subscription] = set()
        self.max_queue = max_queue

    # ------------------------------------------------------------ publishing

    def publish(self, updates: Iterable[Update], validate: bool = False) -> int:
        """Apply ``updates`` to the state, fan them out; return the last sequence number.

        All or nothing: an IP set delta for an unknown set (or, with
        ``validate=True``, any reference error found by
        ``convert.validate_batch``) raises before anything changes.
        """
        updates = list(updates)
        with self._lock:
            if validate:
                from vppagent.api.convert import validate_batch

                validate_batch(updates, self._state)
            else:
                self._check_deltas(updates)
            items = []
            for u in updates:
                self._state.apply(u)
                self._sequence += 1
                items.append(SyncItem(self._sequence, u))
            if items:
                for sub in list(self._subs):
                    sub._offer(items)
            return self._sequence

    def check(self, updates: Sequence[Update], field: str = "updates") -> None:
        """Raise ValidationError if ``updates`` would not apply cleanly to the current state."""
        from vppagent.api.convert import validate_batch

        with self._lock:
            validate_batch(updates, self._state, field)

    def _check_deltas(self, updates: Sequence[Update]) -> None:
        known: set[str] | None = None
        for i, u in enumerate(updates):
            if isinstance(u, (IPSetUpdate, IPSetRemove, IPSetDeltaUpdate)):
                if known is None:
                    known = set(self._state.ipsets)
                if isinstance(u, IPSetUpdate):
                    known.add(u.id)
                elif isinstance(u, IPSetRemove):
                    known.discard(u.id)
                elif u.id not in known:
                    raise ValidationError(f"updates[{i}].ipset_delta.id", f"unknown IP set {u.id!r}")

    # ------------------------------------------------------------ subscribing

    def subscribe(self, name: str = "", max_queue: int | None = None) -> Subscription:
        sub = Subscription(self, name, max_queue or self.max_queue)
        with self._lock:
            self._subs.add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    def _snapshot_into(self, sub: Subscription) -> None:
        with self._lock:
            if sub.closed:
                return
            updates = list(self._state.snapshot())
            if self._state.in_sync:
                updates.append(InSync())
            sub._take_snapshot(self._sequence, updates)

    def close(self) -> None:
        """Close every subscription (their readers see the end of the stream)."""
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.close()

    # ------------------------------------------------------------ reading

    @property
    def sequence(self) -> int:
        return self._sequence

    @property
    def in_sync(self) -> bool:
        return self._state.in_sync

    def snapshot(self) -> tuple[int, list[Update]]:
        """(sequence, the state as updates in Felix order, plus InSync if in sync)."""
        with self._lock:
            updates = list(self._state.snapshot())
            if self._state.in_sync:
                updates.append(InSync())
            return self._sequence, updates

    @contextlib.contextmanager
    def locked_state(self) -> Iterator[DataplaneState]:
        """Read the state consistently; do not modify it, do not block long."""
        with self._lock:
            yield self._state

    def counts(self) -> dict[str, int]:
        with self._lock:
            return self._state.counts()

    def subscribers(self) -> list[SubscriberInfo]:
        with self._lock:
            subs = list(self._subs)
        return sorted((s.info() for s in subs), key=lambda i: i.name)


# ---------------------------------------------------------------- status events

class EventSubscriptionImpl:
    """A bounded queue of status events; drops the oldest when full."""

    def __init__(self, bus: "StatusEventBus", max_queue: int) -> None:
        self._bus = bus
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[StatusEvent] = collections.deque(maxlen=max_queue)
        self._closed = False
        self.dropped = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def _offer(self, event: StatusEvent) -> None:
        with self._cond:
            if self._closed:
                return
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
            self._queue.append(event)
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> StatusEvent | None:
        with self._cond:
            if not self._queue and not self._closed:
                self._cond.wait_for(lambda: self._queue or self._closed, timeout)
            if self._closed or not self._queue:
                return None
            return self._queue.popleft()

    def __iter__(self) -> Iterator[StatusEvent]:
        while True:
            event = self.get()
            if event is None:
                return
            yield event

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
        self._bus._unsubscribe(self)


class StatusEventBus:
    """Publish component status changes; ``subscribe()`` backs ``AgentBackend.status_events``.

    A new subscriber first receives the latest event of every component, so a
    watcher always starts from the current picture.
    """

    def __init__(self, max_queue: int = 1000) -> None:
        self._lock = threading.Lock()
        self._subs: set[EventSubscriptionImpl] = set()
        self._latest: dict[str, StatusEvent] = {}
        self.max_queue = max_queue

    def publish(self, component: str, state: str, message: str = "", when: float | None = None) -> StatusEvent:
        event = StatusEvent(time.time() if when is None else when, component, state, message)
        with self._lock:
            self._latest[component] = event
            subs = list(self._subs)
        for sub in subs:
            sub._offer(event)
        return event

    def subscribe(self) -> EventSubscriptionImpl:
        sub = EventSubscriptionImpl(self, self.max_queue)
        with self._lock:
            for event in sorted(self._latest.values(), key=lambda e: e.time):
                sub._offer(event)
            self._subs.add(sub)
        return sub

    def latest(self) -> dict[str, StatusEvent]:
        with self._lock:
            return dict(self._latest)

    def _unsubscribe(self, sub: EventSubscriptionImpl) -> None:
        with self._lock:
            self._subs.discard(sub)

    def close(self) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.close()
