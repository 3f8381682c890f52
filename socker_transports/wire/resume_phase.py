"""Resume on an open (or detached) connection: control frames, counts and acks,
detaching, and handing a session over to the wire that resumed it. The wire
format is in resume.py."""

from __future__ import annotations

import contextlib
import logging

from socker_core import ResumeSession
from socker_core._codes import CloseCode
from socker_core._resume import ACK_BYTES, ACK_EVERY

from .events import Detached, Phase
from .frames import _truncate_reason, close_frame, data_frame
from .resume import MAX_CONTROL, control, parse_control
from .state import _WireState


class _ResumePhase(_WireState):
    """What a connection that negotiated socker.resume.v1 does beyond the others."""

    __slots__ = ()

    def _adopt(self, session: ResumeSession, now: float) -> None:
        """Become the wire that moves `session`'s bytes (the old one lets go)."""
        old = session.holder
        stepper = session.stepper
        with stepper.guard or contextlib.nullcontext():  # the old driver's lock, if any
            if isinstance(old, _ResumePhase) and old is not self:
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
            if self.log.isEnabledFor(logging.INFO):
                self.log.info("%s: session taken over by a new connection", self._label())
            reason = "session taken over"
            if not self._close_sent and self._reader is not None:
                self._close_sent = True
                self._write(close_frame(CloseCode.SESSION_TAKEN_OVER, reason, self._client), now)
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
        if self._close_sent or self._reader is None or self._phase is not Phase.OPEN:
            return
        self._phase = Phase.CLOSING
        self._leave_open()
        timeout = self.options.close_timeout
        self._close_deadline = None if timeout is None else now + timeout
        self._close_sent = True
        self._write(close_frame(code, _truncate_reason(reason), self._client), now)

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
        if self.log.isEnabledFor(logging.INFO):
            self.log.info(
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
            self._kept_detached(now)

    def _write_control(self, text: str, now: float) -> None:
        """One control message: a text frame, never compressed (RFC 7692 allows it)."""
        if self._close_sent or self._reader is None:
            return
        header, payload = data_frame(text.encode("utf-8"), text=True, client=self._client)
        self._write(header + payload, now)

    def _heartbeat(self) -> dict[str, float]:
        """The `heartbeat` field of the "session" and "resumed" messages: the seconds
        between the acks a server sends with its keepalive pings (`_keepalive_ack`),
        so a browser, which cannot see pings, notices a silent drop. None without
        pings."""
        interval = self.options.ping_interval
        return {} if interval is None or self._client else {"heartbeat": interval}

    def _keepalive_ack(self, now: float) -> None:
        """With each keepalive ping: an ack when something is unacked (a quiet peer
        still trims our replay buffer) and, on a server, always, its count repeated
        if nothing new came: the heartbeat announced in "session" / "resumed"."""
        resume = self._resume
        assert resume is not None
        if resume.unacked or not self._client:
            self._send_ack(now)

    def _send_ack(self, now: float) -> None:
        resume = self._resume
        stepper = self.stepper
        assert resume is not None
        if stepper is None or stepper.replay is None or self._phase is not Phase.OPEN:
            return
        resume.unacked = resume.unacked_bytes = 0
        # With a ledger: the stored snapshot's count (what a new worker would ask for).
        resume.acked_at = stepper.replay.ack_count
        self._write_control(control("ack", received=resume.acked_at), now)

    def _count(self, message: bytes | str, now: float) -> bool:
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
        if self._keeper is not None:
            self._keeper.touched(self)  # a turn to store (coalesced by the keeper)
        resume.unacked += 1
        resume.unacked_bytes += len(message)
        if resume.unacked >= ACK_EVERY or resume.unacked_bytes >= ACK_BYTES:
            self._send_ack(now)
        return True

    def _confirm(self, now: float) -> None:
        resume = self._resume
        assert resume is not None
        resume.unconfirmed = False
        if resume.session is None:
            return
        if self._keeper is not None:
            self._keeper.confirmed(self, resume.session)
        elif self._sessions is not None:
            self._sessions.confirm(resume.session, now)

    def _text_control(self, text: str, now: float) -> None:
        """A text message on a resumable connection: one of socker's control messages."""
        resume = self._resume
        assert resume is not None
        if len(text) > MAX_CONTROL:
            self._fail(now, CloseCode.PROTOCOL_ERROR, "control message too large")
            return
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
