"""Stepper: the per-connection state machine. Messages and `now` in, events out."""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from functools import partial
from itertools import count
from typing import TYPE_CHECKING, Any, Generic

from ._codes import CloseCode, is_sendable_close_code
from ._errors import (
    ConnectionClosedError,
    HandlerError,
    LocalProtocolError,
    QueueFullError,
)
from ._events import (
    Await,
    CancelAwait,
    Closed,
    CloseRequested,
    Event,
    FlowCompleted,
    HandlerFailed,
    Send,
    StepChanged,
)
from ._flow import Close, Flow, Goto, StateT, Step
from ._resume import ReplayBuffer
from ._state import CALLS, IGNORE, TRANSITIONS, Happening, State

if TYPE_CHECKING:
    from ._rooms import Registry

#: Default number of messages that may wait while an async handler is pending.
DEFAULT_MAX_QUEUE = 16

ON_OPEN = "<on_open>"
ON_CLOSE = "<on_close>"
ON_DETACH = "<on_detach>"
ON_RESUME = "<on_resume>"
#: Await steps a driver runs to completion without calling `Stepper.resume`.
HOOK_STEPS = frozenset({ON_CLOSE, ON_DETACH, ON_RESUME})

_OPEN = State.OPEN
_DETACHED = State.DETACHED
# States in which handler results apply and queued messages drain.
_RUNNING = (State.OPEN, State.DETACHED)
_DETACHED_STATES = (State.DETACHED, State.DETACHED_AWAITING, State.DETACHED_CLOSING)
_BYTES_LIKE = (bytes, bytearray, memoryview)
# On a resumable connection text frames carry socker's own resume control messages
# (socker.resume.v1): the application's messages are binary there.
_TEXT_ON_RESUMABLE = (
    "a resumable connection (resume_window) sends binary messages only: text frames "
    "carry its resume control messages"
)

# Deterministic default ids for embedded use and the test kit ("c1", "c2", ...).
# Drivers pass their own (random, unique across processes) ids instead.
_next_default_id = count(1).__next__


class Connection(Generic[StateT]):
    """The per-connection context every handler and hook receives as `conn`.

    Generic over the type of `conn.state` (`Connection[GameState]` for a
    `Flow("game", state=GameState)`); a bare `Connection` is `Connection[Any]`.
    The parameter exists only for the type checker: it costs nothing at run time.
    """

    __slots__ = ("__weakref__", "_state", "_stepper", "flow")

    def __init__(self, stepper: Stepper[StateT], flow: Flow[StateT]) -> None:
        self._stepper = stepper
        #: The flow this connection runs.
        self.flow = flow
        self._state: Any = None  # made on first use: most connections never need one

    @property
    def state(self) -> StateT:
        """The application's own per-connection objects: made on first use by the
        flow's `state` factory (a `types.SimpleNamespace` by default)."""
        state = self._state
        if state is None:
            state = self._state = self.flow.state_factory()
        return state  # type: ignore[no-any-return]

    @state.setter
    def state(self, value: StateT) -> None:
        self._state = value

    def send(self, data: bytes | str) -> None:
        """Send one message to the peer: binary for bytes (or any bytes-like), text for a
        str. Raises ConnectionClosedError once closing."""
        stepper = self._stepper
        guard = stepper.guard
        if guard is None:
            stepper._send(data)
        else:
            with guard:
                stepper._send(data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection with `code` and `reason` (a no-op once closing)."""
        stepper = self._stepper
        guard = stepper.guard
        if guard is None:
            stepper._close(code, reason)
        else:
            with guard:
                stepper._close(code, reason)

    @property
    def id(self) -> str:
        """This connection's unique id (kept across a resume, once resume exists)."""
        return self._stepper.id

    # -- identity and rooms ---------------------------------------------------

    @property
    def server(self) -> Any:
        """What a handler broadcasts through: the driver's `Server`, or the core
        `Registry` when embedded without a driver; None for a client."""
        stepper = self._stepper
        server = stepper.server
        return stepper.registry if server is None else server

    @property
    def remote_address(self) -> tuple[str, int] | None:
        """The peer's (host, port), or None when embedded without one."""
        return self._stepper.remote_address

    @property
    def request(self) -> Any:
        """The handshake request this server connection was accepted with (a
        `socker_transports.wire.HandshakeRequest`: path, query, headers, ...);
        None for a client or when embedded without one."""
        return self._stepper.request

    def join(self, room: str, info: Mapping[str, str] | None = None) -> None:
        """Join `room` (a no-op if already in it), with presence `info` (a small
        str -> str mapping; a new `info` updates it). ConnectionClosedError once
        closing; LocalProtocolError for a connection with no server (a client)."""
        self._registry("join").join(self, room, info)

    def leave(self, room: str) -> None:
        """Leave `room` (a no-op if not in it)."""
        self._registry("leave").leave(self, room)

    @property
    def rooms(self) -> frozenset[str]:
        """The rooms this connection is in (empty once it stops being open)."""
        registry = self._stepper.registry
        return frozenset() if registry is None else registry.rooms_of(self)

    def _registry(self, what: str) -> Registry:
        registry = self._stepper.registry
        if registry is None:
            raise LocalProtocolError(
                f"cannot {what} a room: this connection has no server (a client, or a "
                "Stepper made without registry=)"
            )
        return registry

    @property
    def step(self) -> str:
        """The current step's name."""
        return self._stepper.step

    @property
    def is_open(self) -> bool:
        """True while the connection is open (also while an async handler runs)."""
        return self._stepper.phase in (State.OPEN, State.AWAITING)

    @property
    def is_detached(self) -> bool:
        """True while the transport is lost and the session waits for a resume."""
        return self._stepper.phase in _DETACHED_STATES

    @property
    def close_code(self) -> int | None:
        """The close code once the connection is closing or closed, else None."""
        return self._stepper.close_code

    @property
    def close_reason(self) -> str:
        """The close reason once the connection is closing or closed, else ''."""
        return self._stepper.close_reason

    def __repr__(self) -> str:
        return (
            f"<Connection {self.id} flow={self.flow.name!r} step={self.step!r} "
            f"{self._stepper.phase.value}>"
        )


class Stepper(Generic[StateT]):
    """One connection's state machine: pure, deterministic, no I/O, no clock.

    Every public call takes `now` (seconds, any monotonic origin) and returns the
    events it produced. Events made outside a call (by an async handler while it
    runs, or by application code holding `conn`) wait in an outbox: the optional
    `wakeup` callback is called and the driver collects them with
    `pending_events()`.
    """

    __slots__ = (
        "_close_code",
        "_close_reason",
        "_deadline",
        "_events",
        "_handler",
        "_index",
        "_initiated_locally",
        "_last_token",
        "_opened",
        "_outbox",
        "_pending",
        "_pending_hook",
        "_phase",
        "_queue",
        "_replay",
        "_resume_deadline",
        "_steps",
        "conn",
        "flow",
        "guard",
        "handler_timer",
        "id",
        "max_queue",
        "registry",
        "remote_address",
        "request",
        "run_blocking",
        "server",
        "wakeup",
    )

    def __init__(
        self,
        flow: Flow[StateT],
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        id: str | None = None,
        registry: Registry | None = None,
        server: Any = None,
        remote_address: tuple[str, int] | None = None,
        request: Any = None,
        replay: ReplayBuffer | None = None,
    ) -> None:
        flow.validate()
        if max_queue < 1:
            raise LocalProtocolError(f"max_queue must be at least 1, got {max_queue}")
        if id is not None and (not isinstance(id, str) or not id):
            raise LocalProtocolError(f"id must be a non-empty string, got {id!r}")
        #: Unique per connection; `c<n>` by default, a random token when a driver makes it.
        self.id: str = id if id is not None else f"c{_next_default_id()}"
        self.flow = flow
        self.max_queue = max_queue
        self.conn: Connection[StateT] = Connection(self, flow)
        #: The rooms registry this connection joins (None: a client, no rooms). The
        #: Stepper adds its connection when it opens and discards it as soon as it
        #: stops being open, before any on_close hook runs.
        self.registry = registry
        #: What `conn.server` returns (a driver's Server); None: the registry.
        self.server = server
        #: The peer's (host, port), if known (`conn.remote_address`).
        self.remote_address = remote_address
        #: The handshake request the connection was accepted with (`conn.request`).
        self.request = request
        #: Called (no arguments) whenever events land in the outbox outside a call.
        self.wakeup: Callable[[], None] | None = None
        #: A re-entrant context manager (a driver's lock) that `conn.send` and
        #: `conn.close` hold, so application code on another thread never races a
        #: call in progress. The core only enters it; it creates no threads.
        self.guard: AbstractContextManager[Any] | None = None
        #: Observability: `handler_timer(step_name)` is called right before a step
        #: handler runs and returns a callable the Stepper calls right after, with
        #: the handler's result (an awaitable for `async def`) or the exception it
        #: raised. The driver measures time; the core only marks the moments.
        self.handler_timer: Callable[[str], Callable[[object], None]] | None = None
        #: How a driver runs a `blocking=True` step: called as
        #: `run_blocking(handler, conn, message)` instead of the handler, it returns
        #: an awaitable of the handler's result (awaited like an async handler, so
        #: message order holds). None (the default, and the threaded driver's):
        #: the handler is called directly. Set before `open`.
        self.run_blocking: Callable[[Any, Connection, bytes], Any] | None = None
        self._steps: tuple[Step, ...] = flow.steps
        self._phase = State.IDLE
        self._index = 0
        # Any: a handler takes bytes, str or both (see `Handler`); the wire decides which.
        self._handler: Callable[[Connection, Any], Any] = self._steps[0].handler
        self._deadline: float | None = None
        # Messages waiting for a pending async handler (made when the first one waits).
        self._queue: deque[bytes | str] | None = None
        self._events: list[Event] | None = None
        # Events made outside a call, until `pending_events` takes them.
        self._outbox: list[Event] | None = None
        self._pending: int | None = None  # token of the awaited handler or hook
        self._pending_hook: int | None = None  # index into open_hooks when a hook is pending
        self._last_token = 0
        self._close_code: int | None = None
        self._close_reason = ""
        self._initiated_locally = False
        self._opened = False  # open() ran: on_close hooks are owed
        # Resume: every send is kept here until the peer acknowledges it; None for a
        # connection that cannot resume (the send path then costs one test).
        self._replay = replay
        self._resume_deadline: float | None = None  # while detached: the window's end

    # -- inspection ---------------------------------------------------------

    @property
    def phase(self) -> State:
        """The current phase (`State`)."""
        return self._phase

    @property
    def step(self) -> str:
        """The current step's name."""
        return self._steps[self._index].name

    @property
    def step_index(self) -> int:
        """The current step's position in the flow (0-based)."""
        return self._index

    @property
    def replay(self) -> ReplayBuffer | None:
        """The resume ledger (None unless this connection can resume)."""
        return self._replay

    @property
    def is_detached(self) -> bool:
        """True while the transport is lost and the session waits for a resume."""
        return self._phase in _DETACHED_STATES

    @property
    def accepting(self) -> bool:
        """False while the wait queue is full: a driver must stop reading (backpressure)."""
        if self._phase is not State.AWAITING:
            return True
        queue = self._queue
        return queue is None or len(queue) < self.max_queue

    @property
    def queued(self) -> int:
        """How many messages wait for a pending async handler."""
        queue = self._queue
        return 0 if queue is None else len(queue)

    @property
    def next_deadline(self) -> float | None:
        """When `tick` next has something to do, or None."""
        phase = self._phase
        if phase is _OPEN or phase is State.AWAITING:
            return self._deadline
        if phase in _DETACHED_STATES:
            deadline, window = self._deadline, self._resume_deadline
            if deadline is None or (window is not None and window < deadline):
                return window
            return deadline
        return None

    @property
    def close_code(self) -> int | None:
        """The close code once closing or closed, else None."""
        return self._close_code

    @property
    def close_reason(self) -> str:
        """The close reason once closing or closed, else ''."""
        return self._close_reason

    @property
    def is_closed(self) -> bool:
        """True once `transport_closed` ended the connection."""
        return self._phase is State.CLOSED

    @property
    def quiet(self) -> bool:
        """True when open (or awaiting), with no call in progress and nothing in the
        outbox: bytes a driver queues for this connection directly now (a prebuilt
        broadcast frame) cannot overtake a message the flow already sent."""
        phase = self._phase
        return (
            (phase is _OPEN or phase is State.AWAITING)
            and self._events is None
            and self._outbox is None
        )

    def pending_events(self) -> list[Event]:
        """Take the events produced outside a call (see the class docstring)."""
        outbox = self._outbox
        if outbox is None:
            return []
        self._outbox = None
        return outbox

    # -- calls --------------------------------------------------------------

    def open(self, now: float) -> list[Event]:
        """The transport is open: enter the first step and run the on_open hooks."""
        self._check("open")
        if self.registry is not None:
            self.registry.add(self.conn)  # first: a clash of ids leaves this Stepper idle
        events = self._begin()
        try:
            self._opened = True
            self._move(Happening.OPENED)
            self._enter_first(now)
            self._run_open_hooks(0, now)
        finally:
            self._events = None
        return events

    def receive(self, message: bytes | str, now: float) -> list[Event]:
        """One complete message from the peer (str for a text message)."""
        if (
            self._phase is _OPEN
            and self._events is None
            and (self._deadline is None or now < self._deadline)
            and self.handler_timer is None
        ):
            # Hot path, inlined: the current step handles the message right away.
            events: list[Event] = []
            self._events = events
            try:
                try:
                    result = self._handler(self.conn, message)
                except Exception as exc:
                    self._fail(self._steps[self._index].name, exc)
                else:
                    if result is not None and result is not False:
                        self._apply(result, self._steps[self._index].name, now)
            finally:
                self._events = None
            return events
        if self._check("receive") is IGNORE:
            return []
        events = self._begin()
        try:
            if not self._expire(now):
                if self._phase is State.AWAITING:
                    queue = self._queue
                    if queue is None:
                        queue = self._queue = deque()
                    if len(queue) >= self.max_queue:
                        raise QueueFullError(
                            f"wait queue is full ({self.max_queue} messages): "
                            "stop reading while Stepper.accepting is False"
                        )
                    queue.append(message)
                else:
                    self._handle(message, now)
        finally:
            self._events = None
        return events

    def resume(self, token: int, result: object, now: float) -> list[Event]:
        """The awaitable of `Await(token)` finished with `result`."""
        return self._settle(token, result, None, now)

    def resume_error(self, token: int, error: BaseException, now: float) -> list[Event]:
        """The awaitable of `Await(token)` raised `error`."""
        return self._settle(token, None, error, now)

    def tick(self, now: float) -> list[Event]:
        """Let time pass: a step past its timeout closes with 4408; a detached
        session past its resume window ends (1006, "resume window expired")."""
        if self._check("tick") is IGNORE:
            return []
        events = self._begin()
        try:
            if not self._expire(now):
                window = self._resume_deadline
                if window is not None and now >= window and self._phase in _DETACHED_STATES:
                    if self._phase is State.DETACHED_CLOSING:
                        # We had decided to close: that code stands.
                        self._resume_deadline = None
                        code, reason = self._close_code, self._close_reason
                        assert code is not None
                        events.extend(self._transport_closed(code, reason))
                    else:
                        self._end_detached(CloseCode.ABNORMAL, "resume window expired", False)
        finally:
            self._events = None
        return events

    def detach(self, now: float, window: float) -> list[Event]:
        """The transport was lost without a close handshake and the connection may
        resume within `window` seconds: keep the step, its timers, the wait queue
        and (in the replay buffer) every send; run the on_detach hooks. A Stepper
        without a replay buffer, or whose buffer overflowed, ends instead (as
        `transport_closed(1006)`, or with 4413)."""
        if self._check("detach") is IGNORE:
            return []
        replay = self._replay
        if replay is None:
            return self.transport_closed(CloseCode.ABNORMAL, "connection lost", now)
        if replay.overflowed:
            return self.transport_closed(
                CloseCode.RESUME_BUFFER_OVERFLOW, "replay buffer overflowed", now
            )
        events = self._begin()
        try:
            closing = self._phase is State.CLOSING
            self._move(Happening.DETACHED)
            self._resume_deadline = now + window
            if not closing:  # a closing connection is not coming back to the app
                for hook in self.flow.detach_hooks:
                    self._run_hook(hook, ON_DETACH)
        finally:
            self._events = None
        return events

    def attach(self, now: float) -> list[Event]:
        """A new transport resumed this detached connection (after the replay was
        written): back to OPEN (or AWAITING), then the on_resume hooks run."""
        self._check("attach")
        events = self._begin()
        try:
            closing = self._phase is State.DETACHED_CLOSING
            self._move(Happening.ATTACHED)
            self._resume_deadline = None
            if closing:
                assert self._close_code is not None
                self._emit(CloseRequested(self._close_code, self._close_reason))
                return events
            for hook in self.flow.resume_hooks:
                self._run_hook(hook, ON_RESUME)
                if self._phase is not _OPEN and self._phase is not State.AWAITING:
                    break  # a hook closed the connection
        finally:
            self._events = None
        return events

    def post(self, events: list[Event]) -> None:
        """Put `events` in the outbox (and call `wakeup`): for a caller that drove
        this Stepper but no longer moves its bytes (an old transport of a resumed
        session finishing an awaited handler)."""
        for event in events:
            self._emit(event)

    def send(self, data: bytes | str, now: float) -> list[Event]:
        """Application send from outside any handler."""
        self._check("send")
        events = self._begin()
        try:
            self._send(data)
        finally:
            self._events = None
        return events

    def close(self, code: int = 1000, reason: str = "", now: float = 0.0) -> list[Event]:
        """Application close from outside any handler (for example server shutdown: 1001)."""
        if self._check("close") is IGNORE:
            return []
        events = self._begin()
        try:
            self._close(code, reason)
        finally:
            self._events = None
        return events

    def transport_closed(self, code: int, reason: str, now: float) -> list[Event]:
        """The transport ended (close handshake done, or lost: 1006). Runs on_close once."""
        if self._check("transport_closed") is IGNORE:
            return []
        events = self._begin()
        try:
            events.extend(self._transport_closed(code, reason))
        finally:
            self._events = None
        return events

    def _transport_closed(self, code: int, reason: str) -> list[Event]:
        events: list[Event] = []
        saved, self._events = self._events, events
        try:
            opened = self._opened
            self._resume_deadline = None
            if self._phase is not State.CLOSING and self._phase is not State.DETACHED_CLOSING:
                self._cancel_pending()
                self._close_code, self._close_reason = code, reason
                self._initiated_locally = False
            self._drop_queue()
            self._move(Happening.TRANSPORT_CLOSED)
            if self.registry is not None:
                self.registry.discard(self.conn)  # out of every room before on_close
            if opened:
                for hook in self.flow.close_hooks:
                    self._run_hook(hook, ON_CLOSE)
            assert self._close_code is not None
            events.append(Closed(self._close_code, self._close_reason, self._initiated_locally))
        finally:
            self._events = saved
        return events

    # -- internals ----------------------------------------------------------

    def _check(self, call: str) -> object:
        disposition = CALLS[call].get(self._phase)
        if disposition is None:
            if self._phase in (State.CLOSING, State.CLOSED):
                raise ConnectionClosedError(
                    f"cannot {call}: the connection is {self._phase.value}",
                    self._close_code,
                    self._close_reason,
                )
            raise LocalProtocolError(f"cannot {call} while the connection is {self._phase.value}")
        return disposition

    def _begin(self) -> list[Event]:
        if self._events is not None:
            raise LocalProtocolError("Stepper calls may not be nested (called from a handler?)")
        events: list[Event] = []
        self._events = events
        return events

    def _emit(self, event: Event) -> None:
        if self._events is not None:
            self._events.append(event)
        else:
            outbox = self._outbox
            if outbox is None:
                self._outbox = [event]
            else:
                outbox.append(event)
            if self.wakeup is not None:
                self.wakeup()

    def _move(self, happening: Happening) -> None:
        self._phase = TRANSITIONS[(self._phase, happening)]

    def _handler_of(self, step: Step) -> Any:
        runner = self.run_blocking
        if step.blocking and runner is not None:
            return partial(runner, step.handler)
        return step.handler

    def _enter_first(self, now: float) -> None:
        step = self._steps[0]
        self._index = 0
        self._handler = self._handler_of(step)
        self._deadline = None if step.timeout is None else now + step.timeout
        self._emit(StepChanged(None, step.name, 0))

    def _handle(self, message: bytes | str, now: float) -> None:
        step_name = self._steps[self._index].name
        timer = self.handler_timer
        done = None if timer is None else timer(step_name)
        try:
            result = self._handler(self.conn, message)
        except Exception as exc:
            if done is not None:
                done(exc)
            self._fail(step_name, exc)
            return
        if done is not None:
            done(result)
        if result is None or result is False:
            return
        self._apply(result, step_name, now)

    def _apply(self, result: object, step_name: str, now: float) -> None:
        if self._phase is not _OPEN and self._phase is not _DETACHED:
            return  # the handler closed the connection itself; its answer no longer matters
        if result is True:
            following = self._index + 1
            if following < len(self._steps):
                self._emit_step_change(following, now)
            else:
                self._emit(FlowCompleted(step_name))
                self._close(CloseCode.NORMAL, "flow complete")
        elif result is None or result is False:
            return
        elif isinstance(result, Goto):
            target = self.flow.index_of(result.step)
            if target is None or target >= len(self._steps):
                self._fail(step_name, HandlerError(f"Goto({result.step!r}): no such step"))
            else:
                self._emit_step_change(target, now)
        elif isinstance(result, Close):
            self._close(result.code, result.reason)
        elif inspect.isawaitable(result):
            self._await(result, step_name)
        else:
            self._fail(
                step_name,
                HandlerError(
                    f"step {step_name!r} returned {result!r}; expected True, False, None, "
                    "Goto or Close"
                ),
            )

    def _emit_step_change(self, index: int, now: float) -> None:
        from_step = self._steps[self._index].name
        step = self._steps[index]
        self._index = index
        self._handler = self._handler_of(step)
        self._deadline = None if step.timeout is None else now + step.timeout
        self._emit(StepChanged(from_step, step.name, index))

    def _await(self, awaitable: Any, step_name: str) -> None:
        self._last_token += 1
        self._pending = self._last_token
        self._move(Happening.HANDLER_PENDING)
        self._emit(Await(self._last_token, awaitable, step_name))

    def _settle(
        self, token: int, result: object, error: BaseException | None, now: float
    ) -> list[Event]:
        if self._check("resume") is IGNORE:
            return []
        if token != self._pending:
            raise LocalProtocolError(
                f"resume for token {token}, but the pending token is {self._pending}"
            )
        events = self._begin()
        try:
            hook_index = self._pending_hook
            step_name = ON_OPEN if hook_index is not None else self.step
            self._pending = self._pending_hook = None
            self._move(Happening.HANDLER_DONE)
            if self._expire(now):
                pass
            elif error is not None:
                self._fail(step_name, error)
            elif hook_index is not None:
                if isinstance(result, Close):
                    self._close(result.code, result.reason)
                else:
                    self._run_open_hooks(hook_index + 1, now)
            elif inspect.isawaitable(result):
                self._fail(step_name, HandlerError(f"step {step_name!r} resolved to an awaitable"))
            else:
                self._apply(result, step_name, now)
            self._drain(now)
        finally:
            self._events = None
        return events

    def _drain(self, now: float) -> None:
        queue = self._queue
        if queue is None:
            return
        while queue and self._phase in _RUNNING:
            self._handle(queue.popleft(), now)
        if not queue and self._queue is queue:
            self._queue = None  # an empty deque still holds ~760 bytes

    def _drop_queue(self) -> None:
        queue = self._queue
        if queue is not None:
            queue.clear()  # a `_drain` in progress sees it empty
            self._queue = None

    def _run_open_hooks(self, start: int, now: float) -> None:
        hooks = self.flow.open_hooks
        for position in range(start, len(hooks)):
            try:
                result = hooks[position](self.conn)
            except Exception as exc:
                self._fail(ON_OPEN, exc)
                return
            if isinstance(result, Close):
                self._close(result.code, result.reason)
                return
            if inspect.isawaitable(result):
                self._pending_hook = position
                self._await(result, ON_OPEN)
                return
            if self._phase not in _RUNNING:
                return

    def _run_hook(self, hook: Callable[..., Any], name: str) -> None:
        try:
            result = hook(self.conn)
        except Exception as exc:
            self._emit(HandlerFailed(name, exc))
            return
        if inspect.isawaitable(result):
            self._last_token += 1
            self._emit(Await(self._last_token, result, name))

    def _expire(self, now: float) -> bool:
        deadline = self._deadline
        if deadline is None or now < deadline or self._phase in (State.CLOSING, State.CLOSED):
            return False
        step = self._steps[self._index]
        self._close(CloseCode.STEP_TIMEOUT, f"step {step.name!r} timed out after {step.timeout:g}s")
        return True

    def _fail(self, step_name: str, exc: BaseException) -> None:
        self._emit(HandlerFailed(step_name, exc))
        self._close(CloseCode.INTERNAL_ERROR, "internal error")

    def _cancel_pending(self) -> None:
        if self._pending is not None:
            self._emit(CancelAwait(self._pending))
            self._pending = self._pending_hook = None

    def _send(self, data: bytes | str) -> None:
        phase = self._phase
        if phase is not _OPEN and phase is not State.AWAITING:
            if phase in _DETACHED_STATES:
                self._send_detached(data)
                return
            if phase is State.IDLE:
                raise LocalProtocolError("cannot send before the connection is open")
            raise ConnectionClosedError(
                f"cannot send: the connection is {self._phase.value}",
                self._close_code,
                self._close_reason,
            )
        if type(data) is not bytes and type(data) is not str:
            if not isinstance(data, _BYTES_LIKE):
                raise TypeError(f"send() takes bytes or str, got {type(data).__name__}")
            data = bytes(data)  # a snapshot: the caller may reuse its buffer
        replay = self._replay
        if replay is not None:
            if isinstance(data, str):
                raise LocalProtocolError(_TEXT_ON_RESUMABLE)
            replay.retain(data)  # an overflow only matters if the transport drops
        self._emit(Send(data))

    def _send_detached(self, data: bytes | str) -> None:
        """No transport: keep the message for replay; past max_resume_buffer the
        session cannot be replayed any more, so it ends now (4413)."""
        if isinstance(data, str):
            raise LocalProtocolError(_TEXT_ON_RESUMABLE)
        if not isinstance(data, _BYTES_LIKE):
            raise TypeError(f"send() takes bytes, got {type(data).__name__}")
        replay = self._replay
        assert replay is not None
        if not replay.retain(bytes(data)):
            self._end_detached(CloseCode.RESUME_BUFFER_OVERFLOW, "replay buffer overflowed", True)

    def _end_detached(self, code: int, reason: str, locally: bool) -> None:
        """End a detached session: nothing to send, so straight to CLOSED."""
        self._cancel_pending()
        self._drop_queue()
        self._close_code, self._close_reason = int(code), reason
        self._initiated_locally = locally
        self._deadline = self._resume_deadline = None
        self._move(Happening.SESSION_ENDED)
        for hook in self.flow.close_hooks:
            self._run_hook(hook, ON_CLOSE)
        self._emit(Closed(self._close_code, reason, locally))

    def _close(self, code: int, reason: str) -> None:
        if self._phase is State.CLOSING or self._phase is State.CLOSED:
            return
        if not is_sendable_close_code(code):
            raise LocalProtocolError(f"close code {code} cannot be sent in a close frame")
        if len(reason.encode("utf-8")) > 123:
            raise LocalProtocolError("close reason is longer than 123 bytes of UTF-8")
        if self._phase in _DETACHED_STATES:
            self._end_detached(code, reason, True)
            return
        self._cancel_pending()
        self._drop_queue()
        self._close_code, self._close_reason = int(code), reason
        self._initiated_locally = True
        self._deadline = None
        self._move(Happening.CLOSE_STARTED)
        if self.registry is not None:
            self.registry.discard(self.conn)  # closing: no longer a broadcast recipient
        self._emit(CloseRequested(int(code), reason))
