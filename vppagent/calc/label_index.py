"""Which labelled items match which selectors, maintained incrementally.

A change to one item or one selector must cost O(affected), not O(total): each
selector is anchored on a label it cannot match without (``k == v``, ``k in
{..}`` or ``has(k)`` at the top of a conjunction); only items carrying the
anchor are evaluated when a selector arrives, and only selectors anchored on
one of an item's labels (plus the few with no anchor) when an item changes.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Generic, Hashable, Mapping, TypeVar

from vppagent.selector import Selector
from vppagent.selector.ast import And, Equals, Has, In

I = TypeVar("I", bound=Hashable)
S = TypeVar("S", bound=Hashable)

Labels = Mapping[str, str]
# ("kv", ((k, v), ...)) | ("key", k) | ("scan", None)
Anchor = tuple[str, object]
SCAN: Anchor = ("scan", None)


def _candidate_anchors(selector: Selector) -> list[Anchor]:
    if isinstance(selector, Equals):
        return [("kv", ((selector.key, selector.value),))]
    if isinstance(selector, In) and selector.values:
        return [("kv", tuple((selector.key, v) for v in sorted(selector.values)))]
    if isinstance(selector, Has):
        return [("key", selector.key)]
    if isinstance(selector, And):
        out: list[Anchor] = []
        for operand in selector.operands:
            out.extend(_candidate_anchors(operand))
        return out
    return []


class LabelIndex(Generic[I, S]):
    """Bidirectional match index with match/unmatch callbacks."""

    def __init__(self, on_match: Callable[[S, I], None], on_unmatch: Callable[[S, I], None]) -> None:
        self._on_match = on_match
        self._on_unmatch = on_unmatch
        self.items: dict[I, Labels] = {}
        self.selectors: dict[S, Selector] = {}
        self.matches_by_selector: dict[S, set[I]] = defaultdict(set)
        self.matches_by_item: dict[I, set[S]] = defaultdict(set)
        self._items_by_kv: dict[tuple[str, str], set[I]] = defaultdict(set)
        self._items_by_key: dict[str, set[I]] = defaultdict(set)
        self._sels_by_kv: dict[tuple[str, str], set[S]] = defaultdict(set)
        self._sels_by_key: dict[str, set[S]] = defaultdict(set)
        self._sels_scan: set[S] = set()
        self._anchor: dict[S, Anchor] = {}
        self.evaluations = 0  # for benchmarks: how much work changes cost

    # -- anchors ----------------------------------------------------------------

    def _anchor_cost(self, anchor: Anchor) -> int:
        kind, value = anchor
        if kind == "kv":
            return sum(len(self._items_by_kv.get(kv, ())) for kv in value)  # type: ignore[union-attr]
        if kind == "key":
            return len(self._items_by_key.get(value, ()))  # type: ignore[arg-type]
        return len(self.items)

    def _choose_anchor(self, selector: Selector) -> Anchor:
        anchors = _candidate_anchors(selector)
        if not anchors:
            return SCAN
        return min(anchors, key=self._anchor_cost)

    def _index_selector(self, sid: S, anchor: Anchor) -> None:
        kind, value = anchor
        if kind == "kv":
            for kv in value:  # type: ignore[union-attr]
                self._sels_by_kv[kv].add(sid)
        elif kind == "key":
            self._sels_by_key[value].add(sid)  # type: ignore[index]
        else:
            self._sels_scan.add(sid)

    def _unindex_selector(self, sid: S, anchor: Anchor) -> None:
        kind, value = anchor
        if kind == "kv":
            for kv in value:  # type: ignore[union-attr]
                bucket = self._sels_by_kv.get(kv)
                if bucket is not None:
                    bucket.discard(sid)
                    if not bucket:
                        del self._sels_by_kv[kv]
        elif kind == "key":
            bucket = self._sels_by_key.get(value)  # type: ignore[arg-type]
            if bucket is not None:
                bucket.discard(sid)
                if not bucket:
                    del self._sels_by_key[value]  # type: ignore[arg-type]
        else:
            self._sels_scan.discard(sid)

    def _candidate_items(self, anchor: Anchor) -> set[I] | list[I]:
        kind, value = anchor
        if kind == "kv":
            out: set[I] = set()
            for kv in value:  # type: ignore[union-attr]
                out |= self._items_by_kv.get(kv, set())
            return out
        if kind == "key":
            return self._items_by_key.get(value, set())  # type: ignore[arg-type]
        return list(self.items)

    def _candidate_selectors(self, labels: Labels) -> set[S]:
        out = set(self._sels_scan)
        by_kv, by_key = self._sels_by_kv, self._sels_by_key
        for kv in labels.items():
            bucket = by_kv.get(kv)
            if bucket:
                out |= bucket
            bucket = by_key.get(kv[0])
            if bucket:
                out |= bucket
        return out

    # -- selectors ----------------------------------------------------------------

    def update_selector(self, sid: S, selector: Selector) -> None:
        old = self.selectors.get(sid)
        if old == selector:
            return
        if old is not None:
            self._unindex_selector(sid, self._anchor.pop(sid))
        anchor = self._choose_anchor(selector)
        self.selectors[sid] = selector
        self._anchor[sid] = anchor
        self._index_selector(sid, anchor)
        match = selector.matcher
        items = self.items
        new: set[I] = set()
        for item in self._candidate_items(anchor):
            self.evaluations += 1
            if match(items[item]):
                new.add(item)
        previous = self.matches_by_selector.get(sid, set())
        for item in previous - new:
            self._unmatch(sid, item)
        for item in new - previous:
            self._match(sid, item)

    def remove_selector(self, sid: S) -> None:
        if sid not in self.selectors:
            return
        del self.selectors[sid]
        self._unindex_selector(sid, self._anchor.pop(sid))
        for item in list(self.matches_by_selector.get(sid, ())):
            self._unmatch(sid, item)
        self.matches_by_selector.pop(sid, None)

    # -- items ------------------------------------------------------------------

    def update_item(self, iid: I, labels: Labels) -> None:
        old = self.items.get(iid)
        if old is not None:
            if old == labels:
                return
            self._unindex_item(iid, old)
        self.items[iid] = labels
        for kv in labels.items():
            self._items_by_kv[kv].add(iid)
            self._items_by_key[kv[0]].add(iid)
        new: set[S] = set()
        selectors = self.selectors
        for sid in self._candidate_selectors(labels):
            self.evaluations += 1
            if selectors[sid].matcher(labels):
                new.add(sid)
        previous = self.matches_by_item.get(iid, set())
        for sid in previous - new:
            self._unmatch(sid, iid)
        for sid in new - previous:
            self._match(sid, iid)

    def remove_item(self, iid: I) -> None:
        old = self.items.pop(iid, None)
        if old is None:
            return
        self._unindex_item(iid, old)
        for sid in list(self.matches_by_item.get(iid, ())):
            self._unmatch(sid, iid)
        self.matches_by_item.pop(iid, None)

    def _unindex_item(self, iid: I, labels: Labels) -> None:
        for kv in labels.items():
            for index, key in ((self._items_by_kv, kv), (self._items_by_key, kv[0])):
                bucket = index.get(key)  # type: ignore[attr-defined]
                if bucket is not None:
                    bucket.discard(iid)
                    if not bucket:
                        del index[key]  # type: ignore[attr-defined]

    # -- match bookkeeping ----------------------------------------------------------

    def _match(self, sid: S, iid: I) -> None:
        self.matches_by_selector[sid].add(iid)
        self.matches_by_item[iid].add(sid)
        self._on_match(sid, iid)

    def _unmatch(self, sid: S, iid: I) -> None:
        self.matches_by_selector[sid].discard(iid)
        self.matches_by_item[iid].discard(sid)
        self._on_unmatch(sid, iid)

    def matches(self, sid: S) -> set[I]:
        return self.matches_by_selector.get(sid, set())

    def selected_by(self, iid: I) -> set[S]:
        return self.matches_by_item.get(iid, set())
