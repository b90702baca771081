"""The etcd datastore: Calico's etcd mode, listed once and then watched.

Key layout (``root`` defaults to ``/calico``; every value is JSON):

- Calico resources, the full ``projectcalico.org/v3`` object (apiVersion,
  kind, metadata, spec)::

      <root>/resources/v3/projectcalico.org/<plural>/[<namespace>/]<name>
      plural: networkpolicies globalnetworkpolicies tiers hostendpoints ippools
              networksets globalnetworksets profiles workloadendpoints

- Kubernetes objects, as the Kubernetes API would return them::

      <root>/resources/v3/k8s/<plural>/[<namespace>/]<name>
      plural: pods namespaces serviceaccounts services endpointslices nodes networkpolicies

- IPAM blocks, the ``IPAMBlock`` object of ``vppagent.ipam.objects.block_to_object``
  (emitted as ``BlockAffinity``)::

      <root>/ipam/v2/assignment/ipv4/block/<cidr, '/' replaced by '-'>   (ipv6 likewise)

Other keys in between (Calico kinds we do not use, IPAM handles) are ignored.

One watcher thread lists everything at one revision (paginated), emits it
and ``SourceInSync``, then watches from that revision + 1. Whatever breaks
the watch, nothing is lost and nothing is flushed: a dropped stream resumes
at the last revision seen + 1; a compacted start revision or a reconnection
after an outage relists and emits only what differs from what was emitted
before (values are compared by digest, resources by equality). A malformed
value is reported as ``SourceError`` (naming key and field) and skipped;
the key's last good version stays in effect until a good one replaces it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import queue
import threading
from typing import Any, Callable, Mapping, Sequence

from vppagent.ipam.blocks import IPNetwork
from vppagent.ipam.objects import affinity_from_object
from vppagent.manifests.loader import CALICO_API, parse_object
from vppagent.model.errors import ValidationError
from vppagent.model.resources import Resource, resource_key
from vppagent.sources.etcd_client import (
    EtcdClient, EtcdCompactedError, EtcdConnectionError, EtcdError, KeyValue, Watch, WatchResponse, prefix_end,
)
from vppagent.sources.events import Delete, SourceError, SourceEvent, SourceInSync, SourceStatus, Upsert

log = logging.getLogger(__name__)

DEFAULT_ROOT = "/calico"

CALICO_PLURALS: dict[str, str] = {
    "networkpolicies": "NetworkPolicy",
    "globalnetworkpolicies": "GlobalNetworkPolicy",
    "tiers": "Tier",
    "hostendpoints": "HostEndpoint",
    "ippools": "IPPool",
    "networksets": "NetworkSet",
    "globalnetworksets": "GlobalNetworkSet",
    "profiles": "Profile",
    "workloadendpoints": "WorkloadEndpoint",
}
K8S_PLURALS: dict[str, tuple[str, str]] = {
    "pods": ("v1", "Pod"),
    "namespaces": ("v1", "Namespace"),
    "serviceaccounts": ("v1", "ServiceAccount"),
    "services": ("v1", "Service"),
    "endpointslices": ("discovery.k8s.io/v1", "EndpointSlice"),
    "nodes": ("v1", "Node"),
    "networkpolicies": ("networking.k8s.io/v1", "NetworkPolicy"),
}


# ---------------------------------------------------------------------- layout


def calico_prefix(root: str = DEFAULT_ROOT) -> str:
    return f"{root}/resources/v3/projectcalico.org/"


def k8s_prefix(root: str = DEFAULT_ROOT) -> str:
    return f"{root}/resources/v3/k8s/"


def blocks_prefix(root: str = DEFAULT_ROOT) -> str:
    return f"{root}/ipam/v2/assignment/"


def block_key(cidr: IPNetwork | str, root: str = DEFAULT_ROOT) -> str:
    """Where a block lives: ``/calico/ipam/v2/assignment/ipv4/block/10.65.0.0-26``."""
    net = ipaddress.ip_network(cidr)
    return f"{blocks_prefix(root)}ipv{net.version}/block/{str(net).replace('/', '-')}"


def object_key(obj: Mapping[str, Any], root: str = DEFAULT_ROOT) -> str:
    """The key an object is stored under (writers and tests use this, the source reads it)."""
    api, kind = obj.get("apiVersion"), obj.get("kind")
    meta = obj.get("metadata") or {}
    if kind == "IPAMBlock":
        return block_key(obj["spec"]["cidr"], root)
    if api == CALICO_API:
        plural = next((p for p, k in CALICO_PLURALS.items() if k == kind), None)
        base = calico_prefix(root)
    else:
        plural = next((p for p, ak in K8S_PLURALS.items() if ak == (api, kind)), None)
        base = k8s_prefix(root)
    if plural is None:
        raise ValueError(f"no etcd key for {api} {kind}")
    ns = meta.get("namespace")
    return f"{base}{plural}/{ns + '/' if ns else ''}{meta['name']}"


def etcd_client(client: EtcdClient | None, endpoints: str | Sequence[str] | None) -> EtcdClient:
    """``client``, or a new one for ``endpoints`` (exactly one must be given)."""
    if (client is None) == (endpoints is None):
        raise ValueError("give either an EtcdClient or the etcd endpoints")
    if client is not None:
        return client
    assert endpoints is not None
    return EtcdClient(endpoints)


Parser = Callable[[Mapping[str, Any]], list[Resource]]


def _expect(api: str, kind: str) -> Parser:
    """parse_object, after checking the object is of the kind its key promises."""
    def parse(obj: Mapping[str, Any]) -> list[Resource]:
        if obj.get("kind") != kind or obj.get("apiVersion") != api:
            raise ValidationError("kind", f"{obj.get('apiVersion')} {obj.get('kind')} stored under the key of"
                                  f" a {api} {kind}")
        return parse_object(obj)
    return parse


def _parse_block(obj: Mapping[str, Any]) -> list[Resource]:
    affinity = affinity_from_object(obj)
    return [affinity] if affinity is not None else []


class _Layout:
    """Which keys the source reads, and how each is parsed."""

    def __init__(self, root: str) -> None:
        self.calico, self.k8s, self.blocks = calico_prefix(root), k8s_prefix(root), blocks_prefix(root)
        # One range covers all three prefixes (they sort together under <root>/), so a single
        # list and a single watch serve everything; keys in between are filtered out.
        self.start = min(self.calico, self.k8s, self.blocks)
        self.end = max(prefix_end(self.calico), prefix_end(self.k8s), prefix_end(self.blocks))

    def parser(self, key: str) -> Parser | None:
        if key.startswith(self.calico):
            kind = CALICO_PLURALS.get(key[len(self.calico):].split("/", 1)[0])
            return _expect(CALICO_API, kind) if kind else None
        if key.startswith(self.k8s):
            found = K8S_PLURALS.get(key[len(self.k8s):].split("/", 1)[0])
            return _expect(*found) if found else None
        if key.startswith(self.blocks) and key[len(self.blocks):].split("/")[1:2] == ["block"]:
            return _parse_block
        return None


def _decode(key: str, value: bytes, parser: Parser) -> list[Resource]:
    """The resources one stored value holds; ValidationError names the key and field."""
    try:
        obj = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValidationError("", f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", key) from None
    except ValueError as exc:          # not UTF-8 at all
        raise ValidationError("", f"invalid JSON: {exc}", key) from None
    if not isinstance(obj, Mapping):
        raise ValidationError("", f"expected a JSON object, got {type(obj).__name__}", key)
    try:
        return parser(obj)
    except ValidationError as exc:
        raise exc.with_source(key) from None
    except Exception as exc:      # a parser bug must cost one object, not the whole stream
        log.exception("etcd: parsing %s failed", key)
        raise ValidationError("", f"cannot be parsed: {type(exc).__name__}: {exc}", key) from None


# ---------------------------------------------------------------------- source


class EtcdSource:
    """A :class:`~vppagent.sources.base.Source` over an etcd cluster in the layout above.

    Give a ``client`` or the cluster's ``endpoints`` (client URLs).
    ``backoff`` is (first, max) seconds between reconnection attempts;
    ``keepalive`` is how long a silent watch may stay silent before etcd is
    probed (a hung etcd or a dead network never resets the connection).
    """

    name = "etcd"

    def __init__(self, client: EtcdClient | None = None, *, endpoints: str | Sequence[str] | None = None,
                 root: str = DEFAULT_ROOT, page_size: int = 500, backoff: tuple[float, float] = (0.2, 5.0),
                 keepalive: float = 10.0) -> None:
        self.client = etcd_client(client, endpoints)
        self.layout = _Layout(root.rstrip("/"))
        self.page_size = page_size
        self.backoff = backoff
        self.keepalive = keepalive
        self.revision = 0            # every change up to here has been turned into events
        self.relists = 0             # relists after the first listing (compaction, outage)
        self.failures = 0            # failed attempts to reach etcd
        self._queue: queue.Queue[list[SourceEvent]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._released = threading.Event()
        self._released.set()
        self._lock = threading.Lock()
        self._parked = threading.Event()     # the watcher is holding, off etcd
        self._watch: Watch | None = None
        self._interrupt_pending = False
        # Owned by the watcher thread:
        self._digests: dict[str, bytes] = {}                          # key → digest of its value
        self._by_key: dict[str, dict[tuple[str, str], Resource]] = {}  # key → its last good resources
        self._owners: dict[tuple[str, str], list[str]] = {}           # resource → keys holding it
        self._emitted: dict[tuple[str, str], Resource] = {}
        self._rejected: dict[str, ValidationError] = {}                # guarded by _lock for readers
        self._connected: bool | None = None                           # None: never tried yet
        self._synced = False
        self._need_list = True

    # -- Source protocol -------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="etcd-source", daemon=True)
            self._thread.start()

    def poll(self, timeout: float) -> list[SourceEvent]:
        try:
            out = list(self._queue.get(timeout=max(timeout, 0)))
        except queue.Empty:
            return []
        while True:
            try:
                out += self._queue.get_nowait()
            except queue.Empty:
                return out

    def close(self) -> None:
        self._stop.set()
        self._released.set()
        self._interrupt()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.client.timeout + 1)
        self.client.close()

    @property
    def ready(self) -> bool:
        return bool(self._connected) and self._synced

    @property
    def errors(self) -> list[ValidationError]:
        with self._lock:
            return list(self._rejected.values())

    @property
    def resources(self) -> list[Resource]:
        """What the source has emitted and not deleted (a snapshot; for status pages and tests)."""
        with self._lock:
            return list(self._emitted.values())

    # -- test and operations hooks ---------------------------------------------

    def interrupt_watch(self, hold: bool = False) -> None:
        """Cut the current watch stream, as a network blip would.

        With ``hold`` the watcher stays off etcd until ``release_watch()``,
        so a test can change (or compact) the store while it is behind;
        then this returns once the watcher has stopped reading etcd.
        """
        if hold:
            self._released.clear()
        self._interrupt()
        if hold and self._thread is not None and self._thread.is_alive():
            if not self._parked.wait(self.client.timeout + self.backoff[1] + 1):
                raise TimeoutError("the etcd watcher did not stop in time")

    def release_watch(self) -> None:
        self._released.set()

    def _interrupt(self) -> None:
        with self._lock:
            self._interrupt_pending = True
            if self._watch is not None:
                self._watch.interrupt()

    # -- watcher thread ----------------------------------------------------------

    def _run(self) -> None:
        delay = self.backoff[0]
        while not self._stop.is_set():
            if not self._released.is_set():
                self._parked.set()
                self._released.wait()
                self._parked.clear()
                continue
            try:
                if self._need_list:
                    self._relist()
                watch = self._open_watch()
                delay = self.backoff[0]
                self._follow(watch)
            except EtcdCompactedError as exc:
                log.info("etcd: %s; relisting", exc)
                self._need_list = True
            except EtcdError as exc:
                if self._stop.is_set():
                    break
                self._lost(str(exc))
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])
            except Exception:                  # a bug: keep the agent's datastore alive, but loudly
                log.exception("etcd source: unexpected error; relisting")
                self._need_list = True
                self._stop.wait(delay)

    def _open_watch(self) -> Watch:
        watch = self.client.watch(self.layout.start, self.layout.end, start_revision=self.revision + 1)
        with self._lock:
            self._watch = watch
            if self._interrupt_pending:          # asked for while the watch was being set up
                watch.interrupt()
        return watch

    def _follow(self, watch: Watch) -> None:
        """Apply the watch's responses until it ends; a cut stream just returns (resume)."""
        try:
            while not self._stop.is_set():
                try:
                    resp = watch.next(self.keepalive)
                except EtcdConnectionError as exc:
                    if self._stop.is_set():
                        return
                    log.info("etcd: watch ended (%s); resuming at revision %d", exc, self.revision + 1)
                    return
                if resp is None:
                    self.client.status()        # silent for a while: is etcd still there? raises if not
                    continue
                self._apply(resp)
        finally:
            with self._lock:
                self._watch = None
                self._interrupt_pending = False
            watch.close()

    def _lost(self, detail: str) -> None:
        self._need_list = True              # etcd may come back restored from a backup: compare all
        self.failures += 1
        if self._connected is not False:
            log.warning("etcd: connection lost: %s", detail)
            self._connected = False
            self._queue.put([SourceStatus(False, detail)])

    def _relist(self) -> None:
        listing = self.client.list_range(self.layout.start, self.layout.end, page_size=self.page_size)
        events: list[SourceEvent] = []
        if self._connected is False:
            events.append(SourceStatus(True, f"reconnected at revision {listing.revision}"))
            log.info("etcd: reconnected at revision %d", listing.revision)
        present: dict[str, KeyValue] = {kv.key: kv for kv in listing.kvs if self.layout.parser(kv.key)}
        for key in [k for k in self._digests if k not in present]:
            events += self._delete(key)
        for key, kv in present.items():
            events += self._put(key, kv.value)
        if not self._synced:
            events.append(SourceInSync())
        self.revision = listing.revision
        self._connected = True
        self._need_list = False
        self._queue.put(events)
        if self._synced:
            self.relists += 1          # counted after the batch is queued: a test may then drain it
        self._synced = True

    def _apply(self, resp: WatchResponse) -> None:
        if resp.created:
            return
        events: list[SourceEvent] = []
        for ev in resp.events:
            if self.layout.parser(ev.kv.key) is None:
                continue
            events += self._delete(ev.kv.key) if ev.type == "DELETE" else self._put(ev.kv.key, ev.kv.value)
        if resp.events:
            self.revision = max(self.revision, max(ev.kv.mod_revision for ev in resp.events))
        else:
            self.revision = max(self.revision, resp.revision)      # progress notification
        if events:
            self._queue.put(events)

    # -- state: stored values → emitted resources ---------------------------------

    def _put(self, key: str, value: bytes) -> list[SourceEvent]:
        digest = hashlib.blake2b(value, digest_size=16).digest()
        if self._digests.get(key) == digest:
            return []
        self._digests[key] = digest
        parser = self.layout.parser(key)
        assert parser is not None
        try:
            resources = _decode(key, value, parser)
        except ValidationError as err:
            log.error("etcd: rejected %s", err)
            with self._lock:
                self._rejected.pop(key, None)
                self._rejected[key] = err
            return [SourceError(err)]          # the last good version (if any) stays
        with self._lock:
            self._rejected.pop(key, None)
        return self._set(key, {resource_key(r): r for r in resources})

    def _delete(self, key: str) -> list[SourceEvent]:
        self._digests.pop(key, None)
        with self._lock:
            self._rejected.pop(key, None)
        return self._set(key, {})

    def _set(self, key: str, new: dict[tuple[str, str], Resource]) -> list[SourceEvent]:
        """Make ``key`` hold ``new``; events for every resource whose emitted value changes."""
        old = self._by_key.pop(key, {})
        if new:
            self._by_key[key] = new
        events: list[SourceEvent] = []
        for rk in [*old, *(k for k in new if k not in old)]:
            owners = self._owners.setdefault(rk, [])
            if rk not in new:
                owners.remove(key)
            elif key not in owners:
                owners.append(key)
            current = self._emitted.get(rk)
            if not owners:                       # nobody stores this resource any more
                del self._owners[rk]
                if current is not None:
                    with self._lock:
                        del self._emitted[rk]
                    events.append(Delete(*rk))
                continue
            desired = self._by_key[owners[-1]][rk]
            if desired != current:
                with self._lock:
                    self._emitted[rk] = desired
                events.append(Upsert(desired))
        return events
