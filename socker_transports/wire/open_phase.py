"""The open phase of a connection: frames in, messages to the flow."""

from __future__ import annotations

import logging
from collections import deque

from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from socker_core import is_sendable_close_code
from socker_core._codes import CloseCode

from .events import Phase
from .resume_phase import _ResumePhase

logger = logging.getLogger("socker")


class _OpenPhase(_ResumePhase):
    """Once open: messages, fragments and `max_size`, ping/pong, the close handshake."""

    __slots__ = ()

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
                    self._text_control(event, now)  # socker's own (see resume.py)
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
