"""What the wire tells its driver: events, phases and how a connection ended."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from enum import Enum

from socker_core import (
    Await,
    CancelAwait,
    Closed,
    FlowCompleted,
    HandlerFailed,
    SockerError,
    StepChanged,
)

from .hooks import Accept, Reject


@dataclass(frozen=True, slots=True)
class CloseResult:
    """How a connection ended, as drivers report it: the close code and reason,
    and the HTTP status of the opening handshake (101 when it succeeded)."""

    code: int | None
    reason: str
    handshake_status: int

    @property
    def ok(self) -> bool:
        """True for a completed flow or a normal close (1000) after a good handshake."""
        return self.handshake_status == 101 and self.code == 1000


class HandshakeError(SockerError):
    """The opening handshake did not succeed; `result.handshake_status` is the HTTP
    status the server answered (0 when there was no answer). Raised by both
    drivers' `connect()`; their `run_client()` returns the result instead."""

    def __init__(self, result: CloseResult) -> None:
        status = result.handshake_status
        super().__init__(
            f"websocket handshake failed: HTTP {status} {result.reason}"
            if status
            else f"websocket handshake failed: {result.reason}"
        )
        self.result = result

    @property
    def status(self) -> int:
        return self.result.handshake_status


@dataclass(frozen=True, slots=True)
class Opened:
    """The opening handshake succeeded and the flow started."""

    path: str
    subprotocol: str | None
    flow: str


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """The opening handshake did not complete: `status` is the HTTP status sent or
    received (0 when the transport ended, timed out or answered garbage first)."""

    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class AwaitHandshake:
    """Await `awaitable` (an async handshake hook), then call
    `Wire.finish_handshake(result, now)` (or with the exception)."""

    awaitable: Awaitable[Accept | Reject | None]


@dataclass(frozen=True, slots=True)
class Detached:
    """The transport was lost and the connection is detached for `window` seconds:
    a client reconnects (`Wire.client(..., resume_from=this_wire)`); both sides
    keep calling `tick` on this wire at `next_deadline` until it is `finished`."""

    window: float


WireEvent = (
    Opened
    | Detached
    | HandshakeFailed
    | AwaitHandshake
    | Await
    | CancelAwait
    | HandlerFailed
    | StepChanged
    | FlowCompleted
    | Closed
)


class Phase(Enum):
    HANDSHAKE = "handshake"
    HOOK = "hook"  # waiting for an async handshake hook
    OPEN = "open"
    CLOSING = "closing"  # our close frame sent, waiting for the peer's
    DRAINING = "draining"  # close handshake done; client waits for the server's EOF
    DONE = "done"
    # Resume: the transport is gone but this wire still holds a detached session
    # (it ticks it and takes its awaited results) until the session resumes on
    # another wire or ends. The driver closes the socket and keeps calling tick.
    DETACHED = "detached"
