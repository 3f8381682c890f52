"""The connection's state and the primitives every phase shares."""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from wsproto import ConnectionType
from wsproto.connection import Connection as WsprotoConnection
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection

from socker_core import (
    Closed,
    CloseRequested,
    Event,
    Flow,
    HandlerFailed,
    Send,
    StepChanged,
    Stepper,
)
from socker_core._codes import CloseCode
from socker_core._resume import SessionStore

from .events import HandshakeFailed, Phase, WireEvent
from .frames import (
    _HEADER_16,
    _HEADER_64,
    _SMALL_HEADERS,
    _SMALL_MASKED_HEADERS,
    _mask,
    _truncate_reason,
)
from .hooks import HandshakeHook, HandshakeRequest, HttpHandler
from .http1 import _HeadGuard, _http_response
from .options import SEND_BUFFER_OVERFLOW, Options
from .resume import WireResume

logger = logging.getLogger("socker")


class _WireState:
    """The state of one connection (`Wire`) and what every phase uses: writing, the
    stepper's events, and ending the connection."""

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
        #: resume.py); None otherwise, so a plain connection pays one test.
        self._resume: WireResume | None = None
        self._nonce = b""  # client: our Sec-WebSocket-Key
        # client: (host, path, extra headers), to read a refusal with wsproto
        self._client_request: tuple[str, str, list[tuple[bytes, bytes]]] | None = None

    # -- stepper events and output ------------------------------------------------

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

    # -- ending ------------------------------------------------------------------

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

    # -- resume (implemented by _ResumePhase) -----------------------------------------

    def _can_detach(self) -> bool:
        return False

    def _detach(self, now: float, reason: str) -> None:
        raise NotImplementedError

    def _drop_handshake_state(self) -> None:
        self._guard = None
        self._request = None
        self._key = b""
        self._pending_after_head = b""
        self._client_flow = None
        self._nonce = b""
        self._client_request = None
