"""The open phase of a connection: frames in, messages to the flow."""

from __future__ import annotations

import logging
from collections import deque

from socker_core._codes import CloseCode

from .events import Phase
from .frames import OP_PONG, close_frame, control_frame
from .kept_phase import _KeptPhase
from .reader import Failed, PeerClose, Ping, Pong, ReaderEvent, Refused


class _OpenPhase(_KeptPhase):
    """Once open: messages, fragments and `max_size`, ping/pong, the close handshake."""

    __slots__ = ()

    def _pump(self, events: list[ReaderEvent], now: float) -> None:
        """Act on what the frame reader found in one read. Fairness: at most
        `frames_per_turn` events per call; the rest waits in `_backlog`
        (`input_pending`) for the driver's next turn, behind which later reads queue."""
        budget = self.options.frames_per_turn
        backlog = self._backlog
        if backlog:
            backlog.extend(events)  # behind what is already waiting
            self._next_turn(now)
            return
        if budget is not None and len(events) > budget:
            self._backlog = deque(events[budget:])
            events = events[:budget]
        self._input_pending = bool(self._backlog)
        self._handle(events, now)

    def _next_turn(self, now: float) -> None:
        """The next `frames_per_turn` events of the backlog (`receive_pending`)."""
        backlog = self._backlog
        budget = self.options.frames_per_turn
        if not backlog:
            self._input_pending = False
            return
        count = len(backlog) if budget is None else min(budget, len(backlog))
        events = [backlog.popleft() for _ in range(count)]
        if not backlog:
            self._backlog = None
        self._input_pending = bool(self._backlog)
        self._handle(events, now)

    def _handle(self, events: list[ReaderEvent], now: float) -> None:
        for event in events:
            if self._transport_done:
                self._backlog = None
                self._input_pending = False
                return
            if type(event) is bytes or type(event) is str:
                if self._phase is not Phase.OPEN:
                    continue  # after our close frame: discarded (RFC 6455)
                if type(event) is str and self._resume is not None:
                    self._text_control(event, now)  # socker's own (see resume.py)
                else:
                    self._deliver(event, now)
            elif type(event) is Ping:
                if self._phase is Phase.OPEN:
                    self._write(control_frame(OP_PONG, event.payload, self._client), now)
            elif type(event) is Pong:
                if self._pong_deadline is not None and event.payload == self._ping_payload:
                    self._pong_deadline = None
                    interval = self.options.ping_interval
                    self._ping_due = None if interval is None else now + interval
            elif type(event) is PeerClose:
                self._peer_close(event, now)
                return
            elif type(event) is Failed:
                code, reason = event.code, event.reason
                if self.log.isEnabledFor(logging.INFO):
                    self.log.info("%s: protocol error %s: %s", self._label(), code, reason)
                self._fail(now, code, reason)
                return
            elif type(event) is Refused:
                self._close_flow(now, event.code, event.reason)

    def _deliver(self, message: bytes | str, now: float) -> None:
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
        if self.observer is not None:
            self.observer.received(len(message))
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
            if self.observer is not None:
                self.observer.received(len(message))
            self._stepper_events(stepper.receive(message, now), now)
        if not held and self._held is held:
            self._held = None

    def _peer_close(self, event: PeerClose, now: float) -> None:
        if not self._close_sent:
            # The peer started the close: echo it, and the flow ends with its code.
            self._close_sent = True
            self._write(close_frame(event.code, event.reason, self._client), now)
            self._leave_open()
            self._end_flow(now, event.code, event.reason)
        # Otherwise the peer answered our close frame.
        self._finish_close_handshake(now)

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
