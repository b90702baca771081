"""A real, throwaway etcd for tests, multi-node scenarios and perf runs.

::

    from vppagent.testbed.etcd import EtcdServer, etcd_missing_reason

    with EtcdServer() as etcd:                      # temp data dir, free loopback ports, healthy
        etcd.put_object("/calico/resources/v3/k8s/namespaces/shop", {...})
        rev = etcd.client.revision()
        etcd.kill(); etcd.restart()                 # same data dir and ports
        etcd.compact(rev)

    writer = EtcdDatastore(etcd.client)             # the testbed's DatastoreWriter for etcd
    writer.write("policy", [{...}, {...}])          # replaces the group atomically
    writer.remove("policy")

Ports come from binding port 0 on 127.0.0.1; if another process grabs one
before etcd binds it (parallel runs), etcd exits with "address already in
use" and new ports are picked, so parallel runs never share a server.
Startup waits by polling ``/health``. The context manager kills etcd and
removes the temp dir on every exit path. If the test process itself is
SIGKILLed: etcd runs under ``setpriv --pdeathsig KILL`` (``die_with_parent``;
note it fires when the *thread* that started etcd exits), and the temp dir
is in the testbed registry, so the next testbed removes it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import yaml

from vppagent.sources.etcd import object_key
from vppagent.sources.etcd_client import EtcdClient, delete_op, put_op
from vppagent.testbed.registry import Record, reap_stale

ETCD_BIN = os.environ.get("VPPAGENT_ETCD_BIN", "/usr/bin/etcd")
_PORT_ATTEMPTS = 5


def etcd_missing_reason(binary: str = ETCD_BIN) -> str | None:
    """Why etcd tests cannot run here (None when they can): for ``pytest.mark.skipif``."""
    if not os.access(binary, os.X_OK):
        return f"etcd not installed ({binary} missing; `make setup` installs etcd-server)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tmp_base() -> str | None:
    """tmpfs when there is one: etcd fsyncs every write, and tests need no durability."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


class EtcdServer:
    """One single-member etcd on loopback; ``client`` talks to it."""

    def __init__(self, *, binary: str = ETCD_BIN, data_dir: str | Path | None = None,
                 progress_interval: float | None = None, start_timeout: float = 30.0,
                 name: str = "testbed", die_with_parent: bool = True) -> None:
        self.binary = binary
        self.name = name
        self.die_with_parent = die_with_parent
        self.start_timeout = start_timeout
        self.progress_interval = progress_interval
        self._own_dir = data_dir is None
        self.dir = Path(tempfile.mkdtemp(prefix="vppagent-etcd-", dir=_tmp_base())) if data_dir is None \
            else Path(data_dir)
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / "etcd.log"
        self.client_port = 0
        self.peer_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._client: EtcdClient | None = None
        self._record: Record | None = None
        if self._own_dir:
            reap_stale()
            self._record = Record(f"etcd-{self.dir.name}", os.getpid(), str(self.dir))
            self._record.save()

    # -- addresses ---------------------------------------------------------------

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def client(self) -> EtcdClient:
        """A client for this server (kept across restarts: the ports do not change)."""
        if self._client is None:
            if not self.client_port:
                raise RuntimeError("etcd was never started: no client URL yet")
            self._client = EtcdClient(self.client_url, timeout=5.0)
        return self._client

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> "EtcdServer":
        """Start etcd and wait until it is healthy (new ports only the first time)."""
        if self.running:
            return self
        fresh_ports = not self.client_port
        for attempt in range(_PORT_ATTEMPTS if fresh_ports else 1):
            if fresh_ports:
                self.client_port, self.peer_port = _free_port(), _free_port()
            self._spawn()
            try:
                self._wait_healthy()
                return self
            except _PortTaken:
                if attempt == _PORT_ATTEMPTS - 1 or not fresh_ports:
                    raise RuntimeError(f"etcd could not bind its ports:\n{self._log_tail()}") from None
        raise AssertionError("unreachable")

    def _command(self) -> list[str]:
        cmd = [
            self.binary, "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", f"{self.name}={self.peer_url}", "--initial-cluster-state", "new",
            "--heartbeat-interval", "20", "--election-timeout", "200",
            "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
        ]
        if self.progress_interval is not None:
            cmd += ["--experimental-watch-progress-notify-interval", f"{int(self.progress_interval * 1000)}ms"]
        setpriv = shutil.which("setpriv") if self.die_with_parent else None
        return [setpriv, "--pdeathsig", "KILL", "--", *cmd] if setpriv else cmd

    def _spawn(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- starting etcd on {self.client_url} (peer {self.peer_url})\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self.proc = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        delay = 0.01
        while True:
            code = self.proc.poll()
            if code is not None:
                self.proc = None
                if "address already in use" in self._log_tail(since_start=True):
                    raise _PortTaken()
                raise RuntimeError(f"etcd exited with status {code}:\n{self._log_tail()}")
            if self._healthy():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"etcd not healthy after {self.start_timeout}s:\n{self._log_tail()}")
            time.sleep(delay)                 # polling interval, not a synchronisation guess
            delay = min(delay * 2, 0.1)

    def _healthy(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.client_port, timeout=1.0)
        try:
            conn.request("GET", "/health")
            resp = conn.getresponse()
            return resp.status == 200 and json.loads(resp.read()).get("health") == "true"
        except (OSError, http.client.HTTPException, ValueError):
            return False
        finally:
            conn.close()

    def _log_tail(self, since_start: bool = False, lines: int = 30) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        if since_start:
            data = data[self._log_offset:]
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

    def _signal(self, sig: int, timeout: float) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
                proc.send_signal(signal.SIGCONT)      # a paused etcd must see the signal
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._client is not None:
            self._client.close()          # pooled connections point at the dead process

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM); SIGKILL if it takes longer than ``timeout``."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Crash it (SIGKILL): clients see their connections reset."""
        self._signal(signal.SIGKILL, 10.0)

    def pause(self) -> None:
        """Freeze etcd (SIGSTOP): connections stay open but nothing answers, like a dead network."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> "EtcdServer":
        """Stop if running, then start again on the same data dir and ports."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Kill etcd and remove the temp dir (when we made it); idempotent."""
        self.kill()
        if self._client is not None:
            self._client.close()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        if self._record is not None:
            self._record.drop()
            self._record = None

    def __enter__(self) -> "EtcdServer":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- data helpers -----------------------------------------------------------

    def put_object(self, key: str, obj: Any) -> int:
        """Store ``obj`` as JSON under ``key``; returns the write's revision."""
        return self.client.put(key, json.dumps(obj))

    def put_raw(self, key: str, value: bytes | str) -> int:
        return self.client.put(key, value)

    def delete(self, key: str) -> int:
        return self.client.delete(key)[0]

    def revision(self) -> int:
        return self.client.revision()

    def compact(self, revision: int | None = None) -> int:
        """Compact history up to ``revision`` (default: the current one); returns it."""
        rev = revision if revision is not None else self.revision()
        self.client.compact(rev, physical=True)
        return rev


class _PortTaken(Exception):
    """etcd lost the race for one of its ports; pick new ones."""


class EtcdDatastore:
    """The testbed's ``DatastoreWriter`` on etcd: named groups of objects at their keys.

    ``write`` replaces a group in one transaction (new and changed objects
    put, objects the group no longer holds deleted), so a watcher never sees
    it half-written. Group membership is remembered here, not in etcd.
    """

    MAX_OPS = 128          # etcd's default --max-txn-ops

    def __init__(self, client: EtcdClient, root: str = "/calico") -> None:
        self.client = client
        self.root = root
        self._groups: dict[str, set[str]] = {}

    def write(self, name: str, docs: Iterable[dict[str, Any]] | str) -> None:
        objects = [d for d in (yaml.safe_load_all(docs) if isinstance(docs, str) else docs) if d]
        values = {object_key(obj, self.root): json.dumps(obj) for obj in objects}
        stale = self._groups.get(name, set()) - values.keys()
        ops = [put_op(k, v) for k, v in values.items()] + [delete_op(k) for k in sorted(stale)]
        for i in range(0, len(ops), self.MAX_OPS):         # atomic up to MAX_OPS objects
            self.client.txn([], ops[i:i + self.MAX_OPS])
        self._groups[name] = set(values)

    def remove(self, name: str) -> None:
        keys = sorted(self._groups.pop(name, set()))
        for i in range(0, len(keys), self.MAX_OPS):
            self.client.txn([], [delete_op(k) for k in keys[i:i + self.MAX_OPS]])
