"""The discrete-event simulation behind `run_pair` and `run_room`: Steppers on a
fake clock, a priority queue of deliveries, awaitables and scripted actions, and
the driving of awaitables without an event loop.

`Simulation` is keyed by endpoint: `run_pair` keys its two Steppers by side
("server", "client"), `run_room` by (client name, side). A subclass names each
key's peer, writes the transcript lines and adds its own kinds of queued items
(a pair's drops and resumes, a room's connects). `Simulation.run()` is a
generator that yields every awaitable to resolve and is sent back (ok, value):
`drive` resolves them without an event loop, `adrive` awaits them for real.
"""

from __future__ import annotations

import heapq
import inspect
import math
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Hashable, Iterable
from typing import Any, Generic, Protocol, TypeVar

from ._errors import LocalProtocolError
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
from ._flow import Close
from ._state import State
from ._stepper import HOOK_STEPS, Stepper

#: Default cap on the events of one `run_pair` run (both sides together).
DEFAULT_MAX_EVENTS = 10_000
#: Default cap on how often one awaitable may yield a bare `None` (asyncio's
#: "let others run") before the trampoline gives up.
DEFAULT_MAX_AWAIT_STEPS = 10_000

#: What a scripted action does to one Stepper: bytes are sent with `Stepper.send`,
#: a `Close` closes with `Stepper.close`, a callable is called as
#: `action(stepper, now)` and returns the events it made.
StepperAction = bytes | Close | Callable[..., Iterable[Event] | None]


class NeedsEventLoopError(LocalProtocolError):
    """An awaitable really suspended (waited for an event loop) where none runs.

    `run_pair` and `fuzz_flow` drive awaitables without an event loop: only
    awaitables that finish without suspending work there. Use `arun_pair`
    under asyncio or trio for handlers that really wait.
    """


# -- driving awaitables without an event loop ---------------------------------


def discard(awaitable: object) -> None:
    """Close an awaitable that will never run (no "never awaited" warning)."""
    if inspect.iscoroutine(awaitable) or inspect.isgenerator(awaitable):
        awaitable.close()


def trampoline(awaitable: Awaitable[object], max_steps: int, where: str) -> tuple[bool, object]:
    """Run `awaitable` to completion by sending None into it.

    Returns (True, result) or (False, exception). A bare `yield None` (asyncio's
    `sleep(0)`) is passed over; anything else it yields belongs to a real event
    loop and raises NeedsEventLoopError.
    """
    await_method = getattr(awaitable, "__await__", None)
    iterator: Any = await_method() if await_method is not None else awaitable
    for _ in range(max_steps):
        try:
            yielded = iterator.send(None)
        except StopIteration as stop:
            return True, stop.value
        except Exception as exc:
            return False, exc
        if yielded is not None:
            _close_iterator(iterator)
            raise NeedsEventLoopError(
                f"{where}: an awaitable suspended on an event loop (it yielded {yielded!r}); "
                "this harness has no event loop and can only drive awaitables that finish "
                "without waiting. Use `await socker_core.testing.arun_pair(...)` under "
                "asyncio or trio for handlers that really wait."
            )
    _close_iterator(iterator)
    raise NeedsEventLoopError(
        f"{where}: an awaitable was still running after {max_steps} steps "
        "(it keeps yielding to an event loop); use `arun_pair` under a real event loop"
    )


def _close_iterator(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if callable(close):
        close()


def resolve(awaitable: Awaitable[object], *, max_steps: int = DEFAULT_MAX_AWAIT_STEPS) -> object:
    """Run an awaitable that needs no event loop and return its result (or raise)."""
    ok, value = trampoline(awaitable, max_steps, "resolve")
    if not ok:
        assert isinstance(value, BaseException)
        raise value
    return value


# -- the simulation --------------------------------------------------------------

Outcome = tuple[bool, object]
_PRIORITY_AWAIT = 0  # an awaitable finishing at time t goes before deliveries at t
PRIORITY_NET = 1

K = TypeVar("K", bound=Hashable)  # an endpoint: a side, or (client name, side)


class _Transcript(Protocol):
    outcome: str


T = TypeVar("T", bound=_Transcript)


def check_delays(**delays: float) -> None:
    """Each named delay is a finite number >= 0 (ValueError names the first that is not)."""
    for label, value in delays.items():
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{label} must be a finite number >= 0, got {value!r}")


def check_max_events(max_events: int) -> None:
    """A run may make at least one event."""
    if max_events < 1:
        raise ValueError(f"max_events must be at least 1, got {max_events}")


class Simulation(Generic[K, T]):
    """Steppers keyed by endpoint, run against each other on a fake clock.

    Each `Send` reaches the peer endpoint `latency` seconds later; a
    `CloseRequested` reaches the peer's `transport_closed` after `latency` and its
    own after `2 * latency`. An awaitable finishes `await_delay` seconds after it
    started (a hook's at once). Step deadlines fire on the fake clock; messages
    wait while their Stepper is not `accepting`.
    """

    def __init__(
        self,
        steppers: dict[K, Stepper],
        transcript: T,
        *,
        clock_start: float,
        latency: float,
        await_delay: float,
        max_events: int,
        max_time: float | None,
    ) -> None:
        self.steppers = steppers
        self.transcript = transcript
        self.now = clock_start
        self.end = math.inf if max_time is None else clock_start + max_time
        self.latency = latency
        self.await_delay = await_delay
        self.max_events = max_events
        self.count = 0
        self._seq = 0
        self._heap: list[tuple[float, int, int, tuple[Any, ...]]] = []
        self._inbox: dict[K, deque[tuple[Any, ...]]] = {key: deque() for key in steppers}
        self._dirty: list[K] = []  # endpoints whose outbox got events meanwhile
        self._scheduled: dict[tuple[K, int], Awaitable[object]] = {}
        self._cancelled: set[tuple[K, int]] = set()

    # -- what a subclass says --------------------------------------------------

    def _peer(self, key: K) -> K:
        """The endpoint at the other end of `key`'s connection."""
        raise NotImplementedError

    def _record(self, key: K, kind: str, payload: object, step: str | None = None) -> None:
        """Write one transcript line for `key` (`step`: its Stepper's step by default)."""
        raise NotImplementedError

    def _stop(self, outcome: str, why: str) -> None:
        """End the run early (a limit): set the outcome and say why."""
        raise NotImplementedError

    def _start(self) -> None:
        """What happens before the first queued item (a pair opens both sides)."""

    def _handle(self, item: tuple[Any, ...]) -> None:
        """A queued item of a kind the subclass pushed itself."""
        raise TypeError(f"unknown queued item {item!r}")

    def _act(self, target: Any, action: Any) -> None:
        """A scripted action for `target` (by default the endpoint it names)."""
        self._apply(target, action)

    # -- bookkeeping -------------------------------------------------------------

    def _push(self, when: float, priority: int, item: tuple[Any, ...]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, priority, self._seq, item))

    def _open(self, key: K) -> None:
        self._record(key, "open", None)
        self._process(key, self.steppers[key].open(self.now))

    def _process(self, key: K, events: Iterable[Event]) -> None:
        now = self.now
        peer = self._peer(key)
        for event in events:
            self.count += 1
            if isinstance(event, Send):
                data = event.data
                self._record(key, "send", data if isinstance(data, str) else bytes(data))
                self._push(now + self.latency, PRIORITY_NET, ("msg", peer, event.data))
            elif isinstance(event, StepChanged):
                self._record(key, "step", event.to_step, event.to_step)
            elif isinstance(event, Await):
                self._record(key, "await", event.step)
                delay = 0.0 if event.step in HOOK_STEPS else self.await_delay
                self._scheduled[(key, event.token)] = event.awaitable
                self._push(
                    now + delay,
                    _PRIORITY_AWAIT,
                    ("await", key, event.token, event.awaitable, event.step),
                )
            elif isinstance(event, CancelAwait):
                self._record(key, "cancel", event.token)
                self._cancelled.add((key, event.token))
            elif isinstance(event, HandlerFailed):
                self._record(key, "failed", event.exception, event.step)
            elif isinstance(event, FlowCompleted):
                self._record(key, "complete", event.last_step)
            elif isinstance(event, CloseRequested):
                self._record(key, "close", (event.code, event.reason))
                eof = (event.code, event.reason)
                self._push(now + self.latency, PRIORITY_NET, ("eof", peer, *eof))
                self._push(now + 2 * self.latency, PRIORITY_NET, ("eof", key, *eof))
            elif isinstance(event, Closed):
                self._record(key, "closed", (event.code, event.reason))
            else:  # pragma: no cover - every event type is handled above
                raise TypeError(f"unknown event {event!r}")
        self._collect()

    def _collect(self) -> None:
        """What landed in outboxes meanwhile (a room's broadcasts to other connections)."""
        while self._dirty:
            key = self._dirty.pop(0)
            self._process(key, self.steppers[key].pending_events())

    def _pump(self, key: K) -> None:
        """Deliver what reached `key`, in order, while its Stepper accepts messages."""
        stepper = self.steppers[key]
        inbox = self._inbox[key]
        while inbox:
            item = inbox[0]
            if item[0] == "msg":
                if stepper.is_closed or stepper.phase is State.CLOSING:
                    inbox.popleft()
                    self._record(key, "drop", bytes(item[2]))
                    if not stepper.is_closed:
                        self._process(key, stepper.receive(item[2], self.now))
                    continue
                if not stepper.accepting:
                    return  # backpressure: the rest waits "in the socket"
                if stepper.is_detached:
                    return  # cannot happen: a drop loses what is in flight
                inbox.popleft()
                self._record(key, "recv", bytes(item[2]))
                replay = stepper.replay
                if replay is not None:
                    replay.received += 1  # what the wire does for a real transport
                self._process(key, stepper.receive(item[2], self.now))
            else:
                inbox.popleft()
                if stepper.phase is State.IDLE:
                    continue  # never opened
                self._process(key, stepper.transport_closed(item[2], item[3], self.now))

    def _next_deadline(self) -> tuple[float, K] | None:
        best: tuple[float, K] | None = None
        for key, stepper in self.steppers.items():
            deadline = stepper.next_deadline
            if (
                deadline is not None
                and math.isfinite(deadline)
                and (best is None or deadline < best[0])
            ):
                best = (deadline, key)
        return best

    def _apply(self, key: K, action: StepperAction) -> None:
        stepper = self.steppers[key]
        self._record(key, "action", action)
        if isinstance(action, (bytes, bytearray, memoryview)):
            events: Iterable[Event] = stepper.send(bytes(action), self.now)
        elif isinstance(action, Close):
            events = stepper.close(action.code, action.reason, self.now)
        elif callable(action):
            events = action(stepper, self.now) or []
        else:
            raise TypeError(f"unsupported action {action!r}: use bytes, Close or a callable")
        self._process(key, events)
        self._process(key, stepper.pending_events())

    # -- the run -------------------------------------------------------------------

    def run(self) -> Generator[Awaitable[object], Outcome, T]:
        self._start()
        rounds = 0
        try:
            while True:
                rounds += 1
                if self.count >= self.max_events or rounds > 4 * self.max_events + 100:
                    self._stop("limit", f"max_events={self.max_events} reached")
                    break
                item_time = self._heap[0][0] if self._heap else math.inf
                deadline = self._next_deadline()
                if deadline is not None and deadline[0] <= item_time:
                    when, key = deadline
                    if when > self.end:
                        self._stop("time limit", f"max_time reached at {self.end:g}")
                        break
                    self.now = max(self.now, when)
                    self._process(key, self.steppers[key].tick(self.now))
                elif not self._heap:
                    break
                elif item_time > self.end:
                    self._stop("time limit", f"max_time reached at {self.end:g}")
                    break
                else:
                    when, _, _, item = heapq.heappop(self._heap)
                    self.now = max(self.now, when)
                    kind = item[0]
                    if kind in ("msg", "eof"):
                        self._inbox[item[1]].append(item)
                    elif kind == "action":
                        self._act(item[1], item[2])
                    elif kind == "await":
                        yield from self._settle(item[1], item[2], item[3], item[4])
                    else:
                        self._handle(item)
                for key in self.steppers:
                    self._pump(key)
        finally:
            for awaitable in self._scheduled.values():
                discard(awaitable)
            self._scheduled.clear()
        transcript = self.transcript
        if transcript.outcome == "running":
            if all(s.is_closed for s in self.steppers.values()):
                transcript.outcome = "closed"
            else:
                transcript.outcome = "stalled"
                for key, stepper in self.steppers.items():
                    if not stepper.is_closed and stepper.phase is not State.IDLE:
                        self._record(key, "stall", stepper.step)
        return transcript

    def _settle(
        self, key: K, token: int, awaitable: Awaitable[object], step: str
    ) -> Generator[Awaitable[object], Outcome, None]:
        scheduled = (key, token)
        self._scheduled.pop(scheduled, None)
        if scheduled in self._cancelled:
            discard(awaitable)
            return
        ok, value = yield awaitable
        stepper = self.steppers[key]
        self._process(key, stepper.pending_events())  # sends made while it ran
        self._record(key, "resume", value, step)
        if step in HOOK_STEPS:
            if not ok:
                self._record(key, "failed", value, step)
            return
        if ok:
            events = stepper.resume(token, value, self.now)
        else:
            assert isinstance(value, BaseException)
            events = stepper.resume_error(token, value, self.now)
        self._process(key, events)
        self._process(key, stepper.pending_events())


def drive(run: Generator[Awaitable[object], Outcome, T], max_await_steps: int, where: str) -> T:
    """Run a simulation, resolving each awaitable without an event loop."""
    try:
        awaitable = next(run)
        while True:
            awaitable = run.send(trampoline(awaitable, max_await_steps, where))
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        run.close()


async def adrive(run: Generator[Awaitable[object], Outcome, T]) -> T:
    """Run a simulation, awaiting each awaitable on the running event loop, one at a time."""
    try:
        awaitable = next(run)
        while True:
            outcome: Outcome
            try:
                outcome = (True, await awaitable)
            except Exception as exc:
                outcome = (False, exc)
            awaitable = run.send(outcome)
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        run.close()
