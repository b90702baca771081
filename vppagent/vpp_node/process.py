"""One VPP process: start (optionally inside a network namespace), readiness, stop, cleanup.

Used by ``vppagent vpp run`` to supervise VPP and by tests to get a real VPP
from a rendered config::

    from vppagent.vpp_node.startup import start_vpp

    with start_vpp({"pageSize": "4k", "heapSize": "256M", "buffers": 8192}, tmp_path) as vpp:
        conn = vpp.connect()                  # a connected VppConnection
        ...                                   # vpp.api_socket, vpp.pid, vpp.cli("show int")
    # VPP is killed and its sockets, shm files and (owned) directory are gone

``start_vpp`` takes startup.conf text (socket paths are read from it), a
``NodeConfig`` or a raw ``vpp:`` mapping (rendered with every runtime path
moved into ``tmpdir``).  Ready means the process is alive and its API socket
accepts connections; a VPP that dies or stays silent raises ``VppStartError``
carrying the tail of its log, and nothing is left running.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

from vppagent.dataplane.linux.netlink_ns import open_netns, run_in_netns

POLL = 0.02


class VppStartError(RuntimeError):
    """VPP exited or did not become ready; the message ends with its log."""


class VppProcess:
    """A started VPP.  Context manager: ``close()`` on exit, always."""

    def __init__(self, proc: subprocess.Popen, *, conf_path: Path, api_socket: str,
                 stats_socket: str | None, cli_socket: str | None, log_file: str | None,
                 output_file: Path, api_prefix: str | None, workdir: Path | None,
                 binary: str, netns: str | None = None) -> None:
        self.proc = proc
        self.conf_path = conf_path
        self.api_socket = api_socket
        self.stats_socket = stats_socket
        self.cli_socket = cli_socket
        self.log_file = log_file
        self.output_file = output_file
        self.api_prefix = api_prefix
        self.binary = binary
        self.netns = netns
        self._workdir = workdir            # removed by close() when start_vpp created it

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def log_tail(self, chars: int = 3000) -> str:
        """The end of VPP's log and of its stdout/stderr."""
        parts = []
        for path in (self.log_file, str(self.output_file)):
            if path and os.path.exists(path):
                with contextlib.suppress(OSError):
                    parts.append(f"--- {path}\n" + Path(path).read_text(errors="replace")[-chars:])
        return "\n".join(parts)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll until the API socket accepts a connection."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise VppStartError(f"VPP exited with {self.proc.returncode} before it was ready\n"
                                    + self.log_tail())
            if _accepts(self.api_socket):
                return
            if time.monotonic() > deadline:
                raise VppStartError(f"VPP not ready after {timeout}s (no API socket at {self.api_socket})\n"
                                    + self.log_tail())
            time.sleep(POLL)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._cleanup_files()
        return self.proc.poll()

    def kill(self) -> None:
        """SIGKILL (a crash, for tests) and reap."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def close(self) -> None:
        """Stop VPP and remove everything ``start_vpp`` created."""
        try:
            self.stop()
        finally:
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)

    def _cleanup_files(self) -> None:
        remove_stale_files(self.api_prefix, (self.api_socket, self.stats_socket, self.cli_socket))

    def connect(self, **kwargs: Any) -> Any:
        """A connected ``VppConnection`` to this VPP (the caller disconnects)."""
        from vppagent.vpp.connection import VppConnection
        conn = VppConnection(self.api_socket, **kwargs)
        conn.connect()
        return conn

    def cli(self, command: str, timeout: float = 10.0) -> str:
        """Run a debug CLI command through ``vppctl`` next to the binary."""
        vppctl = Path(self.binary).resolve().parent / "vppctl"
        if not self.cli_socket or not vppctl.exists():
            raise RuntimeError("no cli-listen socket or vppctl binary")
        out = subprocess.run([str(vppctl), "-s", self.cli_socket, command], capture_output=True,
                             text=True, timeout=timeout)
        return out.stdout

    def __enter__(self) -> "VppProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<VppProcess pid={self.pid} api={self.api_socket} {'alive' if self.alive() else 'exited'}>"


def remove_stale_files(api_prefix: str | None, sockets: tuple[str | None, ...] = ()) -> None:
    """Remove what a VPP that is gone leaves behind: its sockets and the svm
    regions of its api-segment prefix (``/dev/shm/<prefix>-*``).  A VPP
    started with the prefix of a killed one would otherwise hang on them."""
    for path in sockets:
        if path:
            with contextlib.suppress(OSError):
                os.unlink(path)
    if api_prefix:
        for path in glob.glob(f"/dev/shm/{glob.escape(api_prefix)}-*"):
            with contextlib.suppress(OSError):
                os.unlink(path)


def _accepts(path: str) -> bool:
    if not os.path.exists(path):
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(0.5)
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _stanza_value(text: str, section: str, key: str) -> str | None:
    """``key``'s value inside ``section { ... }`` of a startup.conf (no nesting needed)."""
    text = re.sub(r"#[^\n]*", "", text)
    m = re.search(rf"(?:^|\s){re.escape(section)}\s*\{{([^{{}}]*(?:\{{[^{{}}]*\}}[^{{}}]*)*)\}}", text)
    if not m:
        return None
    v = re.search(rf"(?:^|\s){re.escape(key)}\s+(\S+)", m.group(1))
    return v.group(1) if v else None


def launch(binary: str, conf_path: Path, output_file: Path, netns: str | None = None) -> subprocess.Popen:
    """Start ``binary -c conf_path`` in its own session, inside ``netns``
    when given (forked from a thread that entered it, so the agent's own
    threads never change namespace)."""
    def spawn() -> subprocess.Popen:
        with open(output_file, "ab") as out:
            return subprocess.Popen([binary, "-c", str(conf_path)], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    if netns is None:
        return spawn()
    fd = open_netns(netns)
    try:
        return run_in_netns(fd, spawn)
    finally:
        os.close(fd)


def start_vpp(conf: str | Mapping[str, Any] | Any, tmpdir: str | os.PathLike[str] | None = None, *,
              binary: str | None = None, netns: str | None = None, ready_timeout: float = 20.0,
              exec_script: bool = False) -> VppProcess:
    """Start a real VPP and wait until its API answers.

    ``conf``: startup.conf text, a ``NodeConfig`` or a ``vpp:`` mapping (then
    runtime paths go under ``tmpdir`` and ``tmpdir`` must be short enough for
    unix socket paths).  ``tmpdir`` None: a fresh directory removed on close.
    ``binary``: default the config's ``binary``, else ``$VPP_BIN``.
    ``exec_script``: also run the rendered startup CLI script (host interface
    plumbing; VPP runs it ~2 s after start, after readiness).
    """
    from vppagent.vpp_node.config import NodeConfig, parse_node_config
    from vppagent.vpp_node.startup import write_startup_files

    owned = tmpdir is None
    workdir = Path(tmpdir) if tmpdir is not None else Path(_short_tmpdir())
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if isinstance(conf, str):
            text = conf
            conf_path = workdir / "startup.conf"
            conf_path.write_text(text)
            api = _stanza_value(text, "socksvr", "socket-name")
            if not api:
                raise VppStartError("startup.conf has no socksvr { socket-name ... }: nothing to wait for")
            stats, cli = _stanza_value(text, "statseg", "socket-name"), _stanza_value(text, "unix", "cli-listen")
            log, prefix = _stanza_value(text, "unix", "log"), _stanza_value(text, "api-segment", "prefix")
            vpp_bin = binary or os.environ.get("VPP_BIN") or "/usr/bin/vpp"
        else:
            cfg = conf if isinstance(conf, NodeConfig) else parse_node_config(conf)
            cfg = cfg.with_runtime_dir(str(workdir))
            conf_path = write_startup_files(cfg, exec_script=exec_script)
            api, stats, cli, log, prefix = (cfg.api_socket, cfg.stats_socket, cfg.cli_socket, cfg.log_file,
                                            cfg.api_prefix)
            vpp_bin = binary or cfg.binary
        remove_stale_files(prefix, (api, stats, cli))     # a stale socket must not look ready
        output = workdir / "vpp.out"
        proc = launch(vpp_bin, conf_path, output, netns)
    except BaseException:
        if owned:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    vpp = VppProcess(proc, conf_path=conf_path, api_socket=api, stats_socket=stats, cli_socket=cli,
                     log_file=log, output_file=output, api_prefix=prefix, workdir=workdir if owned else None,
                     binary=vpp_bin, netns=netns)
    try:
        vpp.wait_ready(ready_timeout)
    except BaseException:
        vpp.close()
        raise
    return vpp


def _short_tmpdir() -> str:
    """A temp dir short enough for unix socket paths (108 bytes)."""
    import tempfile
    return tempfile.mkdtemp(prefix="vppa-", dir="/tmp")
