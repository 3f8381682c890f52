"""Error classes. Local misuse and remote misbehaviour are different families."""

from __future__ import annotations


class SockerError(Exception):
    """Base class of every error socker raises."""


class LocalProtocolError(SockerError):
    """The caller used socker wrongly: raised at once, never sent to the peer."""


class FlowDefinitionError(LocalProtocolError):
    """A Flow is malformed: duplicate step names, a wrong handler signature, no steps."""


class ConnectionClosedError(LocalProtocolError):
    """An operation needs an open connection but it is closing or closed."""

    def __init__(self, message: str, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class QueueFullError(LocalProtocolError):
    """`receive` was called while the wait queue was full: check `Stepper.accepting`."""


class RemoteProtocolError(SockerError):
    """The peer misbehaved. Never raised out of a receive path: kept on an event."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class HandlerError(SockerError):
    """A handler returned something socker cannot act on (kept on HandlerFailed)."""
