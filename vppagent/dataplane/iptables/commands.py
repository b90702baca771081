"""Running the kernel tools, optionally inside a network namespace.

Every command the dataplane runs goes through one ``Runner`` so a config (or a
test) can point the whole dataplane at a namespace (``ip netns exec NAME``).
"""

from __future__ import annotations

import subprocess
from typing import Sequence


class CommandError(RuntimeError):
    """A tool exited non-zero; the message carries its stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(f"{' '.join(self.argv[:3])}: exit {returncode}: {self.stderr or '(no output)'}")


class Runner:
    def __init__(self, netns: str | None = None, timeout: float = 120.0) -> None:
        self.netns = netns
        self.timeout = timeout

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)

    def run(self, argv: Sequence[str], input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run(self.argv(argv), input=input, capture_output=True, text=True,
                                  timeout=self.timeout)
        except FileNotFoundError as exc:
            raise CommandError(argv, 127, str(exc)) from None
        except subprocess.TimeoutExpired:
            raise CommandError(argv, -1, f"timed out after {self.timeout:g}s") from None
        if check and proc.returncode != 0:
            raise CommandError(argv, proc.returncode, proc.stderr)
        return proc
