"""Per-node Sync streams cut from one cluster-wide calculation.

``Fanout`` folds the cluster-wide batches into one state and hands each
node's :class:`NodeView` the batch; the view's output goes into that node's
own :class:`SyncHub`, which gives every subscriber of the node a snapshot,
the in-sync marker and live updates through a bounded queue (a reader that
falls too far behind is snapshotted again instead of stalling the others).
Lock order: fanout → node hub → subscription.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from vppagent.api.sync_hub import DEFAULT_MAX_QUEUE, SubscriberInfo, Subscription, SyncHub
from vppagent.calc.node_view import NodeView
from vppagent.model.errors import ValidationError
from vppagent.model.state import DataplaneState
from vppagent.model.updates import Update


@dataclass
class NodeStream:
    view: NodeView
    hub: SyncHub


class Fanout:
    def __init__(self, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        self.max_queue = max_queue
        self._lock = threading.RLock()
        self._state = DataplaneState()
        self._nodes: dict[str, NodeStream] = {}
        self._sequence = 0

    def publish(self, updates: Sequence[Update]) -> int:
        """Fold a cluster-wide batch and pass each node its share."""
        if not updates:
            return self._sequence
        with self._lock:
            self._state.apply_all(updates)
            self._sequence += len(updates)
            for stream in self._nodes.values():
                out = stream.view.translate(updates, self._state)
                if out:
                    stream.hub.publish(out)
            return self._sequence

    def _stream(self, node: str) -> NodeStream:
        stream = self._nodes.get(node)
        if stream is None:
            view = NodeView(node)
            hub = SyncHub(max_queue=self.max_queue)
            hub.publish(view.initial(self._state))
            stream = self._nodes[node] = NodeStream(view, hub)
        return stream

    def subscribe(self, node: str, name: str = "", max_queue: int | None = None) -> Subscription:
        """A Sync subscription for ``node`` (its view is created on first use and kept)."""
        if not node:
            raise ValidationError("node_name", "the sync layer serves nodes: node_name is required")
        with self._lock:
            return self._stream(node).hub.subscribe(name or node, max_queue)

    # ---- what the gRPC server expects of a hub (status, dump) ----

    @property
    def sequence(self) -> int:
        return self._sequence

    @property
    def in_sync(self) -> bool:
        return self._state.in_sync

    def counts(self) -> dict[str, int]:
        with self._lock:
            return self._state.counts()

    @contextlib.contextmanager
    def locked_state(self) -> Iterator[DataplaneState]:
        with self._lock:
            yield self._state

    def snapshot(self) -> tuple[int, list[Update]]:
        with self._lock:
            return self._sequence, list(self._state.snapshot())

    def check(self, updates: Iterable[Update], field: str = "updates") -> None:
        raise ValidationError(field, "the sync layer computes its updates from the datastore; "
                              "change the datastore instead of calling Apply/Remove")

    def nodes(self) -> dict[str, dict[str, object]]:
        """Per node: what its view holds and who is subscribed."""
        with self._lock:
            return {
                name: {"counts": s.view.counts(), "sequence": s.hub.sequence,
                       "subscribers": [vars(i) for i in s.hub.subscribers()]}
                for name, s in sorted(self._nodes.items())
            }

    def subscribers(self) -> list[SubscriberInfo]:
        with self._lock:
            return [i for s in self._nodes.values() for i in s.hub.subscribers()]

    def close(self) -> None:
        with self._lock:
            for s in self._nodes.values():
                s.hub.close()
