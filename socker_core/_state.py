"""Every connection state and every legal transition, in one table (h11's _state.py style).

The Stepper consults these tables and nothing else to decide whether a call is
legal and which state follows an internal happening.
"""

from __future__ import annotations

from enum import Enum


class State(Enum):
    """The phase of a Stepper: idle, open, awaiting an async handler, closing, closed."""

    IDLE = "idle"  # created, `open` not called yet
    OPEN = "open"  # waiting for the next message
    AWAITING = "awaiting"  # an async handler or hook is pending; messages queue
    CLOSING = "closing"  # a close was requested; waiting for the transport to confirm
    CLOSED = "closed"  # over; on_close hooks have run
    # Resume (a flow with `resume_window`): the transport was lost without a close
    # handshake. The step, its timers, the wait queue and what is sent are kept;
    # nothing can be received until a new transport attaches.
    DETACHED = "detached"  # detached while idle (was OPEN)
    DETACHED_AWAITING = "detached awaiting"  # detached while a handler is pending
    # Lost while our close frame was unanswered: what we sent before it may still be
    # missing at the peer, so a resume replays it and sends the close again.
    DETACHED_CLOSING = "detached closing"


class Happening(Enum):
    OPENED = "opened"
    HANDLER_PENDING = "handler pending"
    HANDLER_DONE = "handler done"
    CLOSE_STARTED = "close started"
    TRANSPORT_CLOSED = "transport closed"
    DETACHED = "detached"  # transport lost, session kept for its resume window
    ATTACHED = "attached"  # a new transport resumed the session
    SESSION_ENDED = "session ended"  # closed while detached: no handshake to wait for
    RESTORED = "restored"  # rebuilt from a snapshot on another worker, waiting to attach
    FORGOTTEN = "forgotten"  # this detached copy was resumed on another worker


IDLE, OPEN, AWAITING, CLOSING, CLOSED, DETACHED, DETACHED_AWAITING, DETACHED_CLOSING = State

#: (state, happening) -> next state. A pair missing here is a bug in the Stepper.
TRANSITIONS: dict[tuple[State, Happening], State] = {
    (IDLE, Happening.OPENED): OPEN,
    (IDLE, Happening.CLOSE_STARTED): CLOSING,
    (IDLE, Happening.TRANSPORT_CLOSED): CLOSED,
    (OPEN, Happening.HANDLER_PENDING): AWAITING,
    (OPEN, Happening.CLOSE_STARTED): CLOSING,
    (OPEN, Happening.TRANSPORT_CLOSED): CLOSED,
    (AWAITING, Happening.HANDLER_DONE): OPEN,
    (AWAITING, Happening.CLOSE_STARTED): CLOSING,
    (AWAITING, Happening.TRANSPORT_CLOSED): CLOSED,
    (CLOSING, Happening.TRANSPORT_CLOSED): CLOSED,
    (OPEN, Happening.DETACHED): DETACHED,
    (AWAITING, Happening.DETACHED): DETACHED_AWAITING,
    (DETACHED, Happening.HANDLER_PENDING): DETACHED_AWAITING,
    (DETACHED_AWAITING, Happening.HANDLER_DONE): DETACHED,
    (DETACHED, Happening.ATTACHED): OPEN,
    (DETACHED_AWAITING, Happening.ATTACHED): AWAITING,
    (DETACHED, Happening.SESSION_ENDED): CLOSED,
    (DETACHED_AWAITING, Happening.SESSION_ENDED): CLOSED,
    (DETACHED, Happening.TRANSPORT_CLOSED): CLOSED,
    (DETACHED_AWAITING, Happening.TRANSPORT_CLOSED): CLOSED,
    (CLOSING, Happening.DETACHED): DETACHED_CLOSING,
    (DETACHED_CLOSING, Happening.ATTACHED): CLOSING,
    (DETACHED_CLOSING, Happening.TRANSPORT_CLOSED): CLOSED,
    (IDLE, Happening.RESTORED): DETACHED,
    (DETACHED, Happening.FORGOTTEN): CLOSED,
    (DETACHED_AWAITING, Happening.FORGOTTEN): CLOSED,
    (DETACHED_CLOSING, Happening.FORGOTTEN): CLOSED,
}


class Disposition(Enum):
    RUN = "run"
    IGNORE = "ignore"  # legal, but has no effect in this state (returns no events)


RUN, IGNORE = Disposition

#: call -> {state: disposition}. A state missing for a call is caller misuse
#: (LocalProtocolError naming the call and the state).
CALLS: dict[str, dict[State, Disposition]] = {
    "open": {IDLE: RUN},
    "receive": {OPEN: RUN, AWAITING: RUN, CLOSING: IGNORE},
    "resume": {
        AWAITING: RUN,
        DETACHED_AWAITING: RUN,
        CLOSING: IGNORE,
        DETACHED_CLOSING: IGNORE,
        CLOSED: IGNORE,
    },
    "tick": {
        IDLE: IGNORE,
        OPEN: RUN,
        AWAITING: RUN,
        DETACHED: RUN,
        DETACHED_AWAITING: RUN,
        DETACHED_CLOSING: RUN,
        CLOSING: IGNORE,
        CLOSED: IGNORE,
    },
    # While detached a send is kept for replay (bounded by max_resume_buffer).
    "send": {OPEN: RUN, AWAITING: RUN, DETACHED: RUN, DETACHED_AWAITING: RUN},
    # While detached a close ends the session at once (no handshake to wait for).
    "close": {
        IDLE: RUN,
        OPEN: RUN,
        AWAITING: RUN,
        DETACHED: RUN,
        DETACHED_AWAITING: RUN,
        DETACHED_CLOSING: IGNORE,
        CLOSING: IGNORE,
        CLOSED: IGNORE,
    },
    "transport_closed": {
        IDLE: RUN,
        OPEN: RUN,
        AWAITING: RUN,
        CLOSING: RUN,
        DETACHED: RUN,
        DETACHED_AWAITING: RUN,
        DETACHED_CLOSING: RUN,
        CLOSED: IGNORE,
    },
    # Resume calls (only on a Stepper made with a ReplayBuffer).
    "detach": {
        OPEN: RUN,
        AWAITING: RUN,
        CLOSING: RUN,
        DETACHED: IGNORE,  # already detached: the window keeps running
        DETACHED_AWAITING: IGNORE,
        DETACHED_CLOSING: IGNORE,
        CLOSED: IGNORE,
    },
    "attach": {DETACHED: RUN, DETACHED_AWAITING: RUN, DETACHED_CLOSING: RUN},
    # Cross-worker resume (a Stepper whose ReplayBuffer has an OutgoingLedger).
    "snapshot": {OPEN: RUN, AWAITING: RUN, DETACHED: RUN, DETACHED_AWAITING: RUN},
    "forget": {DETACHED: RUN, DETACHED_AWAITING: RUN, DETACHED_CLOSING: RUN, CLOSED: IGNORE},
}
