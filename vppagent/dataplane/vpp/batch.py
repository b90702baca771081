"""Running many reconciler ops as few pipelined round trips.

A descriptor describes each op as a generator of stages: it yields the
calls of one stage (``Calls``), receives their replies, and returns the
op's metadata.  ``drive`` advances every op of a batch stage by stage, so
N ops of three stages cost three pipelines instead of 3N round trips.

``VppConnection.pipeline`` reports only the first failing call of a
pipeline (with its index) and drops the other replies, so a stage whose
replies carry new object ids (``returns_ids``) loses them for the other ops
when one fails; creates whose objects cannot be found again by a dump
(interfaces before they are tagged) therefore run ``sync``: one round trip
per op.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Generator, Sequence

from vppagent.reconciler import Op
from vppagent.vpp.connection import VppConnection
from vppagent.vpp.errors import VppApiError, VppError
from vppagent.vpp.messages import MESSAGES

log = logging.getLogger(__name__)

Call = tuple[str, dict[str, Any]]
Plan = Generator["Calls", list[Any], Any]


@dataclass
class Calls:
    calls: list[Call]
    sync: bool = False
    returns_ids: bool = False
    tolerate: tuple[str, ...] = ()     # VPP error names that count as done (e.g. already gone)
    resent: bool = False


class BatchAborted(VppError):
    """Another op's call failed in the same pipeline and this op's outcome is unknown."""


def _one(conn: VppConnection, name: str, args: dict[str, Any]) -> Any:
    return conn.dump(name, **args) if MESSAGES[name].is_dump else conn.call(name, **args)


def _tolerant(conn: VppConnection, name: str, args: dict[str, Any], tolerate: tuple[str, ...]) -> Any:
    try:
        return _one(conn, name, args)
    except VppApiError as exc:
        if exc.name in tolerate:
            return None
        raise


def drive(conn: VppConnection, ops: Sequence[Op], plan: Callable[[Op], Plan]) -> list[Any]:
    """Run every op's plan; one entry per op: its metadata or the exception."""
    results: list[Any] = [None] * len(ops)
    gens: dict[int, Plan] = {}
    pending: dict[int, Calls] = {}

    def advance(i: int, replies: list[Any] | None) -> None:
        gen = gens[i]
        try:
            step = gen.send(replies) if replies is not None else next(gen)
        except StopIteration as stop:
            results[i] = stop.value
            pending.pop(i, None)
            return
        except Exception as exc:          # a plan may refuse (e.g. a missing dependency)
            results[i] = exc
            pending.pop(i, None)
            return
        if step.calls:
            pending[i] = step
        else:
            advance(i, [])

    for i, op in enumerate(ops):
        gens[i] = plan(op)
        advance(i, None)
    while pending:
        stage = dict(pending)
        pending.clear()
        replies: dict[int, list[Any]] = {}
        for i, step in stage.items():
            if not step.sync:
                continue
            try:
                replies[i] = [_tolerant(conn, n, a, step.tolerate) for n, a in step.calls]
            except Exception as exc:
                results[i] = exc
        piped = [(i, step) for i, step in stage.items() if not step.sync]
        if piped:
            flat = [c for _, step in piped for c in step.calls]
            try:
                out = conn.pipeline(flat)
                at = 0
                for i, step in piped:
                    replies[i] = out[at:at + len(step.calls)]
                    at += len(step.calls)
            except VppApiError as exc:
                for i in _attribute(piped, exc, replies, results):
                    pending[i] = stage[i]      # sent again on its own: its outcome was hidden
            except Exception as exc:       # VPP gone, argument bug: the whole stage failed
                for i, _ in piped:
                    results[i] = exc
        for i in sorted(replies):
            advance(i, replies[i])
        for i in stage:
            if i not in replies and i not in pending and i in gens:
                _compensate(conn, gens.pop(i), results[i])
    return results


def _compensate(conn: VppConnection, gen: Plan, exc: BaseException) -> None:
    """Let a failed plan undo what its earlier stages created (best effort)."""
    try:
        step = gen.throw(exc)
    except BaseException:
        return
    try:
        if step.calls:
            for name, args in step.calls:
                try:
                    _one(conn, name, args)
                except VppError as undo:
                    log.warning("cleanup after a failed op: %s", undo)
    finally:
        gen.close()


def _attribute(piped: list[tuple[int, Calls]], exc: VppApiError, replies: dict[int, list[Any]],
               results: list[Any]) -> list[int]:
    """One call failed: its op gets the error, ops before it are done, ops
    after it are returned to be sent again (VPP ran them but only the first
    failure of a pipeline is reported); lost ids abort their ops."""
    again: list[int] = []
    at = 0
    for i, step in piped:
        n = len(step.calls)
        if exc.index is not None and at <= exc.index < at + n:
            if exc.name in step.tolerate:
                replies[i] = [None] * n
            else:
                results[i] = exc
        elif step.returns_ids:
            log.warning("reply lost in a failed pipeline (%s): an object may have been created and left behind",
                        exc)
            results[i] = BatchAborted(f"aborted with its batch: {exc}")
        elif exc.index is not None and at + n <= exc.index:
            replies[i] = [None] * n       # ran before the failure: done, replies unused
        elif not step.resent:
            step.resent = True
            again.append(i)
        else:
            results[i] = BatchAborted(f"outcome unknown after a failure in the same batch: {exc}")
        at += n
    return again
