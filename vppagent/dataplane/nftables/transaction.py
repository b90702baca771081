"""Reconciler ops → one nft script, ordered so the kernel accepts it atomically.

The reconciler orders ops by dependency (deletes of dependents first, then
creates/updates), and sometimes deletes and re-creates a dependent just to
drop a reference. Inside one nft transaction we can do better: ops are
folded into one net change per key (delete + create of the same chain
becomes a flush and refill, keeping its handle), and commands are emitted in
phases that are always valid: declarations, set elements, chain contents,
map elements, then chain and set deletions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from vppagent.dataplane.nftables.objects import (
    COMMENT_PREFIX, Chain, Element, NftKey, NftMap, NftSet, NftValue,
)
from vppagent.reconciler import Op, OpKind

ELEMENT_CHUNK = 1000

# Phases, in execution order.
TABLE, REDECLARE, DECLARE, SET_DEL, SET_ADD, CHAIN_DECLARE, FILL, ELEM_DEL, ELEM_ADD, CHAIN_FLUSH, \
    CHAIN_DELETE, OBJ_DELETE = range(12)


@dataclass(frozen=True)
class Change:
    key: NftKey
    old: NftValue | None
    new: NftValue | None


def net_changes(ops: Sequence[Op]) -> list[Change]:
    """One change per key: what exists before the batch → what should exist after it."""
    first: dict[NftKey, NftValue | None] = {}
    last: dict[NftKey, NftValue | None] = {}
    for op in ops:
        key = op.key
        if key not in first:
            first[key] = op.value if op.kind is OpKind.DELETE else op.old
        last[key] = None if op.kind is OpKind.DELETE else op.value
    return [Change(k, first[k], last[k]) for k in first]


def build_script(table: str, changes: Iterable[Change]) -> str:
    """The nft commands for ``changes`` (empty when nothing needs writing)."""
    t = f"inet {table}"
    phases: list[list[str]] = [[] for _ in range(OBJ_DELETE + 1)]
    for ch in changes:
        old, new = ch.old, ch.new
        if new is None and old is None:
            continue
        kind, name = ch.key.kind, ch.key.name
        if kind == "set":
            _set(t, name, old, new, phases)  # type: ignore[arg-type]
        elif kind == "map":
            _map(t, name, old, new, phases)  # type: ignore[arg-type]
        elif kind == "chain":
            _chain(t, name, old, new, phases)  # type: ignore[arg-type]
        elif kind == "elem":
            _elem(t, name, ch.key.elem, old, new, phases)  # type: ignore[arg-type]
        else:
            raise ValueError(f"unknown nft key kind {kind!r}")
    if not any(phases):
        return ""
    if any(phases[p] for p in (REDECLARE, DECLARE, CHAIN_DECLARE)):
        phases[TABLE].append(f"add table {t}")
    return "".join(line + "\n" for phase in phases for line in phase)


def _elements(t: str, verb: str, name: str, elements: Iterable[str], out: list[str]) -> None:
    items = sorted(elements)
    for i in range(0, len(items), ELEMENT_CHUNK):
        out.append(f"{verb} element {t} {name} {{ {', '.join(items[i:i + ELEMENT_CHUNK])} }}")


def _set(t: str, name: str, old: NftSet | None, new: NftSet | None, ph: list[list[str]]) -> None:
    if new is None:
        ph[OBJ_DELETE].append(f"delete set {t} {name}")
        return
    if old is None or old.decl != new.decl:
        phase = DECLARE if old is None else REDECLARE
        if old is not None:
            ph[phase].append(f"delete set {t} {name}")
        ph[phase].append(f"add set {t} {name} {new.decl.render()}")
        if not new.decl.dynamic:
            _elements(t, "add", name, new.elements, ph[SET_ADD])
        return
    if new.decl.dynamic:
        return
    _elements(t, "delete", name, old.elements - new.elements, ph[SET_DEL])
    _elements(t, "add", name, new.elements - old.elements, ph[SET_ADD])


def _map(t: str, name: str, old: NftMap | None, new: NftMap | None, ph: list[list[str]]) -> None:
    if new is None:
        ph[OBJ_DELETE].append(f"delete map {t} {name}")
    elif old is None:
        ph[DECLARE].append(f"add map {t} {name} {new.render()}")
    elif old != new:
        ph[REDECLARE] += [f"delete map {t} {name}", f"add map {t} {name} {new.render()}"]


def _chain(t: str, name: str, old: Chain | None, new: Chain | None, ph: list[list[str]]) -> None:
    if new is None:
        ph[CHAIN_FLUSH].append(f"flush chain {t} {name}")
        ph[CHAIN_DELETE].append(f"delete chain {t} {name}")
        return
    hook = f" {new.hook.render()}" if new.hook else ""
    if old is None:
        ph[CHAIN_DECLARE].append(f"add chain {t} {name}{hook}")
    elif old.hook != new.hook:
        ph[REDECLARE] += [f"flush chain {t} {name}", f"delete chain {t} {name}",
                          f"add chain {t} {name}{hook}"]
    elif old.digests == new.digests:
        return            # unchanged (e.g. re-created by the planner only to drop a reference)
    else:
        ph[FILL].append(f"flush chain {t} {name}")
    for rule, d in zip(new.rules, new.digests):
        ph[FILL].append(f'add rule {t} {name} {rule} comment "{COMMENT_PREFIX}{d}"')


def _elem(t: str, map_name: str, key: str, old: Element | None, new: Element | None,
          ph: list[list[str]]) -> None:
    if old is not None and old != new:
        ph[ELEM_DEL].append(f"delete element {t} {map_name} {{ {key} }}")
    if new is not None and old != new:
        ph[ELEM_ADD].append(f"add element {t} {map_name} {{ {key} : {new.verdict} }}")
