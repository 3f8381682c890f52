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
from ._handover import (
    ResumeFailure,
    ResumePlan,
    RoomHistory,
    check_restorable,
    history_needed,
    plan_resume,
)
from ._ledger import OutgoingLedger, RoomRef
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
from ._rooms import Registry
from ._snapshot import (
    SNAPSHOT_VERSION,
    JsonStateCodec,
    SessionSnapshot,
    SnapshotError,
    StateCodec,
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
    "ON_CLOSE",
    "ON_DETACH",
    "ON_OPEN",
    "ON_RESUME",
    "SNAPSHOT_VERSION",
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
    "JsonStateCodec",
    "LocalProtocolError",
    "MemorySessionStore",
    "Message",
    "OutgoingLedger",
    "QueueFullError",
    "Refused",
    "Registry",
    "RemoteProtocolError",
    "ReplayBuffer",
    "Result",
    "ResumeFailure",
    "ResumePlan",
    "ResumeSession",
    "RoomHistory",
    "RoomRef",
    "Send",
    "SessionSnapshot",
    "SessionStore",
    "SnapshotError",
    "SockerError",
    "State",
    "StateCodec",
    "Step",
    "StepChanged",
    "Stepper",
    "__version__",
    "check_restorable",
    "history_needed",
    "is_sendable_close_code",
    "plan_resume",
    "reconnect_delay",
]
