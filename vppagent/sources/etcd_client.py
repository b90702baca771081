"""A small etcd v3 client over etcd's JSON gRPC gateway, standard library only.

etcd (3.4+) serves its v3 API as JSON on the client URL (``POST /v3/kv/range``
…), so the agent needs no gRPC stubs or third-party etcd package. Keys and
values travel base64-encoded; int64 fields arrive as strings.

Unary calls use ``http.client`` with a small pool of keep-alive connections.
A watch is a long-lived chunked HTTP response of newline-delimited JSON; it
is read from a plain socket with our own tiny chunk decoder, because
``http.client`` responses become unusable after a read timeout, and a
watcher must wake up periodically (keepalive probe, shutdown) without losing
its stream.

Errors are typed: :class:`EtcdConnectionError` (cannot reach etcd, stream
cut), :class:`EtcdCompactedError` (a revision asked for is compacted) and
:class:`EtcdRequestError` (etcd rejected the request).
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence
from urllib.parse import urlsplit

# gRPC status codes etcd reports in gateway errors.
GRPC_DEADLINE_EXCEEDED = 4
GRPC_OUT_OF_RANGE = 11
GRPC_UNAVAILABLE = 14


class EtcdError(Exception):
    """Anything that went wrong talking to etcd."""


class EtcdConnectionError(EtcdError):
    """etcd could not be reached, or a connection/stream to it was cut."""


class EtcdCompactedError(EtcdError):
    """The revision asked for has been compacted away; relist at a newer one."""

    def __init__(self, message: str, compact_revision: int = 0) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class EtcdRequestError(EtcdError):
    """etcd answered with an error (``code`` is the gRPC status code)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------- data


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0


@dataclass(frozen=True)
class RangeResult:
    """Keys of one range read, all as of ``revision``."""

    kvs: list[KeyValue]
    revision: int
    more: bool = False


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["PUT", "DELETE"]
    kv: KeyValue


@dataclass(frozen=True)
class WatchResponse:
    """One message of a watch: events, the creation ack, or a progress notification.

    A progress notification means every event up to ``revision`` was sent;
    the creation ack's revision promises nothing (history may still follow).
    """

    revision: int
    events: list[WatchEvent]
    created: bool = False

    @property
    def progress(self) -> bool:
        return not self.events and not self.created


@dataclass(frozen=True)
class Compare:
    """One txn condition: ``target`` is VERSION, CREATE, MOD or VALUE."""

    key: str
    target: Literal["VERSION", "CREATE", "MOD", "VALUE"]
    result: Literal["EQUAL", "GREATER", "LESS", "NOT_EQUAL"]
    operand: int | bytes

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": _b64(self.key), "target": self.target, "result": self.result}
        field_name = {"VERSION": "version", "CREATE": "create_revision", "MOD": "mod_revision",
                      "VALUE": "value"}[self.target]
        out[field_name] = _b64(self.operand) if isinstance(self.operand, bytes) else str(self.operand)
        return out


def put_op(key: str, value: bytes | str) -> dict[str, Any]:
    """A txn operation writing ``key``."""
    return {"request_put": {"key": _b64(key), "value": _b64(value)}}


def delete_op(key: str) -> dict[str, Any]:
    """A txn operation deleting ``key``."""
    return {"request_delete_range": {"key": _b64(key)}}


# ---------------------------------------------------------------------- encoding


def _b64(data: str | bytes) -> str:
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _unb64(data: str | None) -> bytes:
    return base64.b64decode(data) if data else b""


def _key(data: str | None) -> str:
    return _unb64(data).decode("utf-8", "surrogateescape")


def _int(data: Any) -> int:
    return int(data) if data not in (None, "") else 0


def _kv(obj: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_key(obj.get("key")),
        value=_unb64(obj.get("value")),
        create_revision=_int(obj.get("create_revision")),
        mod_revision=_int(obj.get("mod_revision")),
        version=_int(obj.get("version")),
    )


def _revision(reply: dict[str, Any]) -> int:
    return _int((reply.get("header") or {}).get("revision"))


def prefix_end(prefix: str | bytes) -> str:
    """The range end that makes ``[prefix, end)`` cover every key starting with ``prefix``."""
    raw = bytearray(prefix.encode("utf-8", "surrogateescape") if isinstance(prefix, str) else prefix)
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return "\0"           # etcd: from key to the end of the keyspace
    raw[-1] += 1
    return bytes(raw).decode("utf-8", "surrogateescape")


def _error_from_reply(status: int, body: bytes) -> EtcdError:
    """Map a gateway error body (``{"error", "code", "message"}``) to a typed error."""
    try:
        reply = json.loads(body)
        message = str(reply.get("message") or reply.get("error") or body[:200])
        code = _int(reply.get("code"))
    except (ValueError, AttributeError):     # not the gateway talking (wrong URL, proxy, old etcd)
        return EtcdRequestError(f"HTTP {status} from the etcd endpoint: {body[:200]!r}")
    return _error_from(message, code)


def _error_from(message: str, code: int) -> EtcdError:
    if "compacted" in message:
        return EtcdCompactedError(message)
    if code in (GRPC_UNAVAILABLE, GRPC_DEADLINE_EXCEEDED):
        return EtcdConnectionError(message)
    return EtcdRequestError(message, code)


# ---------------------------------------------------------------------- client


class EtcdClient:
    """Unary KV, txn and maintenance calls plus watches against one etcd cluster.

    ``endpoints`` are client URLs (``http://127.0.0.1:2379``); on a
    connection failure the next one is tried. Safe to share between threads.
    """

    def __init__(self, endpoints: str | Sequence[str], timeout: float = 5.0) -> None:
        urls = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not urls:
            raise ValueError("no etcd endpoint given")
        self.endpoints: list[tuple[str, int]] = []
        for url in urls:
            parts = urlsplit(url if "://" in url else f"http://{url}")
            if parts.scheme != "http":
                raise ValueError(f"unsupported etcd endpoint {url!r}: only http:// is supported")
            self.endpoints.append((parts.hostname or "127.0.0.1", parts.port or 2379))
        self.timeout = timeout
        self._current = 0
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    # -- transport -----------------------------------------------------------

    def _endpoint(self) -> tuple[str, int]:
        return self.endpoints[self._current % len(self.endpoints)]

    def _next_endpoint(self) -> None:
        with self._lock:
            self._current += 1
            stale, self._idle = self._idle, []
        for conn in stale:
            conn.close()

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        host, port = self._endpoint()
        return http.client.HTTPConnection(host, port, timeout=self.timeout), False

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < 8:
                self._idle.append(conn)
                return
        conn.close()

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST one gateway request (``/v3/kv/range`` …) and return the decoded reply."""
        data = json.dumps(body).encode()
        attempts = len(self.endpoints)
        for attempt in range(attempts):
            try:
                return self._call_once(path, data)
            except EtcdConnectionError:
                if attempt == attempts - 1:
                    raise
                self._next_endpoint()
        raise AssertionError("unreachable")

    def _call_once(self, path: str, data: bytes) -> dict[str, Any]:
        conn, reused = self._take()
        try:
            conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            status, body = resp.status, resp.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            if reused and isinstance(exc, (http.client.RemoteDisconnected, ConnectionError)):
                # A pooled connection the server had already closed (e.g. etcd restarted):
                # the request never reached a live server, so sending it again is safe.
                return self._call_once(path, data)
            host, port = self._endpoint()
            raise EtcdConnectionError(f"etcd at {host}:{port}: {exc or type(exc).__name__}") from None
        if status != 200:
            conn.close()
            raise _error_from_reply(status, body)
        self._give_back(conn)
        try:
            return json.loads(body)
        except ValueError:
            raise EtcdConnectionError(f"etcd sent malformed JSON: {body[:200]!r}") from None

    def close(self) -> None:
        """Close pooled connections (watches are closed by their owners)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- kv ------------------------------------------------------------------

    def range(self, key: str, range_end: str | None = None, *, revision: int = 0,
              limit: int = 0) -> RangeResult:
        """One page of ``[key, range_end)`` (just ``key`` without ``range_end``)."""
        body: dict[str, Any] = {"key": _b64(key)}
        if range_end is not None:
            body["range_end"] = _b64(range_end)
        if revision:
            body["revision"] = str(revision)
        if limit:
            body["limit"] = str(limit)
        reply = self.call("/v3/kv/range", body)
        return RangeResult([_kv(kv) for kv in reply.get("kvs") or []], _revision(reply), bool(reply.get("more")))

    def get(self, key: str) -> KeyValue | None:
        kvs = self.range(key).kvs
        return kvs[0] if kvs else None

    def list_range(self, key: str, range_end: str, *, revision: int = 0, page_size: int = 500) -> RangeResult:
        """Every key of ``[key, range_end)``, paginated, all pages at one revision."""
        out: list[KeyValue] = []
        start = key
        while True:
            page = self.range(start, range_end, revision=revision, limit=page_size)
            revision = revision or page.revision
            out += page.kvs
            if not page.more or not page.kvs:
                return RangeResult(out, revision)
            start = page.kvs[-1].key + "\0"

    def list_prefix(self, prefix: str, *, revision: int = 0, page_size: int = 500) -> RangeResult:
        """Every key starting with ``prefix``, at one revision."""
        return self.list_range(prefix, prefix_end(prefix), revision=revision, page_size=page_size)

    def put(self, key: str, value: bytes | str) -> int:
        """Write ``key``; returns the store revision of the write."""
        return _revision(self.call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)}))

    def delete(self, key: str, range_end: str | None = None) -> tuple[int, int]:
        """Delete ``key`` (or ``[key, range_end)``); returns (revision, keys deleted)."""
        body = {"key": _b64(key)}
        if range_end is not None:
            body["range_end"] = _b64(range_end)
        reply = self.call("/v3/kv/deleterange", body)
        return _revision(reply), _int(reply.get("deleted"))

    def delete_prefix(self, prefix: str) -> int:
        return self.delete(prefix, prefix_end(prefix))[1]

    def txn(self, compare: Iterable[Compare], success: Iterable[dict[str, Any]],
            failure: Iterable[dict[str, Any]] = ()) -> TxnResult:
        """Run ``success`` if every ``compare`` holds, else ``failure``, atomically."""
        reply = self.call("/v3/kv/txn", {
            "compare": [c.to_json() for c in compare],
            "success": list(success),
            "failure": list(failure),
        })
        return TxnResult(bool(reply.get("succeeded")), _revision(reply), reply.get("responses") or [])

    def create(self, key: str, value: bytes | str) -> int | None:
        """Write ``key`` only if it does not exist; its new mod revision, or None."""
        res = self.txn([Compare(key, "CREATE", "EQUAL", 0)], [put_op(key, value)])
        return res.revision if res.succeeded else None

    def update(self, key: str, value: bytes | str, mod_revision: int) -> int | None:
        """Write ``key`` only if it is still at ``mod_revision``; its new mod revision, or None."""
        res = self.txn([Compare(key, "MOD", "EQUAL", mod_revision)], [put_op(key, value)])
        return res.revision if res.succeeded else None

    def delete_if(self, key: str, mod_revision: int) -> bool:
        """Delete ``key`` only if it is still at ``mod_revision``."""
        return self.txn([Compare(key, "MOD", "EQUAL", mod_revision)], [delete_op(key)]).succeeded

    # -- maintenance ---------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The member's status (``version``, ``header.revision``, ``leader`` …)."""
        return self.call("/v3/maintenance/status", {})

    def revision(self) -> int:
        return _revision(self.status())

    def compact(self, revision: int, physical: bool = True) -> None:
        """Drop history before ``revision`` (``physical``: wait until it is really gone)."""
        self.call("/v3/kv/compaction", {"revision": str(revision), "physical": physical})

    # -- watch ---------------------------------------------------------------

    def watch(self, key: str, range_end: str | None = None, *, start_revision: int = 0,
              progress_notify: bool = True) -> "Watch":
        """Watch ``[key, range_end)`` from ``start_revision`` (0: from now).

        Returns once etcd confirmed the watch. If ``start_revision`` is
        already compacted, the watch's first ``next()`` raises
        EtcdCompactedError.
        """
        create: dict[str, Any] = {"key": _b64(key), "progress_notify": progress_notify}
        if range_end is not None:
            create["range_end"] = _b64(range_end)
        if start_revision:
            create["start_revision"] = str(start_revision)
        try:
            return Watch(self._endpoint(), {"create_request": create}, self.timeout)
        except EtcdConnectionError:
            self._next_endpoint()
            raise


# ---------------------------------------------------------------------- watch


class Watch:
    """One watch stream: ``next(timeout)`` returns each response in order.

    ``interrupt()`` may be called from any thread to wake a blocked reader
    (which then sees EtcdConnectionError); ``close()`` is for the owner.
    """

    def __init__(self, endpoint: tuple[str, int], body: dict[str, Any], timeout: float) -> None:
        self.endpoint = endpoint
        self.interrupted = False
        self._raw = bytearray()      # bytes from the socket, not yet de-chunked
        self._body = bytearray()     # de-chunked body, not yet split into lines
        self._scanned = 0            # _body[:_scanned] holds no newline (big messages arrive in pieces)
        self._chunk_left = 0         # data bytes of the current chunk still to move to _body
        self._crlf_pending = False
        self._ended = False
        host, port = endpoint
        try:
            self._sock = socket.create_connection(endpoint, timeout=timeout)
        except OSError as exc:
            raise EtcdConnectionError(f"etcd at {host}:{port}: {exc}") from None
        try:
            payload = json.dumps(body).encode()
            try:
                self._sock.sendall(
                    f"POST /v3/watch HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
            except OSError as exc:
                raise EtcdConnectionError(f"etcd at {host}:{port}: {exc}") from None
            self._read_head(time.monotonic() + timeout)
            first = self.next(timeout)
            if first is None:
                raise EtcdConnectionError(f"etcd at {host}:{port} did not confirm the watch in {timeout}s")
            if not first.created:
                raise EtcdConnectionError("etcd sent events before confirming the watch")
        except BaseException:
            self.close()
            raise

    # -- HTTP framing ----------------------------------------------------------

    def _recv(self, deadline: float | None) -> bool:
        """Read more bytes; False on timeout, EtcdConnectionError on EOF or error."""
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        try:
            self._sock.settimeout(remaining)
            data = self._sock.recv(65536)
        except socket.timeout:
            return False
        except OSError as exc:
            why = "interrupted" if self.interrupted else str(exc)
            raise EtcdConnectionError(f"watch stream broken: {why}") from None
        if not data:
            raise EtcdConnectionError("watch stream closed" + (" (interrupted)" if self.interrupted else ""))
        self._raw += data
        return True

    def _read_head(self, deadline: float) -> None:
        while b"\r\n\r\n" not in self._raw:
            if not self._recv(deadline):
                raise EtcdConnectionError(f"etcd at {self.endpoint[0]}:{self.endpoint[1]} did not answer"
                                          " the watch request in time")
        head, _, rest = bytes(self._raw).partition(b"\r\n\r\n")
        self._raw = bytearray(rest)
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split()[1])
        except (IndexError, ValueError):
            raise EtcdConnectionError(f"bad HTTP status line from etcd: {lines[0]!r}") from None
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        if status != 200:
            raise _error_from_reply(status, self._error_body(chunked, headers, deadline))
        if not chunked:
            raise EtcdConnectionError("etcd watch response is not chunked")

    def _error_body(self, chunked: bool, headers: dict[str, str], deadline: float) -> bytes:
        """The (short) body of an error response, as far as it arrives before ``deadline``."""
        if chunked:
            while True:
                self._dechunk()
                if self._ended or not self._recv(deadline):
                    return bytes(self._body)
        length = int(headers.get("content-length", "0") or 0)
        while len(self._raw) < length and self._recv(deadline):
            pass
        return bytes(self._raw[:length])

    def _dechunk(self) -> None:
        """Move complete chunk data from ``_raw`` to ``_body``."""
        while not self._ended:
            if self._chunk_left:
                n = min(self._chunk_left, len(self._raw))
                if n == 0:
                    return
                self._body += self._raw[:n]
                del self._raw[:n]
                self._chunk_left -= n
                self._crlf_pending = self._chunk_left == 0
                continue
            if self._crlf_pending:           # the CRLF that ends every chunk's data
                if len(self._raw) < 2:
                    return
                del self._raw[:2]
                self._crlf_pending = False
                continue
            end = self._raw.find(b"\r\n")
            if end < 0:
                return
            size_text = bytes(self._raw[:end]).split(b";")[0].strip()
            del self._raw[:end + 2]
            try:
                size = int(size_text, 16)
            except ValueError:
                raise EtcdConnectionError(f"bad chunk size from etcd: {size_text!r}") from None
            if size == 0:
                self._ended = True
                return
            self._chunk_left = size

    # -- messages --------------------------------------------------------------

    def next(self, timeout: float | None) -> WatchResponse | None:
        """The next response; None after ``timeout`` seconds of silence.

        Raises EtcdCompactedError when etcd cancels the watch because its
        start revision is compacted, EtcdConnectionError when the stream ends.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            line_end = self._body.find(b"\n", self._scanned)
            if line_end >= 0:
                line = bytes(self._body[:line_end]).strip()
                del self._body[:line_end + 1]
                self._scanned = 0
                if line:
                    return self._message(line)
                continue
            self._scanned = len(self._body)
            if self._ended:
                raise EtcdConnectionError("etcd ended the watch stream")
            before = len(self._body)
            self._dechunk()
            if len(self._body) != before or self._ended:
                continue
            if not self._recv(deadline):
                return None

    def _message(self, line: bytes) -> WatchResponse:
        try:
            msg = json.loads(line)
        except ValueError:
            raise EtcdConnectionError(f"malformed watch message from etcd: {line[:200]!r}") from None
        if "error" in msg:
            err = msg["error"]
            if isinstance(err, dict):
                raise _error_from(str(err.get("message", err)), _int(err.get("grpc_code")))
            raise EtcdConnectionError(f"watch failed: {err}")
        result = msg.get("result") or {}
        compact = _int(result.get("compact_revision"))
        if compact:
            raise EtcdCompactedError(f"watch start revision compacted (compacted up to {compact})", compact)
        if result.get("canceled"):
            raise EtcdRequestError(f"etcd canceled the watch: {result.get('cancel_reason', '')}".strip())
        events = [
            WatchEvent("DELETE" if ev.get("type") == "DELETE" else "PUT", _kv(ev.get("kv") or {}))
            for ev in result.get("events") or []
        ]
        return WatchResponse(_revision(result), events, created=bool(result.get("created")))

    def interrupt(self) -> None:
        """Wake the reading thread (safe from any thread); the stream is finished."""
        self.interrupted = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        """Release the socket (by the thread that reads the watch)."""
        self.interrupt()
        self._sock.close()

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
