"""The desired-state engine: record what should exist, make the dataplane match.

Callers describe the dataplane as keys and values (``set``/``delete``) and
``commit``; the engine works out the writes, in dependency order, and keeps
going in the face of failures: a value whose dependencies are missing waits
(PENDING) and is written as soon as they appear; a failed write is retried
with exponential backoff; ``resync`` reads back what really exists and
repairs drift. Nothing is written before ``mark_in_sync`` so a restarting
agent never tears down a working dataplane based on half a snapshot.

Not thread-safe, by design: every descriptor call happens on the caller's
thread, one at a time (VPP's API client is not thread-safe either). Callers
serialise all use of one ``Reconciler``.
"""

from __future__ import annotations

import collections
import logging
import random
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

from vppagent.reconciler.backoff import Backoff
from vppagent.reconciler.descriptor import Descriptor
from vppagent.reconciler.introspect import jsonable
from vppagent.reconciler.kv import Failure, Key, KeyState, KeyStatus, Op, OpKind, OpRecord, key_order
from vppagent.reconciler.plan import make_plan
from vppagent.reconciler.report import Report

log = logging.getLogger(__name__)

KeySet = set[Key]   # `set` is shadowed by Reconciler.set inside the class
MAX_ROUNDS = 8   # plan/execute rounds per commit; one is normally enough


class Transaction:
    """A batch of set/delete applied together, as one commit, on success."""

    def __init__(self, engine: "Reconciler") -> None:
        self._engine = engine
        self._changes: list[tuple[bool, Key, Any]] = []
        self.report: Report | None = None

    def set(self, key: Key, value: Any) -> None:
        self._engine.descriptor(key)   # fail fast on an unknown key kind
        self._changes.append((True, key, value))

    def delete(self, key: Key) -> None:
        self._changes.append((False, key, None))


class Reconciler:
    """Desired state, believed actual state, and the scheduling between them."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
        seed: int | None = None,
        history_limit: int = 10_000,
    ) -> None:
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._rng = random.Random(seed)
        self._descriptors: list[Descriptor[Any, Any]] = []
        self._by_type: dict[type, Descriptor[Any, Any]] = {}
        self._desired: dict[Key, Any] = {}
        self._actual: dict[Key, tuple[Any, Any]] = {}
        self._ddeps: dict[Key, frozenset[Key]] = {}
        self._adeps: dict[Key, frozenset[Key]] = {}
        self._rddeps: dict[Key, KeySet] = {}
        self._radeps: dict[Key, KeySet] = {}
        self._failures: dict[Key, Failure] = {}
        self._dirty: KeySet = set()
        self._in_sync = False
        self._resync_at: float | None = None   # a full resync is owed from this time on
        self._resync_failures = 0
        self._history: collections.deque[OpRecord] = collections.deque(maxlen=history_limit)
        self._seq = 0
        self._errors = 0
        self.last_error: str | None = None

    # -- registration -----------------------------------------------------------------

    def register(self, descriptor: Descriptor[Any, Any]) -> None:
        """Add a descriptor; type kinds are matched before predicate kinds."""
        self._descriptors.append(descriptor)
        self._by_type.clear()

    def descriptor(self, key: Key) -> Descriptor[Any, Any]:
        """The descriptor handling ``key``; TypeError if there is none."""
        t = type(key)
        found = self._by_type.get(t)
        if found is not None:
            return found
        for d in self._descriptors:
            if isinstance(d.kind, type) and isinstance(key, d.kind):
                self._by_type[t] = d
                return d
        for d in self._descriptors:
            if not isinstance(d.kind, type) and d.handles(key):
                return d
        raise TypeError(f"no descriptor registered for key {key!r}")

    # -- desired state ------------------------------------------------------------------

    def set(self, key: Key, value: Any) -> None:
        """Record that ``key`` should have ``value`` (written at the next commit)."""
        desc = self.descriptor(key)
        if key in self._desired and self._desired[key] == value:
            return
        self._desired[key] = value
        _reindex(self._ddeps, self._rddeps, key, frozenset(desc.dependencies(key, value)))
        self._failures.pop(key, None)
        self._dirty.add(key)

    def delete(self, key: Key) -> None:
        """Record that ``key`` should not exist (removed at the next commit)."""
        if key not in self._desired:
            return
        del self._desired[key]
        _reindex(self._ddeps, self._rddeps, key, frozenset())
        self._failures.pop(key, None)
        self._dirty.add(key)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Batch changes; they are applied and committed once, or dropped on error."""
        txn = Transaction(self)
        yield txn
        for is_set, key, value in txn._changes:
            if is_set:
                self.set(key, value)
            else:
                self.delete(key)
        txn.report = self.commit()

    # -- PlanView ------------------------------------------------------------------------

    @property
    def desired_map(self) -> dict[Key, Any]:
        return self._desired

    @property
    def actual_map(self) -> dict[Key, tuple[Any, Any]]:
        return self._actual

    def desired_deps(self, key: Key) -> frozenset[Key]:
        return self._ddeps.get(key, frozenset())

    def actual_deps(self, key: Key) -> frozenset[Key]:
        return self._adeps.get(key, frozenset())

    def actual_dependents(self, key: Key) -> Iterable[Key]:
        return sorted(self._radeps.get(key, ()), key=key_order)

    def blocked(self, key: Key) -> bool:
        """Whether a failed key must wait (backoff not elapsed, or not retriable)."""
        f = self._failures.get(key)
        if f is None:
            return False
        return not f.retriable or f.next_retry_at is None or self._clock() < f.next_retry_at

    # -- committing ----------------------------------------------------------------------

    @property
    def in_sync(self) -> bool:
        return self._in_sync

    def mark_in_sync(self) -> None:
        """Allow writes; the next commit does a full resync first."""
        if not self._in_sync:
            self._in_sync = True
            self._resync_at = float("-inf")

    def commit(self) -> Report:
        """Write whatever the changes since the last commit require."""
        if not self._in_sync:
            return Report(deferred=True)
        if self._resync_at is not None and self._clock() >= self._resync_at:
            return self.resync()
        seeds, self._dirty = self._dirty, set()
        return Report.from_records(self._converge(seeds))

    def run_due_retries(self) -> Report:
        """Retry failed keys whose backoff has elapsed (and commit pending changes)."""
        if not self._in_sync:
            return Report(deferred=True)
        now = self._clock()
        for key, f in self._failures.items():
            if f.retriable and f.next_retry_at is not None and f.next_retry_at <= now:
                self._dirty.add(key)
        return self.commit()

    def next_retry_at(self) -> float | None:
        """When ``run_due_retries`` next has something to do, if ever."""
        times = [f.next_retry_at for f in self._failures.values()
                 if f.retriable and f.next_retry_at is not None]
        if self._in_sync and self._resync_at is not None:
            times.append(self._resync_at)
        return min(times) if times else None

    def read_actual(self) -> list[str]:
        """Replace the believed actual state with a fresh dump; never writes.

        A descriptor whose dump fails keeps its previous beliefs; the errors
        are returned (and a resync is owed, retried with backoff).
        """
        errors: list[str] = []
        failed: list[int] = []
        fresh: dict[Key, tuple[Any, Any]] = {}
        for i, desc in enumerate(self._descriptors):
            try:
                fresh.update(desc.dump())
            except Exception as exc:   # a backend error must not kill the agent
                failed.append(i)
                errors.append(f"dump {desc.name}: {exc}")
                log.warning("dump of %s failed: %s", desc.name, exc)
        if failed:
            kept = [self._descriptors[i] for i in failed]
            for key, entry in self._actual.items():
                if key not in fresh and self.descriptor(key) in kept:
                    fresh[key] = entry
            self.last_error = errors[-1]
        self._actual = fresh
        self._adeps.clear()
        self._radeps.clear()
        for key, (value, _) in fresh.items():
            deps = frozenset(self.descriptor(key).dependencies(key, value))
            _reindex(self._adeps, self._radeps, key, deps)
        return errors

    def resync(self) -> Report:
        """Read back everything, then create/update/delete until it matches.

        Before in-sync this only reads. Equivalent existing objects are adopted
        without any write; owned objects that are not desired are deleted.
        """
        errors = self.read_actual()
        if not self._in_sync:
            return Report(deferred=True, resync=True, errors=errors)
        if errors:
            self._resync_failures += 1
            self._resync_at = self._clock() + self._backoff.delay(self._resync_failures, self._rng)
        else:
            self._resync_failures = 0
            self._resync_at = None
        self._dirty.clear()
        fine = {k for k in self._desired.keys() & self._actual.keys() if not self._differs(k)}
        records = self._converge(set(self._desired) | set(self._actual))
        touched = {r.op.key for r in records}
        report = Report.from_records(records, resync=True, adopted=len(fine - touched))
        report.errors = errors + report.errors
        return report

    def _converge(self, seeds: Iterable[Key]) -> list[OpRecord]:
        candidates = self._closure(seeds)
        records: list[OpRecord] = []
        for _ in range(MAX_ROUNDS):
            plan = make_plan(self, candidates)
            if not plan:
                break
            done = self._execute(plan.ops)
            records.extend(done)
            if not any(r.ok for r in done):
                break
        self._forget_moot_failures(candidates - {r.op.key for r in records})
        return records

    def _forget_moot_failures(self, keys: KeySet) -> None:
        """Drop failures that events have overtaken.

        E.g. a resync found the object fixed, or its backoff is over but the
        plan no longer wants the write (a dependency went away: PENDING now).
        """
        for k in keys & self._failures.keys():
            if k in self._desired and k in self._actual and not self._differs(k):
                del self._failures[k]
            elif k not in self._desired and k not in self._actual:
                del self._failures[k]
            elif not self.blocked(k):
                del self._failures[k]

    def _closure(self, seeds: Iterable[Key]) -> KeySet:
        """Seeds plus everything that depends on them, desired or actual."""
        out: KeySet = set()
        stack = list(seeds)
        while stack:
            k = stack.pop()
            if k in out:
                continue
            out.add(k)
            stack.extend(self._rddeps.get(k, ()))
            stack.extend(self._radeps.get(k, ()))
        return out

    # -- execution -----------------------------------------------------------------------

    def _execute(self, ops: Sequence[Op]) -> list[OpRecord]:
        """Run ops in order, batching runs of ops for a batch-capable descriptor.

        Each op is re-checked just before it runs (earlier ops may have failed),
        against what exists plus what the current batch will have done.
        """
        records: list[OpRecord] = []
        batch: list[Op] = []
        batch_desc: Descriptor[Any, Any] | None = None
        added: KeySet = set()
        removed: KeySet = set()

        def flush() -> None:
            nonlocal batch
            if batch and batch_desc is not None:
                records.extend(self._run(batch_desc, batch))
            batch = []
            added.clear()
            removed.clear()

        for op in ops:
            desc = self.descriptor(op.key)
            if batch and (desc is not batch_desc or not desc.supports_batch):
                flush()
            if not self._ready(op, added, removed):
                continue
            batch.append(op)
            batch_desc = desc
            if op.kind is OpKind.DELETE:
                removed.add(op.key)
                added.discard(op.key)
            else:
                added.add(op.key)
                removed.discard(op.key)
            if not desc.supports_batch:
                flush()
        flush()
        return records

    def _ready(self, op: Op, added: KeySet, removed: KeySet) -> bool:
        def exists(k: Key) -> bool:
            return k in added or (k in self._actual and k not in removed)

        if op.kind is OpKind.DELETE:
            return exists(op.key)
        if (op.kind is OpKind.CREATE) == exists(op.key):
            return False
        return all(exists(d) for d in self.desired_deps(op.key))

    def _run(self, desc: Descriptor[Any, Any], batch: list[Op]) -> list[OpRecord]:
        results: list[Any]
        if len(batch) > 1:
            try:
                results = list(desc.batch_apply(batch))
                if len(results) != len(batch):
                    raise RuntimeError(f"batch_apply returned {len(results)} results for {len(batch)} ops")
            except Exception as exc:
                results = [exc] * len(batch)
        else:
            results = [self._call(desc, batch[0])]
        return [self._record(desc, op, res) for op, res in zip(batch, results)]

    @staticmethod
    def _call(desc: Descriptor[Any, Any], op: Op) -> Any:
        try:
            if op.kind is OpKind.CREATE:
                return desc.create(op.key, op.value)
            if op.kind is OpKind.UPDATE:
                return desc.update(op.key, op.old, op.value, op.metadata)
            desc.delete(op.key, op.value, op.metadata)
            return None
        except Exception as exc:   # recorded on the key and retried
            return exc

    def _record(self, desc: Descriptor[Any, Any], op: Op, result: Any) -> OpRecord:
        self._seq += 1
        now = self._clock()
        key = op.key
        if isinstance(result, BaseException):
            return self._fail(desc, op, result, now)
        if op.kind is OpKind.DELETE:
            self._actual.pop(key, None)
            _reindex(self._adeps, self._radeps, key, frozenset())
        else:
            meta = op.metadata if op.kind is OpKind.UPDATE and result is None else result
            self._actual[key] = (op.value, meta)
            _reindex(self._adeps, self._radeps, key, self.desired_deps(key))
        self._failures.pop(key, None)
        rec = OpRecord(self._seq, now, op)
        self._history.append(rec)
        log.debug("%s %r ok", op.kind.value, key)
        return rec

    def _fail(self, desc: Descriptor[Any, Any], op: Op, exc: BaseException, now: float) -> OpRecord:
        prev = self._failures.get(op.key)
        attempts = (prev.attempts if prev else 0) + 1
        try:
            retriable = bool(desc.retriable(exc))
        except Exception:
            retriable = True
        delay = self._backoff.delay(attempts, self._rng) if retriable else None
        error = f"{type(exc).__name__}: {exc}"
        self._failures[op.key] = Failure(
            error, op.kind, attempts, retriable, None if delay is None else now + delay
        )
        self._errors += 1
        self.last_error = f"{op.kind.value} {op.key!r}: {error}"
        log.warning("%s (attempt %d, %s)", self.last_error, attempts,
                    f"retry in {delay:g}s" if delay is not None else "not retriable")
        rec = OpRecord(self._seq, now, op, error)
        self._history.append(rec)
        return rec

    # -- introspection -------------------------------------------------------------------

    def _differs(self, key: Key) -> bool:
        return not self.descriptor(key).equivalent(key, self._desired[key], self._actual[key][0])

    def state(self, key: Key) -> KeyStatus:
        """Where ``key`` stands; PENDING also covers "exists, removal pending"."""
        f = self._failures.get(key)
        if f is not None:
            return KeyStatus(KeyState.FAILED, f.error, f.attempts,
                             f.next_retry_at if f.retriable else None, f.retriable)
        if key in self._desired:
            ok = key in self._actual and not self._differs(key)
            return KeyStatus(KeyState.CONFIGURED if ok else KeyState.PENDING)
        return KeyStatus(KeyState.PENDING if key in self._actual else KeyState.REMOVED)

    def keys(self) -> list[Key]:
        """Every key desired, believed to exist, or failed, in plan order."""
        return sorted(self._desired.keys() | self._actual.keys() | self._failures.keys(), key=key_order)

    def desired(self) -> dict[Key, Any]:
        """A copy of the desired state."""
        return dict(self._desired)

    def actual_snapshot(self) -> dict[Key, Any]:
        """What the engine believes exists (values only; see ``metadata``)."""
        return {k: v for k, (v, _) in self._actual.items()}

    def metadata(self, key: Key) -> Any:
        entry = self._actual.get(key)
        return entry[1] if entry else None

    def stats(self) -> dict[str, int]:
        counts = {s.value: 0 for s in KeyState if s is not KeyState.REMOVED}
        for key in self._desired.keys() | self._actual.keys() | self._failures.keys():
            state = self.state(key).state
            if state is not KeyState.REMOVED:
                counts[state.value] += 1
        counts.update(desired=len(self._desired), actual=len(self._actual),
                      ops=self._seq, errors=self._errors)
        return counts

    @property
    def history(self) -> list[OpRecord]:
        """Executed operations, oldest first (bounded by ``history_limit``)."""
        return list(self._history)

    def dump(self) -> dict[str, Any]:
        """JSON-serialisable view of every key, for the Dump RPC."""
        keys = []
        for key in self.keys():
            st = self.state(key)
            keys.append({
                "key": repr(key),
                "kind": self.descriptor(key).name,
                "state": st.state.value,
                "error": st.error,
                "next_retry_at": st.next_retry_at,
                "desired": jsonable(self._desired[key]) if key in self._desired else None,
                "actual": jsonable(self._actual[key][0]) if key in self._actual else None,
            })
        return {"in_sync": self._in_sync, "stats": self.stats(), "keys": keys}


def _reindex(fwd: dict[Key, frozenset[Key]], rev: dict[Key, set[Key]], key: Key,
             deps: frozenset[Key]) -> None:
    """Point ``key`` at ``deps`` in a forward map and its reverse index."""
    for d in fwd.pop(key, frozenset()):
        users = rev.get(d)
        if users is not None:
            users.discard(key)
            if not users:
                del rev[d]
    if deps:
        fwd[key] = deps
        for d in deps:
            rev.setdefault(d, set()).add(key)
