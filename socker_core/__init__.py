"""socker_core: a pure, dependency-free stepper for ordered websocket step chains.

No I/O, no clock, no threads: messages and `now` in, events out.
"""

from ._codes import CLOSE_CODES, CloseCode, is_sendable_close_code
from ._errors import (
    ConnectionClosedError,
    FlowDefinitionError,
    HandlerError,
    LocalProtocolError,
    QueueFullError,
    RemoteProtocolError,
    SockerError,
)
from ._events import (
    Await,
    CancelAwait,
    Closed,
    CloseRequested,
    Event,
    FlowCompleted,
    HandlerFailed,
    Message,
    Send,
    StepChanged,
)
from ._flow import Close, Flow, Goto, Handler, Hook, Result, Step
from ._state import State
from ._stepper import DEFAULT_MAX_QUEUE, ON_CLOSE, ON_OPEN, Connection, Stepper

__all__ = [
    "CLOSE_CODES",
    "DEFAULT_MAX_QUEUE",
    "ON_CLOSE",
    "ON_OPEN",
    "Await",
    "CancelAwait",
    "Close",
    "CloseCode",
    "CloseRequested",
    "Closed",
    "Connection",
    "ConnectionClosedError",
    "Event",
    "Flow",
    "FlowCompleted",
    "FlowDefinitionError",
    "Goto",
    "Handler",
    "HandlerError",
    "HandlerFailed",
    "Hook",
    "LocalProtocolError",
    "Message",
    "QueueFullError",
    "RemoteProtocolError",
    "Result",
    "Send",
    "SockerError",
    "State",
    "Step",
    "StepChanged",
    "Stepper",
    "is_sendable_close_code",
]
