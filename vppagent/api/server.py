"""The agent's gRPC server: ``vppagent.v1.Dataplane``, ``cni.CniDataplane`` and
``grpc.health.v1.Health`` on a unix socket (mode 0600) and, optionally, a TCP
port that only speaks mutual TLS.

    handle = serve(backend, socket_path="/run/vppagent/agent.sock")
    ...
    handle.stop(grace=5)

Invalid requests fail with ``INVALID_ARGUMENT`` and the ``ValidationError``
text naming the field; nothing of such a request is applied.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import grpc

from vppagent.api import gen_modules
from vppagent.api.backend import AgentBackend
from vppagent.api.cni_service import CniService
from vppagent.api.convert import (
    keys_from_proto, update_to_proto, updates_from_proto, updates_to_proto, validate_batch,
)
from vppagent.model.errors import ValidationError

log = logging.getLogger(__name__)

_g = gen_modules()
pb = _g.dataplane_pb2
pb_grpc = _g.dataplane_pb2_grpc
health_pb2 = _g.health_pb2
health_pb2_grpc = _g.health_pb2_grpc
cni_pb2_grpc = _g.cnibackend_pb2_grpc

__all__ = ["DEFAULT_SOCKET", "TLSConfig", "ServerHandle", "serve", "DataplaneService", "HealthService"]

DEFAULT_SOCKET = "/run/vppagent/agent.sock"
SERVICE_NAMES = ("", "vppagent.v1.Dataplane", "cni.CniDataplane", "grpc.health.v1.Health")
_POLL = 0.5          # seconds between liveness checks of streaming RPCs
_SYNC_BATCH = 512    # messages taken from a subscription per wake-up
_umask_lock = threading.Lock()

_COUNT_ALIASES = {"endpoints": "workload_endpoints", "ip_sets": "ipsets", "ippools": "pools"}


@dataclass(frozen=True)
class TLSConfig:
    """Mutual TLS for the TCP listener: PEM files (paths) or PEM bytes."""

    cert: str | Path | bytes          # server certificate chain
    key: str | Path | bytes           # server private key
    client_ca: str | Path | bytes     # CA that signs client certificates

    @staticmethod
    def _read(v: str | Path | bytes) -> bytes:
        return v if isinstance(v, bytes) else Path(v).read_bytes()

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self._read(self.key), self._read(self.cert))],
            root_certificates=self._read(self.client_ca),
            require_client_auth=True,
        )


# ---------------------------------------------------------------- Dataplane

_PROTO_CACHE: dict[int, tuple[Any, Any]] = {}
_PROTO_CACHE_MAX = 16384


def _update_proto(update: Any) -> Any:
    """``update_to_proto``, converted once however many streams carry the same update.

    The sync layer hands the same update object to many nodes' streams; the
    cache keeps the object itself beside its message, so an id is never
    mistaken for a later object's.
    """
    hit = _PROTO_CACHE.get(id(update))
    if hit is not None and hit[0] is update:
        return hit[1]
    msg = update_to_proto(update)
    if len(_PROTO_CACHE) >= _PROTO_CACHE_MAX:
        _PROTO_CACHE.clear()
    _PROTO_CACHE[id(update)] = (update, msg)
    return msg


class DataplaneService(pb_grpc.DataplaneServicer):
    def __init__(self, backend: AgentBackend, poll_interval: float = _POLL) -> None:
        self.backend = backend
        self.poll_interval = poll_interval

    def _check(self, updates: list, locate: Callable[[int, Any], str] | None = None) -> None:
        hub = getattr(self.backend, "hub", None)
        if hub is None:
            return
        if locate is None:
            hub.check(updates)
        else:
            with hub.locked_state() as state:
                validate_batch(updates, state, locate=locate)

    def _call(self, context: grpc.ServicerContext, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ValidationError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception as exc:  # noqa: BLE001 - reported to the client
            log.exception("%s failed", what)
            context.abort(grpc.StatusCode.INTERNAL, f"{what} failed: {exc}")

    def Apply(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            updates = updates_from_proto(request.updates)
            self._check(updates)
        except ValidationError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if updates:
            self._call(context, "apply", lambda: self.backend.apply(updates))
        return pb.ApplyReply(applied=len(updates))

    def Remove(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            keys = keys_from_proto(request.keys)
            self._check(keys, locate=lambda i, _u: f"keys[{i}]")
        except ValidationError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if keys:
            self._call(context, "remove", lambda: self.backend.remove(keys))
        return pb.RemoveReply(removed=len(keys))

    def GetStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        st = self._call(context, "status", self.backend.status)
        return status_reply(st, getattr(self.backend, "hub", None))

    def Dump(self, request: Any, context: grpc.ServicerContext) -> Any:
        desired, actual = self._call(context, "dump", self.backend.dump)
        return pb.DumpReply(desired=updates_to_proto(desired), actual_json=actual or "")

    def Sync(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        name = request.client_name or context.peer()
        subscribe_node = getattr(self.backend, "subscribe_node", None)
        if subscribe_node is not None:      # the sync layer: each node gets its own stream
            try:
                sub = subscribe_node(request.node_name, name)
            except ValidationError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            yield from self._stream(sub, context, name, request)
            return
        hub = self.backend.hub
        if request.node_name:
            try:
                node = (self.backend.status() or {}).get("node_name", "")
            except Exception:  # noqa: BLE001
                node = ""
            if node and node != request.node_name:
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"this agent serves node {node!r}, not {request.node_name!r}")
        yield from self._stream(hub.subscribe(name), context, name, request)

    def _stream(self, sub: Any, context: grpc.ServicerContext, name: str, request: Any) -> Iterator[Any]:
        context.add_callback(sub.close)
        log.info("sync stream opened by %s (node %r, last sequence %s)", name, request.node_name,
                 request.last_sequence if request.HasField("last_sequence") else "-")
        try:
            while True:
                items = sub.get_batch(_SYNC_BATCH, timeout=self.poll_interval)
                if not items:
                    if sub.closed or not context.is_active():
                        return
                    continue
                for item in items:
                    yield pb.SyncMessage(
                        sequence=item.sequence, update=_update_proto(item.update), resync=item.resync)
        finally:
            sub.close()
            log.info("sync stream of %s closed (overflows: %d)", name, sub.overflows)

    def WatchStatus(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        sub = self._call(context, "status_events", self.backend.status_events)
        context.add_callback(sub.close)
        try:
            while True:
                ev = sub.get(timeout=self.poll_interval)
                if ev is None:
                    if sub.closed or not context.is_active():
                        return
                    continue
                msg = pb.StatusEvent(component=ev.component, state=ev.state, message=ev.message)
                msg.time.FromNanoseconds(int(ev.time * 1e9))
                yield msg
        finally:
            sub.close()


def status_reply(st: dict[str, Any] | None, hub: Any = None) -> Any:
    """``AgentBackend.status()`` as a ``StatusReply`` (missing keys default)."""
    st = dict(st or {})
    counts = dict(st.get("counts") or (hub.counts() if hub is not None else {}))
    reply = pb.StatusReply(
        ready=bool(st.get("ready", False)),
        agent_state=str(st.get("agent_state", "")),
        datastore_sync_state=str(st.get("datastore_sync_state", "")),
        dataplane_type=str(st.get("dataplane_type", "")),
        dataplane_in_sync=bool(st.get("dataplane_in_sync", False)),
        errors=[str(e) for e in st.get("errors", ())],
        uptime_seconds=float(st.get("uptime_seconds", 0.0)),
        node_name=str(st.get("node_name", "")),
        version=str(st.get("version", "")),
        sequence=int(st.get("sequence", hub.sequence if hub is not None else 0)),
    )
    fields = set(pb.StatusCounts.DESCRIPTOR.fields_by_name)
    for k, v in counts.items():
        k = _COUNT_ALIASES.get(k, k)
        if k in fields:
            setattr(reply.counts, k, int(v))
    return reply


# ---------------------------------------------------------------- Health

class HealthService(health_pb2_grpc.HealthServicer):
    """``grpc.health.v1.Health``: SERVING once ``backend.status()["ready"]``."""

    def __init__(self, ready: Callable[[], bool], poll_interval: float = _POLL) -> None:
        self._ready = ready
        self.poll_interval = poll_interval
        self._override: int | None = None

    def set_not_serving(self) -> None:
        """Report NOT_SERVING from now on (shutdown in progress)."""
        self._override = health_pb2.HealthCheckResponse.NOT_SERVING

    def status(self) -> int:
        if self._override is not None:
            return self._override
        try:
            ok = bool(self._ready())
        except Exception:  # noqa: BLE001
            log.exception("readiness check failed")
            ok = False
        R = health_pb2.HealthCheckResponse
        return R.SERVING if ok else R.NOT_SERVING

    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.service not in SERVICE_NAMES:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=self.status())

    def Watch(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        R = health_pb2.HealthCheckResponse
        if request.service not in SERVICE_NAMES:
            yield R(status=R.SERVICE_UNKNOWN)
            # Keep the stream open like the reference implementation.
            while context.is_active():
                time.sleep(self.poll_interval)
            return
        last = None
        while context.is_active():
            current = self.status()
            if current != last:
                last = current
                yield R(status=current)
            time.sleep(self.poll_interval)


# ---------------------------------------------------------------- serve

@dataclass
class ServerHandle:
    server: grpc.Server
    socket_path: str | None
    tcp_port: int | None
    health: HealthService
    hub: Any = None
    _stopped: bool = field(default=False, repr=False)

    def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, end streams, stop after ``grace`` seconds; remove the socket."""
        if self._stopped:
            return
        self._stopped = True
        self.health.set_not_serving()
        self.server.stop(grace).wait()
        if self.socket_path:
            try:
                if stat.S_ISSOCK(os.lstat(self.socket_path).st_mode):
                    os.unlink(self.socket_path)
            except FileNotFoundError:
                pass

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.server.wait_for_termination(timeout)


def _prepare_socket(path: str) -> None:
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, mode=0o755, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise RuntimeError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            log.warning("probing %s: %s; removing it", path, exc)
        os.unlink(path)  # stale: nobody listens
        return
    finally:
        probe.close()
    raise RuntimeError(f"another process is already serving {path}")


def serve(
    backend: AgentBackend,
    socket_path: str | None = DEFAULT_SOCKET,
    tcp_address: str | None = None,
    tls: TLSConfig | None = None,
    *,
    max_workers: int = 32,
    max_message_bytes: int = 128 * 1024 * 1024,
    require_container_id: bool = True,
    poll_interval: float = _POLL,
    cni: bool = True,
    extra_services: Sequence[Callable[[grpc.Server], None]] = (),
) -> ServerHandle:
    """Start the gRPC server for ``backend``; returns once it accepts connections.

    ``socket_path``: unix socket (parent created, stale socket removed, mode
    0600); None to skip. ``tcp_address`` ("host:port", port 0 picks one):
    only with ``tls`` (mutual TLS, client certificates required).
    ``max_workers`` bounds concurrent RPCs; each open Sync/Watch stream holds
    one worker. ``require_container_id=False`` accepts Calico's CNI plugin,
    which sends no container id (the netns path stands in).
    """
    if tcp_address and tls is None:
        raise ValueError(
            f"refusing to listen on TCP {tcp_address} without mutual TLS: pass "
            "tls=TLSConfig(cert=..., key=..., client_ca=...) or use the unix socket only")
    if not socket_path and not tcp_address:
        raise ValueError("nothing to listen on: give socket_path and/or tcp_address")
    creds = tls.credentials() if tls is not None else None  # fail early on bad files

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc-api"),
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    health = HealthService(lambda: bool((backend.status() or {}).get("ready", False)), poll_interval)
    pb_grpc.add_DataplaneServicer_to_server(DataplaneService(backend, poll_interval), server)
    if cni:
        cni_pb2_grpc.add_CniDataplaneServicer_to_server(
            CniService(backend, require_container_id=require_container_id), server)
    for add_service in extra_services:
        add_service(server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)

    tcp_port = None
    try:
        if socket_path:
            socket_path = os.path.abspath(socket_path)
            _prepare_socket(socket_path)
            # gRPC binds the unix socket in add_insecure_port: the umask makes it
            # private from its creation (no window where others could connect),
            # the chmod pins the exact mode. 0o077 rather than 0o177 so that a
            # directory another thread creates in this instant stays usable.
            with _umask_lock:
                old = os.umask(0o077)
                try:
                    bound = server.add_insecure_port(f"unix:{socket_path}")
                finally:
                    os.umask(old)
            if not bound:
                raise RuntimeError(f"cannot listen on unix:{socket_path}")
            os.chmod(socket_path, 0o600)
        if tcp_address:
            tcp_port = server.add_secure_port(tcp_address, creds)
            if not tcp_port:
                raise RuntimeError(f"cannot listen on {tcp_address}")
        server.start()
    except BaseException:
        server.stop(None)
        raise
    log.info("gRPC API listening on %s", ", ".join(
        x for x in (f"unix:{socket_path}" if socket_path else "",
                    f"tcp:{tcp_address} (mTLS, port {tcp_port})" if tcp_address else "") if x))
    return ServerHandle(server, socket_path, tcp_port, health, getattr(backend, "hub", None))
