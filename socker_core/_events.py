"""Events the Stepper produces. Small, frozen, slotted: cheap to make and compare."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass

#: A websocket message: `bytes` travel as a binary message, `str` as a text message.
Message = bytes | str


@dataclass(frozen=True, slots=True)
class Send:
    """Send `data` to the peer as one message: binary for bytes, text for a str."""

    data: Message


@dataclass(frozen=True, slots=True)
class StepChanged:
    """The connection entered step `to_step` (index `index`); `from_step` is None on open."""

    from_step: str | None
    to_step: str
    index: int


@dataclass(frozen=True, slots=True)
class Await:
    """Await `awaitable`, then call `Stepper.resume(token, result, now)`
    (or `Stepper.resume_error(token, exc, now)` if it raised).

    `step` names the step (or `<on_open>` / `<on_close>` for hooks). An Await for
    `<on_close>` needs no resume: the connection is already closed.
    """

    token: int
    awaitable: Awaitable[object]
    step: str


@dataclass(frozen=True, slots=True)
class CancelAwait:
    """The connection is closing: cancel the pending awaitable with this token."""

    token: int


@dataclass(frozen=True, slots=True)
class HandlerFailed:
    """A handler or hook raised, or returned something invalid. Never sent to the peer."""

    step: str
    exception: BaseException


@dataclass(frozen=True, slots=True)
class FlowCompleted:
    """The last step advanced: the flow is done and a normal close follows."""

    last_step: str


@dataclass(frozen=True, slots=True)
class CloseRequested:
    """Start the closing handshake with this code and reason."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection is over; every `on_close` hook has run (or is awaited)."""

    code: int
    reason: str
    initiated_locally: bool


Event = (
    Send
    | StepChanged
    | Await
    | CancelAwait
    | HandlerFailed
    | FlowCompleted
    | CloseRequested
    | Closed
)
