"""A real VPP for tests: process, namespaces, foreign interfaces and probes.

``VppInstance`` starts ``$VPP_BIN`` (plugins from ``$VPP_PLUGIN_PATH``)
inside a network namespace of its own with a temporary runtime directory and
a startup.conf rendered by the project's templates
(``vppagent.vpp_node.startup.render_startup_conf``, 4k pages, no
hugepages); ``Topology`` adds a "client" namespace behind an af_packet
uplink (holding every external address a test uses) and "host" namespaces
behind af_packet interfaces (host endpoints).  Those VPP interfaces are made
with VPP's CLI, untagged: they are *not* the agent's, which is the point.
Pods are empty namespaces; the dataplane under test wires them.

Probes are sent from this process: one worker thread enters a namespace
with setns(2) just long enough to open a socket, then every probe of a batch
runs in parallel under one selector.  TCP counts as delivered when the
connection completes, UDP/SCTP/ICMP when the datagram reaches a socket in
the destination namespace.

Everything is removed by ``close()``, also after failures: namespaces (and
their veths), the VPP process (SIGTERM, then SIGKILL), the runtime directory.

``fake_vpp`` is the fake VPP's counterpart for the tests that do without one.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pytest

from vppagent.testbed.probes import IPAddr, Marking, Namespaces, NetnsSockets, Probe, ip_batch, run
from vppagent.testbed.probes import run_probes as probes_run
from vppagent.vpp.fake import FakeVpp

VPP_BIN = os.environ.get("VPP_BIN", "")
VPP_PLUGIN_PATH = os.environ.get("VPP_PLUGIN_PATH", "")
VPPCTL = str(Path(VPP_BIN).with_name("vppctl")) if VPP_BIN else ""
IS_ROOT = os.geteuid() == 0
REQUIRES_VPP = [
    pytest.mark.vpp,
    pytest.mark.skipif(not VPP_BIN or not os.access(VPP_BIN, os.X_OK), reason="needs a VPP binary in $VPP_BIN"),
    pytest.mark.skipif(not IS_ROOT or not shutil.which("ip"), reason="needs root and iproute2"),
]
RUN = f"{os.getpid() % 10000:x}{secrets.token_hex(2)}"


def poll(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Wait until ``cond()`` is truthy (and return it); TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@contextmanager
def fake_vpp(**kwargs: Any) -> Iterator[FakeVpp]:
    """A ``FakeVpp(**kwargs)``, closed at the end, which must have met no handler errors by then."""
    fake = FakeVpp(**kwargs)
    yield fake
    fake.close()
    assert not fake.errors, fake.errors


# ---------------------------------------------------------------- VPP process

def startup_conf(runtime: Path, plugins: list[str] | None) -> str:
    """The project's template when it renders, else a minimal equivalent."""
    try:
        from vppagent.vpp_node.startup import render_startup_conf
        cfg: dict[str, Any] = {"runtimeDir": str(runtime), "pageSize": "4k", "heapSize": "512M",
                               "buffers": 16384, "pollSleepUsec": 100, "binary": VPP_BIN}
        if VPP_PLUGIN_PATH:
            cfg["pluginPath"] = VPP_PLUGIN_PATH
        if plugins is not None:
            cfg["plugins"] = plugins
        return render_startup_conf(cfg, exec_script=False)
    except ImportError:
        pass
    enabled = plugins or ["af_packet", "tap", "memif", "acl", "cnat", "npol", "ping"]
    path = f"  path {VPP_PLUGIN_PATH}\n" if VPP_PLUGIN_PATH else ""
    return (f"unix {{\n  nodaemon\n  nosyslog\n  runtime-dir {runtime}\n  cli-listen {runtime}/cli.sock\n"
            f"  log {runtime}/vpp.log\n  poll-sleep-usec 100\n}}\n"
            f"api-segment {{ prefix vpa{RUN}{secrets.token_hex(2)} }}\n"
            f"socksvr {{ socket-name {runtime}/api.sock }}\n"
            f"statseg {{ socket-name {runtime}/stats.sock size 32m page-size 4k }}\n"
            "memory { main-heap-size 512M main-heap-page-size 4k }\n"
            "buffers { buffers-per-numa 16384 page-size 4k }\ncpu { main-core 0 }\n"
            f"plugins {{\n{path}  plugin default {{ disable }}\n"
            + "".join(f"  plugin {p}_plugin.so {{ enable }}\n" for p in enabled) + "}\n")


class VppInstance:
    """One VPP process in ``netns``; ``start``/``stop``/``kill`` as often as needed."""

    def __init__(self, netns: str, workdir: Path, plugins: list[str] | None = None) -> None:
        self.netns = netns
        self.runtime = workdir / "run"
        self.runtime.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "startup.conf"
        self.conf.write_text(startup_conf(self.runtime, plugins))
        self.proc: subprocess.Popen | None = None
        self.output = workdir / "vpp.out"

    @property
    def api_socket(self) -> str:
        return str(self.runtime / "api.sock")

    @property
    def cli_socket(self) -> str:
        return str(self.runtime / "cli.sock")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 30.0) -> None:
        for name in ("api.sock", "cli.sock", "stats.sock"):
            with_suppress_unlink(self.runtime / name)
        out = open(self.output, "ab")
        try:
            self.proc = subprocess.Popen(["ip", "netns", "exec", self.netns, VPP_BIN, "-c", str(self.conf)],
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            out.close()
        poll(lambda: self._answers() or self._died(), timeout, "VPP to answer on its CLI socket")
        if self._died():
            raise RuntimeError(f"VPP exited: {self.output.read_text()[-2000:]}")
        poll(lambda: os.path.exists(self.api_socket), timeout, "VPP's API socket")

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def _answers(self) -> bool:
        if not os.path.exists(self.cli_socket):
            return False
        try:
            return "vpp" in run([VPPCTL, "-s", self.cli_socket, "show", "version"], timeout=5).lower()
        except (RuntimeError, subprocess.TimeoutExpired):
            return False

    def cli(self, command: str) -> str:
        return run([VPPCTL, "-s", self.cli_socket, *command.split()])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with_suppress_kill(proc.pid)
            proc.wait(timeout=10)

    def kill(self) -> None:
        """A crash: SIGKILL, no cleanup by VPP."""
        self.stop(signal.SIGKILL)


def with_suppress_unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def with_suppress_kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------- topology

@dataclass
class Host:
    """A namespace behind a VPP af_packet interface (a host endpoint's host)."""

    ns: str
    vpp_interface: str
    ips: list[IPAddr]


class Topology:
    """VPP in its namespace, a client behind an uplink, hosts, and pod namespaces.

    Link nets: uplink 172.31.0.0/24 and fd00:31::/64 (VPP .1, client .2);
    host ``i``: 172.30.i.0/30 and fd00:30:i::/64 (VPP .1, host .2).
    """

    _seq = 0

    def __init__(self, group: str, plugins: list[str] | None = None) -> None:
        Topology._seq += 1
        group = f"{group}{Topology._seq}"
        self.spaces = Namespaces(f"vpa{RUN}{group}", lo_up=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"vpa{RUN}{group}-"))
        self.hosts: dict[str, Host] = {}
        self._host_seq = 0
        self.external: list[IPAddr] = []
        self.vpp: VppInstance | None = None
        try:
            self.vpp_ns, self.client = self.spaces.add("vpp", "client")
            self.vpp = VppInstance(self.vpp_ns, self.tmp / "vpp", plugins)
            self.vpp.start()
            self.uplink = f"up{RUN}"
            self._link_to_vpp(self.client, self.uplink, "172.31.0", "fd00:31:")
            ip_batch(self.client, ["route add default via 172.31.0.1", "route add default via fd00:31::1"])
            self.uplink_vpp = f"host-{self.uplink}"
            self.vpp.cli(f"ip route add 0.0.0.0/0 via 172.31.0.2 {self.uplink_vpp}")
            self.vpp.cli(f"ip route add ::/0 via fd00:31::2 {self.uplink_vpp}")
            self.warm(self.client, "172.31.0.1", "fd00:31::1")
        except BaseException:
            self.close()
            raise

    @property
    def state_dir(self) -> str:
        return str(self.tmp / "state")

    def _link_to_vpp(self, ns: str, veth: str, v4: str, v6: str) -> None:
        """A veth: ``eth0`` in ``ns``, ``veth`` in VPP's netns under a VPP af_packet interface."""
        ip_batch(self.vpp_ns, [f"link add {veth} type veth peer name eth0 netns {ns}",
                               f"link set {veth} addrgenmode none", f"link set {veth} up"])
        plen = 24 if v4.startswith("172.31") else 30
        ip_batch(ns, ["link set eth0 addrgenmode none", "link set eth0 up", f"addr add {v4}.2/{plen} dev eth0",
                      f"addr add {v6}:2/64 dev eth0 nodad", "addr add fe80::2/64 dev eth0 nodad"])
        name = f"host-{veth}"
        assert self.vpp is not None
        self.vpp.cli(f"create host-interface name {veth}")
        self.vpp.cli(f"set interface state {name} up")
        self.vpp.cli(f"set interface ip address {name} {v4}.1/{plen}")
        self.vpp.cli(f"set interface ip address {name} {v6}:1/64")

    def add_host(self, ips: list[IPAddr]) -> Host:
        """A host namespace holding ``ips``, routed by VPP through its own interface."""
        self._host_seq += 1
        i = self._host_seq
        (ns,) = self.spaces.add(f"h{i}")
        veth = f"h{i}{RUN}"
        self._link_to_vpp(ns, veth, f"172.30.{i}", f"fd00:30:{i}:")
        ip_batch(ns, [f"route add default via 172.30.{i}.1", f"route add default via fd00:30:{i}::1"]
                 + [f"addr add {a}/{a.max_prefixlen} dev lo" for a in ips])
        name = f"host-{veth}"
        assert self.vpp is not None
        for a in ips:
            via = f"172.30.{i}.2" if a.version == 4 else f"fd00:30:{i}::2"
            self.vpp.cli(f"ip route add {a}/{a.max_prefixlen} via {via} {name}")
        host = Host(ns, name, list(ips))
        self.hosts[name] = host
        self.warm(ns, f"172.30.{i}.1", f"fd00:30:{i}::1")
        return host

    def warm(self, ns: str, *gateways: str) -> None:
        """Resolve neighbours both ways now, so no probe's first packet waits for ARP/ND."""
        for gw in gateways:
            run(["ip", "netns", "exec", ns, "ping", "-c1", "-W2", gw], check=False)

    def remove_hosts(self) -> None:
        assert self.vpp is not None
        for name, host in list(self.hosts.items()):
            for a in host.ips:
                self.vpp.cli(f"ip route del {a}/{a.max_prefixlen}")
            self.vpp.cli(f"delete host-interface name {name.removeprefix('host-')}")
            self.spaces.remove([host.ns])
        self.hosts.clear()

    def set_external(self, ips: Iterable[IPAddr]) -> None:
        """Addresses the client owns (on its loopback)."""
        ip_batch(self.client, [f"addr del {a}/{a.max_prefixlen} dev lo" for a in self.external])
        self.external = sorted(set(ips), key=lambda a: (a.version, a))
        ip_batch(self.client, [f"addr add {a}/{a.max_prefixlen} dev lo" + (" nodad" if a.version == 6 else "")
                               for a in self.external])

    def pod_namespaces(self, shorts: list[str]) -> list[str]:
        return self.spaces.add(*shorts)

    def close(self) -> None:
        try:
            if self.vpp is not None:
                self.vpp.stop()
        finally:
            self.spaces.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------- probes (see vppagent.testbed.probes)

# VPP keeps sessions across runs: every probe must be a fresh flow.
VPP_MARKING = Marking(token=b"VPPAGENT", pad=24, fresh_flows=True)


def run_probes(socks: NetnsSockets, probes: list[Probe], timeout: float = 1.5) -> None:
    """``probes.run_probes`` with VPP's timeout and fresh flows."""
    probes_run(socks, probes, timeout, VPP_MARKING)


def tcp_pair(socks: NetnsSockets, client_ns: str, server_ns: str, server_ip: str, port: int,
             timeout: float = 3.0) -> tuple[socket.socket, socket.socket]:
    """An established TCP connection across VPP: (client side, server side)."""
    fam = socket.AF_INET6 if ":" in server_ip else socket.AF_INET
    listener = socks.socket(server_ns, fam, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((server_ip, port))
        listener.listen(1)
        listener.settimeout(timeout)
        client = socks.socket(client_ns, fam, socket.SOCK_STREAM)
        client.settimeout(timeout)
        try:
            client.connect((server_ip, port))
            server, _ = listener.accept()
        except BaseException:
            client.close()
            raise
        server.settimeout(timeout)
        return client, server
    finally:
        listener.close()


def _recv_exact(s: socket.socket, n: int) -> bytes | None:
    """``n`` bytes from ``s``, or None when the peer closes first."""
    got = b""
    while len(got) < n:
        chunk = s.recv(n - len(got))
        if not chunk:
            return None
        got += chunk
    return got


def exchange(a: socket.socket, b: socket.socket, data: bytes) -> bool:
    """``data`` from ``a`` arrives at ``b`` (and back)."""
    try:
        a.sendall(data)
        got = _recv_exact(b, len(data))
        if got is None:
            return False
        b.sendall(got)
        return _recv_exact(a, len(data)) == data
    except OSError:
        return False
