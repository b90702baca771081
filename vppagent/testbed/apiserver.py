"""A small in-process Kubernetes API server for tests, multi-node runs and perf.

It speaks the real wire protocol (paths, LIST with a list resourceVersion,
chunked WATCH streams with BOOKMARK and ERROR/410 events, 409 conflicts,
Status objects), so the official client and our sources run unmodified
against it, while tests steer what a real cluster does only by accident:
compaction, dropped watch streams, bookmarks and an API server outage::

    with ApiServer() as api:
        api.write_kubeconfig(tmp / "kubeconfig")
        api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
        api.compact(); api.drop_watches(); api.send_bookmarks()
        api.down(); api.up()
        assert api.count("list", "pods") == 1

One global resourceVersion counter orders every change. A bounded event
history serves watches from an older resourceVersion; one older than the
window gets an ERROR event with a 410 Status, as the real server answers.
Not implemented: label/field selectors, paging (``limit`` is ignored, which
the API allows), PATCH, subresources, generateName.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import datetime
import http.server
import json
import queue
import select
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

Obj = dict[str, Any]


@dataclass(frozen=True)
class ResourceType:
    group: str          # "" for the core API
    version: str
    plural: str
    kind: str
    namespaced: bool
    custom: bool = False  # CRD: LIST items keep apiVersion/kind (built-in types' items lack them)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource(self) -> str:
        """``pods``, ``networkpolicies.projectcalico.org``: the name used by counters."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


def _calico(plural: str, kind: str, namespaced: bool) -> ResourceType:
    return ResourceType("projectcalico.org", "v3", plural, kind, namespaced, custom=True)


RESOURCE_TYPES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "pods", "Pod", True),
    ResourceType("", "v1", "namespaces", "Namespace", False),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", True),
    ResourceType("", "v1", "services", "Service", True),
    ResourceType("", "v1", "nodes", "Node", False),
    ResourceType("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True),
    ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
    _calico("networkpolicies", "NetworkPolicy", True),
    _calico("globalnetworkpolicies", "GlobalNetworkPolicy", False),
    _calico("tiers", "Tier", False),
    _calico("hostendpoints", "HostEndpoint", False),
    _calico("ippools", "IPPool", False),
    _calico("networksets", "NetworkSet", True),
    _calico("globalnetworksets", "GlobalNetworkSet", False),
    _calico("profiles", "Profile", False),
    ResourceType("crd.projectcalico.org", "v1", "ipamblocks", "IPAMBlock", False, custom=True),
)


class ApiError(Exception):
    """A request the server refuses; becomes a ``Status`` object with this code."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message

    def status(self) -> Obj:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}


class _Unavailable(Exception):
    """The server is down (see :meth:`ApiServer.down`)."""


@dataclass(frozen=True)
class _Event:
    rv: int
    rtype: ResourceType
    namespace: str
    type: str           # ADDED | MODIFIED | DELETED
    obj: Obj


@dataclass(frozen=True)
class _Bookmark:
    rv: int


# Control messages for a watch stream (besides _Event and _Bookmark).
_END = "end"            # graceful end: terminating chunk (like a server-side timeout)
_DROP = "drop"          # abrupt close mid-stream (connection lost)


class _Watcher:
    def __init__(self, rtype: ResourceType, namespace: str | None, bookmarks: bool) -> None:
        self.rtype = rtype
        self.namespace = namespace
        self.bookmarks = bookmarks
        self.queue: queue.SimpleQueue[_Event | _Bookmark | str] = queue.SimpleQueue()

    def wants(self, ev: _Event) -> bool:
        return ev.rtype == self.rtype and (self.namespace is None or ev.namespace == self.namespace)


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiServer:
    """Kubernetes API semantics on ``127.0.0.1:<ephemeral port>``; thread-safe."""

    def __init__(self, *, port: int = 0, history: int = 10_000, tls: bool = False, token: str | None = None,
                 types: Iterable[ResourceType] = RESOURCE_TYPES) -> None:
        """``port`` 0 picks a free one (a fixed one brings a "restarted" server back where clients
        expect it); ``history`` is the event window; ``token`` makes every request need it."""
        self.history_window = history
        self.token = token
        self._lock = threading.Lock()
        self._rv = 0
        self._compacted = 0                 # watches from an RV below this get 410 Gone
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._by_kind: dict[tuple[str, str], ResourceType] = {}
        self._store: dict[ResourceType, dict[tuple[str, str], Obj]] = {}
        self._history: collections.deque[_Event] = collections.deque()
        self._watchers: set[_Watcher] = set()
        self._conns: set[socket.socket] = set()
        self._down: str | None = None
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        for t in types:
            self.register(t)
        self._tmp = Path(tempfile.mkdtemp(prefix="apiserver-"))
        self.ca_file: Path | None = None
        self._http = _HTTPServer(("127.0.0.1", port), _Handler, self)
        if tls:
            self.ca_file = self._make_cert()
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.ca_file, self._tmp / "key.pem")
            self._http.tls = ctx
        self.port: int = self._http.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="apiserver", daemon=True)
        self._closed = False
        self._thread.start()

    # ------------------------------------------------------------------ setup

    def register(self, rtype: ResourceType) -> None:
        """Serve one more resource type (e.g. a CRD a later test needs)."""
        with self._lock:
            self._types[(rtype.group, rtype.version, rtype.plural)] = rtype
            self._by_kind[(rtype.api_version, rtype.kind)] = rtype
            self._store.setdefault(rtype, {})

    def _make_cert(self) -> Path:
        """A self-signed certificate for 127.0.0.1 (it is its own CA)."""
        cert, key = self._tmp / "ca.crt", self._tmp / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert),
             "-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:TRUE"],
            check=True, capture_output=True)
        return cert

    def write_kubeconfig(self, path: str | Path, *, token: str | None = None) -> Path:
        """A kubeconfig pointing at this server (with its CA and token when set)."""
        cluster: Obj = {"server": self.url}
        if self.ca_file is not None:
            cluster["certificate-authority"] = str(self.ca_file)
        user: Obj = {}
        if token or self.token:
            user["token"] = token or self.token
        doc = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "test", "cluster": cluster}],
            "users": [{"name": "test", "user": user}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
            "current-context": "test",
        }
        out = Path(path)
        out.write_text(yaml.safe_dump(doc))
        return out

    # ------------------------------------------------------------------ test controls

    @property
    def rv(self) -> int:
        """The current (latest) resourceVersion."""
        with self._lock:
            return self._rv

    def type_of(self, api_version: str, kind: str) -> ResourceType:
        rtype = self._by_kind.get((api_version, kind))
        if rtype is None:
            raise ApiError(404, "NotFound", f"the server does not serve {kind} in {api_version}")
        return rtype

    def create(self, obj: Mapping[str, Any]) -> Obj:
        rtype = self.type_of(obj.get("apiVersion", ""), obj.get("kind", ""))
        return self._create(rtype, _key(obj)[0], obj)

    def update(self, obj: Mapping[str, Any]) -> Obj:
        """Replace; a ``metadata.resourceVersion`` in ``obj`` must match (else 409)."""
        rtype = self.type_of(obj.get("apiVersion", ""), obj.get("kind", ""))
        ns, name = _key(obj)
        return self._update(rtype, ns, name, obj)

    def apply(self, obj: Mapping[str, Any]) -> Obj:
        """Create, or unconditionally replace (test convenience)."""
        rtype = self.type_of(obj.get("apiVersion", ""), obj.get("kind", ""))
        ns, name = self._ns(rtype, _key(obj)[0]), _key(obj)[1]
        body = copy.deepcopy(dict(obj))
        body.setdefault("metadata", {}).pop("resourceVersion", None)
        with self._lock:
            exists = (ns, name) in self._store[rtype]
        return self._update(rtype, ns, name, body) if exists else self._create(rtype, ns, body)

    def delete(self, api_version: str, kind: str, name: str, namespace: str = "",
               resource_version: str | None = None) -> Obj:
        rtype = self.type_of(api_version, kind)
        return self._delete(rtype, self._ns(rtype, namespace), name, resource_version)

    def delete_object(self, obj: Mapping[str, Any]) -> Obj:
        ns, name = _key(obj)
        return self.delete(obj["apiVersion"], obj["kind"], name, ns)

    def get(self, api_version: str, kind: str, name: str, namespace: str = "") -> Obj | None:
        rtype = self.type_of(api_version, kind)
        with self._lock:
            found = self._store[rtype].get((self._ns(rtype, namespace), name))
            return copy.deepcopy(found) if found is not None else None

    def objects(self, api_version: str, kind: str) -> list[Obj]:
        rtype = self.type_of(api_version, kind)
        with self._lock:
            return [copy.deepcopy(o) for o in self._store[rtype].values()]

    def compact(self) -> None:
        """Forget the event history: a watch from any older resourceVersion now gets 410."""
        with self._lock:
            self._history.clear()
            self._compacted = self._rv

    def drop_watches(self) -> None:
        """Cut every open watch stream mid-stream (no terminating chunk), like a lost connection:
        events not yet written are lost with it, so the client must resume from its last RV."""
        with self._lock:
            for w in self._watchers:
                with contextlib.suppress(queue.Empty):
                    while True:
                        w.queue.get_nowait()
                w.queue.put(_DROP)
            self._watchers.clear()          # gone now: open_watches counts only live streams

    def end_watches(self) -> None:
        """End every open watch stream cleanly, like the server's watch timeout."""
        with self._lock:
            for w in self._watchers:
                w.queue.put(_END)
            self._watchers.clear()

    def send_bookmarks(self) -> None:
        """A BOOKMARK at the current resourceVersion to every watch that asked for bookmarks
        (the RV is fixed now: it must not pass events queued after it)."""
        with self._lock:
            for w in self._watchers:
                w.queue.put(_Bookmark(self._rv))

    def down(self, mode: str = "503") -> None:
        """Fail every request (``"503"``: Service Unavailable; ``"reset"``: close the connection
        without an answer) and cut the open watches, until :meth:`up`."""
        if mode not in ("503", "reset"):
            raise ValueError(f"unknown down mode {mode!r}")
        with self._lock:
            self._down = mode
        self.drop_watches()

    def up(self) -> None:
        with self._lock:
            self._down = None

    def count(self, verb: str, resource: str | None = None) -> int:
        """Requests served, e.g. ``count("list", "pods")``, ``count("watch")``; verbs: list, watch,
        get, create, update, delete, refused (while down), unauthorized."""
        with self._lock:
            return sum(n for (v, r), n in self.requests.items()
                       if v == verb and (resource is None or r == resource))

    @property
    def open_watches(self) -> int:
        with self._lock:
            return len(self._watchers)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._http.shutdown()
        self.drop_watches()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        self._http.server_close()
        self._thread.join(timeout=5)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "ApiServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ store (callers hold no lock)

    @staticmethod
    def _ns(rtype: ResourceType, namespace: str) -> str:
        return (namespace or "default") if rtype.namespaced else ""

    def _commit(self, rtype: ResourceType, etype: str, obj: Obj) -> Obj:
        """Bump the RV, record the event and hand it to matching watches (lock held)."""
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        key = _key(obj)
        if etype == "DELETED":
            self._store[rtype].pop(key, None)
        else:
            self._store[rtype][key] = obj
        ev = _Event(self._rv, rtype, key[0], etype, copy.deepcopy(obj))
        self._history.append(ev)
        while len(self._history) > self.history_window:
            self._compacted = self._history.popleft().rv
        for w in self._watchers:
            if w.wants(ev):
                w.queue.put(ev)
        return copy.deepcopy(obj)

    def _create(self, rtype: ResourceType, namespace: str, body: Mapping[str, Any]) -> Obj:
        obj = copy.deepcopy(dict(body))
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        ns = self._ns(rtype, namespace or meta.get("namespace", ""))
        if meta.get("namespace") and rtype.namespaced and meta["namespace"] != ns:
            raise ApiError(400, "BadRequest", "the namespace of the object does not match the request")
        if rtype.namespaced:
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        meta.pop("resourceVersion", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        with self._lock:
            if (ns, name) in self._store[rtype]:
                raise ApiError(409, "AlreadyExists", f'{rtype.resource} "{name}" already exists')
            return self._commit(rtype, "ADDED", obj)

    def _update(self, rtype: ResourceType, namespace: str, name: str, body: Mapping[str, Any]) -> Obj:
        obj = copy.deepcopy(dict(body))
        meta = obj.setdefault("metadata", {})
        ns = self._ns(rtype, namespace)
        if meta.get("name", name) != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the request")
        with self._lock:
            current = self._store[rtype].get((ns, name))
            if current is None:
                raise ApiError(404, "NotFound", f'{rtype.resource} "{name}" not found')
            want = meta.get("resourceVersion")
            if want and want != current["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict",
                               f'Operation cannot be fulfilled on {rtype.resource} "{name}": the object has '
                               "been modified; please apply your changes to the latest version and try again")
            meta["name"] = name
            if rtype.namespaced:
                meta["namespace"] = ns
            meta["uid"] = current["metadata"].get("uid")
            meta["creationTimestamp"] = current["metadata"].get("creationTimestamp")
            obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
            return self._commit(rtype, "MODIFIED", obj)

    def _delete(self, rtype: ResourceType, namespace: str, name: str, resource_version: str | None,
                uid: str | None = None) -> Obj:
        with self._lock:
            current = self._store[rtype].get((namespace, name))
            if current is None:
                raise ApiError(404, "NotFound", f'{rtype.resource} "{name}" not found')
            meta = current["metadata"]
            if (resource_version and resource_version != meta["resourceVersion"]) or (uid and uid != meta.get("uid")):
                raise ApiError(409, "Conflict",
                               f'Operation cannot be fulfilled on {rtype.resource} "{name}": '
                               "Precondition failed")
            return self._commit(rtype, "DELETED", copy.deepcopy(current))

    def _list(self, rtype: ResourceType, namespace: str | None) -> Obj:
        with self._lock:
            items = [copy.deepcopy(o) for (ns, _), o in sorted(self._store[rtype].items())
                     if namespace is None or ns == namespace]
            rv = self._rv
        if not rtype.custom:
            for item in items:
                item.pop("apiVersion", None)
                item.pop("kind", None)
        return {"apiVersion": rtype.api_version, "kind": rtype.kind + "List",
                "metadata": {"resourceVersion": str(rv)}, "items": items}

    def _open_watch(self, rtype: ResourceType, namespace: str | None, since: str | None,
                    bookmarks: bool) -> tuple[_Watcher | None, list[_Event], int]:
        """Register a watch; returns (watcher, backlog, rv) or (None, [], compacted RV) for 410."""
        with self._lock:
            if self._down is not None:      # went down after the request was read: no watch survives
                raise _Unavailable()
            if not since or since == "0":
                backlog = [_Event(int(o["metadata"]["resourceVersion"]), rtype, ns, "ADDED", copy.deepcopy(o))
                           for (ns, _), o in sorted(self._store[rtype].items())
                           if namespace is None or ns == namespace]
            else:
                try:
                    start = int(since)
                except ValueError:
                    raise ApiError(400, "BadRequest", f"invalid resourceVersion {since!r}") from None
                if start < self._compacted:
                    return None, [], self._compacted
                backlog = [ev for ev in self._history if ev.rv > start]
            watcher = _Watcher(rtype, namespace, bookmarks)
            backlog = [ev for ev in backlog if watcher.wants(ev)]
            self._watchers.add(watcher)
            return watcher, backlog, self._rv

    def _close_watch(self, watcher: _Watcher) -> None:
        with self._lock:
            self._watchers.discard(watcher)

    def _route(self, path: str) -> tuple[ResourceType, str | None, str | None]:
        """URL path → (type, namespace or None for all, name or None for the collection)."""
        segs = [urllib.parse.unquote(s) for s in path.split("/") if s]
        if len(segs) >= 2 and segs[0] == "api" and segs[1] == "v1":
            group, version, rest = "", "v1", segs[2:]
        elif len(segs) >= 3 and segs[0] == "apis":
            group, version, rest = segs[1], segs[2], segs[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource {path}")
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        rtype = self._types.get((group, version, rest[0])) if rest else None
        if rtype is None or len(rest) > 2 or (namespace is not None and not rtype.namespaced):
            raise ApiError(404, "NotFound", f"the server could not find the requested resource {path}")
        name = rest[1] if len(rest) == 2 else None
        if name is not None and rtype.namespaced and namespace is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource {path}")
        return rtype, namespace, name

    def _count(self, verb: str, resource: str) -> None:
        with self._lock:
            self.requests[(verb, resource)] += 1


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256    # the default 5 drops SYNs when a dozen watches reconnect at once (1 s stalls)

    def __init__(self, addr: tuple[str, int], handler: type, api: ApiServer) -> None:
        self.api = api
        self.tls: ssl.SSLContext | None = None
        super().__init__(addr, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, on the connection's own thread, not in the accept loop.
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return
        with self.api._lock:
            self.api._conns.add(request)
        try:
            super().finish_request(request, client_address)
        finally:
            with self.api._lock:
                self.api._conns.discard(request)
            if self.tls is not None:
                with contextlib.suppress(OSError):
                    request.close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True     # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests assert on counters
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    # -------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        api = self.server.api
        body = self._body()
        if api._down is not None:
            self._refuse()
            return
        if api.token is not None:
            scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or token.strip() != api.token:
                api._count("unauthorized", "")
                self._send(401, ApiError(401, "Unauthorized", "Unauthorized").status())
                return
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        try:
            rtype, namespace, name = api._route(url.path)
            if method == "GET" and name is None and query.get("watch") in ("true", "1"):
                self._watch(rtype, namespace, query)
                return
            status, obj = self._serve(method, rtype, namespace, name, body)
        except _Unavailable:
            self._refuse()
            return
        except ApiError as exc:
            status, obj = exc.code, exc.status()
        except (ValueError, TypeError) as exc:
            status, obj = 400, ApiError(400, "BadRequest", str(exc)).status()
        self._send(status, obj)

    def _serve(self, method: str, rtype: ResourceType, namespace: str | None, name: str | None,
               body: Any) -> tuple[int, Obj]:
        api = self.server.api
        if method == "GET" and name is None:
            api._count("list", rtype.resource)
            return 200, api._list(rtype, namespace)
        if method == "GET":
            api._count("get", rtype.resource)
            found = api.get(rtype.api_version, rtype.kind, name or "", namespace or "")
            if found is None:
                raise ApiError(404, "NotFound", f'{rtype.resource} "{name}" not found')
            return 200, found
        if not isinstance(body, dict) and method in ("POST", "PUT"):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        if method == "POST" and name is None and (namespace is not None or not rtype.namespaced):
            api._count("create", rtype.resource)
            return 201, api._create(rtype, namespace or "", body)
        if method == "PUT" and name is not None:
            api._count("update", rtype.resource)
            return 200, api._update(rtype, namespace or "", name, body)
        if method == "DELETE" and name is not None:
            api._count("delete", rtype.resource)
            pre = (body.get("preconditions") if isinstance(body, dict) else None) or {}
            api._delete(rtype, namespace or "", name, pre.get("resourceVersion"), pre.get("uid"))
            return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                         "details": {"name": name, "kind": rtype.plural}}
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")

    def _watch(self, rtype: ResourceType, namespace: str | None, query: dict[str, str]) -> None:
        api = self.server.api
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        watcher, backlog, rv = api._open_watch(rtype, namespace, query.get("resourceVersion"), bookmarks)
        api._count("watch", rtype.resource)
        self.close_connection = True
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")       # the stream's end closes the connection
            self.end_headers()
            if watcher is None:                           # like the real server: 200, then an ERROR event
                gone = ApiError(410, "Expired", f"too old resource version: {query.get('resourceVersion')} ({rv})")
                self._chunk({"type": "ERROR", "object": gone.status()})
                self._chunk(None)
                return
            for ev in backlog:
                self._chunk({"type": ev.type, "object": ev.obj})
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self._chunk(None)
                    return
                try:
                    item = watcher.queue.get(timeout=min(left, 0.2) if left is not None else 0.2)
                except queue.Empty:
                    if self._client_gone():
                        return
                    continue
                if isinstance(item, _Event):
                    self._chunk({"type": item.type, "object": item.obj})
                elif isinstance(item, _Bookmark):
                    if watcher.bookmarks:
                        self._chunk({"type": "BOOKMARK", "object": {
                            "kind": rtype.kind, "apiVersion": rtype.api_version,
                            "metadata": {"resourceVersion": str(item.rv)}}})
                elif item == _END:
                    self._chunk(None)
                    return
                elif item == _DROP:
                    self._abort()
                    return
        except OSError:
            pass                                          # the client went away
        finally:
            if watcher is not None:
                api._close_watch(watcher)

    # -------------------------------------------------------------------

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return None
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    def _send(self, status: int, obj: Obj) -> None:
        data = json.dumps(obj).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def _chunk(self, event: Obj | None) -> None:
        """One watch event as one HTTP chunk; None writes the terminating chunk."""
        if event is None:
            self.wfile.write(b"0\r\n\r\n")
        else:
            data = json.dumps(event).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _refuse(self) -> None:
        self.server.api._count("refused", "")
        if self.server.api._down == "reset":
            self._abort()
        else:
            self._send(503, ApiError(503, "ServiceUnavailable", "the server is currently unable to handle "
                                                                "the request").status())

    def _client_gone(self) -> bool:
        """A watch client sends nothing after its request: readable means it closed (or broke)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def _abort(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class KubernetesDatastore:
    """The testbed's ``DatastoreWriter`` on an :class:`ApiServer`: named groups of objects."""

    def __init__(self, server: ApiServer) -> None:
        self.server = server
        self._groups: dict[str, list[Obj]] = {}

    def write(self, name: str, docs: Iterable[Mapping[str, Any]] | str) -> None:
        objs = [dict(d) for d in (yaml.safe_load_all(docs) if isinstance(docs, str) else docs) if d]
        new_keys = {(o["apiVersion"], o["kind"], *_key(o)) for o in objs}
        for old in self._groups.get(name, []):
            if (old["apiVersion"], old["kind"], *_key(old)) not in new_keys:
                with contextlib.suppress(ApiError):
                    self.server.delete_object(old)
        for obj in objs:
            self.server.apply(obj)
        self._groups[name] = objs

    def remove(self, name: str) -> None:
        for obj in self._groups.pop(name, []):
            with contextlib.suppress(ApiError):
                self.server.delete_object(obj)
