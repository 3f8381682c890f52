"""What an operator can observe about connections: the events of the `on_event` hook.

Every server and client (both native drivers, and `socker_transports.asgi.App`)
takes `on_event=callable(event)`. Which events exist and when they happen is
decided here and in the wire, once; drivers only deliver them (on the driver's
thread or event loop, synchronously: a hook must be quick and must not block;
an exception it raises is logged and swallowed, never fatal to a connection).

Events are small frozen dataclasses. `side` is "server" or "client"; `id` is the
connection's id (`conn.id`); `flow` its flow's name; durations are seconds.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from socker_core import Closed, Event, HandlerFailed, StepChanged, Stepper

_default_logger = logging.getLogger("socker")


@dataclass(frozen=True, slots=True)
class ConnectionOpened:
    """The opening handshake succeeded and the flow started."""

    side: str
    id: str
    flow: str
    path: str
    subprotocol: str | None
    peer: str


@dataclass(frozen=True, slots=True)
class HandshakeRefused:
    """The opening handshake failed: `status` is the HTTP status sent (server) or
    received (client), 0 when there was none (timeout, transport lost). A plain
    HTTP request answered by `http_handler` is not a handshake: not reported."""

    side: str
    status: int
    reason: str
    path: str
    peer: str


@dataclass(frozen=True, slots=True)
class StepEntered:
    """The connection entered `step` (`from_step` is None for the first step)."""

    side: str
    id: str
    flow: str
    from_step: str | None
    step: str


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """One complete message reached the flow."""

    side: str
    id: str
    flow: str
    size: int


@dataclass(frozen=True, slots=True)
class MessageSent:
    """One message was queued for the peer."""

    side: str
    id: str
    flow: str
    size: int


@dataclass(frozen=True, slots=True)
class HandlerFinished:
    """A step handler returned (for `async def`: its awaitable finished).
    `duration` is wall time spent in the handler (an async one: from the message
    reaching it to its result), measured by the observer's clock."""

    side: str
    id: str
    flow: str
    step: str
    duration: float


@dataclass(frozen=True, slots=True)
class HandlerRaised:
    """A handler or hook raised (the connection closes with 1011)."""

    side: str
    id: str
    flow: str
    step: str
    exception: BaseException


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """An opened connection ended; `duration` runs from open to close."""

    side: str
    id: str
    flow: str
    code: int
    reason: str
    initiated_locally: bool
    duration: float


@dataclass(frozen=True, slots=True)
class PublishFailed:
    """A room broadcast queued for a cluster engine (`server.broadcast(..., room=)`
    with `engine=`) was not confirmed by the store: it may not have reached anyone
    (`error` is the engine's: EngineUnavailable while Redis is unreachable). Also
    logged at error level: never dropped silently."""

    side: str
    room: str
    size: int
    error: BaseException


ObservedEvent = (
    ConnectionOpened
    | HandshakeRefused
    | StepEntered
    | MessageReceived
    | MessageSent
    | HandlerFinished
    | HandlerRaised
    | ConnectionClosed
    | PublishFailed
)

#: The `on_event` hook servers and clients take.
EventHook = Callable[[ObservedEvent], None]


class Observer:
    """One connection's reporter: the wire (and the ASGI App) call it at the points
    where things happen; it builds the events and hands them to the hook.

    Durations use `clock` (time.perf_counter by default), read only while an
    observer exists: connections without `on_event` pay nothing."""

    __slots__ = (
        "_await_started",
        "_flow",
        "_id",
        "_opened_at",
        "clock",
        "hook",
        "log",
        "peer",
        "side",
    )

    def __init__(
        self,
        hook: EventHook,
        side: str,
        *,
        log: logging.Logger | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.hook = hook
        self.side = side
        self.peer = ""
        self.log = log or _default_logger
        self.clock = clock
        self._id = ""
        self._flow = ""
        self._opened_at = 0.0
        self._await_started: tuple[str, float] | None = None

    def emit(self, event: ObservedEvent) -> None:
        try:
            self.hook(event)
        except Exception:
            self.log.exception("on_event hook raised for %r", event)

    # -- the points the transports call -------------------------------------------

    def opened(self, stepper: Stepper, path: str, subprotocol: str | None, peer: str) -> None:
        self._id, self._flow, self.peer = stepper.id, stepper.flow.name, peer
        stepper.handler_timer = self.timer
        self._opened_at = self.clock()
        self.emit(ConnectionOpened(self.side, self._id, self._flow, path, subprotocol, self.peer))

    def refused(self, status: int, reason: str, path: str, peer: str) -> None:
        self.emit(HandshakeRefused(self.side, status, reason, path, peer))

    def received(self, size: int) -> None:
        self.emit(MessageReceived(self.side, self._id, self._flow, size))

    def sent(self, size: int) -> None:
        self.emit(MessageSent(self.side, self._id, self._flow, size))

    def timer(self, step: str) -> Callable[[object], None]:
        """`Stepper.handler_timer`: a step handler starts; the returned callable
        gets its result (an awaitable: timed until `resumed`) or exception."""
        started = self.clock()

        def done(result: object) -> None:
            if inspect.isawaitable(result):
                self._await_started = (step, started)
            else:
                duration = self.clock() - started
                self.emit(HandlerFinished(self.side, self._id, self._flow, step, duration))

        return done

    def resumed(self) -> None:
        """The awaited handler's result is back (called before the Stepper's resume)."""
        pending = self._await_started
        if pending is not None:
            self._await_started = None
            step, started = pending
            duration = self.clock() - started
            self.emit(HandlerFinished(self.side, self._id, self._flow, step, duration))

    def stepper_events(self, events: list[Event]) -> None:
        """Step changes, handler failures and the close, from the Stepper's events."""
        for event in events:
            kind = type(event)
            if kind is StepChanged:
                assert isinstance(event, StepChanged)
                self.emit(
                    StepEntered(self.side, self._id, self._flow, event.from_step, event.to_step)
                )
            elif kind is HandlerFailed:
                assert isinstance(event, HandlerFailed)
                self._await_started = None
                self.emit(
                    HandlerRaised(self.side, self._id, self._flow, event.step, event.exception)
                )
            elif kind is Closed:
                assert isinstance(event, Closed)
                self.emit(
                    ConnectionClosed(
                        self.side,
                        self._id,
                        self._flow,
                        event.code,
                        event.reason,
                        event.initiated_locally,
                        self.clock() - self._opened_at,
                    )
                )


__all__ = [
    "ConnectionClosed",
    "ConnectionOpened",
    "EventHook",
    "HandlerFinished",
    "HandlerRaised",
    "HandshakeRefused",
    "MessageReceived",
    "MessageSent",
    "ObservedEvent",
    "Observer",
    "StepEntered",
]
