"""Sessions kept in a shared store (cross-worker resume): what a server wire does
when its server has a `SessionKeeper` (an engine; see engine/sessions.py).

The decisions are the core's (`socker_core._ledger`, `_handover`); this phase applies
them to the bytes of one connection:

- The write-ahead rule: a message the stored snapshot cannot attribute
  (`ReplayBuffer.needs_persist`) is held, with every message after it, until the
  keeper stored a snapshot that covers it (`Wire.persisted`). Control frames (acks,
  pings, close) are not held.
- Acknowledgements state the stored snapshot's received count (`ack_count`).
- A resume whose token this worker does not hold is handed to the keeper
  (`SessionKeeper.lookup`): the wire waits, open, until the keeper answers with a
  restored session (`Wire.adopt_restored`) or a refusal (`Wire.refuse_resume`).
- A detached session, and one that ended, are reported to the keeper.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from socker_core import Flow, ResumeSession
from socker_core._codes import CloseCode

from .events import Opened, Phase
from .resume import WireResume, control
from .resume_phase import _ResumePhase

if TYPE_CHECKING:
    from .connection import Wire


class SessionKeeper(Protocol):
    """What a wire tells the server's keeper of shared sessions. Each call returns at
    once; the keeper does its I/O elsewhere and answers through the wire's methods
    (`persisted`, `adopt_restored`, `refuse_resume`), then calls `wire.wakeup`."""

    def opened(self, wire: Wire, session: ResumeSession, now: float) -> None:
        """A fresh resumable session started on `wire` (store its first snapshot)."""

    def touched(self, wire: Wire) -> None:
        """The session on `wire` has something to store (write-ahead, or a turn)."""

    def detached(self, wire: Wire, session: ResumeSession, now: float) -> None:
        """The transport of `wire`'s session was lost: it is detached."""

    def lookup(
        self, wire: Wire, flow: Flow, token: str, received: int, request: Any, now: float
    ) -> None:
        """A client presents `token` (having received `received` messages) that this
        worker does not hold; `request` is its handshake request (`conn.request`)."""

    def ended(self, wire: Wire, session: ResumeSession, code: int) -> None:
        """The session ended (its on_close ran here), with `code`."""

    def confirmed(self, wire: Wire, session: ResumeSession) -> None:
        """The client used the transport it resumed on (it has the new token)."""


class _KeptPhase(_ResumePhase):
    """What a resumable server connection does when its sessions are kept in a
    shared store (see the module docstring)."""

    __slots__ = ()

    # -- the write-ahead rule -------------------------------------------------------

    def _gate(self, data: bytes | str, now: float) -> bool:
        """One Send of the kept session: True when it is held (write-ahead)."""
        resume = self._resume
        stepper = self.stepper
        assert resume is not None and stepper is not None
        replay = stepper.replay
        assert replay is not None and replay.ledger is not None
        resume.numbered += 1
        gated = resume.gated
        if gated is None and resume.numbered <= replay.ledger.durable_sent:
            return False
        if gated is None:
            gated = resume.gated = deque()
        gated.append((resume.numbered, data))
        keeper = self._keeper
        if keeper is not None:
            keeper.touched(self)
        return True

    def persisted(self, snapshot: Any, now: float) -> None:
        """The keeper stored `snapshot` (a `SessionSnapshot` of this wire's session):
        write the held messages it attributes; acknowledge up to its count."""
        resume = self._resume
        stepper = self.stepper
        if resume is None or stepper is None or stepper.is_closed or resume.handed_off:
            return
        if snapshot.conn_id != stepper.id:
            return
        stepper.persisted(snapshot)
        replay = stepper.replay
        assert replay is not None and replay.ledger is not None
        durable = replay.ledger.durable_sent
        gated = resume.gated
        while gated and gated[0][0] <= durable:
            _, data = gated.popleft()
            if self._phase is Phase.OPEN:
                self._send_message(data, now)
        if gated is not None and not gated:
            resume.gated = None
        elif gated and self._keeper is not None:
            self._keeper.touched(self)
        if resume.unacked and replay.ack_count > resume.acked_at:
            self._send_ack(now)

    @property
    def kept_session(self) -> ResumeSession | None:
        """The session this wire moves, when its server keeps sessions in a store."""
        resume = self._resume
        if self._keeper is None or resume is None or resume.handed_off:
            return None
        return resume.session

    @property
    def held_frames(self) -> int:
        """Messages waiting for a snapshot to be stored (the write-ahead rule)."""
        resume = self._resume
        return 0 if resume is None or resume.gated is None else len(resume.gated)

    # -- resume through the keeper --------------------------------------------------

    def _lookup(self, flow: Flow, token: str, received: int, now: float) -> None:
        request = self._opened_transport(now)  # type: ignore[attr-defined]  # the handshake's
        resume = self._resume
        keeper = self._keeper
        assert resume is not None and keeper is not None
        resume.lookup = True
        keeper.lookup(self, flow, token, received, request, now)

    def adopt_restored(self, session: ResumeSession, peer_received: int, now: float) -> bool:
        """The keeper restored `session` for this wire's resume: answer "resumed",
        replay what the client missed (after `peer_received`), attach. False, and
        nothing done, when this transport is gone meanwhile (the keeper keeps the
        session for the client's next attempt)."""
        resume = self._resume
        if resume is None or not resume.lookup or self._transport_done:
            return False
        if self._phase is not Phase.OPEN:
            return False
        resume.lookup = False
        stepper = session.stepper
        replay = stepper.replay
        assert replay is not None
        session.holder = self
        resume.session = session
        self.stepper = stepper
        stepper.wakeup = self._wakeup
        stepper.run_blocking = self.run_blocking
        if self.stepper_guard is not None:
            stepper.guard = self.stepper_guard
        self._events.append(Opened(self.path, self.subprotocol, stepper.flow.name))
        if self.observer is not None:
            self.observer.opened(stepper, self.path, self.subprotocol, self.peer)
        missed = replay.replay_after(peer_received)
        assert missed is not None  # the keeper built the buffer for this count
        if self.log.isEnabledFor(logging.INFO):
            self.log.info(
                "%s: resumed %s at step %s from the store (replaying %d)",
                self._label(),
                stepper.id,
                stepper.step,
                len(missed),
            )
        self._write_control(
            control("resumed", token=session.token, received=replay.received, **self._heartbeat()),
            now,
        )
        for message in missed:
            self._send_message(message, now)
        resume.numbered = replay.sent
        resume.unconfirmed = True
        self._stepper_events(stepper.attach(now), now)
        return True

    def refuse_resume(self, code: int, reason: str, now: float) -> None:
        """The keeper could not resume: close this transport with `code`."""
        resume = self._resume
        if resume is None or not resume.lookup:
            return
        if self.log.isEnabledFor(logging.INFO):
            self.log.info("%s: resume refused (%s %s)", self._label(), code, reason)
        self._resume = None
        self._close_transport_only(code, reason, now)

    def _kept_detached(self, now: float) -> None:
        resume = self._resume
        keeper = self._keeper
        if keeper is not None and resume is not None and resume.session is not None:
            keeper.detached(self, resume.session, now)

    def _kept_ended(self, resume: WireResume, code: int) -> None:
        keeper = self._keeper
        if keeper is not None and resume.session is not None and not resume.handed_off:
            keeper.ended(self, resume.session, code)


#: A refusal the keeper sends when the store does not hold the token.
UNKNOWN_SESSION = (int(CloseCode.SESSION_GONE), "unknown session")
