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


class Happening(Enum):
    OPENED = "opened"
    HANDLER_PENDING = "handler pending"
    HANDLER_DONE = "handler done"
    CLOSE_STARTED = "close started"
    TRANSPORT_CLOSED = "transport closed"


IDLE, OPEN, AWAITING, CLOSING, CLOSED = State

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
    "resume": {AWAITING: RUN, CLOSING: IGNORE, CLOSED: IGNORE},
    "tick": {IDLE: IGNORE, OPEN: RUN, AWAITING: RUN, CLOSING: IGNORE, CLOSED: IGNORE},
    "send": {OPEN: RUN, AWAITING: RUN},
    "close": {IDLE: RUN, OPEN: RUN, AWAITING: RUN, CLOSING: IGNORE, CLOSED: IGNORE},
    "transport_closed": {IDLE: RUN, OPEN: RUN, AWAITING: RUN, CLOSING: RUN, CLOSED: IGNORE},
}
