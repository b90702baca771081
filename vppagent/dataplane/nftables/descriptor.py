"""The reconciler's view of the nftables table: one batch = one transaction.

``batch_apply`` turns a commit's ops into a single ``nft -f -`` script. If nft
refuses it (nothing changed: transactions are atomic), the table is read back
and the same targets are re-diffed against what really exists, which repairs
drift the engine did not know about; if that fails too, the ops are split in
halves until the failing ones are isolated, so one bad object cannot hold up
the others. The failures are reported per op and retried with backoff.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from vppagent.dataplane.nftables.objects import (
    Chain, Element, NftKey, NftMap, NftSet, NftValue, chain_key, map_key,
)
from vppagent.dataplane.nftables.readback import Dump, parse_table
from vppagent.dataplane.nftables.runner import CommandRunner
from vppagent.dataplane.nftables.transaction import Change, build_script, net_changes
from vppagent.reconciler import Descriptor, Op, OpKind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TxRecord:
    """One transaction sent to nft, kept for Dump and for tests."""

    at: float
    script: str
    ok: bool
    error: str | None = None

    @property
    def lines(self) -> int:
        return self.script.count("\n")


class NftDescriptor(Descriptor[NftKey, NftValue]):
    kind = NftKey
    name = "nftables"

    def __init__(self, runner: CommandRunner, table: str, history: int = 200) -> None:
        super().__init__()
        self.runner = runner
        self.table = table
        self.transactions: collections.deque[TxRecord] = collections.deque(maxlen=history)
        self.sent = 0
        self.failed = 0

    # -- Descriptor ---------------------------------------------------------------------

    def create(self, key: NftKey, value: NftValue) -> None:
        self._single(Op(OpKind.CREATE, key, value))

    def update(self, key: NftKey, old: NftValue, new: NftValue, metadata: Any) -> None:
        self._single(Op(OpKind.UPDATE, key, new, old=old, metadata=metadata))

    def delete(self, key: NftKey, value: NftValue, metadata: Any) -> None:
        self._single(Op(OpKind.DELETE, key, value, metadata=metadata))

    def batch_apply(self, ops: Sequence[Op]) -> list[Any]:
        script = build_script(self.table, net_changes(ops))
        error = self._send(script)
        if error is None:
            return [None] * len(ops)
        log.warning("nft transaction of %d ops failed (%s); re-reading the table", len(ops), error)
        return self._isolate(list(ops), failed=script)

    def dump(self) -> Mapping[NftKey, tuple[NftValue, Any]]:
        objects = self.runner.nft_list_table("inet", self.table)
        return parse_table(objects or [])

    def dependencies(self, key: NftKey, value: NftValue) -> Iterable[NftKey]:
        if isinstance(value, Chain):
            return value.refs
        if isinstance(value, Element):
            return (map_key(key.name), chain_key(value.target))
        return ()

    def equivalent(self, key: NftKey, desired: NftValue, actual: NftValue) -> bool:
        if isinstance(desired, Chain) and isinstance(actual, Chain):
            return desired.same_as(actual)
        if isinstance(desired, NftSet) and isinstance(actual, NftSet):
            return desired.same_as(actual)
        return isinstance(desired, (NftMap, Element)) and desired == actual

    # -- internals ----------------------------------------------------------------------

    def _single(self, op: Op) -> None:
        result = self.batch_apply([op])[0]
        if isinstance(result, BaseException):
            raise result

    def _send(self, script: str) -> str | None:
        """Apply a script; the error text, or None on success (or nothing to do)."""
        if not script:
            return None
        self.sent += 1
        try:
            self.runner.nft_apply(script)
        except Exception as exc:   # NftError, or the runner itself failing
            self.failed += 1
            self.transactions.append(TxRecord(time.time(), script, False, str(exc)))
            return str(exc)
        self.transactions.append(TxRecord(time.time(), script, True))
        return None

    def _isolate(self, ops: list[Op], failed: str = "") -> list[Any]:
        """Re-diff ``ops`` against a fresh read-back; split until failures are isolated.

        ``failed`` is a script already refused: if the re-diff produces it again
        (nothing drifted), it is not sent a second time.
        """
        try:
            actual: Dump = dict(self.dump())
        except Exception as exc:
            return [exc] * len(ops)
        targets: dict[NftKey, NftValue | None] = {}
        for op in ops:
            targets[op.key] = None if op.kind is OpKind.DELETE else op.value
        changes = []
        for key, new in targets.items():
            old = actual.get(key, (None, None))[0]
            if new is not None and old is not None and self.equivalent(key, new, old):
                continue
            changes.append(Change(key, old, new))
        script = build_script(self.table, changes)
        error = "refused before" if script == failed else self._send(script)
        if error is None:
            return [None] * len(ops)
        if len(ops) == 1:
            return [RuntimeError(f"nft: {error}")]
        half = len(ops) // 2
        return self._isolate(ops[:half]) + self._isolate(ops[half:])
