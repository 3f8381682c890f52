"""What a Stepper holds, what it shows, and the primitives every part of it uses.

`Stepper` (in _stepper.py) is built in layers, each a slotted class adding one
concept to the one below: this base (its slots, inspection, emitting events and
moving through the `_state.py` table), `_StepperClosing` (how a connection ends),
`_StepperDetach` (a lost transport and its resume), then the Stepper itself
(opening, the per-message path, awaited handlers, cross-worker snapshots). Only this
base declares slots, so a Stepper has no `__dict__`; methods found through the
layers cost nothing more per call (the type caches the lookup).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from typing import TYPE_CHECKING, Any, Generic

from ._errors import ConnectionClosedError, LocalProtocolError
from ._events import Event, StepChanged
from ._flow import Flow, StateT, Step
from ._resume import ReplayBuffer
from ._state import CALLS, TRANSITIONS, Happening, State

if TYPE_CHECKING:
    from ._connection import Connection
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


class _StepperBase(Generic[StateT]):
    """The slots of a Stepper (documented where `Stepper.__init__` sets them),
    its inspection properties and the primitives the layers above share."""

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

    id: str
    flow: Flow[StateT]
    max_queue: int
    conn: Connection[StateT]
    registry: Registry | None
    server: Any
    remote_address: tuple[str, int] | None
    request: Any
    wakeup: Callable[[], None] | None
    guard: AbstractContextManager[Any] | None
    handler_timer: Callable[[str], Callable[[object], None]] | None
    run_blocking: Callable[[Any, Connection, bytes], Any] | None
    _steps: tuple[Step, ...]
    _phase: State
    _index: int
    _handler: Callable[[Connection, Any], Any]
    _deadline: float | None
    _queue: deque[bytes | str] | None
    _events: list[Event] | None
    _outbox: list[Event] | None
    _pending: int | None
    _pending_hook: int | None
    _last_token: int
    _close_code: int | None
    _close_reason: str
    _initiated_locally: bool
    _opened: bool
    _replay: ReplayBuffer | None
    _resume_deadline: float | None

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

    # -- primitives ---------------------------------------------------------

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

    def _emit_step_change(self, index: int, now: float) -> None:
        from_step = self._steps[self._index].name
        step = self._steps[index]
        self._index = index
        self._handler = self._handler_of(step)
        self._deadline = None if step.timeout is None else now + step.timeout
        self._emit(StepChanged(from_step, step.name, index))
