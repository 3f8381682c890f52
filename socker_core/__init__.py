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
from ._resume import (
    DEFAULT_MAX_RESUME_BUFFER,
    Claimed,
    MemorySessionStore,
    Refused,
    ReplayBuffer,
    ResumeSession,
    SessionStore,
    reconnect_delay,
)
from ._rooms import (
    MAX_INFO_BYTES,
    MemberJoined,
    MemberLeft,
    MembershipEvent,
    MembershipListener,
    Registry,
    check_info,
)
from ._state import State
from ._stepper import (
    DEFAULT_MAX_QUEUE,
    HOOK_STEPS,
    ON_CLOSE,
    ON_DETACH,
    ON_OPEN,
    ON_RESUME,
    Connection,
    Stepper,
)
from ._version import __version__

__all__ = [
    "CLOSE_CODES",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_RESUME_BUFFER",
    "HOOK_STEPS",
    "MAX_INFO_BYTES",
    "ON_CLOSE",
    "ON_DETACH",
    "ON_OPEN",
    "ON_RESUME",
    "Await",
    "CancelAwait",
    "Claimed",
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
    "MemberJoined",
    "MemberLeft",
    "MembershipEvent",
    "MembershipListener",
    "MemorySessionStore",
    "Message",
    "QueueFullError",
    "Refused",
    "Registry",
    "RemoteProtocolError",
    "ReplayBuffer",
    "Result",
    "ResumeSession",
    "Send",
    "SessionStore",
    "SockerError",
    "State",
    "Step",
    "StepChanged",
    "Stepper",
    "__version__",
    "check_info",
    "is_sendable_close_code",
    "reconnect_delay",
]
