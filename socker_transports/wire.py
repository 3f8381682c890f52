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
"""

from __future__ import annotations

import base64
import binascii
import inspect
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

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
    StepChanged,
    Stepper,
)
from socker_core._codes import CloseCode

logger = logging.getLogger("socker")

MiB = 1024 * 1024

#: Close codes the wire layer itself reports, added to the core's table.
KEEPALIVE_TIMEOUT_REASON = "keepalive ping timeout"


@dataclass(frozen=True)
class Options:
    """Limits and policies. The same names and defaults in every driver.

    - `max_size`: largest message accepted, checked while fragments arrive (1009).
    - `max_queue`: messages that may wait while an async handler is busy; past it the
      driver stops reading the socket (backpressure, never dropping).
    - `open_timeout`: seconds for the opening handshake.
    - `close_timeout`: seconds to wait for the peer's close frame (or the server's EOF).
    - `ping_interval` / `ping_timeout`: keepalive; a peer silent for
      `ping_timeout` after a ping is dropped with 1011. None disables.
    - `max_line` / `max_headers`: handshake limits: the longest request, status or
      header line, and the most header lines (431 / 414 beyond them).
    - `origins`: allowed `Origin` values (None in the list admits a missing Origin);
      None allows every origin. 403 otherwise.
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


SEND_BUFFER_OVERFLOW = 4503


# -- events the wire gives its driver ------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    """What a server's handshake hook sees."""

    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    subprotocols: tuple[str, ...]
    origin: str | None

    def header(self, name: str) -> str | None:
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


@dataclass(frozen=True, slots=True)
class Reject:
    """Handshake hook answer: refuse with an HTTP status (401, 403, ...)."""

    status: int = 403
    body: bytes = b""
    headers: Sequence[tuple[str, str]] = ()


HandshakeHook = Callable[
    [HandshakeRequest], "Accept | Reject | Awaitable[Accept | Reject | None] | None"
]

#: A plain-HTTP answer for a request that is not a websocket upgrade (see `http_handler`).
HttpHandler = Callable[[HandshakeRequest], "HttpResponse | None"]


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Opened:
    """The opening handshake succeeded and the flow started."""

    path: str
    subprotocol: str | None
    flow: str


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """The opening handshake did not complete: `status` is the HTTP status sent or
    received (0 when the transport ended or timed out first)."""

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


_UPGRADE_HEADER_LIMIT_STATUS = 431


class _HeadGuard:
    """Collects an HTTP head (request or response) and enforces the line limits
    before wsproto/h11 sees it, so an oversize or trickling head never grows a buffer."""

    __slots__ = ("buffer", "max_headers", "max_line")

    def __init__(self, max_line: int, max_headers: int) -> None:
        self.buffer = bytearray()
        self.max_line = max_line
        self.max_headers = max_headers

    def feed(self, data: bytes) -> tuple[int, bytes | None, bytes]:
        """Returns (error status or 0, the complete head or None, bytes after it)."""
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        head = self.buffer if end < 0 else self.buffer[: end + 2]
        lines = head.split(b"\r\n")
        if end < 0:
            lines = lines[:-1]  # the last piece is still arriving
            partial = self.buffer[self.buffer.rfind(b"\r\n") + 2 :] if b"\r\n" in head else head
            if len(partial) > self.max_line:
                return (414 if not lines else _UPGRADE_HEADER_LIMIT_STATUS), None, b""
        if lines and len(lines[0]) > self.max_line:
            return 414, None, b""
        if len(lines) - 1 > self.max_headers or any(len(line) > self.max_line for line in lines):
            return _UPGRADE_HEADER_LIMIT_STATUS, None, b""
        if end < 0:
            return 0, None, b""
        complete = bytes(self.buffer[: end + 4])
        rest = bytes(self.buffer[end + 4 :])
        self.buffer = bytearray()
        return 0, complete, rest


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


_STATUS_TEXT = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    414: "URI Too Long",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _http_response(status: int, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    reason = _STATUS_TEXT.get(status, "Error" if status >= 400 else "OK")
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


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
    5. close the socket once `should_close_transport` is true.
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
        self._client_flow = flow
        self._ws = WSConnection(role)
        self._guard: _HeadGuard | None = _HeadGuard(options.max_line, options.max_headers)
        self._phase = Phase.HANDSHAKE
        self._out: list[bytes | bytearray] = []
        self._out_size = 0
        self._events: deque[WireEvent] = deque()
        self.stepper: Stepper | None = None
        self.path = ""
        self.subprotocol: str | None = None
        self._request: HandshakeRequest | None = None
        self._parts: list[bytes] = []
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
        flow.validate()
        opts = options or Options()
        wire = cls(ConnectionType.CLIENT, opts, now, flow=flow, peer=peer)
        wire.path = path
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        if origin is not None:
            extra.append((b"Origin", origin.encode("latin-1")))
        request = Request(
            host=host, target=path, extra_headers=extra, subprotocols=list(opts.subprotocols)
        )
        wire._write(wire._ws.send(request))
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
        """False while the driver should not read: backpressure, or nothing more to read."""
        if self._eof or self._transport_done or self._phase is Phase.HOOK:
            return False
        if self._out_size >= self.options.write_limit:
            return False
        if self._held:
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
        candidates = [
            self._handshake_deadline if self._phase in (Phase.HANDSHAKE, Phase.HOOK) else None,
            self._close_deadline,
            self._ping_due,
            self._pong_deadline,
            self.stepper.next_deadline if self.stepper is not None else None,
        ]
        present = [c for c in candidates if c is not None]
        return min(present) if present else None

    @property
    def buffered_amount(self) -> int:
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
        events = list(self._events)
        self._events.clear()
        return events

    def receive_data(self, data: bytes | bytearray | None, now: float) -> None:
        """Bytes from the socket; `None` (or b"") means end of stream. Never raises."""
        if self._transport_done:
            return
        if not data:
            self._receive_eof(now)
            return
        if self._phase is Phase.HANDSHAKE or self._phase is Phase.HOOK:
            self._receive_handshake(bytes(data), now)
            return
        try:
            self._ws.receive_data(data)  # type: ignore[arg-type]  # bytearray works
        except WsprotoLocalError:
            return  # wsproto is already closed: nothing more to read
        self._pump(now)

    def tick(self, now: float) -> None:
        """Handle every deadline at or before `now`."""
        if self._transport_done:
            return
        if self._phase in (Phase.HANDSHAKE, Phase.HOOK):
            if self._handshake_deadline is not None and now >= self._handshake_deadline:
                status = 408 if self.role is ConnectionType.SERVER else 0
                self._fail_handshake(status, "opening handshake timed out", now, respond=True)
            return
        if self._close_deadline is not None and now >= self._close_deadline:
            self._finish_transport(now, CloseCode.ABNORMAL, "close handshake timed out")
            return
        if self._pong_deadline is not None and now >= self._pong_deadline:
            logger.info("%s: %s", self._label(), KEEPALIVE_TIMEOUT_REASON)
            self._abort(now, CloseCode.INTERNAL_ERROR, KEEPALIVE_TIMEOUT_REASON)
            return
        if self._ping_due is not None and now >= self._ping_due and self._phase is Phase.OPEN:
            self._ping_payload = os.urandom(4)
            self._write(self._ws.send(Ping(self._ping_payload)))
            self._ping_due = None
            timeout = self.options.ping_timeout
            self._pong_deadline = None if timeout is None else now + timeout
        if self.stepper is not None:
            self._stepper_events(self.stepper.tick(now), now)

    def resume(self, token: int, result: object, now: float) -> None:
        if self.stepper is None:
            raise LocalProtocolError("resume before the flow started")
        self._stepper_events(self.stepper.resume(token, result, now), now)
        self._feed_held(now)

    def resume_error(self, token: int, error: BaseException, now: float) -> None:
        if self.stepper is None:
            raise LocalProtocolError("resume_error before the flow started")
        self._stepper_events(self.stepper.resume_error(token, error, now), now)
        self._feed_held(now)

    def collect(self, now: float) -> None:
        """Take what the flow produced outside a call (async handlers, application sends)."""
        if self.stepper is not None:
            self._stepper_events(self.stepper.pending_events(), now)

    def send(self, data: bytes, now: float) -> None:
        """Application send from outside any handler."""
        if self.stepper is None or self._phase is not Phase.OPEN:
            raise ConnectionClosedError(
                f"cannot send: the connection is {self._phase.value}", self.close_code
            )
        self._stepper_events(self.stepper.send(data, now), now)

    def close(self, code: int = 1000, reason: str = "", now: float = 0.0) -> None:
        """Application close (a server shutting down uses 1001)."""
        if self._transport_done:
            return
        if self.stepper is None:
            status = 503 if code == CloseCode.GOING_AWAY else 400
            self._fail_handshake(status, reason or "closed before the handshake", now, respond=True)
            return
        self._stepper_events(self.stepper.close(code, reason, now), now)

    def finish_handshake(self, result: object, now: float) -> None:
        """The awaited handshake hook returned `result` (or raised: pass the exception)."""
        if self._phase is not Phase.HOOK:
            raise LocalProtocolError(f"no handshake hook is pending ({self._phase.value})")
        self._phase = Phase.HANDSHAKE
        self._decide(result, now)

    def abort(self, now: float, reason: str = "transport lost") -> None:
        """The transport failed under us (reset, write error): end everything now."""
        if not self._transport_done:
            self._finish_transport(now, CloseCode.ABNORMAL, reason)

    # -- handshake -------------------------------------------------------------

    def _receive_handshake(self, data: bytes, now: float) -> None:
        if self._guard is None:  # head already complete; waiting on the hook
            self._pending_after_head += data
            return
        status, head, rest = self._guard.feed(data)
        if status:
            self._fail_handshake(status, "handshake exceeds header limits", now, respond=True)
            return
        if head is None:
            return
        self._guard = None
        if self.role is ConnectionType.SERVER:
            self._server_head(head, rest, now)
        else:
            self._client_head(head, rest, now)

    def _server_head(self, head: bytes, rest: bytes, now: float) -> None:
        try:
            request_line, headers = _parse_head(head)
        except UnicodeDecodeError:
            self._fail_handshake(400, "undecodable request head", now, respond=True)
            return
        parts = request_line.split(" ")
        target = parts[1] if len(parts) == 3 else ""
        path, _, query = target.partition("?")
        hmap: dict[str, str] = {}
        for name, value in headers:
            hmap.setdefault(name, value)
        offered = tuple(
            p.strip()
            for p in ",".join(v for k, v in headers if k == "sec-websocket-protocol").split(",")
            if p.strip()
        )
        self._request = HandshakeRequest(path, query, tuple(headers), offered, hmap.get("origin"))
        self.path = path
        is_upgrade = "websocket" in hmap.get("upgrade", "").lower()
        if not is_upgrade and self.http_handler is not None and parts[0] == "GET":
            response = self.http_handler(self._request)
            if response is not None:
                self._write(
                    _http_response(
                        response.status, response.body, [("Content-Type", response.content_type)]
                    )
                )
                self.handshake_status = response.status
                self._events.append(HandshakeFailed(response.status, "plain HTTP request served"))
                self._transport_done = True
                return
        try:
            self._ws.receive_data(head)
            events = list(self._ws.events())
        except WsprotoRemoteError as exc:
            hint = exc.event_hint
            status = hint.status_code if isinstance(hint, RejectConnection) else 400
            self._fail_handshake(status, str(exc), now, respond=True)
            return
        if not events or not isinstance(events[0], Request):
            self._fail_handshake(400, "not a websocket upgrade request", now, respond=True)
            return
        if not _valid_key(hmap.get("sec-websocket-key")):
            self._fail_handshake(400, "invalid Sec-WebSocket-Key", now, respond=True)
            return
        origins = self.options.origins
        if origins is not None and self._request.origin not in origins:
            self._fail_handshake(
                403, f"origin {self._request.origin!r} not allowed", now, respond=True
            )
            return
        if self._route(path) is None:
            self._fail_handshake(404, f"no flow at path {path!r}", now, respond=True)
            return
        self._pending_after_head = rest
        if self.handshake_hook is None:
            self._decide(None, now)
            return
        try:
            result = self.handshake_hook(self._request)
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
        accept = result if isinstance(result, Accept) else Accept()
        if result is not None and not isinstance(result, Accept):
            logger.error("%s: handshake hook returned %r", self._label(), result)
            self._fail_handshake(
                500, "handshake hook returned an invalid answer", now, respond=True
            )
            return
        assert self._request is not None
        flow = accept.flow or self._route(self.path)
        assert flow is not None
        subprotocol = accept.subprotocol
        if subprotocol is None:
            subprotocol = next(
                (p for p in self.options.subprotocols if p in self._request.subprotocols), None
            )
        if subprotocol is not None and subprotocol not in self._request.subprotocols:
            self._fail_handshake(
                500, f"subprotocol {subprotocol!r} was not offered", now, respond=True
            )
            return
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in accept.headers]
        self._write(self._ws.send(AcceptConnection(subprotocol=subprotocol, extra_headers=extra)))
        self.subprotocol = subprotocol
        self._start_flow(flow, now, accept.state)
        rest = self._pending_after_head
        self._pending_after_head = b""
        if rest and not self._transport_done:
            self.receive_data(rest, now)

    def _client_head(self, head: bytes, rest: bytes, now: float) -> None:
        try:
            self._ws.receive_data(head + rest)
            events = list(self._ws.events())
        except WsprotoRemoteError as exc:
            self._fail_handshake(0, f"bad handshake response: {exc}", now, respond=False)
            return
        if not events:
            self._fail_handshake(0, "incomplete handshake response", now, respond=False)
            return
        first = events[0]
        if isinstance(first, RejectConnection):
            self._fail_handshake(
                first.status_code, "server rejected the handshake", now, respond=False
            )
            return
        if not isinstance(first, AcceptConnection):
            self._fail_handshake(0, "unexpected handshake response", now, respond=False)
            return
        self.subprotocol = first.subprotocol
        assert self._client_flow is not None
        self._start_flow(self._client_flow, now, {})
        self._pump(now, events[1:])

    def _start_flow(self, flow: Flow, now: float, state: Mapping[str, Any]) -> None:
        self._phase = Phase.OPEN
        self.handshake_status = 101
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
        respond: bool,
        body: bytes = b"",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        if respond and self.role is ConnectionType.SERVER and status:
            payload = body or f"{reason}\n".encode()
            self._write(_http_response(status, payload, headers))
        self.handshake_status = status
        self.close_code = CloseCode.ABNORMAL
        self.close_reason = reason
        self._phase = Phase.DONE
        self._transport_done = True
        logger.info("%s: handshake failed (%s): %s", self._label(), status or "-", reason)
        self._events.append(HandshakeFailed(status, reason))

    # -- messages --------------------------------------------------------------

    def _pump(self, now: float, events: Iterable[object] | None = None) -> None:
        ws = self._ws
        max_size = self.options.max_size
        for event in ws.events() if events is None else events:
            if isinstance(event, (BytesMessage, TextMessage)):
                if self._phase is not Phase.OPEN:
                    continue  # after our close frame: discard, per RFC 6455
                if isinstance(event, TextMessage):
                    if not self.options.accept_text:
                        self._close_flow(
                            now, CloseCode.UNSUPPORTED_DATA, "text messages are not accepted"
                        )
                        continue
                    chunk = event.data.encode("utf-8")
                else:
                    chunk = event.data  # type: ignore[assignment]
                size = self._part_size + len(chunk)
                if max_size is not None and size > max_size:
                    self._parts.clear()
                    self._part_size = 0
                    self._close_flow(
                        now, CloseCode.MESSAGE_TOO_BIG, f"message larger than {max_size} bytes"
                    )
                    continue
                if event.message_finished:
                    if self._parts:
                        self._parts.append(chunk)
                        message = b"".join(self._parts)
                        self._parts.clear()
                        self._part_size = 0
                    else:
                        message = bytes(chunk) if isinstance(chunk, bytearray) else chunk
                    self._deliver(message, now)
                elif chunk:
                    self._parts.append(chunk)
                    self._part_size = size
            elif isinstance(event, Ping):
                if ws.state is ConnectionState.OPEN:
                    self._write(ws.send(event.response()))
            elif isinstance(event, Pong):
                if event.payload == self._ping_payload:
                    self._pong_deadline = None
                    interval = self.options.ping_interval
                    self._ping_due = None if interval is None else now + interval
            elif isinstance(event, CloseConnection):
                self._peer_close(event, now)
                return
        self._check_announced_size(now)

    def _check_announced_size(self, now: float) -> None:
        """Refuse a frame whose header already announces more than max_size."""
        max_size = self.options.max_size
        if max_size is None or self._phase is not Phase.OPEN:
            return
        try:
            header = self._ws.connection._proto._frame_decoder.header  # type: ignore[union-attr]
        except AttributeError:  # wsproto internals moved: the streaming check still holds
            return
        if (
            header is not None
            and not header.opcode.iscontrol()
            and self._part_size + header.payload_len > max_size
        ):
            self._parts.clear()
            self._part_size = 0
            self._close_flow(
                now, CloseCode.MESSAGE_TOO_BIG, f"message larger than {max_size} bytes"
            )

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
        while (
            self._held and stepper is not None and stepper.accepting and self._phase is Phase.OPEN
        ):
            message = self._held.popleft()
            self._held_size -= len(message)
            self._stepper_events(stepper.receive(message, now), now)
        if self._phase is not Phase.OPEN:
            self._held.clear()
            self._held_size = 0

    def _peer_close(self, event: CloseConnection, now: float) -> None:
        ws = self._ws
        code = int(event.code)
        reason = event.reason or ""
        if ws.state is ConnectionState.REMOTE_CLOSING:
            # The peer started the close: answer it, and the flow ends with its code.
            self._write(ws.send(event.response()))
            self._end_flow(now, code, reason)
            self._finish_close_handshake(now)
        elif ws.state is ConnectionState.CLOSED:
            # The peer answered our close frame.
            self._finish_close_handshake(now)
        else:
            # wsproto could not parse the stream (it reports that as a close event
            # while still OPEN): fail the connection with its code, no waiting.
            self._close_flow(now, code, reason or "protocol error")
            self._abort(now, code, reason)

    def _close_flow(self, now: float, code: int, reason: str) -> None:
        if self.stepper is not None:
            self._stepper_events(self.stepper.close(code, reason[:120], now), now)

    def _finish_close_handshake(self, now: float) -> None:
        if self.role is ConnectionType.SERVER:
            self._finish_transport(now, None, "")
        else:
            # RFC 6455: the server closes TCP first; the client waits (bounded).
            self._phase = Phase.DRAINING
            timeout = self.options.close_timeout
            self._close_deadline = None if timeout is None else now + timeout
            self._end_flow(now, self.close_code or CloseCode.NORMAL, self.close_reason)

    def _receive_eof(self, now: float) -> None:
        self._eof = True
        if self._phase in (Phase.HANDSHAKE, Phase.HOOK):
            self._fail_handshake(0, "connection closed during the handshake", now, respond=False)
            return
        if self._phase is Phase.DRAINING:
            self._finish_transport(now, None, "")
            return
        self._finish_transport(now, CloseCode.ABNORMAL, "connection lost")

    def _abort(self, now: float, code: int, reason: str) -> None:
        self._finish_transport(now, code, reason)

    def _finish_transport(self, now: float, code: int | None, reason: str) -> None:
        """The transport is over; make sure the flow knows, exactly once."""
        if code is not None:
            self._end_flow(now, code, reason)
        else:
            self._end_flow(now, self.close_code or CloseCode.NORMAL, self.close_reason)
        self._phase = Phase.DONE
        self._transport_done = True
        self._close_deadline = self._ping_due = self._pong_deadline = None
        self._held.clear()
        self._held_size = 0

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
            if type(event) is Send:
                if self._phase is Phase.OPEN:
                    self._write(self._ws.send(BytesMessage(event.data)))
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
            elif not isinstance(event, Send):
                self._events.append(event)

    def _send_close(self, code: int, reason: str, now: float) -> None:
        self.close_code, self.close_reason = code, reason
        if self._phase is not Phase.OPEN:
            return
        ws = self._ws
        if ws.state is ConnectionState.OPEN:
            self._write(ws.send(CloseConnection(code=code, reason=reason)))
            self._phase = Phase.CLOSING
            timeout = self.options.close_timeout
            self._close_deadline = None if timeout is None else now + timeout
            self._ping_due = self._pong_deadline = None

    def _write(self, data: bytes | bytearray) -> None:
        if not data:
            return
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size > self.options.max_send_buffer and not self._transport_done:
            logger.info("%s: peer stopped reading; dropping the connection", self._label())
            self._out.clear()
            self._out_size = 0
            self._finish_transport(
                0.0, SEND_BUFFER_OVERFLOW, "send buffer overflow: peer not reading"
            )

    def _label(self) -> str:
        side = "server" if self.role is ConnectionType.SERVER else "client"
        return f"{side} {self.peer}" if self.peer else side


__all__ = [
    "SEND_BUFFER_OVERFLOW",
    "Accept",
    "AwaitHandshake",
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
]
