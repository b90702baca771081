"""Dependency ordering of a set of keys.

Only edges inside the set matter; ties (and cycle members, which can never be
satisfied and are appended last) are broken by ``key_order`` so that the same
inputs always give the same op sequence.
"""

from __future__ import annotations

import heapq
from typing import Callable, Iterable

from vppagent.reconciler.kv import Key, key_order


def topo_order(
    nodes: Iterable[Key],
    deps: Callable[[Key], Iterable[Key]],
    *,
    dependents_first: bool = False,
) -> list[Key]:
    """Order ``nodes`` so dependencies come first (or last, for deletes)."""
    ordered = sorted(set(nodes), key=key_order)
    rank = {n: i for i, n in enumerate(ordered)}
    waits: dict[Key, int] = {n: 0 for n in ordered}
    unlocks: dict[Key, list[Key]] = {n: [] for n in ordered}
    for n in ordered:
        for d in set(deps(n)):
            if d not in rank or d == n:
                continue
            first, then = (n, d) if dependents_first else (d, n)
            waits[then] += 1
            unlocks[first].append(then)
    heap = [rank[n] for n in ordered if waits[n] == 0]
    heapq.heapify(heap)
    out: list[Key] = []
    while heap:
        n = ordered[heapq.heappop(heap)]
        out.append(n)
        for m in unlocks[n]:
            waits[m] -= 1
            if waits[m] == 0:
                heapq.heappush(heap, rank[m])
    if len(out) < len(ordered):
        done = set(out)
        out.extend(n for n in ordered if n not in done)
    return out
