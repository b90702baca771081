"""What one commit or resync did, summarised per key.

Counting per key rather than per op makes a recreate (delete + create) one
"recreated" instead of a confusing "1 deleted, 1 created".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from vppagent.reconciler.kv import Key, OpKind, OpRecord


@dataclass
class Report:
    created: int = 0
    updated: int = 0
    recreated: int = 0
    deleted: int = 0
    adopted: int = 0
    failed: int = 0
    ops: int = 0
    deferred: bool = False   # not in sync yet: desired state recorded, nothing written
    resync: bool = False     # this was a full read-back and repair
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_records(cls, records: Iterable[OpRecord], **extra: Any) -> "Report":
        done: dict[Key, set[OpKind]] = {}
        failed: dict[Key, str] = {}
        n = 0
        for rec in records:
            n += 1
            if rec.ok:
                done.setdefault(rec.op.key, set()).add(rec.op.kind)
                failed.pop(rec.op.key, None)
            else:
                failed[rec.op.key] = f"{rec.op.kind.value} {rec.op.key!r}: {rec.error}"
        report = cls(ops=n, failed=len(failed), errors=list(failed.values()), **extra)
        for key, kinds in done.items():
            if key in failed:
                continue
            if OpKind.CREATE in kinds:
                if OpKind.DELETE in kinds:
                    report.recreated += 1
                else:
                    report.created += 1
            elif OpKind.UPDATE in kinds:
                report.updated += 1
            elif OpKind.DELETE in kinds:
                report.deleted += 1
        return report

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
