"""Which iptables backend (nft or legacy) the node uses, and its tools.

Like kube-proxy's iptables wrapper: whichever backend already holds rules
(ours first, then anybody's) is the one in use; an empty system gets nft,
Debian's default. Mixing backends would leave two firewalls that each see
half the rules.
"""

from __future__ import annotations

import re

from vppagent.dataplane.iptables.commands import CommandError, Runner

BACKENDS = ("nft", "legacy")


class Iptables:
    """``iptables-<backend>-save``/``-restore`` for both families."""

    def __init__(self, runner: Runner, backend: str) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown iptables backend {backend!r}")
        self.runner = runner
        self.backend = backend

    def tool(self, family: int, what: str) -> str:
        return f"{'ip6' if family == 6 else 'ip'}tables-{self.backend}-{what}"

    def save(self, family: int, table: str | None = None, counters: bool = False) -> str:
        argv = [self.tool(family, "save")]
        if table:
            argv += ["-t", table]
        if counters:
            argv.append("-c")
        return self.runner.run(argv).stdout

    def restore(self, family: int, text: str) -> None:
        """One transaction (``--noflush``: only the chains named are touched)."""
        argv = [self.tool(family, "restore"), "--noflush", "--wait"]
        try:
            self.runner.run(argv, input=text)
        except CommandError as exc:
            m = re.search(r"line (\d+) failed", exc.stderr)
            if m:
                lines = text.splitlines()
                n = int(m.group(1))
                if 0 < n <= len(lines):
                    raise CommandError(exc.argv, exc.returncode, f"{exc.stderr}: {lines[n - 1]}") from None
            raise


def _census(runner: Runner, backend: str) -> tuple[bool, int]:
    """(has cali- chains, number of rules) in one backend, both families."""
    ours, rules = False, 0
    for family in (4, 6):
        try:
            text = Iptables(runner, backend).save(family)
        except CommandError:
            continue
        for line in text.splitlines():
            if line.startswith(":cali-"):
                ours = True
            elif line.startswith("-A "):
                rules += 1
    return ours, rules


def detect_backend(runner: Runner) -> str:
    legacy = _census(runner, "legacy")
    nft = _census(runner, "nft")
    return "legacy" if legacy > nft else "nft"
