"""Real packets between namespaces: listeners, TCP/UDP probes, ICMP echo, kept connections.

Everything runs in this process on threads that entered the namespace
(``setns`` per thread), so a probe costs a thread, not a process, and
hundreds can run at once. A socket keeps the namespace it was created in, so
a connection opened inside a pod can be used from any thread afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import secrets
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass

from vppagent.testbed.netns import call_in
from vppagent.testbed.probes import icmp_message


@dataclass
class Outcome:
    """What a probe got: ``ok`` with the listener's ``label`` and the ``peer`` address it saw,
    or ``error`` in {"timeout", "refused", "unreachable", "reset", "prohibited", "closed", ...}."""

    ok: bool
    label: str = ""
    peer: str = ""
    error: str = ""
    elapsed: float = 0.0


def plain(ip: str) -> str:
    """``::ffff:10.0.0.1`` → ``10.0.0.1``; ``fe80::1%eth0`` → ``fe80::1``."""
    return ip[7:] if ip.startswith("::ffff:") else ip.split("%")[0]


class Listener:
    """A TCP or UDP server in a netns (both families).

    By default it answers each TCP connection / UDP datagram with
    ``"<label> <peer-ip>\\n"`` and closes; with ``echo=True`` it keeps TCP
    connections open and echoes what it reads (for "does this connection
    survive X" tests). ``peers`` lists the source address of every client.
    """

    def __init__(self, netns_path: str, port: int, proto: str = "tcp", label: str = "",
                 echo: bool = False) -> None:
        if proto not in ("tcp", "udp"):
            raise ValueError(f"unknown protocol {proto!r} (tcp or udp)")
        self.netns_path, self.port, self.proto, self.label, self.echo = netns_path, port, proto, label, echo
        self.peers: list[str] = []
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._conns: list[socket.socket] = []
        self._thread: threading.Thread | None = None

    def start(self) -> "Listener":
        self._socks = call_in(self.netns_path, self._bind)
        self._thread = threading.Thread(target=self._serve, daemon=True, name=f"listener-{self.port}")
        self._thread.start()
        return self

    def _bind(self) -> list[socket.socket]:
        kind = socket.SOCK_STREAM if self.proto == "tcp" else socket.SOCK_DGRAM
        out: list[socket.socket] = []
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
                s.listen(128)
            out.append(s)
        return out

    def _answer(self, peer: str) -> bytes:
        return f"{self.label} {peer}\n".encode()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select(self._socks + self._conns, [], [], 0.05)
            except (OSError, ValueError):   # a socket closed under us: close() is running
                return
            for s in ready:
                with contextlib.suppress(OSError):
                    if s in self._conns:
                        self._echo(s)
                    elif self.proto == "udp":
                        data, addr = s.recvfrom(2048)
                        self.peers.append(plain(addr[0]))
                        s.sendto(data if self.echo else self._answer(plain(addr[0])), addr)
                    else:
                        self._accept(s)

    def _accept(self, s: socket.socket) -> None:
        conn, addr = s.accept()
        self.peers.append(plain(addr[0]))
        if self.echo:
            self._conns.append(conn)
            return
        with conn:
            conn.settimeout(1.0)
            with contextlib.suppress(OSError):
                conn.recv(256)
            conn.sendall(self._answer(plain(addr[0])))

    def _echo(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(4096)
        except OSError:
            data = b""
        if data:
            conn.sendall(data)
            return
        self._conns.remove(conn)
        conn.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for s in self._socks + self._conns:
            s.close()
        self._socks, self._conns = [], []

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _error_name(exc: OSError) -> str:
    if isinstance(exc, socket.timeout):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    return {errno.EHOSTUNREACH: "unreachable", errno.ENETUNREACH: "unreachable",
            errno.EACCES: "prohibited", errno.EPERM: "prohibited"}.get(exc.errno or 0, str(exc))


def probe(netns_path: str, dst: str, port: int, proto: str = "tcp", timeout: float = 1.0) -> Outcome:
    """Connect (TCP) or send a datagram (UDP) from a netns and read the listener's answer."""
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
            except OSError as exc:
                return Outcome(False, error=_error_name(exc), elapsed=time.monotonic() - started)
        elapsed = time.monotonic() - started
        if not data:
            return Outcome(False, error="closed", elapsed=elapsed)
        label, _, peer = data.decode().strip().partition(" ")
        return Outcome(True, label=label, peer=peer, elapsed=elapsed)

    return call_in(netns_path, go)


def connect(netns_path: str, dst: str, port: int, timeout: float = 2.0) -> socket.socket:
    """A TCP connection opened from a netns; the caller owns (and closes) it."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET

    def go() -> socket.socket:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect((dst, port))
        except BaseException:
            s.close()
            raise
        return s

    return call_in(netns_path, go)


def exchange(conn: socket.socket, payload: bytes = b"ping\n") -> bool:
    """Send on a kept connection to an echo listener; True when the same bytes come back."""
    try:
        conn.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = conn.recv(len(payload) - len(got))
            if not chunk:
                return False
            got += chunk
    except OSError:
        return False
    return got == payload


def ping(netns_path: str, dst: str, timeout: float = 1.0) -> bool:
    """One ICMP (v6) echo from a netns; True when the matching reply arrives in time."""
    v6 = ":" in dst
    ident, seq = secrets.randbits(16), 1

    def go() -> bool:
        proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
        with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW, proto) as s:
            packet = icmp_message(6 if v6 else 4, 128 if v6 else 8, 0, ident, b"vppagent-testbed")
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
                if kind == (129 if v6 else 0) and rid == ident and rseq == seq and plain(addr[0]) == dst:
                    return True
            return False

    return call_in(netns_path, go)


__all__ = ["Listener", "Outcome", "connect", "exchange", "ping", "plain", "probe"]
