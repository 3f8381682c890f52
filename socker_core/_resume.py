"""Resume: what a session keeps so a dropped connection comes back at its step.

Pure decisions only (no I/O, no clock, no randomness: tokens and random numbers
are passed in):

- `ReplayBuffer`: per session, how many messages this side received, and what it
  sent that the peer has not acknowledged yet (bounded by `max_resume_buffer`
  bytes). At resume each side states its received count and the other replays
  what follows it. No per-message envelope: the counts are implicit, since a
  websocket delivers messages in order.
- `ResumeSession` and `SessionStore` (with `MemorySessionStore`, the in-process
  default): token -> detached session, single-use tokens bound to a route, and a
  short memory of ended or superseded tokens so a late resume gets the precise
  close code instead of "unknown".
- `reconnect_delay`: the client's backoff (exponential, with jitter).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ._codes import CloseCode
from ._errors import LocalProtocolError
from ._ledger import OutgoingLedger, RoomRef

if TYPE_CHECKING:
    from ._flow import Flow
    from ._stepper import Stepper

#: Default bound (bytes) on what one side keeps for replay (unacknowledged sends).
DEFAULT_MAX_RESUME_BUFFER = 1024 * 1024

#: A receiver acknowledges after this many messages, or after ACK_BYTES bytes,
#: since its last acknowledgement (and at every keepalive ping), so the sender's
#: replay buffer is trimmed while connected.
ACK_EVERY = 32
ACK_BYTES = 64 * 1024

#: Reconnect backoff bounds (seconds): attempt n (0-based) waits a uniformly
#: random time in [d/2, d] with d = min(RECONNECT_MAX, RECONNECT_BASE * 2**n).
RECONNECT_BASE = 0.05
RECONNECT_MAX = 5.0

#: How long (seconds) an ended or superseded token is remembered for its code.
TOMBSTONE_TTL = 300.0
#: At most this many remembered tokens (oldest forgotten first).
MAX_TOMBSTONES = 10_000


def reconnect_delay(attempt: int, unit_random: float) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0-based); `unit_random`
    is a uniform random number in [0, 1) supplied by the caller."""
    if attempt < 0 or not 0.0 <= unit_random <= 1.0:
        raise LocalProtocolError("attempt must be >= 0 and unit_random in [0, 1]")
    ceiling = min(RECONNECT_MAX, RECONNECT_BASE * float(2 ** min(attempt, 30)))
    return ceiling * (0.5 + 0.5 * unit_random)


class ReplayBuffer:
    """One side's resume ledger.

    `received`: messages this side took from the peer (counted by whoever feeds
    the Stepper, the wire). `sent`: messages this side sent (counted by the
    Stepper's send path). `retained` holds sent messages `acked + 1 .. sent` that
    the peer has not acknowledged; past `limit` bytes the oldest are dropped and
    the session can no longer be resumed (`overflowed`).

    `ledger` (an `OutgoingLedger`, for sessions that may resume on another worker)
    records where each retained message came from, in step with `retained`.
    """

    __slots__ = (
        "_retained",
        "acked",
        "ledger",
        "limit",
        "overflowed",
        "received",
        "retained_bytes",
        "sent",
    )

    def __init__(
        self, limit: int = DEFAULT_MAX_RESUME_BUFFER, *, ledger: OutgoingLedger | None = None
    ) -> None:
        if limit < 1:
            raise LocalProtocolError(f"max_resume_buffer must be positive, got {limit}")
        self.limit = limit
        self.received = 0
        self.sent = 0
        self.acked = 0  # the peer's last stated received count
        self.retained_bytes = 0
        self.overflowed = False
        self._retained: deque[bytes] = deque()
        #: The outgoing ledger (cross-worker resume), or None.
        self.ledger = ledger

    def retain(self, data: bytes, origin: RoomRef | None = None) -> bool:
        """Keep a sent message for replay (`origin`: the room publication it
        delivers, None for a direct send); False once the bound is exceeded (the
        oldest unacknowledged messages are gone: a resume can no longer replay)."""
        self.sent += 1
        self._retained.append(data)
        self.retained_bytes += len(data)
        ledger = self.ledger
        if ledger is not None:
            ledger.record(self.sent, origin)
        if self.retained_bytes > self.limit:
            self.overflowed = True
            retained = self._retained
            while retained and self.retained_bytes > self.limit:
                self.retained_bytes -= len(retained.popleft())
                if ledger is not None:
                    ledger.origins.popleft()
        return not self.overflowed

    @property
    def first_retained(self) -> int:
        """The number (1-based) of the oldest retained message (sent + 1 if none)."""
        return self.sent - len(self._retained) + 1

    @property
    def retained(self) -> tuple[bytes, ...]:
        """The retained messages, oldest first (numbers first_retained .. sent)."""
        return tuple(self._retained)

    @property
    def needs_persist(self) -> bool:
        """True when a message was sent that the persisted snapshot cannot attribute
        (the write-ahead rule, see `socker_core._ledger`): its frame must wait until
        a newer snapshot is persisted (`Stepper.persisted`). Always False without a
        ledger."""
        ledger = self.ledger
        return ledger is not None and ledger.durable_sent < self.sent

    @property
    def ack_count(self) -> int:
        """What an acknowledgement to the peer states: the received count, or with a
        ledger the persisted snapshot's (so after a kill the peer still holds what
        the new worker will ask it to replay)."""
        ledger = self.ledger
        return self.received if ledger is None else ledger.durable_received

    @classmethod
    def restored(
        cls,
        limit: int,
        *,
        received: int,
        peer_received: int,
        messages: list[tuple[bytes, RoomRef | None]],
        ledger: OutgoingLedger,
    ) -> ReplayBuffer:
        """A buffer rebuilt on another worker: the peer received `peer_received`
        messages; `messages` (payload, origin) are the ones it still has to get,
        numbered from peer_received + 1. Nothing after peer_received is durable yet:
        persist the restored session before writing them."""
        buffer = cls(limit, ledger=ledger)
        buffer.received = received
        buffer.sent = buffer.acked = peer_received
        ledger.durable_sent = peer_received
        ledger.durable_received = received
        for data, origin in messages:
            buffer.retain(data, origin)
        return buffer

    def ack(self, peer_received: int) -> bool:
        """The peer received `peer_received` messages: forget those. False if the
        count is impossible (more than was sent, or going backwards)."""
        if peer_received > self.sent or peer_received < self.acked:
            return False
        retained = self._retained
        first = self.sent - len(retained) + 1  # the sequence number of retained[0]
        ledger = self.ledger
        while retained and first <= peer_received:
            self.retained_bytes -= len(retained.popleft())
            if ledger is not None:
                ledger.origins.popleft()
            first += 1
        self.acked = peer_received
        return True

    def replay_after(self, peer_received: int) -> list[bytes] | None:
        """What the peer missed, given it received `peer_received` messages; None if
        that cannot be replayed (dropped by an overflow, or an impossible count)."""
        if peer_received > self.sent or peer_received < self.acked:
            return None
        retained = self._retained
        first = self.sent - len(retained) + 1
        if peer_received + 1 < first:
            return None  # some of what the peer missed was dropped
        self.ack(peer_received)
        return list(retained)

    def __len__(self) -> int:
        return len(self._retained)

    def __repr__(self) -> str:
        return (
            f"<ReplayBuffer received={self.received} sent={self.sent} acked={self.acked} "
            f"retained={len(self._retained)} ({self.retained_bytes} bytes)>"
        )


@dataclass(eq=False, slots=True)
class ResumeSession:
    """A resumable connection as the store knows it. `holder` is whoever moves its
    bytes now (a `Wire`; opaque to the core). `token` is never logged."""

    token: str
    route: str
    stepper: Stepper
    window: float
    holder: object = None
    detached_at: float | None = None
    #: The token a resume presented, still accepted until the client shows it got
    #: the new one (`SessionStore.confirm`): a drop during the resume handshake
    #: must not strand the session.
    previous_token: str | None = None

    def __repr__(self) -> str:  # never show the token
        return f"<ResumeSession {self.stepper.id} route={self.route!r} window={self.window:g}s>"


@dataclass(frozen=True, slots=True)
class Claimed:
    """`SessionStore.claim` succeeded: `session` now answers to `session.token`."""

    session: ResumeSession


@dataclass(frozen=True, slots=True)
class Refused:
    """`SessionStore.claim` failed: close the new transport with `code`."""

    code: int
    reason: str


class SessionStore(Protocol):
    """Where resumable sessions live between transports (in-process by default; a
    shared store later). Four calls; tokens are made by the caller."""

    def add(self, session: ResumeSession, now: float) -> None:
        """A fresh session (its token is `session.token`)."""
        ...

    def claim(
        self, token: str, route: str, flow: Flow, new_token: str, now: float
    ) -> Claimed | Refused:
        """A resume presents `token` at `route`, which now serves `flow`. On success
        the session answers to `new_token`; `token` is spent once confirmed."""
        ...

    def confirm(self, session: ResumeSession, now: float) -> None:
        """The client used the transport it resumed on (so it has the new token):
        the token it presented is spent for good."""
        ...

    def end(self, session: ResumeSession, code: int, now: float) -> None:
        """The session is over (its on_close ran): a later resume gets `code`."""
        ...

    def __len__(self) -> int: ...


@dataclass(slots=True)
class MemorySessionStore:
    """The in-process SessionStore: a dict. Not thread-safe by itself (a threaded
    server serialises its calls)."""

    sessions: dict[str, ResumeSession] = field(default_factory=dict)
    #: token -> (close code, reason, remembered until)
    tombstones: dict[str, tuple[int, str, float]] = field(default_factory=dict)

    def add(self, session: ResumeSession, now: float) -> None:
        """Keep a fresh session under its token (a duplicate token is misuse)."""
        if session.token in self.sessions:
            raise LocalProtocolError("duplicate session token")
        self.sessions[session.token] = session

    def claim(
        self, token: str, route: str, flow: Flow, new_token: str, now: float
    ) -> Claimed | Refused:
        """Hand the session of `token` to a resume at `route`, or say why not
        (unknown or expired 4410, spent or other route 4403, flow changed 4412)."""
        self._prune(now)
        session = self.sessions.get(token)
        if session is None:
            tomb = self.tombstones.get(token)
            if tomb is not None:
                return Refused(tomb[0], tomb[1])
            return Refused(CloseCode.SESSION_GONE, "unknown session")
        if session.route != route:
            return Refused(CloseCode.RESUME_REFUSED, "token not valid for this route")
        if session.stepper.flow is not flow:
            return Refused(CloseCode.FLOW_CHANGED, "the route serves a different flow now")
        if session.stepper.is_closed:  # ended, and its holder has not told us yet
            if session.stepper.close_code == CloseCode.RESUME_BUFFER_OVERFLOW:
                return Refused(CloseCode.RESUME_BUFFER_OVERFLOW, "replay buffer overflowed")
            return Refused(CloseCode.SESSION_GONE, "session ended")
        for spent in (session.token, session.previous_token):
            if spent is not None and spent != token:
                self.sessions.pop(spent, None)
                self._remember(spent, CloseCode.RESUME_REFUSED, "session token already used", now)
        session.previous_token = token
        session.token = new_token
        self.sessions[new_token] = session
        return Claimed(session)

    def confirm(self, session: ResumeSession, now: float) -> None:
        """The presented token is spent for good (remembered, so a reuse gets 4403)."""
        spent = session.previous_token
        if spent is not None and self.sessions.get(spent) is session:
            del self.sessions[spent]
            self._remember(spent, CloseCode.RESUME_REFUSED, "session token already used", now)
        session.previous_token = None

    def end(self, session: ResumeSession, code: int, now: float) -> None:
        """Forget an ended session; a later resume with its token gets `code`'s answer."""
        for token in (session.token, session.previous_token):
            if token is not None and self.sessions.get(token) is session:
                del self.sessions[token]
                if code == CloseCode.RESUME_BUFFER_OVERFLOW:
                    self._remember(token, code, "replay buffer overflowed", now)
                else:
                    self._remember(token, CloseCode.SESSION_GONE, "session ended", now)

    def _remember(self, token: str, code: int, reason: str, now: float) -> None:
        tombstones = self.tombstones
        tombstones[token] = (int(code), reason, now + TOMBSTONE_TTL)
        while len(tombstones) > MAX_TOMBSTONES:
            del tombstones[next(iter(tombstones))]

    def _prune(self, now: float) -> None:
        tombstones = self.tombstones
        while tombstones:
            oldest = next(iter(tombstones))
            if tombstones[oldest][2] > now:
                break
            del tombstones[oldest]

    def __len__(self) -> int:
        return len({id(session) for session in self.sessions.values()})


__all__ = [
    "ACK_BYTES",
    "ACK_EVERY",
    "DEFAULT_MAX_RESUME_BUFFER",
    "RECONNECT_BASE",
    "RECONNECT_MAX",
    "Claimed",
    "MemorySessionStore",
    "Refused",
    "ReplayBuffer",
    "ResumeSession",
    "SessionStore",
    "reconnect_delay",
]
