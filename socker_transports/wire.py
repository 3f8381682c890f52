"""socker_transports.wire: the sans-I/O websocket layer (wsproto + Stepper).

Socket bytes in (`receive_data`), socket bytes out (`data_to_send`), events out
(`events`), time in (`tick`, `next_deadline`). Every protocol decision both
drivers need lives here, so they behave the same by construction: the opening
handshake and its limits, routing, origins, the handshake hook, ping/pong and
keepalive, the close handshake and its timeout, fragment reassembly and
`max_size`, the text-vs-binary policy and write-side backpressure.

Nothing on the receive path raises: a bad peer ends in a close code or an HTTP
status. Misuse by the caller raises `socker_core.LocalProtocolError` (or
`ConnectionClosedError` for a send once closing).

How a connection ends (`Closed.code`, `Wire.close_code`; the table is
`socker_core.CLOSE_CODES`):

- the peer closed: the peer's code (1005 when its close frame carried none);
- we closed (a handler, a step timeout, `Wire.close`, a 1003/1009/1007/1002
  decision): the code we sent, whether or not the peer answered in time;
- the transport ended without a close frame: 1006;
- the peer stopped reading (`max_send_buffer`): 4503;
- no pong within `ping_timeout`: 1011 "keepalive ping timeout".
"""

from __future__ import annotations

import base64
import binascii
import inspect
import logging
import os
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError as WsprotoLocalError
from wsproto.utilities import RemoteProtocolError as WsprotoRemoteError

from socker_core import (
    Await,
    CancelAwait,
    Closed,
    CloseRequested,
    ConnectionClosedError,
    Event,
    Flow,
    FlowCompleted,
    HandlerFailed,
    LocalProtocolError,
    Send,
    SockerError,
    StepChanged,
    Stepper,
    is_sendable_close_code,
)
from socker_core._codes import CloseCode

logger = logging.getLogger("socker")

MiB = 1024 * 1024

#: The reason of the 1011 close sent when a keepalive ping goes unanswered.
KEEPALIVE_TIMEOUT_REASON = "keepalive ping timeout"

#: The connection was dropped because the peer stopped reading (see `max_send_buffer`).
SEND_BUFFER_OVERFLOW = int(CloseCode.SEND_BUFFER_OVERFLOW)


def _check_headers(headers: Iterable[tuple[str, str]], what: str) -> None:
    """Refuse header names/values that would corrupt an HTTP head (CR/LF injection)."""
    for name, value in headers:
        if (
            not isinstance(name, str)
            or not isinstance(value, str)
            or not name
            or any(c in name for c in ":\r\n \t\0")
            or any(c in value for c in "\r\n\0")
        ):
            raise LocalProtocolError(f"{what}: invalid header {name!r}: {value!r}")
        try:
            name.encode("ascii")
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise LocalProtocolError(f"{what}: header {name!r} is not latin-1") from None


@dataclass(frozen=True)
class Options:
    """Limits and policies. The same names and defaults in every driver.

    - `max_size`: largest message accepted, checked while fragments arrive and
      against a frame header's announced length, before the payload is buffered
      (1009). None disables.
    - `max_queue`: messages that may wait while an async handler is busy; past it the
      driver stops reading the socket (backpressure, never dropping).
    - `open_timeout`: seconds for the opening handshake (a server answers 408).
    - `close_timeout`: seconds to wait for the peer's close frame (or the server's EOF).
    - `ping_interval` / `ping_timeout`: keepalive; a peer that has not answered a
      ping within `ping_timeout` is dropped with 1011. None disables.
    - `max_line` / `max_headers`: handshake limits: the longest request, status or
      header line, and the most header lines (414 for the request line, 431 beyond).
    - `origins`: allowed `Origin` values (None in the list admits a missing Origin);
      None allows every origin. 403 otherwise.
    - `subprotocols`: offered by a client; a server picks the first of its own
      list that the client offered (unless the handshake hook chooses).
    - `accept_text`: pass text messages to handlers as UTF-8 bytes instead of
      closing with 1003.
    - `write_limit`: outgoing bytes not yet taken by the driver above which the
      wire stops asking for more input, so a handler replying to a flood cannot
      outrun a slow peer.
    - `max_send_buffer`: outgoing bytes above which the peer is considered to have
      stopped reading: the connection is dropped with 4503 instead of buffering
      without limit.
    """

    max_size: int | None = 1 * MiB
    max_queue: int = 16
    open_timeout: float | None = 10.0
    close_timeout: float | None = 10.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    max_line: int = 8192
    max_headers: int = 128
    origins: Sequence[str | None] | None = None
    subprotocols: Sequence[str] = ()
    accept_text: bool = False
    write_limit: int = 64 * 1024
    max_send_buffer: int = 16 * MiB

    def __post_init__(self) -> None:
        if self.max_size is not None and self.max_size < 1:
            raise LocalProtocolError(f"max_size must be positive or None, got {self.max_size}")
        if self.max_queue < 1:
            raise LocalProtocolError(f"max_queue must be at least 1, got {self.max_queue}")
        for name in ("open_timeout", "close_timeout", "ping_interval", "ping_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise LocalProtocolError(f"{name} must be positive or None, got {value}")
        if self.max_line < 256 or self.max_headers < 1:
            raise LocalProtocolError("max_line must be >= 256 and max_headers >= 1")
        if self.write_limit < 1 or self.max_send_buffer < 1:
            raise LocalProtocolError("write_limit and max_send_buffer must be positive")
        for name in ("origins", "subprotocols"):
            if isinstance(getattr(self, name), (str, bytes)):
                raise LocalProtocolError(f"{name} must be a sequence of strings, not a string")
        for protocol in self.subprotocols:
            if not protocol or not protocol.isascii() or any(c in protocol for c in ", \r\n"):
                raise LocalProtocolError(f"invalid subprotocol {protocol!r}")


# -- events the wire gives its driver ------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    """What a server's handshake hook (and `http_handler`) sees.

    `headers` are (lowercased name, value) pairs in arrival order."""

    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    subprotocols: tuple[str, ...]
    origin: str | None

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Accept:
    """Handshake hook answer: accept, optionally choosing a flow, a subprotocol and
    seeding `conn.state` with attributes (for example the authenticated user)."""

    flow: Flow | None = None
    subprotocol: str | None = None
    state: Mapping[str, Any] = field(default_factory=dict)
    headers: Sequence[tuple[str, str]] = ()

    def __post_init__(self) -> None:
        _check_headers(self.headers, "Accept")


@dataclass(frozen=True, slots=True)
class Reject:
    """Handshake hook answer: refuse with an HTTP status (401, 403, ...; 300-599)."""

    status: int = 403
    body: bytes = b""
    headers: Sequence[tuple[str, str]] = ()

    def __post_init__(self) -> None:
        if not 300 <= self.status <= 599:
            raise LocalProtocolError(f"Reject status must be 300-599, got {self.status}")
        _check_headers(self.headers, "Reject")


HandshakeHook = Callable[
    [HandshakeRequest], "Accept | Reject | Awaitable[Accept | Reject | None] | None"
]


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A plain-HTTP answer (see `http_handler`): sent, then the transport is closed."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"

    def __post_init__(self) -> None:
        if not 200 <= self.status <= 599:
            raise LocalProtocolError(f"HttpResponse status must be 200-599, got {self.status}")
        _check_headers([("Content-Type", self.content_type)], "HttpResponse")


#: A plain-HTTP answer for a GET that is not a websocket upgrade (a health check,
#: a redirect); None lets the request fail as a bad upgrade (400).
HttpHandler = Callable[[HandshakeRequest], "HttpResponse | None"]


@dataclass(frozen=True, slots=True)
class CloseResult:
    """How a connection ended, as drivers report it: the close code and reason,
    and the HTTP status of the opening handshake (101 when it succeeded)."""

    code: int | None
    reason: str
    handshake_status: int

    @property
    def ok(self) -> bool:
        """True for a completed flow or a normal close (1000) after a good handshake."""
        return self.handshake_status == 101 and self.code == 1000


class HandshakeError(SockerError):
    """The opening handshake did not succeed; `result.handshake_status` is the HTTP
    status the server answered (0 when there was no answer). Raised by both
    drivers' `connect()`; their `run_client()` returns the result instead."""

    def __init__(self, result: CloseResult) -> None:
        status = result.handshake_status
        super().__init__(
            f"websocket handshake failed: HTTP {status} {result.reason}"
            if status
            else f"websocket handshake failed: {result.reason}"
        )
        self.result = result

    @property
    def status(self) -> int:
        return self.result.handshake_status


#: Close code and reason a server sends to live connections when it shuts down.
SHUTDOWN_CODE = CloseCode.GOING_AWAY
SHUTDOWN_REASON = "server shutting down"


def format_host(host: str) -> str:
    """`host` as it appears in a URL or Host header (IPv6 literals bracketed)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@dataclass(frozen=True, slots=True)
class ClientTarget:
    """Where a client connects, parsed once from a ws:// or wss:// URL."""

    secure: bool
    host: str
    port: int
    host_header: str
    path: str

    @classmethod
    def parse(cls, url: str) -> ClientTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError(f"not a websocket URL (ws:// or wss://): {url!r}")
        if not parts.hostname:
            raise ValueError(f"no host in {url!r}")
        secure = parts.scheme == "wss"
        default = 443 if secure else 80
        port = parts.port or default
        host = parts.hostname
        host_header = format_host(host) + ("" if port == default else f":{port}")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(secure, host, port, host_header, path)


@dataclass(frozen=True, slots=True)
class Opened:
    """The opening handshake succeeded and the flow started."""

    path: str
    subprotocol: str | None
    flow: str


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """The opening handshake did not complete: `status` is the HTTP status sent or
    received (0 when the transport ended, timed out or answered garbage first)."""

    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class AwaitHandshake:
    """Await `awaitable` (an async handshake hook), then call
    `Wire.finish_handshake(result, now)` (or with the exception)."""

    awaitable: Awaitable[Accept | Reject | None]


WireEvent = (
    Opened
    | HandshakeFailed
    | AwaitHandshake
    | Await
    | CancelAwait
    | HandlerFailed
    | StepChanged
    | FlowCompleted
    | Closed
)


class Phase(Enum):
    HANDSHAKE = "handshake"
    HOOK = "hook"  # waiting for an async handshake hook
    OPEN = "open"
    CLOSING = "closing"  # our close frame sent, waiting for the peer's
    DRAINING = "draining"  # close handshake done; client waits for the server's EOF
    DONE = "done"


_HEADERS_TOO_LARGE = 431
_URI_TOO_LONG = 414


class _HeadGuard:
    """Collects an HTTP head (request or response) line by line and enforces the
    line limits before wsproto/h11 sees it, so an oversize or trickling head never
    grows a buffer past (max_headers + 1) * max_line, and each byte is scanned once."""

    __slots__ = ("buffer", "lines", "max_headers", "max_line", "pos", "start")

    def __init__(self, max_line: int, max_headers: int) -> None:
        self.buffer = bytearray()
        self.max_line = max_line
        self.max_headers = max_headers
        self.start = 0  # where the current line starts
        self.pos = 0  # where to look for the next CRLF
        self.lines = 0  # complete lines so far (request/status line + headers)

    def _too_long(self) -> int:
        return _URI_TOO_LONG if self.lines == 0 else _HEADERS_TOO_LARGE

    def feed(self, data: bytes | bytearray) -> tuple[int, bytes | None, bytes]:
        """Returns (error status or 0, the complete head or None, bytes after it)."""
        buffer = self.buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n", self.pos)
            if end < 0:
                if len(buffer) - self.start > self.max_line:
                    return self._too_long(), None, b""
                self.pos = max(self.start, len(buffer) - 1)  # a CR may end the buffer
                return 0, None, b""
            length = end - self.start
            if length > self.max_line:
                return self._too_long(), None, b""
            if length == 0:
                if self.lines == 0:
                    return 400, None, b""  # no request/status line
                head = bytes(buffer[: end + 2])
                rest = bytes(buffer[end + 2 :])
                self.buffer = bytearray()
                return 0, head, rest
            self.lines += 1
            if self.lines - 1 > self.max_headers:
                return _HEADERS_TOO_LARGE, None, b""
            self.start = self.pos = end + 2


def _parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.split(b"\r\n")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower().decode("latin-1"), value.strip().decode("latin-1")))
    return lines[0].decode("latin-1"), headers


def _valid_key(key: str | None) -> bool:
    if key is None:
        return False
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False


def _truncate_reason(reason: str, limit: int = 123) -> str:
    """`reason` cut to at most `limit` bytes of UTF-8, on a character boundary."""
    encoded = reason.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return reason
    return encoded[:limit].decode("utf-8", "ignore")


_STATUS_TEXT = {
    200: "OK",
    204: "No Content",
    301: "Moved Permanently",
    302: "Found",
    303: "See Other",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    414: "URI Too Long",
    426: "Upgrade Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _http_response(status: int, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    reason = _STATUS_TEXT.get(status, "Error" if status >= 400 else "OK")
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


# -- outgoing data frames --------------------------------------------------------------
# Data frames are framed here rather than by wsproto, which copies a payload four
# times on the way out: a bytes payload is queued as is and copied once, when
# `data_to_send` joins the pending chunks (a client's masking is that one copy).

_SMALL_HEADERS = tuple(bytes((0x82, n)) for n in range(126))
_SMALL_MASKED_HEADERS = tuple(bytes((0x82, 0x80 | n)) for n in range(126))
_HEADER_16 = struct.Struct("!BBH").pack
_HEADER_64 = struct.Struct("!BBQ").pack
_XOR_TABLES: list[bytes] = []


def _mask(key: bytes, data: bytes) -> bytes:
    """`data` XOR the 4-byte masking `key` (RFC 6455 section 5.3)."""
    n = len(data)
    if n <= 4096:  # big-int XOR: fastest for small payloads
        keys = (key * ((n >> 2) + 1))[:n]
        return (int.from_bytes(data, "little") ^ int.from_bytes(keys, "little")).to_bytes(
            n, "little"
        )
    if not _XOR_TABLES:
        _XOR_TABLES.extend(bytes(a ^ b for a in range(256)) for b in range(256))
    masked = bytearray(data)
    for i in range(4):
        masked[i::4] = masked[i::4].translate(_XOR_TABLES[key[i]])
    return bytes(masked)


class Wire:
    """One websocket connection, either role, with its Stepper. No I/O.

    Use `Wire.server(...)` or `Wire.client(...)`. The driver loop:

    1. write `data_to_send()` to the socket whenever it is non-empty;
    2. read from the socket while `wants_data`, passing what arrives to
       `receive_data(data, now)` (and `None` at end of stream);
    3. handle `events()`: await `Await.awaitable` and call `resume`/`resume_error`,
       cancel on `CancelAwait`, await `AwaitHandshake` and call `finish_handshake`;
    4. call `tick(now)` at `next_deadline`; call `collect()` when `wakeup` fires
       (an async handler or application code sent something);
    5. close the socket once `should_close_transport` is true (after writing the
       last `data_to_send()`); the connection is then `finished`.

    `receive_data`, `tick` and `events` never raise because of what the peer sent.
    """

    def __init__(
        self,
        role: ConnectionType,
        options: Options,
        now: float,
        *,
        routes: Flow | Mapping[str, Flow] | None = None,
        handshake_hook: HandshakeHook | None = None,
        http_handler: HttpHandler | None = None,
        flow: Flow | None = None,
        peer: str = "",
    ) -> None:
        self.role = role
        self.options = options
        self.peer = peer
        self.routes = routes
        self.handshake_hook = handshake_hook
        self.http_handler = http_handler
        self._client = role is ConnectionType.CLIENT
        self._client_flow = flow
        self._ws = WSConnection(role)
        self._decoder: Any = None  # wsproto's frame decoder, for the announced-size check
        self._guard: _HeadGuard | None = _HeadGuard(options.max_line, options.max_headers)
        self._phase = Phase.HANDSHAKE
        self._out: list[bytes | bytearray] = []
        self._out_size = 0
        self._events: deque[WireEvent] = deque()
        self.stepper: Stepper | None = None
        self.path = ""
        self.subprotocol: str | None = None
        self._request: HandshakeRequest | None = None
        self._parts: list[bytes | bytearray] = []
        self._part_size = 0
        self._held: deque[bytes] = deque()
        self._held_size = 0
        self._pending_after_head = b""
        self._opened_at = now
        self._handshake_deadline = (
            None if options.open_timeout is None else now + options.open_timeout
        )
        self._close_deadline: float | None = None
        self._ping_due: float | None = None
        self._pong_deadline: float | None = None
        self._ping_payload = b""
        self._eof = False
        self._transport_done = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.handshake_status = 0
        #: Called with no arguments when there is output or an event to handle that
        #: did not come from a call into the wire (for example a send by an async
        #: handler or from application code): the driver should call `collect()`.
        self.wakeup: Callable[[], None] | None = None

    # -- constructors ----------------------------------------------------------

    @classmethod
    def server(
        cls,
        routes: Flow | Mapping[str, Flow],
        now: float,
        options: Options | None = None,
        *,
        handshake_hook: HandshakeHook | None = None,
        http_handler: HttpHandler | None = None,
        peer: str = "",
    ) -> Wire:
        """A server connection: one Flow for every path, or a path -> Flow map (404
        for other paths). The handshake hook may accept (choosing a flow, a
        subprotocol, `conn.state`), reject with a status, or be `async def`."""
        if isinstance(routes, Flow):
            routes.validate()
        else:
            if not routes:
                raise LocalProtocolError("routes must map at least one path to a Flow")
            for path, routed in routes.items():
                if not path.startswith("/"):
                    raise LocalProtocolError(f"route {path!r} must start with '/'")
                routed.validate()
        return cls(
            ConnectionType.SERVER,
            options or Options(),
            now,
            routes=routes,
            handshake_hook=handshake_hook,
            http_handler=http_handler,
            peer=peer,
        )

    @classmethod
    def client(
        cls,
        flow: Flow,
        host: str,
        now: float,
        options: Options | None = None,
        *,
        path: str = "/",
        origin: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        peer: str = "",
    ) -> Wire:
        """A client connection; its opening request is already in `data_to_send()`.
        `host` is the Host header ("example.com:8000")."""
        flow.validate()
        opts = options or Options()
        _check_headers(headers, "Wire.client")
        if origin is not None:
            _check_headers([("Origin", origin)], "Wire.client")
        wire = cls(ConnectionType.CLIENT, opts, now, flow=flow, peer=peer)
        wire.path = path
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        if origin is not None:
            extra.append((b"Origin", origin.encode("latin-1")))
        try:
            request = Request(
                host=host, target=path, extra_headers=extra, subprotocols=list(opts.subprotocols)
            )
            data = wire._ws.send(request)
        except Exception as exc:  # h11/wsproto/idna refusing the host, path or a header
            raise LocalProtocolError(f"cannot build the opening request: {exc}") from exc
        wire._write(data, now)
        return wire

    # -- state -----------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def is_open(self) -> bool:
        return self._phase is Phase.OPEN

    @property
    def wants_data(self) -> bool:
        """False while the driver should not read: backpressure (the flow's queue is
        full, messages are held for it, or more than `write_limit` bytes wait in
        `data_to_send`), a pending handshake hook, or nothing more to read."""
        if self._eof or self._transport_done or self._phase is Phase.HOOK:
            return False
        if self._out_size >= self.options.write_limit or self._held:
            return False
        return self.stepper is None or self.stepper.accepting

    @property
    def should_close_transport(self) -> bool:
        """True once the socket should be closed (after a final write of `data_to_send`)."""
        return self._transport_done

    @property
    def finished(self) -> bool:
        """True once the transport is done and, if a flow ran, it is closed."""
        return self._transport_done and (self.stepper is None or self.stepper.is_closed)

    @property
    def next_deadline(self) -> float | None:
        """When `tick` next has something to do, or None."""
        if self._transport_done:
            return None
        if self._phase is Phase.HANDSHAKE or self._phase is Phase.HOOK:
            return self._handshake_deadline
        best = self._close_deadline
        for candidate in (
            self._ping_due,
            self._pong_deadline,
            self.stepper.next_deadline if self.stepper is not None else None,
        ):
            if candidate is not None and (best is None or candidate < best):
                best = candidate
        return best

    @property
    def result(self) -> CloseResult:
        return CloseResult(self.close_code, self.close_reason, self.handshake_status)

    @property
    def buffered_amount(self) -> int:
        """Bytes waiting in `data_to_send()`."""
        return self._out_size

    # -- driver calls ----------------------------------------------------------

    def data_to_send(self) -> bytes | bytearray:
        """Everything to write now (b"" when nothing is pending). One chunk is
        returned as is; several are joined once."""
        out = self._out
        if not out:
            return b""
        self._out = []
        self._out_size = 0
        return out[0] if len(out) == 1 else b"".join(out)

    def events(self) -> list[WireEvent]:
        """Take the events produced since the last call."""
        events = list(self._events)
        self._events.clear()
        return events

    def receive_data(self, data: bytes | bytearray | None, now: float) -> None:
        """Bytes from the socket; `None` (or b"") means end of stream. Never raises
        because of what the peer sent."""
        if self._transport_done:
            return
        if not data:
            self._receive_eof(now)
            return
        phase = self._phase
        if phase is Phase.HANDSHAKE or phase is Phase.HOOK:
            self._receive_handshake(data, now)
            return
        if phase is Phase.DRAINING:
            return  # the close handshake is over: only EOF matters now
        try:
            self._ws.receive_data(data)  # type: ignore[arg-type]  # bytearray works
        except WsprotoLocalError:
            return  # wsproto is already closed: nothing more to read
        self._pump(now)

    def tick(self, now: float) -> None:
        """Handle every deadline at or before `now`."""
        if self._transport_done:
            return
        if self._phase is Phase.HANDSHAKE or self._phase is Phase.HOOK:
            if self._handshake_deadline is not None and now >= self._handshake_deadline:
                self._fail_handshake(
                    0 if self._client else 408, "opening handshake timed out", now, respond=True
                )
            return
        if self._close_deadline is not None and now >= self._close_deadline:
            logger.info("%s: close handshake timed out", self._label())
            self._finish_transport(now, CloseCode.ABNORMAL, "close handshake timed out")
            return
        if self._pong_deadline is not None and now >= self._pong_deadline:
            logger.info("%s: %s", self._label(), KEEPALIVE_TIMEOUT_REASON)
            self._fail(now, CloseCode.INTERNAL_ERROR, KEEPALIVE_TIMEOUT_REASON)
            return
        if self._ping_due is not None and now >= self._ping_due and self._phase is Phase.OPEN:
            self._ping_payload = os.urandom(4)
            self._write(self._ws.send(Ping(self._ping_payload)), now)
            self._ping_due = None
            timeout = self.options.ping_timeout
            self._pong_deadline = None if timeout is None else now + timeout
        if self.stepper is not None:
            self._stepper_events(self.stepper.tick(now), now)

    def resume(self, token: int, result: object, now: float) -> None:
        """An `Await`'s awaitable returned `result`."""
        if self.stepper is None:
            raise LocalProtocolError("resume before the flow started")
        self.collect(now)  # what the awaited handler sent goes out first
        self._stepper_events(self.stepper.resume(token, result, now), now)
        self._feed_held(now)

    def resume_error(self, token: int, error: BaseException, now: float) -> None:
        """An `Await`'s awaitable raised `error`."""
        if self.stepper is None:
            raise LocalProtocolError("resume_error before the flow started")
        self.collect(now)  # what the awaited handler sent goes out first
        self._stepper_events(self.stepper.resume_error(token, error, now), now)
        self._feed_held(now)

    def collect(self, now: float) -> None:
        """Take what the flow produced outside a call (async handlers, application sends)."""
        if self.stepper is not None:
            self._stepper_events(self.stepper.pending_events(), now)

    def send(self, data: bytes, now: float) -> None:
        """Application send from outside any handler (ConnectionClosedError once closing)."""
        if self.stepper is None or self._phase is not Phase.OPEN:
            raise ConnectionClosedError(
                f"cannot send: the connection is {self._phase.value}",
                self.close_code,
                self.close_reason,
            )
        self._stepper_events(self.stepper.send(data, now), now)

    def close(self, code: int = 1000, reason: str = "", now: float = 0.0) -> None:
        """Application close (a server shutting down uses 1001). Before the handshake
        completes a server answers 503 (1001) or 400 instead."""
        if self._transport_done:
            return
        if self.stepper is None:
            status = 0 if self._client else 503 if code == CloseCode.GOING_AWAY else 400
            self._fail_handshake(status, reason or "closed before the handshake", now, respond=True)
            return
        self._stepper_events(self.stepper.close(code, reason, now), now)

    def finish_handshake(self, result: object, now: float) -> None:
        """The awaited handshake hook returned `result` (or raised: pass the exception).
        A no-op when the connection already ended (timeout, `close`, `abort`)."""
        if self._transport_done:
            return
        if self._phase is not Phase.HOOK:
            raise LocalProtocolError(f"no handshake hook is pending ({self._phase.value})")
        self._phase = Phase.HANDSHAKE
        self._decide(result, now)

    def abort(self, now: float, reason: str = "transport lost") -> None:
        """The transport failed under us (reset, write error): end everything now."""
        if self._transport_done:
            return
        if self._phase is Phase.HANDSHAKE or self._phase is Phase.HOOK:
            self._fail_handshake(0, reason, now, respond=False)
        else:
            self._finish_transport(now, CloseCode.ABNORMAL, reason)

    # -- handshake -------------------------------------------------------------

    def _receive_handshake(self, data: bytes | bytearray, now: float) -> None:
        if self._guard is None:  # head already complete; waiting on the hook
            self._pending_after_head += data
            return
        status, head, rest = self._guard.feed(data)
        if status:
            reason = "bad request" if status == 400 else "handshake exceeds header limits"
            self._fail_handshake(0 if self._client else status, reason, now, respond=True)
            return
        if head is None:
            return
        self._guard = None
        if self._client:
            self._client_head(head, rest, now)
        else:
            self._server_head(head, rest, now)

    def _server_head(self, head: bytes, rest: bytes, now: float) -> None:
        request_line, headers = _parse_head(head)
        parts = request_line.split(" ")
        target = parts[1] if len(parts) == 3 else ""
        if "://" in target and not target.startswith("/"):  # absolute-form (RFC 9112 3.2.2)
            split = urlsplit(target)
            path, query = split.path or "/", split.query
        else:
            path, _, query = target.partition("?")
        hmap: dict[str, str] = {}
        for name, value in headers:
            hmap.setdefault(name, value)
        offered = tuple(
            p.strip()
            for p in ",".join(v for k, v in headers if k == "sec-websocket-protocol").split(",")
            if p.strip()
        )
        request = HandshakeRequest(path, query, tuple(headers), offered, hmap.get("origin"))
        self._request = request
        self.path = path
        is_upgrade = "websocket" in hmap.get("upgrade", "").lower()
        if not is_upgrade and self.http_handler is not None and parts[0] == "GET":
            try:
                response = self.http_handler(request)
            except Exception as exc:
                logger.error("%s: http_handler raised", self._label(), exc_info=exc)
                self._fail_handshake(500, "http_handler raised", now, respond=True)
                return
            if response is not None:
                self._write(
                    _http_response(
                        response.status, response.body, [("Content-Type", response.content_type)]
                    ),
                    now,
                )
                self._fail_handshake(response.status, "plain HTTP request served", now)
                return
        try:
            self._ws.receive_data(head)
            first = next(self._ws.events(), None)
        except WsprotoRemoteError as exc:
            hint = exc.event_hint
            if isinstance(hint, RejectConnection):
                extra = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in hint.headers]
                self._fail_handshake(hint.status_code, str(exc), now, respond=True, headers=extra)
            else:
                self._fail_handshake(400, str(exc), now, respond=True)
            return
        except Exception as exc:  # wsproto decoding a non-ASCII header value, for example
            self._fail_handshake(400, f"bad upgrade request: {exc}", now, respond=True)
            return
        if not isinstance(first, Request):
            self._fail_handshake(400, "not a websocket upgrade request", now, respond=True)
            return
        keys = [v for k, v in headers if k == "sec-websocket-key"]
        if len(keys) != 1 or not _valid_key(keys[0]):
            self._fail_handshake(400, "invalid Sec-WebSocket-Key", now, respond=True)
            return
        origins = self.options.origins
        if origins is not None and request.origin not in origins:
            self._fail_handshake(403, f"origin {request.origin!r} not allowed", now, respond=True)
            return
        if self._route(path) is None:
            self._fail_handshake(404, f"no flow at path {path!r}", now, respond=True)
            return
        self._pending_after_head = rest
        if self.handshake_hook is None:
            self._decide(None, now)
            return
        try:
            result = self.handshake_hook(request)
        except Exception as exc:
            self._decide(exc, now)
            return
        if inspect.isawaitable(result):
            self._phase = Phase.HOOK
            self._events.append(AwaitHandshake(result))
            return
        self._decide(result, now)

    def _route(self, path: str) -> Flow | None:
        routes = self.routes
        if isinstance(routes, Flow):
            return routes
        assert routes is not None
        return routes.get(path)

    def _decide(self, result: object, now: float) -> None:
        if isinstance(result, BaseException):
            logger.error("%s: handshake hook raised", self._label(), exc_info=result)
            self._fail_handshake(500, "handshake hook raised", now, respond=True)
            return
        if isinstance(result, Reject):
            self._fail_handshake(
                result.status,
                "rejected by the handshake hook",
                now,
                respond=True,
                body=result.body,
                headers=result.headers,
            )
            return
        if result is not None and not isinstance(result, Accept):
            logger.error("%s: handshake hook returned %r", self._label(), result)
            self._fail_handshake(
                500, "handshake hook returned an invalid answer", now, respond=True
            )
            return
        accept = result if isinstance(result, Accept) else Accept()
        request = self._request
        assert request is not None
        flow = accept.flow or self._route(self.path)
        assert flow is not None
        subprotocol = accept.subprotocol
        if subprotocol is None:
            subprotocol = next(
                (p for p in self.options.subprotocols if p in request.subprotocols), None
            )
        if subprotocol is not None and subprotocol not in request.subprotocols:
            logger.error("%s: subprotocol %r was not offered", self._label(), subprotocol)
            self._fail_handshake(
                500, f"subprotocol {subprotocol!r} was not offered", now, respond=True
            )
            return
        try:
            extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in accept.headers]
            response = self._ws.send(AcceptConnection(subprotocol=subprotocol, extra_headers=extra))
        except Exception as exc:  # wsproto/h11 refusing the answer
            logger.error("%s: cannot accept: %s", self._label(), exc)
            self._fail_handshake(500, "cannot build the handshake response", now, respond=True)
            return
        self._write(response, now)
        self.subprotocol = subprotocol
        self._start_flow(flow, now, accept.state)
        rest = self._pending_after_head
        self._pending_after_head = b""
        if rest and not self._transport_done:
            self.receive_data(rest, now)

    def _client_head(self, head: bytes, rest: bytes, now: float) -> None:
        ws = self._ws
        try:
            ws.receive_data(head + rest)
            events = ws.events()
            first = next(events, None)
        except Exception as exc:  # RemoteProtocolError, or a non-ASCII header value
            self._fail_handshake(0, f"bad handshake response: {exc}", now)
            return
        if isinstance(first, RejectConnection):
            self._fail_handshake(first.status_code, "server rejected the handshake", now)
            return
        if not isinstance(first, AcceptConnection):
            self._fail_handshake(0, "unexpected handshake response", now)
            return
        self.subprotocol = first.subprotocol
        assert self._client_flow is not None
        self._start_flow(self._client_flow, now, {})
        if not self._transport_done:
            # Frames that came with the response: parsed lazily, like any later read.
            self._pump(now, events)

    def _start_flow(self, flow: Flow, now: float, state: Mapping[str, Any]) -> None:
        self._phase = Phase.OPEN
        self.handshake_status = 101
        self._handshake_deadline = None
        proto = getattr(self._ws.connection, "_proto", None)
        self._decoder = getattr(proto, "_frame_decoder", None)
        stepper = Stepper(flow, max_queue=self.options.max_queue)
        for key, value in state.items():
            setattr(stepper.conn.state, key, value)
        stepper.wakeup = self._stepper_woke
        self.stepper = stepper
        if self.options.ping_interval is not None:
            self._ping_due = now + self.options.ping_interval
        self._events.append(Opened(self.path, self.subprotocol, flow.name))
        logger.info("%s: open %s (flow %s)", self._label(), self.path, flow.name)
        self._stepper_events(stepper.open(now), now)

    def _fail_handshake(
        self,
        status: int,
        reason: str,
        now: float,
        *,
        respond: bool = False,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        if respond and not self._client and status:
            payload = body or f"{reason}\n".encode()
            self._write(_http_response(status, payload, headers), now)
            if self._transport_done:
                return  # the response alone overflowed max_send_buffer
        self.handshake_status = status
        self.close_code = CloseCode.ABNORMAL
        self.close_reason = reason
        self._phase = Phase.DONE
        self._transport_done = True
        self._guard = None
        self._pending_after_head = b""
        logger.info("%s: handshake failed (%s): %s", self._label(), status or "-", reason)
        self._events.append(HandshakeFailed(status, reason))

    # -- messages --------------------------------------------------------------

    def _pump(self, now: float, events: Iterator[object] | None = None) -> None:
        ws = self._ws
        max_size = self.options.max_size
        for event in ws.events() if events is None else events:
            if self._transport_done:
                return
            if isinstance(event, BytesMessage):
                if self._phase is not Phase.OPEN:
                    continue  # after our close frame: discard, per RFC 6455
                chunk = event.data
            elif isinstance(event, TextMessage):
                if self._phase is not Phase.OPEN:
                    continue
                if not self.options.accept_text:
                    self._close_flow(
                        now, CloseCode.UNSUPPORTED_DATA, "text messages are not accepted"
                    )
                    continue
                chunk = event.data.encode("utf-8")
            elif isinstance(event, Ping):
                if ws.state is ConnectionState.OPEN:
                    self._write(ws.send(event.response()), now)
                continue
            elif isinstance(event, Pong):
                if self._pong_deadline is not None and event.payload == self._ping_payload:
                    self._pong_deadline = None
                    interval = self.options.ping_interval
                    self._ping_due = None if interval is None else now + interval
                continue
            elif isinstance(event, CloseConnection):
                self._peer_close(event, now)
                return
            else:  # pragma: no cover - wsproto yields nothing else once open
                continue
            # A piece of a data message.
            size = self._part_size + len(chunk)
            if max_size is not None and size > max_size:
                self._too_big(now)
                continue
            if event.message_finished:
                if self._parts:
                    self._parts.append(chunk)
                    message = b"".join(self._parts)
                    self._parts.clear()
                    self._part_size = 0
                else:
                    message = chunk if type(chunk) is bytes else bytes(chunk)
                self._deliver(message, now)
            elif chunk:
                self._parts.append(chunk)
                self._part_size = size
        if max_size is not None and self._phase is Phase.OPEN:
            self._check_announced_size(max_size, now)

    def _check_announced_size(self, max_size: int, now: float) -> None:
        """Refuse a frame whose header already announces more than max_size, before
        its payload arrives."""
        try:
            decoder = self._decoder
            header = decoder.header
            remaining = header.payload_len - decoder.payload_consumed if header else 0
            control = header is not None and header.opcode.iscontrol()
        except AttributeError:  # wsproto internals moved: the streaming check still holds
            return
        if not control and self._part_size + remaining > max_size:
            self._too_big(now)

    def _too_big(self, now: float) -> None:
        self._parts.clear()
        self._part_size = 0
        max_size = self.options.max_size
        self._close_flow(now, CloseCode.MESSAGE_TOO_BIG, f"message larger than {max_size} bytes")

    def _deliver(self, message: bytes, now: float) -> None:
        stepper = self.stepper
        assert stepper is not None
        if self._held or not stepper.accepting:
            self._held.append(message)
            self._held_size += len(message)
            return
        self._stepper_events(stepper.receive(message, now), now)

    def _feed_held(self, now: float) -> None:
        stepper = self.stepper
        held = self._held
        while held and stepper is not None and stepper.accepting and self._phase is Phase.OPEN:
            message = held.popleft()
            self._held_size -= len(message)
            self._stepper_events(stepper.receive(message, now), now)

    def _peer_close(self, event: CloseConnection, now: float) -> None:
        ws = self._ws
        code = int(event.code)
        reason = event.reason or ""
        if ws.state is ConnectionState.REMOTE_CLOSING:
            # The peer started the close: echo it, and the flow ends with its code.
            self._write(ws.send(event.response()), now)
            self._leave_open()
            self._end_flow(now, code, reason)
            self._finish_close_handshake(now)
        elif ws.state is ConnectionState.CLOSED:
            # The peer answered our close frame.
            self._finish_close_handshake(now)
        else:
            # wsproto could not parse the stream (it reports that as a close event
            # while still OPEN): fail the connection with its code, no waiting.
            if not is_sendable_close_code(code):
                code = CloseCode.PROTOCOL_ERROR
            logger.info("%s: protocol error %s: %s", self._label(), code, reason)
            self._fail(now, code, reason or "protocol error")

    def _fail(self, now: float, code: int, reason: str) -> None:
        """Fail the connection: a close frame if we can still send one, then drop."""
        reason = _truncate_reason(reason)
        self._close_flow(now, code, reason)
        self._finish_transport(now, code, reason)

    def _close_flow(self, now: float, code: int, reason: str) -> None:
        if self.stepper is not None:
            self._stepper_events(self.stepper.close(code, _truncate_reason(reason), now), now)

    def _finish_close_handshake(self, now: float) -> None:
        if not self._client:
            self._finish_transport(now, None, "")
        else:
            # RFC 6455: the server closes TCP first; the client waits (bounded).
            self._phase = Phase.DRAINING
            self._leave_open()
            timeout = self.options.close_timeout
            self._close_deadline = None if timeout is None else now + timeout
            self._end_flow(now, self.close_code or CloseCode.NORMAL, self.close_reason)

    def _receive_eof(self, now: float) -> None:
        self._eof = True
        if self._phase is Phase.HANDSHAKE or self._phase is Phase.HOOK:
            self._fail_handshake(0, "connection closed during the handshake", now)
        elif self._phase is Phase.DRAINING:
            self._finish_transport(now, None, "")
        else:
            self._finish_transport(now, CloseCode.ABNORMAL, "connection lost")

    def _leave_open(self) -> None:
        """No more messages for the flow: drop what waits for it and stop keepalive."""
        self._parts.clear()
        self._part_size = 0
        self._held.clear()
        self._held_size = 0
        self._ping_due = self._pong_deadline = None

    def _finish_transport(self, now: float, code: int | None, reason: str) -> None:
        """The transport is over; make sure the flow knows, exactly once."""
        if self._transport_done:
            return
        self._leave_open()
        self._phase = Phase.DONE
        self._transport_done = True
        self._close_deadline = None
        if code is not None:
            self._end_flow(now, code, reason)
        else:
            self._end_flow(now, self.close_code or CloseCode.NORMAL, self.close_reason)

    def _end_flow(self, now: float, code: int, reason: str) -> None:
        stepper = self.stepper
        if stepper is None:
            if self.close_code is None:
                self.close_code, self.close_reason = code, reason
            return
        if not stepper.is_closed:
            self._stepper_events(stepper.transport_closed(code, reason, now), now)

    # -- stepper events --------------------------------------------------------

    def _stepper_woke(self) -> None:
        if self.wakeup is not None:
            self.wakeup()

    def _stepper_events(self, events: list[Event], now: float) -> None:
        for event in events:
            if isinstance(event, Send):
                if self._phase is Phase.OPEN:
                    self._send_message(event.data, now)
            elif isinstance(event, CloseRequested):
                self._send_close(event.code, event.reason, now)
            elif isinstance(event, Closed):
                self.close_code, self.close_reason = event.code, event.reason
                logger.info(
                    "%s: closed %s %s (%s)",
                    self._label(),
                    event.code,
                    event.reason,
                    "local" if event.initiated_locally else "remote",
                )
                self._events.append(event)
            elif isinstance(event, StepChanged):
                logger.debug("%s: step %s -> %s", self._label(), event.from_step, event.to_step)
                self._events.append(event)
            elif isinstance(event, HandlerFailed):
                logger.error("%s: %s raised", self._label(), event.step, exc_info=event.exception)
                self._events.append(event)
            else:
                self._events.append(event)

    def _send_message(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Queue one binary message as a single frame (see `_mask` for the copies)."""
        if type(data) is not bytes:
            data = bytes(data)  # never keep a buffer the application may mutate
        n = len(data)
        if self._client:
            key = os.urandom(4)
            if n < 126:
                header = _SMALL_MASKED_HEADERS[n] + key
            elif n < 65536:
                header = _HEADER_16(0x82, 0xFE, n) + key
            else:
                header = _HEADER_64(0x82, 0xFF, n) + key
            data = _mask(key, data)
        elif n < 126:
            header = _SMALL_HEADERS[n]
        elif n < 65536:
            header = _HEADER_16(0x82, 126, n)
        else:
            header = _HEADER_64(0x82, 127, n)
        out = self._out
        out.append(header)
        out.append(data)
        self._out_size += len(header) + n
        if self._out_size > self.options.max_send_buffer:
            self._overflow(now)

    def _send_close(self, code: int, reason: str, now: float) -> None:
        if self._phase is not Phase.OPEN:
            return
        self.close_code, self.close_reason = code, reason
        ws = self._ws
        self._phase = Phase.CLOSING
        self._leave_open()
        timeout = self.options.close_timeout
        self._close_deadline = None if timeout is None else now + timeout
        if ws.state is ConnectionState.OPEN:
            self._write(ws.send(CloseConnection(code=code, reason=reason)), now)

    def _write(self, data: bytes | bytearray, now: float) -> None:
        if not data or self._transport_done:
            return
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size > self.options.max_send_buffer:
            self._overflow(now)

    def _overflow(self, now: float) -> None:
        logger.warning(
            "%s: peer stopped reading (%d bytes pending); dropping the connection",
            self._label(),
            self._out_size,
        )
        self._out.clear()
        self._out_size = 0
        reason = "send buffer overflow: peer not reading"
        if self.stepper is None:
            self._fail_handshake(0, reason, now)
            self.close_code = SEND_BUFFER_OVERFLOW
        else:
            self._finish_transport(now, SEND_BUFFER_OVERFLOW, reason)

    def _label(self) -> str:
        side = "client" if self._client else "server"
        return f"{side} {self.peer}" if self.peer else side


__all__ = [
    "KEEPALIVE_TIMEOUT_REASON",
    "SEND_BUFFER_OVERFLOW",
    "SHUTDOWN_CODE",
    "SHUTDOWN_REASON",
    "Accept",
    "AwaitHandshake",
    "ClientTarget",
    "CloseResult",
    "HandshakeError",
    "HandshakeFailed",
    "HandshakeHook",
    "HandshakeRequest",
    "HttpHandler",
    "HttpResponse",
    "Opened",
    "Options",
    "Phase",
    "Reject",
    "Wire",
    "WireEvent",
    "format_host",
]
