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
import contextlib
import hashlib
import inspect
import logging
import os
import re
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection as WsprotoConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError as WsprotoLocalError
from wsproto.utilities import split_comma_header

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
from socker_core._resume import (
    ACK_BYTES,
    ACK_EVERY,
    Claimed,
    ReplayBuffer,
    ResumeSession,
    SessionStore,
)

from ._resume_wire import (
    RESUME_SUBPROTOCOL,
    WireResume,
    control,
    new_token,
    parse_control,
    parse_offer,
    resume_offer,
    without_token,
)

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


#: The Options used when none are given (frozen, so one instance serves every wire).
_DEFAULT_OPTIONS = Options()


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


_DEFAULT_ACCEPT = Accept()


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


@dataclass(frozen=True, slots=True)
class Detached:
    """The transport was lost and the connection is detached for `window` seconds:
    a client reconnects (`Wire.client(..., resume_from=this_wire)`); both sides
    keep calling `tick` on this wire at `next_deadline` until it is `finished`."""

    window: float


WireEvent = (
    Opened
    | Detached
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
    # Resume: the transport is gone but this wire still holds a detached session
    # (it ticks it and takes its awaited results) until the session resumes on
    # another wire or ends. The driver closes the socket and keeps calling tick.
    DETACHED = "detached"


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
        if not buffer and data[:2] != b"\r\n":
            # The common case: the whole head in the first read, within every limit.
            end = data.find(b"\r\n\r\n")
            if 0 < end <= self.max_line and data.count(b"\r\n", 0, end + 2) - 1 <= self.max_headers:
                return 0, bytes(data[: end + 4]), bytes(data[end + 4 :])
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


def _valid_key(key: str | None) -> bool:
    if key is None:
        return False
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False


# -- the opening handshake, without h11 -------------------------------------------------
# The wire has the whole head in hand (the guard above), so it validates and answers
# the handshake itself and hands wsproto only the frames: `wsproto.connection.Connection`
# once open. What is accepted and refused, with which status and reason, is what
# h11 + wsproto's `H11Handshake` decided (tests/transports/test_wire_h11_parity.py
# holds the two side by side).

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_WEBSOCKET_VERSION = b"13"
# h11's grammar (h11/_abnf.py): every regex is used with fullmatch.
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_FIELD_VALUE = rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?"
_HEADER_LINE = re.compile(b"(" + _TOKEN + b"):[ \t]*(" + _FIELD_VALUE + b")[ \t]*")
# The same over a block of CRLF-terminated header lines, in two C calls: what follows
# the colon is `OWS field-value OWS` exactly when it holds no NUL, CR, LF, VT or FF
# (every other byte is a field-vchar, a space or a tab); stripped, it is the value.
_LINE_REST = rb"[^\x00\r\n\x0b\x0c]*"
_HEADER_BLOCK = re.compile(b"(?:" + _TOKEN + b":" + _LINE_REST + b"\r\n)*")
_HEADER_PAIRS = re.compile(b"(" + _TOKEN + b"):(" + _LINE_REST + b")\r\n")
_REQUEST_LINE = re.compile(_TOKEN + rb" [\x21-\x7e]+ HTTP/[0-9]\.[0-9]")
_STATUS_LINE_101 = re.compile(rb"HTTP/[0-9]\.[0-9] 101(?: (?:[ \t]|[^\x00\s])*)?")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_FIELD_NAME = re.compile(_TOKEN)
_FIELD_VALUE_RE = re.compile(_FIELD_VALUE)
_CONTENT_LENGTH = re.compile(rb"[0-9]+")
_BLANK_LINE = re.compile(rb"\n\r?\n")
_OBS_FOLD = re.compile(rb"[ \t]+")

#: h11 reports every malformed head as this (wsproto's RemoteProtocolError text).
_BAD_HTTP = "Bad HTTP message"


class _Refused(Exception):
    """The handshake is refused: `status` (0 for a client), the reason, and headers for
    the HTTP answer."""

    def __init__(self, status: int, reason: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers


def _h11_head(head: bytes) -> tuple[bytes | None, bytes, int]:
    """The head as h11 reads it: (start line, or None when h11 finds none; the header
    lines, each ending with CRLF; where h11's head ends).

    A head from `_HeadGuard` ends with CRLF CRLF; h11 also takes a bare LF as a line
    end, so a head with one may end (for h11) before the guard's end."""
    if head.count(b"\n") == head.count(b"\r\n"):
        split = head.find(b"\r\n")
        return head[:split], head[split + 2 : -2], len(head)
    if head[:1] == b"\n":
        return None, b"", 0  # h11: no start line
    blank = _BLANK_LINE.search(head)
    assert blank is not None  # the guard's CRLF CRLF matches
    end = blank.end()
    lines = [line[:-1] if line[-1:] == b"\r" else line for line in head[:end].split(b"\n")]
    return lines[0], b"".join(line + b"\r\n" for line in lines[1:-2]), end


def _h11_fields(block: bytes) -> list[tuple[bytes, bytes]]:
    """(lowercased name, value) of each header line in `block`, validated as h11 reads
    them, Content-Length and Transfer-Encoding included (`_Refused(400, _BAD_HTTP)`)."""
    if _HEADER_BLOCK.fullmatch(block) is None:
        return _h11_folded_fields(block.split(b"\r\n")[:-1])
    fields = [(name.lower(), rest.strip(b" \t")) for name, rest in _HEADER_PAIRS.findall(block)]
    for name, _ in fields:
        if name == b"content-length" or name == b"transfer-encoding":
            _h11_normalize([(name, name, value) for name, value in fields])
            break
    return fields


def _h11_folded_fields(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """`_h11_fields` for header lines with obsolete line folding or a bad line."""
    unfolded: list[bytes] = []
    for line in lines:
        fold = _OBS_FOLD.match(line)
        if fold is None:
            unfolded.append(line)
        elif not unfolded:
            raise _Refused(400, _BAD_HTTP)  # a continuation line first
        else:
            unfolded[-1] = unfolded[-1] + b" " + line[fold.end() :]
    fields = []
    for line in unfolded:
        found = _HEADER_LINE.fullmatch(line)
        if found is None:
            raise _Refused(400, _BAD_HTTP)
        fields.append((found[1].lower(), found[2]))
    _h11_normalize([(name, name, value) for name, value in fields])
    return fields


def _h11_normalize(
    items: Iterable[tuple[bytes, bytes, bytes]],
) -> list[tuple[bytes, bytes, bytes]]:
    """h11's Content-Length / Transfer-Encoding rules (`normalize_and_validate`) over
    (raw name, lowercased name, value): the headers as h11 keeps them, or
    `_Refused(400, _BAD_HTTP)`."""
    seen_length: bytes | None = None
    chunked = False
    kept = []
    for raw_name, name, value in items:
        if name == b"content-length":
            lengths = {length.strip() for length in value.split(b",")}
            if len(lengths) != 1:
                raise _Refused(400, _BAD_HTTP)
            value = lengths.pop()
            if _CONTENT_LENGTH.fullmatch(value) is None or len(value) > 20:
                raise _Refused(400, _BAD_HTTP)
            if seen_length is None:
                seen_length = value
            elif seen_length != value:
                raise _Refused(400, _BAD_HTTP)
            else:
                continue  # a repeat of the same length: h11 keeps one
        elif name == b"transfer-encoding":
            if chunked:
                raise _Refused(400, _BAD_HTTP)
            value = value.lower()
            if value != b"chunked":
                raise _Refused(400, _BAD_HTTP)
            chunked = True
        kept.append((raw_name, name, value))
    return kept


def _h11_write_headers(headers: Iterable[tuple[bytes, bytes]], *, request: bool = False) -> bytes:
    """Header lines and the blank line, as h11 validates and writes them (Host first);
    ValueError for what h11 refuses to send."""
    items = []
    framing = False
    for raw_name, value in headers:
        if _FIELD_NAME.fullmatch(raw_name) is None:
            raise ValueError(f"Illegal header name {raw_name!r}")
        if _FIELD_VALUE_RE.fullmatch(value) is None:
            raise ValueError(f"Illegal header value {value!r}")
        name = raw_name.lower()
        if name == b"content-length" or name == b"transfer-encoding":
            framing = True
        items.append((raw_name, name, value))
    if framing:
        try:
            items = _h11_normalize(items)
        except _Refused:
            raise ValueError("bad Content-Length or Transfer-Encoding header") from None
    hosts = [item for item in items if item[1] == b"host"]
    if request and len(hosts) > 1:
        raise ValueError("Found multiple Host: headers")
    out = [b"%s: %s\r\n" % (raw_name, value) for raw_name, _, value in hosts]
    out += [b"%s: %s\r\n" % (raw_name, value) for raw_name, name, value in items if name != b"host"]
    out.append(b"\r\n")
    return b"".join(out)


def _read_request(head: bytes) -> tuple[str, list[tuple[str, str]], bytes | _Refused]:
    """The request line and headers as `HandshakeRequest` shows them (lenient: names
    lowercased, values stripped, any line read as `name: value`), and the verdict
    h11 and wsproto's H11Handshake gave: the Sec-WebSocket-Key, or a `_Refused`."""
    start, block, _ = _h11_head(head)
    fields: list[tuple[bytes, bytes]] | None = None
    verdict: bytes | _Refused
    try:
        if start is None or _REQUEST_LINE.fullmatch(start) is None:
            raise _Refused(400, _BAD_HTTP)
        fields = _h11_fields(block)
        verdict = _check_upgrade_request(start, fields)
    except _Refused as refused:
        verdict = refused
    if (
        fields is not None
        and start is not None
        and len(fields) == block.count(b"\r\n")  # no folded line
        and head.count(b"\n") == head.count(b"\r\n")  # no bare LF: the guard's lines
    ):
        # h11 read the guard's lines, each one valid: the lenient reading is the same.
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in fields]
        return start.decode("latin-1"), headers, verdict
    lines = head.split(b"\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers.append(
                (name.strip().lower().decode("latin-1"), value.strip().decode("latin-1"))
            )
    return lines[0].decode("latin-1"), headers, verdict


def _check_upgrade_request(start: bytes, fields: list[tuple[bytes, bytes]]) -> bytes:
    """Validate an upgrade request (its request line, already matched against h11's
    grammar, and its h11 header fields) as h11 and wsproto's H11Handshake did: return
    its Sec-WebSocket-Key, or raise `_Refused` with the status they answered."""
    hosts = 0
    connection: list[str] | None = None
    host = key = version = None
    upgrade = b""
    error: Exception | None = None
    for name, value in fields:
        if name == b"host":
            hosts += 1
        if error is not None:
            continue  # wsproto stopped at the first header it could not decode
        try:
            if name == b"connection":
                connection = split_comma_header(value)
            elif name == b"host":
                host = value
                if b"xn--" in value or not value.isascii():
                    value.decode("idna")  # as wsproto does (it may raise)
            elif name == b"sec-websocket-extensions" or name == b"sec-websocket-protocol":
                if not value.isascii():
                    split_comma_header(value)  # raises, as in wsproto
            elif name == b"sec-websocket-key":
                key = value if key is None else key + b", " + value  # wsproto joins repeats
            elif name == b"sec-websocket-version":
                version = value
            elif name == b"upgrade":
                upgrade = value
        except Exception as exc:  # a header wsproto could not decode
            error = exc
    # h11's checks first, then wsproto's, in their order.
    if hosts > 1 or (hosts == 0 and start.endswith(b" HTTP/1.1")):
        raise _Refused(400, _BAD_HTTP)
    if not start.startswith(b"GET "):
        raise _Refused(400, "Request method must be GET")
    if error is not None:
        raise _Refused(400, f"bad upgrade request: {error}")
    if connection is None or not any(token.lower() == "upgrade" for token in connection):
        raise _Refused(400, "Missing header, 'Connection: Upgrade'")
    if version != _WEBSOCKET_VERSION:
        raise _Refused(
            426 if version else 400,
            "Missing header, 'Sec-WebSocket-Version'",
            [("Sec-WebSocket-Version", "13")],
        )
    if key is None:
        raise _Refused(400, "Missing header, 'Sec-WebSocket-Key'")
    if upgrade.lower() != b"websocket":
        raise _Refused(400, "Missing header, 'Upgrade: websocket'")
    if host is None:
        raise _Refused(400, "Missing header, 'Host'")
    return key


def _accept_token(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for `key` (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def _accept_response(
    key: bytes, subprotocol: str | None, headers: Sequence[tuple[str, str]]
) -> bytes:
    """The 101 answer (no extensions: permessage-deflate is never accepted). ValueError
    (or UnicodeError) for headers h11 would have refused to send."""
    token = _accept_token(key)
    if subprotocol is None and not headers:
        return (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + token + b"\r\n\r\n"
        )
    lines = [
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Accept", token),
    ]
    if subprotocol is not None:
        lines.append((b"Sec-WebSocket-Protocol", subprotocol.encode("ascii")))
    lines += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    return b"HTTP/1.1 101 Switching Protocols\r\n" + _h11_write_headers(lines)


def _upgrade_request(
    host: str,
    target: str,
    nonce: bytes,
    subprotocols: Sequence[str],
    extra: list[tuple[bytes, bytes]],
) -> bytes:
    """A client's opening request, as wsproto + h11 build it (ValueError/UnicodeError
    for what they refuse)."""
    headers = [
        (b"Host", host.encode("idna")),
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Key", nonce),
        (b"Sec-WebSocket-Version", _WEBSOCKET_VERSION),
    ]
    if subprotocols:
        headers.append((b"Sec-WebSocket-Protocol", ", ".join(subprotocols).encode("ascii")))
    headers += extra
    path = target.encode("ascii")
    if _TARGET.fullmatch(path) is None:
        raise ValueError("Illegal target characters")
    return b"GET " + path + b" HTTP/1.1\r\n" + _h11_write_headers(headers, request=True)


def _check_accept_response(
    fields: list[tuple[bytes, bytes]], nonce: bytes, offered: Sequence[str]
) -> str | None:
    """Validate a 101 answer's headers as wsproto's H11Handshake did; return the chosen
    subprotocol, or raise (the message is the failure's reason)."""
    connection: list[str] | None = None
    accept = subprotocol = None
    extensions: list[str] = []
    upgrade = b""
    for name, value in fields:
        if name == b"connection":
            connection = split_comma_header(value)
        elif name == b"sec-websocket-extensions":
            extensions = split_comma_header(value)
        elif name == b"sec-websocket-accept":
            accept = value
        elif name == b"sec-websocket-protocol":
            subprotocol = value.decode("ascii")
        elif name == b"upgrade":
            upgrade = value
    if connection is None or not any(token.lower() == "upgrade" for token in connection):
        raise ValueError("Missing header, 'Connection: Upgrade'")
    if upgrade.lower() != b"websocket":
        raise ValueError("Missing header, 'Upgrade: websocket'")
    if accept != _accept_token(nonce):
        raise ValueError("Bad accept token")
    if subprotocol is not None and subprotocol not in offered:
        raise ValueError(f"unrecognized subprotocol {subprotocol}")
    for extension in extensions:  # none is ever offered
        raise ValueError(f"unrecognized extension {extension.split(';', 1)[0].strip()}")
    return subprotocol


class _LazyDeque:
    """Stands in for the event deque of a wsproto `Connection`, which costs ~760 bytes
    even empty and which wsproto fills only in `receive_data(None)` (the wire handles
    end of stream itself and never calls it): a real deque is made on first use."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: deque[Any] | None = None

    def _real(self) -> deque[Any]:
        if self._items is None:
            self._items = deque()
        return self._items

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return 0 if self._items is None else len(self._items)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._real())

    def append(self, item: Any) -> None:
        self._real().append(item)

    def popleft(self) -> Any:
        return self._real().popleft()

    def __getattr__(self, name: str) -> Any:  # any other deque method
        return getattr(self._real(), name)


def _frame_connection(role: ConnectionType, trailing: bytes) -> WsprotoConnection:
    """wsproto's frame-level connection once the handshake is done, fed the bytes that
    followed the head (parsed lazily, like any later read)."""
    ws = WsprotoConnection(role, None, trailing)
    events = getattr(ws, "_events", None)
    if type(events) is deque and not events:
        ws._events = _LazyDeque()  # type: ignore[assignment]
    return ws


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

    Slotted and lean: an idle open connection holds its Stepper, a frame-level
    wsproto `Connection` and a few scalars; handshake-only state is dropped on open.
    """

    __slots__ = (
        "_client",
        "_client_flow",
        "_client_request",
        "_close_deadline",
        "_decoder",
        "_eof",
        "_events",
        "_guard",
        "_handshake_deadline",
        "_held",
        "_held_size",
        "_key",
        "_nonce",
        "_out",
        "_out_size",
        "_part_size",
        "_parts",
        "_pending_after_head",
        "_phase",
        "_ping_due",
        "_ping_payload",
        "_pong_deadline",
        "_request",
        "_resume",
        "_sessions",
        "_transport_done",
        "_wakeup",
        "_ws",
        "close_code",
        "close_reason",
        "handshake_hook",
        "handshake_status",
        "http_handler",
        "options",
        "path",
        "peer",
        "role",
        "routes",
        "stepper",
        "stepper_guard",
        "subprotocol",
    )

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
        sessions: SessionStore | None = None,
    ) -> None:
        self.role = role
        self.options = options
        self.peer = peer
        self.routes = routes
        self.handshake_hook = handshake_hook
        self.http_handler = http_handler
        self._client = role is ConnectionType.CLIENT
        # wsproto's frame-level connection, from the moment the handshake succeeds.
        self._ws: WsprotoConnection | None = None
        self._decoder: Any = None  # wsproto's frame decoder, for the announced-size check
        self._phase = Phase.HANDSHAKE
        self._out: list[bytes | bytearray] = []
        self._out_size = 0
        self._events: list[WireEvent] = []
        self.stepper: Stepper | None = None
        #: The lock a threaded driver holds around every call into this wire; the
        #: wire makes it its Stepper's `guard` (a resumed Stepper's too, taken
        #: under the old one, so two drivers' threads never race on it).
        self.stepper_guard: Any = None
        self.path = ""
        self.subprotocol: str | None = None
        self._parts: list[bytes | bytearray] | None = None  # fragments, once one arrives
        self._part_size = 0
        self._held: deque[bytes] | None = None  # messages the flow cannot take yet
        self._held_size = 0
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
        self._wakeup: Callable[[], None] | None = None
        # Handshake-only state, all dropped (None/b"") once the handshake ends.
        self._guard: _HeadGuard | None = _HeadGuard(options.max_line, options.max_headers)
        self._request: HandshakeRequest | None = None  # server: for the hook's answer
        self._key = b""
        self._pending_after_head = b""  # server: bytes read while the hook runs
        self._client_flow = flow
        #: Server: where resumable sessions live (None: this server does not resume).
        self._sessions = sessions
        #: Resume state, on connections that negotiated socker.resume.v1 (see
        #: _resume_wire); None otherwise, so a plain connection pays one test.
        self._resume: WireResume | None = None
        self._nonce = b""  # client: our Sec-WebSocket-Key
        # client: (host, path, extra headers), to read a refusal with wsproto
        self._client_request: tuple[str, str, list[tuple[bytes, bytes]]] | None = None

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
        sessions: SessionStore | None = None,
    ) -> Wire:
        """A server connection: one Flow for every path, or a path -> Flow map (404
        for other paths). The handshake hook may accept (choosing a flow, a
        subprotocol, `conn.state`), reject with a status, or be `async def`.

        `sessions`: the server's session store; with it, routes whose flow has
        `resume_window` accept resuming clients (one store per server)."""
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
            options or _DEFAULT_OPTIONS,
            now,
            routes=routes,
            handshake_hook=handshake_hook,
            http_handler=http_handler,
            peer=peer,
            sessions=sessions,
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
        reconnect: bool = False,
        resume_from: Wire | None = None,
    ) -> Wire:
        """A client connection; its opening request is already in `data_to_send()`.
        `host` is the Host header ("example.com:8000").

        `reconnect`: offer resume (`socker.resume.v1`). `resume_from`: the previous
        wire of a detached session: this connection resumes it (same flow)."""
        flow.validate()
        opts = options or _DEFAULT_OPTIONS
        _check_headers(headers, "Wire.client")
        if origin is not None:
            _check_headers([("Origin", origin)], "Wire.client")
        wire = cls(ConnectionType.CLIENT, opts, now, flow=flow, peer=peer)
        wire.path = path.partition("?")[0]  # like the server's: the query is not part of it
        offered = tuple(opts.subprotocols)
        if reconnect or resume_from is not None:
            resume = wire._resume = WireResume(reconnect=True)
            offered += (RESUME_SUBPROTOCOL,)
            previous = resume_from.resumable_session if resume_from is not None else None
            if previous is not None:
                if previous.stepper.flow is not flow:
                    raise LocalProtocolError("resume_from holds a session of another flow")
                replay = previous.stepper.replay
                assert replay is not None
                resume.resume_from = previous
                offered += (resume_offer(previous.token, replay.received),)
            resume.offered = offered
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        if origin is not None:
            extra.append((b"Origin", origin.encode("latin-1")))
        nonce = base64.b64encode(os.urandom(16))
        try:
            data = _upgrade_request(host, path, nonce, offered, extra)
        except Exception as exc:  # idna or the h11 rules refusing the host, path or a header
            raise LocalProtocolError(f"cannot build the opening request: {exc}") from exc
        wire._nonce = nonce
        wire._client_request = (host, path, extra)
        wire._write(data, now)
        return wire

    # -- state -----------------------------------------------------------------

    @property
    def wakeup(self) -> Callable[[], None] | None:
        """Called with no arguments when there is output or an event to handle that did
        not come from a call into the wire (for example a send by an async handler or
        from application code): the driver should call `collect()`."""
        return self._wakeup

    @wakeup.setter
    def wakeup(self, callback: Callable[[], None] | None) -> None:
        self._wakeup = callback
        if self.stepper is not None:
            self.stepper.wakeup = callback  # the flow's outbox wakes the driver directly

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def resumable_session(self) -> ResumeSession | None:
        """The resumable session this wire holds (None on plain connections, before
        the server named one, and once it resumed elsewhere)."""
        resume = self._resume
        if resume is None or resume.handed_off or resume.session is None:
            return None
        if not resume.session.token or resume.session.stepper.is_closed:
            return None
        return resume.session

    @property
    def handed_off(self) -> bool:
        """True once this wire's session resumed on another wire: awaited results
        still go through `resume` (they reach the new wire), nothing else does."""
        return self._resume is not None and self._resume.handed_off

    @property
    def detached(self) -> bool:
        """True while the transport is gone and this wire keeps a detached session:
        the driver keeps calling `tick` at `next_deadline` (and `collect` on a
        wakeup) until `finished`."""
        return self._phase is Phase.DETACHED and not self.finished

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
        """True once the transport is done and, if a flow ran, it is closed (or
        resumed on another wire)."""
        if not self._transport_done:
            return False
        if self.stepper is None or self.stepper.is_closed:
            return True
        resume = self._resume
        return resume is not None and resume.handed_off

    @property
    def next_deadline(self) -> float | None:
        """When `tick` next has something to do, or None."""
        if self._transport_done:
            if self._phase is Phase.DETACHED and self.stepper is not None and not self.finished:
                return self.stepper.next_deadline
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
        events = self._events
        if not events:
            return []
        self._events = []
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
        ws = self._ws
        assert ws is not None  # open or closing
        try:
            ws.receive_data(data)  # type: ignore[arg-type]  # bytearray works
        except WsprotoLocalError:
            return  # wsproto is already closed: nothing more to read
        self._pump(now)

    def tick(self, now: float) -> None:
        """Handle every deadline at or before `now`."""
        if self._transport_done:
            if self._phase is Phase.DETACHED and self.stepper is not None and not self.finished:
                self._stepper_events(self.stepper.tick(now), now)
            return
        if self._phase is Phase.HANDSHAKE or self._phase is Phase.HOOK:
            if self._handshake_deadline is not None and now >= self._handshake_deadline:
                self._fail_handshake(
                    0 if self._client else 408, "opening handshake timed out", now, respond=True
                )
            return
        if self._close_deadline is not None and now >= self._close_deadline:
            if logger.isEnabledFor(logging.INFO):
                logger.info("%s: close handshake timed out", self._label())
            self._finish_transport(now, CloseCode.ABNORMAL, "close handshake timed out")
            return
        if self._pong_deadline is not None and now >= self._pong_deadline:
            if logger.isEnabledFor(logging.INFO):
                logger.info("%s: %s", self._label(), KEEPALIVE_TIMEOUT_REASON)
            if self._resume is not None and self._resume.session is not None:
                # A silent drop: the session waits for a resume (no close frame,
                # which a live but slow peer would take as the end).
                self._finish_transport(now, CloseCode.ABNORMAL, KEEPALIVE_TIMEOUT_REASON)
                return
            self._fail(now, CloseCode.INTERNAL_ERROR, KEEPALIVE_TIMEOUT_REASON)
            return
        if self._ping_due is not None and now >= self._ping_due and self._phase is Phase.OPEN:
            ws = self._ws
            assert ws is not None
            self._ping_payload = os.urandom(4)
            if self._resume is not None and self._resume.unacked:
                self._send_ack(now)  # a quiet peer still trims our replay buffer
            self._write(ws.send(Ping(self._ping_payload)), now)
            self._ping_due = None
            timeout = self.options.ping_timeout
            self._pong_deadline = None if timeout is None else now + timeout
        if self.stepper is not None:
            self._stepper_events(self.stepper.tick(now), now)

    def resume(self, token: int, result: object, now: float) -> None:
        """An `Await`'s awaitable returned `result`."""
        if self.stepper is None:
            raise LocalProtocolError("resume before the flow started")
        if self._resume is not None and self._resume.handed_off:
            # The session moved to another wire: its events go there (outbox),
            # under its driver's guard (a threaded driver's lock) if it has one.
            stepper = self.stepper
            with stepper.guard or contextlib.nullcontext():
                stepper.post(stepper.resume(token, result, now))
            return
        self.collect(now)  # what the awaited handler sent goes out first
        self._stepper_events(self.stepper.resume(token, result, now), now)
        self._feed_held(now)

    def resume_error(self, token: int, error: BaseException, now: float) -> None:
        """An `Await`'s awaitable raised `error`."""
        if self.stepper is None:
            raise LocalProtocolError("resume_error before the flow started")
        if self._resume is not None and self._resume.handed_off:
            stepper = self.stepper
            with stepper.guard or contextlib.nullcontext():
                stepper.post(stepper.resume_error(token, error, now))
            return
        self.collect(now)  # what the awaited handler sent goes out first
        self._stepper_events(self.stepper.resume_error(token, error, now), now)
        self._feed_held(now)

    def collect(self, now: float) -> None:
        """Take what the flow produced outside a call (async handlers, application sends)."""
        if self.stepper is not None and not (self._resume is not None and self._resume.handed_off):
            self._stepper_events(self.stepper.pending_events(), now)

    def send(self, data: bytes, now: float) -> None:
        """Application send from outside any handler (ConnectionClosedError once closing).
        While detached the message is kept for replay."""
        if self._phase is Phase.DETACHED and self.stepper is not None and not self.finished:
            self._stepper_events(self.stepper.send(data, now), now)
            return
        if self.stepper is None or self._phase is not Phase.OPEN:
            raise ConnectionClosedError(
                f"cannot send: the connection is {self._phase.value}",
                self.close_code,
                self.close_reason,
            )
        self._stepper_events(self.stepper.send(data, now), now)

    def close(self, code: int = 1000, reason: str = "", now: float = 0.0) -> None:
        """Application close (a server shutting down uses 1001). Before the handshake
        completes a server answers 503 (1001) or 400 instead. A detached session
        ends at once (its on_close hooks run)."""
        if self._transport_done:
            if self._phase is Phase.DETACHED and self.stepper is not None and not self.finished:
                self._stepper_events(self.stepper.close(code, reason, now), now)
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

    def abort(
        self, now: float, reason: str = "transport lost", *, keep_session: bool = True
    ) -> None:
        """The transport failed under us (reset, write error): end everything now
        (a resumable session detaches, unless `keep_session` is False: a driver
        shutting down or cancelled)."""
        if self._transport_done:
            if not keep_session and self.detached and self.stepper is not None:
                self._stepper_events(self.stepper.transport_closed(1006, reason, now), now)
            return
        if self._phase is Phase.HANDSHAKE or self._phase is Phase.HOOK:
            self._fail_handshake(0, reason, now, respond=False)
        else:
            if not keep_session:
                self._resume_off()
            self._finish_transport(now, CloseCode.ABNORMAL, reason)

    def _resume_off(self) -> None:
        resume = self._resume
        if resume is not None and not resume.handed_off:
            resume.session = None  # a lost transport now ends the flow

    # -- handshake -------------------------------------------------------------

    def _receive_handshake(self, data: bytes | bytearray, now: float) -> None:
        guard = self._guard
        if guard is None:  # head already complete; waiting on the hook
            self._pending_after_head += data
            return
        status, head, rest = guard.feed(data)
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
        request_line, headers, verdict = _read_request(head)
        parts = request_line.split(" ")
        target = parts[1] if len(parts) == 3 else ""
        if "://" in target and not target.startswith("/"):  # absolute-form (RFC 9112 3.2.2)
            split = urlsplit(target)
            path, query = split.path or "/", split.query
        else:
            path, _, query = target.partition("?")
        origin = upgrade = None
        protocols = []
        keys = []
        for name, value in headers:
            if name == "origin":
                if origin is None:
                    origin = value
            elif name == "upgrade":
                if upgrade is None:
                    upgrade = value
            elif name == "sec-websocket-key":
                keys.append(value)
            elif name == "sec-websocket-protocol":
                protocols.append(value)
        offered = (
            tuple(p.strip() for p in ",".join(protocols).split(",") if p.strip())
            if protocols
            else ()
        )
        if self._sessions is not None and RESUME_SUBPROTOCOL in offered:
            # The token never reaches a hook or a log: keep it here, strip it there.
            self._resume = WireResume(offer=parse_offer(offered))
            offered = without_token(offered)
            headers = [
                (name, ", ".join(without_token(tuple(v.strip() for v in value.split(",")))))
                if name == "sec-websocket-protocol"
                else (name, value)
                for name, value in headers
            ]
        request = HandshakeRequest(path, query, tuple(headers), offered, origin)
        self._request = request
        self.path = path
        is_upgrade = upgrade is not None and "websocket" in upgrade.lower()
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
        if isinstance(verdict, _Refused):
            self._fail_handshake(
                verdict.status, verdict.reason, now, respond=True, headers=verdict.headers
            )
            return
        if len(keys) != 1 or not _valid_key(keys[0]):
            self._fail_handshake(400, "invalid Sec-WebSocket-Key", now, respond=True)
            return
        origins = self.options.origins
        if origins is not None and origin not in origins:
            self._fail_handshake(403, f"origin {origin!r} not allowed", now, respond=True)
            return
        if self._route(path) is None:
            self._fail_handshake(404, f"no flow at path {path!r}", now, respond=True)
            return
        self._key = verdict
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
        accept = result if isinstance(result, Accept) else _DEFAULT_ACCEPT
        request = self._request
        assert request is not None
        flow = accept.flow or self._route(self.path)
        assert flow is not None
        subprotocol = accept.subprotocol
        if subprotocol is None:
            subprotocol = next(
                (p for p in self.options.subprotocols if p in request.subprotocols), None
            )
        offer = self._resume.offer if self._resume is not None else None
        if offer is not None and subprotocol is None and flow.resume_window is not None:
            subprotocol = RESUME_SUBPROTOCOL
        if subprotocol != RESUME_SUBPROTOCOL:
            self._resume = None  # not resumable here: a plain connection
        if subprotocol is not None and subprotocol not in request.subprotocols:
            logger.error("%s: subprotocol %r was not offered", self._label(), subprotocol)
            self._fail_handshake(
                500, f"subprotocol {subprotocol!r} was not offered", now, respond=True
            )
            return
        try:
            response = _accept_response(self._key, subprotocol, accept.headers)
        except Exception as exc:  # a header the h11 rules refuse to send
            logger.error("%s: cannot accept: %s", self._label(), exc)
            self._fail_handshake(500, "cannot build the handshake response", now, respond=True)
            return
        self._write(response, now)
        self.subprotocol = subprotocol
        rest = self._pending_after_head
        # Frames that came with (or after) the request: parsed lazily, like any later read.
        self._ws = _frame_connection(ConnectionType.SERVER, rest)
        if offer is not None and offer.token is not None and self._resume is not None:
            self._resume_server(flow, offer.token, offer.received, now)
        else:
            self._start_flow(flow, now, accept.state)
        if rest and not self._transport_done:
            self._pump(now)

    def _client_head(self, head: bytes, rest: bytes, now: float) -> None:
        start, block, end = _h11_head(head)
        if start is None or _STATUS_LINE_101.fullmatch(start) is None:
            self._client_refused(head + rest, now)
            return
        try:
            fields = _h11_fields(block)
            resume = self._resume
            offered = self.options.subprotocols if resume is None else resume.offered
            subprotocol = _check_accept_response(fields, self._nonce, offered)
        except Exception as exc:  # the message says why; a non-ASCII value, for example
            self._fail_handshake(0, f"bad handshake response: {exc}", now)
            return
        self.subprotocol = subprotocol
        flow = self._client_flow
        assert flow is not None
        # Frames that came with the response: parsed lazily, like any later read.
        self._ws = _frame_connection(ConnectionType.CLIENT, head[end:] + rest)
        if resume is not None and subprotocol != RESUME_SUBPROTOCOL:
            self._resume = None  # the server does not resume this route
            if resume.resume_from is not None:
                self._resume_refused_by_server(resume.resume_from, now)
                return
        if resume is not None and resume.resume_from is not None and self._resume is not None:
            self._resume_client(resume.resume_from, now)
        else:
            self._start_flow(flow, now, {})
        if not self._transport_done:
            self._pump(now)

    def _client_refused(self, data: bytes, now: float) -> None:
        """Anything but a 101: read (the start of) the answer with wsproto, which gives
        the refusal's status or the reason it is malformed."""
        assert self._client_request is not None
        host, path, extra = self._client_request
        ws = WSConnection(ConnectionType.CLIENT)
        try:
            subprotocols = list(self.options.subprotocols)
            ws.send(Request(host=host, target=path, extra_headers=extra, subprotocols=subprotocols))
            ws.receive_data(data)
            first = next(ws.events(), None)
        except Exception as exc:  # RemoteProtocolError, or a non-ASCII header value
            self._fail_handshake(0, f"bad handshake response: {exc}", now)
            return
        if isinstance(first, RejectConnection):
            self._fail_handshake(first.status_code, "server rejected the handshake", now)
            return
        self._fail_handshake(0, "unexpected handshake response", now)

    def _drop_handshake_state(self) -> None:
        self._guard = None
        self._request = None
        self._key = b""
        self._pending_after_head = b""
        self._client_flow = None
        self._nonce = b""
        self._client_request = None

    def _opened_transport(self, now: float) -> None:
        self._phase = Phase.OPEN
        self.handshake_status = 101
        self._handshake_deadline = None
        self._drop_handshake_state()
        self._decoder = getattr(getattr(self._ws, "_proto", None), "_frame_decoder", None)
        if self.options.ping_interval is not None:
            self._ping_due = now + self.options.ping_interval

    def _start_flow(self, flow: Flow, now: float, state: Mapping[str, Any]) -> None:
        self._opened_transport(now)
        resume = self._resume
        stepper = Stepper(
            flow,
            max_queue=self.options.max_queue,
            replay=None if resume is None else ReplayBuffer(flow.max_resume_buffer),
        )
        if resume is not None:
            if self._client:
                # Named by the server's "session" message.
                resume.session = ResumeSession("", self.path, stepper, 0.0, holder=self)
            else:
                assert self._sessions is not None and flow.resume_window is not None
                token = new_token()
                window = flow.resume_window
                resume.session = ResumeSession(token, self.path, stepper, window, holder=self)
                self._sessions.add(resume.session, now)
                self._write_control(control("session", token=token, window=window), now)
        if state:
            conn_state = stepper.conn.state
            for key, value in state.items():
                setattr(conn_state, key, value)
        stepper.wakeup = self._wakeup
        if self.stepper_guard is not None:
            stepper.guard = self.stepper_guard
        self.stepper = stepper
        self._events.append(Opened(self.path, self.subprotocol, flow.name))
        if logger.isEnabledFor(logging.INFO):
            logger.info("%s: open %s (flow %s)", self._label(), self.path, flow.name)
        self._stepper_events(stepper.open(now), now)

    # -- resume ----------------------------------------------------------------

    def _resume_server(self, flow: Flow, token: str, peer_received: int, now: float) -> None:
        """A client presents a session token: take the session over, or refuse with
        its code (after the 101: a browser sees close codes, never HTTP statuses)."""
        self._opened_transport(now)
        resume = self._resume
        assert resume is not None and self._sessions is not None
        answer = self._sessions.claim(token, self.path, flow, new_token(), now)
        if not isinstance(answer, Claimed):
            if logger.isEnabledFor(logging.INFO):
                logger.info("%s: resume refused (%s %s)", self._label(), answer.code, answer.reason)
            self._resume = None
            self._close_transport_only(answer.code, answer.reason, now)
            return
        session = answer.session
        self._adopt(session, now)
        stepper = session.stepper
        replay = stepper.replay
        assert replay is not None
        self._events.append(Opened(self.path, self.subprotocol, flow.name))
        if stepper.is_closed:  # ended while being taken over (overflowed)
            self._close_transport_only(stepper.close_code or 1006, stepper.close_reason, now)
            return
        missed = replay.replay_after(peer_received)
        if missed is None:
            self._stepper_events(
                stepper.close(CloseCode.RESUME_BUFFER_OVERFLOW, "cannot replay", now), now
            )
            self._close_transport_only(CloseCode.RESUME_BUFFER_OVERFLOW, "cannot replay", now)
            return
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "%s: resumed %s at step %s (replaying %d)",
                self._label(),
                stepper.id,
                stepper.step,
                len(missed),
            )
        resume.unconfirmed = True
        self._write_control(control("resumed", token=session.token, received=replay.received), now)
        for message in missed:
            self._send_message(message, now)
        self._stepper_events(stepper.attach(now), now)

    def _resume_client(self, session: ResumeSession, now: float) -> None:
        """Our resume was accepted at the HTTP level: hold the session, and wait for
        the server's "resumed" (or its refusal: a close frame)."""
        self._opened_transport(now)
        resume = self._resume
        assert resume is not None
        self._adopt(session, now)
        resume.resuming = True
        self._events.append(Opened(self.path, self.subprotocol, session.stepper.flow.name))

    def _resume_refused_by_server(self, session: ResumeSession, now: float) -> None:
        self._opened_transport(now)
        self._resume = WireResume()
        self._adopt(session, now)
        self._stepper_events(
            session.stepper.close(CloseCode.SESSION_GONE, "the server does not resume", now), now
        )
        self._close_transport_only(CloseCode.NORMAL, "", now)

    def _adopt(self, session: ResumeSession, now: float) -> None:
        """Become the wire that moves `session`'s bytes (the old one lets go)."""
        old = session.holder
        stepper = session.stepper
        with stepper.guard or contextlib.nullcontext():  # the old driver's lock, if any
            if isinstance(old, Wire) and old is not self:
                old._hand_off(now)
            resume = self._resume
            assert resume is not None
            session.holder = self
            resume.session = session
            self.stepper = stepper
            stepper.wakeup = self._wakeup
            stepper.guard = self.stepper_guard

    def _hand_off(self, now: float) -> None:
        """Another wire resumed our session. A transport that still looks alive (half
        open) is closed with 4409; the session detaches first if it had not."""
        resume = self._resume
        stepper = self.stepper
        assert resume is not None and stepper is not None
        if not self._transport_done:
            if logger.isEnabledFor(logging.INFO):
                logger.info("%s: session taken over by a new connection", self._label())
            ws = self._ws
            reason = "session taken over"
            if ws is not None and ws.state is ConnectionState.OPEN:
                self._write(
                    ws.send(CloseConnection(code=CloseCode.SESSION_TAKEN_OVER, reason=reason)), now
                )
            self._leave_open()
            self._transport_done = True
            self._close_deadline = None
            self.close_code, self.close_reason = int(CloseCode.SESSION_TAKEN_OVER), reason
            if not stepper.is_detached and not stepper.is_closed and resume.session is not None:
                self._stepper_events(stepper.detach(now, resume.session.window), now)
        self._phase = Phase.DONE
        resume.handed_off = True
        if self._wakeup is not None:
            self._wakeup()  # the driver sees `finished`

    def _close_transport_only(self, code: int, reason: str, now: float) -> None:
        """Close the transport with `code` without a flow behind it (a refused
        resume, a session that ended while being resumed)."""
        self.close_code, self.close_reason = code, reason
        ws = self._ws
        if ws is None or ws.state is not ConnectionState.OPEN or self._phase is not Phase.OPEN:
            return
        self._phase = Phase.CLOSING
        self._leave_open()
        timeout = self.options.close_timeout
        self._close_deadline = None if timeout is None else now + timeout
        self._write(ws.send(CloseConnection(code=code, reason=_truncate_reason(reason))), now)

    def _can_detach(self) -> bool:
        resume = self._resume
        if resume is None or resume.handed_off or resume.session is None:
            return False
        stepper = self.stepper
        if stepper is None or stepper.is_closed:
            return False
        return bool(resume.session.token)  # a client needs the server's "session" first

    def _detach(self, now: float, reason: str) -> None:
        resume = self._resume
        stepper = self.stepper
        assert resume is not None and resume.session is not None and stepper is not None
        self._phase = Phase.DETACHED
        window = resume.session.window
        resume.session.detached_at = now
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "%s: %s: %s detached at step %s for %gs",
                self._label(),
                reason,
                stepper.id,
                stepper.step,
                window,
            )
        if not stepper.is_detached:
            self._stepper_events(stepper.detach(now, window), now)
        if not stepper.is_closed:
            self._events.append(Detached(window))

    def _write_control(self, text: str, now: float) -> None:
        ws = self._ws
        if ws is not None and ws.state is ConnectionState.OPEN:
            self._write(ws.send(TextMessage(data=text)), now)

    def _send_ack(self, now: float) -> None:
        resume = self._resume
        stepper = self.stepper
        assert resume is not None
        if stepper is None or stepper.replay is None or self._phase is not Phase.OPEN:
            return
        resume.unacked = resume.unacked_bytes = 0
        self._write_control(control("ack", received=stepper.replay.received), now)

    def _count(self, message: bytes, now: float) -> bool:
        """A binary message is about to reach the Stepper: count it (acking every
        ACK_EVERY / ACK_BYTES). False when it must not reach it (protocol error)."""
        resume = self._resume
        assert resume is not None
        stepper = self.stepper
        if resume.resuming or stepper is None or stepper.replay is None:
            self._fail(now, CloseCode.PROTOCOL_ERROR, "message before the resume completed")
            return False
        if resume.unconfirmed:
            self._confirm(now)
        stepper.replay.received += 1
        resume.unacked += 1
        resume.unacked_bytes += len(message)
        if resume.unacked >= ACK_EVERY or resume.unacked_bytes >= ACK_BYTES:
            self._send_ack(now)
        return True

    def _confirm(self, now: float) -> None:
        resume = self._resume
        assert resume is not None
        resume.unconfirmed = False
        if resume.session is not None and self._sessions is not None:
            self._sessions.confirm(resume.session, now)

    def _text_control(self, event: TextMessage, now: float) -> None:
        resume = self._resume
        assert resume is not None
        resume.parts.append(event.data)
        if sum(len(p) for p in resume.parts) > 4096:
            resume.parts.clear()
            self._fail(now, CloseCode.PROTOCOL_ERROR, "control message too large")
            return
        if not event.message_finished:
            return
        text = "".join(resume.parts)
        resume.parts.clear()
        if resume.unconfirmed:
            self._confirm(now)
        message = parse_control(text)
        stepper = self.stepper
        replay = stepper.replay if stepper is not None else None
        kind = None if message is None else message["type"]
        if message is None or stepper is None or replay is None:
            self._fail(now, CloseCode.PROTOCOL_ERROR, "malformed control message")
        elif kind == "ack":
            if not replay.ack(message["received"]):
                self._fail(now, CloseCode.PROTOCOL_ERROR, "impossible acknowledgement")
        elif kind == "session" and self._client and resume.session is not None:
            if resume.resuming or resume.session.token:
                self._fail(now, CloseCode.PROTOCOL_ERROR, "unexpected session message")
                return
            resume.session.token = message["token"]
            resume.session.window = float(message["window"])
        elif kind == "resumed" and self._client and resume.resuming:
            assert resume.session is not None
            resume.session.token = message["token"]
            resume.resuming = False
            missed = replay.replay_after(message["received"])
            if missed is None:
                reason = "cannot replay"
                self._stepper_events(
                    stepper.close(CloseCode.RESUME_BUFFER_OVERFLOW, reason, now), now
                )
                self._close_transport_only(CloseCode.RESUME_BUFFER_OVERFLOW, reason, now)
                return
            self._send_ack(now)  # tells the server we have the new token
            for data in missed:
                self._send_message(data, now)
            self._stepper_events(stepper.attach(now), now)
        else:
            self._fail(now, CloseCode.PROTOCOL_ERROR, f"unexpected control message {kind!r}")

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
        self._drop_handshake_state()
        if logger.isEnabledFor(logging.INFO):
            logger.info("%s: handshake failed (%s): %s", self._label(), status or "-", reason)
        self._events.append(HandshakeFailed(status, reason))

    # -- messages --------------------------------------------------------------

    def _pump(self, now: float) -> None:
        ws = self._ws
        assert ws is not None
        max_size = self.options.max_size
        for event in ws.events():
            if self._transport_done:
                return
            if isinstance(event, BytesMessage):
                if self._phase is not Phase.OPEN:
                    continue  # after our close frame: discard, per RFC 6455
                chunk = event.data
            elif isinstance(event, TextMessage):
                if self._phase is not Phase.OPEN:
                    continue
                if self._resume is not None:
                    self._text_control(event, now)  # socker's own (see _resume_wire)
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
            parts = self._parts
            if event.message_finished:
                if parts:
                    parts.append(chunk)
                    message = b"".join(parts)
                    self._parts = None
                    self._part_size = 0
                else:
                    message = chunk if type(chunk) is bytes else bytes(chunk)
                self._deliver(message, now)
            elif chunk:
                if parts is None:
                    self._parts = [chunk]
                else:
                    parts.append(chunk)
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
        self._parts = None
        self._part_size = 0
        max_size = self.options.max_size
        self._close_flow(now, CloseCode.MESSAGE_TOO_BIG, f"message larger than {max_size} bytes")

    def _deliver(self, message: bytes, now: float) -> None:
        stepper = self.stepper
        assert stepper is not None
        held = self._held
        if held or not stepper.accepting:
            if held is None:
                held = self._held = deque()
            held.append(message)
            self._held_size += len(message)
            return
        if self._resume is not None and not self._count(message, now):
            return
        self._stepper_events(stepper.receive(message, now), now)

    def _feed_held(self, now: float) -> None:
        stepper = self.stepper
        held = self._held
        if held is None:
            return
        while held and stepper is not None and stepper.accepting and self._phase is Phase.OPEN:
            message = held.popleft()
            self._held_size -= len(message)
            if self._resume is not None and not self._count(message, now):
                return
            self._stepper_events(stepper.receive(message, now), now)
        if not held and self._held is held:
            self._held = None

    def _peer_close(self, event: CloseConnection, now: float) -> None:
        ws = self._ws
        assert ws is not None
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
            if logger.isEnabledFor(logging.INFO):
                logger.info("%s: protocol error %s: %s", self._label(), code, reason)
            self._fail(now, code, reason or "protocol error")

    def _fail(self, now: float, code: int, reason: str) -> None:
        """Fail the connection: a close frame if we can still send one, then drop."""
        reason = _truncate_reason(reason)
        self._close_flow(now, code, reason)
        self._finish_transport(now, code, reason)

    def _close_flow(self, now: float, code: int, reason: str) -> None:
        if self._resume is not None and self._resume.handed_off:
            return
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
        self._parts = None
        self._part_size = 0
        self._held = None
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
        if code == CloseCode.ABNORMAL and self._can_detach():
            self._detach(now, reason)
            return
        if code is not None:
            self._end_flow(now, code, reason)
        else:
            self._end_flow(now, self.close_code or CloseCode.NORMAL, self.close_reason)

    def _end_flow(self, now: float, code: int, reason: str) -> None:
        stepper = self.stepper
        if self._resume is not None and self._resume.handed_off:
            return  # the session lives on another wire now
        if stepper is None:
            if self.close_code is None:
                self.close_code, self.close_reason = code, reason
            return
        if not stepper.is_closed:
            self._stepper_events(stepper.transport_closed(code, reason, now), now)

    # -- stepper events --------------------------------------------------------

    def _stepper_events(self, events: list[Event], now: float) -> None:
        for event in events:
            if isinstance(event, Send):
                if self._phase is Phase.OPEN:
                    self._send_message(event.data, now)
            elif isinstance(event, CloseRequested):
                self._send_close(event.code, event.reason, now)
            elif isinstance(event, Closed):
                resume = self._resume
                if resume is not None and resume.session is not None and self._sessions:
                    self._sessions.end(resume.session, event.code, now)
                self.close_code, self.close_reason = event.code, event.reason
                if logger.isEnabledFor(logging.INFO):
                    logger.info(
                        "%s: closed %s %s (%s)",
                        self._label(),
                        event.code,
                        event.reason,
                        "local" if event.initiated_locally else "remote",
                    )
                self._events.append(event)
            elif isinstance(event, StepChanged):
                if logger.isEnabledFor(logging.DEBUG):
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
        assert ws is not None
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
    "RESUME_SUBPROTOCOL",
    "SEND_BUFFER_OVERFLOW",
    "SHUTDOWN_CODE",
    "SHUTDOWN_REASON",
    "Accept",
    "AwaitHandshake",
    "ClientTarget",
    "CloseResult",
    "Detached",
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
