"""Stepper: the per-connection state machine. Messages and `now` in, events out.

Built in layers, one concept a file (see _stepper_base.py).
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from itertools import count
from typing import TYPE_CHECKING, Any

from ._codes import CloseCode
from ._connection import Connection as Connection
from ._connection import stepper_of as stepper_of
from ._errors import (
    ConnectionClosedError,
    HandlerError,
    LocalProtocolError,
    QueueFullError,
)
from ._events import Await, Event, FlowCompleted, Send, StepChanged
from ._flow import Close, Flow, Goto, StateT, Step
from ._handover import ResumePlan
from ._ledger import RoomRef
from ._resume import ReplayBuffer
from ._snapshot import SessionSnapshot
from ._state import IGNORE, Happening, State
from ._stepper_base import (
    _BYTES_LIKE,
    _DETACHED,
    _DETACHED_STATES,
    _OPEN,
    _RUNNING,
    _TEXT_ON_RESUMABLE,
)
from ._stepper_base import DEFAULT_MAX_QUEUE as DEFAULT_MAX_QUEUE
from ._stepper_base import HOOK_STEPS as HOOK_STEPS
from ._stepper_base import ON_CLOSE as ON_CLOSE
from ._stepper_base import ON_DETACH as ON_DETACH
from ._stepper_base import ON_OPEN as ON_OPEN
from ._stepper_base import ON_RESUME as ON_RESUME
from ._stepper_detach import _StepperDetach

if TYPE_CHECKING:
    from ._rooms import Registry


# Deterministic default ids for embedded use and the test kit ("c1", "c2", ...).
# Drivers pass their own (random, unique across processes) ids instead.
_next_default_id = count(1).__next__


class Stepper(_StepperDetach[StateT]):
    """One connection's state machine: pure, deterministic, no I/O, no clock.

    Every public call takes `now` (seconds, any monotonic origin) and returns the
    events it produced. Events made outside a call (by an async handler while it
    runs, or by application code holding `conn`) wait in an outbox: the optional
    `wakeup` callback is called and the driver collects them with
    `pending_events()`.
    """

    __slots__ = ()  # all declared by _StepperBase (_stepper_base.py)

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

    # -- cross-worker resume (see _ledger.py, _snapshot.py, _handover.py) ----------

    def snapshot(
        self,
        now: float,
        *,
        route: str = "",
        room_info: Mapping[str, Mapping[str, str]] | None = None,
    ) -> SessionSnapshot:
        """This session as a `SessionSnapshot`, for another worker to restore:
        open or detached, with a ledger (`ReplayBuffer(ledger=OutgoingLedger())`).
        `route` is the path it was opened at; `room_info` the presence info of its
        rooms. LocalProtocolError when conn.state cannot be encoded by the flow's
        state_codec (the message says why), or when there is nothing to resume."""
        from ._restore import take_snapshot

        self._check("snapshot")
        return take_snapshot(self, now, route, room_info)

    def persisted(self, snapshot: SessionSnapshot) -> None:
        """`snapshot` (taken from this Stepper) is in the store now: the messages it
        attributes may be written (`ReplayBuffer.needs_persist`), and acknowledgements
        may state its received count."""
        from ._restore import mark_persisted

        mark_persisted(self, snapshot)

    @classmethod
    def restore(
        cls,
        flow: Flow[StateT],
        snapshot: SessionSnapshot,
        now: float,
        *,
        plan: ResumePlan,
        max_queue: int = DEFAULT_MAX_QUEUE,
        registry: Registry | None = None,
        server: Any = None,
        remote_address: tuple[str, int] | None = None,
        request: Any = None,
        run_blocking: Callable[[Any, Connection, bytes], Any] | None = None,
    ) -> Stepper[StateT]:
        """A detached Stepper continuing `snapshot` on this worker: same id, step,
        time left in the step, conn.state (through the flow's state_codec), rooms
        (joined in `registry`), and a replay buffer holding `plan`'s messages
        (`socker_core.plan_resume`). `attach(now)` once they are written; on_open
        does not run, on_resume does. Nothing in it is persisted yet: store its own
        snapshot before writing anything."""
        from ._restore import restore_stepper

        return restore_stepper(
            cls,
            flow,
            snapshot,
            now,
            plan,
            max_queue=max_queue,
            registry=registry,
            server=server,
            remote_address=remote_address,
            request=request,
            run_blocking=run_blocking,
        )

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

    def send(self, data: bytes | str, now: float) -> list[Event]:
        """Application send from outside any handler."""
        self._check("send")
        events = self._begin()
        try:
            self._send(data)
        finally:
            self._events = None
        return events

    def post(self, events: list[Event]) -> None:
        """Put `events` in the outbox (and call `wakeup`): for a caller that drove
        this Stepper but no longer moves its bytes (an old transport of a resumed
        session finishing an awaited handler)."""
        for event in events:
            self._emit(event)

    def deliver(self, data: bytes, ref: RoomRef) -> bool:
        """Send room publication `ref` (payload `data`) to this member, as `conn.send`
        does (in a call or not; the guard held), tagged with its origin for the
        outgoing ledger. False, and nothing sent, when the ledger shows this member
        already has it (fetched history overlapping live delivery after a resume
        on another worker). ConnectionClosedError once closing, like `conn.send`."""
        guard = self.guard
        if guard is None:
            return self._deliver(data, ref)
        with guard:
            return self._deliver(data, ref)

    def _deliver(self, data: bytes, ref: RoomRef) -> bool:
        replay = self._replay
        ledger = None if replay is None else replay.ledger
        if ledger is not None and not ledger.admits(ref):
            return False
        self._send(data, ref)
        return True

    # -- the per-message path and awaited handlers --------------------------

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

    def _send(self, data: bytes | str, origin: RoomRef | None = None) -> None:
        phase = self._phase
        if phase is not _OPEN and phase is not State.AWAITING:
            if phase in _DETACHED_STATES:
                self._send_detached(data, origin)
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
            replay.retain(data, origin)  # an overflow only matters if the transport drops
        self._emit(Send(data))
