"""The reconciler's view of cnat translations.

VPP keys a translation by (VIP, port, protocol) and hands back an id that
``cnat_translation_del`` needs; the id is the metadata here.  An update is a
second ``cnat_translation_update`` for the same key: VPP keeps the id, keeps
the backends that stay (and their sessions) and expires the sessions of the
backends that go (its scanner drops sessions whose backend was removed, which
is also what clears stale UDP flows).  ``lb_type`` and ``flow_hash_config``
are only read when VPP creates a translation, so changing the balancing
recreates it.

Ownership: translations carry no tag, so ours are the ones our
``OwnershipStore`` recorded for this VPP instance; a dump returns only those
and nothing else in VPP is ever deleted.  ``cnat_session_purge`` is never
sent: in VPP 26.10 it deletes every translation, not just sessions.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, Sequence, cast

from vppagent.dataplane.vpp.cnat_model import (
    NotApplied, RejectRouteKey, Translation, TranslationKey, decode_translation, encode_translation,
)
from vppagent.dataplane.vpp.cnat_ownership import OwnershipStore
from vppagent.model.resources import IPNetwork
from vppagent.reconciler import Descriptor, Key, Op, OpKind
from vppagent.vpp.errors import VppApiError, VppArgumentError

log = logging.getLogger(__name__)

KIND = "cnat-translation"


def ident(key: Any) -> str:
    return f"{key.vip}|{key.port}|{key.protocol}"


class CnatTranslationDescriptor(Descriptor[TranslationKey, Translation]):
    """create/update = ``cnat_translation_update``, delete = ``cnat_translation_del``."""

    kind = TranslationKey
    name = "cnat-translation"

    def __init__(self, conn: Any, *, store: OwnershipStore | None = None,
                 reject_nets: Iterable[IPNetwork] = (), table_id: int = 0) -> None:
        """``reject_nets``: the reject-sink prefixes; a translation with a path
        into one waits for its ICMP-prohibit route (``cnat_routes``)."""
        super().__init__()
        self.conn = conn
        self.store = store if store is not None else OwnershipStore()
        self.reject_nets = tuple(reject_nets)
        self.table_id = table_id

    # -------------------------------------------------------------- Descriptor

    def create(self, key: TranslationKey, value: Translation) -> int:
        return self._single(Op(OpKind.CREATE, key, value))

    def update(self, key: TranslationKey, old: Translation, new: Translation, metadata: Any) -> int:
        return self._single(Op(OpKind.UPDATE, key, new, old=old, metadata=metadata))

    def delete(self, key: TranslationKey, value: Translation, metadata: Any) -> None:
        self._single(Op(OpKind.DELETE, key, value, metadata=metadata))

    def dump(self) -> dict[TranslationKey, tuple[Translation, int]]:
        self.store.bind(self.conn.vpe_pid)
        mine = self.store.items(KIND)
        out: dict[TranslationKey, tuple[Translation, int]] = {}
        for key, value, tid in self._read():
            if ident(key) in mine:
                out[key] = (value, tid)
        self.store.replace(KIND, ((ident(k), str(tid)) for k, (_, tid) in out.items()))
        return out

    def dependencies(self, key: TranslationKey, value: Translation) -> Iterable[Key]:
        return sorted({RejectRouteKey(n, self.table_id) for p in value.paths for n in self.reject_nets
                       if p.ip.version == n.version and p.ip in n})

    def equivalent(self, key: TranslationKey, desired: Translation, actual: Translation) -> bool:
        return desired.balancing == actual.balancing and sorted(desired.paths) == sorted(actual.paths)

    def needs_recreate(self, key: TranslationKey, old: Translation, new: Translation) -> bool:
        return old.balancing != new.balancing

    def retriable(self, exc: BaseException) -> bool:
        return not isinstance(exc, (VppArgumentError, ValueError))

    def batch_apply(self, ops: Sequence[Op]) -> list[Any]:
        with self.store.batch():           # one ownership-file write per batch, not per object
            return self._batch_apply(ops)

    def _batch_apply(self, ops: Sequence[Op]) -> list[Any]:
        results: list[Any] = [None] * len(ops)
        sent: list[int] = []
        calls: list[tuple[str, Mapping[str, Any]]] = []
        for i, op in enumerate(ops):
            try:
                calls.append(self._call(op))
                sent.append(i)
            except (ValueError, LookupError) as e:
                results[i] = e
        if not calls:
            return results
        try:
            replies = self.conn.pipeline(calls)
        except VppApiError as e:
            if e.index is None:
                raise
            return self._settle(ops, sent, results, e)
        for i, reply in zip(sent, replies):
            results[i] = self._done(ops[i], getattr(reply, "id", None))
        return results

    # ---------------------------------------------------------------- helpers

    def _single(self, op: Op) -> Any:
        result = self.batch_apply([op])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _read(self) -> list[tuple[TranslationKey, Translation, int]]:
        out = []
        for d in self.conn.dump("cnat_translation_dump"):
            decoded = decode_translation(d.translation)
            if decoded is not None:
                out.append(decoded)
        return out

    def _call(self, op: Op) -> tuple[str, Mapping[str, Any]]:
        if op.kind is OpKind.DELETE:
            return "cnat_translation_del", {"id": self._id(op)}
        return "cnat_translation_update", {"translation": encode_translation(cast(TranslationKey, op.key), op.value)}

    def _id(self, op: Op) -> int:
        if isinstance(op.metadata, int):
            return op.metadata
        recorded = self.store.get(KIND, ident(op.key))
        if recorded:
            return int(recorded)
        for key, _, tid in self._read():
            if key == op.key:
                return tid
        raise LookupError(f"cnat translation {op.key} not found in VPP")

    def _done(self, op: Op, tid: int | None) -> int | None:
        if op.kind is OpKind.DELETE:
            self.store.discard(KIND, ident(op.key))
            return None
        assert tid is not None
        self.store.add(KIND, ident(op.key), str(tid))
        return tid

    def _settle(self, ops: Sequence[Op], sent: list[int], results: list[Any],
                error: VppApiError) -> list[Any]:
        """A pipeline stopped at its first failure, but VPP ran every request:
        read VPP back to learn which ops took effect (and their ids)."""
        failed = sent[error.index] if error.index is not None else -1
        actual: dict[Any, tuple[Translation, int]] = {k: (v, tid) for k, v, tid in self._read()}
        for i in sent:
            op = ops[i]
            have = actual.get(op.key)
            if op.kind is OpKind.DELETE:
                gone = have is None or (isinstance(op.metadata, int) and have[1] != op.metadata)
                ok = gone and (i != failed or error.name == "NO_SUCH_ENTRY")
            else:
                ok = (i != failed and have is not None
                      and self.equivalent(cast(TranslationKey, op.key), op.value, have[0]))
            if ok:
                results[i] = self._done(op, None if have is None else have[1])
            elif i == failed:
                results[i] = error
            else:
                results[i] = NotApplied(f"{op.kind.value} {op.key}: not in VPP after a failure "
                                        f"earlier in the same pipeline ({error})")
        return results
