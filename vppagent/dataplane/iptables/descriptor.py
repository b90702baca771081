"""The reconciler's view of the kernel: chains, hooks and IP sets as keys.

One descriptor owns all three kinds so that one commit is one batch:

1. one ``ipset restore`` creating and updating sets (rules may need them);
2. one ``iptables-restore --noflush`` per (family, table) with every changed
   chain of that table: all or nothing, so a bad rule never half-applies;
3. one ``ipset restore`` destroying sets no rule references any more (their
   users were rewritten in step 2; if that failed the destroy fails too and
   is retried: deletion is deferred until nothing references the set).

Keys carry no dependencies on purpose: a firewall must never be torn down
because something it references is late (the engine deletes existing
dependents of a missing dependency). The renderer guarantees references only
to things that are desired, and the steps above order the writes.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from vppagent.dataplane.iptables.backend import Iptables
from vppagent.dataplane.iptables.commands import CommandError, Runner
from vppagent.dataplane.iptables.ipsets import destroy_script, write_script
from vppagent.dataplane.iptables.model import TABLES, AnyKey, ChainKey, HookKey, IPSetKey, IPSetValue, Rules
from vppagent.dataplane.iptables.readback import owned_chains, parse_ipset_save, parse_save, rule_hash
from vppagent.reconciler import Descriptor, Op, OpKind

log = logging.getLogger(__name__)


def _is_kernel_key(key: object) -> bool:
    return isinstance(key, (ChainKey, HookKey, IPSetKey))


@dataclass
class _Change:
    """The net effect of a batch's ops on one key."""

    key: AnyKey
    before: Any          # value believed to exist (None: absent)
    after: Any           # value wanted (None: delete)
    indexes: list[int]


class KernelDescriptor(Descriptor[AnyKey, Any]):
    name = "iptables"
    kind = staticmethod(_is_kernel_key)

    def __init__(self, runner: Runner, families: Sequence[int],
                 tools: Callable[[], Iptables]) -> None:
        super().__init__()
        self.runner = runner
        self.families = tuple(families)
        self._tools = tools
        self.restores = 0          # iptables-restore calls made (introspection, tests)
        self.ipset_calls = 0

    # -- reading ---------------------------------------------------------------------

    def dump(self) -> Mapping[AnyKey, tuple[Any, Any]]:
        out: dict[AnyKey, tuple[Any, Any]] = {}
        tools = self._tools()
        for family in self.families:
            for key, rules in owned_chains(family, parse_save(tools.save(family))):
                out[key] = (rules, None)
        text = self.runner.run(["ipset", "save"]).stdout
        for key, value in parse_ipset_save(text).items():
            if key.family in self.families:
                out[key] = (value, None)
        return out

    def equivalent(self, key: AnyKey, desired: Any, actual: Any) -> bool:
        if isinstance(desired, Rules) and isinstance(actual, Rules):
            return desired.hashes == actual.hashes
        return bool(desired == actual)

    # -- writing ---------------------------------------------------------------------

    def create(self, key: AnyKey, value: Any) -> None:
        return self._single(Op(OpKind.CREATE, key, value))

    def update(self, key: AnyKey, old: Any, new: Any, metadata: Any) -> None:
        return self._single(Op(OpKind.UPDATE, key, new, old=old, metadata=metadata))

    def delete(self, key: AnyKey, value: Any, metadata: Any) -> None:
        self._single(Op(OpKind.DELETE, key, value, metadata=metadata))

    def _single(self, op: Op) -> None:
        result = self.batch_apply([op])[0]
        if isinstance(result, BaseException):
            raise result
        return None

    def batch_apply(self, ops: Sequence[Op]) -> list[Any]:
        results: list[Any] = [None] * len(ops)
        changes = self._net_changes(ops)

        def fail(change: _Change, exc: BaseException) -> None:
            for i in change.indexes:
                results[i] = exc

        set_writes = [c for c in changes if isinstance(c.key, IPSetKey) and c.after is not None]
        set_deletes = [c for c in changes if isinstance(c.key, IPSetKey) and c.after is None]
        by_table: dict[tuple[int, str], list[_Change]] = defaultdict(list)
        for c in changes:
            if not isinstance(c.key, IPSetKey):
                by_table[(c.key.family, c.key.table)].append(c)

        for change, exc in self._write_sets(set_writes):
            fail(change, exc)
        for (family, table), group in sorted(by_table.items(), key=lambda kv: (kv[0][0], TABLES.index(kv[0][1]))):
            try:
                self._restore_table(family, table, group)
            except Exception as exc:   # the whole table transaction failed: nothing changed
                log.warning("iptables-restore (IPv%d %s) failed: %s", family, table, exc)
                for c in group:
                    fail(c, exc)
        for change, exc in self._destroy_sets(set_deletes):
            fail(change, exc)
        return results

    def _net_changes(self, ops: Sequence[Op]) -> list[_Change]:
        """Fold each key's ops (e.g. delete + re-create) into one change."""
        changes: dict[AnyKey, _Change] = {}
        for i, op in enumerate(ops):
            c = changes.get(op.key)
            if c is None:
                before = None if op.kind is OpKind.CREATE else (op.old if op.kind is OpKind.UPDATE else op.value)
                c = changes[op.key] = _Change(op.key, before, None, [])
            c.after = None if op.kind is OpKind.DELETE else op.value
            c.indexes.append(i)
        return list(changes.values())

    # -- IP sets ---------------------------------------------------------------------------

    def _ipset_restore(self, lines: list[str]) -> None:
        if lines:
            self.ipset_calls += 1
            self.runner.run(["ipset", "restore", "-exist"], input="\n".join(lines) + "\n")

    def _write_sets(self, changes: list[_Change]) -> list[tuple[_Change, BaseException]]:
        scripts = {}
        for c in changes:
            before = c.before if isinstance(c.before, IPSetValue) else None
            scripts[c.key] = write_script(c.key, c.after, before)   # type: ignore[arg-type]
        try:
            self._ipset_restore([line for c in changes for line in scripts[c.key]])
            return []
        except CommandError:
            pass
        failed = []
        for c in changes:   # isolate the culprit(s); a set that vanished is rebuilt whole
            try:
                self._ipset_restore(scripts[c.key])
            except CommandError:
                try:
                    self._ipset_restore(write_script(c.key, c.after, None))   # type: ignore[arg-type]
                except CommandError as exc:
                    failed.append((c, exc))
        return failed

    def _destroy_sets(self, changes: list[_Change]) -> list[tuple[_Change, BaseException]]:
        if not changes:
            return []
        existing = set(parse_ipset_names(self.runner.run(["ipset", "list", "-n"]).stdout))
        present = [c for c in changes if c.key.name in existing]   # type: ignore[union-attr]
        try:
            self._ipset_restore([line for c in present for line in destroy_script(c.key)])   # type: ignore[arg-type]
            return []
        except CommandError:
            pass
        failed = []
        for c in present:
            try:
                self._ipset_restore(destroy_script(c.key))   # type: ignore[arg-type]
            except CommandError as exc:
                failed.append((c, CommandError(exc.argv, exc.returncode,
                                               f"{exc.stderr} (still referenced? destroy deferred)")))
        return failed

    # -- tables ------------------------------------------------------------------------------

    def _restore_table(self, family: int, table: str, group: list[_Change]) -> None:
        effective = [c for c in group if not _unchanged(c)]
        if not effective:
            return
        tools = self._tools()
        live: dict[str, list[str]] = {}
        if any(isinstance(c.key, HookKey) for c in effective):
            live = parse_save(tools.save(family, table)).get(table, {})
        declares, removals, appends, inserts, deletes = [], [], [], [], []
        for c in sorted(effective, key=lambda c: c.key.chain):
            chain = c.key.chain
            if isinstance(c.key, ChainKey):
                declares.append(f":{chain} - [0:0]")     # creates, or flushes an existing chain
                if c.after is None:
                    deletes.append(f"-X {chain}")
                else:
                    appends += c.after.lines("-A", chain)
            else:
                removals += [f"-D {chain} {body}" for body in live.get(chain, []) if rule_hash(body)]
                if c.after is not None:
                    inserts += c.after.lines("-I", chain)
        text = "\n".join([f"*{table}", *declares, *removals, *appends, *inserts, *deletes, "COMMIT", ""])
        self.restores += 1
        tools.restore(family, text)


def _unchanged(c: _Change) -> bool:
    """A delete + re-create of identical rules (engine cascades): nothing to write."""
    return (isinstance(c.before, Rules) and isinstance(c.after, Rules)
            and c.before.hashes == c.after.hashes and len(c.indexes) > 1)


def parse_ipset_names(text: str) -> Iterable[str]:
    return (line.strip() for line in text.splitlines() if line.strip())
