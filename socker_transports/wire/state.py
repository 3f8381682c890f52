"""The connection's state and the primitives every phase shares."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from wsproto import ConnectionType

from socker_core import (
    Closed,
    CloseRequested,
    Event,
    Flow,
    HandlerFailed,
    Registry,
    Send,
    StepChanged,
    Stepper,
)
from socker_core._codes import CloseCode
from socker_core._resume import SessionStore

from .deflate import Deflate
from .events import HandshakeFailed, Phase, WireEvent
from .frames import _truncate_reason, close_frame, data_frame
from .hooks import HandshakeHook, HandshakeRequest, HttpHandler
from .http1 import _HeadGuard, _http_response
from .observe import EventHook, Observer
from .options import SEND_BUFFER_OVERFLOW, Options
from .reader import FrameReader, ReaderEvent
from .resume import WireResume

_SOCKER_LOGGER = logging.getLogger("socker")


class _WireState:
    """The state of one connection (`Wire`) and what every phase uses: writing, the
    stepper's events, and ending the connection."""

    __slots__ = (
        "_backlog",
        "_client",
        "_client_flow",
        "_client_request",
        "_close_deadline",
        "_close_sent",
        "_deflate",
        "_eof",
        "_events",
        "_failed_by_peer",
        "_guard",
        "_handshake_deadline",
        "_held",
        "_held_size",
        "_input_pending",
        "_keeper",
        "_key",
        "_lingers",
        "_nonce",
        "_out",
        "_out_size",
        "_pending_after_head",
        "_phase",
        "_ping_due",
        "_ping_payload",
        "_pong_deadline",
        "_reader",
        "_request",
        "_resume",
        "_sessions",
        "_transport_done",
        "_wakeup",
        "close_code",
        "close_reason",
        "handshake_hook",
        "handshake_status",
        "http_handler",
        "log",
        "observer",
        "options",
        "owner",
        "path",
        "peer",
        "registry",
        "remote_address",
        "role",
        "routes",
        "run_blocking",
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
        remote_address: tuple[str, int] | None = None,
        registry: Registry | None = None,
        owner: Any = None,
        on_event: EventHook | None = None,
        logger: logging.Logger | None = None,
        sessions: SessionStore | None = None,
        keeper: Any = None,
    ) -> None:
        self.role = role
        self.options = options
        self.peer = peer
        #: The peer's (host, port), set by the driver before the handshake completes.
        self.remote_address = remote_address
        #: The rooms registry the connection's Stepper joins, and what `conn.server`
        #: returns (the driver's Server; None for a client).
        self.registry = registry
        self.owner = owner
        #: Where this connection logs (`logger=`, default the "socker" logger).
        self.log = logger if logger is not None else _SOCKER_LOGGER
        #: Reports to `on_event` (None: nothing is measured).
        self.observer = (
            None
            if on_event is None
            else Observer(
                on_event, "client" if role is ConnectionType.CLIENT else "server", log=self.log
            )
        )
        self.routes = routes
        #: Given to the Stepper (`Stepper.run_blocking`): how the driver runs
        #: `blocking=True` steps; None calls them directly (the threaded driver).
        self.run_blocking: Callable[..., Any] | None = None
        self.handshake_hook = handshake_hook
        self.http_handler = http_handler
        self._client = role is ConnectionType.CLIENT
        # The frame reader, from the moment the handshake succeeds.
        self._reader: FrameReader | None = None
        self._close_sent = False  # our close frame (or the echo of the peer's) is written
        self._deflate: Deflate | None = None  # permessage-deflate, once negotiated
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
        self._held: deque[bytes | str] | None = None  # messages the flow cannot take yet
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
        self._input_pending = False  # frames_per_turn reached with input still buffered
        # What the reader parsed beyond this turn's frames_per_turn, in order.
        self._backlog: deque[ReaderEvent] | None = None
        self._lingers = True  # False once the end needs no lingering close (see Wire.linger)
        # The peer broke the protocol (`_fail`): the lingering close after our close
        # frame is bounded by close_timeout, so its close reply is read (see Wire.linger).
        self._failed_by_peer = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.handshake_status = 0
        self._wakeup: Callable[[], None] | None = None
        # Handshake-only state, all dropped (None/b"") once the handshake ends.
        self._guard: _HeadGuard | None = _HeadGuard(
            options.max_line, options.max_headers, request=role is ConnectionType.SERVER
        )
        self._request: HandshakeRequest | None = None  # server: for the hook's answer
        self._key = b""
        self._pending_after_head = b""  # server: bytes read while the hook runs
        self._client_flow = flow
        #: Server: where resumable sessions live (None: this server does not resume).
        self._sessions = sessions
        #: Server: the keeper of sessions in a shared store (cross-worker resume), or
        #: None (see kept_phase.py).
        self._keeper = keeper
        #: Resume state, on connections that negotiated socker.resume.v1 (see
        #: resume.py); None otherwise, so a plain connection pays one test.
        self._resume: WireResume | None = None
        self._nonce = b""  # client: our Sec-WebSocket-Key
        # client: (host, path, extra headers), to read a refusal with wsproto
        self._client_request: tuple[str, str, list[tuple[bytes, bytes]]] | None = None

    # -- stepper events and output ------------------------------------------------

    def _stepper_events(self, events: list[Event], now: float) -> None:
        if self.observer is not None:
            self.observer.stepper_events(events)
        for event in events:
            if isinstance(event, Send):
                if (
                    self._keeper is not None
                    and self._resume is not None
                    and self._gate(event.data, now)
                ):
                    continue  # held by the write-ahead rule (kept sessions)
                if self._phase is Phase.OPEN:
                    self._send_message(event.data, now)
            elif isinstance(event, CloseRequested):
                self._send_close(event.code, event.reason, now)
            elif isinstance(event, Closed):
                resume = self._resume
                if resume is not None and resume.session is not None and self._sessions:
                    self._sessions.end(resume.session, event.code, now)
                if resume is not None and self._keeper is not None:
                    self._kept_ended(resume, event.code)
                self.close_code, self.close_reason = event.code, event.reason
                if self.log.isEnabledFor(logging.INFO):
                    self.log.info(
                        "%s: closed %s %s (%s)",
                        self._label(),
                        event.code,
                        event.reason,
                        "local" if event.initiated_locally else "remote",
                    )
                self._events.append(event)
            elif isinstance(event, StepChanged):
                if self.log.isEnabledFor(logging.DEBUG):
                    self.log.debug(
                        "%s: step %s -> %s", self._label(), event.from_step, event.to_step
                    )
                self._events.append(event)
            elif isinstance(event, HandlerFailed):
                self.log.error("%s: %s raised", self._label(), event.step, exc_info=event.exception)
                self._events.append(event)
            else:
                self._events.append(event)

    def _send_message(self, data: bytes | bytearray | memoryview | str, now: float) -> None:
        """Queue one message as a single frame: text for a str, binary otherwise."""
        text = isinstance(data, str)
        if isinstance(data, str):
            data = data.encode("utf-8")
        elif type(data) is not bytes:
            data = bytes(data)  # never keep a buffer the application may mutate
        if self.observer is not None:
            self.observer.sent(len(data))
        deflate = self._deflate
        compressed = None if deflate is None else deflate.compress(data)
        if compressed is None:
            header, payload = data_frame(data, text=text, client=self._client)
        else:
            header, payload = data_frame(compressed, text=text, client=self._client, rsv1=True)
        out = self._out
        out.append(header)
        out.append(payload)
        self._out_size += len(header) + len(payload)
        if self._out_size > self.options.max_send_buffer:
            self._overflow(now)

    def _send_close(self, code: int, reason: str, now: float) -> None:
        if self._phase is not Phase.OPEN:
            return
        self.close_code, self.close_reason = code, reason
        self._phase = Phase.CLOSING
        self._leave_open()
        timeout = self.options.close_timeout
        self._close_deadline = None if timeout is None else now + timeout
        if not self._close_sent:
            self._close_sent = True
            self._write(close_frame(code, reason, self._client), now)

    def _write(self, data: bytes | bytearray, now: float) -> None:
        if not data or self._transport_done:
            return
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size > self.options.max_send_buffer:
            self._overflow(now)

    def _overflow(self, now: float) -> None:
        self.log.warning(
            "%s: peer stopped reading (%d bytes pending); dropping the connection",
            self._label(),
            self._out_size,
        )
        self._out.clear()
        self._out_size = 0
        self._lingers = False  # the peer reads nothing: no point waiting for it
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

    def _fail(self, now: float, code: int, reason: str, *, by_peer: bool = True) -> None:
        """Fail the connection: a close frame if we can still send one, then the
        transport is done. `by_peer` (the peer broke the protocol, so nothing it
        sends can be parsed any more): the driver still reads and discards until
        the peer's EOF, up to close_timeout (`Wire.linger`), so a conforming
        peer's close reply lands in our read buffer rather than on a closed socket
        (which would answer it with a reset)."""
        reason = _truncate_reason(reason)
        self._failed_by_peer = by_peer
        self._close_flow(now, code, reason)
        self._finish_transport(now, code, reason)

    def _close_flow(self, now: float, code: int, reason: str) -> None:
        if self._resume is not None and self._resume.handed_off:
            return
        if self.stepper is not None:
            self._stepper_events(self.stepper.close(code, _truncate_reason(reason), now), now)

    def _leave_open(self) -> None:
        """No more messages for the flow: drop what waits for it and stop keepalive."""
        if self._reader is not None:
            self._reader.skip()  # data frames from now on are discarded unread
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
        observed: bool = True,
        log: bool = True,
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
        if log and self.log.isEnabledFor(logging.INFO):
            self.log.info("%s: handshake failed (%s): %s", self._label(), status or "-", reason)
        self._events.append(HandshakeFailed(status, reason))
        if self.observer is not None and observed:
            self.observer.refused(status, reason, self.path, self.peer)

    # -- resume (implemented by _ResumePhase and _KeptPhase) ----------------------------

    def _can_detach(self) -> bool:
        return False

    def _gate(self, data: bytes | str, now: float) -> bool:
        return False

    def _kept_ended(self, resume: WireResume, code: int) -> None:
        pass

    def _kept_detached(self, now: float) -> None:
        pass

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
