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

import ctypes
import errno
import ipaddress
import os
import secrets
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pytest

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
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


def run(argv: list[str], stdin: str | None = None, check: bool = True, timeout: float = 60) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}\n{stdin or ''}")
    return proc.stdout


def ip_batch(ns: str | None, lines: list[str]) -> None:
    if lines:
        run(["ip", *(["-n", ns] if ns else []), "-batch", "-"], "\n".join(lines) + "\n")


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


class Namespaces:
    """Network namespaces named ``vpa<run><group>-<short>``; ``close`` deletes every one."""

    def __init__(self, group: str) -> None:
        self.prefix = f"vpa{RUN}{group}"
        self.names: list[str] = []

    def add(self, *shorts: str) -> list[str]:
        names = [f"{self.prefix}-{s}" for s in shorts]
        try:
            ip_batch(None, [f"netns add {n}" for n in names])
        finally:
            self.names += [n for n in names if os.path.exists(f"/run/netns/{n}")]
        for n in names:
            ip_batch(n, ["link set lo up"])
        return names

    def remove(self, names: Iterable[str]) -> None:
        names = [n for n in names if n in self.names]
        if names:
            subprocess.run(["ip", "-force", "-batch", "-"], input="".join(f"netns del {n}\n" for n in names),
                           capture_output=True, text=True, timeout=60)
        self.names = [n for n in self.names if n not in names]

    def close(self) -> None:
        self.remove(list(self.names))


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
        self.spaces = Namespaces(group)
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


# ---------------------------------------------------------------- sockets in namespaces

class NetnsSockets:
    """Opens sockets inside named namespaces from one dedicated thread."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vpp-netns-sockets")
        self._home: int | None = None

    def socket(self, ns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
        return self._pool.submit(self._open, ns, family, kind, proto).result()

    def _open(self, ns: str, family: int, kind: int, proto: int) -> socket.socket:
        if self._home is None:
            self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {ns}")
        finally:
            os.close(fd)
        try:
            return socket.socket(family, kind, proto)
        finally:
            if _libc.setns(self._home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._home is not None:
            os.close(self._home)


@dataclass(frozen=True)
class Packet:
    src: IPAddr
    dst: IPAddr
    protocol: int
    dst_port: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None


@dataclass
class Probe:
    idx: int
    src_ns: str
    dst_ns: str
    pkt: Any                      # an evaluator Packet (or ``Packet`` above)
    delivered: bool = False
    detail: str = "no answer"


TOKEN = b"VPPAGENT"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp_message(version: int, icmp_type: int, code: int, ident: int, payload: bytes) -> bytes:
    """ICMP with a payload that is not an IP header (ICMPv6 checksums: the kernel)."""
    header = struct.pack("!BBHHH", icmp_type, code, 0, ident, 1)
    if version == 6:
        return header + payload
    return struct.pack("!BBHHH", icmp_type, code, _checksum(header + payload), ident, 1) + payload


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return ~crc & 0xFFFFFFFF


def sctp_init(src_port: int, dst_port: int, tag: int) -> bytes:
    chunk = struct.pack("!BBHIIHHI", 1, 0, 20, tag, 65535, 1, 1, 1)
    packet = struct.pack("!HHII", src_port, dst_port, 0, 0) + chunk
    return packet[:8] + struct.pack("<I", _crc32c(packet)) + chunk


def _token(idx: int) -> bytes:
    return TOKEN + struct.pack("!I", idx) + b"\x00" * 24       # zeros: never parsed as an inner header


def _find_token(data: bytes) -> int | None:
    at = data.find(TOKEN)
    if at < 0 or len(data) < at + len(TOKEN) + 4:
        return None
    return struct.unpack("!I", data[at + len(TOKEN):at + len(TOKEN) + 4])[0]


def _family(ip: IPAddr) -> int:
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


def run_probes(socks: NetnsSockets, probes: list[Probe], timeout: float = 1.5) -> None:
    """Send every probe at once, wait ``timeout`` for what gets through."""
    sel = selectors.DefaultSelector()
    opened: list[socket.socket] = []
    listeners: dict[tuple, socket.socket] = {}
    by_idx = {p.idx: p for p in probes}
    sctp_tags: dict[int, int] = {}

    def listen(ns: str, ip: IPAddr, proto: int, port: int | None) -> None:
        key = (ns, ip.version, proto, port if proto in (6, 17) else None)
        if key in listeners:
            return
        fam = _family(ip)
        any_addr = "::" if ip.version == 6 else "0.0.0.0"
        if proto == 6:
            s = socks.socket(ns, fam, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if ip.version == 6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((any_addr, port))
            s.listen(512)
            data: tuple = ("accept",)
        elif proto == 17:
            s = socks.socket(ns, fam, socket.SOCK_DGRAM)
            if ip.version == 6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((any_addr, port))
            data = ("datagram", 0, proto)
        else:
            s = socks.socket(ns, fam, socket.SOCK_RAW, proto)
            data = ("datagram", 20 if ip.version == 4 else 0, proto)
        s.setblocking(False)
        opened.append(s)
        listeners[key] = s
        sel.register(s, selectors.EVENT_READ, data)

    try:
        for p in probes:
            listen(p.dst_ns, p.pkt.dst, p.pkt.protocol, p.pkt.dst_port)
        resend: list[tuple[socket.socket, bytes, tuple]] = []
        for p in probes:
            pkt = p.pkt
            fam = _family(pkt.dst)
            if pkt.protocol == 6:
                s = socks.socket(p.src_ns, fam, socket.SOCK_STREAM)
                s.setblocking(False)
                opened.append(s)
                s.bind((str(pkt.src), 0))
                rc = s.connect_ex((str(pkt.dst), pkt.dst_port))
                if rc not in (0, errno.EINPROGRESS):
                    p.detail = os.strerror(rc)
                    continue
                sel.register(s, selectors.EVENT_WRITE, ("connect", p.idx))
                continue
            if pkt.protocol == 17:
                s = socks.socket(p.src_ns, fam, socket.SOCK_DGRAM)
                message, dest = _token(p.idx), (str(pkt.dst), pkt.dst_port)
            elif pkt.protocol in (1, 58):
                s = socks.socket(p.src_ns, fam, socket.SOCK_RAW, pkt.protocol)
                ident = secrets.randbelow(0xFFFF) + 1     # a fresh echo identifier: a fresh flow
                message = icmp_message(pkt.dst.version, pkt.icmp_type or 0, pkt.icmp_code or 0, ident,
                                       _token(p.idx))
                dest = (str(pkt.dst), 0)
            elif pkt.protocol == 132:
                s = socks.socket(p.src_ns, fam, socket.SOCK_RAW, 132)
                tag = secrets.randbits(31) | 1
                sctp_tags[tag] = p.idx
                message, dest = sctp_init(30000 + secrets.randbelow(20000), pkt.dst_port or 0, tag), (str(pkt.dst), 0)
            else:
                p.detail = f"cannot send protocol {pkt.protocol}"
                continue
            opened.append(s)
            s.bind((str(pkt.src), 0))
            s.setblocking(False)
            s.sendto(message, dest)
            resend.append((s, message, dest))
        start = time.monotonic()
        resent = False
        while (now := time.monotonic()) < start + timeout:
            if not resent and now >= start + timeout / 3:
                resent = True
                for s, message, dest in resend:
                    try:
                        s.sendto(message, dest)
                    except OSError:
                        pass
            for key, _ in sel.select(timeout=0.02):
                data = key.data
                s = key.fileobj
                assert isinstance(s, socket.socket)
                if data[0] == "accept":
                    try:
                        conn, _ = s.accept()
                        conn.close()
                    except OSError:
                        pass
                elif data[0] == "connect":
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    probe = by_idx[data[1]]
                    probe.delivered = err == 0
                    probe.detail = f"connected after {now - start:.3f}s" if err == 0 else os.strerror(err)
                    sel.unregister(s)
                else:
                    while True:
                        try:
                            payload = s.recv(4096)
                        except OSError:
                            break
                        body = payload[data[1]:]
                        if data[2] == 132:
                            idx = sctp_tags.get(struct.unpack("!I", body[16:20])[0]) if len(body) >= 20 else None
                        else:
                            idx = _find_token(body)
                        if idx in by_idx:
                            by_idx[idx].delivered = True
                            by_idx[idx].detail = f"arrived after {now - start:.3f}s"
    finally:
        sel.close()
        for s in opened:
            s.close()


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


def exchange(a: socket.socket, b: socket.socket, data: bytes) -> bool:
    """``data`` from ``a`` arrives at ``b`` (and back)."""
    try:
        a.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = b.recv(len(data) - len(got))
            if not chunk:
                return False
            got += chunk
        b.sendall(got)
        back = b""
        while len(back) < len(data):
            chunk = a.recv(len(data) - len(back))
            if not chunk:
                return False
            back += chunk
        return back == data
    except OSError:
        return False
