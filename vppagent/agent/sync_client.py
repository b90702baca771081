"""A node agent's side of the sync layer: follow this node's Sync stream.

A reader thread keeps the stream open (reconnecting with backoff) and a
health thread watches whether the sync layer itself is ready (its datastore
reachable). The owner thread takes what they produce with ``poll``:

- a :class:`DataplaneState` — a complete (re-)snapshot; the owner turns it
  into the difference from what it holds, so reconnecting never flushes;
- a list of updates — live changes, in order;
- :class:`SourceStatus` — the stream or the sync layer went away / is back.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable, Union

import grpc

from vppagent.api import gen_modules
from vppagent.api.convert import update_from_proto
from vppagent.model.state import DataplaneState
from vppagent.model.updates import InSync, Update
from vppagent.sources.config import ClientTLS
from vppagent.sources.events import SourceStatus

log = logging.getLogger(__name__)

SyncItem = Union[DataplaneState, list[Update], SourceStatus]


def open_channel(address: str, tls: ClientTLS | None = None) -> grpc.Channel:
    """``unix:///path`` (or ``unix:/path``) or ``host:port`` with mutual TLS."""
    options = [("grpc.max_receive_message_length", 128 * 1024 * 1024)]
    if address.startswith("unix:"):
        return grpc.insecure_channel(address, options=options)
    if tls is None:
        raise ValueError(f"refusing plain TCP to {address}: client TLS is required")
    with open(tls.ca, "rb") as ca, open(tls.key, "rb") as key, open(tls.cert, "rb") as cert:
        creds = grpc.ssl_channel_credentials(ca.read(), key.read(), cert.read())
    return grpc.secure_channel(address, creds, options=options)


class SyncClient:
    def __init__(self, address: str, node: str, tls: ClientTLS | None = None, client_name: str = "",
                 retry: tuple[float, float] = (0.05, 2.0), health_interval: float = 0.5) -> None:
        self.address = address
        self.node = node
        self.client_name = client_name or f"vppagent@{node}"
        self.channel = open_channel(address, tls)
        self._retry = retry
        self._health_interval = health_interval
        self._queue: queue.Queue[SyncItem] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._call: Any = None
        self.connected = False          # the stream is open
        self.server_ready = False       # the sync layer reports SERVING
        self.snapshots = 0
        self.last_sequence: int | None = None
        #: Called (from the client's threads) after each item is queued: lets the owner loop wake up.
        self.on_item: Callable[[], None] = lambda: None

    @property
    def ready(self) -> bool:
        return self.connected and self.server_ready

    def start(self) -> None:
        for target, name in ((self._follow, "sync-stream"), (self._watch_health, "sync-health")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def poll(self, timeout: float) -> list[SyncItem]:
        try:
            first = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return []
        out = [first]
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        for t in self._threads:
            t.join(timeout=5)
        self.channel.close()

    # ------------------------------------------------------------ threads

    def _put(self, item: SyncItem) -> None:
        self._queue.put(item)
        self.on_item()

    def _set_connected(self, up: bool, detail: str) -> None:
        if up != self.connected:
            self.connected = up
            self._put(SourceStatus(up, detail))

    def _follow(self) -> None:
        g = gen_modules()
        stub = g.dataplane_pb2_grpc.DataplaneStub(self.channel)
        delay = self._retry[0]
        while not self._stop.is_set():
            request = g.dataplane_pb2.SyncRequest(node_name=self.node, client_name=self.client_name)
            if self.last_sequence is not None:
                request.last_sequence = self.last_sequence
            try:
                self._call = stub.Sync(request)
                self._read(self._call)
                detail = "sync stream ended"
            except grpc.RpcError as exc:
                detail = f"{exc.code().name}: {exc.details()}"
            except Exception as exc:   # noqa: BLE001 - a bad message: reconnect and resnapshot
                log.exception("sync stream from %s failed", self.address)
                detail = str(exc)
            finally:
                self._call = None
            if self._stop.is_set():
                return
            if self.connected:
                delay = self._retry[0]
            self._set_connected(False, detail)
            log.warning("sync stream from %s lost (%s); retrying in %.2fs", self.address, detail, delay)
            self._stop.wait(delay)
            delay = min(delay * 2, self._retry[1])

    def _read(self, call: Any) -> None:
        snapshot: DataplaneState | None = None
        snapshot_seq = -1
        for msg in call:
            update = update_from_proto(msg.update, "update")
            if not self.connected:
                self._set_connected(True, f"following {self.address}")
            if msg.resync:
                snapshot, snapshot_seq = DataplaneState(), msg.sequence
            if snapshot is not None:
                if msg.sequence == snapshot_seq:
                    snapshot.apply(update)
                    if isinstance(update, InSync):
                        self._snapshot_done(snapshot)
                        snapshot = None
                    self.last_sequence = msg.sequence
                    continue
                self._snapshot_done(snapshot)     # a live update ends a snapshot taken before in-sync
                snapshot = None
            self.last_sequence = msg.sequence
            self._put([update])

    def _snapshot_done(self, snapshot: DataplaneState) -> None:
        self.snapshots += 1
        self._put(snapshot)

    def _watch_health(self) -> None:
        g = gen_modules()
        stub = g.health_pb2_grpc.HealthStub(self.channel)
        serving = g.health_pb2.HealthCheckResponse.SERVING
        while not self._stop.is_set():
            try:
                ready = stub.Check(g.health_pb2.HealthCheckRequest(), timeout=2.0).status == serving
            except grpc.RpcError:
                ready = False
            if ready != self.server_ready:
                self.server_ready = ready
                self._put(SourceStatus(self.connected, "sync layer ready" if ready
                                             else "sync layer not ready (datastore unreachable?)"))
            self._stop.wait(self._health_interval)
