"""Running ``nft`` and ``conntrack``, optionally inside a network namespace.

All kernel access of the nftables dataplane goes through one ``CommandRunner``
so tests can point it at a namespace they created (``netns``), record what
was sent, or inject failures, without the rendering code knowing.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from typing import Any, Sequence


class NftError(RuntimeError):
    """``nft`` refused a command; the kernel is unchanged (transactions are atomic)."""


@dataclass
class CommandRunner:
    """Runs commands, prefixed with ``ip netns exec NAME`` when ``netns`` is set."""

    netns: str | None = None
    nft: str = "nft"
    conntrack: str = "conntrack"
    timeout: float = 60.0

    def _argv(self, argv: Sequence[str]) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return prefix + list(argv)

    def run(self, argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._argv(argv), input=stdin, capture_output=True, text=True,
                              timeout=self.timeout, check=False)

    def nft_apply(self, script: str) -> None:
        """Apply ``script`` as one atomic transaction."""
        proc = self.run([self.nft, "-f", "-"], stdin=script)
        if proc.returncode != 0:
            raise NftError(_first_lines(proc.stderr or proc.stdout or f"nft exited {proc.returncode}"))

    def nft_list_table(self, family: str, table: str) -> list[dict[str, Any]] | None:
        """The table's objects as nft JSON (``None`` when the table does not exist)."""
        proc = self.run([self.nft, "-j", "list", "table", family, table])
        if proc.returncode != 0:
            if "No such file or directory" in proc.stderr:
                return None
            raise NftError(_first_lines(proc.stderr or f"nft exited {proc.returncode}"))
        return list(json.loads(proc.stdout or '{"nftables": []}').get("nftables", []))

    def conntrack_delete(self, args: Sequence[str]) -> int:
        """Delete matching conntrack entries; returns how many (0 is not an error)."""
        proc = self.run([self.conntrack, "-D", *args])
        text = proc.stderr + proc.stdout
        found = re.search(r"(\d+) flow entries have been deleted", text)
        if found:
            return int(found.group(1))
        if proc.returncode != 0:
            raise RuntimeError(_first_lines(text or f"conntrack exited {proc.returncode}"))
        return 0


def _first_lines(text: str, limit: int = 6) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    more = f" (+{len(lines) - limit} more lines)" if len(lines) > limit else ""
    return " | ".join(lines[:limit]) + more
