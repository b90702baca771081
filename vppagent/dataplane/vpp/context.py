"""What every VPP descriptor shares: the connection, the state store, and a
way to read another key's metadata (the VPP index it got)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from vppagent.dataplane.vpp.batch import Plan, drive
from vppagent.dataplane.vpp.store import StateStore
from vppagent.reconciler import Descriptor, Op, OpKind
from vppagent.vpp.connection import VppConnection

ALL = 0xFFFFFFFF


class MissingDependency(RuntimeError):
    """A key this write needs has no VPP index (yet)."""


@dataclass
class Context:
    conn: VppConnection
    store: StateStore
    metadata: Callable[[Any], Any]

    def need(self, key: Any) -> Any:
        meta = self.metadata(key)
        if meta is None:
            raise MissingDependency(f"{key!r} has no VPP index")
        return meta


class VppDescriptor(Descriptor[Any, Any]):
    """A descriptor whose ops are generator plans (see ``batch.drive``)."""

    def __init__(self, ctx: Context) -> None:
        super().__init__()
        self.ctx = ctx

    # subclasses implement these three as generators
    def plan_create(self, key: Any, value: Any) -> Plan:
        raise NotImplementedError
        yield  # pragma: no cover

    def plan_delete(self, key: Any, value: Any, metadata: Any) -> Plan:
        raise NotImplementedError
        yield  # pragma: no cover

    def plan_update(self, key: Any, old: Any, new: Any, metadata: Any) -> Plan:
        raise NotImplementedError
        yield  # pragma: no cover

    def _plan(self, op: Op) -> Plan:
        if op.kind is OpKind.CREATE:
            return self.plan_create(op.key, op.value)
        if op.kind is OpKind.UPDATE:
            return self.plan_update(op.key, op.old, op.value, op.metadata)
        return self.plan_delete(op.key, op.value, op.metadata)

    def _single(self, op: Op) -> Any:
        result = drive(self.ctx.conn, [op], self._plan)[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def create(self, key: Any, value: Any) -> Any:
        return self._single(Op(OpKind.CREATE, key, value))

    def delete(self, key: Any, value: Any, metadata: Any) -> None:
        self._single(Op(OpKind.DELETE, key, value, metadata=metadata))

    def batch_apply(self, ops: Any) -> list[Any]:
        return drive(self.ctx.conn, ops, self._plan)


class UpdatableVppDescriptor(VppDescriptor):
    """Adds in-place update (the reconciler detects the capability by override)."""

    def update(self, key: Any, old: Any, new: Any, metadata: Any) -> Any:
        return self._single(Op(OpKind.UPDATE, key, new, old=old, metadata=metadata))


def chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
