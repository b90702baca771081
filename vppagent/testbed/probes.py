"""Raw probes between named network namespaces: one socket thread, one selector.

The packet-level tests (nftables, iptables, real VPP) all ask the same
question of hundreds of packets at once: does it reach the destination
namespace?  Spawning a process per probe is too slow, so sockets are opened
inside the namespaces by one worker thread (``NetnsSockets``) and every probe
of a batch runs in parallel under one selector (``run_probes``).  TCP counts
as delivered when the connection completes; UDP, ICMP and SCTP when the
datagram reaches a socket in the destination namespace.  SCTP and odd ICMP
types are crafted by hand (no SCTP sockets, no kernel ICMP sender for them).
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import secrets
import selectors
import socket
import struct
import subprocess
import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable

CLONE_NEWNET = 0x40000000
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address
_libc = ctypes.CDLL(None, use_errno=True)


# -- commands and namespaces -------------------------------------------------------------

def run(argv: list[str], stdin: str | None = None, check: bool = True, timeout: float = 60) -> str:
    """A command's stdout; with ``check`` a failure raises with stderr and the input that caused it."""
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}\n{stdin or ''}")
    return proc.stdout


def ip_batch(ns: str | None, lines: list[str]) -> None:
    """Many ``ip`` commands in one process (inside ``ns`` when given): set-ups stay fast."""
    if lines:
        run(["ip", *(["-n", ns] if ns else []), "-batch", "-"], "\n".join(lines) + "\n")


class Namespaces:
    """Namespaces named ``<prefix>-<short>``, tracked from creation so ``close`` deletes them even mid-set-up."""

    def __init__(self, prefix: str, lo_up: bool = False) -> None:
        self.prefix = prefix
        self.lo_up = lo_up
        self.names: list[str] = []

    def add(self, *shorts: str) -> list[str]:
        names = [f"{self.prefix}-{s}" for s in shorts]
        try:
            ip_batch(None, [f"netns add {n}" for n in names])
        finally:
            self.names += [n for n in names if os.path.exists(f"/run/netns/{n}")]
        if self.lo_up:
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


class NetnsSockets:
    """Opens sockets inside named namespaces from one dedicated thread.

    setns(2) on a network namespace affects only the calling thread, so the
    worker enters the namespace, opens the socket and returns home; nothing
    else ever runs on that thread (no subprocess can inherit a namespace by
    mistake). A failed return home retires the thread.
    """

    def __init__(self, name: str = "netns-sockets") -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._home: int | None = None
        self._broken = False

    def socket(self, ns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
        return self._pool.submit(self._open, ns, family, kind, proto).result()

    def _open(self, ns: str, family: int, kind: int, proto: int) -> socket.socket:
        self._enter(ns)
        try:
            return socket.socket(family, kind, proto)
        finally:
            self._leave()

    def read(self, ns: str, path: str) -> str:
        """Read a per-namespace file such as /proc/thread-self/net/if_inet6 inside ``ns``."""
        def read() -> str:
            self._enter(ns)
            try:
                with open(path) as f:
                    return f.read()
            finally:
                self._leave()
        return self._pool.submit(read).result()

    def _enter(self, ns: str) -> None:
        if self._broken:
            raise RuntimeError("netns socket thread could not return to its namespace")
        if self._home is None:
            self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {ns}")
        finally:
            os.close(fd)

    def _leave(self) -> None:
        assert self._home is not None
        if _libc.setns(self._home, CLONE_NEWNET) != 0:
            self._broken = True
            raise OSError(ctypes.get_errno(), "setns back home")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._home is not None:
            os.close(self._home)


# -- hand-made packets -------------------------------------------------------------------

def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071), for ICMPv4 messages built by hand."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp_message(version: int, icmp_type: int, code: int, ident: int, payload: bytes) -> bytes:
    """Any ICMP type with our payload (sequence 1); ICMPv6 checksums are filled in by the kernel."""
    header = struct.pack("!BBHHH", icmp_type, code, 0, ident, 1)
    if version == 6:
        return header + payload
    return struct.pack("!BBHHH", icmp_type, code, checksum(header + payload), ident, 1) + payload


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC32c (Castagnoli), SCTP's checksum: conntrack drops an INIT whose CRC is wrong."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return ~crc & 0xFFFFFFFF


def sctp_init(src_port: int, dst_port: int, tag: int) -> bytes:
    """An SCTP INIT valid enough for conntrack; the initiate ``tag`` identifies the probe on arrival."""
    chunk = struct.pack("!BBHIIHHI", 1, 0, 20, tag, 65535, 1, 1, 1)
    packet = struct.pack("!HHII", src_port, dst_port, 0, 0) + chunk
    return packet[:8] + struct.pack("<I", crc32c(packet)) + chunk


def sctp_init_tag(data: bytes) -> int | None:
    """The initiate tag of an SCTP INIT (common header 12 bytes, then the chunk), else None."""
    if len(data) >= 20 and data[12] == 1:
        return struct.unpack("!I", data[16:20])[0]
    return None


def family(ip: IPAddr) -> int:
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


# -- the probe engine --------------------------------------------------------------------

@dataclass
class Probe:
    """One packet sent from ``src_ns`` and looked for in ``dst_ns``; ``run_probes`` fills the verdict.

    ``pkt`` is an evaluator ``Packet`` or anything with ``src``, ``dst``,
    ``protocol``, ``dst_port``, ``icmp_type`` and ``icmp_code``.
    """

    idx: int
    src_ns: str
    dst_ns: str
    pkt: Any
    delivered: bool = False
    detail: str = "no answer"


@dataclass(frozen=True)
class Marking:
    """How probes are told apart on arrival, per dataplane.

    ``token`` + the index (+ ``pad`` zero bytes, so an ICMP error's payload
    never parses as an inner header) marks UDP/ICMP payloads.  With
    ``fresh_flows`` every run uses random ICMP identifiers, SCTP ports and
    tags, so a dataplane whose sessions outlive the run (VPP) sees new flows;
    without, they are derived from the index (fresh namespaces each run).
    """

    token: bytes = b"VPAPROBE"
    pad: int = 0
    fresh_flows: bool = False

    def payload(self, idx: int) -> bytes:
        return self.token + struct.pack("!I", idx) + b"\x00" * self.pad

    def find(self, data: bytes) -> int | None:
        at = data.find(self.token)
        if at < 0 or len(data) < at + len(self.token) + 4:
            return None
        return struct.unpack("!I", data[at + len(self.token):at + len(self.token) + 4])[0]


def run_probes(socks: NetnsSockets, probes: list[Probe], timeout: float, marking: Marking = Marking(),
               settle: float | None = None, expect: Collection[int] = ()) -> None:
    """Send every probe at once and wait ``timeout`` for what gets through.

    Datagrams are sent again after a third of ``timeout`` (a slow neighbour
    entry may have eaten the first copy).  With ``settle``, the wait ends
    early once that much time has passed and every probe index in ``expect``
    has been delivered: callers that know what should arrive need not wait
    out the full timeout for it.
    """
    sel = selectors.DefaultSelector()
    opened: list[socket.socket] = []
    listeners: dict[tuple, socket.socket] = {}
    by_idx = {p.idx: p for p in probes}
    sctp_tags: dict[int, int] = {}
    waiting = set(expect)

    def listen(ns: str, ip: IPAddr, proto: int, port: int | None) -> None:
        key = (ns, ip.version, proto, port if proto in (6, 17) else None)   # one raw socket sees every port
        if key in listeners:
            return
        fam = family(ip)
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

    def deliver(probe: Probe, detail: str) -> None:
        probe.delivered, probe.detail = True, detail
        waiting.discard(probe.idx)

    try:
        for p in probes:
            listen(p.dst_ns, p.pkt.dst, p.pkt.protocol, p.pkt.dst_port)
        resend: list[tuple[socket.socket, bytes, tuple]] = []
        for p in probes:
            pkt = p.pkt
            fam = family(pkt.dst)
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
                message, dest = marking.payload(p.idx), (str(pkt.dst), pkt.dst_port)
            elif pkt.protocol in (1, 58):
                s = socks.socket(p.src_ns, fam, socket.SOCK_RAW, pkt.protocol)
                ident = secrets.randbelow(0xFFFF) + 1 if marking.fresh_flows else 0x5650
                message = icmp_message(pkt.dst.version, pkt.icmp_type or 0, pkt.icmp_code or 0, ident,
                                       marking.payload(p.idx))
                dest = (str(pkt.dst), 0)
            elif pkt.protocol == 132:
                # No SCTP sockets in this kernel: a raw INIT is what a client would send first.
                s = socks.socket(p.src_ns, fam, socket.SOCK_RAW, 132)
                if marking.fresh_flows:
                    tag, sport = secrets.randbits(31) | 1, 30000 + secrets.randbelow(20000)
                else:
                    tag, sport = p.idx + 1, 40000 + p.idx
                sctp_tags[tag] = p.idx
                message, dest = sctp_init(sport, pkt.dst_port or 0, tag), (str(pkt.dst), 0)
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
            if settle is not None and now >= start + settle and not waiting:
                break
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
                    if err == 0:
                        deliver(probe, f"connected after {now - start:.3f}s")
                    else:
                        probe.detail = os.strerror(err)
                    sel.unregister(s)
                else:
                    while True:
                        try:
                            payload = s.recv(4096)
                        except OSError:
                            break
                        body = payload[data[1]:]
                        if data[2] == 132:
                            tag = sctp_init_tag(body)
                            idx = sctp_tags.get(tag) if tag is not None else None
                        else:
                            idx = marking.find(body)
                        if idx in by_idx:
                            deliver(by_idx[idx], f"arrived after {now - start:.3f}s")
    finally:
        sel.close()
        for s in opened:
            s.close()
