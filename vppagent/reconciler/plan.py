"""Computing which writes bring a set of keys to their desired state.

Planning is a pure function of what the engine knows (desired values, what it
believes exists, which keys are backing off), so it can be re-run after every
round of execution until nothing more can be done. Only ``candidates`` (the
changed keys and everything that transitively depends on them) are examined,
keeping a commit proportional to what changed rather than to the total.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol

from vppagent.reconciler.descriptor import Descriptor
from vppagent.reconciler.graph import topo_order
from vppagent.reconciler.kv import Key, Op, OpKind, key_order


class PlanView(Protocol):
    """The parts of the engine a plan reads."""

    @property
    def desired_map(self) -> Mapping[Key, Any]: ...
    @property
    def actual_map(self) -> Mapping[Key, tuple[Any, Any]]: ...

    def desired_deps(self, key: Key) -> frozenset[Key]: ...
    def actual_deps(self, key: Key) -> frozenset[Key]: ...
    def actual_dependents(self, key: Key) -> Iterable[Key]: ...
    def blocked(self, key: Key) -> bool: ...
    def descriptor(self, key: Key) -> Descriptor[Any, Any]: ...


@dataclass
class Plan:
    deletes: list[Op] = field(default_factory=list)   # dependents first
    writes: list[Op] = field(default_factory=list)    # dependencies first

    @property
    def ops(self) -> list[Op]:
        return self.deletes + self.writes

    def __len__(self) -> int:
        return len(self.deletes) + len(self.writes)


def satisfiable(view: PlanView, candidates: set[Key]) -> dict[Key, bool]:
    """For each candidate: will it exist once the plan has run?

    A key will exist if it is desired, not backing off from a failed create,
    and all its dependencies will exist. Keys outside the candidates do not
    change. Cycles are never satisfiable. Iterative, so long chains are fine.
    """
    result: dict[Key, bool] = {}   # False also marks "in progress": reaching it again means a cycle

    def enter(k: Key, frames: list[list[Any]]) -> None:
        result[k] = False
        if k in view.desired_map and not (view.blocked(k) and k not in view.actual_map):
            frames.append([k, sorted(view.desired_deps(k), key=key_order), 0])

    for root in sorted(candidates, key=key_order):
        if root in result:
            continue
        frames: list[list[Any]] = []
        enter(root, frames)
        while frames:
            frame = frames[-1]
            k, deps, i = frame
            if i == len(deps):
                result[k] = True
                frames.pop()
                continue
            d = deps[i]
            if d not in candidates:
                ok = d in view.actual_map and d in view.desired_map
            elif d in result:
                ok = result[d]
            else:
                enter(d, frames)
                continue
            if ok:
                frame[2] += 1
            else:
                frames.pop()   # result[k] stays False
    return result


def make_plan(view: PlanView, candidates: set[Key]) -> Plan:
    """Deletes (dependents first) then creates/updates (dependencies first)."""
    present = satisfiable(view, candidates)
    desired, actual = view.desired_map, view.actual_map

    deletes: dict[Key, str] = {}
    for k in sorted(candidates & actual.keys(), key=key_order):
        if not present[k]:
            if not view.blocked(k):   # a failed delete waits for its backoff
                deletes[k] = "obsolete" if k not in desired else "dependency"
        elif not view.blocked(k) and _differs(view, k) and _must_recreate(view, k):
            deletes[k] = "recreate"
    queue = list(deletes)
    while queue:
        for dep in view.actual_dependents(queue.pop()):
            if dep in actual and dep not in deletes:
                deletes[dep] = "dependency"
                queue.append(dep)

    plan = Plan()
    for k in topo_order(deletes, view.actual_deps, dependents_first=True):
        value, meta = actual[k]
        plan.deletes.append(Op(OpKind.DELETE, k, value, metadata=meta, reason=deletes[k]))

    writes: dict[Key, Op] = {}
    for k in candidates | deletes.keys():
        if not present.get(k, k in actual and k in desired):
            continue
        if k not in actual or k in deletes:
            writes[k] = Op(OpKind.CREATE, k, desired[k], reason=deletes.get(k, "missing"))
        elif not view.blocked(k) and _differs(view, k):
            old, meta = actual[k]
            writes[k] = Op(OpKind.UPDATE, k, desired[k], old=old, metadata=meta, reason="changed")
    plan.writes = [writes[k] for k in topo_order(writes, view.desired_deps)]
    return plan


def _differs(view: PlanView, key: Key) -> bool:
    return not view.descriptor(key).equivalent(key, view.desired_map[key], view.actual_map[key][0])


def _must_recreate(view: PlanView, key: Key) -> bool:
    desc = view.descriptor(key)
    return not desc.supports_update or desc.needs_recreate(key, view.actual_map[key][0], view.desired_map[key])
