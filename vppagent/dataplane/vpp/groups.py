"""Keys produced by several owners, and their late deletion.

Interfaces share npol policies, ipsets and ACLs (they are content-addressed
or named after the update stream's sets).  A shared key stays desired while
one owner produces it.  When the last owner lets go it is *retired*, not
deleted: VPP must first stop using it (the interface switches to the new
policy, the policy that referenced a set is deleted), so ``collect`` deletes
a retired key only once nothing that exists or is wanted depends on it —
Felix defers IP set deletions the same way.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Mapping

from vppagent.reconciler import Reconciler

Owner = Hashable


class KeyGroups:
    def __init__(self, reconciler: Callable[[], Reconciler]) -> None:
        self._r = reconciler
        self.groups: dict[Owner, dict[Any, Any]] = {}
        self.owners: dict[Any, set[Owner]] = {}
        self.retired: set[Any] = set()

    def set_group(self, owner: Owner, items: Mapping[Any, Any]) -> None:
        r = self._r()
        old = self.groups.pop(owner, {})
        for key in old.keys() - items.keys():
            owners = self.owners.get(key)
            if owners is not None:
                owners.discard(owner)
                if not owners:
                    del self.owners[key]
                    if key in r.actual_map:
                        self.retired.add(key)
                    else:
                        r.delete(key)          # never written: nothing can be using it
        for key, value in items.items():
            self.owners.setdefault(key, set()).add(owner)
            self.retired.discard(key)
            r.set(key, value)
        if items:
            self.groups[owner] = dict(items)

    def drop_group(self, owner: Owner) -> None:
        self.set_group(owner, {})

    def update_value(self, key: Any, value: Any) -> None:
        """A new value for a key some owner produces (e.g. new ipset members)."""
        for owner in self.owners.get(key, ()):
            self.groups[owner][key] = value
        self._r().set(key, value)

    def keys(self) -> set[Any]:
        return set(self.owners)

    def collect(self) -> int:
        """Delete retired keys nothing depends on any more; returns how many."""
        r = self._r()
        total = 0
        while self.retired:
            blocked: set[Any] = set()
            for key in self.retired:
                blocked |= r.desired_deps(key)
            for key in self.owners:
                blocked |= r.desired_deps(key)
            ready = [k for k in self.retired if k not in blocked and not list(r.actual_dependents(k))]
            if not ready:
                break
            for key in ready:
                self.retired.discard(key)
                r.delete(key)
            total += len(ready)
            r.commit()
        return total

    def reset(self) -> None:
        """Forget retirements (a new reconciler starts from desired state only)."""
        for key in list(self.retired):
            self._r().delete(key)
        self.retired.clear()
