"""Compiling jumps away: every ``Goto`` becomes the entries it would reach.

A jumping entry ``m → Goto(L)`` is replaced by ``m ∧ c → verdict(c)`` for
every entry ``c`` of the continuation at ``L`` (which always ends with a
catch-all, so every packet ``m`` matches is decided).  Engines with one
native jump (npol: PASS to the profiles) keep jumps to that label as the
verdict ``pass``.
"""

from __future__ import annotations

from typing import Callable

from vppagent.dataplane.vpp.match import ANY, Match
from vppagent.dataplane.vpp.program import Goto, Program

PASS = "pass"
Flat = list[tuple[Match, str]]


class Resolver:
    """Resolved entries per segment of one program, memoised."""

    def __init__(self, program: Program, native: str | None = None) -> None:
        self.program = program
        self.segments = program.all_segments
        self.label_at = dict(program.labels)
        self.native_at = self.label_at.get(native) if native is not None else None
        self._seg: dict[int, Flat] = {}
        self._cont: dict[int, Flat] = {}

    def segment(self, i: int) -> Flat:
        """Segment ``i``'s entries with every jump resolved."""
        if i not in self._seg:
            out: Flat = []
            for e in self.segments[i].entries:
                if not isinstance(e.action, Goto):
                    out.append((e.match, e.action))
                    if e.match == ANY:
                        break
                    continue
                j = self.label_at[e.action.label]
                if j == self.native_at:
                    out.append((e.match, PASS))
                    continue
                for m, verdict in self.continuation(j):
                    both = e.match.conj(m)
                    if both is not None:
                        out.append((both, verdict))
                if e.match == ANY:
                    break
            self._seg[i] = out
        return self._seg[i]

    def continuation(self, j: int) -> Flat:
        """Everything evaluated from segment ``j`` on, up to a catch-all."""
        if j not in self._cont:
            out: Flat = []
            k = j
            while k < len(self.segments):
                if k == self.native_at:
                    out.append((ANY, PASS))
                    break
                done = False
                for m, verdict in self.segment(k):
                    out.append((m, verdict))
                    if m == ANY:
                        done = True
                        break
                if done:
                    break
                k += 1
            self._cont[j] = out
        return self._cont[j]


def flatten(program: Program, keep: Callable[[Match], bool] | None = None) -> Flat:
    """The whole program as one first-match list of allow/deny entries."""
    flat = Resolver(program).continuation(0)
    return [(m, v) for m, v in flat if keep is None or keep(m)]
