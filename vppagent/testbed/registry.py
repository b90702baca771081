"""A record of every live testbed, so one killed with SIGKILL is cleaned up by the next.

``close()`` removes a testbed's namespaces, agent and files; but a process
killed outright (a CI timeout, ``kill -9`` on the demo) never gets there. Each
testbed therefore keeps a small JSON record under ``/run/vppagent-testbed``
(tmpfs: gone at reboot) naming its owner pid, agent pid, namespaces and
scratch directory; ``reap_stale()`` undoes the records whose owner is dead.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

REGISTRY = Path(os.environ.get("VPPAGENT_TESTBED_REGISTRY", "/run/vppagent-testbed"))


@dataclass
class Record:
    token: str
    pid: int
    tmp: str
    netns: list[str] = field(default_factory=list)
    agent_pid: int | None = None
    started: str = field(default_factory=lambda: start_time(os.getpid()))

    def save(self) -> None:
        """Best effort: without the registry only crash clean-up is lost."""
        path = REGISTRY / f"{self.token}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        with contextlib.suppress(OSError):
            REGISTRY.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(asdict(self)))
            os.replace(tmp, path)

    def set_netns(self, names: list[str]) -> None:
        """The namespaces now held (a ``Namespaces`` on_change callback); saved."""
        self.netns = names
        self.save()

    def set_agent_pid(self, pid: int | None) -> None:
        """The agent process now running, or None (an ``AgentRunner`` on_pid callback); saved."""
        self.agent_pid = pid
        self.save()

    def drop(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (REGISTRY / f"{self.token}.json").unlink()


def start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ("" if it is gone).

    A pid alone is not an identity: pids are reused, so a record also keeps
    this and a live process with another start time is someone else.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, started: str) -> bool:
    now = start_time(pid)
    return bool(now) and (not started or now == started)


def _is_agent(pid: int, tmp: str) -> bool:
    """Only the agent this testbed started is ever killed: its command line
    names the testbed's own scratch directory (its config lives there)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    args = cmdline.split(b"\0")
    return b"vppagent" in cmdline and (b"run" in args or b"sync" in args) and tmp.encode() in cmdline


def reap_stale() -> list[str]:
    """Undo the testbeds whose owner process is gone; returns the tokens reaped."""
    reaped: list[str] = []
    if not REGISTRY.is_dir():
        return reaped
    for path in REGISTRY.glob("*.json"):
        try:
            rec = Record(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if _alive(rec.pid, rec.started):
            continue
        if rec.agent_pid and _is_agent(rec.agent_pid, rec.tmp):
            with contextlib.suppress(OSError):
                os.kill(rec.agent_pid, signal.SIGKILL)
        for name in rec.netns:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        shutil.rmtree(rec.tmp, ignore_errors=True)
        rec.drop()
        reaped.append(rec.token)
    return reaped
