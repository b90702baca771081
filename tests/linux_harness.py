"""A real-netns test harness: a "node" running the agent, pods wired through CNI, a client.

Stable API (other test modules build on it; extend, do not break)::

    import pytest
    from tests.linux_harness import Node, ROOT_ONLY

    pytestmark = ROOT_ONLY            # = [pytest.mark.root, skip unless root]

    def test_something():
        with Node(dataplane="nftables") as node:           # "none" | "iptables" | "nftables" | ...
            node.write_manifest("policy", [{...}, {...}])   # YAML docs (dicts or a YAML string)
            web = node.add_pod("shop", "web", labels={"app": "web"}, ports=[("http", 8080, "TCP")])
            db = node.add_pod("shop", "db")
            assert node.reachable(web, db, 5432)            # TCP by default, ~1 s timeout when dropped
            assert node.reachable("client", web, 8080, proto="udp") is False
            assert node.ping(web, "node")
            with node.listen(db, 5432) as srv:              # a listener you keep: who connected?
                out = node.send("client", "10.96.0.10", 5432)   # e.g. a service VIP
                assert out.ok and out.label == "shop/db" and srv.peers == [out.peer]
            node.stop_agent(); node.start_agent()           # restart (kill_agent() for SIGKILL)
            node.delete_pod(web)

Construction: ``Node(dataplane="none", *, pools=("10.65.0.0/16",), node_labels=None, config=None,
mtu=1500, poll_interval=0.1, plugin=None, start=True)``; ``config`` is merged into the agent's
YAML config (e.g. ``{"dataplane": {"type": "iptables", "foo": 1}}``); ``plugin`` is the CNI
plugin executable (default: the fast launcher written by ``vppagent-cni install``).
With a dataplane *type name* the agent runs as ``ip netns exec NODE python -m vppagent run``;
with a *factory* (a callable returning a ``Dataplane``) it runs in-process, on a thread inside
the node netns (``node.agent_obj`` is the ``Agent``; handy for dataplanes not in the registry).

Places (``src``/``dst`` of the traffic helpers) are a ``Pod``, ``"node"`` or ``"client"``;
``dst`` may also be an IP address string (then ``listen``/``reachable`` need a real place).

Attributes: ``name`` (Kubernetes node name), ``netns``/``client_netns`` (netns names),
``node_ip``/``client_ip`` (+``node_ip6``/``client_ip6``) on the node↔client veth, ``socket``
(agent gRPC unix socket), ``state_dir``, ``manifests``, ``tmp`` (a Path), ``agent`` (Popen),
``log`` (agent log path), ``pods`` (dict "ns/name" → Pod).

Methods: ``write_manifest(name, docs)``, ``remove_manifest(name)``, ``add_pod(namespace, name,
labels=None, ports=(), annotations=None, service_account="default", ifname="eth0",
manifest=True) -> Pod``, ``delete_pod(pod)``, ``cni(command, ...) -> CniCall`` (one raw plugin
run, exactly as a runtime does it), ``exec_in_pod(pod, argv)``, ``exec_in(place, argv)``,
``listen(place, port, proto="tcp")``, ``send(src, dst, port, proto="tcp", timeout=1.0) ->
Outcome``, ``reachable(src, dst, port=None, proto="tcp", timeout=1.0, family=4) -> bool``,
``ping(src, dst, timeout=1.0, family=4) -> bool``, ``endpoints() -> dict["ns/pod", dict]``,
``status() -> dict``, ``wait_ready()``, ``start_agent()``, ``stop_agent()``, ``kill_agent()``,
``agent_log() -> str``, ``add_netns(suffix="") -> name``, ``forget_netns(name)``, ``address_of(place,
family=4)``, ``pod_manifest(...) -> dict``, ``close()``.

Every netns, link, process, socket and file the harness creates is removed by ``close()``
(the context manager's exit), also when a test fails half-way. Traffic is generated in-process
from threads that entered the namespace (fast: no process per probe); listeners answer each
TCP connection / UDP datagram with ``"<label> <peer-ip>"``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, Union

import pytest
import yaml

from vppagent.cni import h2grpc
from vppagent.cni.install import write_launcher
from vppagent.dataplane.linux.netlink_ns import open_netns, run_in_netns, spawn_in_netns

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
IS_ROOT = os.geteuid() == 0
ROOT_ONLY = [pytest.mark.root, pytest.mark.skipif(not IS_ROOT, reason="needs root (network namespaces)")]
CNI_VERSION = "1.0.0"


# ---------------------------------------------------------------- small types

@dataclass
class Pod:
    """A pod sandbox wired through the CNI plugin."""

    namespace: str
    name: str
    netns: str                      # netns name (under /var/run/netns)
    container_id: str
    ifname: str = "eth0"
    result: dict = field(default_factory=dict)    # the CNI ADD result

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def netns_path(self) -> str:
        return f"/var/run/netns/{self.netns}"

    @property
    def ips(self) -> list[str]:
        return [ip["address"].split("/")[0] for ip in self.result.get("ips", [])]

    @property
    def ip(self) -> str:
        """The first IPv4 address (KeyError-like failure if none)."""
        return next(ip for ip in self.ips if ":" not in ip)

    @property
    def ip6(self) -> str:
        return next(ip for ip in self.ips if ":" in ip)

    @property
    def host_interface(self) -> str:
        return self.result["interfaces"][0]["name"]


@dataclass
class CniCall:
    """One plugin execution: exit code, parsed stdout (result or error object), stderr."""

    returncode: int
    output: Any
    stderr: str
    elapsed: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def error(self) -> dict | None:
        return self.output if not self.ok and isinstance(self.output, dict) else None


@dataclass
class Outcome:
    """What a probe got: ``ok`` with the listener's ``label`` and the ``peer`` address it saw,
    or ``error`` in {"timeout", "refused", "unreachable", "reset", ...}."""

    ok: bool
    label: str = ""
    peer: str = ""
    error: str = ""
    elapsed: float = 0.0


Place = Union[Pod, str]


# ---------------------------------------------------------------- listeners

class Listener:
    """A TCP or UDP server inside a netns answering ``"<label> <peer>"`` (both families)."""

    def __init__(self, netns_path: str, port: int, proto: str, label: str) -> None:
        self.netns_path, self.port, self.proto, self.label = netns_path, port, proto, label
        self.peers: list[str] = []
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._thread: threading.Thread | None = None

    def start(self) -> "Listener":
        kind = socket.SOCK_STREAM if self.proto == "tcp" else socket.SOCK_DGRAM

        def bind() -> list[socket.socket]:
            out = []
            for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                s = socket.socket(family, kind)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    s.bind((addr, self.port))
                except OSError as exc:
                    s.close()
                    if family == socket.AF_INET6 and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                        continue
                    for o in out:
                        o.close()
                    raise
                if kind == socket.SOCK_STREAM:
                    s.listen(64)
                out.append(s)
            return out

        fd = os.open(self.netns_path, os.O_RDONLY)
        try:
            self._socks = run_in_netns(fd, bind)
        finally:
            os.close(fd)
        self._thread = threading.Thread(target=self._serve, daemon=True, name=f"listener-{self.port}")
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select(self._socks, [], [], 0.05)
            for s in ready:
                try:
                    if self.proto == "tcp":
                        conn, addr = s.accept()
                        with conn:
                            conn.settimeout(1.0)
                            with contextlib.suppress(OSError):
                                conn.recv(256)
                            self.peers.append(_plain(addr[0]))
                            conn.sendall(f"{self.label} {_plain(addr[0])}\n".encode())
                    else:
                        _, addr = s.recvfrom(2048)
                        self.peers.append(_plain(addr[0]))
                        s.sendto(f"{self.label} {_plain(addr[0])}\n".encode(), addr)
                except OSError:
                    continue

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for s in self._socks:
            s.close()
        self._socks = []

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain(ip: str) -> str:
    return ip[7:] if ip.startswith("::ffff:") else ip.split("%")[0]


def _probe(netns_path: str, dst: str, port: int, proto: str, timeout: float) -> Outcome:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM

    def go() -> Outcome:
        started = time.monotonic()
        with socket.socket(family, kind) as s:
            s.settimeout(timeout)
            try:
                s.connect((dst, port))
                s.send(b"probe\n")
                data = s.recv(256)
            except socket.timeout:
                return Outcome(False, error="timeout", elapsed=time.monotonic() - started)
            except ConnectionRefusedError:
                return Outcome(False, error="refused", elapsed=time.monotonic() - started)
            except ConnectionResetError:
                return Outcome(False, error="reset", elapsed=time.monotonic() - started)
            except OSError as exc:
                name = {errno.EHOSTUNREACH: "unreachable", errno.ENETUNREACH: "unreachable",
                        errno.EACCES: "prohibited", errno.EPERM: "prohibited"}.get(exc.errno or 0, str(exc))
                return Outcome(False, error=name, elapsed=time.monotonic() - started)
        elapsed = time.monotonic() - started
        if not data:
            return Outcome(False, error="closed", elapsed=elapsed)
        label, _, peer = data.decode().strip().partition(" ")
        return Outcome(True, label=label, peer=peer, elapsed=elapsed)

    fd = os.open(netns_path, os.O_RDONLY)
    try:
        return run_in_netns(fd, go)
    finally:
        os.close(fd)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _ping(netns_path: str, dst: str, timeout: float) -> bool:
    v6 = ":" in dst
    ident, seq = secrets.randbits(16), 1

    def go() -> bool:
        proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
        with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW, proto) as s:
            payload = b"vppagent-harness"
            head = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, ident, seq)
            packet = head + payload
            if not v6:   # the kernel computes ICMPv6 checksums itself
                packet = head[:2] + struct.pack("!H", _checksum(packet)) + head[4:] + payload
            try:
                s.sendto(packet, (dst, 0))
            except OSError:
                return False
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([s], [], [], left)
                if not ready:
                    return False
                data, addr = s.recvfrom(2048)
                icmp = data if v6 else data[(data[0] & 0x0F) * 4:]
                if len(icmp) < 8:
                    continue
                kind, _, _, rid, rseq = struct.unpack("!BBHHH", icmp[:8])
                if kind == (129 if v6 else 0) and rid == ident and rseq == seq and _plain(addr[0]) == dst:
                    return True
            return False

    fd = os.open(netns_path, os.O_RDONLY)
    try:
        return run_in_netns(fd, go)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- the node

def _run(argv: Sequence[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, **kw)


class Node:
    """A Kubernetes node in a netns, running the agent, with a client netns beside it."""

    def __init__(self, dataplane: str | Callable[[], Any] = "none", *, pools: Sequence[str] = ("10.65.0.0/16",),
                 node_labels: dict[str, str] | None = None, config: dict | None = None, mtu: int = 1500,
                 poll_interval: float = 0.1, plugin: str | None = None, start: bool = True,
                 log_level: str = "info") -> None:
        self.token = f"h{os.getpid() % 1000:03d}{secrets.token_hex(2)}"
        self.name = f"node-{self.token}"
        self.netns = f"{self.token}-node"
        self.client_netns = f"{self.token}-client"
        octet = 4 * secrets.randbelow(60) + 4
        self.node_ip, self.client_ip = f"192.0.2.{octet + 1}", f"192.0.2.{octet + 2}"
        self.node_ip6, self.client_ip6 = f"2001:db8::{octet + 1:x}", f"2001:db8::{octet + 2:x}"
        self.dataplane, self.pools, self.mtu = dataplane, list(pools), mtu
        self.node_labels = dict(node_labels or {})
        self.extra_config = dict(config or {})
        self.poll_interval, self.log_level = poll_interval, log_level
        self.tmp = Path(tempfile.mkdtemp(prefix=f"vppagent-{self.token}-"))
        self.manifests = self.tmp / "manifests"
        self.state_dir = self.tmp / "state"
        self.socket = str(self.tmp / "agent.sock")
        self.log = self.tmp / "agent.log"
        self.config_path = self.tmp / "agent.yaml"
        self.cni_bin = self.tmp / "cni-bin"
        self.plugin = plugin
        self.agent: subprocess.Popen | None = None
        self.agent_obj: Any = None               # the in-process Agent (dataplane factory mode)
        self._agent_thread: threading.Thread | None = None
        self.pods: dict[str, Pod] = {}
        self._netns: list[str] = []
        self._listeners: list[Listener] = []
        self._namespaces_written: set[str] = set()
        self._closed = False
        try:
            self._setup()
            if start:
                self.start_agent()
        except BaseException:
            self.close()
            raise

    # -- lifecycle -----------------------------------------------------------------------

    def _add_netns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._netns.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])

    def add_netns(self, suffix: str = "") -> str:
        """An extra netns (lo up) removed with the node; returns its name."""
        name = f"{self.token}-{suffix or 'x' + secrets.token_hex(3)}"
        self._add_netns(name)
        return name

    def forget_netns(self, name: str) -> None:
        """Delete one of the node's namespaces now (e.g. a pod sandbox going away)."""
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        if name in self._netns:
            self._netns.remove(name)

    def _setup(self) -> None:
        self.manifests.mkdir(parents=True)
        self._add_netns(self.netns)
        self._add_netns(self.client_netns)
        a, b = f"{self.token}n", f"{self.token}c"
        _run(["ip", "link", "add", a, "netns", self.netns, "type", "veth", "peer", "name", b,
              "netns", self.client_netns])
        for ns, dev, ip4, ip6, peer4, peer6 in (
            (self.netns, a, self.node_ip, self.node_ip6, self.client_ip, self.client_ip6),
            (self.client_netns, b, self.client_ip, self.client_ip6, self.node_ip, self.node_ip6),
        ):
            _run(["ip", "-n", ns, "addr", "add", f"{ip4}/24", "dev", dev])
            _run(["ip", "-n", ns, "-6", "addr", "add", f"{ip6}/64", "dev", dev, "nodad"])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])
        _run(["ip", "-n", self.client_netns, "route", "add", "default", "via", self.node_ip])
        _run(["ip", "-n", self.client_netns, "-6", "route", "add", "default", "via", self.node_ip6])
        if self.plugin is None:
            self.plugin = write_launcher(self.cni_bin, "vppagent-cni")
        node_doc = {"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": self.name, "labels": self.node_labels},
                    "status": {"addresses": [{"type": "InternalIP", "address": self.node_ip}]}}
        self.write_manifest("00-node", [node_doc])
        config: dict[str, Any] = {
            "nodeName": self.name,
            "datastore": {"type": "file", "path": str(self.manifests), "pollInterval": self.poll_interval},
            "dataplane": {"type": self.dataplane if isinstance(self.dataplane, str) else "none"},
            "grpc": {"socket": self.socket},
            "health": {"port": 0},
            "stateDir": str(self.state_dir),
            "cni": {"mtu": self.mtu},
            "ipam": {"defaultPools": self.pools},
            "logLevel": self.log_level,
        }
        for key, value in self.extra_config.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        self.config_path.write_text(yaml.safe_dump(config))

    def start_agent(self, timeout: float = 30.0) -> None:
        """Start the agent inside the node netns and wait until it reports ready."""
        if (self.agent is not None and self.agent.poll() is None) or self._agent_thread is not None:
            raise RuntimeError("the agent is already running")
        if not isinstance(self.dataplane, str):
            self._start_in_process(timeout)
            return
        log = open(self.log, "ab")
        try:
            self.agent = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, PYTHON, "-m", "vppagent", "run", "--config",
                 str(self.config_path)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        finally:
            log.close()
        self.wait_ready(timeout)

    def _start_in_process(self, timeout: float) -> None:
        from vppagent.agent.config import load_config
        from vppagent.agent.daemon import Agent

        agent = Agent(load_config(self.config_path), dataplane=self.dataplane())
        fd = open_netns(self.netns)
        try:
            self._agent_thread = spawn_in_netns(fd, lambda: agent.run(install_signals=False), "agent")
        finally:
            os.close(fd)
        self.agent_obj = agent
        self.wait_ready(timeout)

    def _stop_in_process(self, timeout: float) -> None:
        if self._agent_thread is not None:
            self.agent_obj.stop()
            self._agent_thread.join(timeout)
            self._agent_thread, self.agent_obj = None, None

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.agent is not None and self.agent.poll() is not None:
                raise RuntimeError(f"the agent exited with {self.agent.returncode}:\n{self.agent_log()[-3000:]}")
            if self._agent_thread is not None and not self._agent_thread.is_alive():
                raise RuntimeError("the in-process agent stopped (see the test log)")
            if self._healthy():
                return
            time.sleep(0.02)
        raise TimeoutError(f"the agent was not ready within {timeout:g} s:\n{self.agent_log()[-3000:]}")

    def _healthy(self) -> bool:
        try:
            data = h2grpc.call(self.socket, "/grpc.health.v1.Health/Check", b"", 2.0)
        except (h2grpc.Unreachable, h2grpc.RpcError, OSError):
            return False
        return data == b"\x08\x01"        # HealthCheckResponse{status: SERVING}

    def stop_agent(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (the dataplane stays programmed); SIGKILL after ``timeout``."""
        self._stop_in_process(timeout)
        if self.agent is None:
            return None
        if self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            try:
                self.agent.wait(timeout)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait(5)
        code, self.agent = self.agent.returncode, None
        return code

    def kill_agent(self) -> None:
        """SIGKILL: the agent dies without any cleanup (crash test; in-process: a plain stop)."""
        self._stop_in_process(5)
        if self.agent is not None:
            if self.agent.poll() is None:
                self.agent.kill()
            self.agent.wait(5)
            self.agent = None

    def agent_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        """Remove everything this node created (idempotent; never raises on leftovers)."""
        if self._closed:
            return
        self._closed = True
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                listener.close()
        with contextlib.suppress(Exception):
            self.kill_agent()
        for ns in reversed(self._netns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "Node":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- datastore -----------------------------------------------------------------------

    def write_manifest(self, name: str, docs: Iterable[dict] | str) -> Path:
        """Write ``<manifests>/<name>.yaml`` atomically (the agent polls the directory)."""
        text = docs if isinstance(docs, str) else yaml.safe_dump_all(list(docs), sort_keys=False)
        path = self.manifests / f"{name}.yaml"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        return path

    def remove_manifest(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.manifests / f"{name}.yaml").unlink()

    def _ensure_namespace(self, namespace: str, service_account: str) -> None:
        key = f"{namespace}/{service_account}"
        if key in self._namespaces_written:
            return
        self._namespaces_written.add(key)
        self.write_manifest(f"01-ns-{namespace}-{service_account}", [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": service_account, "namespace": namespace}},
        ])

    def pod_manifest(self, namespace: str, name: str, labels: dict[str, str] | None = None,
                     ports: Iterable[tuple[str, int, str]] = (), annotations: dict[str, str] | None = None,
                     service_account: str = "default") -> dict:
        container: dict[str, Any] = {"name": "main", "image": "test"}
        if ports:
            container["ports"] = [{"name": n, "containerPort": p, "protocol": proto} for n, p, proto in ports]
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {}),
                         "annotations": dict(annotations or {})},
            "spec": {"nodeName": self.name, "serviceAccountName": service_account, "containers": [container]},
        }

    # -- pods ----------------------------------------------------------------------------

    def cni(self, command: str, *, container_id: str, netns: str = "", ifname: str = "eth0",
            namespace: str = "", pod: str = "", config: dict | None = None, env: dict | None = None,
            stdin: bytes | None = None, in_node: bool = True) -> CniCall:
        """Run the plugin once, as a runtime does: CNI_* environment + network config on stdin."""
        conf = {"cniVersion": CNI_VERSION, "name": "k8s-pod-network", "type": "vppagent-cni",
                "agentSocket": self.socket, "mtu": self.mtu}
        conf.update(config or {})
        args = "IgnoreUnknown=1"
        if namespace or pod:
            args += f";K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={container_id}"
        environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
                   "CNI_CONTAINERID": container_id, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
                   "CNI_ARGS": args, "CNI_PATH": str(Path(str(self.plugin)).parent)}
        environ.update(env or {})
        environ = {k: v for k, v in environ.items() if v is not None}
        argv = [str(self.plugin)]
        if in_node:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        started = time.monotonic()
        proc = subprocess.run(argv, input=json.dumps(conf).encode() if stdin is None else stdin,
                              env=environ, capture_output=True, timeout=120)
        elapsed = time.monotonic() - started
        out = proc.stdout.decode()
        try:
            parsed: Any = json.loads(out) if out.strip() else None
        except ValueError:
            parsed = out
        return CniCall(proc.returncode, parsed, proc.stderr.decode(), elapsed)

    def add_pod(self, namespace: str, name: str, *, labels: dict[str, str] | None = None,
                ports: Iterable[tuple[str, int, str]] = (), annotations: dict[str, str] | None = None,
                service_account: str = "default", ifname: str = "eth0", manifest: bool = True) -> Pod:
        """Write the Pod (and its Namespace/ServiceAccount), create its netns, CNI ADD it."""
        if manifest:
            self._ensure_namespace(namespace, service_account)
            self.write_manifest(f"pod-{namespace}-{name}", [
                self.pod_manifest(namespace, name, labels, ports, annotations, service_account)])
        container_id = f"{self.token}{secrets.token_hex(8)}"
        netns = f"{self.token}-p{secrets.token_hex(3)}"
        self._add_netns(netns)
        call = self.cni("ADD", container_id=container_id, netns=f"/var/run/netns/{netns}", ifname=ifname,
                        namespace=namespace, pod=name)
        if not call.ok:
            raise RuntimeError(f"CNI ADD of {namespace}/{name} failed: {call.output!r} {call.stderr}")
        pod = Pod(namespace, name, netns, container_id, ifname, call.output)
        self.pods[pod.key] = pod
        return pod

    def delete_pod(self, pod: Pod, *, manifest: bool = True) -> CniCall:
        """CNI DEL, then drop the Pod manifest and the pod's netns."""
        call = self.cni("DEL", container_id=pod.container_id, netns=pod.netns_path, ifname=pod.ifname,
                        namespace=pod.namespace, pod=pod.name)
        if manifest:
            self.remove_manifest(f"pod-{pod.namespace}-{pod.name}")
        self.forget_netns(pod.netns)
        self.pods.pop(pod.key, None)
        return call

    # -- commands and traffic ------------------------------------------------------------

    def _netns_of(self, place: Place) -> str:
        if isinstance(place, Pod):
            return place.netns
        if place == "node":
            return self.netns
        if place == "client":
            return self.client_netns
        if place in self._netns:
            return place
        raise ValueError(f"unknown place {place!r} (a Pod, 'node' or 'client')")

    def address_of(self, place: Place, family: int = 4) -> str:
        if isinstance(place, Pod):
            return place.ip if family == 4 else place.ip6
        if place == "node":
            return self.node_ip if family == 4 else self.node_ip6
        if place == "client":
            return self.client_ip if family == 4 else self.client_ip6
        return place          # an address already

    def exec_in(self, place: Place, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess:
        kw.setdefault("timeout", 60)
        return _run(["ip", "netns", "exec", self._netns_of(place), *argv], check=kw.pop("check", False), **kw)

    def exec_in_pod(self, pod: Pod, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess:
        return self.exec_in(pod, argv, **kw)

    def listen(self, place: Place, port: int, proto: str = "tcp", label: str | None = None) -> Listener:
        """A server in ``place`` (closed with the node if you do not close it)."""
        if label is None:
            label = place.key if isinstance(place, Pod) else str(place)
        listener = Listener(f"/var/run/netns/{self._netns_of(place)}", port, proto, label).start()
        self._listeners.append(listener)
        return listener

    def send(self, src: Place, dst: Place, port: int, proto: str = "tcp", timeout: float = 1.0,
             family: int = 4) -> Outcome:
        """Connect (TCP) or send a datagram (UDP) from ``src`` and wait for the answer."""
        return _probe(f"/var/run/netns/{self._netns_of(src)}", self.address_of(dst, family), port, proto, timeout)

    def reachable(self, src: Place, dst: Place, port: int | None = None, proto: str = "tcp",
                  timeout: float = 1.0, family: int = 4) -> bool:
        """Whether a TCP/UDP exchange (or an ICMP echo) from ``src`` to ``dst`` succeeds."""
        if proto == "icmp" or port is None:
            return self.ping(src, dst, timeout, family)
        with self.listen(dst, port, proto):
            return self.send(src, dst, port, proto, timeout, family).ok

    def ping(self, src: Place, dst: Place, timeout: float = 1.0, family: int = 4) -> bool:
        return _ping(f"/var/run/netns/{self._netns_of(src)}", self.address_of(dst, family), timeout)

    # -- agent state ---------------------------------------------------------------------

    def _grpc(self):  # imported lazily: most harness users never need it
        import grpc

        from vppagent.api import gen_modules

        return grpc, gen_modules()

    def status(self) -> dict:
        grpc, g = self._grpc()
        with grpc.insecure_channel(f"unix:{self.socket}") as ch:
            reply = g.dataplane_pb2_grpc.DataplaneStub(ch).GetStatus(g.dataplane_pb2.StatusRequest(), timeout=10)
        from google.protobuf.json_format import MessageToDict

        return MessageToDict(reply, preserving_proto_field_name=True)

    def endpoints(self) -> dict[str, dict]:
        """Workload endpoints in the agent's desired state: "ns/pod" → fields (nets, labels, …)."""
        grpc, g = self._grpc()
        with grpc.insecure_channel(f"unix:{self.socket}") as ch:
            reply = g.dataplane_pb2_grpc.DataplaneStub(ch).Dump(g.dataplane_pb2.DumpRequest(), timeout=10)
        out = {}
        for u in reply.desired:
            if u.WhichOneof("kind") == "workload_endpoint":
                w = u.workload_endpoint
                out[f"{w.namespace}/{w.pod}"] = {
                    "id": w.id, "node": w.node, "interface_name": w.interface_name, "mac": w.mac,
                    "nets": list(w.nets), "labels": {kv.key: kv.value for kv in w.labels},
                    "profile_ids": list(w.profile_ids),
                }
        return out
