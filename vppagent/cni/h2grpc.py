"""A minimal unary gRPC client: HTTP/2 over a unix socket, standard library only.

``import grpc`` alone takes ~90 ms, far more than a whole ``ptp`` ADD, so
the plugin speaks just the part of gRPC it needs: one connection, one
stream, one request message, one reply (RFC 7540 framing, RFC 7541 HPACK
without Huffman on our side). We announce a zero-size HPACK dynamic table
so the server never indexes; a Huffman-coded header value it might still
send is kept as ``None`` (the reply message itself does not depend on it).
"""

import _socket

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
MAX_FRAME = 16384
STREAM = 1

# RFC 7541 Appendix A.
STATIC_TABLE: tuple[tuple[str, str], ...] = (
    ("", ""), (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"),
    (":path", "/index.html"), (":scheme", "http"), (":scheme", "https"), (":status", "200"),
    (":status", "204"), (":status", "206"), (":status", "304"), (":status", "400"), (":status", "404"),
    (":status", "500"), ("accept-charset", ""), ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""), ("accept-ranges", ""), ("accept", ""), ("access-control-allow-origin", ""),
    ("age", ""), ("allow", ""), ("authorization", ""), ("cache-control", ""), ("content-disposition", ""),
    ("content-encoding", ""), ("content-language", ""), ("content-length", ""), ("content-location", ""),
    ("content-range", ""), ("content-type", ""), ("cookie", ""), ("date", ""), ("etag", ""),
    ("expect", ""), ("expires", ""), ("from", ""), ("host", ""), ("if-match", ""),
    ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""), ("if-unmodified-since", ""),
    ("last-modified", ""), ("link", ""), ("location", ""), ("max-forwards", ""),
    ("proxy-authenticate", ""), ("proxy-authorization", ""), ("range", ""), ("referer", ""),
    ("refresh", ""), ("retry-after", ""), ("server", ""), ("set-cookie", ""),
    ("strict-transport-security", ""), ("transfer-encoding", ""), ("user-agent", ""), ("vary", ""),
    ("via", ""), ("www-authenticate", ""),
)

# gRPC status codes the plugin distinguishes.
UNAVAILABLE, DEADLINE_EXCEEDED, UNIMPLEMENTED = 14, 4, 12


class Unreachable(Exception):
    """Could not connect to the agent's socket (or it hung up before answering)."""


class RpcError(Exception):
    """The call reached the agent and failed with a gRPC status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------- HPACK

def _int(value: int, prefix_bits: int, flags: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([flags | value])
    out = bytearray([flags | limit])
    value -= limit
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _str(text: str) -> bytes:
    data = text.encode()
    return _int(len(data), 7, 0) + data


def request_headers(path: str, timeout: float) -> bytes:
    """:method POST, :scheme http, :path, :authority, content-type, te, grpc-timeout."""
    return (
        b"\x83\x86"                                           # indexed :method POST, :scheme http
        + _int(4, 4, 0) + _str(path)                          # literal, indexed name :path
        + _int(1, 4, 0) + _str("localhost")                   # :authority
        + _int(31, 4, 0) + _str("application/grpc")           # content-type
        + b"\x00" + _str("te") + _str("trailers")
        + b"\x00" + _str("grpc-timeout") + _str(f"{max(1, int(timeout * 1000))}m")
    )


class HpackDecoder:
    """Decodes header blocks; keeps a dynamic table in case the peer uses one."""

    def __init__(self) -> None:
        self.table: list[tuple[str, str | None]] = []
        self.max_size = 4096

    def _entry(self, index: int) -> tuple[str, str | None]:
        if 0 < index < len(STATIC_TABLE):
            return STATIC_TABLE[index]
        dyn = index - len(STATIC_TABLE)
        if 0 <= dyn < len(self.table):
            return self.table[dyn]
        raise ValueError(f"HPACK index {index} out of range")

    def _evict(self) -> None:
        while self.table and sum(len(n) + len(v or "") + 32 for n, v in self.table) > self.max_size:
            self.table.pop()

    @staticmethod
    def _read_int(data: bytes, i: int, prefix_bits: int) -> tuple[int, int]:
        limit = (1 << prefix_bits) - 1
        value = data[i] & limit
        i += 1
        if value < limit:
            return value, i
        shift = 0
        while True:
            b = data[i]
            i += 1
            value += (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value, i

    def _read_str(self, data: bytes, i: int) -> tuple[str | None, int]:
        huffman = data[i] & 0x80
        length, i = self._read_int(data, i, 7)
        raw = data[i:i + length]
        return (None if huffman else raw.decode("utf-8", "replace")), i + length

    def decode(self, block: bytes) -> list[tuple[str, str | None]]:
        out: list[tuple[str, str | None]] = []
        i = 0
        while i < len(block):
            b = block[i]
            if b & 0x80:                                   # indexed field
                index, i = self._read_int(block, i, 7)
                out.append(self._entry(index))
                continue
            if b & 0xE0 == 0x20:                           # dynamic table size update
                self.max_size, i = self._read_int(block, i, 5)
                self._evict()
                continue
            indexing = b & 0xC0 == 0x40
            index, i = self._read_int(block, i, 6 if indexing else 4)
            if index:
                name: str | None = self._entry(index)[0]
            else:
                name, i = self._read_str(block, i)
            value, i = self._read_str(block, i)
            field = (name or "", value)
            if indexing:
                self.table.insert(0, field)
                self._evict()
            out.append(field)
        return out


def _percent_decode(text: str) -> str:
    if "%" not in text:
        return text
    raw = bytearray()
    i = 0
    data = text.encode()
    while i < len(data):
        if data[i] == 0x25 and i + 2 < len(data):
            try:
                raw.append(int(data[i + 1:i + 3], 16))
                i += 3
                continue
            except ValueError:
                pass
        raw.append(data[i])
        i += 1
    return raw.decode("utf-8", "replace")


# ---------------------------------------------------------------- framing

def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _settings() -> bytes:
    # HEADER_TABLE_SIZE=0 (no HPACK indexing towards us), ENABLE_PUSH=0.
    body = (1).to_bytes(2, "big") + (0).to_bytes(4, "big") + (2).to_bytes(2, "big") + (0).to_bytes(4, "big")
    return _frame(SETTINGS, 0, 0, body)


def _strip_padding(flags: int, payload: bytes, priority: bool) -> bytes:
    start, end = 0, len(payload)
    if flags & PADDED:
        start, end = 1, len(payload) - payload[0]
    if priority and flags & PRIORITY:
        start += 5
    return payload[start:end]


class _Reader:
    def __init__(self, sock: "_socket.socket") -> None:
        self.sock = sock
        self.buf = b""

    def frame(self) -> tuple[int, int, int, bytes]:
        while True:
            if len(self.buf) >= 9:
                length = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) >= 9 + length:
                    head, payload = self.buf[:9], self.buf[9:9 + length]
                    self.buf = self.buf[9 + length:]
                    return head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Unreachable("the agent closed the connection before answering")
            self.buf += chunk


def call(socket_path: str, method: str, request: bytes, timeout: float = 30.0) -> bytes:
    """One unary call: returns the reply message bytes or raises ``RpcError``/``Unreachable``."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(socket_path)
        except OSError as exc:
            raise Unreachable(exc.strerror or str(exc)) from None
        body = b"\x00" + len(request).to_bytes(4, "big") + request
        chunks = [body[i:i + MAX_FRAME] for i in range(0, len(body), MAX_FRAME)] or [b""]
        out = [PREFACE, _settings(), _frame(HEADERS, END_HEADERS, STREAM, request_headers(method, timeout))]
        for n, chunk in enumerate(chunks):
            out.append(_frame(DATA, END_STREAM if n == len(chunks) - 1 else 0, STREAM, chunk))
        try:
            sock.sendall(b"".join(out))
            return _read_reply(sock)
        except _socket.timeout:
            raise RpcError(DEADLINE_EXCEEDED, f"no answer from the agent within {timeout:g} s") from None
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise Unreachable(exc.strerror or str(exc)) from None
    finally:
        sock.close()


def _read_reply(sock: "_socket.socket") -> bytes:
    reader, hpack = _Reader(sock), HpackDecoder()
    headers: dict[str, str | None] = {}
    data = bytearray()
    block = b""
    end_stream = False
    while True:
        kind, flags, stream, payload = reader.frame()
        if kind == SETTINGS:
            if not flags & ACK:
                sock.sendall(_frame(SETTINGS, ACK, 0))
        elif kind == PING:
            if not flags & ACK:
                sock.sendall(_frame(PING, ACK, 0, payload))
        elif kind == GOAWAY:
            code = int.from_bytes(payload[4:8], "big") if len(payload) >= 8 else 0
            raise Unreachable(f"the agent closed the connection (HTTP/2 GOAWAY, error {code})")
        elif stream != STREAM:
            continue
        elif kind == RST_STREAM:
            code = int.from_bytes(payload[:4], "big")
            raise RpcError(UNAVAILABLE, f"the agent reset the request (HTTP/2 error {code})")
        elif kind in (HEADERS, CONTINUATION):
            block += _strip_padding(flags, payload, kind == HEADERS)
            end_stream = end_stream or bool(kind == HEADERS and flags & END_STREAM)
            if flags & END_HEADERS:
                headers.update(hpack.decode(block))
                block = b""
                if end_stream:
                    break
        elif kind == DATA:
            data += _strip_padding(flags, payload, False)
            if flags & END_STREAM:
                break
    http = headers.get(":status")
    status = headers.get("grpc-status")
    if http not in (None, "200"):
        raise RpcError(UNAVAILABLE, f"the agent answered HTTP {http}")
    if status not in (None, "0"):
        message = headers.get("grpc-message")
        code = int(status) if status.isdigit() else UNAVAILABLE
        raise RpcError(code, _percent_decode(message) if message else f"gRPC status {status}")
    if len(data) < 5:
        raise RpcError(UNAVAILABLE, "the agent sent no reply message")
    if data[0]:
        raise RpcError(UNIMPLEMENTED, "the agent sent a compressed reply")
    length = int.from_bytes(data[1:5], "big")
    return bytes(data[5:5 + length])
