"""One connection to VPP's binary API through vpp_papi, made safe to build on.

vpp_papi leaves the dangerous parts to its caller: a message whose CRC
differs is silently left out, ``retval`` must be checked by hand, a client is
not thread-safe, and a restarted VPP shows up as a read failure.  This class
checks the declared message table at connect time, validates arguments before
sending, turns every nonzero ``retval`` into a typed error, enforces a single
owner thread, pipelines bulk work, and reports a lost or restarted VPP as
``VppRestarted`` so the caller can reconnect and reprogram.

The client comes from ``client_factory`` (vpp_papi's ``VPPApiClient`` by
default; ``vppagent.vpp.fake.FakeVpp.client_factory`` in tests) and is used in
vpp_papi's synchronous mode with its socket transport, but only to connect,
bootstrap the message definitions and disconnect.  Once connected, the
connection owns the socket: requests are packed with vpp_papi's message
objects and written as one batch of frames per window (vpp_papi's own
``write`` costs two syscalls per message), and replies are read here, on the
owner thread, with large ``recv`` calls, split into frames and decoded with
the same message objects.  vpp_papi's reader thread is stopped right after
connect: it passed every reply through a ``multiprocessing.Queue`` (a pipe and
a pickle per message) and built a type object per message to find its
context, which held pipelined calls to ~1.5x a synchronous loop where the
socket allows ~90x.  Events (messages without a context, e.g.
``sw_interface_event``) arrive in the same stream and are kept for
``poll_events``.  vpp_papi's ``do_async=True`` mode cannot bootstrap its API
definitions from VPP (the ``get_api_json`` reply goes to the event callback),
and its asyncio client would force an event loop on the agent.
"""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import random
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Collection, Iterable, Mapping, Sequence

from vppagent.reconciler.backoff import Backoff
from vppagent.vpp.errors import (
    VppApiError, VppApiMismatch, VppArgumentError, VppNotConnected, VppRestarted, VppTimeout,
    VppWrongThread,
)
from vppagent.vpp.messages import (
    DEFAULT_OPTIONAL_MODULES, MESSAGES, MessageDef, check_args, family, requests,
)

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/vpp/api.sock"
DEFAULT_BACKOFF = Backoff(base=0.1, factor=2.0, max=5.0, jitter=0.1)

Call = tuple[str, Mapping[str, Any]]
_FRAME = struct.Struct(">QII")       # vpp_papi socket transport framing: (0, length, 0)
_RECV_SIZE = 1 << 18                 # one recv takes up to a window of small replies


def _vpp_papi_client(**kwargs: Any) -> Any:
    from vpp_papi import VPPApiClient  # imported late: only real connections need it
    # no event thread: events are read from the socket by the connection (see the module doc)
    return VPPApiClient(async_thread=False, **kwargs)


@dataclass
class _Pending:
    """A request in flight: where its answer goes and how it ends."""

    index: int
    msg: MessageDef
    args: Mapping[str, Any]
    details: list[Any]
    reply: Any = None


class VppConnection:
    """A checked, single-owner connection to one VPP instance."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, client_name: str = "vppagent",
                 client_factory: Callable[..., Any] | None = None, *,
                 optional: Collection[str] = DEFAULT_OPTIONAL_MODULES,
                 timeout: float = 5.0, window: int = 256) -> None:
        """``optional`` names modules (``npol``) or request messages that may be
        absent: the connection then succeeds and ``has()`` says False."""
        self.socket_path = socket_path
        self.client_name = client_name
        self.timeout = timeout
        self.window = max(1, window)
        self._factory = client_factory or _vpp_papi_client
        self._optional = frozenset(optional)
        self._owner: int | None = None
        self._owner_name = ""
        self._client: Any = None
        self._broken: str | None = None
        self._send_info: dict[str, tuple[int, Any]] = {}
        self._recv_info: dict[int, Any] = {}          # message index -> vpp_papi message (to decode)
        self._sock: Any = None                        # the API socket, ours once connected
        self._sock_timeout: float | None = None
        self._rbuf = bytearray()                      # bytes read; decoded up to _rpos
        self._rpos = 0
        self._unavailable: dict[str, str] = {}
        self._events: collections.deque[Any] = collections.deque()
        self._contexts = itertools.count(random.randint(1, 1 << 30))
        self.vpe_pid: int | None = None
        self.version: str = ""
        self.generation = 0          # bumps each time a different VPP instance is seen
        self.stats = {"messages": 0, "round_trips": 0, "pipelines": 0}

    # ------------------------------------------------------------ lifecycle

    @property
    def connected(self) -> bool:
        return self._client is not None and self._broken is None

    def bind_owner(self) -> None:
        """Make the calling thread the only one allowed to use the connection
        (done implicitly by the first ``connect``)."""
        t = threading.current_thread()
        self._owner, self._owner_name = t.ident, t.name

    def connect(self) -> None:
        """Connect, verify the message table, record VPP's version and pid.

        Raises ``VppNotConnected`` when VPP cannot be reached and
        ``VppApiMismatch`` when it lacks (or has other versions of) required
        messages; the connection is closed again in both cases."""
        if self._owner is None:
            self.bind_owner()
        self._check_owner()
        if self._client is not None:
            raise VppNotConnected("already connected; disconnect() or reconnect() first")
        client = self._factory(server_address=self.socket_path, bootstrapapi=True,
                               read_timeout=self.timeout)
        try:
            client.connect(self.client_name)
            self._take_socket(client)
        except (OSError, ValueError, RuntimeError, VppNotConnected) as e:
            try:
                client.disconnect()       # a half-made connection still has a reader thread
            except Exception:
                pass
            raise VppNotConnected(f"cannot connect to VPP at {self.socket_path}: {e}") from e
        self._client, self._broken = client, None
        previous, self.vpe_pid = self.vpe_pid, None     # a new pid is what we came to learn
        try:
            self._verify_table()
            self._bind_messages()
            self.version = self._read_version()
            pid = self._read_pid()
        except BaseException:
            self.vpe_pid = previous
            self._drop_client()
            raise
        if pid != previous:
            self.generation += 1
        self.vpe_pid = pid
        log.info("connected to VPP %s (pid %s) at %s%s", self.version, pid, self.socket_path,
                 f"; unavailable: {', '.join(sorted(self._unavailable))}" if self._unavailable else "")

    def disconnect(self) -> None:
        self._check_owner()
        self._drop_client()

    def reconnect(self, backoff: Backoff | None = None, *, max_attempts: int | None = None,
                  sleep: Callable[[float], None] = time.sleep) -> bool:
        """Drop the current client and connect again, retrying with
        exponential backoff while VPP is unreachable.  Returns True when the
        VPP on the other side is a new instance (its pid changed), i.e. its
        state is gone and everything must be programmed again.  A message
        table mismatch is not retried."""
        self._check_owner()
        backoff = backoff or DEFAULT_BACKOFF
        old_pid = self.vpe_pid
        self._drop_client()
        for attempt in itertools.count(1):
            try:
                self.connect()
                break
            except (VppNotConnected, VppRestarted) as e:
                if max_attempts is not None and attempt >= max_attempts:
                    raise
                delay = backoff.delay(attempt)
                log.warning("VPP reconnect attempt %d failed (%s); retrying in %.2fs", attempt, e, delay)
                sleep(delay)
        return old_pid is not None and self.vpe_pid != old_pid

    def _take_socket(self, client: Any) -> None:
        """Stop vpp_papi's reader thread and read the API socket here from now on.

        The thread ends when its stop queue is written; what it read meanwhile (nothing is
        outstanding right after connect) is handed over, and one ``None`` is left in its
        reply queue so that vpp_papi's ``disconnect`` (a ``sockclnt_delete`` that waits for
        a reply through that queue) returns at once instead of after its read timeout."""
        transport = client.transport
        thread = getattr(transport, "message_thread", None)
        self._rbuf, self._rpos = bytearray(), 0
        if isinstance(thread, threading.Thread):
            transport.sque.put(True)
            thread.join(self.timeout)
            if thread.is_alive():
                raise VppNotConnected("vpp_papi's reader thread did not stop")
            handed: list[bytes] = []
            while True:
                try:
                    item = transport.q.get(timeout=min(self.timeout, 1.0))
                except queue.Empty:
                    break                 # the thread died without its farewell None
                if item is None:
                    break
                handed.append(bytes(item))
            transport.q.put(None)
            self._rbuf += b"".join(_FRAME.pack(0, len(m), 0) + m for m in handed)
        self._sock = transport.socket
        self._sock_timeout = None

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._sock = None
        self._rbuf, self._rpos = bytearray(), 0
        self._send_info.clear()
        self._recv_info.clear()
        if client is not None:
            try:
                client.disconnect()
            except Exception as e:  # a dead socket may fail in many ways; nothing to do
                log.debug("ignoring error while disconnecting from VPP: %r", e)

    # --------------------------------------------------------- capabilities

    def has(self, message: str) -> bool:
        """Whether VPP has ``message`` (and its replies) with our CRCs."""
        return self.connected and message in self._send_info

    def has_module(self, module: str) -> bool:
        """Whether every declared request of ``module`` (``npol``) is usable."""
        mine = [m.name for m in requests() if m.module == module]
        return bool(mine) and all(self.has(n) for n in mine)

    @property
    def unavailable(self) -> Mapping[str, str]:
        """Optional requests VPP lacks, with the reason."""
        return dict(self._unavailable)

    def _is_optional(self, msg: MessageDef) -> bool:
        return msg.name in self._optional or msg.module in self._optional

    def _verify_table(self) -> None:
        table = self._client.dump_message_table()
        theirs: dict[str, str] = {}
        for key in table:
            if len(key) > 9 and key[-9] == "_":
                theirs[key[:-9]] = "0x" + key[-8:]
        missing: list[str] = []
        mismatched: list[tuple[str, str, str]] = []
        self._unavailable = {}
        for req in requests():
            problems = []
            for name in family(req.name):
                m = MESSAGES[name]
                if m.name_crc in table:
                    continue
                if name in theirs:
                    problems.append((name, m.crc, theirs[name]))
                else:
                    problems.append((name, "", ""))
            if not problems:
                continue
            if self._is_optional(req):
                self._unavailable[req.name] = "; ".join(
                    f"{n} CRC {ours} != {vpp}" if vpp else f"{n} missing" for n, ours, vpp in problems)
                continue
            for p in problems:
                if p[2] and p not in mismatched:
                    mismatched.append(p)
                elif not p[2] and p[0] not in missing:
                    missing.append(p[0])
        if missing or mismatched:
            version = ""
            try:
                self._bind_messages()
                version = self._read_version()
            except Exception:
                pass
            raise VppApiMismatch(missing, mismatched, version)
        for name, why in self._unavailable.items():
            log.warning("VPP lacks optional %s: %s", name, why)

    def _bind_messages(self) -> None:
        """Message index and vpp_papi message object for each usable request, and the
        message object for each index VPP may answer with (replies, details, events)."""
        get_index = self._client.transport.get_msg_index
        papi = self._client.messages
        self._send_info, self._recv_info = {}, {}
        for req in requests():
            if req.name in self._unavailable:
                continue
            i = get_index(req.name_crc)
            if i > 0 and req.name in papi:
                self._send_info[req.name] = (i, papi[req.name])
        for m in MESSAGES.values():
            if not m.is_request and m.name in papi and (i := get_index(m.name_crc)) > 0:
                self._recv_info[i] = papi[m.name]

    def _read_version(self) -> str:
        if "show_version" not in self._send_info:
            return ""
        r = self._exchange([("show_version", {})])[0]
        return str(r.version).strip()

    def _read_pid(self) -> int:
        return int(self._exchange([("control_ping", {})])[0].vpe_pid)

    # ----------------------------------------------------------------- calls

    def call(self, name: str, **args: Any) -> Any:
        """Send one request and return its reply; nonzero retval raises
        ``VppApiError``."""
        if name in MESSAGES and MESSAGES[name].is_dump:
            raise VppArgumentError(name, "", "is a dump: use dump()")
        return self._run([(name, args)], pipelined=False)[0]

    def dump(self, name: str, **args: Any) -> list[Any]:
        """Send one dump request and return its details."""
        if name in MESSAGES and not MESSAGES[name].is_dump:
            raise VppArgumentError(name, "", "is not a dump: use call()")
        return self._run([(name, args)], pipelined=False)[0]

    def pipeline(self, calls: Iterable[Call]) -> list[Any]:
        """Send many requests before reading their replies (up to ``window``
        in flight) and return the replies in order (a list of details for a
        dump).  VPP executes every request; the first nonzero retval is then
        raised as ``VppApiError`` with its ``index``."""
        calls = list(calls)
        self.stats["pipelines"] += 1
        return self._run(calls, pipelined=True)

    def check_alive(self) -> None:
        """One round trip; raises ``VppRestarted`` when VPP is gone or its pid changed."""
        self._run([("control_ping", {})], pipelined=False)

    def poll_events(self) -> list[Any]:
        """Events VPP sent since the last poll (e.g. ``sw_interface_event``
        after ``want_interface_events``): those read with earlier replies, and
        what the socket holds now (read without waiting).  A lost socket marks
        the connection broken, for the next call to report."""
        self._check_owner()
        if self._sock is not None and self._broken is None:
            try:
                self._read_available()
                while (r := self._next_message()) is not None:
                    self._unsolicited(r)
            except VppRestarted as e:
                self._broken = e.reason
        out = list(self._events)
        self._events.clear()
        return out

    def _run(self, calls: Sequence[Call], pipelined: bool) -> list[Any]:
        self._check_owner()
        if self._client is None:
            raise VppNotConnected("not connected to VPP")
        if self._broken is not None:
            raise VppRestarted(f"connection to VPP is broken ({self._broken}); reconnect first",
                               self.vpe_pid)
        checked = []
        for name, args in calls:
            if name not in MESSAGES or not MESSAGES[name].is_request:
                raise VppArgumentError(name, "", "not a request in the declared message table")
            if name not in self._send_info:
                raise VppArgumentError(name, "", f"not available in this VPP ({self._unavailable.get(name, 'absent')})")
            checked.append((name, check_args(name, args)))
        shown = [args for _, args in calls]          # errors show what the caller wrote
        if pipelined:
            return self._exchange(checked, shown, indexed=True)
        return [self._exchange([c], [a])[0] for c, a in zip(checked, shown)]

    def _exchange(self, calls: Sequence[Call], shown: Sequence[Mapping[str, Any]] | None = None,
                  indexed: bool = False) -> list[Any]:
        """Write ``calls`` (at most ``window`` unanswered), read every answer,
        then raise the first failure."""
        pending: dict[int, _Pending] = {}
        order: list[_Pending] = []
        i, n = 0, len(calls)
        try:
            while i < n or pending:
                batch: list[tuple[str, Mapping[str, Any], int]] = []
                while i < n and len(pending) < self.window:
                    name, args = calls[i]
                    ctx = self._next_context()
                    p = _Pending(i, MESSAGES[name], shown[i] if shown else args, [])
                    pending[ctx] = p
                    order.append(p)
                    batch.append((name, args, ctx))
                    if p.msg.ends_with_ping:
                        batch.append(("control_ping", {}, ctx))
                    i += 1
                if batch:
                    self._write(batch)
                low = self.window // 2 if i < n else 0
                while len(pending) > low:
                    self._read_one(pending)
        except VppRestarted as e:
            self._broken = e.reason
            raise
        self.stats["round_trips"] += 1
        out = []
        for p in order:
            rv = getattr(p.reply, "retval", 0) if p.reply is not None else 0
            if rv:
                raise VppApiError(p.msg.name, rv, _essential(p.args), p.index if indexed else None)
            out.append(p.details if p.msg.is_dump else p.reply)
        return out

    def _next_context(self) -> int:
        ctx = next(self._contexts) & 0xFFFFFFFF
        return ctx or self._next_context()

    def _write(self, batch: Sequence[tuple[str, Mapping[str, Any], int]]) -> None:
        """Pack every message and send them all with one ``sendall``."""
        transport = self._client.transport
        client_index = transport.socket_index
        frames = []
        for name, args, ctx in batch:
            index, papi_msg = self._send_info[name]
            try:
                body = papi_msg.pack({**args, "_vl_msg_id": index, "client_index": client_index,
                                      "context": ctx})
            except VppArgumentError:
                raise
            except (ValueError, TypeError, KeyError) as e:   # vpp_papi refused what we let through
                raise VppArgumentError(name, "", f"vpp_papi cannot encode it: {e}") from e
            frames.append(_FRAME.pack(0, len(body), 0) + body)
        self.stats["messages"] += len(frames)
        try:
            self._sock.sendall(b"".join(frames))
        except (OSError, AttributeError) as e:   # AttributeError: socket already torn down
            raise VppRestarted(f"VPP socket lost while sending {batch[0][0]}: {e}", self.vpe_pid) from e

    def _read_one(self, pending: dict[int, _Pending]) -> None:
        while (r := self._next_message()) is None:
            self._receive()
        p = pending.get(getattr(r, "context", 0))
        if p is None:
            self._unsolicited(r)
            return
        msgname = type(r).__name__
        if msgname == "control_ping_reply":       # every dump ends with one: a free pid check
            self._check_pid(r)
        if p.msg.is_dump and msgname == p.msg.stream:
            p.details.append(r)
            return
        if not p.msg.ends_with_ping:
            p.reply = r
        del pending[r.context]

    def _unsolicited(self, r: Any) -> None:
        if getattr(r, "context", 0):      # the answer to a call abandoned earlier
            log.debug("dropping stale %s (context %s)", type(r).__name__, r.context)
        else:
            self._events.append(r)

    # ----------------------------------------------------------- the socket

    def _receive(self) -> None:
        """Append what VPP sends next to the read buffer, waiting up to ``timeout``."""
        if self._sock_timeout != self.timeout:
            self._set_timeout(self.timeout)
        try:
            chunk = self._sock.recv(_RECV_SIZE)
        except TimeoutError as e:
            raise VppTimeout(f"no reply from VPP within {self.timeout}s", self.vpe_pid) from e
        except (OSError, AttributeError) as e:   # AttributeError: socket already torn down
            raise VppRestarted(f"VPP socket lost: {e}", self.vpe_pid) from e
        if not chunk:
            raise VppRestarted("VPP closed the API socket", self.vpe_pid)
        self._append(chunk)

    def _append(self, chunk: bytes) -> None:
        if self._rpos and self._rpos * 2 >= len(self._rbuf):     # drop what was decoded, rarely
            del self._rbuf[:self._rpos]
            self._rpos = 0
        self._rbuf += chunk

    def _read_available(self) -> None:
        """Append whatever the socket holds now, without waiting."""
        self._set_timeout(0.0)
        try:
            while True:
                try:
                    chunk = self._sock.recv(_RECV_SIZE)
                except (BlockingIOError, TimeoutError):
                    return
                except (OSError, AttributeError) as e:
                    raise VppRestarted(f"VPP socket lost: {e}", self.vpe_pid) from e
                if not chunk:
                    raise VppRestarted("VPP closed the API socket", self.vpe_pid)
                self._append(chunk)
        finally:
            self._set_timeout(self.timeout)

    def _set_timeout(self, timeout: float) -> None:
        try:
            self._sock.settimeout(timeout)
        except (OSError, AttributeError) as e:
            raise VppRestarted(f"VPP socket lost: {e}", self.vpe_pid) from e
        self._sock_timeout = timeout

    def _next_message(self) -> Any:
        """The next complete message in the read buffer, decoded; None when none is complete.
        Messages outside the declared table (nothing we sent asks for them) are skipped."""
        buf, pos = self._rbuf, self._rpos
        while len(buf) - pos >= _FRAME.size:
            start = pos + _FRAME.size
            end = start + _FRAME.unpack_from(buf, pos)[1]
            if len(buf) < end:
                return None
            body = bytes(buf[start:end])
            pos = self._rpos = end
            if pos == len(buf):
                buf.clear()
                pos = self._rpos = 0
            index = int.from_bytes(body[:2], "big")
            papi_msg = self._recv_info.get(index)
            if papi_msg is None:
                log.debug("ignoring message %d from VPP (not in the declared table)", index)
                continue
            try:
                return papi_msg.unpack(body)[0]
            except Exception as e:  # CRCs matched, so this is a broken stream
                raise VppRestarted(f"cannot decode {papi_msg.name} from VPP: {e!r}", self.vpe_pid) from e
        return None

    def _check_pid(self, r: Any) -> None:
        pid = getattr(r, "vpe_pid", None)
        if self.vpe_pid is not None and pid is not None and pid != self.vpe_pid:
            raise VppRestarted(f"VPP restarted (pid {self.vpe_pid} -> {pid})", self.vpe_pid, pid)

    def _check_owner(self) -> None:
        if self._owner is not None and threading.get_ident() != self._owner:
            raise VppWrongThread(f"VppConnection belongs to thread {self._owner_name!r}; "
                                 f"called from {threading.current_thread().name!r} "
                                 f"(vpp_papi is not thread-safe)")

    def __repr__(self) -> str:
        state = "connected" if self.connected else ("broken" if self._broken else "disconnected")
        return f"<VppConnection {self.socket_path} {state} pid={self.vpe_pid} version={self.version!r}>"


def _essential(args: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments worth printing in an error: long arrays become counts."""
    out: dict[str, Any] = {}
    for k, v in args.items():
        if isinstance(v, (list, tuple)) and len(v) > 4:
            out[k] = f"<{len(v)} items>"
        elif isinstance(v, Mapping):
            out[k] = _essential(v)
        else:
            out[k] = v
    return out
