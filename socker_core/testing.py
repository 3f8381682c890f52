"""A test kit for socker flows: in-memory pairs, transcripts and a fuzzer.

Standard library only (hypothesis is imported lazily by `fuzz_flow`), no
sockets, no event loop, no real clock:

- `run_pair(server_flow, client_flow)` runs a server Stepper and a client
  Stepper against each other on a fake clock and returns a `Transcript` of
  every message, step change and close on both sides. Async handlers work when
  their awaitables finish without suspending on a real event loop;
  `await arun_pair(...)` awaits them for real under any event loop (asyncio or
  trio).
- `Transcript.table()` renders the two-column "| Server | Client |" table of
  the original README; `Transcript.mermaid()` renders a Mermaid sequence
  diagram.
- `fuzz_flow(flow)` feeds random and adversarial message sequences, clock
  jumps, ticks and closes to fresh Steppers and checks the invariants every
  flow must keep.
"""

from __future__ import annotations

import heapq
import inspect
import math
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ._codes import CLOSE_CODES, is_sendable_close_code
from ._errors import ConnectionClosedError, LocalProtocolError
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
from ._flow import Close, Flow, Hook
from ._resume import ReplayBuffer
from ._state import State
from ._stepper import DEFAULT_MAX_QUEUE, HOOK_STEPS, ON_CLOSE, ON_OPEN, Connection, Stepper

__all__ = [
    "CLIENT",
    "SERVER",
    "Action",
    "Entry",
    "FuzzFailure",
    "FuzzOp",
    "FuzzStats",
    "NeedsEventLoopError",
    "Side",
    "Transcript",
    "arun_pair",
    "fuzz_flow",
    "replay_fuzz",
    "resolve",
    "run_pair",
]

Side = Literal["server", "client"]
SERVER: Side = "server"
CLIENT: Side = "client"

#: A scripted application action for `run_pair(actions=[(time, side, action)])`:
#: bytes are sent with `Stepper.send`, a `Close` closes with `Stepper.close`, a
#: callable is called as `action(stepper, now)` and returns the events it made.
Action = bytes | Close | Callable[[Stepper, float], Iterable[Event] | None]

#: Default cap on the events of one `run_pair` run (both sides together).
DEFAULT_MAX_EVENTS = 10_000
#: Default cap on how often one awaitable may yield a bare `None` (asyncio's
#: "let others run") before the trampoline gives up.
DEFAULT_MAX_AWAIT_STEPS = 10_000


class NeedsEventLoopError(LocalProtocolError):
    """An awaitable really suspended (waited for an event loop) where none runs.

    `run_pair` and `fuzz_flow` drive awaitables without an event loop: only
    awaitables that finish without suspending work there. Use `arun_pair`
    under asyncio or trio for handlers that really wait.
    """


# -- driving awaitables without an event loop ---------------------------------


def _discard(awaitable: object) -> None:
    """Close an awaitable that will never run (no "never awaited" warning)."""
    if inspect.iscoroutine(awaitable) or inspect.isgenerator(awaitable):
        awaitable.close()


def _trampoline(awaitable: Awaitable[object], max_steps: int, where: str) -> tuple[bool, object]:
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
    ok, value = _trampoline(awaitable, max_steps, "resolve")
    if not ok:
        assert isinstance(value, BaseException)
        raise value
    return value


# -- transcripts ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of a Transcript.

    `kind` is one of: "open", "step" (payload: the step entered), "send" and
    "recv" (payload: the message), "drop" (a message reached a side that is
    closing), "await" / "resume" / "cancel" (async handlers), "failed"
    (payload: the exception; `step` names the failing step), "complete"
    (payload: the last step), "close" (a close was requested; payload:
    (code, reason)), "closed" (payload: (code, reason)), "action" (a scripted
    application action), "stall" (the run ended with this side waiting in step
    `payload`) and "limit" (the run was stopped by max_events or max_time).
    With `drops=`: "lost" (a message in flight at a drop), "detach", "resumed"
    (payload: how many messages this side replays) and "replay" (one of them).
    """

    side: Side
    kind: str
    payload: object
    time: float
    step: str = ""

    def describe(self, markdown: bool = False) -> str:
        return _describe(self, markdown)

    def __str__(self) -> str:
        return f"{self.time:10.4f}  {self.side:<6}  {_describe(self, False)}"


#: Kinds `Transcript.table()` and `Transcript.mermaid()` show by default.
SUMMARY_KINDS = frozenset(
    {"open", "step", "send", "failed", "complete", "close", "closed", "action", "stall", "limit"}
)


class Transcript(list[Entry]):
    """Everything that happened in a `run_pair` run, in order, on both sides.

    `outcome` is "closed" (both sides ended), "stalled" (both sides were left
    waiting with nothing in flight), "limit" (max_events reached) or
    "time limit" (max_time reached).
    """

    def __init__(self, server: Stepper, client: Stepper) -> None:
        super().__init__()
        self.server = server
        self.client = client
        self.outcome = "running"

    def stepper(self, side: Side) -> Stepper:
        return self.server if side == SERVER else self.client

    # -- queries -------------------------------------------------------------

    def entries(self, side: Side | None = None, kind: str | None = None) -> list[Entry]:
        return [
            e for e in self if (side is None or e.side == side) and (kind is None or e.kind == kind)
        ]

    def sent(self, side: Side) -> list[bytes]:
        return [e.payload for e in self.entries(side, "send") if isinstance(e.payload, bytes)]

    def received(self, side: Side) -> list[bytes]:
        return [e.payload for e in self.entries(side, "recv") if isinstance(e.payload, bytes)]

    def steps(self, side: Side) -> list[str]:
        return [str(e.payload) for e in self.entries(side, "step")]

    def failures(self, side: Side | None = None) -> list[BaseException]:
        return [
            e.payload for e in self.entries(side, "failed") if isinstance(e.payload, BaseException)
        ]

    def close_of(self, side: Side) -> tuple[int, str] | None:
        """(code, reason) the side's connection ended with, or None if it did not end."""
        for entry in self.entries(side, "closed"):
            code, reason = _pair_of(entry.payload)
            return int(code), str(reason)
        return None

    @property
    def server_code(self) -> int | None:
        close = self.close_of(SERVER)
        return None if close is None else close[0]

    @property
    def client_code(self) -> int | None:
        close = self.close_of(CLIENT)
        return None if close is None else close[0]

    @property
    def closed(self) -> bool:
        return self.outcome == "closed"

    @property
    def stalled(self) -> bool:
        return self.outcome == "stalled"

    # -- rendering -----------------------------------------------------------

    def log(self) -> str:
        """Every entry, one per line, with its time."""
        return "\n".join(str(e) for e in self)

    def table(self, kinds: Iterable[str] | None = None) -> str:
        """A two-column Markdown table, one row per entry, like the original README's."""
        shown = SUMMARY_KINDS if kinds is None else frozenset(kinds)
        lines = ["| Server | Client |", "|------|------|"]
        for entry in self:
            if entry.kind not in shown:
                continue
            cell = _describe(entry, markdown=True)
            lines.append(f"| {cell} | |" if entry.side == SERVER else f"| | {cell} |")
        return "\n".join(lines)

    def mermaid(self, kinds: Iterable[str] | None = None) -> str:
        """A Mermaid sequenceDiagram: messages as arrows, everything else as notes."""
        shown = SUMMARY_KINDS if kinds is None else frozenset(kinds)
        ids = {SERVER: "S", CLIENT: "C"}
        lines = ["sequenceDiagram", "    participant S as Server", "    participant C as Client"]
        for entry in self:
            if entry.kind not in shown:
                continue
            me = ids[entry.side]
            peer = ids[CLIENT if entry.side == SERVER else SERVER]
            text = _mermaid_text(_describe(entry, markdown=False))
            if entry.kind == "send":
                lines.append(f"    {me}->>{peer}: {_mermaid_text(_short(entry.payload))}")
            elif entry.kind == "close":
                lines.append(f"    {me}--){peer}: {text}")
            elif entry.kind in ("stall", "limit"):
                lines.append(f"    Note over S,C: {entry.side} {text}")
            else:
                lines.append(f"    Note over {me}: {text}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.log()

    def __repr__(self) -> str:
        return (
            f"<Transcript {self.outcome} entries={len(self)} "
            f"server={self.close_of(SERVER)} client={self.close_of(CLIENT)}>"
        )


def _pair_of(payload: object) -> tuple[Any, Any]:
    if not (isinstance(payload, tuple) and len(payload) == 2):
        raise TypeError(f"expected a (code, reason) pair, got {payload!r}")
    return payload[0], payload[1]


def _short(payload: object, limit: int = 48) -> str:
    text = repr(bytes(payload)) if isinstance(payload, (bytearray, memoryview)) else repr(payload)
    if len(text) > limit:
        size = len(payload) if isinstance(payload, (bytes, bytearray, memoryview)) else None
        text = text[: limit - 1] + "…" + (f" ({size} bytes)" if size is not None else "")
    return text


def _code(text: str, markdown: bool) -> str:
    if not markdown:
        return text
    return "`" + text.replace("`", "\\x60").replace("|", "\\|") + "`"


def _plain(text: str, markdown: bool) -> str:
    if not markdown:
        return text
    return text.replace("|", "\\|").replace("`", "'").replace("\n", " ")


def _describe(entry: Entry, markdown: bool) -> str:
    kind, payload = entry.kind, entry.payload
    if kind == "open":
        return "connection open"
    if kind == "step":
        return f"step {_code(str(payload), markdown)}"
    if kind in ("send", "recv", "drop"):
        verb = {"send": "sends", "recv": "receives", "drop": "drops (closing)"}[kind]
        return f"{verb} {_code(_short(payload), markdown)}"
    if kind == "await":
        return f"awaits {_code(str(payload), markdown)}"
    if kind == "resume":
        return f"resumes with {_code(_short(payload), markdown)}"
    if kind == "cancel":
        return f"cancels await {payload}"
    if kind == "lost":
        return f"loses {_code(_short(payload), markdown)} (transport dropped)"
    if kind == "detach":
        return "detached (transport lost)"
    if kind == "resumed":
        return f"resumed, replaying {payload}"
    if kind == "replay":
        return f"replays {_code(_short(payload), markdown)}"
    if kind == "failed":
        detail = _plain(f"{type(payload).__name__}: {payload}", markdown)
        failed = "**failed**" if markdown else "FAILED"
        return f"{failed} in {_code(entry.step, markdown)}: {detail}"
    if kind == "complete":
        return f"flow complete after {_code(str(payload), markdown)}"
    if kind in ("close", "closed"):
        code, reason = _pair_of(payload)
        verb = "closes" if kind == "close" else "closed"
        return f"{verb} {code}" + (f" {_plain(repr(reason), markdown)}" if reason else "")
    if kind == "stall":
        return f"stalled, waiting in {_code(str(payload), markdown)}"
    if kind == "limit":
        return f"stopped: {_plain(str(payload), markdown)}"
    if kind == "action":
        return f"application: {_code(_short(payload), markdown)}"
    return _plain(f"{kind} {payload!r}", markdown)


_MERMAID_ESCAPES = {"#": "#35;", ";": "#59;", "<": "#lt;", ">": "#gt;", "\n": " ", "\r": " "}


def _mermaid_text(text: str) -> str:
    """Escape what would end or confuse a Mermaid message or note."""
    return "".join(_MERMAID_ESCAPES.get(char, char) for char in text)


# -- the in-memory pair ------------------------------------------------------------

_Outcome = tuple[bool, object]
_PRIORITY_AWAIT = 0  # an awaitable finishing at time t goes before deliveries at t
_PRIORITY_NET = 1


def _other(side: Side) -> Side:
    return CLIENT if side == SERVER else SERVER


class _Pair:
    """The simulation shared by run_pair and arun_pair.

    `run()` is a generator: it yields each awaitable that needs resolving and is
    sent back (ok, value); the sync and async front ends differ only there.
    """

    def __init__(
        self,
        server_flow: Flow,
        client_flow: Flow,
        *,
        clock_start: float,
        latency: float,
        await_delay: float,
        max_events: int,
        max_time: float | None,
        max_queue: int,
        actions: Sequence[tuple[float, Side, Action]],
        drops: Sequence[tuple[float, float]] = (),
    ) -> None:
        for label, value in (("latency", latency), ("await_delay", await_delay)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{label} must be a finite number >= 0, got {value!r}")
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, got {max_events}")
        if max_time is not None and not max_time >= 0:
            raise ValueError(f"max_time must be >= 0, got {max_time!r}")
        resumable = server_flow.resume_window is not None
        if drops and not resumable:
            raise ValueError("drops= needs a server flow with resume_window set")
        self.steppers: dict[Side, Stepper] = {
            side: Stepper(
                flow,
                max_queue=max_queue,
                replay=ReplayBuffer(flow.max_resume_buffer) if resumable else None,
            )
            for side, flow in ((SERVER, server_flow), (CLIENT, client_flow))
        }
        self.window = server_flow.resume_window or 0.0
        self.transcript = Transcript(self.steppers[SERVER], self.steppers[CLIENT])
        self.now = clock_start
        self.end = math.inf if max_time is None else clock_start + max_time
        self.latency = latency
        self.await_delay = await_delay
        self.max_events = max_events
        self.count = 0
        self._seq = 0
        self._heap: list[tuple[float, int, int, tuple[Any, ...]]] = []
        self._inbox: dict[Side, deque[tuple[Any, ...]]] = {SERVER: deque(), CLIENT: deque()}
        self._scheduled: dict[tuple[Side, int], Awaitable[object]] = {}
        self._cancelled: set[tuple[Side, int]] = set()
        for when, side, action in actions:
            if side not in (SERVER, CLIENT):
                raise ValueError(f"action side must be 'server' or 'client', got {side!r}")
            self._push(float(when), _PRIORITY_NET, ("action", side, action))
        for dropped, resumed in drops:
            if not resumed >= dropped:
                raise ValueError(f"a drop resumes before it happens: {(dropped, resumed)!r}")
            self._push(float(dropped), _PRIORITY_NET, ("drop", SERVER))
            self._push(float(resumed), _PRIORITY_NET, ("resume", SERVER))

    # -- bookkeeping ---------------------------------------------------------

    def _push(self, when: float, priority: int, item: tuple[Any, ...]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, priority, self._seq, item))

    def _record(self, side: Side, kind: str, payload: object, step: str | None = None) -> None:
        if step is None:
            step = self.steppers[side].step
        self.transcript.append(Entry(side, kind, payload, self.now, step))

    def _process(self, side: Side, events: Iterable[Event]) -> None:
        now = self.now
        for event in events:
            self.count += 1
            if isinstance(event, Send):
                self._record(side, "send", bytes(event.data))
                self._push(now + self.latency, _PRIORITY_NET, ("msg", _other(side), event.data))
            elif isinstance(event, StepChanged):
                self._record(side, "step", event.to_step, event.to_step)
            elif isinstance(event, Await):
                self._record(side, "await", event.step)
                delay = 0.0 if event.step in HOOK_STEPS else self.await_delay
                self._scheduled[(side, event.token)] = event.awaitable
                self._push(
                    now + delay,
                    _PRIORITY_AWAIT,
                    ("await", side, event.token, event.awaitable, event.step),
                )
            elif isinstance(event, CancelAwait):
                self._record(side, "cancel", event.token)
                self._cancelled.add((side, event.token))
            elif isinstance(event, HandlerFailed):
                self._record(side, "failed", event.exception, event.step)
            elif isinstance(event, FlowCompleted):
                self._record(side, "complete", event.last_step)
            elif isinstance(event, CloseRequested):
                self._record(side, "close", (event.code, event.reason))
                eof = (event.code, event.reason)
                self._push(now + self.latency, _PRIORITY_NET, ("eof", _other(side), *eof))
                self._push(now + 2 * self.latency, _PRIORITY_NET, ("eof", side, *eof))
            elif isinstance(event, Closed):
                self._record(side, "closed", (event.code, event.reason))
            else:  # pragma: no cover - every event type is handled above
                raise TypeError(f"unknown event {event!r}")

    def _pump(self, side: Side) -> None:
        """Deliver what reached `side`, in order, while its Stepper accepts messages."""
        stepper = self.steppers[side]
        inbox = self._inbox[side]
        while inbox:
            item = inbox[0]
            if item[0] == "msg":
                if stepper.is_closed or stepper.phase is State.CLOSING:
                    inbox.popleft()
                    self._record(side, "drop", bytes(item[2]))
                    if not stepper.is_closed:
                        self._process(side, stepper.receive(item[2], self.now))
                    continue
                if not stepper.accepting:
                    return  # backpressure: the rest waits "in the socket"
                if stepper.is_detached:
                    return  # cannot happen: a drop loses what is in flight
                inbox.popleft()
                self._record(side, "recv", bytes(item[2]))
                replay = stepper.replay
                if replay is not None:
                    replay.received += 1  # what the wire does for a real transport
                self._process(side, stepper.receive(item[2], self.now))
            else:
                inbox.popleft()
                self._process(side, stepper.transport_closed(item[2], item[3], self.now))

    def _next_deadline(self) -> tuple[float, Side] | None:
        best: tuple[float, Side] | None = None
        for side in (SERVER, CLIENT):
            deadline = self.steppers[side].next_deadline
            if (
                deadline is not None
                and math.isfinite(deadline)
                and (best is None or deadline < best[0])
            ):
                best = (deadline, side)
        return best

    def _act(self, side: Side, action: Action) -> None:
        stepper = self.steppers[side]
        self._record(side, "action", action)
        if isinstance(action, (bytes, bytearray, memoryview)):
            events: Iterable[Event] = stepper.send(bytes(action), self.now)
        elif isinstance(action, Close):
            events = stepper.close(action.code, action.reason, self.now)
        elif callable(action):
            events = action(stepper, self.now) or []
        else:
            raise TypeError(f"unsupported action {action!r}: use bytes, Close or a callable")
        self._process(side, events)
        self._process(side, stepper.pending_events())

    # -- the run -------------------------------------------------------------

    def run(self) -> Generator[Awaitable[object], _Outcome, Transcript]:
        steppers = self.steppers
        for side in (SERVER, CLIENT):
            self._record(side, "open", None)
            self._process(side, steppers[side].open(self.now))
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
                    when, side = deadline
                    if when > self.end:
                        self._stop("time limit", f"max_time reached at {self.end:g}")
                        break
                    self.now = max(self.now, when)
                    self._process(side, steppers[side].tick(self.now))
                elif not self._heap:
                    break
                elif item_time > self.end:
                    self._stop("time limit", f"max_time reached at {self.end:g}")
                    break
                else:
                    when, _, _, item = heapq.heappop(self._heap)
                    self.now = max(self.now, when)
                    kind, side = item[0], item[1]
                    if kind in ("msg", "eof"):
                        self._inbox[side].append(item)
                    elif kind == "drop":
                        self._drop()
                    elif kind == "resume":
                        self._resume()
                    elif kind == "action":
                        self._act(side, item[2])
                    else:
                        yield from self._settle(side, item[2], item[3], item[4])
                self._pump(SERVER)
                self._pump(CLIENT)
        finally:
            for awaitable in self._scheduled.values():
                _discard(awaitable)
            self._scheduled.clear()
        if self.transcript.outcome == "running":
            if all(s.is_closed for s in steppers.values()):
                self.transcript.outcome = "closed"
            else:
                self.transcript.outcome = "stalled"
                for side in (SERVER, CLIENT):
                    if not steppers[side].is_closed:
                        self._record(side, "stall", steppers[side].step)
        return self.transcript

    def _drop(self) -> None:
        """The transport is lost: what is in flight is gone; both sides detach."""
        kept = []
        for entry in self._heap:
            item = entry[3]
            if item[0] == "msg":
                self._record(item[1], "lost", bytes(item[2]))
            elif item[0] != "eof":  # a close in flight is lost too (resent on resume)
                kept.append(entry)
        heapq.heapify(kept)
        self._heap = kept
        for side in (SERVER, CLIENT):
            inbox = self._inbox[side]
            for item in inbox:
                if item[0] == "msg":
                    self._record(side, "lost", bytes(item[2]))
            self._inbox[side] = deque()
            stepper = self.steppers[side]
            if stepper.is_closed:
                continue
            self._record(side, "detach", None)
            self._process(side, stepper.detach(self.now, self.window))

    def _resume(self) -> None:
        """A new transport: each side replays what the other has not received."""
        steppers = self.steppers
        if not all(steppers[side].is_detached for side in (SERVER, CLIENT)):
            for side in (SERVER, CLIENT):  # one side's session is over: so is the other's
                stepper = steppers[side]
                if stepper.is_detached:
                    self._process(side, stepper.close(1000, "peer session ended", self.now))
            return
        replays = {}
        for side in (SERVER, CLIENT):
            mine, theirs = steppers[side].replay, steppers[_other(side)].replay
            assert mine is not None and theirs is not None
            replays[side] = mine.replay_after(theirs.received)
        if replays[SERVER] is None or replays[CLIENT] is None:
            for side in (SERVER, CLIENT):
                self._process(
                    side,
                    steppers[side].close(4413, "replay buffer overflowed", self.now),
                )
            return
        for side in (SERVER, CLIENT):
            self._record(side, "resumed", len(replays[side] or ()))
            for message in replays[side] or ():
                self._record(side, "replay", message)
                self._push(self.now + self.latency, _PRIORITY_NET, ("msg", _other(side), message))
            self._process(side, steppers[side].attach(self.now))
            self._process(side, steppers[side].pending_events())

    def _stop(self, outcome: str, why: str) -> None:
        self.transcript.outcome = outcome
        self._record(SERVER, "limit", why)

    def _settle(
        self, side: Side, token: int, awaitable: Awaitable[object], step: str
    ) -> Generator[Awaitable[object], _Outcome, None]:
        key = (side, token)
        self._scheduled.pop(key, None)
        if key in self._cancelled:
            _discard(awaitable)
            return
        ok, value = yield awaitable
        stepper = self.steppers[side]
        self._process(side, stepper.pending_events())  # sends made while it ran
        self._record(side, "resume", value, step)
        if step in HOOK_STEPS:
            if not ok:
                self._record(side, "failed", value, step)
            return
        if ok:
            events = stepper.resume(token, value, self.now)
        else:
            assert isinstance(value, BaseException)
            events = stepper.resume_error(token, value, self.now)
        self._process(side, events)
        self._process(side, stepper.pending_events())


def run_pair(
    server_flow: Flow,
    client_flow: Flow,
    *,
    clock_start: float = 0.0,
    max_events: int = DEFAULT_MAX_EVENTS,
    latency: float = 0.0,
    await_delay: float = 0.0,
    max_time: float | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    actions: Sequence[tuple[float, Side, Action]] = (),
    drops: Sequence[tuple[float, float]] = (),
    max_await_steps: int = DEFAULT_MAX_AWAIT_STEPS,
) -> Transcript:
    """Run a server flow and a client flow against each other in memory.

    Both Steppers open at `clock_start` (server first). Each `Send` reaches the
    peer's `receive` `latency` seconds later; a `CloseRequested` reaches the
    peer's `transport_closed` after `latency` and its own after `2 * latency`
    (the close handshake). Step timeouts fire on the fake clock. An async
    handler's awaitable finishes `await_delay` simulated seconds after it
    started; it is driven without an event loop, so it must not really wait
    (NeedsEventLoopError otherwise: use `arun_pair`). Messages that arrive
    while a side's queue is full wait (the side's `accepting` is respected).

    `actions` are application calls at given times: `(2.0, "server", Close(1001))`.

    `drops` simulates resume (the server flow needs `resume_window`): each
    `(drop_at, resume_at)` loses every message in flight at `drop_at` ("lost"
    entries), detaches both sides, and at `resume_at` each side replays what the
    other has not received ("replay" entries) and both attach again. A
    `resume_at` past the window finds the sessions ended.

    The run ends when both sides are closed ("closed"), when both wait with
    nothing in flight ("stalled"), or at `max_events` / `max_time`.
    """
    pair = _Pair(
        server_flow,
        client_flow,
        clock_start=clock_start,
        latency=latency,
        await_delay=await_delay,
        max_events=max_events,
        max_time=max_time,
        max_queue=max_queue,
        actions=actions,
        drops=drops,
    )
    run = pair.run()
    try:
        awaitable = next(run)
        while True:
            awaitable = run.send(_trampoline(awaitable, max_await_steps, "run_pair"))
    except StopIteration as stop:
        result: Transcript = stop.value
        return result
    finally:
        run.close()


async def arun_pair(
    server_flow: Flow,
    client_flow: Flow,
    *,
    clock_start: float = 0.0,
    max_events: int = DEFAULT_MAX_EVENTS,
    latency: float = 0.0,
    await_delay: float = 0.0,
    max_time: float | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    actions: Sequence[tuple[float, Side, Action]] = (),
    drops: Sequence[tuple[float, float]] = (),
) -> Transcript:
    """`run_pair` for handlers that really wait: each awaitable is awaited on the
    running event loop (asyncio or trio), one at a time. The clock stays fake."""
    pair = _Pair(
        server_flow,
        client_flow,
        clock_start=clock_start,
        latency=latency,
        await_delay=await_delay,
        max_events=max_events,
        max_time=max_time,
        max_queue=max_queue,
        actions=actions,
        drops=drops,
    )
    run = pair.run()
    try:
        awaitable = next(run)
        while True:
            outcome: _Outcome
            try:
                outcome = (True, await awaitable)
            except Exception as exc:
                outcome = (False, exc)
            awaitable = run.send(outcome)
    except StopIteration as stop:
        result: Transcript = stop.value
        return result
    finally:
        run.close()


# -- fuzzing -------------------------------------------------------------------


class FuzzOp:
    """One step of a fuzz run. Kinds:

    receive(bytes) · replay(i) (a message that once advanced a step) ·
    repeat(n) (the last message n more times) · send(bytes) (application send) ·
    tick(dt) (advance the clock and tick) · jump(dt) (advance the clock only) ·
    settle(mode) (finish the pending awaitable: "run", "error" or "cancel") ·
    close(code) (application close) · lost(code) (transport_closed).
    """

    # A plain class, not a dataclass, so that hypothesis prints its short repr.
    __slots__ = ("arg", "kind")

    def __init__(self, kind: str, arg: object = None) -> None:
        self.kind = kind
        self.arg = arg

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FuzzOp):
            return NotImplemented
        return (self.kind, self.arg) == (other.kind, other.arg)

    def __hash__(self) -> int:
        return hash((self.kind, self.arg))

    def __repr__(self) -> str:
        arg = _bytes_literal(self.arg) if isinstance(self.arg, bytes) else repr(self.arg)
        return f"{self.kind}({arg})"


def _bytes_literal(data: bytes) -> str:
    """A Python expression for `data` that stays short when it is a long repetition."""
    if len(data) <= 64:
        return repr(data)
    for width in range(1, 9):
        unit = data[:width]
        count, rest = divmod(len(data), width)
        if unit * count == data[: width * count] and data[width * count :] == unit[:rest]:
            tail = f" + {data[width * count :]!r}" if rest else ""
            return f"{unit!r} * {count}{tail}"
    return f"{data[:32]!r}...<{len(data)} bytes>"


def _trace_line(label: str, what: object) -> str:
    if label == "op":
        return f"op {what!r}"
    if isinstance(what, list):
        what = "[" + ", ".join(_event_text(e) for e in what) + "]"
    return f"{label} -> {what}"[:300]


def _event_text(event: Event) -> str:
    if isinstance(event, Send):
        return f"Send({_short(event.data)})"
    return repr(event)


@dataclass
class FuzzStats:
    """What `fuzz_flow` saw: how many runs, which close codes, how far the flow got."""

    runs: int = 0
    close_codes: Counter[int] = field(default_factory=Counter)
    steps_reached: Counter[str] = field(default_factory=Counter)
    handler_failures: int = 0


class FuzzFailure(AssertionError):
    """A flow (or the core) broke an invariant. The message holds the reproducer."""

    def __init__(self, message: str, ops: Sequence[FuzzOp], eager: bool) -> None:
        super().__init__(message)
        self.ops = list(ops)
        self.eager = eager


class _InjectedError(Exception):
    """An error fuzz_flow fed to `resume_error` on purpose."""


class _InjectedCancel(Exception):
    """fuzz_flow cancelled a pending awaitable (as a driver's cancellation would)."""


def _probe_flow(flow: Flow, counts: list[int]) -> Flow:
    """A copy of `flow` whose on_close hooks count their calls (counts[i] per hook)."""
    probe = Flow(flow.name)
    for step in flow.steps:
        probe.add(step.handler, name=step.name, timeout=step.timeout)
    probe.open_hooks = list(flow.open_hooks)

    def counted(position: int, hook: Hook) -> Hook:
        def run(conn: Connection) -> Any:
            counts[position] += 1
            return hook(conn)

        return run

    def sentinel(conn: Connection) -> None:
        counts[-1] += 1

    probe.close_hooks = [counted(i, hook) for i, hook in enumerate(flow.close_hooks)]
    probe.close_hooks.append(sentinel)
    return probe


class _FuzzRun:
    """One example: a fresh Stepper, the ops, and the invariant checks."""

    def __init__(
        self,
        flow: Flow,
        ops: Sequence[FuzzOp],
        eager: bool,
        *,
        max_queue: int,
        clock_start: float,
        allowed_errors: tuple[type[BaseException], ...],
        max_await_steps: int,
        stats: FuzzStats,
    ) -> None:
        self.counts = [0] * (len(flow.close_hooks) + 1)
        self.flow = _probe_flow(flow, self.counts)
        self.step_names = {s.name for s in self.flow.steps} | {ON_OPEN, ON_CLOSE}
        self.stepper = Stepper(self.flow, max_queue=max_queue)
        self.ops = ops
        self.eager = eager
        self.now = clock_start
        self.allowed_errors = allowed_errors
        self.max_await_steps = max_await_steps
        self.stats = stats
        self.trace: list[tuple[str, object]] = []  # formatted only on failure
        self.pending: Await | None = None
        self.running: int | None = None
        self.last_token = 0
        self.step: str | None = None
        self.close_requested: CloseRequested | None = None
        self.closed: Closed | None = None
        self.expect_normal_close = False
        self.lost_code: tuple[int, str] | None = None
        self.advancing: list[bytes] = []
        self.last_message: bytes | None = None
        self.injected: set[int] = set()

    # -- reporting -------------------------------------------------------------

    def fail(self, problem: str) -> FuzzFailure:
        trace = [_trace_line(label, what) for label, what in self.trace[-40:]]
        lines = [
            f"fuzz_flow({self.flow.name!r}): {problem}",
            f"reproduce: eager={self.eager}, ops={list(self.ops)!r}",
            "(replay_fuzz(flow, failure.ops, eager=failure.eager) runs it again)",
            "trace (last 40 lines):",
            *(f"  {line}" for line in trace),
        ]
        return FuzzFailure("\n".join(lines), self.ops, self.eager)

    # -- calling the Stepper --------------------------------------------------

    def call(self, label: str, method: Callable[..., list[Event]], *args: Any) -> list[Event]:
        try:
            events = method(*args)
        except FuzzFailure:
            raise
        except NeedsEventLoopError:
            raise
        except Exception as exc:
            raise self.fail(f"Stepper.{label} raised {type(exc).__name__}: {exc}") from exc
        self.trace.append((label, events))
        self.absorb(events)
        return events

    def expect_closed_error(self, label: str, method: Callable[..., list[Event]]) -> None:
        try:
            events = method()
        except ConnectionClosedError:
            self.trace.append((label, "ConnectionClosedError (expected)"))
            return
        except Exception as exc:
            raise self.fail(
                f"Stepper.{label} on a {self.stepper.phase.value} connection raised "
                f"{type(exc).__name__}, expected ConnectionClosedError"
            ) from exc
        raise self.fail(
            f"Stepper.{label} on a {self.stepper.phase.value} connection returned {events!r}, "
            "expected ConnectionClosedError"
        )

    # -- event checks ----------------------------------------------------------

    def absorb(self, events: Iterable[Event]) -> None:
        for event in events:
            self.check(event)
        if self.expect_normal_close:
            raise self.fail("FlowCompleted was not followed by CloseRequested(1000)")

    def check(self, event: Event) -> None:
        if self.closed is not None:
            raise self.fail(f"event {event!r} after Closed")
        if isinstance(event, Send):
            if not isinstance(event.data, (bytes, bytearray, memoryview)):
                raise self.fail(f"Send carries {type(event.data).__name__}, not bytes")
            if self.close_requested is not None:
                raise self.fail(f"{event!r} after CloseRequested")
        elif isinstance(event, StepChanged):
            steps = self.flow.steps
            if not 0 <= event.index < len(steps) or steps[event.index].name != event.to_step:
                raise self.fail(f"{event!r} does not name a step of the flow")
            if event.from_step != self.step:
                raise self.fail(f"{event!r}: the connection was in step {self.step!r}")
            if self.close_requested is not None:
                raise self.fail(f"{event!r} after CloseRequested")
            self.step = event.to_step
            self.stats.steps_reached[event.to_step] += 1
        elif isinstance(event, Await):
            if event.token <= self.last_token:
                raise self.fail(f"{event!r}: tokens must increase (last {self.last_token})")
            self.last_token = event.token
            if not inspect.isawaitable(event.awaitable):
                raise self.fail(f"{event!r} carries something that is not awaitable")
            if event.step not in self.step_names:
                raise self.fail(f"{event!r} names no step or hook")
            if event.step == ON_CLOSE:
                self.run_close_hook(event)
            else:
                if self.pending is not None or self.running is not None:
                    raise self.fail(f"{event!r} while another await is pending")
                self.pending = event
        elif isinstance(event, CancelAwait):
            if self.pending is not None and event.token == self.pending.token:
                _discard(self.pending.awaitable)
                self.pending = None
            elif event.token != self.running:
                raise self.fail(f"{event!r} for a token that is not pending")
        elif isinstance(event, HandlerFailed):
            if event.step not in self.step_names:
                raise self.fail(f"{event!r} names no step or hook")
            self.handler_failed(event.step, event.exception)
        elif isinstance(event, FlowCompleted):
            if event.last_step != self.flow.steps[-1].name:
                raise self.fail(f"{event!r} but the last step is {self.flow.steps[-1].name!r}")
            self.expect_normal_close = True
        elif isinstance(event, CloseRequested):
            if self.close_requested is not None:
                raise self.fail(f"second close request {event!r}")
            if not is_sendable_close_code(event.code):
                raise self.fail(f"{event!r}: code cannot be sent in a close frame")
            if len(event.reason.encode("utf-8")) > 123:
                raise self.fail(f"{event!r}: reason is longer than 123 bytes")
            if self.expect_normal_close and event.code != 1000:
                raise self.fail(f"FlowCompleted followed by {event!r}, not 1000")
            self.expect_normal_close = False
            self.close_requested = event
        elif isinstance(event, Closed):
            if self.close_requested is not None:
                expected = (self.close_requested.code, self.close_requested.reason, True)
            elif self.lost_code is not None:
                expected = (*self.lost_code, False)
            else:
                raise self.fail(f"{event!r} without a close request or transport_closed")
            if (event.code, event.reason, event.initiated_locally) != expected:
                raise self.fail(f"{event!r}, expected Closed{expected!r}")
            self.closed = event
        else:
            raise self.fail(f"unknown event {event!r}")

    def handler_failed(self, step: str, exc: BaseException) -> None:
        if id(exc) in self.injected:
            return
        self.stats.handler_failures += 1
        if isinstance(exc, self.allowed_errors):
            return
        raise self.fail(
            f"{'hook' if step.startswith('<') else 'step'} {step!r} failed: "
            f"{type(exc).__name__}: {exc}"
        )

    def run_close_hook(self, event: Await) -> None:
        ok, value = _trampoline(event.awaitable, self.max_await_steps, "fuzz_flow")
        self.absorb(self.stepper.pending_events())
        if not ok:
            assert isinstance(value, BaseException)
            self.handler_failed(ON_CLOSE, value)

    # -- ops ------------------------------------------------------------------

    def settle(self, mode: str) -> None:
        pending = self.pending
        if pending is None:
            return
        self.pending = None
        stepper = self.stepper
        if mode == "run":
            self.running = pending.token
            try:
                ok, value = _trampoline(pending.awaitable, self.max_await_steps, "fuzz_flow")
                self.absorb(stepper.pending_events())
            finally:
                self.running = None
            if ok:
                self.call("resume", stepper.resume, pending.token, value, self.now)
                return
            assert isinstance(value, BaseException)
            error: BaseException = value
        else:
            _discard(pending.awaitable)
            error = (
                _InjectedError("injected by fuzz_flow") if mode == "error" else _InjectedCancel()
            )
            self.injected.add(id(error))
        self.call("resume_error", stepper.resume_error, pending.token, error, self.now)

    def receive(self, message: bytes) -> None:
        stepper = self.stepper
        self.last_message = message
        if stepper.is_closed:
            self.expect_closed_error("receive", lambda: stepper.receive(message, self.now))
            return
        for _ in range(stepper.max_queue + 2):
            if stepper.accepting or self.pending is None:
                break
            self.settle("run")  # a driver stops reading until the handler finishes
        if not stepper.accepting:
            raise self.fail("Stepper.accepting is False but no await is pending")
        events = self.call("receive", stepper.receive, message, self.now)
        if any(isinstance(e, StepChanged) for e in events) and message not in self.advancing:
            self.advancing.append(message)

    def apply(self, op: FuzzOp) -> None:
        stepper = self.stepper
        kind, arg = op.kind, op.arg
        self.trace.append(("op", op))
        if kind == "receive":
            assert isinstance(arg, bytes)
            self.receive(arg)
        elif kind == "replay":
            assert isinstance(arg, int)
            if self.advancing:  # nothing has advanced yet: nothing to replay
                self.receive(self.advancing[arg % len(self.advancing)])
        elif kind == "repeat":
            assert isinstance(arg, int)
            last = self.last_message
            for _ in range(arg if last is not None else 0):
                assert last is not None
                self.receive(last)
        elif kind == "send":
            assert isinstance(arg, bytes)
            if stepper.phase in (State.OPEN, State.AWAITING):
                self.call("send", stepper.send, arg, self.now)
            else:
                self.expect_closed_error("send", lambda: stepper.send(arg, self.now))
        elif kind in ("tick", "jump"):
            assert isinstance(arg, float)
            self.now += arg
            if kind == "tick":
                self.call("tick", stepper.tick, self.now)
        elif kind == "settle":
            assert isinstance(arg, str)
            self.settle(arg)
        elif kind == "close":
            assert isinstance(arg, int)
            self.call("close", stepper.close, arg, "fuzz_flow close", self.now)
        elif kind == "lost":
            assert isinstance(arg, int)
            if not stepper.is_closed and stepper.phase is not State.CLOSING:
                self.lost_code = (arg, "fuzz_flow transport closed")
            self.call(
                "transport_closed",
                stepper.transport_closed,
                arg,
                "fuzz_flow transport closed",
                self.now,
            )
        else:
            raise ValueError(f"unknown fuzz op {op!r}")
        if self.eager:
            for _ in range(stepper.max_queue + 2):
                if self.pending is None:
                    break
                self.settle("run")

    def run(self) -> None:
        stepper = self.stepper
        self.call("open", stepper.open, self.now)
        if self.eager:
            while self.pending is not None:
                self.settle("run")
        for op in self.ops:
            self.apply(op)
        # The end: the transport goes away (the close handshake finished, or was lost).
        if not stepper.is_closed:
            if stepper.phase is State.CLOSING:
                code, reason = stepper.close_code or 1000, stepper.close_reason
            else:
                code, reason = 1006, "fuzz_flow: end of run"
                self.lost_code = (code, reason)
            self.call("transport_closed", stepper.transport_closed, code, reason, self.now)
        self.finish()

    def finish(self) -> None:
        stepper = self.stepper
        if not stepper.is_closed or self.closed is None:
            raise self.fail(f"the connection is {stepper.phase.value} after transport_closed")
        if self.pending is not None:
            raise self.fail(f"{self.pending!r} still pending after the connection closed")
        code = self.closed.code
        if code not in CLOSE_CODES and not 3000 <= code <= 4999:
            raise self.fail(f"closed with {code}, which is neither in CLOSE_CODES nor 3000-4999")
        if stepper.close_code != code:
            raise self.fail(f"Stepper.close_code is {stepper.close_code}, Closed says {code}")
        if any(count != 1 for count in self.counts):
            raise self.fail(f"on_close hooks ran {self.counts} times (each must run exactly once)")
        if stepper.next_deadline is not None:
            raise self.fail("a closed connection still has a deadline")
        self.stats.runs += 1
        self.stats.close_codes[int(code)] += 1


def replay_fuzz(
    flow: Flow,
    ops: Sequence[FuzzOp],
    *,
    eager: bool = False,
    max_queue: int = DEFAULT_MAX_QUEUE,
    clock_start: float = 0.0,
    allowed_errors: tuple[type[BaseException], ...] = (),
    max_await_steps: int = DEFAULT_MAX_AWAIT_STEPS,
) -> FuzzStats:
    """Run one fuzz example again, without hypothesis: `replay_fuzz(flow, failure.ops,
    eager=failure.eager)` reproduces a FuzzFailure (raising it again) once you have
    written the fix it passes."""
    stats = FuzzStats()
    _FuzzRun(
        flow,
        list(ops),
        eager,
        max_queue=max_queue,
        clock_start=clock_start,
        allowed_errors=allowed_errors,
        max_await_steps=max_await_steps,
        stats=stats,
    ).run()
    return stats


def fuzz_flow(
    flow: Flow,
    *,
    max_examples: int = 200,
    messages: Sequence[bytes] = (),
    max_ops: int = 40,
    max_queue: int = DEFAULT_MAX_QUEUE,
    clock_start: float = 0.0,
    allowed_errors: tuple[type[BaseException], ...] = (),
    seed: int | None = None,
    max_await_steps: int = DEFAULT_MAX_AWAIT_STEPS,
) -> FuzzStats:
    """Hammer `flow` with random and adversarial inputs and check its invariants.

    Each example opens a fresh Stepper, applies a hypothesis-generated list of
    FuzzOps (messages: empty, huge, repeated, arbitrary, your `messages`,
    replays of messages that advanced a step; clock jumps and ticks around the
    step timeouts; application sends and closes; transport closes; pending
    awaitables run, failed or cancelled), then closes the transport. Checked:

    - nothing escapes a Stepper call (the harness only makes legal calls and
      respects `accepting`; after a close, `receive`/`send` must raise
      ConnectionClosedError);
    - no handler or hook fails, except with `allowed_errors` (failures the
      harness injected itself do not count);
    - events are well formed and in a legal order; the run ends CLOSED with a
      code from CLOSE_CODES or a user code 3000-4999; every on_close hook ran
      exactly once.

    On failure raises FuzzFailure (an AssertionError) for hypothesis' minimal
    example; its message holds the reproducing op sequence and a trace, and
    `replay_fuzz(flow, failure.ops, eager=failure.eager)` runs it again.
    Returns FuzzStats about the runs. Needs hypothesis (imported here, lazily).
    """
    try:
        import hypothesis
        from hypothesis import strategies as st
    except ImportError as exc:  # pragma: no cover - hypothesis is a dev dependency
        raise ImportError(
            "socker_core.testing.fuzz_flow needs hypothesis: `pip install hypothesis` "
            "(it is part of socker[dev]); run_pair and the rest of socker_core need nothing"
        ) from exc

    flow.validate()
    timeouts = sorted({s.timeout for s in flow.steps if s.timeout is not None})
    interesting = [0.0, 1e-9, 1.0, 1e9]
    for t in timeouts:
        interesting += [t, max(t - 1e-6, 0.0), t + 1e-6]

    def weighted(*choices: tuple[int, Any]) -> Any:
        # (one_of would merge repeated branches; sampled_from keeps the weights)
        pool = [strategy for weight, strategy in choices for _ in range(weight)]
        return st.sampled_from(pool).flatmap(lambda strategy: strategy)

    short = 2 * timeouts[-1] if timeouts else 10.0
    delays = weighted(
        (3, st.sampled_from(interesting)),
        (2, st.floats(0.0, short, allow_nan=False, allow_infinity=False)),
        (1, st.floats(0.0, 1e6, allow_nan=False, allow_infinity=False)),
    )
    huge = st.builds(
        lambda unit, count: unit * count,
        st.binary(min_size=1, max_size=4),
        st.integers(1 << 10, 1 << 18),
    )

    known = [(6, st.sampled_from([bytes(m) for m in messages]))] if messages else []
    any_message = weighted(*known, (1, st.just(b"")), (1, st.binary(max_size=32)), (1, huge))

    def op(kind: str, arg: Any) -> Any:
        return st.builds(FuzzOp, st.just(kind), arg)

    any_op = weighted(
        (8, op("receive", any_message)),
        (2, op("replay", st.integers(0, 7))),
        (2, op("settle", st.sampled_from(["run", "run", "error", "cancel"]))),
        (2, op("tick", delays)),
        (1, op("jump", delays)),
        (1, op("repeat", st.integers(1, 20))),
        (1, op("send", st.binary(max_size=8))),
        (1, op("close", st.sampled_from([1000, 1001]))),
        (1, op("lost", st.sampled_from(sorted(int(code) for code in CLOSE_CODES)))),
    )
    stats = FuzzStats()

    def example(ops: list[FuzzOp], eager: bool) -> None:
        _FuzzRun(
            flow,
            ops,
            eager,
            max_queue=max_queue,
            clock_start=clock_start,
            allowed_errors=allowed_errors,
            max_await_steps=max_await_steps,
            stats=stats,
        ).run()

    test = hypothesis.settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        report_multiple_bugs=False,
        phases=[phase for phase in hypothesis.Phase if phase.name != "explain"],
        suppress_health_check=list(hypothesis.HealthCheck),
    )(hypothesis.given(ops=st.lists(any_op, max_size=max_ops), eager=st.booleans())(example))
    if seed is not None:
        test = hypothesis.seed(seed)(test)
    test()
    return stats
