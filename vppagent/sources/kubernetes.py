"""The Kubernetes datastore: list + watch every kind the agent needs.

One thread per kind runs the client-go "reflector" loop with the official
client: LIST, then WATCH from the list's resourceVersion (asking for
bookmarks, which keep that resourceVersion fresh on quiet kinds), re-WATCH
from the last resourceVersion when a stream ends or breaks, and only on 410
Gone LIST again. Objects go through the same converter as manifests
(``parse_object``), so the file and Kubernetes datastores cannot disagree.

The source remembers what it emitted per object, so a relist (after 410,
compaction or an outage) yields only the difference: Upsert for what changed,
Delete for what vanished, never a flush. A malformed object is reported as a
``SourceError`` and skipped; its previous good version stays in effect.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.incluster_config import (
    SERVICE_CERT_FILENAME, SERVICE_TOKEN_FILENAME, InClusterConfigLoader,
)

from vppagent.ipam.objects import BLOCK_API_VERSION, BLOCK_GROUP, BLOCK_KIND, BLOCK_PLURAL, affinity_from_object
from vppagent.manifests.loader import CALICO_API, parse_object
from vppagent.model.errors import ValidationError
from vppagent.model.resources import Resource, resource_key
from vppagent.sources.events import Delete, SourceError, SourceEvent, SourceInSync, SourceStatus, Upsert

log = logging.getLogger(__name__)

Obj = dict[str, Any]
ResourceKey = tuple[str, str]


# --------------------------------------------------------------------------- client configuration

def load_api_client(
    kubeconfig: str | Path | None = None,
    *,
    context: str | None = None,
    token_file: str | Path = SERVICE_TOKEN_FILENAME,
    ca_file: str | Path = SERVICE_CERT_FILENAME,
    environ: Mapping[str, str] | None = None,
    retries: int | None = None,
    pool_size: int | None = None,
) -> k8s.ApiClient:
    """An ``ApiClient`` from a kubeconfig file, else from the in-cluster service account.

    In-cluster needs KUBERNETES_SERVICE_HOST/PORT plus the token and CA files;
    their paths are parameters so a test (or an unusual mount) can move them.
    ``retries`` None keeps urllib3's default (3 quick retries: they absorb a pooled
    keep-alive connection the server closed meanwhile; 0 would report that as an outage).
    """
    cfg = k8s.Configuration()
    if kubeconfig is not None:
        k8s_config.load_kube_config(config_file=str(kubeconfig), context=context,
                                    client_configuration=cfg, persist_config=False)
    else:
        InClusterConfigLoader(token_filename=str(token_file), cert_filename=str(ca_file),
                              environ=os.environ if environ is None else environ).load_and_set(cfg)
    if retries is not None:
        cfg.retries = retries
    if pool_size is not None:
        cfg.connection_pool_maxsize = pool_size
    return k8s.ApiClient(cfg)


# --------------------------------------------------------------------------- watched kinds

Lister = Callable[..., Any]
Converter = Callable[[Obj, str], list[Resource]]


@dataclass(frozen=True)
class WatchedKind:
    name: str                                   # "pods", "networkpolicies.projectcalico.org"
    api_version: str
    kind: str
    lister: Callable[[k8s.ApiClient], Lister]   # the client's list-or-watch call for all namespaces
    convert: Converter


def _convert(obj: Obj, path: str) -> list[Resource]:
    return parse_object(obj, path)


def _convert_block(obj: Obj, path: str) -> list[Resource]:
    affinity = affinity_from_object(obj, path)
    return [affinity] if affinity is not None else []


def _typed(api: Callable[[k8s.ApiClient], Any], method: str) -> Callable[[k8s.ApiClient], Lister]:
    return lambda c: getattr(api(c), method)


def _custom(group: str, version: str, plural: str) -> Callable[[k8s.ApiClient], Lister]:
    return lambda c: functools.partial(k8s.CustomObjectsApi(c).list_cluster_custom_object, group, version, plural)


def _core(name: str, kind: str, method: str) -> WatchedKind:
    return WatchedKind(name, "v1", kind, _typed(k8s.CoreV1Api, method), _convert)


def _calico(plural: str, kind: str) -> WatchedKind:
    return WatchedKind(f"{plural}.projectcalico.org", CALICO_API, kind,
                       _custom("projectcalico.org", "v3", plural), _convert)


KINDS: tuple[WatchedKind, ...] = (
    _core("namespaces", "Namespace", "list_namespace"),
    _core("pods", "Pod", "list_pod_for_all_namespaces"),
    _core("serviceaccounts", "ServiceAccount", "list_service_account_for_all_namespaces"),
    _core("services", "Service", "list_service_for_all_namespaces"),
    _core("nodes", "Node", "list_node"),
    WatchedKind("networkpolicies.networking.k8s.io", "networking.k8s.io/v1", "NetworkPolicy",
                _typed(k8s.NetworkingV1Api, "list_network_policy_for_all_namespaces"), _convert),
    WatchedKind("endpointslices.discovery.k8s.io", "discovery.k8s.io/v1", "EndpointSlice",
                _typed(k8s.DiscoveryV1Api, "list_endpoint_slice_for_all_namespaces"), _convert),
    _calico("tiers", "Tier"),
    _calico("networkpolicies", "NetworkPolicy"),
    _calico("globalnetworkpolicies", "GlobalNetworkPolicy"),
    _calico("hostendpoints", "HostEndpoint"),
    _calico("ippools", "IPPool"),
    _calico("networksets", "NetworkSet"),
    _calico("globalnetworksets", "GlobalNetworkSet"),
    WatchedKind(f"{BLOCK_PLURAL}.{BLOCK_GROUP}", BLOCK_API_VERSION, BLOCK_KIND,
                _custom(BLOCK_GROUP, BLOCK_API_VERSION.split("/")[1], BLOCK_PLURAL), _convert_block),
)
KIND_NAMES: tuple[str, ...] = tuple(k.name for k in KINDS)


# --------------------------------------------------------------------------- per-kind state

class _Expired(Exception):
    """The watch's resourceVersion is older than the server's history (410 Gone): relist."""


class _WatchError(Exception):
    """The server ended a watch with an ERROR event other than 410."""


@dataclass
class _Seen:
    rv: str
    resources: dict[ResourceKey, Resource]


@dataclass
class _KindState:
    kind: WatchedKind
    list_fn: Lister
    rv: str | None = None                              # where the next watch starts; None: relist
    objects: dict[str, _Seen] = field(default_factory=dict)
    listed: bool = False
    thread: threading.Thread | None = None


def _object_key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns, name = meta.get("namespace") or "", meta.get("name") or ""
    return f"{ns}/{name}" if ns else name


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason or ''}".strip()
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        return str(exc.reason)
    return f"{type(exc).__name__}: {exc}"


# Errors that mean "the stream or the server went away", not "our bug".
_NETWORK_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError, _WatchError, ValueError)


class KubernetesSource:
    """A :class:`~vppagent.sources.base.Source` watching the Kubernetes API (and Calico's API)."""

    name = "kubernetes"

    def __init__(
        self,
        kubeconfig: str | Path | None = None,
        *,
        api_client: k8s.ApiClient | None = None,
        context: str | None = None,
        token_file: str | Path = SERVICE_TOKEN_FILENAME,
        ca_file: str | Path = SERVICE_CERT_FILENAME,
        environ: Mapping[str, str] | None = None,
        kinds: Iterable[str] | None = None,
        watch_timeout: int = 300,
        request_timeout: float = 30.0,
        backoff: tuple[float, float] = (0.2, 10.0),
    ) -> None:
        """``kubeconfig`` or (when None) in-cluster config; ``kinds`` limits what is watched
        (names from :data:`KIND_NAMES`); ``watch_timeout`` is the server-side watch timeout in
        seconds; ``backoff`` is (first, max) delay between retries while the server is away."""
        wanted = list(KIND_NAMES if kinds is None else kinds)
        unknown = set(wanted) - set(KIND_NAMES)
        if unknown:
            raise ValueError(f"unknown kinds {sorted(unknown)} (known: {', '.join(KIND_NAMES)})")
        self._own_client = api_client is None
        self._api = api_client or load_api_client(
            kubeconfig, context=context, token_file=token_file, ca_file=ca_file, environ=environ,
            pool_size=len(wanted) + 4)
        self._kinds = [_KindState(k, k.lister(self._api)) for k in KINDS if k.name in wanted]
        self._watch_timeout = max(1, int(watch_timeout))
        self._request_timeout = request_timeout
        self._backoff = backoff
        self._cond = threading.Condition()
        self._queue: list[SourceEvent] = []
        self._errors: dict[tuple[str, str], tuple[str, ValidationError]] = {}   # (kind, obj) → (rv, error)
        self._failing: dict[str, str] = {}               # kind → why its last request failed
        self._reported_down = False
        self._in_sync = False
        self._active: dict[str, Any] = {}                # kind → open watch response
        self._stop = threading.Event()
        self._started = False
        self._closed = False

    # ------------------------------------------------------------------ Source protocol

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        if not self._kinds:
            self._emit_in_sync_if_done()
        for st in self._kinds:
            st.thread = threading.Thread(target=self._run, args=(st,), name=f"k8s-watch-{st.kind.name}",
                                         daemon=True)
            st.thread.start()

    def poll(self, timeout: float) -> list[SourceEvent]:
        with self._cond:
            if not self._queue and not self._closed:
                self._cond.wait_for(lambda: bool(self._queue) or self._closed, timeout)
            out, self._queue = self._queue, []
            return out

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            active = list(self._active.values())
            self._cond.notify_all()
        for resp in active:
            _interrupt(resp)
        for st in self._kinds:
            if st.thread is not None:
                st.thread.join(timeout=5)
        if self._own_client:
            self._api.close()

    @property
    def ready(self) -> bool:
        with self._cond:
            return self._in_sync and not self._failing and not self._closed

    @property
    def errors(self) -> list[ValidationError]:
        with self._cond:
            return [err for _, err in self._errors.values()]

    # ------------------------------------------------------------------ introspection

    @property
    def resources(self) -> list[Resource]:
        """Everything currently in effect (as last emitted)."""
        with self._cond:
            # dict.copy() is atomic under the GIL; the watch threads mutate ``objects`` unlocked.
            return [r for st in self._kinds for seen in st.objects.copy().values() for r in seen.resources.values()]

    @property
    def failing(self) -> dict[str, str]:
        """Kinds whose last request failed, with why (status pages; empty when connected)."""
        with self._cond:
            return dict(self._failing)

    @property
    def resource_versions(self) -> dict[str, str | None]:
        """Per kind, the resourceVersion its next watch resumes from (tests, status)."""
        with self._cond:
            return {st.kind.name: st.rv for st in self._kinds}

    def __enter__(self) -> "KubernetesSource":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the reflector loop

    def _run(self, st: _KindState) -> None:
        delay = self._backoff[0]
        while not self._stop.is_set():
            try:
                if st.rv is None:
                    self._relist(st)
                clean = self._watch(st)
                delay = self._backoff[0]
                if not clean:        # a broken stream: reconnect soon, but never spin
                    self._stop.wait(self._backoff[0])
            except _Expired:
                log.info("kubernetes: %s watch expired (410), relisting", st.kind.name)
                self._set_rv(st, None)
            except Exception as exc:  # noqa: BLE001 - a watch thread must never die
                if self._stop.is_set():
                    break
                if isinstance(exc, ApiException) and exc.status == 410:
                    self._set_rv(st, None)
                    continue
                if not isinstance(exc, _NETWORK_ERRORS):
                    log.exception("kubernetes: %s: unexpected error", st.kind.name)
                self._failed(st, _describe(exc))
                self._stop.wait(delay)
                delay = min(delay * 2, self._backoff[1])

    def _relist(self, st: _KindState) -> None:
        resp = st.list_fn(_preload_content=False,
                          _request_timeout=(self._request_timeout, self._request_timeout))
        try:
            body = json.loads(resp.data)
        finally:
            resp.release_conn()
        self._ok(st)
        present: set[str] = set()
        events: list[SourceEvent] = []
        try:
            for item in body.get("items") or []:
                obj = self._complete(st.kind, item)
                key = _object_key(obj)
                present.add(key)
                events += self._on_object(st, key, obj)
            for key in list(st.objects.keys() - present):
                events += self._on_deleted(st, key)
        except BaseException:
            self._emit(st, events, st.rv)    # what was diffed is recorded as emitted: emit it
            raise
        with self._cond:
            for ek in [ek for ek in self._errors if ek[0] == st.kind.name and ek[1] not in present]:
                del self._errors[ek]
        rv = str((body.get("metadata") or {}).get("resourceVersion") or "")
        self._emit(st, events, rv or None, listed=True)

    def _watch(self, st: _KindState) -> bool:
        """Follow one watch stream; True when the server ended it cleanly."""
        resp = st.list_fn(watch=True, allow_watch_bookmarks=True, resource_version=st.rv,
                          timeout_seconds=self._watch_timeout, _preload_content=False,
                          _request_timeout=(self._request_timeout, self._watch_timeout + self._request_timeout))
        self._ok(st)
        with self._cond:
            if self._stop.is_set():
                resp.close()
                return True
            self._active[st.kind.name] = resp
        clean = False
        try:
            pending = b""
            for chunk in resp.stream(amt=None, decode_content=False):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                events: list[SourceEvent] = []
                rv = st.rv
                try:
                    for line in lines:
                        if line.strip():
                            rv = self._on_watch_event(st, json.loads(line), events, rv)
                finally:
                    self._emit(st, events, rv)   # even when a later line fails: never lose a diffed event
            clean = True
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if not self._stop.is_set():
                log.info("kubernetes: %s watch stream broke (%s), resuming from %s",
                         st.kind.name, _describe(exc), st.rv)
        finally:
            with self._cond:
                self._active.pop(st.kind.name, None)
            if clean:
                resp.release_conn()
            else:
                resp.close()
                resp.release_conn()
        return clean

    def _on_watch_event(self, st: _KindState, ev: Obj, events: list[SourceEvent], rv: str | None) -> str | None:
        """Apply one watch event, appending what to emit; returns the resourceVersion to resume from."""
        etype, obj = ev.get("type"), ev.get("object") or {}
        if etype == "ERROR":
            if obj.get("code") == 410:
                raise _Expired()
            raise _WatchError(f"watch ERROR {obj.get('code')}: {obj.get('message')}")
        new_rv = str((obj.get("metadata") or {}).get("resourceVersion") or "") or rv
        if etype in ("ADDED", "MODIFIED"):
            obj = self._complete(st.kind, obj)
            events += self._on_object(st, _object_key(obj), obj)
        elif etype == "DELETED":
            events += self._on_deleted(st, _object_key(obj))
        elif etype != "BOOKMARK":
            log.warning("kubernetes: %s: unknown watch event type %r", st.kind.name, etype)
        return new_rv

    # ------------------------------------------------------------------ diffing against what was emitted

    def _on_object(self, st: _KindState, key: str, obj: Obj) -> list[SourceEvent]:
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        seen = st.objects.get(key)
        if rv and seen is not None and seen.rv == rv:
            return []                                # unchanged since we emitted it (relist)
        ekey = (st.kind.name, key)
        with self._cond:
            bad = self._errors.get(ekey)
        if rv and bad is not None and bad[0] == rv:
            return []                                # the same bad version again
        label = f"{st.kind.api_version} {st.kind.kind} {key}"
        try:
            resources = st.kind.convert(obj, "")
        except ValidationError as exc:
            return self._reject(ekey, rv, exc.with_source(label))
        except Exception as exc:  # noqa: BLE001 - a converter bug must not stop the stream
            return self._reject(ekey, rv, ValidationError("", f"cannot convert: {exc}", label))
        if bad is not None:
            with self._cond:
                self._errors.pop(ekey, None)
        new = {resource_key(r): r for r in resources}
        old = seen.resources if seen is not None else {}
        st.objects[key] = _Seen(rv, new)
        events: list[SourceEvent] = [Upsert(r) for k, r in new.items() if old.get(k) != r]
        events += [Delete(*k) for k in old if k not in new]
        return events

    def _on_deleted(self, st: _KindState, key: str) -> list[SourceEvent]:
        with self._cond:
            self._errors.pop((st.kind.name, key), None)
        seen = st.objects.pop(key, None)
        return [Delete(*k) for k in seen.resources] if seen is not None else []

    def _reject(self, ekey: tuple[str, str], rv: str, err: ValidationError) -> list[SourceEvent]:
        """Record a malformed object; report it unless this exact error is already reported."""
        with self._cond:
            prev = self._errors.pop(ekey, None)
            self._errors[ekey] = (rv, err)           # re-inserted: newest last
        if prev is not None and str(prev[1]) == str(err):
            return []
        log.error("kubernetes: object rejected (previous version kept): %s", err)
        return [SourceError(err)]

    @staticmethod
    def _complete(kind: WatchedKind, item: Obj) -> Obj:
        """LIST items of built-in types carry no apiVersion/kind; the converter needs both."""
        if item.get("apiVersion") and item.get("kind"):
            return item
        return {**item, "apiVersion": kind.api_version, "kind": kind.kind}

    # ------------------------------------------------------------------ shared state

    def _emit(self, st: _KindState, events: list[SourceEvent], rv: str | None, *, listed: bool = False) -> None:
        """Queue a kind's events and advance its resourceVersion together (so a test that sees
        the new RV also sees the events); the first full listing of all kinds ends in InSync."""
        with self._cond:
            self._queue.extend(events)
            st.rv = rv
            if listed and not st.listed:
                st.listed = True
                self._emit_in_sync_if_done()
            if self._queue:
                self._cond.notify_all()

    def _emit_in_sync_if_done(self) -> None:
        with self._cond:
            if not self._in_sync and all(k.listed for k in self._kinds):
                self._in_sync = True
                self._queue.append(SourceInSync())
                self._cond.notify_all()

    def _set_rv(self, st: _KindState, rv: str | None) -> None:
        with self._cond:
            st.rv = rv

    def _ok(self, st: _KindState) -> None:
        with self._cond:
            if self._failing.pop(st.kind.name, None) is None:
                return
            if not self._failing and self._reported_down:
                self._reported_down = False
                log.warning("kubernetes: API server reachable again")
                self._queue.append(SourceStatus(True, "connected"))
                self._cond.notify_all()

    def _failed(self, st: _KindState, detail: str) -> None:
        with self._cond:
            if st.kind.name in self._failing:
                self._failing[st.kind.name] = detail
                return
            self._failing[st.kind.name] = detail
            if not self._reported_down:
                self._reported_down = True
                log.warning("kubernetes: lost the API server (%s: %s); retrying", st.kind.name, detail)
                self._queue.append(SourceStatus(False, f"{st.kind.name}: {detail}"))
                self._cond.notify_all()


def _interrupt(resp: Any) -> None:
    """Wake a thread blocked reading ``resp`` (urllib3 ≥ 2.3 can shut the socket down)."""
    try:
        resp.shutdown()
    except Exception:  # noqa: BLE001 - older urllib3 or already released
        try:
            resp.close()
        except Exception:  # noqa: BLE001
            pass
