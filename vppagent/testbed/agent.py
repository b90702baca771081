"""The agent under test: ``vppagent run`` inside the node netns, or an in-process Agent on a thread.

A dataplane *type name* runs the real daemon as a subprocess (what a node
runs); a *factory* (a callable returning a ``Dataplane``) runs ``Agent`` on a
thread that entered the node netns, for dataplanes not in the registry.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from vppagent.cni import h2grpc
from vppagent.dataplane.linux.netlink_ns import open_netns, spawn_in_netns

PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent.parent
SERVING = b"\x08\x01"        # grpc.health.v1.HealthCheckResponse{status: SERVING}


class AgentRunner:
    """Start, stop, kill and wait for one node's agent; ``on_pid`` hears the subprocess pid."""

    def __init__(self, netns: str, config_path: Path, socket: str, log: Path,
                 dataplane: str | Callable[[], Any], on_pid: Callable[[int | None], None] | None = None,
                 command: list[str] | None = None) -> None:
        """``command``: the vppagent arguments (default ``run --config <config_path>``); with
        ``netns`` empty the process runs in the caller's netns (the sync layer does)."""
        self.netns, self.config_path, self.socket, self.log = netns, config_path, socket, log
        self.command = command or ["run", "--config", str(config_path)]
        self.dataplane = dataplane
        self.process: subprocess.Popen | None = None
        self.agent_obj: Any = None
        self._thread: threading.Thread | None = None
        self._on_pid = on_pid or (lambda pid: None)

    @property
    def running(self) -> bool:
        return (self.process is not None and self.process.poll() is None) or self._thread is not None

    def start(self, timeout: float = 30.0) -> None:
        """Start the agent and wait until its gRPC health check says SERVING."""
        if self.running:
            raise RuntimeError("the agent is already running")
        if callable(self.dataplane):
            self._start_thread()
        else:
            with open(self.log, "ab") as log:
                prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
                self.process = subprocess.Popen(
                    [*prefix, PYTHON, "-m", "vppagent", *self.command],
                    cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    env=dict(os.environ, PYTHONUNBUFFERED="1"),
                )
            self._on_pid(self.process.pid)
        self.wait_ready(timeout)

    def _start_thread(self) -> None:
        from vppagent.agent.config import load_config
        from vppagent.agent.daemon import Agent

        agent = Agent(load_config(self.config_path), dataplane=self.dataplane())  # type: ignore[operator]
        fd = open_netns(self.netns)
        try:
            self._thread = spawn_in_netns(fd, lambda: agent.run(install_signals=False), "agent")
        finally:
            os.close(fd)
        self.agent_obj = agent

    def _stop_thread(self, timeout: float) -> None:
        if self._thread is not None:
            self.agent_obj.stop()
            self._thread.join(timeout)
            self._thread, self.agent_obj = None, None

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the agent exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            if self._thread is not None and not self._thread.is_alive():
                raise RuntimeError("the in-process agent stopped (see the test log)")
            if self.healthy():
                return
            time.sleep(0.02)
        raise TimeoutError(f"the agent was not ready within {timeout:g} s:\n{self.log_text()[-3000:]}")

    def healthy(self) -> bool:
        try:
            return h2grpc.call(self.socket, "/grpc.health.v1.Health/Check", b"", 2.0) == SERVING
        except (h2grpc.Unreachable, h2grpc.RpcError, OSError):
            return False

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (the dataplane stays programmed); SIGKILL after ``timeout``. Returns the exit code."""
        self._stop_thread(timeout)
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        code, self.process = self.process.returncode, None
        self._on_pid(None)
        return code

    def kill(self) -> None:
        """SIGKILL: the agent dies without any cleanup (in-process: a plain stop)."""
        self._stop_thread(5)
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(5)
            self.process = None
            self._on_pid(None)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
